"""MEG as containers, for real, the way a newcomer meets them: the README's "Run in containers" block is
run line by line exactly as written (as whoever runs the test, root included; no chmod, no extra flag), in a
fresh copy of the checkout, then the same stack is checked further: the UE's files belong to the owner of
./out for any uid, the multi-es profile added to the running stack joins the proxy and UIDG reaches both
ESs, a profile swap from a container changes the image, `meg-ue load`, TLS and tokens, and `down -v` leaves
nothing behind.

The copy differs from a user's shell in two things only, both documented settings: the project is named by
its folder (megreadme<hex>, so runs never share containers) and MEG_COMPOSE_CHANNEL_PUBLISH=127.0.0.1:0 (no
fixed host port taken by a test). Where only Debian's docker-compose 1.29 is installed (no Compose v2
plugin), `docker compose` in the block is run as `docker-compose` (the file is valid for both).

Needs a Docker engine (skipped with the reason otherwise; `.ci/run` starts one) and Compose. The README's
scripts/build-base-image.sh line runs where no registry serves python:3.11-slim, as it says. The first run
builds the images (minutes); later runs reuse the layer cache. The tests run in order and share one project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
BASE_IMAGE = "python:3.11-slim"  # the Dockerfile's default, as in the README
PROMPT = "a large red circle on a white background"
VIA = "channel:50052"

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]


def _run(argv: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None,
         cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)


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
    #: the checkout copy the project runs from (its docker-compose.yml, ./out, ./configs)
    workdir: Path = ROOT

    #: override files on top of docker-compose.yml (the TLS step adds docker/compose.tls.yml)
    overrides: tuple[Path, ...] = ()

    def compose(self, *args: str, profiles: Sequence[str] = (), timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*COMPOSE, "-f", str(self.workdir / "docker-compose.yml")]  # type: ignore[misc]
        for f in self.overrides:
            argv += ["-f", str(f)]
        argv += ["-p", self.project]
        for p in profiles:
            argv += ["--profile", p]
        res = _run([*argv, *args], timeout=timeout, env=self.env, cwd=self.workdir)
        if check and res.returncode != 0:
            logs = _run([*argv, "logs", "--no-color", "--tail", "40"], timeout=60, env=self.env, cwd=self.workdir).stdout
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


def readme_block(section: str = "Run in containers") -> list[str]:
    """The first ```bash block of README.md's ``## section``, one shell command per entry (backslash
    continuations joined; comments are left to the shell)."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```bash\n(.*?)```", body, re.DOTALL)
    assert m, f"README.md section {section!r} has no ```bash block"
    commands, current = [], ""
    for line in m.group(1).splitlines():
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if current.strip():
                commands.append(current.strip())
            current = ""
    return commands


def test_readme_block_parses() -> None:
    block = readme_block()
    assert any(c.startswith("docker compose up -d") for c in block)
    gen = next(c for c in block if "run --rm ue generate" in c)
    assert gen.startswith("mkdir -p out && ") and "--out /out/x.png" in gen and "\\" not in gen


