"""Plugin configuration fields that document themselves: one place for an option's name, default,
validation and documentation.

A plugin's config is a dataclass whose fields are made with ``option(default, doc=...)`` and whose
``__post_init__`` validates them. ``lora_rl_plugins.bridge.options.PluginOptions`` derives the
options every integration accepts from these classes, and the docs (the integrations' docstrings,
the README's option table) are generated from or tested against ``option_docs``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["OptionDoc", "check_option_types", "option", "option_docs"]


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


def check_option_types(config_class: type, values: Mapping[str, Any], prefix: str = "") -> None:
    """Check each of ``values`` against the type its field of ``config_class`` is annotated with.

    Run before the config class is built, so a wrong type is reported as such (naming the option, the
    type it expects and the value given) instead of surfacing as a bare ``TypeError`` from a comparison
    inside ``__post_init__``. Strings are never coerced to numbers (``kl_budget="0.1"``, a number read
    from YAML): the message says to convert them, so a typo cannot pass as a number. ``bool`` is not an
    integer here (``kl_every=True`` is refused); an ``int`` is a valid ``float``. Names that are not
    fields are left to the class (its own "unexpected keyword" error).

    Args:
        config_class: a dataclass whose fields carry type annotations.
        values: option name -> value, as the user passed them.
        prefix: prepended to names in messages (``"vllm_serving."`` for a nested mapping).

    Raises:
        TypeError: a value of the wrong type; the message names ``prefix + name``, the expected type and
            the value given with its type.
    """
    hints = typing.get_type_hints(config_class)
    for name, value in values.items():
        if name not in hints or _matches(value, hints[name]):
            continue
        expected = _describe(hints[name])
        message = f"option {prefix}{name} expects {expected}, got {value!r} ({type(value).__name__})"
        if isinstance(value, str) and _numeric(hints[name]):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                shown = int(number) if number.is_integer() and _accepts(hints[name], int) else number
                message += (
                    f": pass {prefix}{name}={shown!r}, not the string (a value read from YAML or the environment "
                    "arrives as a string: convert it with int(...) or float(...)); strings are refused, not coerced"
                )
        raise TypeError(message)


def _args(tp: Any) -> tuple[Any, ...]:
    """The members of a union (``X | Y``, ``Optional[X]``), or ``(tp,)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _accepts(tp: Any, kind: type) -> bool:
    return any(member is kind for member in _args(tp))


def _numeric(tp: Any) -> bool:
    return _accepts(tp, int) or _accepts(tp, float)


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (checked as deep as an option needs)."""
    if tp is Any or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, member) for member in args)
    if origin is typing.Literal:  # the type only: a wrong string is the class's ValueError, listing the choices
        return any(type(value) is type(arg) for arg in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Sequence):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(_matches(item, arg) for item, arg in zip(value, args, strict=True))
    if origin is collections.abc.Callable or tp is collections.abc.Callable:
        return callable(value)
    if origin in (collections.abc.Sequence, collections.abc.Iterable):
        if isinstance(value, (str, bytes)) or not isinstance(value, origin):
            return False
        return not args or not isinstance(value, collections.abc.Sequence) or all(_matches(v, args[0]) for v in value)
    if origin is not None:  # Mapping[...], ...: the container's type only
        return isinstance(value, origin)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this check does not model: left to the class


def _describe(tp: Any) -> str:
    """``tp`` in words: "a number (float) or None", "one of 'warn', 'stop', 'penalize'"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(member) for member in args)
    if tp is None or tp is type(None):
        return "None"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    words = {bool: "True or False", int: "an integer (int)", float: "a number (float)", str: "a string"}
    if tp in words:
        return words[tp]
    if origin is tuple:
        return "a pair (" + ", ".join(getattr(arg, "__name__", str(arg)) for arg in args) + ")"
    if origin is collections.abc.Callable or tp is collections.abc.Callable:
        return "a callable"
    if origin in (collections.abc.Sequence, collections.abc.Iterable):
        inner = getattr(args[0], "__name__", str(args[0])) if args else "items"
        return f"a list of {inner} (not one string)"
    if origin is not None:
        return f"a {getattr(origin, '__name__', str(origin))}"
    return getattr(tp, "__name__", str(tp))
