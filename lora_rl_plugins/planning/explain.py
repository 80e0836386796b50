"""``lora-rl rank``'s answer in words (``explain_rank``): a ``RankChoice`` and its ``RunPlan`` as the text the
command prints. Presentation only: the choice itself is ``planning.rank.select_rank``'s.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from .advice import fewer_matrices_advice, measured_lower_ranks, serving_note
from .rank import RankChoice, RunPlan

__all__ = ["explain_rank", "memory_not_estimated", "times"]


def explain_rank(
    choice: RankChoice,
    plan: RunPlan | None,
    memory: int | None,
    memory_note: str | None = None,
    server_max_lora_rank: int | None = None,
    as_flags: Callable[[str], str] = str,
) -> str:
    """``lora-rl rank``'s answer in words: the bits, the rule, a table of ranks (parameters, capacity, whether
    it holds the bits, capacity ÷ bits, vLLM's max_lora_rank), the chosen rank and its margin, a near-full-rank
    warning, the vLLM serving note and LoRA buffer memory (``memory`` bytes, an estimate, or ``memory_note``
    saying why there is none), and why a larger rank may still be chosen (what was measured). ``as_flags``
    rewrites the library's keywords in advice (``target_modules=``) as the command's flags.
    """

    if choice.rule == "seed":  # 2·r·d parameters at bits_per_param each: 64·r·d at the default 32
        rule = f"seed rule {2 * choice.bits_per_param:g}·r·d >= bits with d = {choice.inputs['hidden_size']}"
    else:
        experts = sum(m.experts for m in choice.matrices)
        multiplied = sorted({m.name.rsplit(".", 1)[-1] for m in choice.matrices if m.rank_ratio > 1})
        rule = (
            f"adapter rule {choice.bits_per_param:g}·params(r) >= bits over {experts:,} matrices "
            f"(target_modules={choice.inputs['target_modules']!r}); parameters per unit of r "
            f"Σ E·(d_in+d_out)·r_m/r = {choice.params_per_rank:,}"
        )
        if multiplied:
            rule += f"; PEFT trains {', '.join(multiplied)} at a multiple of r (rank_pattern)"
        if choice.fixed_params:
            rule += f"; + {choice.fixed_params:,} parameters at ranks fixed by rank_pattern"
    lines = [
        f"bits to hold: {plan.explain() if plan else f'{choice.bits:,.0f} bits (given)'}",
        f"rule:         {rule}",
        "",
        f"  {'rank':>5}  {'parameters':>14}  {'capacity (bits)':>17}  {'holds?':>6}  {'capacity÷bits':>13}"
        f"  {'vLLM max_lora_rank':>18}",
    ]
    for row in choice.table():
        mark = "  <- chosen" if row["chosen"] else ""
        ratio = times(row["times_bits"])
        lines.append(
            f"  {row['rank']:>5}  {row['params']:>14,}  {row['capacity_bits']:>17,.0f}  "
            f"{'yes' if row['holds_bits'] else 'no':>6}  {ratio:>13}  {row['vllm_max_lora_rank'] or '-':>18}{mark}"
        )
    lines += ["", f"chosen rank: r = {choice.rank} ({choice.capacity_bits:,.0f} bits of capacity)"]
    if choice.times_bits is not None:
        planned = " (the plan's own margin included)" if plan is not None and plan.margin > 1 else ""
        lines.append(f"margin:       r = {choice.rank} holds {times(choice.times_bits)} the bits to hold{planned}")
    full = choice.full_rank
    if full and choice.rank >= full / 2:
        lines.append(
            f"near full rank: r = {choice.rank} is {choice.rank / full:.0%} of the full rank {full} of the adapted "
            "matrices: a LoRA this large has nearly as many parameters as the matrices themselves. "
            + as_flags(fewer_matrices_advice(choice.rule))
        )
    if choice.max_lora_rank:  # the server's max_lora_rank when given: what it serves at no extra cost
        note = serving_note(choice.rank, server_max_lora_rank, choice.max_effective_rank())
        lines.append(f"vLLM:         {note.removeprefix('vLLM: ')}")
    if memory is not None:
        lines.append(
            f"memory:       vLLM pre-allocates ~{memory / 2**20:,.1f} MiB of LoRA buffers at that max_lora_rank "
            "(estimate, TP 1; the trained rank does not change it)"
        )
    else:
        lines.append(f"memory:       not estimated ({memory_note or memory_not_estimated(choice)})")
    lines += [
        "why larger:   capacity is a floor, not a target. A larger rank can still train better: with lora_alpha",
        "              fixed the update scale α/r shrinks as r grows (retune the learning rate, or use rsLoRA).",
        *textwrap.wrap(
            f"Measured on the demo's task, {measured_lower_ranks()}.",
            104,
            initial_indent=" " * 14,
            subsequent_indent=" " * 14,
            break_on_hyphens=False,
        ),
    ]
    return "\n".join(lines)


def memory_not_estimated(choice: RankChoice) -> str:
    """Why ``lora-rl rank`` printed no vLLM LoRA buffer memory, with what would give one."""
    if choice.rule == "seed":
        return (
            "the seed rule has no model, and vLLM's LoRA buffers are sized by the model's modules: give "
            "--model-config and --vllm"
        )
    return "vLLM's LoRA buffers, sized by max_lora_rank and not by r, are estimated with --vllm"


def times(value: float | None) -> str:
    """capacity / bits as "12×", "0.0031×" (three significant digits), "-" when nothing is planned."""
    if value is None:
        return "-"
    return f"{value:,.0f}×" if value >= 1000 else f"{value:.3g}×"