def _checkout_copy(dest: Path) -> None:
    """The checkout as a user has it: tracked and untracked-but-not-ignored files (what `git clone` plus
    local edits hold), nothing that .gitignore keeps out (no out/, no docker/wheels/*.whl)."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh copy of the checkout in a folder of its own (its name is the compose project's), and the
    shell environment of a newcomer: no MEG_COMPOSE_* or COMPOSE_* setting but the publish port."""
    root = tmp_path_factory.mktemp("readme")
    workdir = root / f"megreadme{uuid.uuid4().hex[:8]}"
    workdir.mkdir()
    _checkout_copy(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEG_COMPOSE_", "COMPOSE_"))}
    env["MEG_COMPOSE_CHANNEL_PUBLISH"] = "127.0.0.1:0"
    s = Stack(project=workdir.name, out=workdir / "out", env=env, workdir=workdir)
    try:
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", "--timeout", "20", profiles=["multi-es", "cli"], check=False, timeout=180)


def _base_image_served() -> bool:
    """Does a registry serve python:3.11-slim (then the README's build-base-image.sh line is not needed)? An image
    already here does not count: the script then only seeds docker/wheels/ (fast), as it would for a user."""
    try:
        return _run(["docker", "pull", BASE_IMAGE], timeout=300).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _shell(stack: Stack, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """One README command in the copy's folder, by bash, as written (`docker compose` is Compose 1.29's
    `docker-compose` where no v2 plugin is installed)."""
    if COMPOSE == ["docker-compose"]:
        command = command.replace("docker compose", "docker-compose")
    t0 = time.monotonic()
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=stack.workdir, env=stack.env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    print(f"[{time.monotonic() - t0:6.0f} s] {command}")
    if res.returncode != 0:
        logs = stack.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60).stdout
        raise AssertionError(f"README command failed ({res.returncode}): {command}\n{res.stdout[-3000:]}\n"
                             f"{res.stderr[-3000:]}\n--- service logs ---\n{logs[-6000:]}")
    return res


def _upstreams(stack: Stack) -> list[str]:
    res = stack.compose("exec", "-T", "channel", "meg-channel", "show", "--via", "127.0.0.1:50052", "--json", check=False)
    return sorted(json.loads(res.stdout)["upstreams"]) if res.returncode == 0 else []


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"not within {timeout:.0f} s: {what}"
        time.sleep(1)
    return time.monotonic() - t0


@needs_engine
def test_readme_recipe_as_written(stack: Stack) -> None:
    """Every line of the README's block but the last (`down -v`, run by the last test), with what each
    promises checked after it: healthy services, ./out/x.png written (and owned by us), es1 joining."""
    block = readme_block()
    assert block[-1].startswith("docker compose down -v")
    for command in block[:-1]:
        if command.startswith("scripts/build-base-image.sh"):
            if _base_image_served():  # "only where no registry is reachable"
                print(f"[skipped: a registry serves {BASE_IMAGE}] {command}")
                continue
            _shell(stack, command, timeout=1800)
        elif " --profile multi-es up -d" in command:
            _shell(stack, command, timeout=600)
            stack.wait_healthy(["es1"], timeout=300)
            joined = _wait_for(lambda: _upstreams(stack) == ["es0", "es1"], 30, "the proxy routes to es1")
            print(f"es1 joined the running proxy {joined:.0f} s after it was healthy (no restart of channel)")
        else:
            _shell(stack, command, timeout=3000 if " build" in command else 600)
            if re.search(r"compose up -d\s*(#|$)", command):
                stack.wait_healthy(["es0", "channel"])
                assert _upstreams(stack) == ["es0"]
            if "--out /out/x.png" in command:
                png = stack.out / "x.png"
                _read_png(png)
                assert png.stat().st_uid == os.geteuid(), "x.png should belong to whoever made ./out"
    # UIDG now reaches both edge servers (the multi-ES part of the recipe's promise)
    # (--timeout: two ESs on a loaded 2-core machine may need more than the default deadline)
    res = stack.ue("generate", PROMPT, "--protocol", "UIDG", "--via", VIA, "--out", "/out/uidg.png", "--json",
                   "--timeout", "600", profiles=["multi-es"], timeout=900)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(report["es"]) == ["es0", "es1"], report
    _read_png(stack.out / "uidg.png")
    stack.compose("exec", "-T", "channel", "meg-channel", "reset", "--via", "127.0.0.1:50052")  # the block set -10 dB


@needs_engine
def test_ue_files_belong_to_the_owner_of_out_for_any_uid(stack: Stack) -> None:
    """./out made by another user (uid 4321 here): the ue service writes as that uid, and as no other."""
    other = stack.workdir / "out-4321"
    other.mkdir()
    os.chown(other, 4321, 4321) if os.geteuid() == 0 else pytest.skip("chown to another uid needs root")
    stack.env["MEG_COMPOSE_OUT"] = str(other)
    try:
        stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, "--out", "/out/y.png")
    finally:
        del stack.env["MEG_COMPOSE_OUT"]
    st = (other / "y.png").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4321)


@needs_engine
def test_es_leaving_the_running_stack_is_dropped(stack: Stack) -> None:
    """`stop es1`: the proxy drops it within a few seconds; a UE that asks for it is told it has gone."""
    stack.compose("stop", "es1", profiles=["multi-es"])
    left = _wait_for(lambda: _upstreams(stack) == ["es0"], 30, "the proxy drops es1")
    print(f"es1 dropped {left:.0f} s after `stop` returned")
    # a UE that learnt es1 before (the proxy answers the name, not the UE's discovery)
    res = stack.compose("exec", "-T", "channel", "python", "-c",
                        "import grpc; from shared.pb import edge_pb2, edge_pb2_grpc\n"
                        "ch = grpc.insecure_channel('127.0.0.1:50052')\n"
                        "try:\n edge_pb2_grpc.EdgeServiceStub(ch).Describe(edge_pb2.DescribeRequest(), "
                        "metadata=(('meg-es', 'es1'),), timeout=10)\n"
                        "except grpc.RpcError as e:\n print(e.code().name, e.details())", check=False)
    assert res.stdout.startswith("UNAVAILABLE") and "edge server es1 has left the proxy" in res.stdout, res.stdout
    stack.compose("start", "es1", profiles=["multi-es"])
    stack.wait_healthy(["es1"], timeout=300)
    _wait_for(lambda: _upstreams(stack) == ["es0", "es1"], 30, "es1 rejoins")


