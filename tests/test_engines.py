"""GRPO + LoRA + the callback under the engines users launch: DeepSpeed ZeRO-2/3, FSDP1 (use_orig_params
True and False), FSDP2; 2 CPU processes (gloo) under `accelerate launch`. DDP is tests/test_distributed.py.

Each run's numbers are recomputed in this process from what the workers saved, never with the library's
engine code: capacity = 32 × the LoRA parameters PEFT builds; update norms = γ‖BA‖₂ from the full LoRA
weights the engine's public API gathered (ZeRO-3 GatheredParameters, FSDP2 full_tensor, FSDP1
summon_full_params); KL from the model's own forward logits in float64 on each process's sample;
rewards replayed in one process; under ZeRO-3 and FSDP2 a run resumed from a step-2 checkpoint ends
with exactly the uninterrupted run's state. At batches 2 and 4 process 1 hands the plugins no sequences (the hang
case: every process must still join the engine's collectives); a hang fails through the timeout.

FSDP needs the test-only shim tests/distributed/force_cpu_engine.py (accelerate never takes its FSDP
path on CPU otherwise); DeepSpeed runs on CPU as it is (its shm op is built once, ~30 s, cached).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from lora_rl_plugins import PluginHost, RolloutsScored, StepEnded, make_plugin_manager
from lora_rl_plugins.bandwidth import BandwidthPlugin

# slow; DeepSpeed's C++ op is built (once, conftest.py) before the first timed launch
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ops_built")]
WORKERS = Path(__file__).parent / "distributed"
#: engine -> (launch config, GRPOConfig(use_cpu=...), also resume from a step-2 checkpoint)
ENGINES = {
    "zero3": ("zero3_cpu.yaml", True, True),
    "zero2": ("zero2_cpu.yaml", True, False),
    # FSDP1 resume is not checked: the trainer's FSDP1 checkpoint restores the LoRA weights as zeros here
    # (transformers 5.24, accelerate 1.15; see the README), so the KL after a resume differs for that reason.
    "fsdp1": ("fsdp1_cpu.yaml", False, False),
    "fsdp1_noorig": ("fsdp1_noorig_cpu.yaml", False, False),
    "fsdp2": ("fsdp2_cpu.yaml", False, True),
}
TIMEOUT_S = 240  # a hang (processes making different collective calls) fails here instead of blocking CI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_engine(engine: str, out: Path) -> list[dict]:
    import torch

    config, use_cpu, resume = ENGINES[engine]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "FORCE_ENGINE_ON_CPU": "1",
        "USE_CPU": "1" if use_cpu else "0",
        "EMPTY_STEPS": "2,4",
        "RESUME": "1" if resume else "0",
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(WORKERS / config),
        "--main_process_port",
        str(free_port()),
        str(WORKERS / "engine_worker.py"),
        str(out),
    ]
    started = time.monotonic()
    # its own process group, so that a hang kills the launcher and both workers
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{engine}: no result within {TIMEOUT_S} s (processes hung in a collective?)\n{stderr[-3000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-6000:]
    print(f"{engine}: {time.monotonic() - started:.1f} s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def replay(ranks: list[dict], steps: int) -> dict:
    """One-process accounting of the same rollouts, each batch's shards in rank order."""
    host = PluginHost(make_plugin_manager({"bandwidth": BandwidthPlugin()}, load_entry_points=False))
    for i in range(steps):
        rewards = [[x] for r in ranks for x in r["calls"][i]["rewards"]]
        completions = [c for r in ranks for c in r["calls"][i]["completions"]]
        host.on_rollouts_scored(RolloutsScored(i + 1, rewards, ["r"], [1.0], 8, completions))
        host.on_step_end(StepEnded(i + 1))
    return host.get_state()["bandwidth"]


def reference_model():
    """The workers' model in one process: the same seed, the same LoRA config, float64."""
    from peft import LoraConfig, get_peft_model

    sys.path.insert(0, str(WORKERS))
    from engine_worker import LORA

    from lora_rl_plugins.demo.model import build_tiny_model

    model = get_peft_model(build_tiny_model(), LoraConfig(**LORA)).double().eval()
    return model


