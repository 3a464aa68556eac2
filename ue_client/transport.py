"""The UE's concurrent transport to the session's edge servers: one :class:`EdgeClient` per named ES behind
the channel proxy (each UE->ES pair its own link), every fan-out sent to all of them at once (threads: the
grpc sync stubs release the GIL while they wait)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from shared.rpc.control import ControlClient
from shared.rpc.security import TlsFiles
from ue_client.edge_client import EdgeClient


class EdgeFailure(RuntimeError):
    """One named ES of a multi-ES session failed (its gRPC status and details in the message)."""

    def __init__(self, es: str, code: str, details: str) -> None:
        super().__init__(f"edge server {es} failed: {code}: {details}")
        self.es, self.code, self.details = es, code, details


def discover(via: str, timeout: float = 10.0, tls: TlsFiles | None = None, token: str | None = None) -> list[str]:
    """The edge servers behind the channel proxy at ``via``, by name (its ``GetChannel`` control RPC, which
    the proxy answers for the UE token)."""
    with ControlClient(via, tls, token, timeout_s=timeout) as control:
        return control.upstreams()


def pick_names(available: Sequence[str], wanted: str | None) -> list[str]:
    """``wanted`` (comma-separated names, ``None``/``"all"``: every one) checked against ``available``: a name
    the proxy does not have (gone, not joined yet, mistyped) is an error that names it, as is a name twice."""
    if not wanted or wanted == "all":
        return list(available)
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or len(set(names)) != len(names):
        gone = f" ({', '.join(unknown)}: not behind it now)" if unknown else ""
        raise ValueError(f"--es {wanted!r}: the proxy has edge servers {', '.join(available) or '(none)'}{gone} "
                         "(each at most once)")
    return names


def connect(via: str, names: Sequence[str], timeout_s: float = 120.0, ue_id: str = "ue",
            retry: bool = False, tls: TlsFiles | None = None, token: str | None = None) -> dict[str, EdgeClient]:
    """One client per named ES, all through the proxy at ``via`` (links ``ue_id->name``).

    ``retry`` is off by default: an ES that is down answers UNAVAILABLE at once, and a parallel fan-out
    goes on with the others instead of retrying it until the deadline (a cooperative one fails by name,
    or falls back to a single-ES protocol when asked)."""
    return {name: EdgeClient(via, timeout_s=timeout_s, ue_id=ue_id, es_name=name, retry=retry, tls=tls, token=token)
            for name in names}


def fan_out(calls: Mapping[str, Callable[[], object]]) -> dict[str, tuple[object | BaseException, float]]:
    """Run each named call at once; per name ``(result or the exception it raised, seconds to arrive)``."""
    started = time.perf_counter()

    def timed(fn: Callable[[], object]) -> tuple[object | BaseException, float]:
        try:
            out: object | BaseException = fn()
        except Exception as exc:  # noqa: BLE001 - returned to the runner, which decides
            out = exc
        return out, time.perf_counter() - started

    if len(calls) == 1:
        ((name, fn),) = calls.items()
        return {name: timed(fn)}
    with ThreadPoolExecutor(len(calls), thread_name_prefix="meg-ue-es") as pool:
        futures = {name: pool.submit(timed, fn) for name, fn in calls.items()}
        return {name: f.result() for name, f in futures.items()}
