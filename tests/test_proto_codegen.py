"""The committed generated code must be exactly what the pinned grpcio-tools makes from proto/."""

from pathlib import Path

from tests.support.codegen import ROOT, generate, proto_files


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*") if p.is_file())
    assert made, "protoc generated nothing"
    assert len(made) == 3 * len(proto_files())
    for rel in made:
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is not committed; run python -m tests.support.codegen"
        assert committed.read_text() == (tmp_path / rel).read_text(), f"{rel} is stale; run python -m tests.support.codegen"
