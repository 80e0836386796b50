"""The plugin manager factory and the typed host every integration calls hooks through.

``build_plugin_manager`` builds one pluggy ``PluginManager`` per run (no module global): it
registers the plugins it is given, then ``extra`` ones, then third-party plugins from the
entry-point group ``lora_rl_plugins``, and blocks plugins by name (argument or
``LORA_RL_PLUGINS_BLOCK=a,b``). Wrapper implementations of hooks whose results are merged are
refused at registration (``PluginRegistrationError``).

``PluginHost`` has one method per hook (as tox 4's plugin manager does). Each call goes through
pluggy's own call loop (``pm.hook.<name>(...)``); every implementation is guarded where it sits, so
that a third-party plugin that raises, or returns something the host cannot merge (a
``collect_metrics`` that is not a mapping of numbers, say), is reported once with its name and
unregistered, and the hook goes on with the others. Built-in plugins and plugins that set
``fail_fast = True`` (validators guarding correctness) raise instead. Every plugin's time in its
hooks is reported as ``plugins/<name>/ms_per_step``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy

from . import hookspecs
from .events import (
    Action,
    AdapterReady,
    PolicySample,
    RolloutsScored,
    RunStarted,
    SetKLPenalty,
    StepEnded,
    StopTraining,
)
from .hookspecs import MERGED_HOOKS, PROJECT_NAME
from .log import logger
from .metrics import MetricInfo

#: The host's own metric: each plugin's wall time per optimizer step (a detail: run log and report).
TIMING_METRIC = MetricInfo(
    "plugins/<name>/ms_per_step",
    "exact",
    "ms/step",
    "wall time spent in that plugin's hooks per optimizer step",
    detail=True,
)

__all__ = [
    "BLOCK_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginRegistrationError",
    "TrainerRequests",
    "build_plugin_manager",
]

T = TypeVar("T")
ENTRY_POINT_GROUP = PROJECT_NAME
BLOCK_ENV_VAR = "LORA_RL_PLUGINS_BLOCK"
#: Key of the host's own entry in ``PluginHost.get_state()`` (plugin names never start with "_").
TRAINER_STATE_KEY = "_trainer"


class PluginRegistrationError(TypeError):
    """A plugin implements a hook in a way the host cannot run safely (a wrapper on a merged hook)."""


class _Manager(pluggy.PluginManager):
    """A ``PluginManager`` that refuses wrapper implementations of hooks whose results are merged."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None and name in MERGED_HOOKS and (opts.get("wrapper") or opts.get("hookwrapper")):
            owner = getattr(plugin, "__name__", None) or type(plugin).__name__
            raise PluginRegistrationError(
                f"{owner}.{name} is a hook wrapper (@hookimpl(wrapper=True)); lora_rl_plugins merges the results "
                f"of {name} and cannot isolate a wrapper there, so it refuses it. Implement {name} as a plain "
                "@hookimpl that returns its own result."
            )
        return opts


