"""Helpers every plugin uses, written once: warnings given once per run (and kept across a resume), the
state a plugin saves in checkpoints.

Metric declarations: ``plugin.metrics.metric_family``; options: ``plugin.config.option``; services:
``plugin.services``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from .hookspecs import hookimpl

__all__ = ["SavedState", "Stateful", "WarnOnce", "float_values"]


class WarnOnce(set):
    """The keys of the warnings a plugin has given (a ``set`` of str): each is given once per run.

    Save ``sorted(warned)`` in the plugin's state and rebuild with ``WarnOnce(saved)``, so a resumed
    run does not repeat a warning.
    """

    def __init__(self, given: Iterable[str] = ()) -> None:
        super().__init__(given)

    def warn(self, key: str, message: str, category: type[Warning] = UserWarning, stacklevel: int = 3) -> bool:
        """Issue ``message`` as ``category`` unless ``key`` was warned already; True when it was issued now."""
        if key in self:
            return False
        self.add(key)
        warnings.warn(message, category, stacklevel=stacklevel)
        return True

    def inform(self, key: str, message: str) -> bool:
        """Log ``message`` as an info on the library's logger (``plugin.log.logger``) unless ``key`` was given
        already: for what a healthy run may meet (no warning for it); True when it was logged now."""
        from .log import logger

        if key in self:
            return False
        self.add(key)
        logger.info(message)
        return True


def _saved(value: Any) -> Any:
    """A JSON-ready copy of ``value``: sets sorted into lists, mappings and sequences copied."""
    if isinstance(value, (set, frozenset)):
        return sorted((_saved(v) for v in value), key=str)
    if isinstance(value, Mapping):
        return {str(k): _saved(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_saved(v) for v in value]
    return value


class SavedState:
    """The attributes a plugin keeps across a resume, each with the function that rebuilds it from its saved
    (JSON) value: ``get_state``/``set_state`` written once::

        STATE = SavedState(steps=int, bits_total=float, warned=WarnOnce, last_step=float_values)

        @hookimpl
        def get_state(self):
            return STATE.save(self)

        @hookimpl
        def set_state(self, state):
            STATE.load(self, state)

    ``save`` copies each attribute (sets become sorted lists); ``load`` sets each attribute present in
    ``state`` to ``rebuild(saved value)`` and leaves an absent one as it is (a checkpoint of an older version).
    """

    def __init__(self, **rebuild: Callable[[Any], Any]) -> None:
        self.rebuild = rebuild

    def save(self, plugin: object) -> dict[str, Any]:
        """The saved values of ``plugin``'s attributes (JSON-serialisable when the attributes are)."""
        return {name: _saved(getattr(plugin, name)) for name in self.rebuild}

    def load(self, plugin: object, state: Mapping[str, Any]) -> None:
        """Restore ``plugin``'s attributes from ``state``."""
        for name, rebuild in self.rebuild.items():
            if name in state:
                setattr(plugin, name, rebuild(state[name]))


def float_values(saved: Mapping[str, Any]) -> dict[str, float]:
    """A saved mapping name -> number, rebuilt with float values (a ``SavedState`` rebuild function)."""
    return {str(k): float(v) for k, v in saved.items()}


class Stateful:
    """A plugin base whose ``get_state``/``set_state`` hooks save and restore its class's ``STATE``
    (a ``SavedState``); ``restored`` runs after a restore (reset what a resume must not carry)."""

    STATE: ClassVar[SavedState]

    @hookimpl
    def get_state(self) -> Mapping[str, Any]:
        return self.STATE.save(self)

    @hookimpl
    def set_state(self, state: Mapping[str, Any]) -> None:
        self.STATE.load(self, state)
        self.restored()

    def restored(self) -> None:
        """Called after ``set_state`` (nothing by default)."""
