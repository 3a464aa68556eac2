"""Cooperative generation (UIDCG) over the real processes: two `meg-edge` daemons behind one `meg-channel`,
the UE in this process; everything the ESs send and receive crosses the proxy and is counted on its link.

``seams``  (meg-tiny, the trained model): for several prompts and seeds, the single-ES image (UIEG, one ES)
           against UIDCG's arms (coop_arms: fused every DEFAULT_SYNC = 5 steps, the default; fused every step;
           windows never fused; a shared head; naive tiling): PSNR vs the single-ES image and the seam score (mean |horizontal gradient| on the
           tile border / elsewhere; shared.protocol.tiles.seam_score) of each, for txt2img and for img2img (shapes
           inputs whose objects cross the cut). Writes seams.json and docs/img/multi-es.png.
``latency`` (a random pipeline with SD-v1.5's UNet widths, `meg-edge make-random-model --size sd-v1-5`,
           compute-bound): one generation's wall time with 1 ES (UIEG) vs 2 ESs (UIDCG, overlap and naive),
           arms interleaved and repeated; each ES process pinned to its own core (`taskset -c 0` / `-c 1`,
           OMP_NUM_THREADS=1), also for the 1-ES arm. Writes latency.json.

    python benchmarks/bench_cooperative.py seams
    python benchmarks/bench_cooperative.py latency --model /tmp/sd256 --reps 3 --steps 4 [--only 'every step,never']

(The committed latency*.json predate the every-5-steps default: their "(default)" arm is every step. With 2 or
4 steps the every-5-steps arm is one round, the same as never fused; docs/multi-es.md names the --only used.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from shared.model.images import border_psnr, psnr, save_png
from shared.model.ops import ModelParts
from shared.protocol.params import Params
from shared.protocol.tiles import DEFAULT_HEAD, DEFAULT_SYNC, Share, boundaries, default_halo, seam_score
from ue_client.session import MultiOptions, generate
from ue_client.transport import connect

OUT = ROOT / "benchmarks" / "results" / "multi_es"
PROMPTS = ["a red circle above a blue square", "a green triangle left of a yellow circle",
           "a large blue square on a white background", "two small purple circles"]


@contextlib.contextmanager
def two_edges(model: str, pin: bool) -> Iterator[tuple[str, list[int]]]:
    """es0, es1 (pinned to cores 0 and 1 when ``pin``) behind a meg-channel with ideal links; yields its
    address and the two ES process ids."""
    from tests.support.procs import running, script

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if pin:
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        with contextlib.ExitStack() as stack:
            ports, pids = [], []
            for i, name in enumerate(("es0", "es1")):
                argv = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", model, "--device", "cpu",
                        "--name", name, "--max-batch", "2"]
                proc, port = stack.enter_context(running((["taskset", "-c", str(i)] if pin else []) + argv,
                                                         "meg.v1.EdgeService", timeout=600))
                ports.append(port)
                pids.append(proc.pid)  # taskset execs the daemon: same process
            proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{ports[0]}",
                     "--upstream", f"es1=127.0.0.1:{ports[1]}"]
            _, ch = stack.enter_context(running(proxy, "meg.v1.ChannelControl"))
            yield f"127.0.0.1:{ch}", pids
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Cooperative arms as (halo, shared head, sync): the default (windows fused on the UE every DEFAULT_SYNC
#: steps); fused after every step; windows never fused (each runs alone to the end); a shared head of 0.8 then
#: windows never fused (every ES repeats the head); naive tiles (no overlap, never fused).
def coop_arms(width: int) -> dict[str, tuple[int, float, int]]:
    h = default_halo(width)
    return {f"fused every {DEFAULT_SYNC} steps, halo {h} (default)": (h, DEFAULT_HEAD, DEFAULT_SYNC),
            f"fused every step, halo {h}": (h, DEFAULT_HEAD, 1),
            f"windows never fused, halo {h}": (h, 0.0, 0),
            f"head 0.8, halo {h}": (h, 0.8, 0),
            "naive tiles": (0, 0.0, 0)}


def _arms(parts: ModelParts, via: str, prompt: str, p: Params, arms: dict[str, tuple[int, float, int]],
          image_in: torch.Tensor | None = None) -> dict[str, object]:
    """One prompt + seed: the single-ES image (UIEG on es0) and UIDCG on es0 + es1 for each arm."""
    task = "txt2img" if image_in is None else "img2img"
    one = connect(via, ["es0"], timeout_s=3600)
    two = connect(via, ["es0", "es1"], timeout_s=3600)
    try:
        out: dict[str, object] = {"single": generate(parts, one["es0"], prompt, "UIEG", task, p, image_in)}
        for name, (h, head, sync) in arms.items():
            if head and task == "img2img":
                continue  # img2img runs no head (the input image fixes the layout)
            out[name] = generate(parts, None, prompt, "UIDCG", task, p, image_in, clients=two,
                                 options=MultiOptions(halo=h, head=head, sync=sync))
    finally:
        for c in [*one.values(), *two.values()]:
            c.close()
    return out


def _label(arm: str) -> str:
    return {"single": "1 ES (UIEG)"}.get(arm, f"UIDCG 2 ES\n{arm.replace(' (default)', '')}")


def _cases(args: argparse.Namespace) -> Iterator[tuple[str, str, int, torch.Tensor | None]]:
    """(task, prompt, seed, input image): txt2img over PROMPTS × seeds; img2img over as many shapes inputs
    (one to three shapes at random places, so objects cross the cut; the prompt recolours one)."""
    from meg_lab import shapes

    for prompt in PROMPTS:
        for seed in range(args.seeds):
            yield "txt2img", prompt, seed, None
    images, _, prompts, _ = shapes.img2img_batch(7, 0, len(PROMPTS) * args.seeds, n_shapes=None)
    for i, prompt in enumerate(prompts):
        yield "img2img", prompt, i, (images[i:i + 1] + 1) / 2


def _figure(rows: list[tuple[dict[str, torch.Tensor], dict[str, str]]], path: Path) -> None:
    """Stack one labelled panel per case into one picture."""
    from PIL import Image

    from ue_client.compare import panel

    panels = [panel(pics, caps, cell=128) for pics, caps in rows]
    out = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        out.paste(p, (0, y))
        y += p.height
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)


def _noisy(args: argparse.Namespace, parts: ModelParts, via: str, arms: dict[str, tuple[int, float, int]]
           ) -> dict[str, dict[str, float]]:
    """txt2img with every link (ue->es0, ue->es1, both ways) at ``args.snr_db`` dB AWGN: PSNR of each arm (and
    of UIEG through the same link) against the single-ES image over an ideal link."""
    from shared.pb import channel_pb2
    from ue_client.compare import read_links, set_links

    links = ["ue->es0", "ue->es1"]
    before = read_links(via, links)
    ideal = channel_pb2.Profile(model="ideal")
    awgn = channel_pb2.Profile(model="awgn", snr_db=args.snr_db)
    scores: dict[str, list[float]] = {}
    try:
        for task, prompt, seed, _ in _cases(args):
            if task != "txt2img":
                continue
            p = Params(seed=seed, steps=args.steps)
            set_links(via, {link: (ideal, ideal) for link in links})
            one = connect(via, ["es0"], timeout_s=3600)
            try:
                ref = generate(parts, one["es0"], prompt, "UIEG", "txt2img", p).image
            finally:
                one["es0"].close()
            set_links(via, {link: (awgn, awgn) for link in links})
            for arm, r in _arms(parts, via, prompt, p, arms).items():
                scores.setdefault(arm, []).append(psnr(r.image, ref, max_db=99.0))  # type: ignore[attr-defined]
    finally:
        set_links(via, before)
    return {arm: {"psnr_vs_ideal_single_db": round(statistics.mean(v), 2), "min_db": round(min(v), 2)}
            for arm, v in scores.items()}


def seams(args: argparse.Namespace) -> dict[str, object]:
    parts = ModelParts.load(args.model, "cpu")
    g = parts.geometry
    border = boundaries(2, g.latent_size, g.image_size // g.latent_size)
    arms = coop_arms(g.latent_size)
    band = 2 * (g.image_size // g.latent_size)  # pixels each side of the border: two latent columns
    rows: dict[str, list[dict[str, object]]] = {"txt2img": [], "img2img": []}
    figure: list[tuple[dict[str, torch.Tensor], dict[str, str]]] = []
    with two_edges(args.model or str(ROOT / "shared" / "weights" / "meg-tiny"), pin=False) as (via, _):
        noisy = _noisy(args, parts, via, arms) if args.snr_db is not None else None
        for task, prompt, seed, image_in in _cases(args):
            res = _arms(parts, via, prompt, Params(seed=seed, steps=args.steps), arms, image_in)
            ref = res["single"].image  # type: ignore[attr-defined]
            row: dict[str, object] = {"prompt": prompt, "seed": seed}
            pics: dict[str, torch.Tensor] = {}
            caps: dict[str, str] = {}
            for arm, r in res.items():
                img = r.image  # type: ignore[attr-defined]
                near, rest = border_psnr(img, ref, border, band) if arm != "single" else (None, None)
                row[arm] = {"seam_global": round(seam_score(img, border), 3),
                            "seam_local": round(seam_score(img, border, local=4), 3),
                            "psnr_vs_single_db": None if arm == "single" else round(psnr(img, ref, max_db=99.0), 2),
                            "psnr_border_band_db": None if near is None else round(near, 2),
                            "psnr_rest_db": None if rest is None else round(rest, 2),
                            "symbols": r.uplink.symbols + r.downlink.symbols}  # type: ignore[attr-defined]
                pics[arm] = img
                psnr_txt = "" if arm == "single" else f", {row[arm]['psnr_vs_single_db']:.1f} dB"  # type: ignore[index]
                caps[arm] = f"{task}: {_label(arm)}\nseam {row[arm]['seam_global']:.2f}{psnr_txt}"  # type: ignore[index]
                slug = "".join(c for c in arm if c.isalnum() or c == ".")
                save_png(img, OUT / "images" / f"{task}-{seed}-{len(rows[task])}-{slug}.png")
            if len(rows[task]) in (0, args.seeds):  # the first seed of the first two prompts
                figure.append((pics, caps))
            rows[task].append(row)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for task, trows in rows.items():
        summary[task] = {}
        for arm in [a for a in ("single", *arms) if a in trows[0]]:
            sm = {m: round(statistics.mean([r[arm][m] for r in trows]), 3)  # type: ignore[index]
                  for m in ("seam_global", "seam_local", "symbols")}
            sm["seam_global_median"] = round(statistics.median([r[arm]["seam_global"] for r in trows]), 3)  # type: ignore[index]
            if arm != "single":
                for m in ("psnr_vs_single_db", "psnr_border_band_db", "psnr_rest_db"):
                    vals = [r[arm][m] for r in trows]  # type: ignore[index]
                    sm[m] = round(statistics.mean(vals), 2)
                    sm[m.replace("_db", "_min_db")] = round(min(vals), 2)
            summary[task][arm] = sm
    if noisy is not None:
        summary[f"txt2img at {args.snr_db:g} dB AWGN"] = noisy
    _figure(figure, ROOT / "docs" / "img" / "multi-es.png")
    return {"model": args.model or "meg-tiny", "image_size": g.image_size, "latent": g.latent_size,
            "default_halo": default_halo(g.latent_size), "steps": args.steps or parts.meg.es_steps,
            "arms_halo_head_sync": arms, "border_columns": border, "border_band_px": band,
            "n": {t: len(r) for t, r in rows.items()}, "summary": summary, "rows": rows}


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds a process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(args: argparse.Namespace) -> dict[str, object]:
    """Per arm and rep: the UE's wall time, and each ES process's CPU seconds for that generation. Each ES is
    one thread on its own core, so its CPU seconds are what it would take on an idle core: the cooperative
    generation's *uncontended* latency is max over ESs of their CPU seconds + the UE's own work; on this
    shared machine the wall time also holds the waiting for other people's processes."""
    torch.set_num_threads(1)
    parts = ModelParts.load(args.model, "cpu")
    g = parts.geometry
    arms: dict[str, tuple[str, list[str], int | None, float, int]] = {"1 ES (UIEG)": ("UIEG", ["es0"], None, 0.0, 0)}
    arms |= {f"2 ES UIDCG {name}": ("UIDCG", ["es0", "es1"], h, head, sync)
             for name, (h, head, sync) in coop_arms(g.latent_size).items()
             if not args.only or any(word in name for word in args.only.split(","))}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    images: dict[str, torch.Tensor] = {}
    quality: list[dict[str, float]] = []
    with two_edges(args.model, pin=True) as (via, pids):
        clients = connect(via, ["es0", "es1"], timeout_s=3600)
        try:
            def run(name: str, p: Params) -> dict[str, float]:
                protocol, names, h, head, sync = arms[name]
                before = [cpu_seconds(pid) for pid in pids]
                ue0 = time.process_time()
                r = generate(parts, clients["es0"], PROMPTS[0], protocol, "txt2img", p,
                             clients={n: clients[n] for n in names}, options=MultiOptions(halo=h, head=head, sync=sync))
                ue = time.process_time() - ue0
                es_cpu = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
                images[name] = r.image
                return {"wall_s": round(r.seconds, 3), "es_wall_s_sum": round(r.es_seconds, 3),
                        "symbols": r.uplink.symbols + r.downlink.symbols,
                        "es_cpu_s": [round(c, 2) for c in es_cpu],
                        "ue_cpu_s": round(ue, 3), "uncontended_s": round(max(es_cpu) + ue, 3)}

            for name in arms:  # warm-up: first calls of each shape allocate
                run(name, Params(seed=0, steps=1))
            order = list(arms)
            for rep in range(args.reps):
                for name in order[rep % len(order):] + order[:rep % len(order)]:  # interleaved, rotating per rep
                    times[name].append(run(name, Params(seed=rep, steps=args.steps)))
                quality.append({n: round(psnr(images[n], images[order[0]]), 2) for n in order[1:]})
                print(f"rep {rep}: " + ", ".join(f"{n} wall {t[-1]['wall_s']:.1f}s cpu {t[-1]['uncontended_s']:.1f}s"
                                                 for n, t in times.items()), file=sys.stderr)
        finally:
            for c in clients.values():
                c.close()
    summary: dict[str, dict[str, object]] = {}
    for name, ts in times.items():
        walls = [t["wall_s"] for t in ts]
        unc = [t["uncontended_s"] for t in ts]
        summary[name] = {"wall_s_median": round(statistics.median(walls), 2), "wall_s_all": walls,  # type: ignore[arg-type]
                         "uncontended_s_median": round(statistics.median(unc), 2), "uncontended_s_all": unc}  # type: ignore[arg-type]
    base = next(iter(summary.values()))
    for row in summary.values():
        row["speedup_wall"] = round(base["wall_s_median"] / row["wall_s_median"], 2)  # type: ignore[operator]
        row["speedup_uncontended"] = round(base["uncontended_s_median"] / row["uncontended_s_median"], 2)  # type: ignore[operator]
    return {"model": args.model, "geometry": g.__dict__, "steps": args.steps, "reps": args.reps,
            "arms": {n: {"halo": a[2], "head": a[3], "sync": a[4],
                         "head_steps": Share(0, len(a[1]), a[2] or 0, a[3]).head_steps(args.steps),
                         "window_columns": [list(Share(i, len(a[1]), a[2] or 0).window(g.latent_size)) for i in range(len(a[1]))]}
                     for n, a in arms.items()},
            "pinning": "taskset -c 0 (es0), -c 1 (es1), OMP_NUM_THREADS=1 in both arms; UE unpinned, 1 thread",
            "order": "warm-up, then per rep: each arm once, the order rotating by one per rep", "summary": summary,
            "runs": times,
            "psnr_vs_single_db": quality}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["seams", "latency"])
    ap.add_argument("--model", help="pipeline folder (seams: default meg-tiny; latency: required)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", help="latency: the cooperative arms whose names contain one of these words (comma-separated)")
    ap.add_argument("--snr-db", type=float, help="seams: also run txt2img with every link at this SNR (AWGN)")
    ap.add_argument("--name", help="the result file's name (default: seams.json / latency.json)")
    args = ap.parse_args()
    if args.what == "latency" and not args.model:
        ap.error("latency needs --model (make one: meg-edge make-random-model DIR --size sd-v1-5)")
    started = time.time()
    report = seams(args) if args.what == "seams" else latency(args)
    report |= {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
               "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.time() - started, 1)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / (args.name or f"{args.what}.json")).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report.get("summary"), indent=2))


if __name__ == "__main__":
    main()