def _blocked_names(block: Iterable[str]) -> set[str]:
    from_env = os.environ.get(BLOCK_ENV_VAR, "")
    return {name.strip() for name in [*block, *from_env.split(",")] if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager, configs: Mapping[str, object]) -> None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(entry_point.name) or pm.has_plugin(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
            if isinstance(plugin, type):  # a class gets a fresh instance per run: its state is the run's
                config = configs.get(entry_point.name)
                plugin = plugin() if config is None else plugin(config)
            pm.register(plugin, name=entry_point.name)
        except Exception as error:  # a broken third-party plugin must not stop training
            logger.error(
                "lora_rl_plugins: could not load plugin %r (%s): %s: %s; it is skipped. "
                "Block it with %s=%s to silence this.",
                entry_point.name,
                entry_point.value,
                type(error).__name__,
                error,
                BLOCK_ENV_VAR,
                entry_point.name,
            )


def _extra_plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    """A name that is the same in every process and after a restart, so that the plugin's state
    resumes, its timing metric reads ``plugins/<name>/ms_per_step`` and ``block`` can name it:
    ``__name__`` for a module or class, else the class name; ``_2``, ``_3``, ... for repeats."""
    base = getattr(plugin, "__name__", None) or type(plugin).__name__
    name, count = base, 1
    while pm.has_plugin(name):
        count += 1
        name = f"{base}_{count}"
    return name


def build_plugin_manager(
    plugins: Mapping[str, object] | None = None,
    *,
    extra: Iterable[object] = (),
    block: Iterable[str] = (),
    load_entry_points: bool = True,
    entry_point_configs: Mapping[str, object] | None = None,
) -> pluggy.PluginManager:
    """A new plugin manager with ``plugins`` (name -> instance), ``extra`` ones and entry-point plugins.

    ``extra`` plugins are named after their class (``MyPlugin``, ``MyPlugin_2``, ...); names in
    ``block`` (or in ``$LORA_RL_PLUGINS_BLOCK``) are never registered. An entry-point plugin class
    named in ``entry_point_configs`` is built with its config (``plugin_class(config)``: its options,
    see ``bridge.options.PluginOptions``), any other with no argument. With the built-in set by
    default: ``lora_rl_plugins.make_plugin_manager``.

    Raises:
        PluginRegistrationError: a plugin in ``plugins`` or ``extra`` wraps a merged hook
            (entry-point plugins that do are skipped with an error in the log).
        pluggy.PluginValidationError: a hook implementation does not match its specification.
    """
    pm = _Manager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in _blocked_names(block):
        pm.set_blocked(name)
    for name, plugin in (plugins or {}).items():
        pm.register(plugin, name=name)
    for plugin in extra:
        pm.register(plugin, name=_extra_plugin_name(pm, plugin))
    if load_entry_points:
        _load_entry_points(pm, entry_point_configs or {})
    pm.check_pending()
    return pm


@dataclass
class TrainerRequests:
    """What the plugins asked of the trainer, kept by the host and saved with its state.

    ``kl_beta`` is the KL penalty a ``SetKLPenalty`` turned on (None = none); ``beta_pending`` says
    the integration has yet to apply it (set again after a resume, so a restored run trains with
    it); ``stop_reason`` is the latest ``StopTraining`` reason.
    """

    kl_beta: float | None = None
    beta_pending: bool = False
    stop_reason: str | None = None

    def apply(self, actions: Sequence[Action]) -> None:
        """Record ``actions`` (the latest ``SetKLPenalty`` wins)."""
        for action in actions:
            if isinstance(action, StopTraining):
                self.stop_reason = action.reason
            elif isinstance(action, SetKLPenalty):
                self.kl_beta, self.beta_pending = float(action.beta), True

    def take_kl_beta(self) -> float | None:
        """The KL penalty to apply now, once (None when nothing changed since the last call)."""
        if not self.beta_pending:
            return None
        self.beta_pending = False
        return self.kl_beta

    def take_stop(self) -> str | None:
        """The reason to stop training, once (None when no plugin asked)."""
        reason, self.stop_reason = self.stop_reason, None
        return reason

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (the active penalty only: a stop is acted on at once)."""
        return {"kl_beta": self.kl_beta}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore ``state()``; an active penalty is pending again so the integration re-applies it."""
        beta = state.get("kl_beta")
        self.kl_beta = None if beta is None else float(beta)
        self.beta_pending = self.kl_beta is not None


def _as_metrics(result: Any) -> dict[str, float]:
    if not isinstance(result, Mapping):
        raise TypeError(f"collect_metrics must return a mapping of metric name to number, got {type(result).__name__}")
    metrics = {}
    for key, value in result.items():
        if value is None:
            continue
        if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
            raise TypeError(f"collect_metrics returned {key!r}: {value!r}, which is not a number")
        metrics[str(key)] = float(value)
    return metrics


def _as_infos(result: Any) -> list[MetricInfo]:
    infos = list(result)
    for info in infos:
        if not isinstance(info, MetricInfo):
            raise TypeError(f"describe_metrics must return MetricInfo objects, got {type(info).__name__}")
    return infos


def _as_actions(result: Any) -> list[Action]:
    actions = list(result)
    for action in actions:
        if not isinstance(action, (StopTraining, SetKLPenalty)):
            raise TypeError(f"on_step_end must return StopTraining/SetKLPenalty actions, got {type(action).__name__}")
    return actions


def _as_state(result: Any) -> dict[str, Any]:
    if not isinstance(result, Mapping):
        raise TypeError(f"get_state must return a mapping, got {type(result).__name__}")
    state = dict(result)
    json.dumps(state, allow_nan=True)  # checkpoints are JSON: fail here, inside the plugin's isolation
    return state


def _as_line(result: Any) -> str:
    if not isinstance(result, str):
        raise TypeError(f"summary_line must return a string, got {type(result).__name__}")
    return result


#: How each merged hook's result is checked and normalised, inside the plugin's isolation.
_RESULT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "on_step_end": _as_actions,
    "collect_metrics": _as_metrics,
    "describe_metrics": _as_infos,
    "summary_line": _as_line,
    "get_state": _as_state,
}


