"""Choosing a LoRA rank from the bits a run will deliver.

Rules (docs/theory.md §2):

* seed rule ([Li] §4.4): the smallest r with 64·r·d >= bits for one d x d matrix;
* adapter rule: the smallest r with bits_per_param · params(r) >= bits over the matrices
  ``target_modules`` selects, as PEFT builds them (``lora_rl_plugins.lora.shapes``):
  params(r) = r · Σ_m E_m·(d_in,m + d_out,m)·r_m(1) + fixed, with E_m experts per matrix, r_m(1)
  the matrix's rank at r = 1 (2 for the fused ``gate_up_proj`` PEFT 0.21 doubles) and ``fixed`` the
  parameters of matrices an absolute ``rank_pattern`` entry pins;
* with vLLM serving, the largest effective rank max_m r_m(r) must fit under a legal
  ``max_lora_rank``; the result reports the smallest legal one >= it.

The bits come from a ``RunPlan``: episodes (dataset size × generations × epochs, or steps ×
rollouts per step) × bits per episode (log2 of the reward levels, or a measured rate) × a safety
margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..bandwidth.information import rollout_bound
from ..lora.capacity import DEFAULT_BITS_PER_PARAM, adapter_capacity_bits, params_per_rank, smallest_rank
from ..plugin.events import AdaptedMatrix, AdapterSummary
from ..serving.vllm import LEGAL_MAX_LORA_RANKS, smallest_legal_max_lora_rank
from .advice import (
    MEASURED_LOWER_RANKS,
    RankAdvice,
    advise_rank,
    fewer_matrices_advice,
    measured_lower_ranks,
    more_matrices,
    serving_note,
)

__all__ = [
    "MEASURED_LOWER_RANKS",
    "RankAdvice",
    "RankChoice",
    "RankRefusedError",
    "RunPlan",
    "advise_rank",
    "measured_lower_ranks",
    "select_rank",
    "serving_note",
]


class RankRefusedError(ValueError):
    """No LoRA rank holds the bits within the limits given (the matrices' full rank, vLLM's ``max_lora_rank``):
    the planner's own "no" (``lora-rl rank`` exits 1), as opposed to bad input (exit 2)."""


@dataclass(frozen=True)
class RunPlan:
    """How many bits a run will deliver (an upper-bound plan, before training).

    Episodes: ``episodes``, or ``dataset_size × generations × epochs``, or
    ``steps × rollouts_per_step``. Bits per episode: ``bits_per_episode`` (e.g. the measured
    ``bandwidth/bits_per_rollout``) or log2(``reward_levels``). ``margin`` multiplies the result.
    """

    episodes: float | None = None
    dataset_size: int | None = None
    generations: int | None = None
    epochs: float = 1.0
    steps: int | None = None
    rollouts_per_step: int | None = None
    reward_levels: int | None = None
    bits_per_episode: float | None = None
    margin: float = 2.0

    def __post_init__(self) -> None:
        if self.margin < 1:
            raise ValueError(f"margin must be >= 1 (a safety factor), got {self.margin}")

    @property
    def episode_count(self) -> float:
        """Rollouts in the run, from ``episodes``, dataset × generations × epochs, or steps × rollouts.

        Raises:
            ValueError: none of these is given (the message names the missing fields).
        """
        if self.episodes is not None:
            return float(self.episodes)
        if self.dataset_size is not None and self.generations is not None:
            return float(self.dataset_size * self.generations * self.epochs)
        if self.steps is not None and self.rollouts_per_step is not None:
            return float(self.steps * self.rollouts_per_step)
        raise ValueError(
            "the plan needs episodes=, or dataset_size= with generations= (and epochs=), "
            "or steps= with rollouts_per_step="
        )

    @property
    def episode_bits(self) -> float:
        """Bits per episode: ``bits_per_episode``, or log2(``reward_levels``).

        Raises:
            ValueError: neither is given.
        """
        if self.bits_per_episode is not None:
            return float(self.bits_per_episode)
        if self.reward_levels is not None:
            return rollout_bound(self.reward_levels)
        raise ValueError("the plan needs reward_levels= (bits per episode = log2 L) or bits_per_episode=")

    @property
    def bits(self) -> float:
        """episodes × bits per episode × margin."""
        return self.episode_count * self.episode_bits * self.margin

    def explain(self) -> str:
        """One line: episodes × bits per episode × margin = bits."""
        source = (
            f"{self.bits_per_episode:g} bits/episode (given)"
            if self.bits_per_episode is not None
            else f"{self.episode_bits:g} bits/episode (log2 of {self.reward_levels} reward levels)"
        )
        return f"{self.episode_count:,.0f} episodes × {source} × safety margin {self.margin:g} = {self.bits:,.0f} bits"


