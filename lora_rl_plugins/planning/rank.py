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
            "every adapted matrix is already full rank: no LoRA adapter of these modules holds that much. "
            "Adapt more modules (target_modules), plan fewer bits (episodes, margin), or fine-tune fully"
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


#: What a rank sweep measured on the demo's own task (issue #25; the demo's defaults otherwise): final reward
#: (mean over the last tenth of the steps) at seeds 0, 1, 2, per rank. Quoted as measured; not a law.
MEASURED_LOWER_RANKS = {
    "command": "lora-rl demo --rank R --seed S",
    "settings": "300 steps, lora_alpha = 2r, lr 2e-3 held fixed",
    "reward": {1: (0.37, 0.68, 0.69), 8: (0.79, 0.85, 0.81), 32: (0.73, 0.98, 0.82)},
}

#: A signal below this fraction of what r = 1 holds (or below 1 bit) is too small to judge a rank by
#: (a heuristic threshold).
TOO_SMALL_FRACTION = 1e-4
#: Absorbed (or, without probes, signal) bits at this fraction of the trained rank's capacity or more: raise it.
NEAR_CAPACITY_FRACTION = 0.5
#: A reward whose first-tenth and last-tenth means differ by less than this (in reward units, or relative to the
#: larger of the two when they exceed 1) did not move: nothing was learned.
FLAT_REWARD = 0.02


def measured_lower_ranks() -> str:
    """``MEASURED_LOWER_RANKS`` in words: "final reward at seeds 0/1/2 r=1: 0.37/0.68/0.69, ... (`command`: ...)"."""
    rewards = ", ".join(
        f"r={r}: {'/'.join(f'{v:.2f}' for v in values)}" for r, values in MEASURED_LOWER_RANKS["reward"].items()
    )
    command, settings = MEASURED_LOWER_RANKS["command"], MEASURED_LOWER_RANKS["settings"]
    return f"final reward at seeds 0/1/2 {rewards} (`{command}`: {settings})"


@dataclass(frozen=True)
class RankAdvice:
    """What limits a run, as sentences: ``limit`` is "signal" (too little learned to judge a rank), "capacity"
    (what was absorbed approaches the adapter's capacity: raise the rank) or "rule" (the capacity rule's rank,
    with what is measured about lower ranks)."""

    limit: str
    rank: int
    """The rank advised: the trained rank ("signal"), a higher one ("capacity") or the rule's ("rule")."""
    lines: tuple[str, ...]


