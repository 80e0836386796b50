"""Plugin configuration fields that document themselves: one place for an option's name, default,
validation and documentation.

A plugin's config is a dataclass whose fields are made with ``option(default, doc=...)`` and whose
``__post_init__`` validates them. ``lora_rl_plugins.bridge.options.PluginOptions`` derives the
options every integration accepts from these classes, and the docs (the integrations' docstrings,
the README's option table) are generated from or tested against ``option_docs``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["OptionDoc", "option", "option_docs"]


def option(default: Any = None, *, doc: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its one-line documentation (``doc``)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class OptionDoc:
    """One option: its name, default (as written), type (as annotated) and documentation."""

    name: str
    default: str
    type: str
    doc: str
    group: str


def option_docs(config_class: type, group: str) -> list[OptionDoc]:
    """The documented options of a config dataclass, in declaration order.

    Raises:
        TypeError: a field was declared without ``option(..., doc=...)``.
    """
    docs = []
    for item in dataclasses.fields(config_class):
        if "doc" not in item.metadata:
            raise TypeError(
                f"{config_class.__name__}.{item.name} has no documentation: declare it with option(doc=...)"
            )
        if item.default is not dataclasses.MISSING:
            default = repr(item.default)
        elif item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(item.default_factory())  # type: ignore[misc]
        else:
            default = "required"
        docs.append(OptionDoc(item.name, default, str(item.type), item.metadata["doc"], group))
    return docs
