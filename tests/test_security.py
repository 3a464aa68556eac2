"""Trust, as grpc's own auth examples test it: mutual TLS on every hop and bearer tokens (a UE token for the
edge service, a separate admin token for the proxy's ChannelControl). Certificates are made at test time by
scripts/make-dev-certs.sh (no keys in git); the servers are real (in-process grpc.aio, and processes)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.cli.errors import describe_auth_error
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2, edge_pb2_grpc
from shared.protocol.params import Params
from shared.rpc.security import TlsFiles, secure_channel
from tests.conftest import BackgroundLoop
from tests.support.procs import running, script
from ue_client.edge_client import EdgeClient
from ue_client.session import generate

ROOT = Path(__file__).resolve().parent.parent


def _certs(out: Path) -> Path:
    subprocess.run(["bash", str(ROOT / "scripts" / "make-dev-certs.sh"), str(out)], check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the deployment's certificates, another CA's certificates)."""
    return _certs(tmp_path_factory.mktemp("pki") / "good"), _certs(tmp_path_factory.mktemp("pki") / "evil")


def _tls(d: Path, role: str, ca: Path | None = None) -> TlsFiles:
    return TlsFiles(str(d / f"{role}.pem"), str(d / f"{role}.key"), str((ca or d) / "ca.pem"))


@dataclass
class SecureStack:
    es: str
    proxy: str
    ue_token: str
    admin_token: str
    parts: object


@pytest.fixture(scope="module")
def secure_stack(pki: tuple[Path, Path], random_model_dir: Path) -> Iterator[SecureStack]:
    """ES (mTLS, UE token) <- proxy (mTLS both sides, UE token + admin token), in this process."""
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from shared.channel.profiles import IDEAL, load_profiles
    from shared.model.ops import ModelParts

    good, _ = pki
    ue_token, admin_token = (good / "ue.token").read_text().strip(), (good / "admin.token").read_text().strip()
    parts = ModelParts.load(str(random_model_dir), "cpu")
    bg = BackgroundLoop()
    es, es_port, _ = bg.run(create_server(EdgeSettings(  # type: ignore[misc]
        listen="127.0.0.1:0", tls_cert=str(good / "edge.pem"), tls_key=str(good / "edge.key"), tls_ca=str(good / "ca.pem"),
        token_file=str(good / "ue.token"), power_policy="uniform", control_token_file=str(good / "admin.token"),
        tls_client_names=("meg-channel",)), parts))
    proxy, port, _ = bg.run(create_proxy(  # type: ignore[misc]
        "127.0.0.1:0", {"es0": f"127.0.0.1:{es_port}"}, LinkTable(load_profiles(None), IDEAL, IDEAL),
        tls=_tls(good, "channel"), upstream_tls=_tls(good, "channel"), ue_token=ue_token, admin_token=admin_token))
    try:
        yield SecureStack(f"127.0.0.1:{es_port}", f"127.0.0.1:{port}", ue_token, admin_token, parts)
    finally:
        bg.run(proxy.stop(0))
        bg.run(es.stop(0))
        bg.close()


def _describe(target: str, tls: TlsFiles | None, token: str | None) -> edge_pb2.DescribeResponse:
    with secure_channel(target, tls, token) as ch:
        return edge_pb2_grpc.EdgeServiceStub(ch).Describe(edge_pb2.DescribeRequest(), timeout=10)