def kl_sums(model, record: dict) -> tuple[float, float, float]:
    """(Σ KL, tokens, max KL) over a sample's completion tokens from the model's own logits, float64."""
    import torch

    if record["input_ids"].shape[0] == 0:
        return 0.0, 0.0, 0.0
    completion = record["completion_mask"].shape[1]
    mask = record["completion_mask"].bool()
    with torch.no_grad():
        kwargs = {"input_ids": record["input_ids"], "attention_mask": record["attention_mask"]}
        logits = model(**kwargs).logits[:, -completion - 1 : -1]
        with model.disable_adapter():
            ref_logits = model(**kwargs).logits[:, -completion - 1 : -1]
    logp = torch.log_softmax(logits / record["temperature"], -1)
    ref_logp = torch.log_softmax(ref_logits / record["temperature"], -1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    return float(kl[mask].sum()), float(mask.sum()), float(kl[mask].max()) if mask.any() else 0.0


@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_numbers(engine: str, tmp_path) -> None:
    import torch

    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    ranks = run_engine(engine, tmp_path)
    facts = ranks[0]["facts"]
    expected_type = "DEEPSPEED" if engine.startswith("zero") else "FSDP"
    assert expected_type in facts["distributed_type"], facts
    assert facts["is_fsdp2"] == (engine == "fsdp2"), facts
    # state identical on every process
    assert ranks[0]["state"] == ranks[1]["state"]
    if ENGINES[engine][2]:  # resumed from the step-2 checkpoint: exactly the uninterrupted run's state
        for rank in ranks:
            assert rank["resumed_step"] == 4
            assert rank["resumed_state"] == rank["state"]
    # rewards counted once: the totals equal a one-process accounting of every process's rollouts
    expected = replay(ranks, steps=4)
    state = ranks[0]["state"]["bandwidth"]
    assert state["rollouts_total"] == 4 * 24 == expected["rollouts_total"]
    assert state["bits_total"] == pytest.approx(expected["bits_total"], rel=1e-12)
    assert state["bound_total"] == pytest.approx(expected["bound_total"], rel=1e-12)

    model = reference_model()
    peft_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    logs = {e["step"]: e for e in ranks[0]["log_history"] if "kl_monitor/kl_mean" in e}
    capacity = [e["bandwidth/capacity_bits"] for e in ranks[0]["log_history"] if "bandwidth/capacity_bits" in e]
    assert capacity and all(c == 32 * peft_params for c in capacity), (capacity, peft_params)

    params = dict(model.named_parameters())
    assert len(ranks[0]["records"]) == len(ranks[1]["records"]) == 4
    for record0, record1 in zip(ranks[0]["records"], ranks[1]["records"], strict=True):
        step = record0["step"]
        # the full LoRA weights are the same on both processes and cover every LoRA parameter
        assert record0["lora"].keys() == {n for n in params if "lora_" in n}
        for name, value in record0["lora"].items():
            assert torch.equal(value, record1["lora"][name]), name
            params[name].data.copy_(value.double())
        # update norms: γ‖BA‖₂ per module from the full matrices, here with a full SVD
        spectral = []
        for module in model.modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
                spectral.append(module.scaling["default"] * float(torch.linalg.matrix_norm(delta, ord=2)))
        entry = logs[step]
        assert entry["kl_monitor/update_spectral_max"] == pytest.approx(max(spectral), rel=1e-9, abs=1e-12)
        # KL: float64 from the model's own logits on each process's sample, summed over processes
        shards = [kl_sums(model, record) for record in (record0, record1)]
        if step in (2, 4):
            assert record1["input_ids"].shape[0] == 0  # the hang case happened and was measured
        tokens = sum(s[1] for s in shards)
        assert tokens > 0
        assert entry["kl_monitor/kl_mean"] == pytest.approx(sum(s[0] for s in shards) / tokens, rel=1e-4, abs=1e-7)
        assert entry["kl_monitor/kl_max"] == pytest.approx(max(s[2] for s in shards), rel=1e-4, abs=1e-7)
    assert max(e["kl_monitor/kl_mean"] for e in logs.values()) > 0
