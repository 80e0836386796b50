"""Which matrices a LoRA ``target_modules`` selects, and their shapes, from a model or a config alone.

PEFT itself decides: the config's model is built on the meta device (no weights, no download)
and ``peft.inject_adapter_in_model`` adapts it at rank 1, so ``target_modules`` means exactly what
it means to PEFT (names, suffixes, a regex, ``"all-linear"``, ``exclude_modules``,
``layers_to_transform``). Needs torch, transformers and peft; imported inside the functions.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..plugin.events import AdaptedMatrix, AdapterSummary
from .adapters import summarize_adapter

__all__ = ["adapted_matrices", "adapter_weight_shapes", "load_model_config", "peft_weight_shapes"]


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


def _inject(config: Any, rank: int, target_modules: Any, lora_options: dict[str, Any]) -> AdapterSummary:
    from peft import LoraConfig, inject_adapter_in_model

    meta = _meta_model(config)
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=target_modules, **lora_options)
    with warnings.catch_warnings():
        # PEFT 0.21 warns that the rank/alpha pattern its own MoE conversion adds for the fused gate_up_proj
        # "did not match any targeted module", then applies it (the counts prove it): not the user's concern
        warnings.filterwarnings(
            "ignore", message=r".*_pattern keys did not match.*gate_up_proj'\]", category=RuntimeWarning
        )
        inject_adapter_in_model(lora, meta)
    return summarize_adapter(meta)


def adapted_matrices(
    *,
    model: Any = None,
    model_config: Any = None,
    target_modules: Any = "all-linear",
    **lora_options: Any,
) -> tuple[AdaptedMatrix, ...]:
    """The matrices PEFT would adapt for ``target_modules``, each with (d_in, d_out) per expert and its rank at r = 1.

    PEFT builds the adapter on the meta device at r = 1, so every matrix carries the rank PEFT gives
    it: 1, or more where a ``rank_pattern`` applies; PEFT 0.21 under transformers v5 rewrites
    ``"all-linear"`` and v4 expert names (``gate_proj``+``up_proj``, ``w1``+``w3``) on MoE families into
    ``target_parameters`` with ``rank_pattern {".*\\.gate_up_proj": 2r}``. With a ``rank_pattern`` among
    ``lora_options`` the adapter is built again at r = 2 and the matrices whose rank did not move are
    marked ``fixed_rank``. Fused experts come as one ``AdaptedMatrix`` with ``experts = E``.

    ``model`` may already carry a LoRA adapter (its matrices are returned as trained, with the
    adapter's ``r`` as ``base_rank``; ``target_modules`` is ignored) or be a transformers model (its
    config is rebuilt on the meta device); otherwise give ``model_config``. ``lora_options`` are
    further ``LoraConfig`` fields (``exclude_modules``, ``layers_to_transform``, ``target_parameters``,
    ``rank_pattern``, ...).

    Raises:
        ValueError: neither a model nor a config is given, or ``target_modules`` selects nothing.
        TypeError: ``model`` is neither a PEFT nor a transformers model.
    """
    if model is not None:
        existing = summarize_adapter(model)
        if existing.is_lora:
            return existing.matrices
        if getattr(model, "config", None) is None:
            raise TypeError("give a transformers model (with .config), a PEFT model, or model_config=")
        model_config = model.config
    if model_config is None:
        raise ValueError("give model= or model_config= to find the adapted matrices")
    config = load_model_config(model_config)
    options = {k: v for k, v in lora_options.items() if k not in ("r", "lora_alpha")}
    summary = _inject(config, 1, target_modules, options)
    if not summary.is_lora:
        raise ValueError(f"target_modules={target_modules!r} selects no module of this model")
    matrices = tuple(replace(m, base_rank=1) for m in summary.matrices)
    if options.get("rank_pattern"):
        at_two = _inject(config, 2, target_modules, options).matrices
        if [m.name for m in at_two] != [m.name for m in matrices]:  # pragma: no cover - PEFT builds the same modules
            raise RuntimeError("PEFT adapted different modules at r=1 and r=2")
        matrices = tuple(
            replace(m, fixed_rank=True) if two.rank == m.rank else m for m, two in zip(matrices, at_two, strict=True)
        )
    return matrices


def peft_weight_shapes(model: Any, adapter_name: str = "default") -> dict[str, tuple[int, ...]]:
    """The tensors PEFT's ``save_pretrained`` writes for ``adapter_name`` of a PEFT model: name -> shape.

    From ``peft.get_peft_model_state_dict`` (the function ``save_pretrained`` uses), without PEFT's
    optional copies of the base embedding weights (``save_embedding_layers``).
    """
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return {key: tuple(value.shape) for key, value in state.items()}


def adapter_weight_shapes(lora_config: Any, model_config: Any) -> dict[str, tuple[int, ...]]:
    """The tensors PEFT would save for the LoRA config ``lora_config`` (a ``LoraConfig`` or its dict) on the
    base model of ``model_config``: PEFT builds the adapter on the meta device (no weights, no download).

    Raises:
        ValueError: PEFT cannot apply the config to this model (its message is kept).
    """
    import dataclasses

    from peft import LoraConfig, get_peft_model

    if not isinstance(lora_config, LoraConfig):
        values = dict(lora_config)
        known = {f.name for f in dataclasses.fields(LoraConfig)}
        values = {k: v for k, v in values.items() if k in known and k not in ("peft_type", "base_model_name_or_path")}
        lora_config = LoraConfig(**values)
    meta = _meta_model(load_model_config(model_config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = get_peft_model(meta, lora_config)
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"PEFT cannot apply this adapter config to the base model: {error}") from None
    return peft_weight_shapes(model)
