"""The events that flow through the hooks, and the actions plugins hand back: framework-free dataclasses.

Integrations build events from a trainer's state; plugins read them. Tensors appear only in
``PolicySample`` (measurements need the model and the generated token ids). ``AdapterSummary``
describes the adapter as data; ``lora_rl_plugins.lora.adapters.summarize_adapter`` builds it from a
PEFT model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .collective import Collective, SingleProcess
from .grpo import Advantages, GRPOSettings

__all__ = [
    "Action",
    "AdaptedMatrix",
    "AdapterReady",
    "AdapterSummary",
    "PolicySample",
    "RolloutsScored",
    "RunStarted",
    "SetKLPenalty",
    "StepEnded",
    "StopTraining",
]


def _exact(value: Fraction) -> int | float:
    """An exact rational as an int where it is one, else the nearest float."""
    return int(value) if value.denominator == 1 else float(value)


@dataclass(frozen=True)
class AdaptedMatrix:
    """One adapted weight W [d_out, d_in] trained as W + scaling · B A, B [d_out, r], A [r, d_in].

    For a stacked expert weight (PEFT ``target_parameters`` on a 3-D parameter [E, ·, ·]) ``experts``
    is the number of experts E and (d_in, d_out) are one expert's: each expert e has its own
    B_e [d_out, r], A_e [r, d_in] and the entry stands for E matrices.

    ``rank`` is the matrix's own effective rank (per expert), which differs from the adapter's
    configured rank ``base_rank`` where ``rank_pattern`` sets it, e.g. PEFT 0.21's conversion for
    transformers v5 gives a fused ``gate_up_proj`` 2r (docs/theory.md §2).
    """

    name: str
    d_in: int
    d_out: int
    rank: int
    scaling: float
    kind: str = "linear"
    """"linear", "embedding" or "experts"."""
    experts: int = 1
    base_rank: int | None = None
    """The adapter's configured rank r this matrix's rank derives from (None: ``rank`` itself)."""
    fixed_rank: bool = False
    """The rank is an absolute ``rank_pattern`` value that stays put when r changes (known only where
    the library built the adapter itself at two ranks, as ``select_rank`` does)."""

    @property
    def params(self) -> int:
        """Trainable LoRA parameters: experts · r · (d_in + d_out) (exact)."""
        return self.experts * self.rank * (self.d_in + self.d_out)

    @property
    def rank_ratio(self) -> Fraction:
        """rank / base_rank: how many units of effective rank one unit of the adapter's r gives (0 if fixed)."""
        if self.fixed_rank:
            return Fraction(0)
        return Fraction(self.rank, self.base_rank or self.rank)

    @property
    def params_per_rank(self) -> int | float:
        """experts · (d_in + d_out) · rank / base_rank: parameters one more unit of the adapter's r adds here
        (0 for a fixed rank). Equal to experts · (d_in + d_out) when the matrix trains at the adapter's r."""
        return _exact(self.experts * (self.d_in + self.d_out) * self.rank_ratio)

    def rank_at(self, base_rank: int) -> int:
        """The matrix's effective rank when the adapter's r is ``base_rank`` (rounded up)."""
        if self.fixed_rank:
            return self.rank
        return math.ceil(self.rank_ratio * base_rank)

    @property
    def full_rank(self) -> int:
        """min(d_in, d_out) (per expert): beyond this rank more rank adds parameters but no expressiveness."""
        return min(self.d_in, self.d_out)


