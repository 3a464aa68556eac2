"""Which trace files a caller of the control service may name (``SetChannel`` custom profiles, ``StartScenario``).

A trace is a file on the proxy's disk, so a caller must never pick an arbitrary path: it may name

- a trace the proxy already loaded from what its operator gave it (the ``--profiles`` file's profiles, the ``serve
  --scenario`` file), by the same name the proxy shows (``meg-channel show``), or
- a file under the operator's ``--trace-dir`` (relative to it, or absolute inside it; ``..`` and symbolic links may
  not lead out of it).

Anything else is refused with a :class:`~shared.channel.models.ChannelConfigError` naming the field (the control
service answers ``INVALID_ARGUMENT``) before the file is opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from shared.channel.models import ChannelConfigError


class TraceAccess:
    """The traces callers may name: those the operator loaded (``known``, which may grow) and the ``trace_dir``."""

    def __init__(self, trace_dir: str | Path | None = None, known: Callable[[], Iterable[str]] = tuple) -> None:
        """``trace_dir``: the operator's folder of trace files (None: only known traces); ``known``: the trace names
        the proxy loaded from its operator's files (read at each check)."""
        self.trace_dir = Path(trace_dir).resolve() if trace_dir else None
        if self.trace_dir is not None and not self.trace_dir.is_dir():
            raise ChannelConfigError(f"--trace-dir {trace_dir}: not a directory")
        self.known = known

    def resolve(self, name: str, field: str) -> str:
        """The path the proxy opens for trace ``name`` given in ``field``; raises ChannelConfigError naming it."""
        if not isinstance(name, str) or not name or "\0" in name:
            raise ChannelConfigError(f"{field} must be a trace file name, got {name!r}")
        known = set(self.known())
        if name in known:
            return name
        if self.trace_dir is not None:
            path = Path(name)
            full = Path(os.path.realpath(path if path.is_absolute() else self.trace_dir / path))
            if full.is_relative_to(self.trace_dir):
                return str(full)
            raise ChannelConfigError(f"{field} {name!r} is outside the proxy's trace directory {self.trace_dir} "
                                     "(name a file under it, relative to it, without '..' leading out)")
        shown = ", ".join(sorted(known)[:10]) or "none"
        raise ChannelConfigError(f"{field} {name!r} is not a trace this proxy loaded (loaded: {shown}) and the proxy "
                                 "has no --trace-dir to look in")
