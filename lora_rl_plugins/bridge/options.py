"""The options every integration accepts, derived from the plugins' own config classes.

Each option is a field of one config class (``BandwidthConfig``, ``KLMonitorConfig``,
``ServingConfig``, ``HostConfig``): its name, default, validation and documentation live there
once. ``PluginOptions(**options)`` routes each keyword to its class, so an invalid value raises
the same error whichever integration it came through, and an unknown name is a ``TypeError``
naming the closest option. ``options_table()`` renders them for docs (the README's option table
is tested against it).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..bandwidth.plugin import BandwidthConfig
from ..kl.monitor import KLMonitorConfig
from ..learning.plugin import LearningConfig
from ..plugin.config import OptionDoc, check_option_types, option, option_docs
from ..plugin.events import AdapterReady
from ..plugin.host import PluginHost, _blocked_names
from ..serving.plugin import ServingConfig, VLLMServing, VLLMServingCheck
from .builtin import default_builtins, make_plugin_manager
from .entry_options import entry_point_option_groups

__all__ = ["HostConfig", "PluginOptions", "option_documentation", "options_table"]


@dataclass
class HostConfig:
    """Options of the plugin host; each field's ``doc`` is its documentation."""

    plugins: Iterable[object] = option(
        default_factory=tuple,
        doc="extra plugin instances (each named after its class: `MyPlugin`, `MyPlugin_2`, ...)",
    )
    block: Iterable[str] = option(
        default_factory=tuple,
        doc='names of plugins not to load (e.g. `["kl_monitor"]`; also `LORA_RL_PLUGINS_BLOCK=a,b`)',
    )
    load_entry_points: bool = option(True, doc="load third-party plugins from the entry-point group `lora_rl_plugins`")
    console_detail: bool = option(
        False,
        doc="also send detail metrics (per-module norms, plugin timings) to the trainer's console and loggers; "
        "they are always in the run log `lora_rl_metrics.jsonl` and the report",
    )
    run_log: bool = option(
        True, doc="write the run log `lora_rl_metrics.jsonl` into the run's output directory (main process only)"
    )

    def __post_init__(self) -> None:
        self.plugins, self.block = tuple(self.plugins), tuple(self.block)
        if isinstance(self.load_entry_points, str) or not isinstance(self.load_entry_points, bool):
            raise TypeError(f"load_entry_points must be True or False, got {self.load_entry_points!r}")
        for name in ("console_detail", "run_log"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


#: (group name, config class) in documentation order.
OPTION_GROUPS: tuple[tuple[str, type], ...] = (
    ("bandwidth", BandwidthConfig),
    ("kl_monitor", KLMonitorConfig),
    ("serving", ServingConfig),
    ("learning", LearningConfig),
    ("host", HostConfig),
)


def option_documentation() -> list[OptionDoc]:
    """Every option every integration accepts, with its default and documentation."""
    return [doc for group, config_class in OPTION_GROUPS for doc in option_docs(config_class, group)]


def options_table() -> str:
    """The options as a Markdown table (option, default, meaning)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    rows += [
        f"| `{doc.name}` | `{doc.default}` | {doc.doc.replace('|', chr(92) + '|')} |" for doc in option_documentation()
    ]
    return "\n".join(rows)


class PluginOptions:
    """The options of ``LoraRLCallback`` (TRL and Lightning alike), validated by their config classes.

    Args:
        **options: any option of ``option_documentation()``.

    Raises:
        TypeError: an unknown option name (the message names the closest known one), or a value of the
            wrong type (the message names the option, the type it expects and the value given; numeric
            strings are refused, with the number to pass).
        ValueError: an invalid value, from the config class that owns the option.
    """

    def __init__(self, **options: Any) -> None:
        groups = list(OPTION_GROUPS)
        if options.get("load_entry_points", True) is True:  # third-party plugins' options (bridge.entry_options)
            groups += [(g.name, g.config_class) for g in entry_point_option_groups(options.get("block", ()))]
        by_group: dict[str, dict[str, Any]] = {group: {} for group, _ in groups}
        owners: dict[str, str] = {}
        for group, cls in groups:
            for item in dataclasses.fields(cls):
                if item.name in owners:
                    raise TypeError(
                        f"plugin {group!r} declares the option {item.name!r}, which {owners[item.name]!r} owns: "
                        "rename it in the plugin's Config"
                    )
                owners[item.name] = group
        for name, value in options.items():
            if name not in owners:
                close = difflib.get_close_matches(name, owners, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"unknown lora_rl_plugins option {name!r}.{hint} Known: {', '.join(owners)}")
            by_group[owners[name]][name] = value
        # Types first, named: `kl_budget="0.1"` is refused as a string, not a comparison error inside a class.
        for group, config_class in OPTION_GROUPS:
            check_option_types(config_class, by_group[group])
        serving = options.get("vllm_serving")
        if isinstance(serving, Mapping):
            check_option_types(VLLMServing, serving, prefix="vllm_serving.")
        self.explicit = frozenset(options)
        """The options the user set explicitly."""
        self.bandwidth = BandwidthConfig(**by_group["bandwidth"])
        self.kl_monitor = KLMonitorConfig(**by_group["kl_monitor"])
        self.serving = ServingConfig(**by_group["serving"])
        self.learning = LearningConfig(**by_group["learning"])
        self.host = HostConfig(**by_group["host"])
        self.plugin_configs = {group: cls(**by_group[group]) for group, cls in groups[len(OPTION_GROUPS) :]}
        """Entry-point plugin name -> its ``Config`` instance (``bridge.entry_options``)."""

    @property
    def kl_free(self) -> bool:
        """Train without a reference model (``kl_free=True``)."""
        return self.kl_monitor.kl_free

    @property
    def kl_requested(self) -> bool:
        """The user asked for the KL monitor (KL-free mode, a budget, a cadence): no LoRA is then an error."""
        return bool(self.kl_requested_by)

    @property
    def kl_requested_by(self) -> list[str]:
        """The options, as set, that ask for the KL monitor (``["kl_every=1"]``); empty when none does."""
        asked = [f"kl_free={self.kl_free!r}"] if self.kl_free else []
        if self.kl_monitor.kl_budget is not None:
            asked.append(f"kl_budget={self.kl_monitor.kl_budget!r}")
        for name in ("kl_every", "kl_max_sequences", "kl_reference"):
            if name in self.explicit:
                asked.append(f"{name}={getattr(self.kl_monitor, name)!r}")
        return asked

    def check_model(self, model: Any) -> None:
        """The refusals that need the model, raised when an integration is built (before any step).

        ``model``: the trained model, unwrapped (a PEFT model where LoRA is used). The serving check
        is ``VLLMServingCheck``'s own, run here so that a refusal comes from the constructor (a short
        traceback, before the first step) rather than from a hook.

        Raises:
            NotALoraModelError: an option that asks for the KL monitor (``kl_free``, ``kl_budget``,
                ``kl_every``, ``kl_max_sequences``, ``kl_reference``) on a model without LoRA; the
                message names the option(s) as set.
            VLLMLoRAError: ``vllm_serving`` is set and vLLM would refuse the adapter's config (a rank
                above ``max_lora_rank``, DoRA, bias, ...), every problem with its fix.
        """
        from ..lora.adapters import NotALoraModelError, summarize_adapter

        adapter = summarize_adapter(model)
        blocked = _blocked_names(self.host.block)  # the plugins the host will not load (option and environment)
        if not adapter.is_lora:
            asked = self.kl_requested_by
            if asked and "kl_monitor" not in blocked:
                raise NotALoraModelError(
                    f"{', '.join(asked)} asks for the KL monitor, which measures drift through the model's LoRA "
                    "adapter (adapters disabled = the reference), and this model has none; it does not make a silent "
                    "full copy. Train with LoRA "
                    f"(peft_config=LoraConfig(...) or peft.get_peft_model), or remove "
                    f"{', '.join(a.split('=')[0] for a in asked)} from the callback's options."
                )
            return
        if self.serving.vllm_serving is not None and "vllm_serving" not in blocked:  # the check itself, run now
            VLLMServingCheck(self.serving.vllm_serving).on_adapter_ready(AdapterReady(adapter, model))

    def build_host(self) -> PluginHost:
        """A plugin host with the configured built-ins, ``plugins`` and entry-point plugins."""
        builtins = default_builtins(
            self.bandwidth, self.kl_monitor, self.serving, self.learning, kl_required=self.kl_requested
        )
        pm = make_plugin_manager(
            builtins,
            extra=self.host.plugins,
            block=self.host.block,
            load_entry_points=self.host.load_entry_points,
            entry_point_configs=self.plugin_configs,
        )
        return PluginHost(pm)
