"""Command-line flags derived from configuration dataclasses, so that a setting is written
once: its field (type, default, `metadata["help"]`) gives its flag, and `from_args` builds the
dataclass back from the parsed namespace.

A field `foo_bar` becomes `--foo-bar` (dest `foo_bar`):

- `int`, `float` (or `... | None`, default None): a flag of that type;
- `bool` (default False): a switch (`store_true`);
- `list[str]`: one comma-separated string (the namespace keeps the string, as typed;
  `from_args` splits it);
- no default: a required flag.

Field metadata refines this: `help`; `flag`, another flag name (`"--steps"`), or False for a
field that never has one; `argparse`, keyword arguments that replace the derived ones (a flag
whose value is not the field's, e.g. a choice that `from_args` cannot convert alone: the
caller passes that field's value)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from types import NoneType, UnionType
from typing import Any


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def dest(f: dataclasses.Field) -> str:
    """The namespace attribute of the field's flag (as argparse derives it)."""
    return flag_name(f).lstrip("-").replace("-", "_")


def default_of(cls, name: str) -> Any:
    """The default of the dataclass field `name` (a fresh one for a `default_factory`)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"{cls.__name__}.{name} has no default")


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _flag_fields(cls, only: Iterable[str] | None, exclude: Iterable[str]):
    """The fields that get a flag, in field order, or in the order of `only`."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    if only is not None:
        unknown = [name for name in only if name not in by_name]
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")
        chosen = [by_name[name] for name in only]
    else:
        chosen = list(by_name.values())
    exclude = set(exclude)
    return [f for f in chosen if f.name not in exclude and f.metadata.get("flag") is not False]


def _value_type(hint) -> tuple[Any, bool]:
    """(the type of the value, whether None is allowed) of a type hint."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _is_str_list(hint) -> bool:
    return typing.get_origin(hint) is list and typing.get_args(hint) == (str,)


def _argparse_kwargs(cls, f: dataclasses.Field, hint, defaults: Mapping[str, Any]) -> dict:
    kwargs: dict[str, Any] = {}
    if "help" in f.metadata:
        kwargs["help"] = f.metadata["help"]
    if "argparse" in f.metadata:
        # A flag whose value is not the field's: described by hand.
        return {**kwargs, **f.metadata["argparse"]}
    if f.name in defaults:
        default = defaults[f.name]
    elif _has_default(f):
        default = default_of(cls, f.name)
    else:
        default = dataclasses.MISSING
    kind, _ = _value_type(hint)
    if kind is bool:
        if default is not False:
            raise ValueError(f"{cls.__name__}.{f.name}: a switch needs the default False")
        return {"action": "store_true", **kwargs}
    if _is_str_list(kind):
        if default is not dataclasses.MISSING:
            default = ",".join(default)
    elif kind in (int, float):
        kwargs = {"type": kind, **kwargs}
    elif kind is not str:
        raise TypeError(f"{cls.__name__}.{f.name}: no flag for the type {hint!r}")
    if default is dataclasses.MISSING:
        return {"required": True, **kwargs}
    return {"default": default, **kwargs}


def add_flags(
    parser: argparse.ArgumentParser,
    cls,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """One flag per field of the dataclass `cls` (those in `only`, in its order, if given;
    none in `exclude`), with the field's default unless `defaults` gives the command's."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in _flag_fields(cls, only, exclude):
        parser.add_argument(flag_name(f), **_argparse_kwargs(cls, f, hints[f.name], defaults))


def from_args(cls, args: argparse.Namespace, **values):
    """`cls` from the parsed flags of its fields: `values` first, then every field whose flag
    the namespace holds; the other fields keep their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = values.pop(f.name)
            continue
        if f.metadata.get("flag") is False or not hasattr(args, dest(f)):
            continue
        if "argparse" in f.metadata:
            raise TypeError(
                f"{cls.__name__}.{f.name}: its flag's value is not the field's; pass it"
            )
        value = getattr(args, dest(f))
        if _is_str_list(_value_type(hints[f.name])[0]) and value is not None:
            value = value.split(",")
        kwargs[f.name] = value
    if values:
        raise TypeError(f"{cls.__name__} has no field {', '.join(values)}")
    return cls(**kwargs)
