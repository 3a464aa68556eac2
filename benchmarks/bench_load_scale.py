"""``meg-ue load`` at scale: the load generator's peak memory against its number of virtual UEs.

Two real ``meg-edge`` daemons (a random 32² model, max batch 64, max queue 1024) behind a real
``meg-channel`` with 5 MHz / 15 kHz cells; ``meg-ue load --ues N --requests N --steps 1 --es es0,es1`` for
each N (every UE has a request in flight at once), its peak RSS from ``getrusage(RUSAGE_CHILDREN)``
after it exits. The virtual UEs are threads over one gRPC connection per ES: the model, not the UEs, should
set the memory.

Writes ``benchmarks/results/load_scale.json``. From the repo root:
``python -m benchmarks.bench_load_scale [--ues 4 --ues 512] [--protocol FULL-ES]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.model.random_pipeline import save_random_pipeline
from tests.support.procs import running, script

OUT = Path(__file__).resolve().parent / "results" / "load_scale.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ues", type=int, action="append", help="virtual UEs (repeat; default 4 and 512)")
    ap.add_argument("--protocol", default="FULL-ES")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    counts = args.ues or [4, 512]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = save_random_pipeline(Path(tmp) / "pipe", seed=0, image_size=32)

        def edge(name: str) -> list[str]:
            return [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(model), "--name", name,
                    "--max-batch", "64", "--max-queue", "1024"]

        with running(edge("es0")) as (_, p0), running(edge("es1")) as (_, p1):
            proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{p0}",
                     "--upstream", f"es1=127.0.0.1:{p1}", "--bandwidth-mhz", "5", "--numerology", "0"]
            with running(proxy) as (_, port):
                for n in counts:
                    out = Path(tmp) / f"run{n}"
                    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                    started = time.monotonic()
                    done = subprocess.run([script("meg-ue"), "load", "--via", f"127.0.0.1:{port}", "--model", str(model),
                                           "--ues", str(n), "--requests", str(n), "--steps", "1", "--protocol",
                                           args.protocol, "--es", "es0,es1", "--timeout", "600", "--out", str(out),
                                           "--json"], capture_output=True, text=True, timeout=1800, check=False)
                    if done.returncode != 0:
                        print(done.stderr, file=sys.stderr)
                        return 1
                    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                    s = json.loads(done.stdout)
                    rows.append({"ues": n, "requests": s["requests"], "ok": s["ok"], "peak_rss_mb": round(peak / 1024, 1),
                                 "peak_rss_grew": peak > before, "wall_s": round(time.monotonic() - started, 1),
                                 "latency_p50_s": s["latency_s"].get("p50"), "breakdown": s["breakdown"]})
                    print(f"{n:5d} UEs: {s['ok']}/{s['requests']} OK, peak RSS {peak / 1024:.0f} MB", flush=True)
    result = {"what": __doc__.split("\n\n")[0], "protocol": args.protocol, "machine": platform.platform(),
              "note": "peak RSS is the maximum over this run's meg-ue processes so far (getrusage of children): "
                      "run the counts in increasing order", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
