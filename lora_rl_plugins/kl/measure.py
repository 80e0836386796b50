"""Exact KL between a LoRA policy and its reference on sampled completions (torch, no gradients).

For each completion position s the full-vocabulary KL(pi_θ(.|s) || pi_ref(.|s)) and the reverse
direction are computed from the logits at the trainer's sampling temperature, together with TRL's
k3 estimator on the sampled token (exp(ref − logp) − (ref − logp) − 1), the Hoeffding certificate
(max δ − min δ)²/8 of the log-probability shift δ, and the largest feature norm entering the
output layer (for the single-layer bound). Memory stays bounded for large vocabularies: the model
body runs once per policy (hidden states only) and the output layer is applied in chunks of
positions.

The reference is the same model with its adapters disabled (PEFT ``disable_adapter``), a named
frozen adapter (TRL's "ref"), or a snapshot of the starting adapter's weights swapped in: never a
copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .bounds import hoeffding_certificate
from .reference import ReferencePolicy

__all__ = ["DEFAULT_MAX_CHUNK_ELEMENTS", "KLSums", "measure_kl", "token_log_probs"]

#: Upper limit on B x positions x vocabulary logits held at once (float32: 4 bytes each).
DEFAULT_MAX_CHUNK_ELEMENTS = 2**24


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


def _body_and_head(model: Any) -> tuple[Any, Any, Callable[[Any], Any]]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if body is None or head is None:
        raise TypeError(
            f"{type(base).__name__} exposes no get_decoder()/get_output_embeddings(); the KL measurement needs a "
            "transformers causal LM"
        )
    config = getattr(base, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(base, "logit_scale", None)

    def finish(logits: Any) -> Any:
        if scale is not None and not callable(scale):
            logits = logits * scale
        if softcap:
            import torch

            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return body, head, finish


def measure_kl(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    completion_mask: Any,
    *,
    reference: ReferencePolicy | None = None,
    temperature: float = 1.0,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> KLSums:
    """Sums over the completion tokens marked in ``completion_mask`` (this process only).

    ``input_ids``/``attention_mask`` are [B, L] prompt + completion; ``completion_mask`` is [B, C]
    over the last C positions. KL values are in nats.
    """
    import torch

    reference = reference or ReferencePolicy()
    body, head, finish = _body_and_head(model)
    completion = completion_mask.shape[1]
    mask = completion_mask.bool()
    targets = input_ids[:, -completion:]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = hidden[:, -completion - 1 : -1]
            with reference.activate(model):
                ref_hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                ref_hidden = ref_hidden[:, -completion - 1 : -1]
            sums = KLSums()
            per_sequence = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
            vocab = head.weight.shape[0] if hasattr(head, "weight") else head(hidden[:, :1]).shape[-1]
            step = max(1, max_chunk_elements // max(1, input_ids.shape[0] * vocab))
            for start in range(0, completion, step):
                stop = min(completion, start + step)
                chunk_mask = mask[:, start:stop]
                if not chunk_mask.any():
                    continue
                logp = torch.log_softmax(finish(head(hidden[:, start:stop])).float() / temperature, dim=-1)
                with reference.activate(model):
                    ref_logits = head(ref_hidden[:, start:stop])
                ref_logp = torch.log_softmax(finish(ref_logits).float() / temperature, dim=-1)
                delta = logp - ref_logp
                kl = (logp.exp() * delta).sum(-1)
                reverse = (ref_logp.exp() * -delta).sum(-1)
                certificate = hoeffding_certificate(delta)
                index = targets[:, start:stop].unsqueeze(-1)
                log_ratio = (ref_logp.gather(-1, index) - logp.gather(-1, index)).squeeze(-1)
                k3 = torch.exp(log_ratio) - log_ratio - 1.0
                weights = chunk_mask.to(torch.float64)
                sums.kl += float((kl.double() * weights).sum())
                sums.reverse_kl += float((reverse.double() * weights).sum())
                sums.k3 += float((k3.double() * weights).sum())
                sums.k3_squared += float((k3.double().square() * weights).sum())
                sums.certificate += float((certificate.double() * weights).sum())
                sums.tokens += float(weights.sum())
                sums.kl_max = max(sums.kl_max, float(kl.masked_fill(~chunk_mask, 0.0).max()))
                norms = hidden[:, start:stop].float().norm(dim=-1).masked_fill(~chunk_mask, 0.0)
                sums.feature_norm_max = max(sums.feature_norm_max, float(norms.max()))
                per_sequence += (kl.double() * weights).sum(-1)
            has_tokens = mask.any(dim=1)
            sums.sequences = float(has_tokens.sum())
            sums.sequence_kl = float(per_sequence[has_tokens].sum())
    finally:
        if was_training:
            model.train()
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
) -> tuple[Any, Any]:
    """Log-probabilities of given tokens under the policy and its reference, teacher-forced.

    ``input_ids``/``attention_mask`` are [B, L] prompt + completion; ``completion_mask`` [B, C] marks
    the given tokens among the last C positions. Returns (policy, reference): float64 [B] tensors,
    Σ over the marked tokens of log π(token | prefix) in nats, at ``temperature`` (the same body,
    chunked head and reference as ``measure_kl``; eval mode, no gradients).

    Raises:
        TypeError: the model is not a transformers causal LM (no decoder / output embeddings).
    """
    import torch

    reference = reference or ReferencePolicy()
    body, head, finish = _body_and_head(model)
    completion = completion_mask.shape[1]
    mask = completion_mask.bool()
    targets = input_ids[:, -completion:].unsqueeze(-1)
    totals = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for use_reference in (False, True):
                context = reference.activate(model) if use_reference else _nothing()
                with context:
                    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                    hidden = hidden[:, -completion - 1 : -1]
                    total = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
                    vocab = head.weight.shape[0] if hasattr(head, "weight") else head(hidden[:, :1]).shape[-1]
                    step = max(1, max_chunk_elements // max(1, input_ids.shape[0] * vocab))
                    for start in range(0, completion, step):
                        stop = min(completion, start + step)
                        logits = finish(head(hidden[:, start:stop])).double() / temperature
                        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, start:stop]).squeeze(-1)
                        total += logp.masked_fill(~mask[:, start:stop], 0.0).sum(-1)
                totals.append(total)
    finally:
        if was_training:
            model.train()
    return totals[0], totals[1]


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()
