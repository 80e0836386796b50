"""Where the KL monitor's logits come from, proved on the model itself (``LogitsSource``): the output layer
applied to the body's last hidden state ("head" path, chunked, bounded memory), checked once against the
model's own ``forward(...).logits``, else the model's own forward in chunks ("forward" path). Used by
``kl.measure`` and the probes (docs/theory.md §3, "What is measured")."""

from __future__ import annotations

import inspect
from typing import Any

from ..plugin.log import logger
from .engine import forward_target, hidden_states, output_logits
from .reference import ReferencePolicy

__all__ = [
    "CHECK_POSITIONS",
    "LogitsSource",
    "LogitsSourceError",
    "accepts_logits_to_keep",
    "body_and_head",
    "own_logits",
]

#: Positions of one sequence on which the head path is checked against the model's own logits.
CHECK_POSITIONS = 4


class LogitsSourceError(RuntimeError):
    """The model's logits cannot be obtained in a form the KL measurement can check."""


def body_and_head(model: Any) -> tuple[Any, Any, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return base, body, head


def accepts_logits_to_keep(base: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def own_logits(model: Any, input_ids: Any, attention_mask: Any, first: int, stop: int, keep: bool) -> Any:
    """The model's own ``forward(...).logits`` at absolute positions [first, stop): [B, stop − first, V]."""
    import torch

    if keep:
        positions = torch.arange(first, stop, device=input_ids.device)
        output = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions, use_cache=False)
        logits = output.logits
    else:
        output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits = output.logits[:, first:stop]
    if logits is None or logits.shape[1] != stop - first:
        raise LogitsSourceError(
            f"{type(model).__name__}(...).logits gave {None if logits is None else tuple(logits.shape)} for "
            f"{stop - first} positions; the KL measurement needs a causal LM returning logits [batch, positions, "
            "vocabulary]"
        )
    return logits


class LogitsSource:
    """Where the measurement takes the logits from, proved against the model's own forward once per run.

    ``mode`` is None until ``resolve`` runs, then "head" (the output layer applied to the body's last
    hidden state, then ``softcap`` if set: c·tanh(z/c)) or "forward" (the model's own forward, in
    chunks). The head path is used only when it reproduces ``forward(...).logits`` on the last
    ``CHECK_POSITIONS`` positions of one sequence within 16 units of the logits' float rounding
    (16·eps·(1 + max|z|)); any other transform an architecture applies after (or before) its output
    layer — logit scales, multipliers, softcapping, hidden-state scaling — sends the measurement to
    the forward path, so no list of architectures is kept. On the head path the logits are an
    elementwise 1-Lipschitz function of W·h (identity or softcap), the setting of the single-layer
    bound (``bound_applies``).
    """

    def __init__(self) -> None:
        self.mode: str | None = None
        self.softcap: float | None = None
        self.deviation: float = 0.0
        """Largest |head − forward| logit difference of the plain output layer at the check."""

    @property
    def bound_applies(self) -> bool:
        """The logits are a 1-Lipschitz elementwise function of the output layer's W·h (head path)."""
        return self.mode == "head"

    def finish(self, logits: Any) -> Any:
        """The verified transform after the output layer (head path)."""
        if self.softcap:
            import torch

            return torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def resolve(self, model: Any, input_ids: Any, attention_mask: Any, engine_model: Any = None) -> LogitsSource:
        """Check the head path on one sequence of the batch (once; later calls return at once).

        Args:
            model: a transformers causal LM (PEFT-wrapped or not), in eval mode.
            input_ids, attention_mask: [B, L] with B >= 1.
            engine_model: the engine's wrapper (``trainer.model_wrapped``) under FSDP1; the check then
                runs through the engine (a collective call: every process makes it on its first
                measurement).

        Raises:
            LogitsSourceError: the model returns no logits of shape [batch, positions, vocabulary].
        """
        if self.mode is not None:
            return self
        import torch

        base, body, head = body_and_head(model)
        keep = accepts_logits_to_keep(base)
        length = input_ids.shape[1]
        count = min(CHECK_POSITIONS, length)
        ids, attention = input_ids[:1], attention_mask[:1]
        with torch.no_grad():
            own = own_logits(forward_target(model, engine_model), ids, attention, length - count, length, keep)
            if body is None or head is None:
                self.mode = "forward"
                logger.info(
                    "KL measurement: %s has no get_decoder()/get_output_embeddings(): measuring through "
                    "its own forward",
                    type(base).__name__,
                )
                return self
            hidden = hidden_states(model, engine_model, body, ids, attention)[:, -count:]
            with output_logits(model, engine_model, head, ReferencePolicy()) as (policy_head, _, _):
                plain = policy_head(hidden)
        eps = torch.finfo(own.dtype).eps if own.dtype.is_floating_point else 0.0
        tolerance = 16 * eps * (1.0 + float(own.abs().max()))
        own = own.double()
        self.deviation = float((plain.double() - own).abs().max()) if plain.shape == own.shape else float("inf")
        candidates: list[float | None] = [None]
        softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
        if softcap:
            candidates.append(float(softcap))
        for candidate in candidates:
            self.softcap = candidate
            if plain.shape == own.shape and float((self.finish(plain.double()) - own).abs().max()) <= tolerance:
                self.mode = "head"
                return self
        self.softcap = None
        self.mode = "forward"
        logger.info(
            "KL measurement: %s transforms its logits beyond its output layer (largest difference %.3g); measuring "
            "through the model's own forward in chunks of sequences",
            type(base).__name__,
            self.deviation,
        )
        return self
