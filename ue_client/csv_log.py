"""A CSV file streamed row by row as a run goes (``meg-ue load``'s ``requests.csv`` and ``timeline.csv``): the
header first, each row flushed at once (a crash or Ctrl-C keeps every row written so far). Thread-safe."""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

Row = TypeVar("Row")


def plain(value: object) -> object:
    """A cell as written: ``None`` -> empty, floats rounded to 6 decimals."""
    return "" if value is None else round(value, 6) if isinstance(value, float) else value


class CsvLog(Generic[Row]):
    """One row per call, of the dataclass ``row_type``'s fields in order; use as a context manager."""

    def __init__(self, path: Path, row_type: type[Any], cell: Callable[[object], object] = plain) -> None:
        self.path, self.cell = path, cell
        self.columns = tuple(f.name for f in fields(row_type))
        self._file = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._lock = threading.Lock()
        self._csv.writerow(self.columns)
        self._file.flush()

    def __call__(self, row: Row) -> None:
        values = [self.cell(getattr(row, n)) for n in self.columns]
        with self._lock:
            self._csv.writerow(values)
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
