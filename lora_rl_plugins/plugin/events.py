"""The events that flow through the hooks, and the actions plugins hand back: framework-free dataclasses.

Integrations build events from a trainer's state; plugins read them. Tensors appear only in
``PolicySample`` (measurements need the model and the generated token ids). ``AdapterSummary``
describes the adapter as data; ``lora_rl_plugins.lora.adapters.summarize_adapter`` builds it from a
PEFT model.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .collective import Collective, SingleProcess

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


@dataclass(frozen=True)
class AdaptedMatrix:
    """One adapted weight W [d_out, d_in] trained as W + scaling · B A, B [d_out, r], A [r, d_in].

    For a stacked expert weight (PEFT ``target_parameters`` on a 3-D parameter) ``experts`` is the
    number of experts E: each expert e has its own B_e, A_e and the matrix stands for E matrices.
    """

    name: str
    d_in: int
    d_out: int
    rank: int
    scaling: float
    kind: str = "linear"
    """"linear", "embedding" or "experts"."""
    experts: int = 1

    @property
    def params(self) -> int:
        """Trainable LoRA parameters: experts · r · (d_in + d_out) (exact)."""
        return self.experts * self.rank * (self.d_in + self.d_out)

    @property
    def params_per_rank(self) -> int:
        """experts · (d_in + d_out): parameters one more unit of rank adds to this matrix."""
        return self.experts * (self.d_in + self.d_out)

    @property
    def full_rank(self) -> int:
        """min(d_in, d_out): beyond this rank more rank adds parameters but no expressiveness."""
        return min(self.d_in, self.d_out)


@dataclass(frozen=True)
class AdapterSummary:
    """The adapter a run trains; ``is_lora`` is False for a model without LoRA layers."""

    matrices: tuple[AdaptedMatrix, ...] = ()
    adapter_name: str = "default"

    @property
    def is_lora(self) -> bool:
        """Whether the model carries at least one LoRA matrix of this adapter."""
        return bool(self.matrices)

    @property
    def trainable_params(self) -> int:
        """Σ_m experts_m · r_m · (d_in,m + d_out,m): the adapter's parameters (exact)."""
        return sum(m.params for m in self.matrices)

    @property
    def params_per_rank(self) -> int:
        """Σ_m experts_m · (d_in,m + d_out,m): parameters added per unit of rank when every rank moves together."""
        return sum(m.params_per_rank for m in self.matrices)

    @property
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
    options: dict[str, Any] = field(default_factory=dict)
    """Trainer settings plugins may want (temperature, beta, use_vllm, ...)."""


@dataclass(frozen=True)
class AdapterReady:
    """The model is wrapped and its adapter is known."""

    adapter: AdapterSummary
    model: Any = None
    """The trained model (a PEFT model where LoRA is used); plugins must not keep gradients alive."""
    tokenizer: Any = None
    """The tokenizer (TRL's ``processing_class``) where the integration has one; probes need it."""


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
    """Wall seconds this process spent generating the batch, where the integration measured it."""


@dataclass(frozen=True)
class PolicySample:
    """Sequences the policy just generated, on this process, for measurements that need the model.

    ``input_ids``/``attention_mask`` are [B, P + C] prompt + completion; the last
    ``completion_mask.shape[1]`` = C positions are the completion and ``completion_mask`` [B, C]
    marks its real tokens. B may be 0 on a process that generated nothing: measurements must still
    join every collective call.
    """

    step: int
    model: Any
    input_ids: Any
    attention_mask: Any
    completion_mask: Any
    temperature: float = 1.0
    collective: Collective = field(default_factory=SingleProcess)


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