@dataclass(frozen=True)
class AdapterSummary:
    """The adapter a run trains; ``is_lora`` is False for a model without LoRA layers."""

    matrices: tuple[AdaptedMatrix, ...] = ()
    adapter_name: str = "default"

    @functools.cached_property  # the summary is frozen: computed once, read at every step
    def is_lora(self) -> bool:
        """Whether the model carries at least one LoRA matrix of this adapter."""
        return bool(self.matrices)

    @functools.cached_property  # the summary is frozen: computed once, read at every step
    def trainable_params(self) -> int:
        """Σ_m experts_m · r_m · (d_in,m + d_out,m): the adapter's LoRA parameters (exact)."""
        return sum(m.params for m in self.matrices)

    @functools.cached_property  # the summary is frozen: computed once, read at every step
    def params_per_rank(self) -> int | float:
        """Σ_m experts_m · (d_in,m + d_out,m) · r_m / r over the matrices whose rank moves with the adapter's r
        (r_m the matrix's effective rank, r the configured rank): trainable parameters per unit of r.

        Exact: ``r · params_per_rank + fixed_params == trainable_params``; ``params_at(r')`` extrapolates to
        another r' with every matrix keeping its ratio r_m / r (exact for PEFT's own patterns, which scale
        with r; absolute ``rank_pattern`` entries are exact only where marked ``fixed_rank``).
        """
        return _exact(sum((Fraction(m.params_per_rank) for m in self.matrices), Fraction(0)))

    @functools.cached_property  # the summary is frozen: computed once, read at every step
    def fixed_params(self) -> int:
        """Parameters of the matrices whose rank does not move with r (``fixed_rank``)."""
        return sum(m.params for m in self.matrices if m.fixed_rank)

    def params_at(self, base_rank: int) -> int | float:
        """Trainable parameters when the adapter's r is ``base_rank``: r · params_per_rank + fixed_params."""
        return _exact(base_rank * Fraction(self.params_per_rank) + self.fixed_params)

    @functools.cached_property  # the summary is frozen: computed once, read at every step
    def base_rank(self) -> int:
        """The adapter's configured rank r (the largest matrix rank where it is unknown)."""
        known = [m.base_rank for m in self.matrices if m.base_rank]
        return known[0] if known else self.max_rank

    @functools.cached_property  # the summary is frozen: computed once, read at every step
    def max_rank(self) -> int:
        """The largest effective rank among the matrices (what vLLM's ``max_lora_rank`` must hold)."""
        return max((m.rank for m in self.matrices), default=0)


@dataclass(frozen=True)
class RunStarted:
    """Training is about to start (or resume)."""

    framework: str
    """"trl", "lightning", "unsloth" or another integration's name."""
    group_size: int | None = None
    """K: rollouts (generations) per prompt; None where the trainer tells it only with the first batch."""
    total_steps: int | None = None
    """Optimizer steps the run plans, where the trainer knows them."""
    rollouts_per_step: int | None = None
    """Rollouts scored per optimizer step over all processes, where known."""
    world_size: int = 1
    grpo: GRPOSettings = None  # type: ignore[assignment]
    """The trainer's GRPO settings (advantages, sampling, β, weight sync); TRL's defaults when not given."""
    options: dict[str, Any] = field(default_factory=dict)
    """Version 0.1's untyped settings: when given without ``grpo``, ``grpo`` is built from them
    (``GRPOSettings.from_options``). Plugins read ``grpo``."""

    def __post_init__(self) -> None:
        if self.grpo is None:
            object.__setattr__(self, "grpo", GRPOSettings.from_options(self.options))


@dataclass(frozen=True)
class AdapterReady:
    """The model is wrapped and its adapter is known."""

    adapter: AdapterSummary
    model: Any = None
    """The trained model (a PEFT model where LoRA is used); plugins must not keep gradients alive."""
    tokenizer: Any = None
    """The tokenizer (TRL's ``processing_class``) where the integration has one; probes need it."""
    engine_model: Any = None
    """The distributed engine's wrapper around ``model`` (TRL: ``trainer.model_wrapped``: the FSDP1 root,
    the DeepSpeed engine), where there is one: FSDP1 keeps the true parameter shapes there."""