def advise_rank(
    *,
    rank: int,
    capacity_bits: float,
    signal_bits: float,
    rank_sufficient: int,
    reward_first: float | None = None,
    reward_last: float | None = None,
    absorbed_bits: float | None = None,
    max_lora_rank: int | None = None,
) -> RankAdvice:
    """Advice on the rank of a finished (or running) run, naming what limits it.

    Args:
        rank: the trained adapter's r.
        capacity_bits: its capacity (``bandwidth/capacity_bits``, bits).
        signal_bits: the signal (``bandwidth/projected_bits``: summed over steps, an upper estimate, bits).
        rank_sufficient: the smallest r whose capacity holds ``signal_bits`` (``bandwidth/rank_sufficient``).
        reward_first, reward_last: the mean reward over the first and the last tenth of the steps.
        absorbed_bits: ``learning/absorbed_bits`` (exact, on the probe set) where measured.
        max_lora_rank: the vLLM server's ``max_lora_rank`` the adapter is for.

    Cases, in order: the signal is too small to judge (reward flat, nothing absorbed, or the signal below
    ``TOO_SMALL_FRACTION`` of what r = 1 holds): the limit is the reward, the task or the sampling, not the
    rank; absorbed bits (the signal without probes) at ``NEAR_CAPACITY_FRACTION`` of capacity or more: raise
    the rank; otherwise the rule's rank with ``MEASURED_LOWER_RANKS``. The thresholds are heuristics.
    """
    per_rank = capacity_bits / max(rank, 1)
    flat = None
    if reward_first is not None and reward_last is not None:
        flat = abs(reward_last - reward_first) < FLAT_REWARD * max(1.0, abs(reward_first), abs(reward_last))
    lines: list[str]
    if (
        flat
        or signal_bits < max(1.0, TOO_SMALL_FRACTION * per_rank)
        or (absorbed_bits is not None and absorbed_bits <= 0)
    ):
        why = []
        if flat:
            why.append(f"the reward did not move ({reward_first:.2f} -> {reward_last:.2f})")
        if absorbed_bits is not None and absorbed_bits <= 0:
            why.append(f"the policy absorbed {absorbed_bits:.1f} bits on the probes")
        why.append(f"the signal is {signal_bits:,.0f} bits against {per_rank:,.0f} that r=1 holds")
        limit, advised = "signal", rank
        lines = [
            f"too little signal to judge a rank: {'; '.join(why)}. The limit is the signal, not the rank: look at "
            "the reward (does it vary within a group?), the task (too easy or too hard: every group solved or "
            "unsolved) or the sampling (more generations, a higher temperature); a lower rank would not help"
        ]
    else:
        held = absorbed_bits if absorbed_bits is not None else signal_bits
        what = "absorbed (exact, on the probes)" if absorbed_bits is not None else "of signal (an upper estimate)"
        if held >= NEAR_CAPACITY_FRACTION * capacity_bits:
            advised = max(rank_sufficient, 2 * rank)
            limit = "capacity"
            lines = [
                f"near capacity: {held:,.0f} bits {what} is {held / capacity_bits:.0%} of the {capacity_bits:,.0f} "
                f"bits r={rank} holds: raise the rank (r={advised} holds {per_rank * advised:,.0f})"
            ]
        else:
            limit, advised = "rule", rank_sufficient
            lines = [
                f"r={rank_sufficient} would hold the {signal_bits:,.0f} bits of signal "
                f"({per_rank * rank_sufficient / max(signal_bits, 1.0):,.0f}x; capacity is a floor, the signal an "
                "upper estimate of what is stored)",
                "but a lower rank learned less at the same learning rate on the demo's codebook task: "
                + measured_lower_ranks()
                + f"; keep r={rank}, or retune the learning rate before lowering it",
            ]
    if max_lora_rank is not None:
        lines.append(serving_note(rank if limit != "capacity" else advised, max_lora_rank))
    return RankAdvice(limit, advised, tuple(lines))


def serving_note(rank: int, max_lora_rank: int | None, effective_rank: int | None = None) -> str:
    """One sentence on serving a rank-``rank`` adapter with vLLM: with the server's ``max_lora_rank`` the ranks
    that cost nothing more to serve (vLLM pre-allocates LoRA buffers by ``max_lora_rank``, not r) or a refusal
    when the adapter's largest per-matrix rank (``effective_rank``, default ``rank``) exceeds it; without one,
    the smallest legal ``max_lora_rank`` and what it serves."""
    effective = rank if effective_rank is None else effective_rank
    where = f"r={rank}" if effective == rank else f"r={rank} (largest per-matrix rank {effective})"
    if max_lora_rank is not None:
        if effective > max_lora_rank:
            legal = smallest_legal_max_lora_rank(effective)
            fix = f"start it with max_lora_rank={legal}" if legal else "no legal max_lora_rank holds it"
            return f"vLLM: {where} exceeds the server's max_lora_rank={max_lora_rank}: vLLM refuses it ({fix})"
        return (
            f"vLLM: the server's max_lora_rank={max_lora_rank} serves {where}; any r up to {max_lora_rank} costs the "
            "same GPU memory there (vLLM sizes its LoRA buffers by max_lora_rank, not r)"
        )
    legal = smallest_legal_max_lora_rank(effective)
    if legal is None:
        return f"vLLM: {where} is above vLLM's largest max_lora_rank {LEGAL_MAX_LORA_RANKS[-1]}"
    above = [m for m in LEGAL_MAX_LORA_RANKS if m > legal]
    more = f"; max_lora_rank={above[0]} would serve any r up to {above[0]} at its (larger) cost" if above else ""
    return (
        f"vLLM: serve with max_lora_rank >= {legal} (the smallest legal value >= {effective}); it serves any r up "
        f"to {legal} at the same GPU memory{more}"
    )


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
            "needs more capacity than one vLLM-served LoRA adapter can have; adapt more modules or merge it"
        )
    if max_lora_rank is not None and effective > max_lora_rank:
        raise RankRefusedError(
            f"the smallest rank that holds {needed:,.0f} bits is {where}, above max_lora_rank={max_lora_rank}; "
            f"serve with max_lora_rank={serving_rank}, or adapt more modules (target_modules) so that a lower "
            "rank holds it"
        )
    return replace(choice, max_lora_rank=serving_rank)
