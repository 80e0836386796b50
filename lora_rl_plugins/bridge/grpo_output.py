"""The ``training_step`` contract of a GRPO-style ``LightningModule``, parsed and validated (framework-free).

A GRPO module returns a dict from ``training_step`` (``G`` prompts, ``K`` generations each,
``N = G·K`` rollouts in prompt-major order, ``P`` prompt and ``C`` completion positions)::

    return {
        "loss": loss,                                 # as usual
        "rewards": rewards,                           # [G, K] combined reward per rollout (NaN = missing)
        # optional:
        "reward_components": {"accuracy": [G, K], ...},   # per reward function; "rewards" is then optional
        "reward_weights": {"accuracy": 1.0, ...},        # default 1.0 each (combined as TRL does)
        "prompt_ids": [N, P], "prompt_mask": [N, P],     # left-padded prompts       } needed by the
        "completion_ids": [N, C], "completion_mask": [N, C],  # sampled completions  } KL monitor
        "completions": [N texts], "answers": [N answers],
        "token_rewards": [N, C] per-token rewards (with completion_mask),
        "temperature": sampling temperature (default 1.0),
        "prompts": [G prompts] (text or chat messages; the per-prompt ledger keys them),
        "generation_seconds": wall seconds spent generating this batch (for learning/generation_seconds_saved),
    }

Values may be tensors (any device) or nested lists. ``parse_grpo_output`` returns a
``GRPOReport``; every violation is a ``GRPOOutputError`` whose message shows the expected shape.

How the module turns rewards into advantages decides which groups carry information. A module may
declare it with attributes named as in TRL's ``GRPOConfig`` (``advantage_options`` reads them; each
one left out means TRL's default)::

    scale_rewards = "group"                          # "group", "batch", "none" (or True/False)
    multi_objective_aggregation = "sum_then_normalize"   # or "normalize_then_sum"
    advantage_epsilon = 1e-4                         # ε in (r − mean) / (std + ε)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..plugin.grpo import AdvantageSettings, GRPOSettings

__all__ = [
    "ADVANTAGE_ATTRIBUTES",
    "CONTRACT",
    "GRPOOutputError",
    "GRPOReport",
    "advantage_options",
    "grpo_settings",
    "parse_grpo_output",
]

#: Attributes a GRPO module may declare to say how it computes advantages (defaults: TRL's).
ADVANTAGE_ATTRIBUTES = ("scale_rewards", "multi_objective_aggregation", "advantage_epsilon")

CONTRACT = (
    'training_step must return {"loss": ..., "rewards": [groups, generations]} (plus optional "prompt_ids", '
    '"prompt_mask", "completion_ids", "completion_mask" of shape [groups*generations, length], "completions", '
    '"answers", "reward_components", "reward_weights", "token_rewards", "temperature", "prompts" [groups], '
    '"generation_seconds"); see '
    "lora_rl_plugins.bridge.grpo_output"
)


class GRPOOutputError(ValueError):
    """``training_step``'s output does not follow the contract; the message shows the expected shape."""


@dataclass(frozen=True)
class GRPOReport:
    """One ``training_step`` output, validated: rewards as [N][F] rows (prompt-major), names and weights.

    ``sequences`` holds (prompt_ids, prompt_mask, completion_ids, completion_mask) when the module
    returned them (the KL monitor needs them), else None.
    """

    rewards: list[list[float]]
    reward_names: list[str]
    reward_weights: list[float]
    groups: int
    generations: int
    completions: list[Any] | None
    answers: list[Any] | None
    token_rewards: list[list[float]] | None
    temperature: float
    sequences: tuple[Any, Any, Any, Any] | None
    prompts: list[Any] | None = None
    """One prompt per rollout (each group's prompt repeated K times), when the module returned them."""
    generation_seconds: float | None = None


def _shape(value: Any) -> tuple[int, ...]:
    if hasattr(value, "shape"):
        return tuple(int(x) for x in value.shape)
    if isinstance(value, (list, tuple)):
        if value and (isinstance(value[0], (list, tuple)) or hasattr(value[0], "shape")):
            widths = {len(row) for row in value}
            if len(widths) > 1:
                raise GRPOOutputError(
                    f"ragged rows: the rows have {sorted(widths)} entries; every prompt needs the same number of "
                    f"generations. {CONTRACT}"
                )
            return (len(value), widths.pop())
        return (len(value),)
    raise GRPOOutputError(f"expected a tensor or a list, got {type(value).__name__}. {CONTRACT}")


def _rows(value: Any) -> list[list[float]]:
    data = value.detach().float().cpu().tolist() if hasattr(value, "detach") else value
    return [[math.nan if x is None else float(x) for x in row] for row in data]