@needs_engine
def test_health_check_and_the_proxy_image(stack: Stack) -> None:
    # the health check command itself, from inside the proxy image (no diffusers there)
    res = stack.compose("exec", "-T", "channel", "python", "-m", "shared.rpc.healthcheck", "es0:50051")
    assert "SERVING" in res.stdout
    missing = stack.compose("exec", "-T", "channel", "python", "-m", "shared.rpc.healthcheck", "es9:50051", check=False)
    assert missing.returncode == 2, missing.stdout  # no such service: unreachable
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
    stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, "--es", "es1", "--out", "/out/es1.png",
             profiles=["multi-es"])
    _read_png(stack.out / "es1.png")


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
def test_proxy_plays_a_mounted_scenario_and_trace(stack: Stack, tmp_path: Path) -> None:
    """docker/compose.mobility.yml: a scenario folder and a traces folder mounted into the proxy; the scenario
    (MEG_COMPOSE_CHANNEL_SCENARIO) plays from start-up and puts ue->es0's downlink on a trace profile (a flat
    trace written here with numpy, in the .npz format shared/channel/trace.py reads), which a UE's image then
    crosses; `meg-channel show` in the container shows both of the scenario's links."""
    from shared.channel.trace import flat_trace, save_trace

    configs, scenarios, traces = tmp_path / "configs", tmp_path / "scenarios", tmp_path / "traces"
    for d in (configs, scenarios, traces):
        d.mkdir()
    save_trace(traces / "ramp.npz", *flat_trace(np.linspace(-3.0, 3.0, 2000), numerology=1, generator="test: numpy"))
    (configs / "channel-profiles.toml").write_text((ROOT / "configs" / "channel-profiles.toml").read_text()
                                                    + '\n[profiles.traced]\ntrace = "/etc/meg/traces/ramp.npz"\nsnr_db = 12\n')
    (scenarios / "moving.toml").write_text('[[event]]\nat_s = 0.0\nlink = "ue->es0"\ndirection = "downlink"\n'
                                           'profile = "traced"\n\n[[event]]\nat_s = 0.0\nlink = "probe->es0"\n'
                                           'snr_db = 7.5\n')
    for d in (tmp_path, configs, scenarios, traces):
        d.chmod(0o755)
        for f in d.iterdir():
            f.chmod(0o755 if f.is_dir() else 0o644)  # readable by the containers' uid
    settings = {"MEG_COMPOSE_CONFIGS": str(configs), "MEG_COMPOSE_SCENARIOS": str(scenarios),
                "MEG_COMPOSE_TRACES": str(traces), "MEG_COMPOSE_CHANNEL_SCENARIO": "/etc/meg/scenarios/moving.toml"}
    stack.overrides = (ROOT / "docker" / "compose.mobility.yml",)
    stack.env.update(settings)
    try:
        stack.compose("up", "-d", timeout=600)  # recreates the proxy only (its settings changed)
        stack.wait_healthy(["es0", "channel"])
        shown = json.loads(stack.compose("exec", "-T", "channel", "meg-channel", "show", "--via", "127.0.0.1:50052",
                                         "--json").stdout)
        links = {ls["link"]: ls for ls in shown["links"]}
        assert links["ue->es0"]["downlink"]["name"] == "traced" and links["ue->es0"]["downlink"]["snr_db"] == 12
        assert links["probe->es0"]["downlink"]["snr_db"] == 7.5
        logs = stack.compose("logs", "--no-color", "channel").stdout
        assert "scenario: profile(ue->es0, downlink, traced)" in logs, logs[-3000:]
        res = stack.ue("generate", PROMPT, "--protocol", "CIAG", "--via", VIA, "--out", "/out/traced.png", "--json")
        report = json.loads(res.stdout.strip().splitlines()[-1])
        assert report["downlink"]["channel"] == "traced" and report["downlink"]["snr_db"] == 12, report
        _read_png(stack.out / "traced.png")
    finally:
        stack.overrides = ()
        for k in settings:
            del stack.env[k]
        stack.compose("up", "-d", timeout=600, check=False)  # back to the plain proxy for the tests after


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
             "--ue-id", "meg-ue", "--out", "/out/tls.png")  # the UE id its certificate may claim (issue 23.8)
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
    """The README block's last line, as written; then no container, network or volume of the project is left."""
    stack.overrides = ()
    _shell(stack, readme_block()[-1], timeout=300)
    assert stack.resources() == {"containers": [], "networks": [], "volumes": []}
