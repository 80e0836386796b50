"""Exact KL between a LoRA policy and its reference on sampled completions (torch, no gradients).

For each completion position s the full-vocabulary KL(pi_θ(.|s) || pi_ref(.|s)) and the reverse
direction are computed from the model's own logits at the trainer's sampling temperature, together
with TRL's k3 estimator on the sampled token (exp(ref − logp) − (ref − logp) − 1), the Hoeffding
certificate (max δ − min δ)²/8 of the log-probability shift δ, and the largest feature norm entering
the output layer (for the single-layer bound). Everything after the logits runs in float64
(docs/theory.md §3, "What is measured").

Memory stays bounded for large vocabularies. Where the model's logits are its output layer applied
to the body's last hidden state (possibly soft-capped), the body runs once per policy (hidden
states only) and the output layer is applied in chunks of positions ("head" path). That is never
assumed: ``LogitsSource`` proves it on the first measurement against the model's own
``forward(...).logits`` on a slice of one sequence, and otherwise measures through the model's own
forward in chunks of sequences and positions (``logits_to_keep``; "forward" path).

The reference is the same model with its adapters disabled (PEFT ``disable_adapter``), a named
frozen adapter (TRL's "ref"), or a snapshot of the starting adapter's weights swapped in: never a
copy of the model.

Under an engine that shards parameters (FSDP1/2, DeepSpeed ZeRO-3; ``kl.engine``) the body runs
through the engine's own forward, the output layer is gathered once per measurement and applied
locally, and a process with no sequences measures a dummy row of weight 0: every process makes the
same collective calls whatever its local batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from ..lora.sharding import engine_fixed, is_sharded
from .bounds import hoeffding_certificate
from .engine import eval_mode, hidden_states, nonempty_batch, output_logits
from .logits import LogitsSource, LogitsSourceError, accepts_logits_to_keep, body_and_head, own_logits
from .reference import ReferencePolicy

__all__ = [
    "DEFAULT_MAX_CHUNK_ELEMENTS",
    "KLSums",
    "LogitsSource",
    "LogitsSourceError",
    "measure_kl",
    "token_log_probs",
]

#: Upper limit on B x positions x vocabulary values per float64 tensor of one chunk (64 MiB each; a
#: chunk holds about four such tensors at once, plus the model-dtype logits of both policies).
DEFAULT_MAX_CHUNK_ELEMENTS = 2**23


@dataclass
class KLSums:
    """Additive statistics of one measurement, summed (or maxed) over processes before use."""

    tokens: float = 0.0
    kl: float = 0.0
    reverse_kl: float = 0.0
    k3: float = 0.0
    k3_squared: float = 0.0
    certificate: float = 0.0
    sequences: float = 0.0
    sequence_kl: float = 0.0
    kl_max: float = 0.0
    feature_norm_max: float = 0.0
    _maxima: tuple[str, ...] = field(default=("kl_max", "feature_norm_max"), repr=False)

    def sum_fields(self) -> list[str]:
        """Names of the additive fields (summed over processes; the rest are maxima)."""
        return [f.name for f in fields(self) if f.name not in self._maxima and not f.name.startswith("_")]

    def reduce(self, collective: Any) -> KLSums:
        """Sum the additive fields and max the maxima over all processes."""
        sums = collective.sum([getattr(self, name) for name in self.sum_fields()])
        maxima = collective.max([getattr(self, name) for name in self._maxima])
        reduced = KLSums(**dict(zip(self.sum_fields(), sums, strict=True)))
        for name, value in zip(self._maxima, maxima, strict=True):
            setattr(reduced, name, value)
        return reduced


def _accumulate(
    sums: KLSums,
    per_sequence: Any,
    logits: Any,
    ref_logits: Any,
    targets: Any,
    chunk_mask: Any,
    features: Any,
    temperature: float,
) -> None:
    """Add one chunk's KL statistics (float64 from the logits on) to ``sums`` and ``per_sequence``."""
    import torch

    logp = torch.log_softmax(logits.to(torch.float64).div_(temperature), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.to(torch.float64).div_(temperature), dim=-1)
    index = targets.unsqueeze(-1)
    log_ratio = (ref_logp.gather(-1, index) - logp.gather(-1, index)).squeeze(-1)
    delta = logp - ref_logp
    certificate = hoeffding_certificate(delta)
    # KL = Σ p·δ >= 0 (Gibbs): a negative sum is rounding, so clamping at 0 only moves it toward the truth.
    kl = logp.exp_().mul_(delta).sum(-1).clamp_min_(0.0)
    reverse = ref_logp.exp_().mul_(delta).sum(-1).neg_().clamp_min_(0.0)
    k3 = (torch.expm1(log_ratio) - log_ratio).clamp_min_(0.0)  # e^x − x − 1 >= 0, without cancellation
    weights = chunk_mask.to(torch.float64)
    sums.kl += float((kl * weights).sum())
    sums.reverse_kl += float((reverse * weights).sum())
    sums.k3 += float((k3 * weights).sum())
    sums.k3_squared += float((k3.square() * weights).sum())
    sums.certificate += float((certificate * weights).sum())
    sums.tokens += float(weights.sum())
    sums.kl_max = max(sums.kl_max, float(kl.masked_fill(~chunk_mask, 0.0).max()))
    if features is not None:
        norms = features.to(torch.float64).norm(dim=-1).masked_fill(~chunk_mask, 0.0)
        sums.feature_norm_max = max(sums.feature_norm_max, float(norms.max()))
    per_sequence += (kl * weights).sum(-1)


