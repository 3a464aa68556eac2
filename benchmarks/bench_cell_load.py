"""Latency against the number of UEs in one narrow cell, split into queueing, air and ES compute (issue 19).

The papers' claim in one figure: images on the air queue behind each other in a narrow cell, seeds do not.
One ES (a random pipeline at Stable Diffusion v1.5's *geometry* — 512² RGB images, 4×64×64 latents — with
toy widths, so compute stays small and the air time is exactly what SD-v1.5's tensors would take) behind
one proxy with a cell (default 5 MHz at 15 kHz: 25 PRB, 4,200 RE per 1 ms slot, FDD), then ``meg-ue load``
with N UEs for FULL-ES (image pixels down: 393,216 RE each), CIAG (a seed up and down: 8,192 RE each) and
EIUG (a seed down). Every number is read from ``meg-ue load``'s ``results.json`` ``breakdown`` (p50 of each
part of a request's latency, as the proxy reported it in ``meg-airtime``).

    python benchmarks/bench_cell_load.py                      # ~6 min on 2 cores
    python benchmarks/bench_cell_load.py --quick              # one small sweep, a smoke test

Writes ``benchmarks/results/cell_load.json`` and ``docs/img/cell_load.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "cell_load.json"
PLOT = ROOT / "docs" / "img" / "cell_load.png"
PROTOCOLS = ("FULL-ES", "CIAG", "EIUG")
PARTS = ("queue_s", "air_s", "compute_s")


def make_model(folder: Path) -> None:
    """A random pipeline at SD-v1.5's geometry (512² images, 64×64 latents) with toy widths."""
    from shared.model.random_pipeline import save_random_pipeline

    save_random_pipeline(folder, image_size=512)


def run(args: argparse.Namespace) -> dict[str, object]:
    from tests.support.procs import running, script

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        model = Path(tmp) / "model"
        make_model(model)
        es = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(model), "--device", "cpu",
              "--max-batch", "16", "--max-queue", "512"]
        _, es_port = stack.enter_context(running(es, "meg.v1.EdgeService", timeout=600))
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{es_port}",
                 "--bandwidth-mhz", str(args.bandwidth_mhz), "--numerology", str(args.numerology)]
        _, ch = stack.enter_context(running(proxy, "meg.v1.ChannelControl"))
        for protocol in PROTOCOLS:
            for ues in args.ues:
                out = Path(tmp) / f"{protocol}-{ues}"
                argv = [script("meg-ue"), "load", "--via", f"127.0.0.1:{ch}", "--model", str(model), "--ues", str(ues),
                        "--requests", str(max(args.requests, ues)), "--warmup", "2",
                        "--protocol", protocol, "--steps", str(args.steps), "--out", str(out), "--json",
                        "--timeout", "600"]
                done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"meg-ue load failed ({protocol}, {ues} UEs): {done.stderr.strip()[-2000:]}")
                result = json.loads((out / "results.json").read_text())
                bd = result["breakdown"]
                row = {"protocol": protocol, "ues": ues, "requests": result.get("requests", result.get("completed")),
                       **{f"{p}_p50": bd[p]["p50"] for p in PARTS}, **{f"{p}_p99": bd[p]["p99"] for p in PARTS},
                       "latency_p50_s": result.get("latency_s", {}).get("p50") if isinstance(result.get("latency_s"), dict)
                       else None}
                rows.append(row)
                print(f"{protocol:8s} {ues:3d} UEs  queue {row['queue_s_p50']:.3f} s  air {row['air_s_p50']:.3f} s  "
                      f"compute {row['compute_s_p50']:.3f} s (p50)", flush=True)
    return {"command": "python benchmarks/bench_cell_load.py" + (" --quick" if args.quick else ""),
            "cell": {"bandwidth_mhz": args.bandwidth_mhz, "numerology": args.numerology, "duplex": "fdd"},
            "geometry": "sd-v1-5 (512² images, 4×64×64 latents; random toy-width weights)", "steps": args.steps,
            "rows": rows}


def plot(result: dict[str, object], path: Path) -> None:
    """Two panels per protocol: the network's part of the latency (queueing + air, p50) and the whole (with the
    ES's compute, which on this CPU dominates at 512²)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    assert isinstance(rows, list)
    fig, axes = plt.subplots(2, len(PROTOCOLS), figsize=(12, 6), sharey="row")
    colors = {"queue_s": "#d62728", "air_s": "#1f77b4", "compute_s": "#7f7f7f"}
    labels = {"queue_s": "queueing for air", "air_s": "on the air (shared cell)", "compute_s": "ES compute + rest"}
    for col, protocol in enumerate(PROTOCOLS):
        mine = [r for r in rows if r["protocol"] == protocol]
        xs = [str(r["ues"]) for r in mine]
        for row, parts in enumerate((PARTS[:2], PARTS)):
            ax = axes[row][col]
            bottom = [0.0] * len(mine)
            for part in parts:
                vals = [max(0.0, float(r[f"{part}_p50"])) for r in mine]
                ax.bar(xs, vals, bottom=bottom, color=colors[part], label=labels[part])
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            if row == 0:
                ax.set_title(protocol)
                for x, top in zip(xs, bottom, strict=True):
                    ax.annotate(f"{top * 1e3:.0f} ms", (x, top), ha="center", va="bottom", fontsize=7)
            else:
                ax.set_xlabel("UEs in the cell")
    axes[0][0].set_ylabel("network: queue + air, p50 (s)")
    axes[1][0].set_ylabel("whole request, p50 (s)")
    axes[1][-1].legend(loc="upper left", fontsize=7)
    cell = result["cell"]
    assert isinstance(cell, dict)
    fig.suptitle(f"One {cell['bandwidth_mhz']:g} MHz cell (μ={cell['numerology']}), SD-v1.5 geometry: the images' air "
                 "grows with the UEs, the seeds' stays at milliseconds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 UEs, few requests")
    parser.add_argument("--bandwidth-mhz", type=float, default=5.0)
    parser.add_argument("--numerology", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8, help="measured requests per point (at least one per UE)")
    args = parser.parse_args()
    args.ues = [1, 4] if args.quick else [1, 8, 32]
    if args.quick:
        args.requests = 4
    result = run(args)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, PLOT)
    print(f"wrote {OUT.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
