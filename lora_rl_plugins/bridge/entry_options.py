"""Options of third-party plugins loaded by entry point (as tox lets its plugins add configuration).

An entry-point plugin that is a class may declare its options as a dataclass ``Config`` on the class,
each field made with ``plugin.config.option(default, doc=...)``; the class is then built with its
config (``MyPlugin(config)``) and its options are accepted by every integration beside the
built-in ones::

    @dataclass
    class Config:
        my_threshold: float = option(0.5, doc="...")

    class MyPlugin:
        Config = Config

        def __init__(self, config: Config) -> None: ...

    LoraRLCallback(trainer, my_threshold=0.7)      # routed to MyPlugin's Config

Option names share one namespace: a field named like a built-in option (or another plugin's) is
refused with a ``TypeError`` naming both owners.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass

from ..plugin.hookspecs import PROJECT_NAME
from ..plugin.log import logger

__all__ = ["EntryPointOptions", "entry_point_option_groups"]


@dataclass(frozen=True)
class EntryPointOptions:
    """One entry-point plugin's option group: its entry-point name and its ``Config`` dataclass."""

    name: str
    config_class: type


def entry_point_option_groups(block: Iterable[str] = ()) -> list[EntryPointOptions]:
    """The option groups of the entry-point plugins (group ``lora_rl_plugins``) that declare a ``Config``;
    blocked names are left out, and a plugin that fails to load is left to the host to report.

    Raises:
        TypeError: a plugin's ``Config`` is not a dataclass.
    """
    blocked = set(block)
    groups = []
    for entry_point in importlib.metadata.entry_points(group=PROJECT_NAME):
        if entry_point.name in blocked:
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:  # reported (and skipped) when the host loads the plugins
            logger.debug("entry point %r did not load for its options: %s", entry_point.name, error)
            continue
        config_class = getattr(plugin, "Config", None) if isinstance(plugin, type) else None
        if config_class is None:
            continue
        if not dataclasses.is_dataclass(config_class):
            raise TypeError(
                f"plugin {entry_point.name!r}: {plugin.__name__}.Config must be a dataclass whose fields are made with "
                "lora_rl_plugins.plugin.config.option(default, doc=...)"
            )
        groups.append(EntryPointOptions(entry_point.name, config_class))
    return groups
