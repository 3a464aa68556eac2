"""Edge server settings: flags, optionally a TOML file (``[edge]`` table) underneath them."""

from __future__ import annotations

from dataclasses import dataclass

from shared.wire.limits import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class EdgeSettings:
    listen: str = "127.0.0.1:50051"
    model: str | None = None  # StableDiffusionPipeline folder; None = embedded meg-tiny
    device: str = "auto"  # auto | cpu | cuda
    max_batch: int = 16  # requests denoised together by the batching engine (edge_server/engine.py)
    max_queue: int = 64  # requests waiting beyond those; more get RESOURCE_EXHAUSTED at once
    orphan_grace_s: float = 3.0  # a run whose every caller went away waits this long for a retry, then stops
    max_concurrency: int = 0  # deprecated alias of max_batch (0 = unset; replaced by the engine)
    metrics_port: int | None = None  # serve Prometheus metrics on this port (0 = any free port)
    metrics_listen: str = "127.0.0.1"  # the host /metrics binds (loopback: Prometheus exporters' default)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_prompt_chars: int = 1000
    default_deadline_s: float = 300.0  # applied when a client sends no deadline
    grace_s: float = 10.0  # drain time on SIGTERM/SIGINT
    name: str = "es0"  # this ES's name on the channel proxy (its upstream name)
    power_policy: str = "none"  # none | uniform | oracle | ppo (seed downlinks)
    power_budget: float = 1.0  # average transmit power per symbol of a seed
    power_model: str | None = None  # PPO policy file (default: the shipped one)
    csi_via: str | None = None  # proxy control HOST:PORT for CSI; "advertised": trust the proxy's header (see --help)
    tls_cert: str | None = None  # PEM certificate: serve TLS (with tls_key)
    tls_key: str | None = None  # PEM private key of tls_cert
    tls_ca: str | None = None  # PEM CA: require client certificates signed by it (mutual TLS)
    tls_client_names: tuple[str, ...] = ()  # client certificate common names accepted (empty: any the CA signed)
    insecure_one_way_tls: bool = False  # allow --tls-cert/--tls-key without --tls-ca (clients unauthenticated)
    token_file: str | None = None  # bearer token UEs must send (default: $MEG_TOKEN; none = open)
    control_token_file: str | None = None  # the proxy's admin token, for CSI (default: $MEG_ADMIN_TOKEN)
    sessions_per_caller: int = 16  # cooperative generations one caller may keep between rounds
