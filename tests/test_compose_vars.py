"""Compose settings never share a name with a CLI setting (no Docker needed).

The three CLIs read ``MEG_<FLAG>`` as a flag's default (shared/cliconf.py): ``MEG_OUT`` is ``meg-ue --out``,
``MEG_DEVICE`` is ``meg-edge --device``. So every variable the compose files substitute from the user's shell,
and every ``MEG_*`` variable they put into a container (``meg-channel`` inherits the proxy's start-script
variables), is ``MEG_COMPOSE_*``, and no flag of ``meg-edge``/``meg-channel``/``meg-ue`` maps to that prefix.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.cli.config import env_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker" / "compose.tls.yml", ROOT / "docker" / "compose.mobility.yml"]
CLIS = {"meg-edge": "edge_server.cli", "meg-channel": "channel_emulator.cli", "meg-ue": "ue_client.cli"}
PREFIX = "MEG_COMPOSE_"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _strings(node: Any) -> Iterator[str]:
    """Every string of a parsed YAML document, keys included (comments are not part of it)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def substitutions(text: str) -> tuple[set[str], set[str]]:
    """(variables Compose substitutes from the host: ``${X...}``/``$X``; variables left to the container's
    shell: ``$${X}``/``$$X``), per the Compose interpolation rules (``$$`` is a literal ``$``)."""
    host: set[str] = set()
    container: set[str] = set()
    i = 0
    while (i := text.find("$", i)) != -1:
        target = host
        if text.startswith("$$", i):
            target, i = container, i + 1
        rest = text[i + 1:]
        m = NAME.match(rest[1:]) if rest.startswith("{") else NAME.match(rest)
        if m:
            target.add(m.group())
        i += 1
    return host, container


def test_substitutions_parser() -> None:
    host, container = substitutions('a ${MEG_X:-1} $MEG_Y $${MEG_Z} $$MEG_W $$ "${B?err}"')
    assert host == {"MEG_X", "MEG_Y", "B"} and container == {"MEG_Z", "MEG_W"}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_reads_only_meg_compose_variables(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    host: set[str] = set()
    container: set[str] = set()
    for s in _strings(doc):
        h, c = substitutions(s)
        host |= h
        container |= c
    assert host, f"{path.name}: no substitution found (did the parser break?)"
    assert not {v for v in host if not v.startswith(PREFIX)}, f"{path.name}: rename these to {PREFIX}*"
    meg_in_container = {v for v in container if v.startswith("MEG_")}
    assert not {v for v in meg_in_container if not v.startswith(PREFIX)}, f"{path.name}: container script variables"
    for name, service in doc["services"].items():
        env = service.get("environment") or {}
        keys = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
        bad = {k for k in keys if k.startswith("MEG_") and not k.startswith(PREFIX)}
        assert not bad, f"{path.name}: service {name} puts {bad} into its container, where a CLI reads them"


def _cli_env_names(module: str) -> set[str]:
    """The ``MEG_*`` names ``shared.cli.config.apply_env`` reads for one CLI: its parser, caught at ``parse``."""

    class Caught(Exception):
        pass

    names: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in set(action.choices.values()):
                    walk(sub)
            elif action.option_strings:
                names.add(env_name(action.dest))

    def catch(parser: argparse.ArgumentParser, argv: Any = None) -> None:
        walk(parser)
        raise Caught

    mod = importlib.import_module(module)
    mp = pytest.MonkeyPatch()
    mp.setattr(mod, "parse", catch)
    try:
        with pytest.raises(Caught):
            mod.main(["--help"])
    finally:
        mp.undo()
    return names


@pytest.fixture(scope="module")
def cli_env_names() -> dict[str, set[str]]:
    return {cli: _cli_env_names(module) for cli, module in CLIS.items()}


def test_no_cli_flag_maps_to_the_compose_prefix(cli_env_names: dict[str, set[str]]) -> None:
    assert "MEG_OUT" in cli_env_names["meg-ue"] and "MEG_DEVICE" in cli_env_names["meg-edge"]  # the walk works
    for cli, names in cli_env_names.items():
        assert not {n for n in names if n.startswith(PREFIX)}, f"{cli} has a --compose-* flag"


def test_k8s_container_variables(cli_env_names: dict[str, set[str]]) -> None:
    """The ES pod's MEG_DEVICE is meg-edge's own variable on purpose (the same value as its --device), and so is
    the mobility overlay's MEG_SCENARIO and MEG_TRACE_DIR meg-channel's (--scenario, --trace-dir); any other MEG_* container variable in
    deploy/k8s is read only by a shell line and is no CLI's."""
    every = set().union(*cli_env_names.values())
    found: set[str] = set()
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        found |= set(re.findall(r"-\s+name:\s+(MEG_[A-Z0-9_]+)", path.read_text()))
    assert {"MEG_ES_ARGS", "MEG_SCENARIO", "MEG_TRACE_DIR"} <= found
    assert {"MEG_SCENARIO", "MEG_TRACE_DIR"} <= cli_env_names["meg-channel"] and "MEG_DEVICE" in cli_env_names["meg-edge"]
    assert found & every <= {"MEG_DEVICE", "MEG_SCENARIO", "MEG_TRACE_DIR"}, found & every


def test_compose_passes_the_scenario_only_when_set() -> None:
    """docker-compose.yml's proxy start line adds --scenario and --trace-dir only for a set
    MEG_COMPOSE_CHANNEL_SCENARIO / MEG_COMPOSE_CHANNEL_TRACE_DIR (run by sh, as in the container);
    docker/compose.mobility.yml sets both and mounts the scenarios and traces."""
    import shutil
    import subprocess

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    line = doc["services"]["channel"]["command"][0].replace("$$", "$").replace("exec meg-channel", "printf '[%s]' ")
    sh = shutil.which("sh")
    assert sh is not None
    full = "[--scenario][/etc/meg/scenarios/a b.toml][--trace-dir][/t]"
    for value, traces, want in [("", "", ""), ("/etc/meg/scenarios/a b.toml", "/t", full)]:
        env = {"MEG_COMPOSE_CHANNEL_PROFILES": "p.toml", "MEG_COMPOSE_CHANNEL_SCENARIO": value,
               "MEG_COMPOSE_CHANNEL_TRACE_DIR": traces, "MEG_COMPOSE_CHANNEL_ARGS": "--seed 3", "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sh, "-c", line], env=env, capture_output=True, text=True, check=True, timeout=30).stdout
        assert out.endswith(f"[--profiles][/etc/meg/profiles/p.toml]{want}[--seed][3]"), out
    over = yaml.safe_load((ROOT / "docker" / "compose.mobility.yml").read_text())["services"]["channel"]
    targets = {v.split(":")[-2] for v in over["volumes"]}
    assert targets == {"/etc/meg/scenarios", "/etc/meg/traces"} and all(v.endswith(":ro") for v in over["volumes"])
    assert "/etc/meg/scenarios/drive-by.toml" in over["environment"]["MEG_COMPOSE_CHANNEL_SCENARIO"]
    assert over["environment"]["MEG_COMPOSE_CHANNEL_TRACE_DIR"] == "/etc/meg/traces"
