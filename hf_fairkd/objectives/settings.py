"""An objective's own settings: a dataclass it declares, given as ``DistillationArguments.objective_settings``.

An objective declares them as a class attribute, ``settings_class``: a dataclass whose fields are typed (bool, int,
float, str, a ``Literal`` of choices, ``X | None``, or ``list[X]`` of those), each with a default and a
``metadata={"help": ...}``; it may check values in its own ``__post_init__``. The objective reads them as
``self.settings`` (an instance; None for an objective that declares none).

They are given through one field of `DistillationArguments`, ``objective_settings``: a mapping in Python and YAML
(or an instance of the settings class in Python); on the command line ``key=value`` pairs separated by commas
(``--objective_settings every=5,warmup=2``) or a JSON object (``'{"every": 5}'``). The field is typed
``dict | str | None``, which `HfArgumentParser` turns into one string argument (as it does for TrainingArguments'
``lr_scheduler_kwargs``), while a YAML mapping passes through the recipes' parser unchanged. Values are checked and
converted to the declared types when the arguments are built, before any model or data is touched.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import Literal, Union

__all__ = [
    "check_settings_class",
    "given_settings",
    "make_settings",
    "resolved_settings",
    "settings_help",
]

_SCALARS = (bool, int, float, str)
_TRUE, _FALSE = ("true", "yes", "y", "t", "1", "on"), ("false", "no", "n", "f", "0", "off")


# ---------------------------------------------------------------------------------------------- declaring
def _hints(settings_class) -> dict:
    return typing.get_type_hints(settings_class)


def _supported(kind) -> bool:
    if kind in _SCALARS:
        return True
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return all(isinstance(choice, _SCALARS) for choice in args)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return len(rest) == 1 and len(args) == 2 and _supported(rest[0])
    if origin is list:
        return len(args) == 1 and _supported(args[0]) and typing.get_origin(args[0]) is not list
    return False


def _type_name(kind) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return f"{_type_name(next(a for a in args if a is not type(None)))} or None"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(kind, "__name__", str(kind))


def _expected(kind) -> str:
    name = _type_name(kind)
    return name if name.startswith("one of") else f"a valid {name}"


def _default(spec: dataclasses.Field):
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def check_settings_class(objective_cls) -> None:
    """Refuse, when an objective is registered, a ``settings_class`` that is not a dataclass of typed fields with
    defaults (every objective must train without any setting given)."""
    settings_class = getattr(objective_cls, "settings_class", None)
    if settings_class is None:
        return
    where = f"{objective_cls.__name__}.settings_class"
    if not (isinstance(settings_class, type) and dataclasses.is_dataclass(settings_class)):
        raise TypeError(f"{where} must be a @dataclass class, got {settings_class!r}.")
    hints = _hints(settings_class)
    for spec in dataclasses.fields(settings_class):
        if not spec.init:
            continue
        if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise TypeError(
                f"{where}: setting {spec.name!r} has no default (the objective must train without it)."
            )
        if not _supported(hints[spec.name]):
            raise TypeError(
                f"{where}: setting {spec.name!r} is typed {hints[spec.name]!r}; use bool, int, float, str, a "
                "Literal of choices, X | None, or list[X] of those."
            )


def _fields(settings_class) -> list[dataclasses.Field]:
    return [spec for spec in dataclasses.fields(settings_class) if spec.init]


def _describe(spec: dataclasses.Field, kind) -> str:
    help_text = spec.metadata.get("help", "")
    return f"{spec.name} ({_type_name(kind)}, default {_default(spec)!r})" + (
        f": {help_text}" if help_text else ""
    )


def settings_help(objective_cls) -> str:
    """What ``--objective_settings`` takes for ``objective_cls``: each setting's type, default and help, one a
    line (or that it declares none, and its options among the flags). By name: `base.objective_settings_help`."""
    name = objective_cls.name or objective_cls.__name__
    settings_class = objective_cls.settings_class
    if settings_class is None:
        flags = ", ".join(f"--{p}" for p in objective_cls.param_names) or "none"
        return f"objective {name!r} declares no settings (its options among the flags: {flags})."
    hints = _hints(settings_class)
    lines = [f"objective {name!r} settings (--objective_settings key=value,key=value or a JSON object):"]
    lines += [f"  {_describe(spec, hints[spec.name])}" for spec in _fields(settings_class)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- giving
def _parse_text(text: str) -> dict:
    """``every=5,warmup=2`` or a JSON object, as a dict (values still strings in the first form)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"objective_settings {text!r} is not a valid JSON object ({err}).") from None
        if not isinstance(value, dict):
            raise ValueError(f"objective_settings {text!r} must be a JSON object.")
        return value
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(
                f"objective_settings: {item!r} is not key=value. Give key=value pairs separated by commas "
                """(--objective_settings every=5,warmup=2) or a JSON object ('{"every": 5}')."""
            )
        if key in pairs:
            raise ValueError(f"objective_settings: {key!r} is given twice ({text!r}).")
        pairs[key] = value.strip()
    return pairs


