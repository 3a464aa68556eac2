"""Regenerate the committed protobuf/gRPC code from ``proto/``: ``python -m tests.support.codegen``.

The ``.proto`` files are the only schema; ``shared/pb/*_pb2*.py`` are generated from them by the pinned
``grpcio-tools`` (see pyproject's dev extra) and a test fails if the committed code differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "shared" / "pb").glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write ``shared/pb/*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