class PluginHost:
    """Calls the hooks of every registered plugin, one typed method per hook.

    Args:
        pm: a plugin manager from ``make_plugin_manager`` or ``build_plugin_manager`` (its plugins are guarded here).
        fail_fast: names of plugins whose faults raise rather than disable them, in addition to
            plugins with ``fail_fast = True`` (every built-in plugin sets it).
    """

    def __init__(self, pm: pluggy.PluginManager, *, fail_fast: Iterable[str] = ()) -> None:
        self.pm = pm
        trusted = set(fail_fast)
        self._fail_fast = {
            name for name, plugin in pm.list_name_plugin() if name in trusted or getattr(plugin, "fail_fast", False)
        }
        self._seconds: dict[str, float] = {}
        self._steps_timed = 0
        self.requests = TrainerRequests()
        """What the plugins asked of the trainer (stop, a KL penalty); saved with ``get_state``."""
        self.disabled: dict[str, str] = {}
        """Plugins disabled after a fault: name -> the error, as reported."""
        for hook_name in self._hook_names():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                self._guard(hook_name, impl)

    # -- registry ----------------------------------------------------------------------------
    @property
    def plugin_names(self) -> list[str]:
        """Names of the registered (not blocked, not disabled) plugins, sorted."""
        return sorted(name for name, plugin in self.pm.list_name_plugin() if plugin is not None)

    def plugin(self, name: str) -> Any:
        """The plugin registered under ``name`` (None when there is none)."""
        return self.pm.get_plugin(name)

    def implements(self, hook_name: str) -> bool:
        """Whether any registered plugin implements ``hook_name`` (to skip building its event)."""
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())

    @staticmethod
    def _hook_names() -> Iterator[str]:
        return (
            name
            for name in dir(hookspecs)
            if name.startswith(("on_", "collect_", "describe_", "get_", "set_", "summary_"))
        )

    def _guard(self, hook_name: str, impl: Any) -> None:
        """Replace ``impl.function`` by a version that times it, checks its result and isolates its faults."""
        function, name = impl.function, impl.plugin_name
        if getattr(function, "__lora_rl_guarded__", False):
            return
        check = _RESULT_CHECKS.get(hook_name)

        if impl.wrapper or impl.hookwrapper:  # only on notification hooks (refused elsewhere at registration)

            def guarded(*args: Any) -> Any:
                try:
                    generator = function(*args)
                    next(generator)
                except Exception as error:
                    self._fault(name, hook_name, error)
                    return (yield)
                result = yield
                try:
                    generator.send(result)
                except StopIteration as stop:
                    return stop.value if impl.wrapper else result
                except Exception as error:
                    self._fault(name, hook_name, error)
                return result

        else:

            def guarded(*args: Any) -> Any:
                started = time.perf_counter()
                try:
                    result = function(*args)
                    return check(result) if check is not None and result is not None else result
                except Exception as error:
                    self._fault(name, hook_name, error)
                    return None
                finally:
                    self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started

        guarded.__lora_rl_guarded__ = True  # type: ignore[attr-defined]
        guarded.__wrapped__ = function  # type: ignore[attr-defined]
        impl.function = guarded

    def _fault(self, name: str, hook_name: str, error: Exception) -> None:
        if name in self._fail_fast:
            raise error
        message = f"{type(error).__name__}: {error}"
        logger.error(
            "lora_rl_plugins: plugin %r raised in %s (%s); it is disabled for the rest of this run. "
            "Training and the other plugins' numbers are unaffected.",
            name,
            hook_name,
            message,
            exc_info=error,
        )
        self.disabled[name] = f"{hook_name}: {message}"
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    # -- one method per hook ----------------------------------------------------------------
    def on_run_start(self, run: RunStarted) -> None:
        """Training starts or resumes."""
        self.pm.hook.on_run_start(run=run)

    def on_adapter_ready(self, adapter: AdapterReady) -> None:
        """The model is wrapped and its adapter is known (always after ``on_run_start``)."""
        self.pm.hook.on_adapter_ready(adapter=adapter)

    def on_rollouts_scored(self, batch: RolloutsScored) -> None:
        """One generation batch was scored (every process's rollouts, global order)."""
        self.pm.hook.on_rollouts_scored(batch=batch)

    def on_policy_sampled(self, sample: PolicySample) -> None:
        """This process's sampled sequences, for measurements that run the model."""
        self.pm.hook.on_policy_sampled(sample=sample)

    def on_step_end(self, step: StepEnded) -> list[Action]:
        """An optimizer step ended: the plugins' actions, also recorded in ``requests``."""
        actions = [action for result in self.pm.hook.on_step_end(step=step) for action in result]
        self.requests.apply(actions)
        self._steps_timed += 1
        return actions

    def collect_metrics(self) -> dict[str, float]:
        """Every plugin's metrics, plus ``plugins/<name>/ms_per_step`` since the last call."""
        merged: dict[str, float] = {}
        for values in reversed(self.pm.hook.collect_metrics()):  # registration order: built-ins first
            merged.update(values)
        steps = max(1, self._steps_timed)
        for name, seconds in self._seconds.items():
            merged[f"plugins/{name}/ms_per_step"] = 1000.0 * seconds / steps
        self._seconds, self._steps_timed = {}, 0
        return merged

    def describe_metrics(self) -> dict[str, MetricInfo]:
        """name -> ``MetricInfo`` for every metric the plugins describe, and the host's timing metric."""
        described = {info.name: info for infos in reversed(self.pm.hook.describe_metrics()) for info in infos}
        return {**described, TIMING_METRIC.name: TIMING_METRIC}

    def summary_line(self) -> str:
        """The plugins' summary lines, in registration order (built-ins first), joined by " | "."""
        return " | ".join(line for line in reversed(self.pm.hook.summary_line()) if line)

    def get_state(self) -> dict[str, Any]:
        """Each plugin's ``get_state`` under its name, and the trainer requests (JSON-serialisable)."""
        state: dict[str, Any] = {TRAINER_STATE_KEY: self.requests.state()}
        for impl in self.pm.hook.get_state.get_hookimpls():
            result = self._call_one("get_state", impl.plugin_name, {})
            if result:
                state[impl.plugin_name] = result[0]
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Give each plugin the part of ``state`` saved under its name; restore the trainer requests."""
        self.requests.load(state.get(TRAINER_STATE_KEY, {}))
        for impl in self.pm.hook.set_state.get_hookimpls():
            if impl.plugin_name in state:
                self._call_one("set_state", impl.plugin_name, {"state": state[impl.plugin_name]})

    def service(self, kind: type[T]) -> T | None:
        """The first plugin's object of type ``kind`` (``get_service``), or None when no plugin offers one.

        Raises:
            TypeError: a fail-fast plugin answered with an object that is not a ``kind``.
        """
        found = self.pm.hook.get_service(kind=kind)
        if found is not None and not isinstance(found, kind):
            raise TypeError(f"get_service({kind.__name__}) returned a {type(found).__name__}, not a {kind.__name__}")
        return found

    def on_run_end(self) -> None:
        """Training ended (finished, stopped or interrupted)."""
        self.pm.hook.on_run_end()

    def _call_one(self, hook_name: str, plugin_name: str, kwargs: dict[str, Any]) -> list[Any]:
        """Call ``hook_name`` on one plugin only, through pluggy (``subset_hook_caller``)."""
        others = [plugin for name, plugin in self.pm.list_name_plugin() if name != plugin_name and plugin is not None]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
