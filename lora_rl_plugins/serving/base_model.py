"""The adapter's base model config, found without asking: ``base_model_name_or_path`` of ``adapter_config.json``.

A local directory holding ``config.json`` (as written, or relative to the adapter directory), else
the Hugging Face cache: ``huggingface_hub.try_to_load_from_cache``, which reads the cache only (no
network). None when neither has it; then the base architecture's module rules cannot be checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["find_base_model_config"]


def find_base_model_config(config: Mapping[str, Any], adapter_dir: Any = None) -> tuple[Path | None, str]:
    """(path of the base model's config.json or None, where it was looked for / why it was not found)."""
    name = config.get("base_model_name_or_path")
    if not name or not isinstance(name, str):
        return None, "adapter_config.json names no base model (base_model_name_or_path is empty)"
    candidates = [Path(name).expanduser()]
    if adapter_dir is not None and not Path(name).is_absolute():
        candidates.append(Path(adapter_dir) / name)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate / "config.json", f"the base model {name} (local directory)"
    if "/" in name and not os.path.isabs(name) and name.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers and peft
            return None, f"the base model {name!r} is not a local directory and huggingface_hub is not installed"
        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached), f"the base model {name} (Hugging Face cache)"
    return None, f"the base model {name!r} is neither a local directory with config.json nor in the Hugging Face cache"