def _fails(target: str, tls: TlsFiles | None, token: str | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _describe(target, tls, token)
    return err.value


def test_mutual_tls_and_tokens_end_to_end(secure_stack: SecureStack, pki: tuple[Path, Path]) -> None:
    good, _ = pki
    with EdgeClient(secure_stack.proxy, timeout_s=60, ue_id="meg-ue", tls=_tls(good, "ue"),
                    token=secure_stack.ue_token) as client:  # the UE id is the certificate's (issue 23.8)
        result = generate(secure_stack.parts, client, "a red circle", "CIAG", params=Params(seed=1, steps=2))  # type: ignore[arg-type]
    assert result.image.shape == (1, 3, 32, 32)
    # the ES directly: the proxy's certificate may call it, a UE's (same CA, other role) may not
    assert _describe(secure_stack.es, _tls(good, "channel"), secure_stack.ue_token).protocols
    denied = _fails(secure_stack.es, _tls(good, "ue"), secure_stack.ue_token)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "named meg-channel only" in denied.details()
    with secure_channel(secure_stack.proxy, _tls(good, "ue"), secure_stack.admin_token) as ch:
        stats = channel_pb2_grpc.ChannelControlStub(ch).GetStats(channel_pb2.GetStatsRequest(), timeout=10)
    assert any(e.link == "meg-ue->es0" and e.rpcs >= 1 for e in stats.entries)
    # the ES asked the proxy for CSI over mTLS with the admin token: its power allocation was applied
    assert any(e.link == "meg-ue->es0" and e.direction == "downlink" and e.allocated >= 1 for e in stats.entries)


def test_multi_es_discovery_and_compare_over_mtls(secure_stack: SecureStack, pki: tuple[Path, Path], tmp_path: Path) -> None:
    """A multi-ES UE learns its ESs from the proxy with the UE token (GetChannel is read-only); compare sets
    the links with the admin token; every other control RPC still refuses the UE token."""
    from ue_client.compare import run_compare
    from ue_client.multi import open_clients

    good, _ = pki
    parts = secure_stack.parts
    clients = open_clients(secure_stack.proxy, None, parts, 60, "meg-ue.multi", tls=_tls(good, "ue"),  # type: ignore[arg-type]
                           token=secure_stack.ue_token)
    try:
        assert list(clients) == ["es0"]
        result = generate(parts, None, "a red circle", "UIDG", params=Params(seed=1, steps=2), clients=clients)  # type: ignore[arg-type]
        assert result.image.shape == (1, 3, 32, 32)
        report = run_compare(parts, clients["es0"], "a red circle", "txt2img", Params(seed=1, steps=2), None,  # type: ignore[arg-type]
                             tmp_path / "cmp", 10.0, secure_stack.proxy, tls=_tls(good, "ue"),
                             admin_token=secure_stack.admin_token)
        assert (tmp_path / "cmp" / "panel.png").exists() and report["table"]
    finally:
        for c in clients.values():
            c.close()
    with secure_channel(secure_stack.proxy, _tls(good, "ue"), secure_stack.ue_token) as ch, \
            pytest.raises(grpc.RpcError) as err:
        channel_pb2_grpc.ChannelControlStub(ch).GetStats(channel_pb2.GetStatsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("hop", ["proxy", "es"])
def test_plaintext_client_against_tls_server_fails(secure_stack: SecureStack, hop: str) -> None:
    err = _fails(getattr(secure_stack, hop), None, secure_stack.ue_token)
    assert err.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("hop", ["proxy", "es"])
def test_wrong_ca_fails(secure_stack: SecureStack, pki: tuple[Path, Path], hop: str) -> None:
    good, evil = pki
    target = getattr(secure_stack, hop)
    # the client trusts another CA: the server's certificate does not verify
    err = _fails(target, _tls(good, "ue", ca=evil), secure_stack.ue_token)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert describe_auth_error(err) is not None and "TLS" in describe_auth_error(err)  # type: ignore[operator]
    # the client's certificate comes from another CA, or there is none: the server refuses it
    assert _fails(target, _tls(evil, "ue", ca=good), secure_stack.ue_token).code() == grpc.StatusCode.UNAVAILABLE
    no_cert = TlsFiles(ca=str(good / "ca.pem"))
    assert _fails(target, no_cert, secure_stack.ue_token).code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("hop", ["proxy", "es"])
def test_missing_or_wrong_token_is_unauthenticated(secure_stack: SecureStack, pki: tuple[Path, Path], hop: str) -> None:
    good, _ = pki
    target = getattr(secure_stack, hop)
    for token in (None, "not-the-token", secure_stack.admin_token):
        err = _fails(target, _tls(good, "ue"), token)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (token, err.details())
    # health stays open (orchestrators probe it without a token)
    with secure_channel(target, _tls(good, "ue")) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_control_service_refuses_the_ue_token(secure_stack: SecureStack, pki: tuple[Path, Path]) -> None:
    good, _ = pki
    for token in (secure_stack.ue_token, None, "guess"):
        with secure_channel(secure_stack.proxy, _tls(good, "ue"), token) as ch, pytest.raises(grpc.RpcError) as err:
            channel_pb2_grpc.ChannelControlStub(ch).SetChannel(
                channel_pb2.SetChannelRequest(direction="both", profile="awgn-0"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
def test_clis_say_one_line_when_not_trusted(secure_stack: SecureStack, pki: tuple[Path, Path], random_model_dir: Path) -> None:
    good, evil = pki
    tls = ["--tls-ca", str(good / "ca.pem"), "--tls-cert", str(good / "ue.pem"), "--tls-key", str(good / "ue.key")]
    env = {k: v for k, v in os.environ.items() if k not in ("MEG_TOKEN", "MEG_ADMIN_TOKEN")}
    r = subprocess.run([script("meg-channel"), "stats", "--via", secure_stack.proxy, *tls, "--admin-token-file", str(good / "ue.token")],
                       capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode == 1 and "not authenticated" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([script("meg-channel"), "stats", "--via", secure_stack.proxy, *tls, "--json"],
                       capture_output=True, text=True, timeout=60, env={**env, "MEG_ADMIN_TOKEN": secure_stack.admin_token}, check=False)
    assert r.returncode == 0 and '"entries"' in r.stdout, r.stderr
    r = subprocess.run([script("meg-channel"), "stats", "--via", secure_stack.proxy, "--tls-ca", str(evil / "ca.pem")],
                       capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode == 1 and "TLS handshake failed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([script("meg-ue"), "generate", "a red circle", "--via", secure_stack.proxy, *tls, "--model", str(random_model_dir),
                        "--steps", "2", "--out", str(good / "x.png")], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 1 and "not authenticated" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_every_hop_over_mtls_with_the_real_daemons(pki: tuple[Path, Path], random_model_dir: Path, tmp_path: Path) -> None:
    good, _ = pki
    client = TlsFiles(cert=str(good / "ue.pem"), key=str(good / "ue.key"), ca=str(good / "ca.pem"))
    edge = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir), "--device", "cpu",
            "--tls-cert", str(good / "edge.pem"), "--tls-key", str(good / "edge.key"), "--tls-ca", str(good / "ca.pem"),
            "--token-file", str(good / "ue.token")]
    with running(edge, "meg.v1.EdgeService", tls=client) as (_, es_port):
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}",
                 "--tls-cert", str(good / "channel.pem"), "--tls-key", str(good / "channel.key"),
                 "--tls-ca", str(good / "ca.pem"), "--token-file", str(good / "ue.token"),
                 "--admin-token-file", str(good / "admin.token")]
        with running(proxy, "meg.v1.ChannelControl", tls=client) as (_, port):
            tls = ["--tls-ca", str(good / "ca.pem"), "--tls-cert", str(good / "ue.pem"), "--tls-key", str(good / "ue.key")]
            r = subprocess.run([script("meg-ue"), "generate", "a red circle", "--via", f"127.0.0.1:{port}", *tls,  # no --ue-id: the certificate's name
                                "--token-file", str(good / "ue.token"), "--model", str(random_model_dir), "--steps", "2",
                                "--out", str(tmp_path / "x.png"), "--json"], capture_output=True, text=True, timeout=120,
                               check=False)
            assert r.returncode == 0, r.stderr
            r = subprocess.run([script("meg-channel"), "show", "--via", f"127.0.0.1:{port}", *tls,
                                "--admin-token-file", str(good / "admin.token")], capture_output=True, text=True, timeout=60,
                               check=False)
            assert r.returncode == 0 and "meg-ue->es0" in r.stdout, r.stderr


def test_tokens_without_tls_on_loopback(pki: tuple[Path, Path], random_model_dir: Path) -> None:
    """Plaintext stays possible on loopback, and a token still guards it (sent by a client interceptor)."""
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from shared.model.ops import ModelParts

    good, _ = pki
    token = (good / "ue.token").read_text().strip()
    bg = BackgroundLoop()
    es, port, _ = bg.run(create_server(EdgeSettings(listen="127.0.0.1:0", token_file=str(good / "ue.token")),  # type: ignore[misc]
                                       ModelParts.load(str(random_model_dir), "cpu")))
    try:
        with EdgeClient(f"127.0.0.1:{port}", timeout_s=30, token=token) as client:
            assert client.describe().protocols
        with EdgeClient(f"127.0.0.1:{port}", timeout_s=30, token="") as client, pytest.raises(grpc.RpcError) as err:
            client.describe()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "needs a bearer token" in err.value.details()
    finally:
        bg.run(es.stop(0))
        bg.close()


def test_load_over_mtls_reads_the_proxy_counters_with_the_admin_token(secure_stack: SecureStack, pki: tuple[Path, Path]) -> None:
    from ue_client.load import LoadConfig, run_load

    good, _ = pki
    cfg = LoadConfig(via=secure_stack.proxy, ues=2, requests=2, steps=2, ue_id="meg-ue-tlsload",
                     control_tls=_tls(good, "ue"), admin_token=secure_stack.admin_token)
    summary, records = run_load(secure_stack.parts, cfg, lambda ue: EdgeClient(  # type: ignore[arg-type]
        secure_stack.proxy, timeout_s=60, ue_id=ue, tls=_tls(good, "ue"), token=secure_stack.ue_token), None)
    assert len(records) == 2 and all(r.status == "OK" for r in records)
    proxy = summary["proxy"]
    assert proxy is not None and proxy["uplink"]["rpcs"] == 2  # type: ignore[index]


# --- issue 23: items 3 and 4 ---------------------------------------------------------------------------------
class _TokenTrap(channel_pb2_grpc.ChannelControlServicer):
    """A ChannelControl that records who sends it what (an attacker's CSI endpoint)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    async def GetCSI(self, request: channel_pb2.CSIRequest, context: grpc.aio.ServicerContext) -> channel_pb2.CSIResponse:
        self.calls.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        return channel_pb2.CSIResponse(gains=[1.0], coherence_symbols=0)


def test_a_callers_header_never_sends_the_admin_token_anywhere(pki: tuple[Path, Path], random_model_dir: Path) -> None:
    """An ES with a power policy used to ask for CSI — with the admin token — at whatever address a caller put
    in the meg-channel-control header. Now only --csi-via, or a proxy whose certificate --tls-client-name
    names, decides; a plaintext caller's header is ignored (the seed goes at unit power)."""
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from shared.model.ops import ModelParts
    from shared.rpc.server import bind

    good, _ = pki
    parts = ModelParts.load(str(random_model_dir), "cpu")
    bg = BackgroundLoop()
    trap = _TokenTrap()

    async def start_trap() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        channel_pb2_grpc.add_ChannelControlServicer_to_server(trap, server)
        port = bind(server, "127.0.0.1:0")
        await server.start()
        return server, port

    trap_server, trap_port = bg.run(start_trap())  # type: ignore[misc]
    es, port, _ = bg.run(create_server(EdgeSettings(  # type: ignore[misc]
        listen="127.0.0.1:0", power_policy="uniform", control_token_file=str(good / "admin.token")), parts))
    try:
        cond = parts.embed("a red circle")  # type: ignore[attr-defined]
        from shared.wire import air

        request = edge_pb2.SegmentRequest(protocol="CIAG", segment=1, task="txt2img", tensors=[air.to_air("cond", cond)],
                                          params=edge_pb2.GenerationParams(seed=1, steps=2))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = edge_pb2_grpc.EdgeServiceStub(ch).RunSegment(
                request, timeout=60, metadata=(("meg-channel-control", f"127.0.0.1:{trap_port}"), ("meg-ue", "eve")))
        assert [t.name for t in reply.tensors] == ["seed"] and not reply.tensors[0].block_power  # unit power
        assert trap.calls == [], "the ES sent its admin token where a caller's header pointed"
    finally:
        bg.run(es.stop(0))
        es.meg_servicer.close()  # type: ignore[attr-defined]
        bg.run(trap_server.stop(0))
        bg.close()


def test_one_way_tls_needs_an_explicit_flag(pki: tuple[Path, Path], random_model_dir: Path) -> None:
    """--tls-cert/--tls-key without --tls-ca used to start a one-way TLS ES silently (any client, no
    certificate); now it is a start-up error in one line unless --insecure-one-way-tls says so."""
    good, _ = pki
    edge = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir), "--device", "cpu",
            "--tls-cert", str(good / "edge.pem"), "--tls-key", str(good / "edge.key")]
    r = subprocess.run(edge, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "one-way TLS" in r.stderr and "--insecure-one-way-tls" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_dev_certificates_have_roles(pki: tuple[Path, Path]) -> None:
    """make-dev-certs.sh: each certificate names its role (CN meg-edge / meg-channel / meg-ue), and a UE's is
    for clients only (extendedKeyUsage clientAuth): it cannot serve as an ES or a proxy."""
    good, _ = pki
    for role, usages in (("edge", "TLS Web Server Authentication, TLS Web Client Authentication"),
                         ("channel", "TLS Web Server Authentication, TLS Web Client Authentication"),
                         ("ue", "TLS Web Client Authentication")):
        text = subprocess.run(["openssl", "x509", "-in", str(good / f"{role}.pem"), "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
        assert f"CN = meg-{role}" in text or f"CN=meg-{role}" in text, text
        assert usages in text.replace("\n", " "), (role, text)


# --- issue 23 item 8: a UE's certificate names the UE ids it may claim ------------------------------------------
def _extra_cert(pki_dir: Path, name: str) -> TlsFiles:
    """A client certificate of common name ``name`` signed by ``pki_dir``'s CA (as make-dev-certs.sh makes the UE's)."""
    key, csr, pem, ext = (pki_dir / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    if not pem.exists():
        subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                        str(key), "-out", str(csr), "-subj", f"/CN={name}"], check=True, capture_output=True, timeout=60)
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=clientAuth\n")
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki_dir / "ca.pem"), "-CAkey",
                        str(pki_dir / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(pem)],
                       check=True, capture_output=True, timeout=60)
    return TlsFiles(str(pem), str(key), str(pki_dir / "ca.pem"))