def measure_kl(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    completion_mask: Any,
    *,
    reference: ReferencePolicy | None = None,
    temperature: float = 1.0,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    logits_source: LogitsSource | None = None,
    engine_model: Any = None,
) -> KLSums:
    """Sums over the completion tokens marked in ``completion_mask`` (this process only).

    Args:
        model: a transformers causal LM with LoRA (PEFT).
        input_ids, attention_mask: [B, L] prompt + completion.
        completion_mask: [B, C] over the last C positions (1 = a measured token).
        reference: the reference policy (default: adapters disabled).
        temperature: the sampling temperature T; logits are divided by it.
        max_chunk_elements: B x positions x vocabulary values per float64 chunk tensor (at least one
            position of one sequence is measured at a time).
        logits_source: the run's ``LogitsSource`` (checked on its first use and remembered); None
            checks on this call.
        engine_model: the engine's outer wrapper (``trainer.model_wrapped``) where there is one. Under
            an engine that shards parameters this is a collective call: every process must call it
            the same number of times, whatever its local batch (B may be 0).

    Returns:
        ``KLSums``; KL values in nats, computed in float64 from the model's own logits.

    Raises:
        LogitsSourceError: the model returns no logits of shape [batch, positions, vocabulary], or,
            under FSDP/ZeRO-3, its logits are not its output layer's (no chunked path is collective-safe
            there yet).
    """
    import torch

    reference = reference or ReferencePolicy()
    input_ids, attention_mask, completion_mask = nonempty_batch(input_ids, attention_mask, completion_mask)
    rows = input_ids.shape[0]
    mask = completion_mask.bool()
    targets = input_ids[:, -mask.shape[1] :]
    sums = KLSums()
    per_sequence = torch.zeros(rows, dtype=torch.float64, device=input_ids.device)
    with torch.no_grad(), engine_fixed(), eval_mode(model):
        for block, start, stop, logits, ref_logits, features in _logit_chunks(
            model, engine_model, logits_source, input_ids, attention_mask, mask, reference, max_chunk_elements
        ):
            _accumulate(
                sums,
                per_sequence[block],
                logits,
                ref_logits,
                targets[block, start:stop],
                mask[block, start:stop],
                features,
                temperature,
            )
        has_tokens = mask.any(dim=1)
        sums.sequences = float(has_tokens.sum())
        sums.sequence_kl = float(per_sequence[has_tokens].sum())
    return sums


