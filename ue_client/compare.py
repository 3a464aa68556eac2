"""``meg-ue compare``: every single-ES protocol on one prompt through the proxy; a labelled panel and the
measured accounting beside the predicted one (like paper 1, Figs. 5 and 6). Quality is PSNR against the
perfectly received image: the same generation (Full-ES, same seed) over an ideal link."""

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


def set_link(proxy: str, link: str, profile: channel_pb2.Profile) -> channel_pb2.Profile:
    """Set both directions of ``link`` on the proxy; returns the downlink profile it had before."""
    with grpc.insecure_channel(proxy) as ch:
        stub = channel_pb2_grpc.ChannelControlStub(ch)
        before = stub.GetChannel(channel_pb2.GetChannelRequest(), timeout=10)
        old = next((ls.downlink for ls in before.links if ls.link == link), before.default.downlink)
        stub.SetChannel(channel_pb2.SetChannelRequest(link=link, direction="both", custom=profile), timeout=10)
    return old


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
    md = dict(client.metadata)
    link = f"{md['meg-ue']}->{md.get('meg-es', 'es0')}"
    # the perfectly received image: Full-ES over an ideal link, same seed
    before = set_link(proxy, link, channel_pb2.Profile(model="ideal"))
    reference = generate(parts, client, prompt, "FULL-ES", task, params, image_in).image
    save_png(reference, out / "reference.png")
    set_link(proxy, link, before if snr_db is None else channel_pb2.Profile(model="awgn", snr_db=snr_db))
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
    for row in rows:
        row["psnr_vs_ideal_db"] = round(min(psnr(images[str(row["protocol"])], reference), 100.0), 2)
    panel({"IDEAL LINK": reference, **images}, {"IDEAL LINK": "Full-ES, ideal link\n(reference)", **captions}).save(out / "panel.png")
    lines = [f"prompt: {prompt!r}  task: {task}  SNR: {'as the proxy is set' if snr_db is None else f'{snr_db:g} dB'}",
             f"{'protocol':8s} {'uplink':>9s} {'downlink':>9s} {'total':>9s} {'text B':>6s} {'seconds':>8s} {'PSNR vs ideal':>14s}"]
    for row in rows:
        up, down = row["uplink"], row["downlink"]  # type: ignore[index]
        lines.append(f"{row['protocol']:8s} {up['symbols']:9,d} {down['symbols']:9,d} {up['symbols'] + down['symbols']:9,d} "
                     f"{up['text_bytes']:6d} {row['seconds']:8.2f} {row['psnr_vs_ideal_db']:14.2f}")
    table = "\n".join(lines)
    report = {"prompt": prompt, "task": task, "snr_db": snr_db, "rows": rows, "panel": str(out / "panel.png"), "table": table}
    (out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
