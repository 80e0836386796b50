"""TEST-ONLY SHIM (not part of the library): make accelerate pick its FSDP / DeepSpeed path on a CPU-only
machine, so tests/test_engines.py can run real FSDP and DeepSpeed with 2 CPU processes (gloo). Not a fix.

accelerate 1.15 routes a CPU run (`use_cpu`) to DistributedType.MULTI_CPU, where the FSDP and
DeepSpeed branches are never taken (state.py: FSDP only for MULTI_GPU/NPU/..., DeepSpeed only
`and not cpu`); without `use_cpu` and without CUDA it falls back to DistributedType.NO (world 1).
This shim reports a "MULTI_GPU"-style launch with the gloo backend and device cpu, so the
`distributed_type: FSDP` / `DEEPSPEED` from the launch config takes effect.
"""

import os

import torch
from accelerate import state as _state
from accelerate.utils import DistributedType

os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
_orig = _state.PartialState._prepare_backend


def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    if not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available():
        return (backend or "gloo"), DistributedType.MULTI_GPU
    return _orig(self, cpu, sagemaker_dp, backend)


_state.PartialState._prepare_backend = _prepare_backend
