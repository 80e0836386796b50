"""The built-in plugins, registered by ``make_plugin_manager`` under these names."""

from __future__ import annotations

from .bandwidth import BandwidthConfig, BandwidthPlugin

__all__ = ["BUILTIN_NAMES", "BandwidthConfig", "BandwidthPlugin", "default_builtins"]

BUILTIN_NAMES = ("bandwidth", "kl_monitor")


def default_builtins(bandwidth: BandwidthConfig | None = None) -> dict[str, object]:
    """Fresh built-in plugin instances for one run."""
    return {"bandwidth": BandwidthPlugin(bandwidth)}