def _convert(value, kind):
    """``value`` as ``kind``, or ValueError. Idempotent: a value already of the type is returned as it is."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _convert(value, next(a for a in args if a is not type(None)))
    if origin is Literal:
        for choice in args:
            try:
                if _convert(value, type(choice)) == choice:
                    return choice
            except ValueError:
                pass
        raise ValueError
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return [_convert(item, args[0]) for item in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError  # a bool is no number; a mapping or list is no scalar
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value.strip()) if isinstance(value, str) else int(value)
    if kind is float:
        return float(value)
    return value if isinstance(value, str) else str(value)


def _as_dict(objective_cls, value) -> dict:
    if value is None:
        return {}
    settings_class = objective_cls.settings_class
    if settings_class is not None and isinstance(value, settings_class):
        return {spec.name: getattr(value, spec.name) for spec in _fields(settings_class)}
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, dict):
        if bad := [key for key in value if not isinstance(key, str)]:
            raise ValueError(f"objective_settings: keys must be setting names (strings), got {bad!r}.")
        return dict(value)
    raise ValueError(
        f"objective_settings must be a mapping, a string (key=value,... or JSON) or None, got {value!r}."
    )


def given_settings(objective_cls, value, reserved=()) -> dict | None:
    """The settings given for ``objective_cls`` (a mapping, ``key=value,...`` or JSON text, an instance of its
    settings class, or None), checked and converted to the declared types; None when none are given.

    Refused, each with a message saying what to give instead: settings for an objective that declares none; an
    unknown key (the nearest declared one named, all of them listed); a value not of the declared type; a value the
    settings class's own ``__post_init__`` refuses; a setting named like one of ``reserved`` (the arguments' own
    fields: the objective would read one of two values of that name)."""
    name = objective_cls.name or objective_cls.__name__
    given = _as_dict(objective_cls, value)
    settings_class = objective_cls.settings_class
    declared = {spec.name: spec for spec in _fields(settings_class)} if settings_class is not None else {}
    if clash := sorted(
        set(declared) & set(reserved)
    ):  # refused even unused: records list them beside the flags
        raise ValueError(
            f"objective {name!r} declares setting(s) {clash} named like argument(s) of DistillationArguments: "
            "rename them in its settings_class, so that one name means one value."
        )
    if not given:
        return None
    if settings_class is None:
        flags = ", ".join(f"--{p}" for p in objective_cls.param_names)
        raise ValueError(
            f"objective_settings {given!r} given, but objective {name!r} declares no settings (no settings_class)"
            + (f"; its options are the flags {flags}." if flags else ".")
            + " Drop --objective_settings, or choose an objective that declares them."
        )
    hints = _hints(settings_class)
    listing = "; ".join(_describe(spec, hints[key]) for key, spec in declared.items())
    converted = {}
    for key, raw in given.items():
        if key not in declared:
            close = difflib.get_close_matches(key, declared, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"objective_settings: objective {name!r} has no setting {key!r}{hint}. Its settings: {listing}."
            )
        try:
            converted[key] = _convert(raw, hints[key])
        except (TypeError, ValueError):
            raise ValueError(
                f"objective_settings: {key}={raw!r} is not {_expected(hints[key])} (objective {name!r} declares "
                f"{_describe(declared[key], hints[key])})."
            ) from None
    try:
        settings_class(**converted)  # the settings class's own checks, now rather than at the first loss
    except (TypeError, ValueError) as err:
        raise ValueError(f"objective_settings for objective {name!r}: {err}") from None
    return converted


def make_settings(objective_cls, value):
    """The instance of ``objective_cls.settings_class`` for the given settings (its defaults where none is given);
    None for an objective that declares no settings (and refuses any given)."""
    given = given_settings(objective_cls, value)
    if objective_cls.settings_class is None:
        return None
    return objective_cls.settings_class(**(given or {}))


def resolved_settings(objective_cls, value) -> dict:
    """Every declared setting with its value (given or default), for records, cards and resume fingerprints;
    empty for an objective that declares none."""
    settings = make_settings(objective_cls, value)
    if settings is None:
        return {}
    return {spec.name: getattr(settings, spec.name) for spec in _fields(type(settings))}
