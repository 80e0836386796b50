"""The library's one logger (``logging.getLogger("lora_rl_plugins")``): import ``logger`` from here."""

from __future__ import annotations

import logging

__all__ = ["LOGGER_NAME", "logger"]

#: The name of the library's logger; configure it like any other (``logging.getLogger(LOGGER_NAME)``).
LOGGER_NAME = "lora_rl_plugins"
logger = logging.getLogger(LOGGER_NAME)
