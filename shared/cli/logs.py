"""Logging, set up once the same way by ``meg-edge``, ``meg-channel`` and ``meg-ue``.

``--log-level`` (or ``MEG_LOG_LEVEL``, see :mod:`shared.cli.config`) picks the level of the ``meg.*`` loggers:
``debug`` adds one line per forwarded RPC on the proxy (with its request id), ``warning`` keeps a UE quiet.
Lines go to stderr (stdout carries the commands' output and ``--json``).
"""

from __future__ import annotations

import argparse
import logging

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def add_log_flag(parser: argparse.ArgumentParser, default: str = "info") -> None:
    """Add ``--log-level`` (default ``default``) to ``parser``."""
    parser.add_argument("--log-level", choices=LEVELS, default=default,
                        help=f"level of the meg.* log lines on stderr (default {default}; env MEG_LOG_LEVEL)")


def setup(level: str = "info") -> None:
    """Configure the root handler once (stderr, one format); ``meg.*`` at ``level``, other libraries at warning."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)  # a no-op where a handler exists (pytest)
    logging.getLogger("meg").setLevel(level.upper())