def token_log_probs(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    completion_mask: Any,
    *,
    reference: ReferencePolicy | None = None,
    temperature: float = 1.0,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    logits_source: LogitsSource | None = None,
    engine_model: Any = None,
) -> tuple[Any, Any]:
    """Log-probabilities of given tokens under the policy and its reference, teacher-forced.

    The same logits as ``measure_kl`` (the checked ``LogitsSource``: the body once per policy and the
    output layer in chunks, or the model's own forward in chunks; through the engine under
    FSDP/ZeRO-3), float64 from the logits on, eval mode, no gradients.

    Args:
        model: a transformers causal LM with LoRA (PEFT).
        input_ids, attention_mask: [B, L] prompt + completion.
        completion_mask: [B, C] over the last C positions (1 = a token whose log-probability counts).
        reference: the reference policy (default: adapters disabled).
        temperature: the sampling temperature T; logits are divided by it.
        max_chunk_elements: as ``measure_kl``.
        logits_source: the run's ``LogitsSource`` (checked on first use); None checks on this call.
        engine_model: the engine's outer wrapper, as ``measure_kl`` (a collective call under a
            sharding engine: every process calls it the same number of times; B may be 0).

    Returns:
        (policy, reference): float64 [B] tensors, Σ over the marked tokens of log π(token | prefix)
        in nats at temperature T (log_softmax(z / T) of the model's logits z).

    Raises:
        LogitsSourceError: as ``measure_kl``.
    """
    import torch

    reference = reference or ReferencePolicy()
    given_rows = input_ids.shape[0]
    input_ids, attention_mask, completion_mask = nonempty_batch(input_ids, attention_mask, completion_mask)
    mask = completion_mask.bool()
    targets = input_ids[:, -mask.shape[1] :]
    policy = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
    ref = torch.zeros_like(policy)
    with torch.no_grad(), engine_fixed(), eval_mode(model):
        for block, start, stop, logits, ref_logits, _ in _logit_chunks(
            model, engine_model, logits_source, input_ids, attention_mask, mask, reference, max_chunk_elements
        ):
            index = targets[block, start:stop].unsqueeze(-1)
            chunk_mask = mask[block, start:stop]
            for total, z in ((policy, logits), (ref, ref_logits)):
                logp = torch.log_softmax(z.to(torch.float64).div_(temperature), dim=-1)
                total[block] += logp.gather(-1, index).squeeze(-1).masked_fill(~chunk_mask, 0.0).sum(-1)
    return policy[:given_rows], ref[:given_rows]


def _logit_chunks(
    model: Any,
    engine_model: Any,
    logits_source: LogitsSource | None,
    input_ids: Any,
    attention_mask: Any,
    mask: Any,
    reference: ReferencePolicy,
    max_chunk_elements: int,
) -> Iterator[tuple[slice, int, int, Any, Any, Any]]:
    """The policy's and the reference's logits over the completion positions, chunk by chunk.

    Yields ``(rows, start, stop, logits, ref_logits, features)``: the sequences (a slice of the
    batch) and completion positions [start, stop) of one chunk holding at least one marked token,
    the two [rows, stop − start, V] logits in the model's dtype (after the verified soft-cap), and
    the features entering the output layer (or None). Resolves ``logits_source`` first (model in
    eval mode, no gradients: the caller's job).

    Raises:
        LogitsSourceError: as ``measure_kl``.
    """
    source = logits_source if logits_source is not None else LogitsSource()
    base, body, head = body_and_head(model)
    source.resolve(model, input_ids, attention_mask, engine_model)
    if source.mode == "head":
        yield from _head_chunks(
            model, engine_model, body, head, source, input_ids, attention_mask, mask, reference, max_chunk_elements
        )
        return
    if is_sharded(model, engine_model):
        raise LogitsSourceError(
            f"{type(base).__name__} transforms its logits beyond its output layer, and under FSDP/ZeRO-3 "
            "the KL monitor measures through the output layer only (its chunked forward path would make "
            "different collective calls on different processes). Block the monitor "
            "(block=['kl_monitor']; and 'learning' if it measures absorbed bits) for this run, or measure "
            "without sharding"
        )
    yield from _forward_chunks(model, base, head, input_ids, attention_mask, mask, reference, max_chunk_elements)


