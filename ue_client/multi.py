"""The CLI side of a multi-ES session: which ESs (the proxy's named upstreams, ``--es`` picks a subset),
how the user picks among candidates (``--pick``; on a terminal, a contact sheet and a question), and
where the candidates are written (beside ``--out``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from shared.model.images import save_png
from shared.model.ops import ModelParts
from shared.rpc.control import is_not_a_proxy
from shared.rpc.security import TlsFiles
from ue_client.edge_client import EdgeClient, check_geometry
from ue_client.pick import Candidate, Chooser, chooser
from ue_client.session import GenerationResult
from ue_client.transport import connect, discover, pick_names


def open_clients(via: str, es: str | None, parts: ModelParts, timeout_s: float, ue_id: str,
                 tls: TlsFiles | None = None, token: str | None = None) -> dict[str, EdgeClient]:
    """One checked client per ES of the session: the proxy's upstreams (learnt over its control RPC),
    narrowed by ``es`` (comma-separated names; one the proxy does not have is an error naming it). A target
    that is an ES, not a proxy, is the one ES ``es0``. An ES whose model differs is an error; one that does
    not answer stays in the session and fails there by name (a parallel protocol goes on without it, and
    says so: :func:`shortfall`)."""
    try:
        available = discover(via, timeout=min(timeout_s, 10.0), tls=tls, token=token)
    except grpc.RpcError as exc:
        if not is_not_a_proxy(exc):
            raise
        available = ["es0"]  # no channel control there: an ES reached directly
    clients = connect(via, pick_names(available, es), timeout_s, ue_id, tls=tls, token=token)
    try:
        for c in clients.values():
            try:
                check_geometry(parts, c.describe())
            except grpc.RpcError as exc:  # an ES that is down now fails in the generation, by name
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
    except BaseException:
        for c in clients.values():
            c.close()
        raise
    return clients


def shortfall(protocol: str, result: GenerationResult) -> str | None:
    """One line for stderr when a multi-ES generation ran on fewer ESs than it asked for, or on one only."""
    used, requested = result.es_used, result.es_requested
    if result.es is None or (len(used) >= requested and len(used) > 1):
        return None
    why = f"; missing: {', '.join(result.es_missing)}" if result.es_missing else ""
    return (f"meg-ue: {protocol} asked for {requested} edge server{'s' * (requested != 1)} and ran on "
            f"{len(used)} ({', '.join(used) or 'none'}){why}")


def candidate_paths(out: Path, result: GenerationResult) -> dict[str, Path]:
    """Where each ES's candidate goes: ``<out>-<es>.png`` (``-sketch`` for DSUC's sketches)."""
    return {c.es: out.with_name(f"{out.stem}-{c.es}{'-sketch' if c.key == 'sketch' else ''}.png") for c in result.candidates}


def contact_sheet(cands: Sequence[Candidate], path: Path) -> Path:
    """All candidates side by side, labelled with their ES and arrival time."""
    from ue_client.compare import panel

    images = {f"{i}": c.tensor for i, c in enumerate(cands)}
    captions = {f"{i}": f"[{i}] {c.es}\n{c.seconds:.2f}s" for i, c in enumerate(cands)}
    path.parent.mkdir(parents=True, exist_ok=True)
    panel(images, captions).save(path)
    return path


def ask(out: Path) -> Chooser:
    """A person chooses on the terminal: the contact sheet is written first, then the question."""

    def choose(cands: Sequence[Candidate]) -> int:
        sheet = contact_sheet(cands, out.with_name(f"{out.stem}-candidates.png"))
        print(f"{len(cands)} candidates ({cands[0].key}s) in {sheet}:", file=sys.stderr)
        for i, c in enumerate(cands):
            print(f"  [{i}] from {c.es}, arrived after {c.seconds:.2f}s", file=sys.stderr)
        while True:
            print(f"pick 0-{len(cands) - 1} [0]: ", end="", file=sys.stderr, flush=True)  # stdout may be --json
            answer = input().strip() or "0"
            if answer.isdigit() and int(answer) < len(cands):
                return int(answer)
            print(f"type a number from 0 to {len(cands) - 1}", file=sys.stderr)

    return choose


def make_chooser(pick: str | None, out: Path) -> Chooser:
    """``--pick``; none given: ask on a terminal, else the first to arrive."""
    if pick is None:
        return ask(out) if sys.stdin.isatty() and sys.stderr.isatty() else chooser("first")
    return ask(out) if pick == "ask" else chooser(pick)


def write_candidates(out: Path, result: GenerationResult) -> dict[str, str]:
    """Every candidate beside ``out`` and their contact sheet; returns ES name -> path (plus ``sheet``)."""
    paths = candidate_paths(out, result)
    for c in result.candidates:
        save_png(c.tensor, paths[c.es])
    written = {es: str(p) for es, p in paths.items()}
    if result.candidates:
        written["sheet"] = str(contact_sheet(result.candidates, out.with_name(f"{out.stem}-candidates.png")))
    return written
