"""One convention for the three commands: flags > MEG_* environment > TOML > defaults; the deprecated
``meg-channel --model`` spelling; ``--log-level``; no reST markup in ``--help``."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from shared.cli.config import DeprecatedAlias, apply_env, parse, plain
from tests.support.procs import script


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", default="127.0.0.1:1")
    s.add_argument("--max-batch", type=int)
    s.add_argument("--upstream", action="append", required=True)
    s.add_argument("--json", action="store_true")
    s.add_argument("--channel-model", default="awgn", choices=["awgn", "rayleigh"])
    s.add_argument("--model", dest="channel_model", action=DeprecatedAlias, new="--channel-model", help=argparse.SUPPRESS)
    return p


def test_flags_beat_env_which_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEG_LISTEN", "0.0.0.0:7")
    monkeypatch.setenv("MEG_MAX_BATCH", "4")
    monkeypatch.setenv("MEG_UPSTREAM", "a=h:1, b=h:2")
    monkeypatch.setenv("MEG_JSON", "yes")
    args = parse(_parser(), ["serve"])
    assert (args.listen, args.max_batch, args.upstream, args.json) == ("0.0.0.0:7", 4, ["a=h:1", "b=h:2"], True)
    args = parse(_parser(), ["serve", "--listen", "h:9", "--upstream", "c=h:3"])
    assert args.listen == "h:9" and args.upstream == ["c=h:3"]  # a repeated flag replaces the variable's list


def test_bad_env_values_name_the_variable() -> None:
    for env, match in [({"MEG_MAX_BATCH": "many"}, "MEG_MAX_BATCH"), ({"MEG_JSON": "perhaps"}, "MEG_JSON"),
                       ({"MEG_CHANNEL_MODEL": "rician"}, "choose from awgn, rayleigh")]:
        with pytest.raises(ValueError, match=match):
            apply_env(_parser(), env)


def test_deprecated_alias_warns_and_sets(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["serve", "--upstream", "h:1", "--model", "rayleigh"])
    assert args.channel_model == "rayleigh"
    assert "--model is deprecated; use --channel-model" in capsys.readouterr().err


def test_plain_help_text() -> None:
    assert plain("``meg-ue``: see :mod:`shared.protocol.tiles` and :func:`~x.y`") == "meg-ue: see shared.protocol.tiles and x.y"


def test_edge_env_beats_toml_and_flag_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_server import cli

    cfg = tmp_path / "edge.toml"
    cfg.write_text('[edge]\nmax_batch = 3\nname = "toml"\ngrace_s = 2.0\n')
    seen = {}
    monkeypatch.setattr("edge_server.server.serve", lambda s: seen.setdefault("s", s) and None, raising=True)
    monkeypatch.setattr("asyncio.run", lambda coro: coro)
    monkeypatch.setenv("MEG_MAX_BATCH", "5")
    monkeypatch.setenv("MEG_NAME", "env")
    assert cli.main(["serve", "--config", str(cfg), "--name", "flag"]) == 0
    s = seen["s"]
    assert (s.max_batch, s.name, s.grace_s) == (5, "flag", 2.0)


def test_channel_cli_convention_end_to_end() -> None:
    """The real command: --help shows --channel-model and --log-level, not --model; the old spelling warns."""
    help_ = subprocess.run([script("meg-channel"), "serve", "--help"], capture_output=True, text=True, timeout=60,
                           check=False).stdout
    assert "--channel-model" in help_ and "--model" not in help_.replace("--channel-model", "")
    top = subprocess.run([script("meg-channel"), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert "--log-level" in top.stdout and "``" not in top.stdout
    old = subprocess.run([script("meg-channel"), "serve", "--upstream", "h:1", "--model", "nope", "--snr-db", "5"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert old.returncode == 1 and "--model is deprecated; use --channel-model" in old.stderr, old.stderr
    assert "unknown channel model 'nope'" in old.stderr  # the old spelling set the new flag's value


def test_proxy_logs_each_forwarded_rpc_with_its_request_id(inproc_stack, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The UE sends the request id as the ``meg-request-id`` header too; the proxy logs it at debug level."""
    import logging

    from shared.pb import edge_pb2
    from shared.protocol.params import Params
    from shared.protocol.serde import segment_request
    from ue_client.edge_client import EdgeClient
    from ue_client.session import generate

    with caplog.at_level(logging.DEBUG, logger="meg.channel"), \
            EdgeClient(inproc_stack.proxy_addr, timeout_s=60, ue_id="logger") as client:
        generate(inproc_stack.parts, client, "a red circle", "FULL-ES", params=Params(seed=1, steps=2))
        forwarded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("forward RunSegment")]
        assert len(forwarded) == 1 and "logger->es0" in forwarded[0], forwarded
        rid = forwarded[0].split("request_id=")[1].split()[0]
        assert rid != "-" and all(c in "0123456789abcdef" for c in rid)  # the id the session made (body and header)
        # a request id the caller chose travels as given
        from shared.protocol.plan import plan
        from shared.protocol.registry import get_protocol

        seg = next(s for s in plan(get_protocol("FULL-ES", "txt2img")[1], "txt2img") if s.actor == "ES")
        req = segment_request("FULL-ES", seg, "txt2img", "a red circle", [], "my-id-7", Params(seed=1, steps=2), 1, None)
        assert isinstance(client.run_segment(req, timeout=60), edge_pb2.SegmentResponse)
    assert any("request_id=my-id-7" in r.getMessage() for r in caplog.records)
