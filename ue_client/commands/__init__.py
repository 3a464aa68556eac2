"""``meg-ue``'s subcommands, one module each (vLLM's ``entrypoints/cli`` habit): every module has
``add_parser(subparsers)`` and ``run(args) -> int``; the flags they share live in :mod:`.base`."""

from __future__ import annotations

from types import ModuleType


def modules() -> list[ModuleType]:
    """The subcommand modules in ``--help`` order (imported here: each imports torch only in ``run``)."""
    from ue_client.commands import compare, generate, load, overhead

    return [generate, overhead, compare, load]
