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
from lora_rl_plugins.report.figures import build_figures, capacity_ranks, describe_figures, measurements
from lora_rl_plugins.report.page import rank_advice

pytestmark = pytest.mark.slow


def reward_fn(prompts, completions):
    return [float(c[:1] in "0123") for c in completions]


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory) -> Path:
    """A real 12-step GRPO run with a KL budget; its run log (and trainer_state.json) is what the report reads."""
    root = tmp_path_factory.mktemp("trl_run")
    trainer = grpo_trainer(RecordingReward(reward_fn), root, steps=12, learning_rate=5e-2)
    trainer.add_callback(LoraRLCallback(trainer, kl_every=2, kl_budget=5.0, load_entry_points=False))
    trainer.train()
    trainer.save_state()
    return root / "out"


def axis_of(figure, label):
    return next(axis for axis in figure.axes for line in axis.get_lines() if line.get_label() == label)


def lines_of(figure):
    return {line.get_label(): line for axis in figure.axes for line in axis.get_lines()}


def test_figures_carry_the_right_series(trl_run) -> None:
    run = load_run(trl_run)
    assert run.kind == "run log"  # lora_rl_metrics.jsonl, read before trainer_state.json
    figures = build_figures(run)
    assert set(figures) == {"bits", "per_step", "zero_info", "reward", "kl", "ledger"}
    bits = lines_of(figures["bits"])
    assert list(bits["signal, summed over steps (estimate)"].get_ydata()) == run.through_end("bandwidth/bits_total")[1]
    assert list(bits["upper bound on the signal"].get_ydata()) == run.through_end("bandwidth/bound_total")[1]
    assert bits["signal, summed over steps (estimate)"].get_xdata()[-1] == run.last_step == 12
    rank = int(run.last("bandwidth/adapter_rank"))
    assert rank == 4
    capacity = run.last("bandwidth/capacity_bits")
    assert bits[f"capacity at r={rank} (this run)"].get_ydata()[0] == capacity
    assert bits["capacity at r=2"].get_ydata()[0] == capacity / 2  # a neighbouring rank
    assert figures["bits"].axes[0].get_yscale() == "log"
    # the capacity lines can be told apart: each its own colour, and labelled at its right end
    capacity_lines = [line for label, line in bits.items() if label.startswith("capacity at r=")]
    assert len({str(line.get_color()) for line in capacity_lines}) == len(capacity_lines) == len(capacity_ranks(run))
    end_labels = {text.get_text() for text in figures["bits"].axes[0].texts}
    assert end_labels == {f"r={r}" + (" (this run)" if r == rank else "") for r in capacity_ranks(run)}
    assert all(text.xy[0] == 1.0 for text in figures["bits"].axes[0].texts)  # at the axis' right edge
    kl = lines_of(figures["kl"])
    mean_label = "exact KL(π_θ‖π_ref), mean per token (the budget applies to this)"
    certificate = "certificate (max δ − min δ)²/8, δ = log-prob shift: bounds the mean"
    # one point per measurement (every 2nd batch: steps 1, 3, ...; the exact 0 of the fresh adapter left off the log
    # scale), not one per log
    steps, values = measurements(run, "kl_monitor/kl_mean")
    assert steps == sorted({int(s) for s in run.values("kl_monitor/measured_step")}) == [1, 3, 5, 7, 9, 11]
    assert values[0] == 0.0  # the fresh adapter
    drawn = list(kl[mean_label].get_xdata())
    assert drawn == [s for s, v in zip(steps, values, strict=True) if v > 0] == [3, 5, 7, 9, 11]
    # each bound is drawn against the quantity it bounds: the certificate and the budget beside the mean,
    # the largest per-token KL in its own panel
    assert axis_of(figures["kl"], certificate) is axis_of(figures["kl"], mean_label)
    assert axis_of(figures["kl"], "budget 5 (on the mean)") is axis_of(figures["kl"], mean_label)
    assert axis_of(figures["kl"], "KL, largest per token (exact)") is not axis_of(figures["kl"], mean_label)
    for mean, bound in zip(kl[mean_label].get_ydata(), kl[certificate].get_ydata(), strict=True):
        assert bound >= mean
    assert kl["budget 5 (on the mean)"].get_ydata()[0] == 5.0
    # legends sit outside the data (below the axes)
    for figure in figures.values():
        figure.canvas.draw()
        for axis in figure.axes:
            legend = axis.get_legend()
            if legend is not None:
                assert legend.get_window_extent().y1 <= axis.get_window_extent().y0
    captions = describe_figures(run)
    assert "single-layer bound" not in captions["kl"]  # not drawn: TRL adapts no output layer
    assert "budget" in captions["kl"] and "certificate" in captions["kl"]
    reward = lines_of(figures["reward"])
    assert list(reward["mean reward"].get_ydata()) == run.values("reward")
    assert 1 in capacity_ranks(run)  # the sufficient rank is drawn too
    advice = " ".join(rank_advice(run))
    assert f"At rank {rank} the adapter holds {capacity:,.0f} bits" in advice
    assert "The smallest rank whose capacity holds that is r = 1" in advice
    assert "over 12 steps" in advice  # exact step count


