"""Reading the recipes' arguments from a config file (YAML or JSON, typed by the parser's own actions) and from the
command line (the arguments it sets, in any spelling argparse accepts), with errors that name the nearest known
argument."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re

import yaml

ARGUMENT_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def unknown_flags_message(parser: argparse.ArgumentParser, unused: list[str]) -> str:
    """The command-line words no argument takes, each flag with the nearest known one (as for a config file)."""
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    hints = []
    for word in unused:
        flag = word.split("=", 1)[0]
        close = difflib.get_close_matches(flag, options, 1) if flag.startswith("--") else []
        hints.append(f"{word!r} (did you mean {close[0]!r}?)" if close else repr(word))
    return (
        f"Unknown argument(s) on the command line: {', '.join(hints)}. Fix the spelling, or see the arguments "
        "with --help."
    )


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false (YAML 1.1 would read ``eval_strategy: no`` as False)."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_argument_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """A YAML/JSON mapping of argument names to values, each typed by ``parser``'s action for it (lists for
    arguments that take several values; dicts and nulls kept as they are). An unknown name is an error that
    names it."""
    if not os.path.isfile(path):
        raise ValueError(f"Config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        values = json.load(f) if path.endswith(".json") else yaml.load(f, Loader=_YamlLoader)
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values.")
    actions = {}
    for action in reversed(parser._actions):  # the first action of a name (``--x``, not ``--no_x``)
        if not isinstance(action, argparse._HelpAction):
            actions[action.dest] = action
    unknown = [key for key in values if key not in actions]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, actions, 1))
                 else repr(key) for key in unknown]  # fmt: skip
        raise ValueError(f"{path}: unknown argument(s) {', '.join(hints)}.")
    return {key: typed_value(actions[key], value, where=f"{path}: {key}") for key, value in values.items()}


def typed_value(action: argparse.Action, value, where: str):
    """``value`` (from a file) as the parser would type it on the command line; None stays None."""
    if value is None or action.type is None:  # a null, or a flag (store_true) that takes the bool as it is
        return value
    several = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
    if isinstance(value, (list, tuple)) and several:
        return [_typed_scalar(action, item, where) for item in value]
    if isinstance(value, (list, tuple, dict)):
        if action.type is str:  # a field that also takes the structure itself (dict | str, list[str] | str)
            return value
        raise ValueError(f"{where} takes one value, not {value!r}.")
    return [_typed_scalar(action, value, where)] if several else _typed_scalar(action, value, where)


def _typed_scalar(action: argparse.Action, value, where: str):
    kind = action.type
    try:
        if kind in (int, float) and not isinstance(value, str):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != kind(value):
                raise ValueError
        typed = kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise ValueError(f"{where}: {value!r} is not a valid {getattr(kind, '__name__', 'value')}.") from None
    if action.choices is not None and typed not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(action.choices)}.")
    return typed


def given_arguments(parser, argv: list[str]) -> dict:
    """The arguments ``argv`` sets and their values (in any spelling argparse accepts: ``--x=1``,
    abbreviations, ``--no_x``)."""
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    given, _ = parser.parse_known_args(argv)
    return vars(given)
