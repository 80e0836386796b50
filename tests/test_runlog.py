"""The run log (lora_rl_metrics.jsonl), detail metrics kept off the console, readable numbers, and the
command line's manners (flags in errors, a closed pipe, the rank plan's margin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_rl_plugins.bridge.runlog import RUN_LOG_NAME, RunLogWriter, match_metric, split_detail
from lora_rl_plugins.kl.monitor import KL_METRICS
from lora_rl_plugins.plugin.host import TIMING_METRIC
from lora_rl_plugins.plugin.metrics import format_percent

ROOT = Path(__file__).resolve().parents[1]
INFOS = {info.name: info for info in (*KL_METRICS, TIMING_METRIC)}


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_patterns_and_detail_split() -> None:
    norm = "kl_monitor/norms/base_model.model.layers.0.self_attn.q_proj/spectral"
    assert match_metric(norm, INFOS).name == "kl_monitor/norms/<module>/<norm>"  # type: ignore[union-attr]
    assert match_metric("plugins/bandwidth/ms_per_step", INFOS) is TIMING_METRIC
    assert match_metric("kl_monitor/norms/a/b/c", INFOS) is None  # <placeholder> is one path segment
    assert match_metric("reward", INFOS) is None
    console, detail = split_detail(
        {"kl_monitor/kl_mean": 0.1, norm: 2.0, "plugins/x/ms_per_step": 1.0, "reward": 0.5}, INFOS
    )
    assert console == {"kl_monitor/kl_mean": 0.1, "reward": 0.5}
    assert detail == {norm: 2.0, "plugins/x/ms_per_step": 1.0}


def test_writer_records_kind_and_unit_and_resumes_without_duplicates(tmp_path) -> None:
    writer = RunLogWriter(tmp_path, INFOS, source="trl")
    writer.open(resume_step=0)
    for step in range(1, 6):
        writer.write(step, {"kl_monitor/kl_mean": 0.1 * step, "reward": 0.5, "note": "text", "x": float("nan")})
    # flushed at each write: readable while the run goes on
    lines = records(tmp_path / RUN_LOG_NAME)
    assert lines[0] == {
        "step": 1,
        "name": "kl_monitor/kl_mean",
        "value": 0.1,
        "kind": "exact",
        "unit": "nats/token",
        "source": "lora_rl_plugins",
    }
    assert lines[1]["source"] == "trl" and lines[1]["kind"] is None
    assert lines[2]["value"] is None  # NaN as null; the text value skipped
    writer.close()
    # a crash after step 5, resumed from the checkpoint of step 3: steps 4 and 5 are written again, once
    resumed = RunLogWriter(tmp_path, INFOS, source="trl")
    resumed.open(resume_step=3)
    for step in (4, 5, 6):
        resumed.write(step, {"kl_monitor/kl_mean": float(step), "kl_monitor/budget": 5.0})
    resumed.close()
    lines = records(tmp_path / RUN_LOG_NAME)
    assert [r["step"] for r in lines if r["name"] == "kl_monitor/kl_mean"] == [1, 2, 3, 4, 5, 6]
    # a latest-value metric is written when it changes: the budget once, not at every log
    assert [r["step"] for r in lines if r["name"] == "kl_monitor/budget"] == [4]


def test_percent_keeps_significant_digits() -> None:
    assert format_percent(1.8e-6) == "0.00018%"
    assert format_percent(8.6e-4) == "0.086%"
    assert format_percent(0.5) == "50%"
    assert format_percent(0.0) == "0%"
    assert format_percent(2.7e-9) == "0.00000027%"


def test_cli_errors_name_the_flags(capsys) -> None:
    from lora_rl_plugins.cli import main

    assert main(["rank", "--hidden-size", "4096", "--reward-levels", "2"]) == 2
    err = capsys.readouterr().err
    assert "--episodes" in err and "--dataset-size" in err and "--rollouts-per-step" in err
    assert "episodes=" not in err and "dataset_size" not in err
    assert main(["rank", "--hidden-size", "4096", "--episodes", "1000"]) == 2
    err = capsys.readouterr().err
    assert "--reward-levels" in err and "--bits-per-episode" in err and "reward_levels" not in err


def test_rank_states_margin_and_near_full_rank(capsys) -> None:
    from lora_rl_plugins.cli import main

    assert main(["rank", "--hidden-size", "4096", "--bits", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "chosen rank: r = 3815" in out and "near full rank: r = 3815 is 93% of the full rank 4096" in out
    assert main(["rank", "--hidden-size", "4096", "--episodes", "320000", "--reward-levels", "2"]) == 0
    out = capsys.readouterr().out
    # 64·3·4096 = 786,432 bits of capacity for 640,000 bits: 1.23 times
    assert "margin:       r = 3 holds 1.23× the bits to hold" in out
    assert "near full rank" not in out and "learning rate" in out and "max_lora_rank" in out


def test_closed_pipe_ends_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader (`| head`) is gone before the output comes
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "lora_rl_plugins.cli", "rank", "--hidden-size", "4096", "--bits", "1e6", "--json"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 1


@pytest.mark.slow
def test_trl_run_log_resumes_and_keeps_the_console_quiet(tmp_path) -> None:
    pytest.importorskip("trl")
    from helpers import RecordingReward, grpo_trainer

    from lora_rl_plugins.integrations.trl import LoraRLCallback
    from lora_rl_plugins.report import load_run

    def reward(prompts, completions):
        return [float(c[:1] in "0123") for c in completions]

    first = grpo_trainer(RecordingReward(reward), tmp_path, steps=4, save_strategy="steps", save_steps=2)
    first.add_callback(LoraRLCallback(first, kl_every=1, load_entry_points=False))
    first.train()
    # the console dict (TRL's log_history, what it prints and sends to report_to) has no per-module norms
    assert not any(name.startswith(("kl_monitor/norms/", "plugins/")) for e in first.state.log_history for name in e)
    log = tmp_path / "out" / RUN_LOG_NAME
    assert any(r["name"].startswith("kl_monitor/norms/") for r in records(log))  # the run log has them
    # resume from step 2 of a 6-step plan: steps 3 and 4 are rewritten, never duplicated
    second = grpo_trainer(RecordingReward(reward), tmp_path, steps=6, save_strategy="no")
    second.add_callback(LoraRLCallback(second, kl_every=1, load_entry_points=False))
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    steps = [r["step"] for r in records(log) if r["name"] == "bandwidth/bits_step"]  # a per-step metric
    assert steps == [1, 2, 3, 4, 5, 6]
    logged = [e["bandwidth/bits_step"] for e in second.state.log_history if "bandwidth/bits_step" in e]
    written = [r["value"] for r in records(log) if r["name"] == "bandwidth/bits_step"]
    assert written == pytest.approx(logged)  # steps 1-2 from the checkpoint's history, 3-6 from the resumed run
    assert load_run(tmp_path / "out").last("bandwidth/bits_total") == pytest.approx(
        second.state.log_history[-2]["bandwidth/bits_total"]
    )