@dataclass(frozen=True)
class RolloutsScored:
    """One generation batch was scored: every rollout of every process, in global order.

    ``rewards[i][f]`` is reward function f's value for rollout i (NaN where it returned None);
    rollouts ``[g*K, (g+1)*K)`` are the K generations of prompt g.
    """

    step: int
    """The optimizer step these rollouts train (1-based)."""
    rewards: Sequence[Sequence[float]]
    reward_names: Sequence[str]
    reward_weights: Sequence[float]
    group_size: int
    completions: Sequence[Any] | None = None
    """One per rollout (text or token ids); used for distinct-completion counts and answers."""
    answers: Sequence[Hashable] | None = None
    """Final answers, one per rollout, where the integration already extracted them."""
    token_rewards: Sequence[Sequence[float]] | None = None
    """Per-token rewards of each rollout, for token-level reward setups."""
    prompt_keys: Sequence[Hashable] | None = None
    """One stable key per rollout for its prompt (dataset index, else ``learning.ledger.prompt_key``):
    the same on every process and across resume; the per-prompt ledger needs it."""
    prompts: Sequence[Any] | None = None
    """The prompt of each rollout (text or chat messages), for reports."""
    generation_seconds: float | None = None
    """Wall seconds spent generating the batch, where the integration measured it: the slowest
    process's (``bridge.translate.rollouts_scored`` takes the maximum), the same on every process."""
    advantages: Advantages | None = None
    """The trainer's advantages of this batch, computed once where the batch is built (the run session,
    with ``RunStarted.grpo.advantage``); plugins read them through ``bandwidth.advantages.batch_advantages``,
    which computes them only for an event built without."""
    combined_rewards: Sequence[float] | None = None
    """r_i = Σ_f w_f·r_{i,f} per rollout (NaN where no function scored it), computed once where the batch is
    built; plugins read it through ``bandwidth.rewards.batch_combined_rewards``, which computes it only for an
    event built without."""


@dataclass(frozen=True)
class PolicySample:
    """Sequences the policy just generated, on this process, for measurements that need the model.

    Prompt ``prompt_ids``/``prompt_mask`` [B, P] and completion ``completion_ids`` [B, C] tensors as the
    trainer holds them; ``completion_mask`` [B, C] marks the completion's real (trained) tokens and
    ``completion_attention`` [B, C] the tokens attended to where that differs (a tool's result inside a
    completion; None: ``completion_mask``). ``input_ids``/``attention_mask`` [B, P + C] (prompt then
    completion: the last C positions are the completion) are concatenated at first use, so an event no
    plugin measures costs no copy. B may be 0 on a process that generated nothing: measurements must
    still join every collective call.
    """

    step: int
    model: Any
    prompt_ids: Any
    prompt_mask: Any
    completion_ids: Any
    completion_mask: Any
    temperature: float = 1.0
    collective: Collective = field(default_factory=SingleProcess)
    engine_model: Any = None
    """The distributed engine's wrapper around ``model`` (see ``AdapterReady.engine_model``)."""
    completion_attention: Any = None

    @functools.cached_property
    def input_ids(self) -> Any:
        """[B, P + C] prompt then completion token ids."""
        import torch

        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @functools.cached_property
    def attention_mask(self) -> Any:
        """[B, P + C] the prompt's mask then the completion's attention (``completion_attention``, else
        ``completion_mask``)."""
        import torch

        attention = self.completion_mask if self.completion_attention is None else self.completion_attention
        return torch.cat([self.prompt_mask, attention], dim=1)


@dataclass(frozen=True)
class StepEnded:
    """An optimizer step finished."""

    step: int
    total_steps: int | None = None


@dataclass(frozen=True)
class StopTraining:
    """Ask the trainer to end training cleanly after this step."""

    reason: str


@dataclass(frozen=True)
class SetKLPenalty:
    """Ask the trainer to use a KL penalty toward the reference with coefficient ``beta`` from the
    next generation batch on (the one mechanism that turns a penalty on)."""

    beta: float
    reason: str


Action = StopTraining | SetKLPenalty
