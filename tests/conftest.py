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

# The real-engine tests live in tests/real_vllm/, not tests/vllm/: pytest puts tests/ on sys.path, where a
# directory named vllm imports as an (empty) namespace package `vllm`, so `import vllm` and
# `pytest.importorskip("vllm")` succeed without vLLM installed.
VLLM_TESTS = os.path.join(os.path.dirname(__file__), "real_vllm") + os.sep
VLLM_SKIP = (
    "needs real vLLM (its CPU build runs here): build its environment with `scripts/vllm-env.sh` "
    "(.venv-vllm), then `.venv-vllm/bin/python -m pytest -m vllm tests/real_vllm`"
)


def _vllm_selected(config: pytest.Config) -> bool:
    """`pytest -m vllm`: the real-vLLM run (.ci/run), where a skipped vllm test is a failure."""
    words = str(config.getoption("markexpr", "") or "").replace("(", " ").replace(")", " ").split()
    return "vllm" in words and "not" not in words


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    has_vllm = spec is not None and spec.origin is not None  # a namespace package (a bare directory) is not vLLM
    for item in items:
        if str(item.path).startswith(VLLM_TESTS):
            item.add_marker(pytest.mark.vllm)
        if not has_vllm and "vllm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=VLLM_SKIP))
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Under `pytest -m vllm` a skipped vllm test fails: CI's real-vLLM run must run every one of them."""
    report = yield
    if report.skipped and "vllm" in item.keywords and _vllm_selected(item.config) and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"a vllm test was skipped under `pytest -m vllm` (every one must run): {report.longrepr}"
    return report
