"""The plugin manager factory and the host that calls plugins for an integration.

``make_plugin_manager`` builds one pluggy ``PluginManager`` per run (no module global): it
registers the built-in plugins, loads third-party plugins from the entry-point group
``lora_rl_plugins`` and blocks plugins by name (argument or ``LORA_RL_PLUGINS_BLOCK=a,b``).

``PluginHost`` calls the hooks for an integration. It calls each implementation itself, rather
than through ``pm.hook``, so that it can (1) isolate faults: a third-party plugin that raises is
reported once with its name and unregistered, while built-in plugins and plugins that set
``fail_fast = True`` (validators guarding correctness) raise at once; and (2) time every plugin,
reported as ``plugins/<name>/ms_per_step``. Hook wrappers are not supported.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import PROJECT_NAME
from .metrics import MetricInfo

__all__ = ["BLOCK_ENV_VAR", "ENTRY_POINT_GROUP", "PluginHost", "make_plugin_manager"]

ENTRY_POINT_GROUP = "lora_rl_plugins"
BLOCK_ENV_VAR = "LORA_RL_PLUGINS_BLOCK"

logger = logging.getLogger(PROJECT_NAME)


def _blocked_names(block: Iterable[str]) -> set[str]:
    from_env = os.environ.get(BLOCK_ENV_VAR, "")
    return {name.strip() for name in [*block, *from_env.split(",")] if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(entry_point.name) or pm.has_plugin(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
            if isinstance(plugin, type):
                plugin = plugin()  # a class gets a fresh instance per run: its state is the run's
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
            continue
        pm.register(plugin, name=entry_point.name)


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


def make_plugin_manager(
    builtins: Mapping[str, object] | None = None,
    *,
    extra: Iterable[object] = (),
    block: Iterable[str] = (),
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """A new plugin manager with the built-in plugins, ``extra`` ones and entry-point plugins.

    ``builtins`` maps names to configured plugin instances (default: ``default_builtins()``);
    ``extra`` plugins are named after their class (see ``_extra_plugin_name``); names in
    ``block`` (or in ``$LORA_RL_PLUGINS_BLOCK``) are never registered.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in _blocked_names(block):
        pm.set_blocked(name)
    if builtins is None:
        from .builtin import default_builtins

        builtins = default_builtins()
    for name, plugin in builtins.items():
        pm.register(plugin, name=name)
    for plugin in extra:
        pm.register(plugin, name=_extra_plugin_name(pm, plugin))
    if load_entry_points:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


class PluginHost:
    """Calls hooks on every registered plugin with fault isolation and per-plugin timing."""

    def __init__(self, pm: pluggy.PluginManager, *, fail_fast: Iterable[str] | None = None) -> None:
        self.pm = pm
        registered = [name for name, _ in pm.list_name_plugin()]
        from .builtin import BUILTIN_NAMES

        trusted = set(BUILTIN_NAMES) if fail_fast is None else set(fail_fast)
        self._fail_fast = {
            name for name in registered if name in trusted or getattr(pm.get_plugin(name), "fail_fast", False)
        }
        self._seconds: dict[str, float] = {}
        self._steps_timed = 0
        self.disabled: dict[str, str] = {}
        """Plugins disabled after a fault: name -> the error, as reported."""

    @property
    def plugin_names(self) -> list[str]:
        return sorted(name for name, plugin in self.pm.list_name_plugin() if plugin is not None)  # not blocked

    def plugin(self, name: str) -> Any:
        return self.pm.get_plugin(name)

    def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook_name`` on every plugin (pluggy's order); return (plugin name, result) pairs."""
        caller = getattr(self.pm.hook, hook_name)
        results: list[tuple[str, Any]] = []
        for impl in reversed(caller.get_hookimpls()):
            name = impl.plugin_name
            started = time.perf_counter()
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as error:
                if name in self._fail_fast:
                    raise
                self._disable(name, hook_name, error)
                continue
            finally:
                self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started
            if result is not None:
                results.append((name, result))
        return results

    def implements(self, hook_name: str) -> bool:
        """Whether any registered plugin implements ``hook_name`` (to skip building its event)."""
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())

    def first(self, hook_name: str, **kwargs: Any) -> Any:
        """The first non-None result of ``hook_name`` (for firstresult hooks), or None."""
        results = self.call(hook_name, **kwargs)
        return results[0][1] if results else None

    def _disable(self, name: str, hook_name: str, error: Exception) -> None:
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

    def step_ended(self) -> None:
        """Count one optimizer step for the per-plugin timing."""
        self._steps_timed += 1

    def metrics(self) -> dict[str, float]:
        """Every plugin's metrics, plus ``plugins/<name>/ms_per_step`` since the last call."""
        merged: dict[str, float] = {}
        for _, values in self.call("collect_metrics"):
            merged.update({key: float(value) for key, value in values.items() if value is not None})
        steps = max(1, self._steps_timed)
        for name, seconds in self._seconds.items():
            merged[f"plugins/{name}/ms_per_step"] = 1000.0 * seconds / steps
        self._seconds = {}
        self._steps_timed = 0
        return merged

    def metric_infos(self) -> dict[str, MetricInfo]:
        infos: dict[str, MetricInfo] = {}
        for _, described in self.call("describe_metrics"):
            infos.update({info.name: info for info in described})
        return infos

    def summary(self) -> str:
        """The plugins' summary lines, in registration order (built-ins first)."""
        return " | ".join(line for _, line in reversed(self.call("summary_line")) if line)

    def state_dict(self) -> dict[str, Any]:
        """Each plugin's ``get_state`` under its name (JSON-serialisable)."""
        return {name: dict(state) for name, state in self.call("get_state")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Give each plugin the part of ``state`` saved under its name."""
        caller = self.pm.hook.set_state
        for impl in caller.get_hookimpls():
            if impl.plugin_name in state:
                impl.function(state[impl.plugin_name])
