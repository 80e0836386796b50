"""Shared fixtures: tiny models built locally (no Hub, no network)."""

from __future__ import annotations

import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
warnings.filterwarnings("ignore", category=FutureWarning)

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (vLLM / Unsloth fast_inference); see README 'What runs where'")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def deepspeed_ops_built() -> None:
    """DeepSpeed's CPU shared-memory op (``deepspeed_shm_comm``), built once per machine (~30 s, cached in
    ``~/.cache/torch_extensions``) before the first test that launches DeepSpeed, so that the build never
    runs inside a test's timeout (a ZeRO-3 run hit its 240 s limit that way at load ~7: issue 25 item 5).
    A no-op without DeepSpeed, or where DeepSpeed does not use the op."""
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
    except ImportError:
        return
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        builder.load(verbose=False)
