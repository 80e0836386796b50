"""`lora-rl report` on real tiny runs (TRL state, Lightning CSV, TensorBoard), determinism, a
headless-browser rendering, and the live view."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from helpers import RecordingReward, grpo_trainer

from lora_rl_plugins.integrations.trl import LoraRLCallback
from lora_rl_plugins.report import load_run, write_report
from lora_rl_plugins.report.figures import build_figures, capacity_ranks
from lora_rl_plugins.report.page import rank_advice

pytestmark = pytest.mark.slow


def reward_fn(prompts, completions):
    return [float(c[:1] in "0123") for c in completions]


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory) -> Path:
    """A real 12-step GRPO run with a KL budget; its trainer_state.json is what the report reads."""
    root = tmp_path_factory.mktemp("trl_run")
    trainer = grpo_trainer(RecordingReward(reward_fn), root, steps=12, learning_rate=5e-2)
    trainer.add_callback(LoraRLCallback(trainer, kl_every=2, kl_budget=5.0, load_entry_points=False))
    trainer.train()
    trainer.save_state()
    return root / "out"


def lines_of(figure):
    return {line.get_label(): line for axis in figure.axes for line in axis.get_lines()}


def test_figures_carry_the_right_series(trl_run) -> None:
    run = load_run(trl_run)
    assert run.kind == "trl"
    figures = build_figures(run)
    assert set(figures) == {"bits", "per_step", "reward", "kl", "ledger"}
    bits = lines_of(figures["bits"])
    assert list(bits["signal, summed over steps (estimate)"].get_ydata()) == run.values("bandwidth/bits_total")
    assert list(bits["upper bound on the signal"].get_ydata()) == run.values("bandwidth/bound_total")
    rank = int(run.last("bandwidth/adapter_rank"))
    assert rank == 4
    capacity = run.last("bandwidth/capacity_bits")
    assert bits[f"capacity at r={rank} (this run)"].get_ydata()[0] == capacity
    assert bits["capacity at r=2"].get_ydata()[0] == capacity / 2  # a neighbouring rank
    assert figures["bits"].axes[0].get_yscale() == "log"
    kl = lines_of(figures["kl"])
    assert list(kl["KL(π_θ‖π_ref), mean per token (exact)"].get_ydata()) == run.values("kl_monitor/kl_mean")
    assert kl["budget 5"].get_ydata()[0] == 5.0
    reward = lines_of(figures["reward"])
    assert list(reward["mean reward"].get_ydata()) == run.values("reward")
    assert 1 in capacity_ranks(run)  # the sufficient rank is drawn too
    advice = " ".join(rank_advice(run))
    assert f"At rank {rank} the adapter holds {capacity:,.0f} bits" in advice
    assert "The smallest rank whose capacity holds that is r = 1" in advice


def test_report_is_written_and_deterministic(trl_run, tmp_path) -> None:
    first = write_report(trl_run, tmp_path / "a")
    second = write_report(trl_run, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    for name in ("bits", "per_step", "reward", "kl"):
        assert (tmp_path / "a" / f"{name}.png").read_bytes() == (tmp_path / "b" / f"{name}.png").read_bytes()
    page = first.read_text()
    assert page.count("data:image/png;base64,") == 5  # self-contained
    assert "Rank advice" in page and "bandwidth/bits_total" in page and "estimate" in page
    assert "learning/informative_frac" in page
    ledger = build_figures(load_run(trl_run))["ledger"]
    assert len(ledger.axes[0].collections) == 3  # solved, informative, unsolved, stacked


def test_report_reads_checkpoints_of_a_running_run(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(reward_fn), tmp_path, steps=4, save_strategy="steps", save_steps=2)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()  # no save_state(): only checkpoint-2 and checkpoint-4 hold trainer_state.json
    run = load_run(tmp_path / "out")
    assert max(run.steps("bandwidth/bits_total")) == 4


def test_report_from_tensorboard_logs(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    trainer = grpo_trainer(RecordingReward(reward_fn), tmp_path, steps=3, report_to=["tensorboard"])
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()
    events = list((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert events  # written by transformers' own TensorBoard callback
    run = load_run(events[0].parent)
    assert run.kind == "tensorboard"
    expected = [e["bandwidth/bits_total"] for e in trainer.state.log_history if "bandwidth/bits_total" in e]
    assert run.values("bandwidth/bits_total") == pytest.approx(expected[-3:], rel=1e-6)
    assert set(build_figures(run)) >= {"bits", "per_step", "reward"}


def test_report_from_lightning_csv(tmp_path) -> None:
    pytest.importorskip("lightning")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import lightning_grpo

    lightning_grpo.main(["--steps", "6", "--kl-free", "--logdir", str(tmp_path)])
    run = load_run(tmp_path)
    assert run.kind == "lightning-csv"
    assert len(run.values("bandwidth/bits_total")) == 6
    path = write_report(tmp_path)
    assert path.exists() and (path.parent / "kl.png").exists()


def test_cli_report_and_missing_metrics(trl_run, tmp_path, capsys) -> None:
    from lora_rl_plugins.cli import main

    assert main(["report", str(trl_run), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no run at" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(trl_run, tmp_path) -> None:
    page = write_report(trl_run, tmp_path / "report")
    shot = tmp_path / "screenshot.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,1600",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot.exists(), done.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1100, 1600)
    colours = image.resize((110, 160)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # figures and text, not a blank or error page


def test_live_view_in_the_progress_bar_and_the_printed_log(tmp_path, capsys) -> None:
    trainer = grpo_trainer(RecordingReward(reward_fn), tmp_path / "a", steps=3, disable_tqdm=False)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()
    assert "bits" in capsys.readouterr().err  # tqdm draws its bar, postfix included, on stderr
    printed = grpo_trainer(RecordingReward(reward_fn), tmp_path / "b", steps=3, logging_steps=3)
    printed.add_callback(LoraRLCallback(printed, load_entry_points=False))
    printed.train()
    out = capsys.readouterr().out
    assert out.count("lora-rl step") == 1 and "lora-rl step 3: signal" in out  # at the logging interval only
