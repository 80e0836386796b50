"""Helpers every plugin uses, written once: warnings given once per run (and kept across a resume).

Metric declarations: ``plugin.metrics.metric_family``; options: ``plugin.config.option``; services:
``plugin.services``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

__all__ = ["WarnOnce"]


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