def _rewards(report: Mapping[str, Any]) -> tuple[list[list[float]], list[str], list[float], int, int]:
    """Rewards as [N][F] rows in prompt-major order, with names, weights, groups and generations."""
    if "reward_components" in report:
        components = dict(report["reward_components"])
        names = list(components)
        shapes = {name: _shape(value) for name, value in components.items()}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
            raise GRPOOutputError(
                f"reward_components must all be [groups, generations]; got shapes {shapes}. {CONTRACT}"
            )
        groups, generations = next(iter(shapes.values()))
        columns = [[x for row in _rows(components[name]) for x in row] for name in names]
        weights_map = dict(report.get("reward_weights", {}))
        unknown = set(weights_map) - set(names)
        if unknown:
            raise GRPOOutputError(f"reward_weights names {sorted(unknown)} that are not in reward_components")
        weights = [float(weights_map.get(name, 1.0)) for name in names]
        return [list(row) for row in zip(*columns, strict=True)], names, weights, groups, generations
    shape = _shape(report["rewards"])
    if len(shape) != 2:
        raise GRPOOutputError(
            f"'rewards' has shape {shape}; expected [groups, generations] (one row per prompt, one column per "
            f"generation). {CONTRACT}"
        )
    groups, generations = shape
    flat = [[x] for row in _rows(report["rewards"]) for x in row]
    return flat, ["reward"], [1.0], groups, generations


def _token_rewards(report: Mapping[str, Any], rollouts: int) -> list[list[float]]:
    shape = _shape(report["token_rewards"])
    if len(shape) != 2 or shape[0] != rollouts:
        raise GRPOOutputError(f"'token_rewards' has shape {shape}; expected [{rollouts}, completion length]")
    rows = _rows(report["token_rewards"])
    if "completion_mask" not in report:
        return rows
    masks = _rows(report["completion_mask"])
    return [[r for r, m in zip(row, mask, strict=True) if m] for row, mask in zip(rows, masks, strict=True)]


def _sequences(report: Mapping[str, Any]) -> tuple[Any, Any, Any, Any] | None:
    if "completion_ids" not in report or "prompt_ids" not in report:
        return None
    for key in ("prompt_mask", "completion_mask"):
        if key not in report:
            raise GRPOOutputError(f"'{key}' is needed with prompt_ids/completion_ids for the KL monitor. {CONTRACT}")
    prompt_ids, completion_ids, completion_mask = (
        report["prompt_ids"],
        report["completion_ids"],
        report["completion_mask"],
    )
    if _shape(prompt_ids)[0] != _shape(completion_ids)[0] or _shape(completion_ids) != _shape(completion_mask):
        raise GRPOOutputError(
            f"prompt_ids {_shape(prompt_ids)}, completion_ids {_shape(completion_ids)} and "
            f"completion_mask {_shape(completion_mask)} do not line up. {CONTRACT}"
        )
    return prompt_ids, report["prompt_mask"], completion_ids, completion_mask


def parse_grpo_output(outputs: Any) -> GRPOReport:
    """Validate one ``training_step`` output against the contract and return it as a ``GRPOReport``.

    Raises:
        GRPOOutputError: not a mapping, no rewards, shapes that do not line up, ragged rows, or
            per-rollout lists of the wrong length.
    """
    if not isinstance(outputs, Mapping):
        raise GRPOOutputError(f"training_step returned {type(outputs).__name__}. {CONTRACT}")
    if "rewards" not in outputs and "reward_components" not in outputs:
        raise GRPOOutputError(f"training_step's output has no 'rewards' (keys: {sorted(outputs)}). {CONTRACT}")
    rewards, names, weights, groups, generations = _rewards(outputs)
    rollouts = len(rewards)
    for key in ("completions", "answers"):
        if key in outputs and len(outputs[key]) != rollouts:
            raise GRPOOutputError(f"'{key}' has {len(outputs[key])} entries for {rollouts} rollouts. {CONTRACT}")
    if "prompts" in outputs and len(outputs["prompts"]) != groups:
        raise GRPOOutputError(f"'prompts' has {len(outputs['prompts'])} entries for {groups} groups. {CONTRACT}")
    return GRPOReport(
        rewards=rewards,
        reward_names=names,
        reward_weights=weights,
        groups=groups,
        generations=generations,
        completions=list(outputs["completions"]) if "completions" in outputs else None,
        answers=list(outputs["answers"]) if "answers" in outputs else None,
        token_rewards=_token_rewards(outputs, rollouts) if "token_rewards" in outputs else None,
        temperature=float(outputs.get("temperature", 1.0)),
        sequences=_sequences(outputs),
        prompts=[p for p in outputs["prompts"] for _ in range(generations)] if "prompts" in outputs else None,
        generation_seconds=float(outputs["generation_seconds"]) if "generation_seconds" in outputs else None,
    )


def advantage_options(module: Any) -> dict[str, Any]:
    """The advantage settings a GRPO module declares (``ADVANTAGE_ATTRIBUTES`` it has and sets), as
    a mapping in ``GRPOConfig``'s names (``AdvantageSettings.from_options`` validates them: a ValueError names a bad
    one; ``grpo_settings`` turns them into ``RunStarted.grpo``)."""
    return {name: getattr(module, name) for name in ADVANTAGE_ATTRIBUTES if getattr(module, name, None) is not None}


def grpo_settings(module: Any, *, beta: float = 0.0) -> GRPOSettings:
    """The typed GRPO settings (``RunStarted.grpo``) of a GRPO module: its declared advantage settings
    (``advantage_options``) and ``beta``; the module samples with its own model (``weight_sync="shared"``).

    Raises:
        ValueError: an advantage setting GRPO does not know (the message names it).
    """
    return GRPOSettings(advantage=AdvantageSettings.from_options(advantage_options(module)), beta=float(beta))
