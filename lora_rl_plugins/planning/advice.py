"""Advice on the rank of a finished (or running) run: what limits it (the signal, the capacity, or the rule),
with what was measured about lower ranks, and what a vLLM server's ``max_lora_rank`` means for it.

The thresholds below are heuristics, stated as such; the capacity rule itself is ``planning.rank``'s
(docs/theory.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..serving.vllm import LEGAL_MAX_LORA_RANKS, smallest_legal_max_lora_rank

__all__ = [
    "MEASURED_LOWER_RANKS",
    "SHORT_RUN_STEPS",
    "RankAdvice",
    "advise_rank",
    "fewer_matrices_advice",
    "measured_lower_ranks",
    "more_matrices",
    "serving_note",
]


#: What a rank sweep measured on the demo's own task (the demo's defaults otherwise): final reward (mean over
#: the last tenth of the steps) at seeds 0, 1, 2, per rank, and ``learning/absorbed_bits`` at the end (exact,
#: of 35.0 to learn). Measured on AMD EPYC (torch's CPU instruction set AVX512), torch 2.13.0+cpu, 1 thread,
#: 2026-12-03; sampled runs differ between instruction sets (issue 25 saw r=8: 0.79/0.85/0.81 and
#: r=32: 0.73/0.98/0.82 on another CPU; r=1 the same). Quoted as measured; not a law.
MEASURED_LOWER_RANKS = {
    "command": "lora-rl demo --rank R --seed S",
    "steps": 300,
    "settings": "300 steps, lora_alpha = 2r, lr 2e-3 held fixed",
    "reward": {1: (0.37, 0.68, 0.69), 8: (0.87, 0.85, 0.80), 32: (0.73, 0.87, 0.82)},
    "absorbed_bits": {1: (-6.9, 13.5, 8.3), 8: (25.5, 26.3, 17.9), 32: (4.2, 29.1, 15.7)},
}

#: A signal below this fraction of what r = 1 holds (or below 1 bit) is too small to judge a rank by
#: (a heuristic threshold).
TOO_SMALL_FRACTION = 1e-4
#: Absorbed (or, without probes, signal) bits at this fraction of the trained rank's capacity or more: raise it.
NEAR_CAPACITY_FRACTION = 0.5
#: A reward whose first-tenth and last-tenth means differ by less than this (in reward units, or relative to the
#: larger of the two when they exceed 1) did not move: nothing was learned.
FLAT_REWARD = 0.02
#: A run of fewer optimizer steps than this whose reward did not rise is too short to say anything about the rank
#: or the signal: train longer first (a heuristic threshold; the demo's task was measured at 300 steps, above).
SHORT_RUN_STEPS = 100


def measured_lower_ranks() -> str:
    """``MEASURED_LOWER_RANKS`` in words: "final reward at seeds 0/1/2 r=1: 0.37/0.68/0.69, ... (`command`: ...)"."""
    rewards = ", ".join(
        f"r={r}: {'/'.join(f'{v:.2f}' for v in values)}" for r, values in MEASURED_LOWER_RANKS["reward"].items()
    )
    command, settings = MEASURED_LOWER_RANKS["command"], MEASURED_LOWER_RANKS["settings"]
    return f"final reward at seeds 0/1/2 {rewards} (`{command}`: {settings})"


def more_matrices(rule: str) -> str:
    """How to spread the bits over more matrices, true for the rule used: the adapter rule can adapt more modules
    (``target_modules=``); the seed rule has no real modules (one d x d matrix stands for the model), so it asks
    for the model instead (``model_config=``, the adapter rule)."""
    if rule == "seed":
        return "give the model (model_config=: the adapter rule counts every matrix the adapter trains)"
    return "adapt more modules (target_modules=)"


def fewer_matrices_advice(rule: str) -> str:
    """What to do when no rank, or only one near full rank, holds the bits: ``more_matrices``, fewer bits, or
    full fine-tuning (library keywords; ``lora-rl`` shows them as its flags)."""
    more = more_matrices(rule)
    return f"{more[:1].upper()}{more[1:]}, plan fewer bits (bits=, or episodes=, margin=), or fine-tune fully"


@dataclass(frozen=True)
class RankAdvice:
    """What limits a run, as sentences: ``limit`` is "steps" (a short run whose reward did not rise: train
    longer before judging anything), "signal" (too little learned to judge a rank), "capacity" (what was
    absorbed approaches the adapter's capacity: raise the rank) or "rule" (the capacity rule's rank, with what
    is measured about lower ranks)."""

    limit: str
    rank: int
    """The rank advised: the trained rank ("steps", "signal"), a higher one ("capacity") or the rule's ("rule")."""
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
    steps: int | None = None,
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
        steps: the optimizer steps the run took, where known.

    Cases, in order: a short run (``steps`` below ``SHORT_RUN_STEPS``) with a signal (not too small, below)
    whose reward did not rise by ``FLAT_REWARD``: too short to judge the rank or the signal, train longer; the
    signal is too small to judge (reward flat, nothing absorbed, or the signal below ``TOO_SMALL_FRACTION`` of
    what r = 1 holds): the limit is the reward, the task or the sampling, not the rank; absorbed bits (the
    signal without probes) at ``NEAR_CAPACITY_FRACTION`` of capacity or more: raise the rank; otherwise the
    rule's rank with ``MEASURED_LOWER_RANKS``. The thresholds are heuristics.
    """
    per_rank = capacity_bits / max(rank, 1)
    flat = rose = None
    if reward_first is not None and reward_last is not None:
        threshold = FLAT_REWARD * max(1.0, abs(reward_first), abs(reward_last))
        flat, rose = abs(reward_last - reward_first) < threshold, reward_last - reward_first >= threshold
    too_small = signal_bits < max(1.0, TOO_SMALL_FRACTION * per_rank)
    lines: list[str]
    if (
        not too_small  # with no signal at all (every group's rewards equal) more steps would not help
        and steps is not None
        and steps < SHORT_RUN_STEPS
        and rose is False
    ):
        limit, advised = "steps", rank
        lines = [
            f"too short to judge a rank: the reward did not rise over {steps} steps ({reward_first:.2f} -> "
            f"{reward_last:.2f}). Train longer (more steps; the demo's task was measured over "
            f"{MEASURED_LOWER_RANKS['steps']}) before changing the rank, the task or the "
            "sampling: a run this short says nothing about them yet"
        ]
    elif flat or too_small or (absorbed_bits is not None and absorbed_bits <= 0):
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
                f"(its capacity, {per_rank * rank_sufficient:,.0f} bits, is "
                f"{per_rank * rank_sufficient / max(signal_bits, 1.0):,.0f}x the signal; capacity is a floor, the "
                "signal an upper estimate of what is stored)",
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
