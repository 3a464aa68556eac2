"""``meg-ue compare``: every single-ES protocol on one prompt through the proxy; a labelled panel and the
measured accounting beside the predicted one (like paper 1, Figs. 5 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import torch
from PIL import Image, ImageDraw

from shared.images import psnr, save_png
from shared.model_ops import ModelParts, Params
from shared.pb import channel_pb2, channel_pb2_grpc
from shared.protocols import PROTOCOLS
from ue_client.overhead import protocol_overhead
from ue_client.session import EdgeClient, generate

#: The single-ES protocols, in the order of paper 1's table.
SINGLE_ES = ("FULL-UE", "FULL-ES", "UIEG", "EIUG", "CIAG", "ESUC")


def set_link_snr(proxy: str, link: str, snr_db: float) -> None:
    """Set both directions of ``link`` on the proxy to AWGN at ``snr_db``."""
    with grpc.insecure_channel(proxy) as ch:
        req = channel_pb2.SetChannelRequest(link=link, direction="both",
                                            custom=channel_pb2.Profile(model="awgn", snr_db=snr_db))
        channel_pb2_grpc.ChannelControlStub(ch).SetChannel(req, timeout=10)


def panel(images: dict[str, torch.Tensor], captions: dict[str, str], cell: int = 160) -> Image.Image:
    """One row of labelled images, upscaled (nearest) to ``cell`` pixels."""
    pad, text_h = 6, 34
    out = Image.new("RGB", (len(images) * (cell + pad) + pad, cell + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(out)
    for i, (name, img) in enumerate(images.items()):
        arr = (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
        x = pad + i * (cell + pad)
        out.paste(tile, (x, pad))
        draw.text((x, cell + pad + 2), captions[name], fill="black")
    return out


def run_compare(parts: ModelParts, client: EdgeClient, prompt: str, task: str, params: Params,
                image_in: torch.Tensor | None, out: Path, snr_db: float | None, proxy: str) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    if snr_db is not None:
        md = dict(client.metadata)
        set_link_snr(proxy, f"{md['meg-ue']}->{md.get('meg-es', 'es0')}", snr_db)
    images: dict[str, torch.Tensor] = {}
    captions: dict[str, str] = {}
    rows = []
    for name in SINGLE_ES:
        if task not in PROTOCOLS[name].stages:
            continue
        r = generate(parts, None if name == "FULL-UE" else client, prompt, name, task, params, image_in)
        images[name] = r.image
        save_png(r.image, out / f"{name.lower()}.png")
        if r.sketch is not None:
            save_png(r.sketch, out / f"{name.lower()}-sketch.png")
        predicted = protocol_overhead(name, task, parts.geometry, params.fc or 1.0)
        rows.append({**r.summary(), "predicted_total_symbols": predicted.total_symbols})
        captions[name] = f"{name}\nsymbols {r.uplink.symbols + r.downlink.symbols:,d}"
    ref = images.get("FULL-ES")
    if ref is not None:
        for row in rows:
            if row["protocol"] != "FULL-ES":
                row["psnr_vs_full_es_db"] = round(psnr(images[str(row["protocol"])], ref), 2)
    panel(images, captions).save(out / "panel.png")
    lines = [f"prompt: {prompt!r}  task: {task}  SNR: {'as the proxy is set' if snr_db is None else f'{snr_db:g} dB'}",
             f"{'protocol':8s} {'uplink':>9s} {'downlink':>9s} {'total':>9s} {'text B':>6s} {'seconds':>8s} {'PSNR vs Full-ES':>16s}"]
    for row in rows:
        up, down = row["uplink"], row["downlink"]  # type: ignore[index]
        lines.append(f"{row['protocol']:8s} {up['symbols']:9,d} {down['symbols']:9,d} {up['symbols'] + down['symbols']:9,d} "
                     f"{up['text_bytes']:6d} {row['seconds']:8.2f} {row.get('psnr_vs_full_es_db', '-'):>16}")
    table = "\n".join(lines)
    report = {"prompt": prompt, "task": task, "snr_db": snr_db, "rows": rows, "panel": str(out / "panel.png"), "table": table}
    (out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
