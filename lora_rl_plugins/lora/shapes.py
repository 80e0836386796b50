"""Which matrices a LoRA ``target_modules`` selects, and their shapes, from a model or a config alone.

PEFT itself decides: the config's model is built on the meta device (no weights, no download)
and ``peft.inject_adapter_in_model`` adapts it at rank 1, so ``target_modules`` means exactly what
it means to PEFT (names, suffixes, a regex, ``"all-linear"``, ``exclude_modules``,
``layers_to_transform``). Needs torch, transformers and peft; imported inside the functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..plugin.events import AdaptedMatrix, AdapterSummary
from .adapters import summarize_adapter

__all__ = ["adapted_matrices", "load_model_config"]


def load_model_config(config: Any) -> Any:
    """A transformers config from a config object, a dict, ``config.json`` or a model directory (offline)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no model config at {path}: pass a config.json or a directory that holds one")
        config = json.loads(path.read_text())
    if isinstance(config, Mapping):
        values = dict(config)
        model_type = values.pop("model_type", None)
        if not model_type:
            raise ValueError("the model config has no 'model_type'; it is needed to build the model's modules")
        return AutoConfig.for_model(model_type, **values)
    raise TypeError(f"cannot read a model config from {type(config).__name__}")


def _meta_model(config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:
            from transformers import AutoModel

            return AutoModel.from_config(config)


def adapted_matrices(
    *,
    model: Any = None,
    model_config: Any = None,
    target_modules: Any = "all-linear",
    **lora_options: Any,
) -> tuple[AdaptedMatrix, ...]:
    """The matrices PEFT would adapt for ``target_modules``, each with (d_in, d_out) and rank 1.

    ``model`` may already carry a LoRA adapter (its matrices are returned, ``target_modules`` is
    ignored) or be a transformers model (its config is rebuilt on the meta device); otherwise give
    ``model_config``. ``lora_options`` are further ``LoraConfig`` fields (``exclude_modules``,
    ``layers_to_transform``, ...).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if model is not None:
        existing = summarize_adapter(model)
        if existing.is_lora:
            return tuple(AdaptedMatrix(m.name, m.d_in, m.d_out, 1, m.scaling, m.kind) for m in existing.matrices)
        if getattr(model, "config", None) is None:
            raise TypeError("give a transformers model (with .config), a PEFT model, or model_config=")
        model_config = model.config
    if model_config is None:
        raise ValueError("give model= or model_config= to find the adapted matrices")
    meta = _meta_model(load_model_config(model_config))
    inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=target_modules, **lora_options), meta)
    summary: AdapterSummary = summarize_adapter(meta)
    if not summary.is_lora:
        raise ValueError(f"target_modules={target_modules!r} selects no module of this model")
    return summary.matrices