def test_report_is_written_and_deterministic(trl_run, tmp_path) -> None:
    first = write_report(trl_run, tmp_path / "a")
    second = write_report(trl_run, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    for name in ("bits", "per_step", "reward", "kl"):
        assert (tmp_path / "a" / f"{name}.png").read_bytes() == (tmp_path / "b" / f"{name}.png").read_bytes()
    page = first.read_text()
    assert page.count("data:image/png;base64,") == 6  # self-contained
    assert "Rank advice" in page and "bandwidth/bits_total" in page and "estimate" in page
    assert "learning/informative_frac" in page
    ledger = build_figures(load_run(trl_run))["ledger"]
    assert len(ledger.axes[0].collections) == 3  # solved, informative, unsolved, stacked


def test_report_reads_checkpoints_of_a_running_run(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(reward_fn), tmp_path, steps=4, save_strategy="steps", save_steps=2)
    trainer.add_callback(LoraRLCallback(trainer, run_log=False, load_entry_points=False))
    trainer.train()  # no save_state(), no run log: only checkpoint-2 and checkpoint-4 hold trainer_state.json
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
    assert run.kind == "run log"  # written beside Lightning's metrics.csv
    assert run.steps("bandwidth/bits_step") == [1, 2, 3, 4, 5, 6]  # exact steps: 6, not Lightning's 0..5
    assert "over 6 steps" in " ".join(rank_advice(run))
    assert run.values("reward")  # what the module logged comes along
    csv_run = load_run(next(tmp_path.rglob("metrics.csv")))
    assert csv_run.kind == "lightning-csv"
    assert len(csv_run.values("bandwidth/bits_total")) == 6
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
            "--window-size=1100,3600",
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
    assert image.size == (1100, 3600)
    colours = image.resize((110, 360)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # figures and text, not a blank or error page
    # what is drawn reached the screen: every capacity line's colour, the certificate's and the budget's
    from matplotlib.colors import to_rgb

    from lora_rl_plugins.report.figures import CAPACITY_COLORS

    pixels = set(image.getdata())

    def shown(colour: str) -> bool:
        target = tuple(round(255 * c) for c in to_rgb(colour))
        return any(sum(abs(p - t) for p, t in zip(pixel, target, strict=True)) < 40 for pixel in pixels)

    others = len(capacity_ranks(load_run(trl_run))) - 1
    for colour in (*CAPACITY_COLORS[:others], "tab:orange", "tab:red", "tab:purple"):
        assert shown(colour), colour


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


def test_figures_are_readable_and_each_axis_holds_one_quantity(trl_run) -> None:
    """Text >= 9 pt, no twin axes, captions naming only what is drawn (faint lines only where drawn), and
    k3 and the exact KL labelled as what they are (issue 25 item 4)."""
    run = load_run(trl_run)
    figures, captions = build_figures(run), describe_figures(run)
    for name, figure in figures.items():
        assert len(figure.axes) == (2 if name == "kl" else 1), name  # no twinx: one quantity per axis
        figure.canvas.draw()
        for text in figure.findobj(lambda artist: hasattr(artist, "get_fontsize") and hasattr(artist, "get_text")):
            if text.get_text():
                assert text.get_fontsize() >= 9, (name, text.get_text(), text.get_fontsize())
        faint = any(line.get_alpha() is not None and line.get_alpha() < 1 for line in lines_of(figure).values())
        assert ("Faint" in captions.get(name, "")) == faint, (name, captions.get(name))
    labels = lines_of(figures["kl"])
    assert "k3: TRL's sampled estimate of the KL (its `kl`), not the exact KL" in labels
    assert "the budget does not apply to it" in captions["kl"]


def test_report_opens_with_the_runs_events(trl_run, tmp_path) -> None:
    """The report names the budget crossing, from the same list the demo's summary prints."""
    from lora_rl_plugins.report.events import run_events

    run = load_run(trl_run)
    events = run_events(run)
    crossed = [event for event in events if event.kind == "kl_budget"]
    steps, values = measurements(run, "kl_monitor/kl_mean")
    first = next(((s, v) for s, v in zip(steps, values, strict=True) if v > 5.0), None)
    if first is None:  # this run stayed under its budget of 5: a tighter one is crossed at the first positive KL
        events = run_events(run, kl_budget=0.0)
        crossed = [event for event in events if event.kind == "kl_budget"]
        first = next((s, v) for s, v in zip(steps, values, strict=True) if v > 0.0)
    assert crossed and crossed[0].step == first[0] and crossed[0].value == first[1]
    page = write_report(trl_run, tmp_path / "r").read_text()
    events_html = page[page.index("What happened.") : page.index("Rank advice.")]
    for event in run_events(run):
        assert html_escape(event.text) in events_html


def html_escape(text: str) -> str:
    import html

    return html.escape(text)
