"""``meg-ue compare``: every single-ES protocol (``--multi-es``: every multi-ES one, over all the session's
ESs) of the registry on one prompt through the proxy; a labelled panel and the measured accounting beside
the predicted one (like paper 1, Figs. 5 and 6). Quality is PSNR against the perfectly received image: the
same generation (Full-ES, same seed, the first ES) over an ideal link. The links' settings are read before
and put back afterwards, whatever happens in between."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from shared.model.images import psnr, save_png
from shared.model.ops import ModelParts
from shared.pb import channel_pb2
from shared.protocol.params import Params
from shared.protocol.registry import PROTOCOLS
from shared.rpc.control import ControlClient
from shared.rpc.security import TlsFiles
from ue_client.overhead import protocol_overhead
from ue_client.session import EdgeClient, MultiOptions, generate


def protocols(task: str, multi_es: bool) -> list[str]:
    """The registry's protocols for ``task``, single-ES or multi-ES ones, in registry order."""
    return [name for name, spec in PROTOCOLS.items() if task in spec.stages and spec.multi_es == multi_es]


def read_links(proxy: str, links: list[str], tls: TlsFiles | None = None,
               token: str | None = None) -> dict[str, tuple[channel_pb2.Profile, channel_pb2.Profile]]:
    """``(uplink, downlink)`` profiles each link has now (the default for a link not seen yet). ``tls`` and the
    admin ``token`` reach a secured proxy's control service."""
    with ControlClient(proxy, tls, token) as control:
        return control.links(links)


def set_links(proxy: str, settings: dict[str, tuple[channel_pb2.Profile, channel_pb2.Profile]],
              tls: TlsFiles | None = None, token: str | None = None) -> None:
    """Set each link's uplink and downlink profiles (``tls``, admin ``token``: as :func:`read_links`)."""
    with ControlClient(proxy, tls, token) as control:
        for link, (up, down) in settings.items():
            control.set_link(link, up, down)


def panel(images: dict[str, torch.Tensor], captions: dict[str, str], cell: int = 160) -> Image.Image:
    """One row of labelled images, upscaled (nearest) to ``cell`` pixels."""
    pad, text_h = 6, 34
    out = Image.new("RGB", (len(images) * (cell + pad) + pad, cell + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(out)
    for i, (name, img) in enumerate(images.items()):
        arr = (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        tile = Image.fromarray(arr).resize((cell, cell), Image.Resampling.NEAREST)
        x = pad + i * (cell + pad)
        out.paste(tile, (x, pad))
        draw.text((x, cell + pad + 2), captions[name], fill="black")
    return out


def run_compare(parts: ModelParts, client: EdgeClient, prompt: str, task: str, params: Params,
                image_in: torch.Tensor | None, out: Path, snr_db: float | None, proxy: str,
                clients: Mapping[str, EdgeClient] | None = None, multi_es: bool = False,
                options: MultiOptions | None = None, tls: TlsFiles | None = None,
                admin_token: str | None = None) -> dict[str, object]:
    """Run the registry's protocols; ``clients`` (ES name -> client) are the session's ESs for ``multi_es``.
    ``tls`` and ``admin_token`` reach a secured proxy's control service (compare sets the links)."""
    out.mkdir(parents=True, exist_ok=True)
    clients = dict(clients or {client.es_name or "es0": client})
    ue_id = client.ue_id
    links = [f"{ue_id}->{name}" for name in clients]
    before = read_links(proxy, links, tls, admin_token)
    ideal = channel_pb2.Profile(model="ideal")
    try:
        # the perfectly received image: Full-ES over an ideal link, same seed
        set_links(proxy, {links[0]: (ideal, ideal)}, tls, admin_token)
        reference = generate(parts, client, prompt, "FULL-ES", task, params, image_in).image
        save_png(reference, out / "reference.png")
        if snr_db is None:
            set_links(proxy, before, tls, admin_token)
        else:
            awgn = channel_pb2.Profile(model="awgn", snr_db=snr_db)
            set_links(proxy, {link: (awgn, awgn) for link in links}, tls, admin_token)
        rows, images, captions = _run_all(parts, client, clients, prompt, task, params, image_in, out, multi_es, options)
    finally:
        set_links(proxy, before, tls, admin_token)
    for row in rows:
        row["psnr_vs_ideal_db"] = round(psnr(images[str(row["protocol"])], reference, max_db=100), 2)
    panel({"IDEAL LINK": reference, **images}, {"IDEAL LINK": "Full-ES, ideal link\n(reference)", **captions}).save(out / "panel.png")
    lines = [f"prompt: {prompt!r}  task: {task}  SNR: {'as the proxy is set' if snr_db is None else f'{snr_db:g} dB'}"
             + (f"  ESs: {', '.join(clients)}" if multi_es else ""),
             f"{'protocol':8s} {'uplink':>9s} {'downlink':>9s} {'total':>9s} {'text B':>6s} {'seconds':>8s} {'PSNR vs ideal':>14s}"]
    for row in rows:
        up, down = row["uplink"], row["downlink"]
        lines.append(f"{row['protocol']:8s} {up['symbols']:9,d} {down['symbols']:9,d} {up['symbols'] + down['symbols']:9,d} "
                     f"{up['text_bytes']:6d} {row['seconds']:8.2f} {row['psnr_vs_ideal_db']:14.2f}")
    table = "\n".join(lines)
    report: dict[str, object] = {"prompt": prompt, "task": task, "snr_db": snr_db, "rows": rows, "panel": str(out / "panel.png"), "table": table}
    (out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _run_all(parts: ModelParts, client: EdgeClient, clients: dict[str, EdgeClient], prompt: str, task: str,
             params: Params, image_in: torch.Tensor | None, out: Path, multi_es: bool,
             options: MultiOptions | None) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict[str, str]]:
    images: dict[str, torch.Tensor] = {}
    captions: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    opts = options or MultiOptions()
    for name in protocols(task, multi_es):
        spec = PROTOCOLS[name]
        r = generate(parts, None if spec.local else client, prompt, name, task, params, image_in,
                     clients=clients if multi_es else None, options=opts)
        images[name] = r.image
        save_png(r.image, out / f"{name.lower()}.png")
        if r.sketch is not None:
            save_png(r.sketch, out / f"{name.lower()}-sketch.png")
        for c in r.candidates:
            save_png(c.tensor, out / f"{name.lower()}-{c.es}{'-sketch' if c.key == 'sketch' else ''}.png")
        predicted = protocol_overhead(name, task, parts.geometry, params.fc or 1.0, n_es=len(clients),
                                      halo=opts.halo, broadcast=opts.broadcast, rounds=r.rounds or 1)
        rows.append({**r.summary(), "predicted_total_symbols": predicted.total_symbols})
        extra = f" · {r.picked}" if r.picked else ""
        captions[name] = f"{name}{extra}\nsymbols {r.uplink.symbols + r.downlink.symbols:,d}"
    return rows, images, captions
