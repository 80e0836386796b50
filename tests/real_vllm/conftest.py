"""Shared fixtures for the tests that start the real vLLM engine (CPU build, `scripts/vllm-env.sh`).

Every test under tests/real_vllm/ is marked `vllm` (tests/conftest.py): it skips where vLLM is not installed and
fails when skipped under `pytest -m vllm`. vLLM is imported inside the fixtures only, so these files collect in
the main environment.

Engines run in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, `distributed_executor_backend="uni"`), on
tiny models built here (hidden 64, 2 heads: head size 32, the smallest vLLM's CPU attention takes). vLLM
holds one engine per process at a time (a second one fails for memory), so `vllm_engines` keeps one live
engine, reuses it while tests ask for the same (model, settings), and shuts it down before starting another
one; a test that does not use it gets no live engine (`_no_idle_engine`), so it may start its own.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

#: Engine arguments of every engine these tests start (besides max_lora_rank and the LoRA settings).
ENGINE_ARGS: dict[str, Any] = dict(
    enable_lora=True,
    distributed_executor_backend="uni",
    enforce_eager=True,
    dtype="float32",
    kv_cache_memory_bytes=64 * 2**20,
    max_model_len=64,
    seed=0,
)

_COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64)


def _config(architecture: str) -> Any:
    """The tiny ``transformers`` config of ``architecture`` (hidden 64, 2 heads of 32, 2 layers)."""
    import transformers

    from lora_rl_plugins.demo.model import VOCAB

    ids = dict(vocab_size=len(VOCAB), pad_token_id=VOCAB.index("<pad>"), eos_token_id=VOCAB.index("<eos>"))
    dense = dict(_COMMON, intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=False, bos_token_id=None)
    if architecture == "LlamaForCausalLM":
        return transformers.LlamaConfig(**dense, **ids)
    if architecture == "Qwen2ForCausalLM":
        return transformers.Qwen2Config(**dense, **ids)
    if architecture == "GraniteForCausalLM":
        return transformers.GraniteConfig(**dense, **ids)
    if architecture == "MixtralForCausalLM":
        return transformers.MixtralConfig(
            **dict(dense, intermediate_size=64), num_local_experts=4, num_experts_per_tok=2, **ids
        )
    if architecture == "Qwen3MoeForCausalLM":
        return transformers.Qwen3MoeConfig(
            **dict(dense, intermediate_size=64),
            head_dim=32,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            decoder_sparse_step=1,
            **ids,
        )
    if architecture == "GPT2LMHeadModel":
        return transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=2, n_positions=64, bos_token_id=ids["eos_token_id"], **ids
        )
    raise ValueError(f"no tiny config for {architecture}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model(architecture)``: the directory of a randomly initialised tiny model of that architecture
    (``config.json``, float32 safetensors weights, the demo's character tokenizer), built once per session."""
    built: dict[str, Path] = {}

    def build(architecture: str) -> Path:
        if architecture not in built:
            import torch
            import transformers

            from lora_rl_plugins.demo.model import build_tokenizer

            config = _config(architecture)
            torch.manual_seed(0)
            model = getattr(transformers, architecture)(config)
            directory = tmp_path_factory.mktemp(architecture)
            model.save_pretrained(directory)
            build_tokenizer().save_pretrained(directory)
            built[architecture] = directory
        return built[architecture]

    return build


class Engines:
    """At most one live ``vllm.LLM``: ``get(model_dir, **settings)`` returns the live engine when it was started
    with the same arguments, else shuts that one down and starts a new one (raising what ``LLM()`` raises)."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.llm: Any = None
        self.started = 0

    def get(self, model_dir: Path, **settings: Any) -> Any:
        key = (str(model_dir), *sorted(settings.items()))
        if key != self.key or self.llm is None:
            self.close()
            from vllm import LLM

            try:
                self.llm = LLM(str(model_dir), **{**ENGINE_ARGS, **settings})
            except Exception:
                _reset_parallel_state()  # an engine that failed to start leaves it half set up
                raise
            self.key = key
            self.started += 1
        return self.llm

    def close(self) -> None:
        """Shut the live engine down (its core and worker) and free it; a no-op when none is live."""
        if self.llm is None:
            return
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        self.llm = self.key = None
        gc.collect()
        _reset_parallel_state()


def _reset_parallel_state() -> None:
    """Tear down vLLM's process groups, so that the next engine in this process sets up its own (an MoE engine
    after a failed dense one otherwise finds no expert-parallel group)."""
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    destroy_model_parallel()
    destroy_distributed_environment()


_ENGINES = Engines()


@pytest.fixture(scope="session")
def vllm_engines() -> Iterator[Engines]:
    """The session's one-live-engine holder (see ``Engines``); its engine is shut down at the end."""
    yield _ENGINES
    _ENGINES.close()


@pytest.fixture(autouse=True)
def _no_idle_engine(request: pytest.FixtureRequest) -> None:
    """A test that does not use ``vllm_engines`` starts with no engine of ours alive (it may start its own)."""
    if "vllm_engines" not in request.fixturenames:
        _ENGINES.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 model (head size 32) the TRL-with-vLLM and AsyncGRPOTrainer tests train and serve, saved
    once per session (``trl_vllm_worker.save_tiny_model``)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trl_vllm_worker import save_tiny_model

    directory = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(directory)
    return directory
