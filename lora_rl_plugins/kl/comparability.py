"""When the KL monitor's exact KL and the trainer's k3 ``kl`` measure different things (docs/theory.md §3):
truncated sampling, dropout in the trainer's forward (said once per run: ``KLComparabilityWarning``); autocast
only rounds the trainer's value (``precision_note``: an info)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..plugin.grpo import GRPOSettings

__all__ = ["KLComparabilityWarning", "active_dropout", "comparability_notes", "precision_note"]


class KLComparabilityWarning(UserWarning):
    """A trainer setting makes the exact KL and the trainer's k3 ``kl`` measure different things."""


def comparability_notes(grpo: GRPOSettings | Mapping[str, Any], dropout: Sequence[str] = ()) -> list[str]:
    """Why ``kl_monitor/kl_mean`` and the trainer's k3 ``kl`` differ beyond sampling noise under these settings.

    The monitor measures the full-vocabulary KL of the temperature-scaled distributions, in eval mode
    (no dropout), from the model's logits without autocast, in float64 after them (docs/theory.md §3).

    Args:
        grpo: the trainer's settings (``RunStarted.grpo``; a mapping of version 0.1's option names is
            converted by ``GRPOSettings.from_options``): truncating sampling settings, β (> 0: the trainer
            logs k3), the autocast precision of its log-prob forwards.
        dropout: names of dropout modules with p > 0 that are active in the trainer's train-mode forward.

    Returns:
        One sentence per setting that makes the two differ; empty when none does.
    """
    if isinstance(grpo, Mapping):
        grpo = GRPOSettings.from_options(grpo)
    notes: list[str] = []
    truncated = [f"{name}={value!r}" for name, value in grpo.sampling.effective().items()]
    if truncated:
        notes.append(
            f"sampling with {', '.join(truncated)} draws the completions from a truncated or penalised distribution, "
            "while kl_monitor/kl_mean is the exact KL of the full temperature-scaled distributions: the k3 estimate "
            "on those tokens (the trainer's `kl`, kl_monitor/k3_mean) then estimates a different quantity and may "
            "differ from kl_mean by more than kl_monitor/k3_stderr"
        )
    if grpo.beta > 0 and dropout:
        shown = ", ".join(list(dropout)[:3]) + (", ..." if len(dropout) > 3 else "")
        notes.append(
            f"dropout is active in the trainer's train-mode forward ({len(dropout)} modules with p > 0: {shown}), "
            "so its `kl` carries dropout noise; the monitor measures in eval mode (set disable_dropout=True or "
            "lora_dropout=0 to compare)"
        )
    return notes


def precision_note(grpo: GRPOSettings | Mapping[str, Any]) -> str | None:
    """Why the trainer's k3 ``kl`` carries rounding the monitor's values do not: ``beta`` > 0 under ``bf16``/``fp16``
    autocast (TRL's default: bf16 unless fp16). Rounding, not another quantity: said once as an info, not warned
    (a healthy default run prints no library warning). None when it does not apply."""
    if isinstance(grpo, Mapping):
        grpo = GRPOSettings.from_options(grpo)
    if not (grpo.beta > 0 and grpo.precision):
        return None
    return (
        f"the trainer computes its log-probabilities (and its `kl`) under {grpo.precision} autocast; the monitor uses "
        "the model's own dtype and float64 after the logits (set bf16=False/fp16=False to compare them exactly)"
    )


def active_dropout(model: Any) -> list[str]:
    """Names of dropout modules with p > 0 (active whenever the model is in train mode)."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0
    ]
