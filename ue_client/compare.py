"""``meg-ue compare``: every single-ES protocol (``--multi-es``: every multi-ES one, over all the session's
ESs) of the registry on one prompt through the proxy; a labelled panel and the measured accounting beside
the predicted one (like paper 1, Figs. 5 and 6; the digital baseline FULL-ES-PNG beside them, its PNG counted in
bytes). Quality is PSNR against the perfectly received image: the
same generation (Full-ES, same seed, the first ES) over an ideal link. The links it changes are put back
afterwards, whatever happens in between, but only where nobody changed them meanwhile (:class:`LinkGuard`),
and a failure to put them back never hides the error that stopped the run."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import torch
from PIL import Image, ImageDraw

from shared.model.images import psnr, save_png
from shared.model.ops import ModelParts
from shared.pb import channel_pb2
from shared.protocol.params import Params
from shared.protocol.registry import PROTOCOLS
from shared.rpc.control import ControlClient, LinkProfiles, link_profiles, set_request
from shared.rpc.security import TlsFiles
from ue_client.overhead import protocol_overhead
from ue_client.session import EdgeClient, MultiOptions, generate

log = logging.getLogger("meg.ue")


def protocols(task: str, multi_es: bool) -> list[str]:
    """The registry's protocols for ``task``, single-ES or multi-ES ones, in registry order."""
    return [name for name, spec in PROTOCOLS.items() if task in spec.stages and spec.multi_es == multi_es]


def read_links(proxy: str, links: list[str], tls: TlsFiles | None = None,
               token: str | None = None) -> dict[str, LinkProfiles]:
    """``(uplink, downlink)`` profiles each link has now (the default for a link not seen yet). ``tls`` and the
    admin ``token`` reach a secured proxy's control service."""
    with ControlClient(proxy, tls, token) as control:
        return control.links(links)


def set_links(proxy: str, settings: dict[str, LinkProfiles], tls: TlsFiles | None = None,
              token: str | None = None) -> None:
    """Set each link's uplink and downlink profiles (``tls``, admin ``token``: as :func:`read_links`)."""
    with ControlClient(proxy, tls, token) as control:
        for link, (up, down) in settings.items():
            control.set_link(link, up, down)


class LinkGuard:
    """Change links for a while, then put back only what it changed and only where nobody else changed it
    since (compare-and-restore, per link and direction).

    What it puts back: the setting the link had before its first change, or, for a link the proxy had not
    seen then, the proxy's default *at restore time* (the control API cannot forget a link, so it follows
    the default as an unseen link would). A direction whose setting differs from what the guard last set
    was changed by an operator meanwhile: it is left alone and named in :attr:`left`. The check and the
    put-back are two calls, not one atomic step: a change landing between them is overwritten (the proxy
    offers no compare-and-set)."""

    def __init__(self, control: ControlClient) -> None:
        self.control = control
        self._before: dict[str, tuple[bool, LinkProfiles]] = {}  # link -> (seen before, its settings then)
        self._set: dict[str, LinkProfiles] = {}  # link -> what the guard set last
        self.restored: list[str] = []
        self.left: dict[str, str] = {}  # "link direction" -> why it was not put back

    def set(self, settings: dict[str, LinkProfiles]) -> None:
        """Set each link's ``(uplink, downlink)``, remembering its settings before the first change."""
        new = [link for link in settings if link not in self._before]
        if new:
            now = self.control.get_channel()
            seen = {ls.link for ls in now.links}
            for link, profiles in link_profiles(now, new).items():
                self._before[link] = (link in seen, profiles)
        for link, (up, down) in settings.items():
            self.control.set_link(link, up, down)
            self._set[link] = (up, down)

    def restore(self) -> None:
        """Put back what it changed (see the class doc); raises ``grpc.RpcError`` if the proxy cannot be asked."""
        if not self._set:
            return
        now = self.control.get_channel()
        current = link_profiles(now, list(self._set))
        default = (now.default.uplink, now.default.downlink)
        for link, mine in self._set.items():
            seen, before = self._before[link]
            target = before if seen else default
            for i, direction in enumerate(("uplink", "downlink")):
                if current[link][i] != mine[i]:
                    self.left[f"{link} {direction}"] = "changed by someone else meanwhile: left as it is"
                    log.warning("not restoring %s %s: changed by someone else meanwhile", link, direction)
                    continue
                self.control.set(set_request(link, direction, custom=target[i]))
                self.restored.append(f"{link} {direction}")
        self._set.clear()

    def restore_quietly(self) -> None:
        """:meth:`restore` while another error is on its way out: a failure here is logged, never raised (it
        must not replace the error that matters)."""
        try:
            self.restore()
        except Exception as exc:  # noqa: BLE001
            log.error("could not put the links back (%s); check them with meg-channel show", describe(exc))


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


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
    ideal = channel_pb2.Profile(model="ideal")
    with ControlClient(proxy, tls, admin_token) as control:
        guard = LinkGuard(control)
        try:
            # the perfectly received image: Full-ES over an ideal link, same seed
            guard.set({links[0]: (ideal, ideal)})
            reference = generate(parts, client, prompt, "FULL-ES", task, params, image_in).image
            save_png(reference, out / "reference.png")
            if snr_db is None:
                guard.restore()  # the protocols run over the links as the proxy is set
            else:
                awgn = channel_pb2.Profile(model="awgn", snr_db=snr_db)
                guard.set({link: (awgn, awgn) for link in links})
            rows, images, captions = _run_all(parts, client, clients, prompt, task, params, image_in, out, multi_es,
                                              options)
        except BaseException:
            guard.restore_quietly()
            raise
        guard.restore()
    for row in rows:
        row["psnr_vs_ideal_db"] = round(psnr(images[str(row["protocol"])], reference, max_db=100), 2)
    panel({"IDEAL LINK": reference, **images}, {"IDEAL LINK": "Full-ES, ideal link\n(reference)", **captions}).save(out / "panel.png")
    lines = [f"prompt: {prompt!r}  task: {task}  SNR: {'as the proxy is set' if snr_db is None else f'{snr_db:g} dB'}"
             + (f"  ESs: {', '.join(clients)}" if multi_es else ""),
             (f"{'protocol':11s} {'uplink':>9s} {'downlink':>9s} {'total':>9s} {'text B':>6s} {'digital B':>9s} "
              f"{'seconds':>8s} {'PSNR vs ideal':>14s}")]
    for row in rows:
        up, down = row["uplink"], row["downlink"]
        lines.append(f"{row['protocol']:11s} {up['symbols']:9,d} {down['symbols']:9,d} {up['symbols'] + down['symbols']:9,d} "
                     f"{up['text_bytes']:6d} {up['digital_bytes'] + down['digital_bytes']:9,d} {row['seconds']:8.2f} "
                     f"{row['psnr_vs_ideal_db']:14.2f}")
    table = "\n".join(lines)
    report: dict[str, object] = {"prompt": prompt, "task": task, "snr_db": snr_db, "rows": rows, "panel": str(out / "panel.png"),
                                 "table": table, "links_left": dict(guard.left)}
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
        digital = r.uplink.digital_bytes + r.downlink.digital_bytes  # the digital baseline: PNG bytes, no symbols
        captions[name] = f"{name}{extra}\n" + (f"PNG {digital:,d} B" if digital else
                                                f"symbols {r.uplink.symbols + r.downlink.symbols:,d}")
    return rows, images, captions
