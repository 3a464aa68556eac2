"""MEG as containers, for real: build the images, `docker compose up`, wait healthy, generate through the proxy
from the `ue` container, swap a channel profile from a container, `meg-ue load` and a multi-ES protocol when the
checked-out code has them, the `multi-es` profile, and `down -v` leaving nothing behind.

Needs a Docker engine (skipped with the reason otherwise; `.ci/run` starts one) and Compose (v2 plugin or
Debian's docker-compose 1.29). On a machine that cannot reach a registry, the base image comes from
scripts/build-base-image.sh (run here when the image is missing). The first run builds the images (minutes);
later runs reuse the layer cache. The tests in this file run in order and share one compose project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
BASE_IMAGE = os.environ.get("MEG_COMPOSE_BASE_IMAGE", "python:3.11-slim")
PROMPT = "a large red circle on a white background"
VIA = "channel:50052"

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]


def _run(argv: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False)


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and _run(["docker", "compose", "version"], timeout=30).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _engine() -> tuple[list[str] | None, str]:
    """The compose command to use, or None and why not."""
    if shutil.which("docker") is None:
        return None, "no docker CLI on this machine"
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except subprocess.TimeoutExpired:
        return None, "no Docker engine answered `docker info` within 30 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"no Docker engine reachable (`docker info`: {last}); .ci/run starts one"
    cli = _compose_cli()
    return (cli, "") if cli else (None, "Docker engine found but no Compose (docker compose plugin or docker-compose)")


COMPOSE, WHY_NOT = _engine()
needs_engine = pytest.mark.skipif(COMPOSE is None, reason=WHY_NOT)


def test_healthcheck_exit_codes() -> None:
    """`python -m shared.rpc.healthcheck` (the compose health checks): 0 serving, 1 unknown service, 2 unreachable."""
    from shared.rpc.healthcheck import main
    from tests.support.procs import running, script

    with running([script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", "es0=127.0.0.1:1"]) as (_, port):
        assert main([f"127.0.0.1:{port}"]) == 0
        assert main([f"127.0.0.1:{port}", "--service", "no.such.Service"]) == 1
    assert main([f"127.0.0.1:{port}", "--timeout", "2"]) == 2  # stopped
    assert main([f"127.0.0.1:{port}", "--tls-ca", "/no/such/ca.pem"]) == 2  # one line, no traceback


def test_compose_file_is_valid_with_every_profile(tmp_path: Path) -> None:
    """`compose config` (no engine needed) accepts the file with all profiles and resolves what we rely on."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI (docker compose plugin or docker-compose)")
    env = {**os.environ, "MEG_COMPOSE_OUT": str(tmp_path)}
    res = _run([*cli, "-f", str(COMPOSE_FILE), "--profile", "multi-es", "--profile", "gpu", "--profile", "cli", "config"], env=env)
    assert res.returncode == 0, res.stderr
    import yaml

    services = yaml.safe_load(res.stdout)["services"]
    assert set(services) == {"es0", "es1", "gpu0", "channel", "ue"}
    assert services["channel"]["depends_on"]["es0"]["condition"] == "service_healthy"
    assert services["ue"]["depends_on"]["channel"]["condition"] == "service_healthy"
    assert services["gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["gpu0"]["build"]["args"]["LOCAL_WHEELS"] == "no"  # never the CPU wheel in the GPU image
    for name in ("es0", "es1", "gpu0", "channel"):
        assert "shared.rpc.healthcheck" in " ".join(services[name]["healthcheck"]["test"])


@dataclass
class Stack:
    """One compose project of docker-compose.yml (its own name, network, volumes; no fixed host ports)."""

    project: str
    out: Path
    env: dict[str, str]

    #: override files on top of docker-compose.yml (the TLS step adds docker/compose.tls.yml)
    overrides: tuple[Path, ...] = ()

    def compose(self, *args: str, profiles: Sequence[str] = (), timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*COMPOSE, "-f", str(COMPOSE_FILE)]  # type: ignore[misc]
        for f in self.overrides:
            argv += ["-f", str(f)]
        argv += ["-p", self.project]
        for p in profiles:
            argv += ["--profile", p]
        res = _run([*argv, *args], timeout=timeout, env=self.env)
        if check and res.returncode != 0:
            logs = _run([*argv, "logs", "--no-color", "--tail", "40"], timeout=60, env=self.env).stdout
            raise AssertionError(f"`compose {' '.join(args)}` exited {res.returncode}\n{res.stdout[-3000:]}\n"
                                 f"{res.stderr[-3000:]}\n--- service logs ---\n{logs[-6000:]}")
        return res

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"no container for service {service}"
        return cid

    def wait_healthy(self, services: Sequence[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            for s in list(pending):
                state = _run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", self.container(s)]).stdout.split()
                if state == ["running", "healthy"]:
                    pending.remove(s)
                assert state[:1] != ["exited"], f"{s} exited: {self.compose('logs', '--no-color', s).stdout[-3000:]}"
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout} s: {pending}")
            time.sleep(2)

    def ue(self, *args: str, timeout: float = 300, profiles: Sequence[str] = (),
           check: bool = True) -> subprocess.CompletedProcess[str]:
        """`compose run --rm ue ARGS` (the one-shot UE CLI container)."""
        return self.compose("run", "--rm", "ue", *args, profiles=(*profiles, "cli"), timeout=timeout, check=check)

    def resources(self) -> dict[str, list[str]]:
        """Containers (any state), networks and volumes of this project still on the engine."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": _run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "networks": _run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": _run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        }


def _read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert img.shape == (64, 64, 3), img.shape  # meg-tiny's images
    assert img.std() > 5, "a flat image"
    return img


def _ensure_base_image(env: dict[str, str]) -> None:
    """scripts/build-base-image.sh: builds the base image when it is missing and no registry serves it
    (it also stocks docker/wheels/ with a local CPU torch wheel when this host's pip has one)."""
    t0 = time.monotonic()
    have = _run(["docker", "image", "inspect", BASE_IMAGE], timeout=30).returncode == 0
    if not have and _run(["docker", "pull", BASE_IMAGE], timeout=300).returncode == 0:
        have = True
    if have and os.geteuid() != 0:
        return
    res = _run(["bash", str(ROOT / "scripts" / "build-base-image.sh"), "--tag", BASE_IMAGE], timeout=1800, env=env)
    assert res.returncode == 0, f"build-base-image.sh failed:\n{res.stdout}\n{res.stderr}"
    print(f"base image: {time.monotonic() - t0:.0f} s ({res.stdout.strip().splitlines()[-1:]})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    out = tmp_path_factory.mktemp("compose-out")
    out.chmod(0o777)  # the containers run as uid 1000
    # no compose setting from the caller's shell (image names and build arguments excepted), then ours
    keep = ("_IMAGE", "_TORCH_SPEC", "_TORCH_INDEX_URL", "_UID")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEG_COMPOSE_") or k.endswith(keep)}
    env.update({"MEG_COMPOSE_OUT": str(out), "MEG_COMPOSE_CHANNEL_PUBLISH": "127.0.0.1:0",
                "MEG_COMPOSE_BASE_IMAGE": BASE_IMAGE})
    s = Stack(project=f"megtest{uuid.uuid4().hex[:8]}", out=out, env=env)
    _ensure_base_image(env)
    t0 = time.monotonic()
    s.compose("build", profiles=["multi-es", "cli"], timeout=3000)
    print(f"compose build: {time.monotonic() - t0:.0f} s")
    try:
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", "--timeout", "20", profiles=["multi-es", "cli"], check=False, timeout=180)


@needs_engine
def test_up_becomes_healthy(stack: Stack) -> None:
    t0 = time.monotonic()
    stack.compose("up", "-d", timeout=600)
    stack.wait_healthy(["es0", "channel"])
    print(f"up -> healthy: {time.monotonic() - t0:.0f} s")
    # the health check command itself, from inside the proxy image (no diffusers there)
    res = stack.compose("exec", "-T", "channel", "python", "-m", "shared.rpc.healthcheck", "es0:50051")
    assert "SERVING" in res.stdout
    missing = stack.compose("exec", "-T", "channel", "python", "-m", "shared.rpc.healthcheck", "es1:50051", check=False)
    assert missing.returncode == 2, missing.stdout  # not started without the multi-es profile: unreachable
    assert stack.compose("exec", "-T", "channel", "python", "-c", "import diffusers", check=False).returncode != 0


@needs_engine
def test_ciag_from_the_ue_container(stack: Stack) -> None:
    res = stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, "--out", "/out/ciag.png", "--json")
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["protocol"] == "CIAG"
    _read_png(stack.out / "ciag.png")
    stats = json.loads(stack.compose("exec", "-T", "channel", "meg-channel", "stats", "--via", "127.0.0.1:50052", "--json").stdout)
    links = {(e["link"], e["direction"]): e for e in stats["entries"]}
    assert int(links[("ue->es0", "uplink")]["rpcs"]) >= 1 and int(links[("ue->es0", "downlink")]["symbols"]) > 0


@needs_engine
def test_swap_profile_from_a_container(stack: Stack) -> None:
    # meg-channel from another container on the compose network (the ue image has the CLI too)
    stack.compose("run", "--rm", "--no-deps", "--entrypoint", "meg-channel", "ue", "set", "downlink", "awgn-minus10",
                  "--via", VIA, profiles=["cli"])
    shown = json.loads(stack.compose("exec", "-T", "channel", "meg-channel", "show", "--via", "127.0.0.1:50052", "--json").stdout)
    assert shown["default"]["downlink"]["snr_db"] == -10
    res = stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, "--out", "/out/ciag-minus10.png", "--json")
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["downlink"]["snr_db"] == -10 and report["downlink"]["channel"] == "awgn-minus10", report
    clean, noisy = _read_png(stack.out / "ciag.png"), _read_png(stack.out / "ciag-minus10.png")
    assert np.abs(clean - noisy).mean() > 1.0, "a -10 dB downlink left the image unchanged"


def _has_load() -> bool:
    return subprocess.run(["meg-ue", "load", "--help"], capture_output=True, timeout=120, check=False).returncode == 0 \
        if shutil.which("meg-ue") else False


@needs_engine
def test_load_from_the_ue_container(stack: Stack) -> None:
    if not _has_load():
        pytest.skip("`meg-ue load` is not in this checkout yet")
    res = stack.ue("load", "--via", VIA, "--ues", "2", "--requests", "4", "--protocol", "CIAG", "--out", "/out/load", "--json",
                   timeout=600)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (stack.out / "load" / "results.json").is_file()
    assert not summary.get("errors"), summary


@needs_engine
def test_multi_es_profile(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", profiles=["multi-es", "cli"], timeout=180)
    t0 = time.monotonic()
    stack.compose("up", "-d", profiles=["multi-es"], timeout=600)
    stack.wait_healthy(["es0", "es1", "channel"])
    print(f"multi-es up -> healthy: {time.monotonic() - t0:.0f} s")
    shown = json.loads(stack.compose("exec", "-T", "channel", "meg-channel", "show", "--via", "127.0.0.1:50052", "--json").stdout)
    assert sorted(shown["upstreams"]) == ["es0", "es1"]
    stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, "--es", "es1", "--out", "/out/es1.png",
             profiles=["multi-es"])
    _read_png(stack.out / "es1.png")
    from shared.protocol.registry import PROTOCOLS

    if "UIDG" not in PROTOCOLS:
        pytest.skip("es1 served CIAG; the multi-ES protocols (UIDG, ...) are not in this checkout yet")
    stack.ue("generate", PROMPT, "--protocol", "UIDG", "--via", VIA, "--es", "es0,es1", "--out", "/out/uidg.png",
             profiles=["multi-es"])
    _read_png(stack.out / "uidg.png")


def _has_tls() -> bool:
    if not (ROOT / "scripts" / "make-dev-certs.sh").is_file() or not shutil.which("meg-edge"):
        return False
    help_ = subprocess.run(["meg-edge", "serve", "--help"], capture_output=True, text=True, timeout=120, check=False)
    return "--tls-cert" in help_.stdout


@needs_engine
def test_tls_and_tokens_override(stack: Stack, tmp_path: Path) -> None:
    """docker/compose.tls.yml: mutual TLS on every hop, UE and admin tokens, TLS health checks."""
    if not _has_tls():
        pytest.skip("TLS/token flags or scripts/make-dev-certs.sh are not in this checkout yet")
    certs = tmp_path / "certs"
    res = _run(["bash", str(ROOT / "scripts" / "make-dev-certs.sh"), str(certs), "es0", "es1", "gpu0", "channel"])
    assert res.returncode == 0, res.stderr
    certs.chmod(0o755)
    for f in certs.iterdir():
        f.chmod(0o644)  # a throwaway test CA: readable by the containers' uid
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", profiles=["multi-es", "cli"], timeout=180)
    stack.overrides = (ROOT / "docker" / "compose.tls.yml",)
    stack.env["MEG_COMPOSE_CERTS"] = str(certs)
    stack.compose("up", "-d", timeout=600)
    stack.wait_healthy(["es0", "channel"])  # the TLS health checks pass
    tls = ["--tls-ca", "/certs/ca.pem", "--tls-cert", "/certs/ue.pem", "--tls-key", "/certs/ue.key"]
    stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, *tls, "--token-file", "/certs/ue.token",
             "--out", "/out/tls.png")
    _read_png(stack.out / "tls.png")
    no_token = stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, *tls, "--out", "/out/x.png", check=False)
    assert no_token.returncode != 0 and "not authenticated" in (no_token.stdout + no_token.stderr).lower()
    plaintext = stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, "--token-file", "/certs/ue.token",
                         "--out", "/out/x.png", check=False)
    assert plaintext.returncode != 0
    ctl = ["run", "--rm", "--no-deps", "--entrypoint", "meg-channel", "ue", "set", "downlink", "awgn-0", "--via", VIA, *tls]
    ue_as_admin = stack.compose(*ctl, "--admin-token-file", "/certs/ue.token", profiles=["cli"], check=False)
    assert ue_as_admin.returncode != 0 and "not authenticated" in (ue_as_admin.stdout + ue_as_admin.stderr).lower()
    stack.compose(*ctl, "--admin-token-file", "/certs/admin.token", profiles=["cli"])


@needs_engine
def test_down_leaves_nothing(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", profiles=["multi-es", "cli"], timeout=180)
    assert stack.resources() == {"containers": [], "networks": [], "volumes": []}
