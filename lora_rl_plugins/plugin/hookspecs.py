"""Hook specifications: the events of an RL fine-tuning run a plugin can act on.

A plugin is any object (or module) with functions named like these hooks and marked with
``@hookimpl``; it implements only the hooks it needs. Third-party plugins are found through the
entry-point group ``lora_rl_plugins``::

    [project.entry-points.lora_rl_plugins]
    my_plugin = "my_package.my_module:MyPlugin"   # a class is instantiated once per run

Order of calls in a run: ``on_run_start`` → ``on_adapter_ready`` → for each step
(``on_rollouts_scored`` and ``on_policy_sampled`` per generation batch, then ``on_step_end``,
then ``collect_metrics``) → ``on_run_end``. ``get_state``/``set_state`` happen at checkpoints;
``get_service`` whenever an integration looks for a service (``plugin.services``).
Every integration calls them in this order, through ``lora_rl_plugins.plugin.host.PluginHost``.

Hooks whose results the host merges (``on_step_end``, ``collect_metrics``, ``describe_metrics``,
``summary_line``, ``get_state``) take no wrapper implementations (``@hookimpl(wrapper=True)``):
the host refuses them at registration, because it could not isolate a faulty wrapper there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

from .events import Action, AdapterReady, PolicySample, RolloutsScored, RunStarted, StepEnded
from .log import LOGGER_NAME
from .metrics import MetricInfo

#: pluggy project name: the marker name of ``hookspec``/``hookimpl`` and the entry-point group.
PROJECT_NAME = LOGGER_NAME

__all__ = ["MERGED_HOOKS", "PROJECT_NAME", "hookimpl", "hookspec"]

#: Hooks whose results the host merges (no wrappers allowed on them).
MERGED_HOOKS = ("on_step_end", "collect_metrics", "describe_metrics", "summary_line", "get_state")

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def on_run_start(run: RunStarted) -> None:
    """Training starts or resumes: group size, planned steps and trainer options are known."""


@hookspec
def on_adapter_ready(adapter: AdapterReady) -> None:
    """The model is wrapped; ``adapter.adapter`` describes its LoRA matrices (or says there are none)."""


@hookspec
def on_rollouts_scored(batch: RolloutsScored) -> None:
    """A generation batch was scored; called once per batch with every process's rollouts."""


@hookspec
def on_policy_sampled(sample: PolicySample) -> None:
    """The policy generated ``sample`` on this process; measurements may run the model (no grad)."""


@hookspec
def on_step_end(step: StepEnded) -> Sequence[Action] | None:
    """An optimizer step ended. Return actions for the trainer: ``StopTraining`` (end cleanly) or
    ``SetKLPenalty`` (the one way to turn a KL penalty on; the integration applies it from the next
    generation batch and saves it in checkpoints)."""


@hookspec
def collect_metrics() -> Mapping[str, float] | None:
    """Return this plugin's current metric values; names are ``<plugin>/<metric>``.

    Called when the trainer is about to log, not necessarily at every step (TRL: at its logging steps
    and the last step; Lightning: every step). A metric with ``MetricInfo.reduce == "mean"`` returns the
    mean of its values since this plugin's previous collection (nothing when there were none): the
    trainer averages what it is given over its logging window."""


@hookspec
def describe_metrics() -> Sequence[MetricInfo] | None:
    """Say what each metric this plugin reports means and whether it is exact, a bound or an estimate."""


@hookspec
def summary_line() -> str | None:
    """A short human-readable status (for progress bars and logs), or None."""


@hookspec
def get_state() -> Mapping[str, Any] | None:
    """Everything needed to resume this plugin exactly (JSON-serialisable)."""


@hookspec
def set_state(state: Mapping[str, Any]) -> None:
    """Restore what ``get_state`` returned at a checkpoint."""


@hookspec(firstresult=True)
def get_service(kind: type) -> Any:
    """Return this plugin's object of type ``kind`` (a service of ``lora_rl_plugins.plugin.services``:
    ``PromptSampler``, ``BatchFilter``) when it offers one now, else None; the first non-None answer wins."""


@hookspec
def on_run_end() -> None:
    """Training ended (finished, stopped or interrupted)."""
