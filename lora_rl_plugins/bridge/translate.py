"""What every integration does the same way, framework-free: start a run in hook order, build the
events from a trainer's tensors and lists, and gather them across processes."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from ..learning.ledger import prompt_key
from ..lora.adapters import summarize_adapter
from ..plugin.collective import Collective
from ..plugin.events import AdapterReady, AdapterSummary, PolicySample, RolloutsScored, RunStarted
from ..plugin.host import PluginHost

__all__ = ["policy_sample", "rollouts_scored", "start_run"]


def start_run(
    host: PluginHost, run: RunStarted, model: Any, engine_model: Any = None, *, tokenizer: Any = None
) -> AdapterSummary:
    """``on_run_start`` then ``on_adapter_ready`` (the hook order every integration follows).

    ``engine_model`` is the distributed engine's wrapper around ``model`` where there is one
    (FSDP1 keeps the true parameter shapes there); ``tokenizer`` is the trainer's tokenizer where
    it has one (the learning plugin's probes need it)."""
    host.on_run_start(run)
    adapter = summarize_adapter(model, engine_model=engine_model)
    host.on_adapter_ready(AdapterReady(adapter, model, tokenizer=tokenizer, engine_model=engine_model))
    return adapter


def rollouts_scored(
    collective: Collective,
    *,
    step: int,
    rewards: Sequence[Sequence[float]],
    reward_names: Sequence[str],
    reward_weights: Sequence[float],
    group_size: int,
    completions: Sequence[Any] | None = None,
    answers: Sequence[Hashable] | None = None,
    token_rewards: Sequence[Sequence[float]] | None = None,
    rewards_gathered: bool = False,
    prompts: Sequence[Any] | None = None,
    prompt_keys: Sequence[Hashable] | None = None,
    generation_seconds: float | None = None,
) -> RolloutsScored:
    """A ``RolloutsScored`` with every process's rollouts in process order.

    Each per-rollout list given for this process only is gathered through ``collective``;
    ``rewards_gathered=True`` says the trainer already gathered the rewards (TRL does).
    Every process must call this with the same set of arguments present. ``prompts`` (one per
    rollout) also give the prompt keys (``prompt_key``) where ``prompt_keys`` are not given.
    ``generation_seconds`` (this process's wall seconds generating its share) becomes the largest
    over the processes (they generate in parallel: the batch's wall time), so the event, and every
    plugin state built from it, is the same on every process.
    """

    def gather(values: Sequence[Any] | None) -> list[Any] | None:
        return None if values is None else collective.gather_objects(list(values))

    return RolloutsScored(
        step=step,
        rewards=[list(row) for row in rewards] if rewards_gathered else gather(rewards),  # type: ignore[arg-type]
        reward_names=list(reward_names),
        reward_weights=[float(w) for w in reward_weights],
        group_size=group_size,
        completions=gather(completions),
        answers=gather(answers),
        token_rewards=gather(token_rewards),
        prompt_keys=gather(prompt_keys if prompt_keys is not None or prompts is None else _prompt_keys(prompts)),
        prompts=gather(prompts),
        generation_seconds=None if generation_seconds is None else collective.max([float(generation_seconds)])[0],
    )


def _same(prompt: Any, previous: Any) -> bool:
    """Whether ``prompt`` is the previous rollout's (texts and chat messages compared by value)."""
    if prompt is previous or (type(prompt) is str and prompt == previous):
        return True
    return type(prompt) is type(previous) and isinstance(prompt, (str, list, tuple, dict)) and prompt == previous


def _prompt_keys(prompts: Sequence[Any]) -> list[str]:
    """``prompt_key`` of each prompt, hashed once per run of equal consecutive prompts (a group's rollouts share
    their prompt)."""
    keys: list[str] = []
    previous: Any = None
    for prompt in prompts:
        if not keys or not _same(prompt, previous):
            key, previous = prompt_key(prompt), prompt
        keys.append(key)
    return keys


def policy_sample(
    *,
    step: int,
    model: Any,
    prompt_ids: Any,
    prompt_mask: Any,
    completion_ids: Any,
    completion_mask: Any,
    temperature: float,
    collective: Collective,
    engine_model: Any = None,
    completion_attention: Any = None,
) -> PolicySample:
    """A ``PolicySample`` from prompt [B, P] and completion [B, C] tensors (ids and masks); nothing is
    copied here (the sample concatenates them at first use).

    ``completion_attention`` [B, C] is the completion's own attention mask where it differs from
    ``completion_mask`` (tokens attended to but not trained on: a tool's result inside a completion);
    None: ``completion_mask``."""
    return PolicySample(
        step=step,
        model=model,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        temperature=float(temperature),
        collective=collective,
        engine_model=engine_model,
        completion_attention=completion_attention,
    )
