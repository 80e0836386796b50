"""Two real processes (gloo on CPU): TRL under `accelerate launch` and Lightning DDP. Every rollout is counted
once (the totals equal a single-process accounting of the same rollouts), KL is measured on each
process's shard and reduced, and every process ends with the same state."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("lightning")

from helpers import latest_logged

from lora_rl_plugins import PluginHost, RolloutsScored, StepEnded, make_plugin_manager
from lora_rl_plugins.bandwidth import BandwidthPlugin

pytestmark = pytest.mark.slow
WORKERS = Path(__file__).parent / "distributed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], timeout: int = 300) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def replay(steps: list[list[tuple[list[float], list[str]]]], group_size: int) -> dict:
    """A single-process accounting of the same rollouts: each step's shards concatenated in rank order."""
    host = PluginHost(make_plugin_manager({"bandwidth": BandwidthPlugin()}, load_entry_points=False))
    for step, shards in enumerate(steps, start=1):
        rewards = [[r] for shard_rewards, _ in shards for r in shard_rewards]
        completions = [c for _, shard_completions in shards for c in shard_completions]
        host.on_rollouts_scored(RolloutsScored(step, rewards, ["r"], [1.0], group_size, completions))
        host.on_step_end(StepEnded(step))
    return host.get_state()["bandwidth"]


def test_trl_two_processes(tmp_path) -> None:
    # `accelerate launch` as users run TRL; on a machine without CUDA its multi-process launcher
    # starts 2 CPU processes and accelerate picks gloo (there is no separate multi-CPU flag).
    launch(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(WORKERS / "trl_worker.py"),
            str(tmp_path),
        ]
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    # every process ends with the same plugin state
    assert ranks[0]["state"]["bandwidth"] == ranks[1]["state"]["bandwidth"]
    assert ranks[0]["state"]["kl_monitor"] == ranks[1]["state"]["kl_monitor"]
    # the per-prompt ledger and the informative sampler's draws are the same on every process
    learning = [r["state"]["learning"] for r in ranks]
    assert learning[0] == learning[1]
    saved = [
        [e["learning/generation_seconds_saved"] for e in r["log_history"] if "learning/rollouts_skipped" in e]
        for r in ranks
    ]
    assert saved[0] == saved[1] and saved[0][-1] > 0  # the slowest process's generation time, on both
    assert learning[0]["skipped_prompts"] > 0
    assert sum(e["visits"] for _, e in learning[0]["ledger"]["entries"]) == 4 * 3  # 3 groups of 8 per step
    for i in range(4):  # the group split across the processes has one prompt: both drew the same prompts
        assert len({*ranks[0]["calls"][i]["prompts"][8:], *ranks[1]["calls"][i]["prompts"][:4]}) == 1
    # groups of 8 over 2 x 12 rollouts: the middle group is split across the processes
    steps = [[(r["calls"][i]["rewards"], r["calls"][i]["completions"]) for r in ranks] for i in range(4)]
    expected = replay(steps, group_size=8)
    state = ranks[0]["state"]["bandwidth"]
    assert state["rollouts_total"] == 4 * 24 == expected["rollouts_total"]
    assert state["bits_total"] == pytest.approx(expected["bits_total"])
    assert state["bound_total"] == pytest.approx(expected["bound_total"])
    # KL: each shard measured on its own process, then reduced (token-weighted mean, max)
    logged = [e for e in ranks[0]["log_history"] if "kl_monitor/kl_mean" in e]
    assert len(logged) == 4  # one log per step, not one per process
    for step, entry in enumerate(logged):
        shards = [r["shards"][step] for r in ranks]
        tokens = sum(s["tokens"] for s in shards)
        assert entry["kl_monitor/kl_mean"] == pytest.approx(sum(s["kl"] for s in shards) / tokens, abs=1e-9)
        assert entry["kl_monitor/kl_max"] == pytest.approx(max(s["kl_max"] for s in shards), abs=1e-9)
    assert logged[-1]["kl_monitor/kl_mean"] > 0


def test_trl_filter_two_processes(tmp_path) -> None:
    """sampling="filter": both processes run the same refill rounds (matched collectives), take the same round
    for a group split across them, and end with full batches whose groups all carry information."""
    launch(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(WORKERS / "trl_filter_worker.py"),
            str(tmp_path),
        ]
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["calls"]) == len(ranks[1]["calls"]) > 4  # the same rounds on both, refills among them
    assert ranks[0]["state"]["learning"] == ranks[1]["state"]["learning"]
    assert len(ranks[0]["outputs"]) == len(ranks[1]["outputs"]) == 4
    for out0, out1 in zip(ranks[0]["outputs"], ranks[1]["outputs"], strict=True):
        assert len(out0["advantages"]) == len(out1["advantages"]) == 12  # full on every process
        assert out0["num_items_in_batch"] == out1["num_items_in_batch"] == out0["tokens"] + out1["tokens"]
        advantages = out0["advantages"] + out1["advantages"]  # global order: rank 0's rows, then rank 1's
        for g in range(3):  # the middle group spans both processes: one round for all its rows, so Σ A = 0
            group = advantages[8 * g : 8 * (g + 1)]
            assert any(abs(a) > 0 for a in group) and sum(group) == pytest.approx(0.0, abs=1e-4)
    last = latest_logged(ranks[0]["log_history"])  # the quiet log line: each metric's latest value
    assert last["learning/filter_extra_rounds"] == len(ranks[0]["calls"]) - 4
    assert last["learning/filter_unfilled_groups"] == 0


def test_lightning_ddp_two_processes(tmp_path) -> None:
    launch([sys.executable, str(WORKERS / "lightning_worker.py"), str(tmp_path)], timeout=400)
    ranks = [json.loads((tmp_path / f"lightning_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["state"]["bandwidth"] == ranks[1]["state"]["bandwidth"]
    assert ranks[0]["state"]["kl_monitor"] == ranks[1]["state"]["kl_monitor"]
    steps = []
    for i in range(4):
        shards = []
        for r in ranks:
            rewards = [x for group in r["returned"][i]["rewards"] for x in group]
            shards.append((rewards, r["returned"][i]["completions"]))
        steps.append(shards)
    expected = replay(steps, group_size=8)
    state = ranks[0]["state"]["bandwidth"]
    assert state["rollouts_total"] == 4 * 2 * 16 == expected["rollouts_total"]
    assert state["bits_total"] == pytest.approx(expected["bits_total"])
    with open(tmp_path / "ddp" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4  # written once, by rank zero
    assert float(rows[-1]["bandwidth/bits_total"]) == pytest.approx(expected["bits_total"])
