"""Server plumbing: reflection lists the services, settings come from TOML under the flags."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from edge_server.cli import _settings, main


def test_reflection_lists_services(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    for addr, service in ((inproc_stack.es_addr, "meg.v1.EdgeService"), (inproc_stack.proxy_addr, "meg.v1.ChannelControl")):
        with grpc.insecure_channel(addr) as ch:
            services = ProtoReflectionDescriptorDatabase(ch).get_services()
        assert service in services and "grpc.health.v1.Health" in services


def test_settings_from_toml_under_flags(tmp_path: Path) -> None:
    import argparse

    cfg = tmp_path / "edge.toml"
    cfg.write_text('[edge]\nlisten = "127.0.0.1:0"\nmax_concurrency = 5\npower_budget = 0.5\n')
    args = argparse.Namespace(config=str(cfg), listen=None, max_concurrency=3, power_budget=None)
    s = _settings(args)
    assert s.listen == "127.0.0.1:0" and s.max_concurrency == 3 and s.power_budget == 0.5
    cfg.write_text('[edge]\nlisten_on = "x"\n')
    with pytest.raises(ValueError, match="unknown settings"):
        _settings(argparse.Namespace(config=str(cfg)))


def test_serve_with_bad_settings_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[edge]\nlisten_on = "x"\n')
    assert main(["serve", "--config", str(cfg)]) == 1  # runtime errors exit 1 in every MEG CLI
    assert "unknown settings" in capsys.readouterr().err