def _head_chunks(
    model: Any,
    engine_model: Any,
    body: Any,
    head: Any,
    source: LogitsSource,
    input_ids: Any,
    attention_mask: Any,
    mask: Any,
    reference: ReferencePolicy,
    max_chunk_elements: int,
) -> Iterator[tuple[slice, int, int, Any, Any, Any]]:
    """Body once per policy (through the engine where parameters are sharded), the output layer in
    chunks of positions (gathered once under a sharding engine, so the chunks communicate nothing)."""
    rows = slice(0, input_ids.shape[0])
    completion = mask.shape[1]
    hidden = hidden_states(model, engine_model, body, input_ids, attention_mask)[:, -completion - 1 : -1]
    with reference.activate(model):
        ref_hidden = hidden_states(model, engine_model, body, input_ids, attention_mask)[:, -completion - 1 : -1]
    with output_logits(model, engine_model, head, reference) as (policy_head, reference_head, vocab):
        vocab = vocab or policy_head(hidden[:, :1]).shape[-1]
        step = max(1, max_chunk_elements // max(1, input_ids.shape[0] * vocab))
        for start in range(0, completion, step):
            stop = min(completion, start + step)
            if not mask[:, start:stop].any():
                continue  # local computation only from here on
            logits = source.finish(policy_head(hidden[:, start:stop]))
            ref_logits = source.finish(reference_head(ref_hidden[:, start:stop]))
            yield rows, start, stop, logits, ref_logits, hidden[:, start:stop]


def _forward_chunks(
    model: Any,
    base: Any,
    head: Any,
    input_ids: Any,
    attention_mask: Any,
    mask: Any,
    reference: ReferencePolicy,
    max_chunk_elements: int,
) -> Iterator[tuple[slice, int, int, Any, Any, Any]]:
    """The model's own forward per chunk of sequences (and of positions, for one very long sequence)."""
    rows, length = input_ids.shape
    completion = mask.shape[1]
    keep = accepts_logits_to_keep(base)
    vocab = getattr(getattr(base, "config", None), "vocab_size", None)
    if not vocab:
        vocab = own_logits(model, input_ids[:1], attention_mask[:1], length - 1, length, keep).shape[-1]
    if keep:  # one forward materialises logits of the kept positions only
        per_row = completion * vocab
        row_step = max(1, max_chunk_elements // per_row)
        position_step = completion if per_row <= max_chunk_elements else max(1, max_chunk_elements // vocab)
    else:  # all positions of a sequence
        row_step, position_step = max(1, max_chunk_elements // (length * vocab)), completion
    captured: list[Any] = []
    handle = None
    if head is not None:
        handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        offset = length - completion - 1  # absolute position of completion token 0's logits
        for first_row in range(0, rows, row_step):
            block = slice(first_row, min(rows, first_row + row_step))
            for start in range(0, completion, position_step):
                stop = min(completion, start + position_step)
                chunk_mask = mask[block, start:stop]
                if not chunk_mask.any():
                    continue
                captured.clear()
                ids, attention = input_ids[block], attention_mask[block]
                logits = own_logits(model, ids, attention, offset + start, offset + stop, keep)
                features = captured[-1] if captured else None
                if features is not None and features.shape[1] != stop - start:
                    features = features[:, offset + start : offset + stop]
                with reference.activate(model):
                    ref_logits = own_logits(model, ids, attention, offset + start, offset + stop, keep)
                yield block, start, stop, logits, ref_logits, features
    finally:
        if handle is not None:
            handle.remove()