def _describe_as(target: str, tls: TlsFiles, token: str, ue: str | None) -> grpc.StatusCode:
    with secure_channel(target, tls, token) as ch:
        try:
            edge_pb2_grpc.EdgeServiceStub(ch).Describe(edge_pb2.DescribeRequest(), timeout=20,
                                                       metadata=(("meg-ue", ue),) if ue is not None else ())
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, (exc.code(), exc.details())
            assert repr(ue) in (exc.details() or "") and "client certificate" in (exc.details() or ""), exc.details()
            return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.OK


def test_a_ue_certificate_claims_only_ue_ids_in_its_namespace(secure_stack: SecureStack, pki: tuple[Path, Path]) -> None:
    """A real ``meg-channel serve`` with client certificates required: the ``meg-ue`` header may name the certificate
    (``meg-ue``) or its namespace (``meg-ue-3``, ``meg-ue.7``, ``meg-ue:a``); no header is the certificate's name;
    another UE's id (``alice``, ``ue``, ``meg-ue1``) is PERMISSION_DENIED naming both, and the proxy keeps serving."""
    good, _ = pki
    alice = _extra_cert(good, "alice")
    ue = _tls(good, "ue")
    proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0={secure_stack.es}",
             "--tls-cert", str(good / "channel.pem"), "--tls-key", str(good / "channel.key"),
             "--tls-ca", str(good / "ca.pem"), "--token-file", str(good / "ue.token"),
             "--admin-token-file", str(good / "admin.token")]
    with running(proxy, "meg.v1.ChannelControl", tls=ue) as (_, port):
        via, token = f"127.0.0.1:{port}", secure_stack.ue_token
        ok = grpc.StatusCode.OK
        denied = grpc.StatusCode.PERMISSION_DENIED
        for cert, claim, want in [(ue, "meg-ue", ok), (ue, "meg-ue-3", ok), (ue, "meg-ue.7", ok), (ue, "meg-ue:a", ok),
                                  (ue, None, ok), (ue, "alice", denied), (ue, "ue", denied), (ue, "meg-ue1", denied),
                                  (ue, "meg-ue-", ok), (alice, "alice_2", ok), (alice, "meg-ue-3", denied),
                                  (alice, "bob", denied), (alice, None, ok), (ue, "meg-ue-4", ok)]:
            assert _describe_as(via, cert, token, claim) == want, (cert.cert, claim)
        with secure_channel(via, ue, secure_stack.admin_token) as ch:
            stats = channel_pb2_grpc.ChannelControlStub(ch).GetStats(channel_pb2.GetStatsRequest(), timeout=10)
        links = {e.link for e in stats.entries}
        assert {"meg-ue->es0", "meg-ue-3->es0", "alice->es0", "alice_2->es0"} <= links, links
        assert not links & {"ue->es0", "bob->es0", "meg-ue1->es0"}, links  # a refused claim touched nothing
