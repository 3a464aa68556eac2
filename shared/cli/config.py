"""The convention the three MEG commands share: flags > ``MEG_*`` environment variables > TOML > defaults.

Every option of a command (and of its subcommands) can also come from the environment variable named after
it: ``--listen`` -> ``MEG_LISTEN``, ``--max-batch`` -> ``MEG_MAX_BATCH``, ``--upstream`` (repeatable) ->
``MEG_UPSTREAM`` (comma-separated), switches -> ``MEG_JSON=1``. :func:`apply_env` turns those variables into
the parser's defaults, so a flag given on the command line still wins; ``meg-edge``'s ``--config`` TOML only
fills what neither gave. Also here: a deprecated flag spelling that still works (:class:`DeprecatedAlias`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "MEG_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(dest: str) -> str:
    """``max_batch`` -> ``MEG_MAX_BATCH``."""
    return PREFIX + dest.upper()


def _value(action: argparse.Action, raw: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError(f"${env_name(action.dest)}={raw!r}: expected 1/0, true/false, yes/no or on/off")
        on = word in _TRUE
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    convert = action.type if callable(action.type) else str
    try:
        if isinstance(action, argparse._AppendAction):
            return [convert(v.strip()) for v in raw.split(",") if v.strip()]
        value = convert(raw)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise ValueError(f"${env_name(action.dest)}={raw!r}: {exc}") from exc
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"${env_name(action.dest)}={raw!r}: choose from {', '.join(map(str, action.choices))}")
    return value


def apply_env(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> dict[str, list[Any]]:
    """Make each optional flag of ``parser`` and its subparsers default to its ``MEG_*`` variable, if set.

    A required flag whose variable is set stops being required. Repeatable flags are returned instead
    ({dest: values}, used when the command line gives none: argparse would append flags to a default).
    Raises ValueError naming the variable for a value its flag would refuse.
    """
    env = os.environ if environ is None else environ
    lists: dict[str, list[Any]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                lists.update(apply_env(sub, env))
            continue
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in ("help", "version"):
            continue
        raw = env.get(env_name(action.dest))
        if raw is None:
            continue
        value = _value(action, raw)
        if isinstance(action, argparse._AppendAction):
            lists[action.dest] = value
        else:
            action.default = value
        action.required = False
    return lists


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the ``MEG_*`` defaults; a bad variable is a usage error (exit 2)."""
    try:
        lists = apply_env(parser)
    except ValueError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    for dest, values in lists.items():
        if hasattr(args, dest) and getattr(args, dest) is None:
            setattr(args, dest, values)
    return args


class DeprecatedAlias(argparse.Action):
    """An old flag spelling, hidden from ``--help``, that still sets the new flag's value and warns once.

    ``parser.add_argument("--model", dest="channel_model", action=DeprecatedAlias, new="--channel-model",
    help=argparse.SUPPRESS)``
    """

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` text: reST markup (double backticks, ``:mod:`x```) taken out."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", (doc or "").strip())
    return text.replace("``", "")