@dataclass(frozen=True)
class RankChoice:
    """The chosen rank, its capacity, and everything that went into it."""

    rank: int
    """The adapter's r (``LoraConfig.r``); matrices with a rank multiplier train at more."""
    capacity_bits: float
    params_per_rank: int | float
    """Parameters per unit of r: Σ_m E_m·(d_in,m + d_out,m)·r_m/r over the matrices whose rank moves with r."""
    bits: float
    rule: str
    """"seed" (64·r·d, one d x d matrix) or "adapter" (the real adapted matrices)."""
    bits_per_param: float
    max_lora_rank: int | None = None
    """Smallest legal vLLM max_lora_rank >= the largest effective rank at ``rank``, when serving with vLLM."""
    inputs: dict[str, Any] = field(default_factory=dict)
    matrices: tuple[AdaptedMatrix, ...] = ()
    fixed_params: int = 0
    """Parameters of matrices whose rank an absolute ``rank_pattern`` entry fixes (do not grow with r)."""

    def params_at(self, rank: int) -> int | float:
        """Trainable LoRA parameters at adapter rank ``rank``: rank · params_per_rank + fixed_params."""
        return rank * self.params_per_rank + self.fixed_params

    @property
    def full_rank(self) -> int | None:
        """The rank at which every adapted matrix is full rank (max over matrices of min(d_in, d_out))."""
        return self.inputs.get("full_rank")

    @property
    def times_bits(self) -> float | None:
        """The margin the chosen rank leaves: capacity / the bits to hold (None when no bits are planned)."""
        return self.capacity_bits / self.bits if self.bits > 0 else None

    def capacity_at(self, rank: int) -> float:
        """Capacity in bits at ``rank`` over the same matrices (bits_per_param · params_at(rank))."""
        return adapter_capacity_bits(self.params_at(rank), self.bits_per_param)  # type: ignore[arg-type]

    def max_effective_rank(self, rank: int | None = None) -> int:
        """The largest per-matrix (per-expert) rank at adapter rank ``rank`` (default: the chosen one)."""
        rank = self.rank if rank is None else rank
        if not self.matrices:
            return rank
        return max(m.rank_at(rank) for m in self.matrices)

    def table(self, ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)) -> list[dict[str, Any]]:
        """Rows of rank, parameters, capacity, whether it holds the bits and how many times (``times_bits``:
        capacity / bits, None when no bits are planned), the chosen rank included; ranks above
        ``full_rank`` are left out."""
        rows = []
        full_rank = self.full_rank
        for rank in sorted({*(r for r in ranks if full_rank is None or r <= full_rank), self.rank}):
            rows.append(
                {
                    "rank": rank,
                    "params": self.params_at(rank),
                    "capacity_bits": self.capacity_at(rank),
                    "holds_bits": self.capacity_at(rank) >= self.bits,
                    "times_bits": self.capacity_at(rank) / self.bits if self.bits > 0 else None,
                    "chosen": rank == self.rank,
                    "max_effective_rank": self.max_effective_rank(rank),
                    "vllm_max_lora_rank": smallest_legal_max_lora_rank(self.max_effective_rank(rank)),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the choice, with the matrix count and the rank table."""
        data = asdict(self)
        data["matrices"] = len(self.matrices)
        data["max_effective_rank"] = self.max_effective_rank()
        data["table"] = self.table()
        data["full_rank"] = self.full_rank
        data["times_bits"] = self.times_bits
        return data


def select_rank(
    *,
    bits: float | None = None,
    plan: RunPlan | None = None,
    hidden_size: int | None = None,
    model: Any = None,
    model_config: Any = None,
    target_modules: Any = "all-linear",
    bits_per_param: float = DEFAULT_BITS_PER_PARAM,
    vllm: bool = False,
    max_lora_rank: int | None = None,
    **lora_options: Any,
) -> RankChoice:
    """The smallest LoRA rank whose capacity holds the bits the run will deliver.

    Give the bits (``bits=``, or a ``plan=``), and the shape: ``hidden_size`` (seed rule, one
    d x d matrix, 32 bits/param unless told otherwise) or ``model``/``model_config`` with
    ``target_modules`` (adapter rule; every matrix at the rank PEFT gives it, experts counted one by
    one, see ``adapted_matrices``). The returned rank is the adapter's r (``LoraConfig.r``). With
    ``vllm=True`` the largest effective rank at that r (2r where PEFT doubles the fused
    ``gate_up_proj``) must fit under a legal ``max_lora_rank`` (and under ``max_lora_rank`` when given).

    Raises:
        ValueError: both or neither of bits/plan, both shapes, negative bits.
        RankRefusedError (a ``ValueError``): no rank fits the limits: a rank above the
            adapted matrices' full rank (every matrix m already at min(d_in, d_out) per expert: more
            rank adds parameters but no expressiveness); with vLLM, an effective rank above 512 or
            above ``max_lora_rank``.
    """
    if (bits is None) == (plan is None):
        raise ValueError("give exactly one of bits= or plan=")
    needed = plan.bits if plan is not None else float(bits)  # type: ignore[arg-type]
    if math.isnan(needed) or needed < 0:
        raise ValueError(f"bits must be a non-negative number, got {needed}")
    inputs: dict[str, Any] = {"bits": needed, "bits_per_param": bits_per_param}
    if plan is not None:
        inputs["plan"] = asdict(plan)
        inputs["plan_explained"] = plan.explain()
    matrices, per_rank, fixed, rule = _rank_shape(
        inputs, hidden_size, model, model_config, target_modules, lora_options
    )
    rank = smallest_rank(needed, per_rank, bits_per_param, fixed)
    beyond, limit = _beyond_full_rank(rank, hidden_size, matrices)
    inputs["full_rank"] = limit
    if beyond:
        raise RankRefusedError(
            f"the smallest rank that holds {needed:,.0f} bits is r={rank}, above {limit}, the rank at which "
            "every adapted matrix is already full rank: no LoRA adapter of "
            + ("one d x d matrix" if rule == "seed" else "these modules")
            + " holds that much. "
            + fewer_matrices_advice(rule)
        )
    choice = RankChoice(
        rank=rank,
        capacity_bits=adapter_capacity_bits(rank * per_rank + fixed, bits_per_param),  # type: ignore[arg-type]
        params_per_rank=per_rank,
        bits=needed,
        rule=rule,
        bits_per_param=bits_per_param,
        inputs=inputs,
        matrices=matrices,
        fixed_params=fixed,
    )
    if vllm or max_lora_rank is not None:
        choice = _fit_vllm(choice, max_lora_rank)
    return choice


def _rank_shape(
    inputs: dict[str, Any],
    hidden_size: int | None,
    model: Any,
    model_config: Any,
    target_modules: Any,
    lora_options: dict[str, Any],
) -> tuple[tuple[AdaptedMatrix, ...], int | float, int, str]:
    """``select_rank``'s shape: (matrices, parameters per unit of r, fixed parameters, rule), recorded in ``inputs``."""
    if hidden_size is not None:
        if model is not None or model_config is not None:
            raise ValueError("give hidden_size= (seed rule) or model=/model_config= (adapter rule), not both")
        inputs["hidden_size"] = hidden_size
        return (), params_per_rank([(hidden_size, hidden_size)]), 0, "seed"
    from ..lora.shapes import adapted_matrices

    matrices = adapted_matrices(model=model, model_config=model_config, target_modules=target_modules, **lora_options)
    summary = AdapterSummary(matrices)
    inputs["target_modules"] = target_modules if isinstance(target_modules, str) else list(target_modules)
    if not summary.params_per_rank > 0:
        raise ValueError(
            "every adapted matrix has a rank fixed by rank_pattern, so no choice of r changes the capacity; "
            "drop the absolute rank_pattern entries or choose the ranks by hand"
        )
    return matrices, summary.params_per_rank, summary.fixed_params, "adapter"


def _beyond_full_rank(rank: int, hidden_size: int | None, matrices: tuple[AdaptedMatrix, ...]) -> tuple[bool, int]:
    """(whether every adapted matrix is already full rank at ``rank``, the rank where that starts)."""
    if hidden_size is not None:
        return rank > hidden_size, hidden_size
    moving = [m for m in matrices if not m.fixed_rank]
    return all(m.rank_at(rank) > m.full_rank for m in moving), max(
        math.floor(m.full_rank / m.rank_ratio) for m in moving
    )


def _fit_vllm(choice: RankChoice, max_lora_rank: int | None) -> RankChoice:
    """``choice`` with the smallest legal vLLM ``max_lora_rank`` for its largest effective rank.

    Raises:
        RankRefusedError: above vLLM's largest ``max_lora_rank``, or above ``max_lora_rank`` when given.
    """
    rank, needed = choice.rank, choice.bits
    effective = choice.max_effective_rank()
    serving_rank = smallest_legal_max_lora_rank(effective)
    choice.inputs["max_lora_rank"] = max_lora_rank
    where = f"r={rank}" if effective == rank else f"r={rank} (its largest per-matrix rank is {effective})"
    if serving_rank is None:
        raise RankRefusedError(
            f"the adapter at {where} is above vLLM's largest max_lora_rank {LEGAL_MAX_LORA_RANKS[-1]}: the plan "
            f"needs more capacity than one vLLM-served LoRA adapter can have; {more_matrices(choice.rule)}, or "
            "merge it"
        )
    if max_lora_rank is not None and effective > max_lora_rank:
        raise RankRefusedError(
            f"the smallest rank that holds {needed:,.0f} bits is {where}, above max_lora_rank={max_lora_rank}; "
            f"serve with max_lora_rank={serving_rank}, or hold the bits at a lower rank: "
            f"{more_matrices(choice.rule)}"
        )
    return replace(choice, max_lora_rank=serving_rank)
