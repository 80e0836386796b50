"""The built-in plugins, registered under these names by ``PluginOptions.build_host``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pluggy

from ..bandwidth.plugin import BandwidthConfig, BandwidthPlugin
from ..kl.monitor import KLMonitorConfig, KLMonitorPlugin
from ..learning.plugin import LearningConfig, LearningPlugin
from ..learning.probing import ProbePlugin
from ..plugin.host import build_plugin_manager
from ..serving.plugin import ServingConfig, VLLMServingCheck

__all__ = ["BUILTIN_NAMES", "default_builtins", "make_plugin_manager"]

BUILTIN_NAMES = ("bandwidth", "kl_monitor", "vllm_serving", "learning", "learning_probes")


def default_builtins(
    bandwidth: BandwidthConfig | None = None,
    kl_monitor: KLMonitorConfig | None = None,
    serving: ServingConfig | None = None,
    learning: LearningConfig | None = None,
    *,
    kl_required: bool = False,
) -> dict[str, object]:
    """Fresh built-in plugin instances for one run, keyed by ``BUILTIN_NAMES``.

    ``kl_required``: the user asked for the KL monitor (a budget, KL-free mode, a cadence), so a
    model without LoRA is an error rather than a warning.
    """
    kl_monitor = kl_monitor or KLMonitorConfig()
    return {
        "bandwidth": BandwidthPlugin(bandwidth),
        "kl_monitor": KLMonitorPlugin(kl_monitor, required=kl_required),
        "vllm_serving": VLLMServingCheck((serving or ServingConfig()).vllm_serving),
        "learning": LearningPlugin(learning),
        # absorbed bits against the KL monitor's reference: one choice (kl.reference.choose_reference)
        "learning_probes": ProbePlugin(learning, kl_reference=kl_monitor.kl_reference),
    }


def make_plugin_manager(
    builtins: Mapping[str, object] | None = None,
    *,
    extra: Iterable[object] = (),
    block: Iterable[str] = (),
    load_entry_points: bool = True,
    entry_point_configs: Mapping[str, object] | None = None,
) -> pluggy.PluginManager:
    """A new plugin manager with the built-in plugins (default: ``default_builtins()``), ``extra``
    plugins and entry-point plugins; see ``lora_rl_plugins.plugin.host.build_plugin_manager``."""
    return build_plugin_manager(
        default_builtins() if builtins is None else builtins,
        extra=extra,
        block=block,
        load_entry_points=load_entry_points,
        entry_point_configs=entry_point_configs,
    )
