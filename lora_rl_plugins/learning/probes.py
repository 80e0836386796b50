"""Information absorbed, measured on a fixed probe set (docs/theory.md §8).

For probe prompts x with reference answers y (the tokens a correct policy emits, or their prefix):
absorbed = Σ_x log2 π_θ(y|x) − log2 π_ref(y|x) and answer bits = Σ_x −log2 π_ref(y|x), teacher-forced
at the sampling temperature, π_ref the reference the KL monitor uses (adapters disabled; no copy).
Because log2 π_θ(y|x) ≤ 0, absorbed ≤ answer bits exactly; it reaches them when the policy emits
every answer with probability 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..kl.reference import ReferencePolicy

__all__ = ["ProbeResult", "measure_probes", "probe_batch"]


@dataclass(frozen=True)
class ProbeResult:
    """Per-probe log2-probabilities of the answers (bits ≤ 0) and their sums."""

    policy_log2: tuple[float, ...]
    reference_log2: tuple[float, ...]

    @property
    def absorbed_bits(self) -> float:
        """Σ log2 π_θ(y|x) − log2 π_ref(y|x) (exact for the probe set; may be < 0)."""
        return sum(p - r for p, r in zip(self.policy_log2, self.reference_log2, strict=True))

    @property
    def answer_bits(self) -> float:
        """Σ −log2 π_ref(y|x): what there is to learn about the probe answers under the reference."""
        return -sum(self.reference_log2)

    @property
    def remaining_bits(self) -> float:
        """Σ −log2 π_θ(y|x) = answer_bits − absorbed_bits (≥ 0)."""
        return -sum(self.policy_log2)


def probe_batch(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str]) -> tuple[Any, Any, Any]:
    """Left-padded [B, P + C] ids and mask and the [B, C] answer mask for (prompt, answer) pairs.

    Prompt and answer are tokenized separately without special tokens (as TRL tokenizes the prompt
    text), so the answer tokens are exactly the tokens a policy emits after the prompt.

    Raises:
        ValueError: lengths differ, or an answer tokenizes to nothing.
    """
    import torch

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} probe prompts but {len(answers)} answers: give one answer per prompt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not a:
            raise ValueError(f"the reference answer {answer!r} of probe {prompt!r} tokenizes to no tokens")
        rows.append((p, a))
    width_p = max(len(p) for p, _ in rows)
    width_a = max(len(a) for _, a in rows)
    ids = torch.full((len(rows), width_p + width_a), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer_mask = torch.zeros((len(rows), width_a), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        # prompt right-aligned in its block, answer left-aligned after it, padding on the right of the answer
        ids[i, width_p - len(p) : width_p] = torch.tensor(p)
        mask[i, width_p - len(p) : width_p] = 1
        ids[i, width_p : width_p + len(a)] = torch.tensor(a)
        mask[i, width_p : width_p + len(a)] = 1
        answer_mask[i, : len(a)] = 1
    return ids, mask, answer_mask


def measure_probes(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    reference: ReferencePolicy | None = None,
    temperature: float = 1.0,
    batch_size: int = 64,
    logits_source: Any = None,
    engine_model: Any = None,
) -> ProbeResult:
    """log2 π_θ(answer | prompt) and log2 π_ref(answer | prompt) for every probe (teacher-forced).

    Uses ``lora_rl_plugins.kl.measure.token_log_probs``: the KL monitor's logits (``logits_source``, a
    ``kl.measure.LogitsSource`` checked against the model's own forward on first use; None checks on
    every call), float64 after the logits, and its reference. ``engine_model``: the engine's wrapper
    under FSDP/ZeRO-3 (then a collective call: every process measures the same probe set). Returns
    bits (log2). Raises what ``probe_batch`` and ``token_log_probs`` raise.
    """
    from ..kl.measure import token_log_probs

    device = next(model.parameters()).device
    policy: list[float] = []
    ref: list[float] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask, answer_mask = probe_batch(
            tokenizer, prompts[start : start + batch_size], answers[start : start + batch_size]
        )
        logp, ref_logp = token_log_probs(
            model,
            ids.to(device),
            mask.to(device),
            answer_mask.to(device),
            reference=reference,
            temperature=temperature,
            logits_source=logits_source,
            engine_model=engine_model,
        )
        policy += [float(v) / math.log(2) for v in logp.cpu()]
        ref += [float(v) / math.log(2) for v in ref_logp.cpu()]
    return ProbeResult(tuple(policy), tuple(ref))
