"""The trainer's GRPO settings as typed data (floor 0: framework-free, no other room).

``RunStarted.grpo`` carries a ``GRPOSettings``: how advantages are computed (``AdvantageSettings``,
TRL's defaults), how completions are sampled (``SamplingSettings``), the KL coefficient β, the batch
layout and how the generator gets the trained weights (``weight_sync``). Integrations fill it from
their trainer; plugins read its fields and never parse a dict. ``Advantages`` is one generation
batch's advantages, computed once where the batch is built (``lora_rl_plugins.bandwidth.advantages.
grpo_advantages``, docs/theory.md §1) and carried on ``RolloutsScored.advantages``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AGGREGATIONS",
    "SCALE_REWARDS",
    "TRL_EPSILON",
    "WEIGHT_SYNC",
    "ZERO_TOLERANCE",
    "AdvantageSettings",
    "Advantages",
    "GRPOSettings",
    "SamplingSettings",
    "WeightSync",
]

#: Values of ``scale_rewards`` (``True`` means "group", ``False`` "none", as GRPOConfig maps them).
SCALE_REWARDS = ("group", "batch", "none")
#: Values of ``multi_objective_aggregation``.
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
#: ε added to the std before dividing (TRL 1.16 grpo_trainer.py:2787, 2794, 2799).
TRL_EPSILON = 1e-4
#: An advantage is zero when |A| <= ZERO_TOLERANCE × max(1, the batch's largest |A|): float64 rounding.
ZERO_TOLERANCE = 1e-9


@dataclass(frozen=True)
class AdvantageSettings:
    """How the trainer turns rewards into advantages; the defaults are TRL's.

    Attributes:
        scale_rewards: "group" (divide by the group's std + ε), "batch" (by the batch's std + ε) or
            "none"; ``True``/``False`` are accepted and mean "group"/"none" (GRPOConfig's mapping).
        aggregation: "sum_then_normalize" or "normalize_then_sum" (GRPOConfig's
            ``multi_objective_aggregation``).
        epsilon: ε added to the std before dividing (TRL: 1e-4).

    Raises:
        ValueError: an unknown ``scale_rewards`` or ``aggregation``, or ε < 0 (the message lists the
            accepted values).
    """

    scale_rewards: str = "group"
    aggregation: str = "sum_then_normalize"
    epsilon: float = TRL_EPSILON

    def __post_init__(self) -> None:
        scale = self.scale_rewards
        if scale is True or scale is False:
            object.__setattr__(self, "scale_rewards", "group" if scale else "none")
        elif scale not in SCALE_REWARDS:
            raise ValueError(
                f"scale_rewards={scale!r} is not one GRPO knows: use one of {', '.join(SCALE_REWARDS)} "
                "(or True = 'group', False = 'none')"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"multi_objective_aggregation={self.aggregation!r} is not one GRPO knows: use one of "
                f"{', '.join(AGGREGATIONS)}"
            )
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon >= 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"advantage_epsilon must be a finite number >= 0, got {self.epsilon!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AdvantageSettings:
        """Settings from ``RunStarted.options``: keys ``scale_rewards``, ``multi_objective_aggregation``
        and ``advantage_epsilon``; a missing key or None keeps TRL's default.

        Raises:
            ValueError: a value GRPO does not know (see the class).
        """
        values: dict[str, Any] = {}
        for key, field_name in (
            ("scale_rewards", "scale_rewards"),
            ("multi_objective_aggregation", "aggregation"),
            ("advantage_epsilon", "epsilon"),
        ):
            if options.get(key) is not None:
                values[field_name] = options[key]
        return cls(**values)


@dataclass(frozen=True)
class Advantages:
    """The advantages of one generation batch (N rollouts, groups of K consecutive rollouts).

    Attributes:
        advantages: [N] the advantage of each rollout (0 where TRL's would be NaN).
        rewards: [N] the value that is normalised: the weighted ``nansum`` (sum_then_normalize) or the
            weighted sum of per-function z-scores (normalize_then_sum); NaN for an unscored rollout.
        std: [N] the std each advantage is divided by (or, with "none", the group std TRL logs with);
            NaN where fewer than 2 rollouts were scored.
        is_std_zero: [N] TRL's ``torch.isclose(std, 0)`` (|std| <= 1e-8; NaN is never close): the rows
            behind TRL's ``frac_reward_zero_std``.
        group_size: K.
    """

    advantages: list[float]
    rewards: list[float]
    std: list[float]
    is_std_zero: list[bool]
    group_size: int

    @property
    def frac_reward_zero_std(self) -> float:
        """What TRL logs as ``frac_reward_zero_std``: the mean of ``is_std_zero`` over rows (NaN if none)."""
        n = len(self.is_std_zero)
        return sum(self.is_std_zero) / n if n else math.nan

    @functools.cached_property
    def tolerance(self) -> float:
        """The absolute tolerance under which an advantage counts as zero (see ZERO_TOLERANCE)."""
        return ZERO_TOLERANCE * max([1.0, *(abs(a) for a in self.advantages)])

    def group(self, g: int) -> list[float]:
        """The advantages of group g (rollouts [g·K, (g+1)·K))."""
        k = self.group_size
        return self.advantages[g * k : (g + 1) * k]

    def zero_groups(self) -> list[bool]:
        """Per group: True when every advantage of the group is zero (within ``tolerance``), i.e. the
        group contributes nothing to the policy-gradient term."""
        tol = self.tolerance
        groups = len(self.advantages) // self.group_size if self.group_size else 0
        return [all(abs(a) <= tol for a in self.group(g)) for g in range(groups)]


#: How the generator gets the trained weights: "shared" (the trained model itself generates: TRL without
#: vLLM, a Lightning module), "vllm_colocate" / "vllm_server" (TRL pushes the weights, adapter merged, to a
#: vLLM engine in the same process / a server), "vllm" (a vLLM engine of unknown mode).
WeightSync = Literal["shared", "vllm_colocate", "vllm_server", "vllm"]
WEIGHT_SYNC: tuple[str, ...] = ("shared", "vllm_colocate", "vllm_server", "vllm")


@dataclass(frozen=True)
class SamplingSettings:
    """How the trainer samples completions (TRL ``GRPOConfig`` names; None = not set / not known).

    ``top_k`` 0, ``top_p`` 1.0, ``min_p`` 0 and ``repetition_penalty`` 1.0 are "off";
    ``generation_kwargs`` may override them (``effective`` merges them).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    generation_kwargs: Mapping[str, Any] | None = None

    def effective(self) -> dict[str, Any]:
        """name -> value of each truncating/penalising setting that is on (``generation_kwargs`` win)."""
        values: dict[str, Any] = {name: getattr(self, name) for name in _SAMPLING_OFF}
        values.update({k: v for k, v in (self.generation_kwargs or {}).items() if k in _SAMPLING_OFF})
        return {name: value for name, value in values.items() if value is not None and value != _SAMPLING_OFF[name]}


#: Sampling settings and the value that turns each off.
_SAMPLING_OFF: dict[str, Any] = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


@dataclass(frozen=True)
class GRPOSettings:
    """The trainer's GRPO settings a plugin may need (defaults: TRL's, a trainer that says nothing).

    Attributes:
        advantage: how rewards become advantages.
        sampling: how completions are sampled.
        beta: the KL coefficient the trainer starts with (0: no reference log-probs).
        weight_sync: how the generator gets the trained weights (``WEIGHT_SYNC``).
        precision: "bf16" / "fp16" when the trainer's log-prob forwards run under that autocast, else None.
        generation_batch_size, steps_per_generation, num_iterations, gradient_accumulation_steps: the
            batch layout, where the trainer has one (None: not known).
    """

    advantage: AdvantageSettings = field(default_factory=AdvantageSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    beta: float = 0.0
    weight_sync: WeightSync = "shared"
    precision: Literal["bf16", "fp16"] | None = None
    generation_batch_size: int | None = None
    steps_per_generation: int | None = None
    num_iterations: int | None = None
    gradient_accumulation_steps: int | None = None

    def __post_init__(self) -> None:
        if self.weight_sync not in WEIGHT_SYNC:
            raise ValueError(f"weight_sync={self.weight_sync!r}: use one of {', '.join(WEIGHT_SYNC)}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> GRPOSettings:
        """Settings from the untyped ``RunStarted.options`` of version 0.1 (TRL's ``GRPOConfig`` names:
        ``beta``, ``temperature``, ``use_vllm``, ``scale_rewards``, ...); absent keys keep the defaults.

        Raises:
            ValueError: an advantage setting GRPO does not know (see ``AdvantageSettings``).
        """
        sampling = {name: options[name] for name in (*_SAMPLING_OFF, "generation_kwargs") if name in options}
        layout = ("generation_batch_size", "steps_per_generation", "num_iterations", "gradient_accumulation_steps")
        return cls(
            advantage=AdvantageSettings.from_options(options),
            sampling=SamplingSettings(temperature=float(options.get("temperature") or 1.0), **sampling),
            beta=float(options.get("beta") or 0.0),
            weight_sync="vllm" if options.get("use_vllm") else "shared",
            precision="bf16" if options.get("bf16") else "fp16" if options.get("fp16") else None,
            **{name: options[name] for name in layout if options.get(name) is not None},
        )
