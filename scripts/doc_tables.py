"""Write the README's and docs' results tables from the committed results files (one source of truth).

A generated table sits between two markers in a Markdown file::

    <!-- table: multi-es/latency-256 -->
    ...written by this script: a line naming the command and the results file, then the table...
    <!-- /table -->

    python scripts/doc_tables.py            # rewrite every table from its results file
    python scripts/doc_tables.py --check    # exit 1 and say which table differs (tests/test_docs.py runs it)
    python scripts/doc_tables.py --list     # the tables, their files and commands

To change a number in the docs, rerun the command the table names (it rewrites the results file), then this
script; never edit a table by hand. Prose around a table is not generated: say "see the table" rather than
repeating its numbers where you can.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- table: (?P<name>[\w./-]+) -->\n(?P<body>.*?)<!-- /table -->", re.DOTALL)


@dataclass(frozen=True)
class Table:
    """One generated table: where it lives, what it is made from, and how."""

    doc: str  # Markdown file, relative to the repository root
    results: str  # results file, relative to the repository root
    command: str  # the command that writes ``results``
    render: Callable[[Any], list[str]]  # parsed results -> Markdown table lines
    #: more results files the table combines (then ``render`` gets a list: ``results`` first)
    extra: tuple[str, ...] = ()

    def load(self) -> Any:
        parsed = [_parse(ROOT / f) for f in (self.results, *self.extra)]
        return parsed if self.extra else parsed[0]

    def text(self) -> str:
        files = ", ".join(f"`{f}`" for f in (self.results, *self.extra))
        source = f"<sub>From {files}, written by `{self.command}`; table by `scripts/doc_tables.py`.</sub>"
        return "\n".join([source, "", *self.render(self.load()), ""]) + "\n"


def _parse(path: Path) -> Any:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    return json.loads(path.read_text())


def _r0(x: float) -> str:
    """``x`` to the nearest integer, halves up (98.5 -> 99; Python's round would say 98)."""
    return str(math.floor(x + 0.5))


def _n(x: float) -> str:
    return f"{int(x):,}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# -- docs/multi-es.md -------------------------------------------------------------------------------------

def _arm_label(name: str, arm: dict[str, Any], steps: int) -> str:
    if name.startswith("1 ES"):
        return name
    label = re.sub(r"^2 ES UIDCG |, halo \d+| \(default\)", "", name)
    if arm.get("head"):
        label = f"shared head {arm['head']:g} ({arm['head_steps']} of {steps} steps)"
    return f"2 ES, {label}"


def latency(data: dict[str, Any]) -> list[str]:
    """bench_cooperative.py latency: wall time per arm, speed-ups and symbols per generation."""
    lines = ["| arm | ES windows (latent columns) | wall s, median (all) | wall speed-up | uncontended speed-up | symbols |",
             "|---|---|---:|---:|---:|---:|"]
    for name, s in data["summary"].items():
        arm = data["arms"][name]
        windows = ", ".join(f"{a}–{b}" for a, b in arm["window_columns"])
        walls = s["wall_s_all"]
        symbols = sorted({r["symbols"] for r in data["runs"][name]})
        sym = _n(symbols[0]) if len(symbols) == 1 else f"{_n(symbols[0])}–{_n(symbols[-1])}"
        lines.append(_row(_arm_label(name, arm, data["steps"]), windows,
                          f"{s['wall_s_median']:.2f} ({min(walls):.1f}–{max(walls):.1f})",
                          f"{s['speedup_wall']:.2f}×", f"{s['speedup_uncontended']:.2f}×", sym))
    return lines


def _seam_arm(name: str) -> str:
    if name == "single":
        return "1 ES (UIEG)"
    return name.replace(" (default)", " **(default)**")


def seams(data: dict[str, Any]) -> list[str]:
    """bench_cooperative.py seams: faithfulness to the single-ES image and seam scores, both tasks."""
    lines = ["| task | arm | PSNR vs 1 ES, mean (min) dB | border band dB | seam global, mean / median | seam local | symbols |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task in ("txt2img", "img2img"):
        for name, s in data["summary"][task].items():
            psnr = f"{s['psnr_vs_single_db']:.1f} ({s['psnr_vs_single_min_db']:.1f})" if "psnr_vs_single_db" in s else "–"
            band = f"{s['psnr_border_band_db']:.1f}" if "psnr_border_band_db" in s else "–"
            lines.append(_row(task, _seam_arm(name), psnr, band, f"{s['seam_global']:.2f} / {s['seam_global_median']:.2f}",
                              f"{s['seam_local']:.2f}", _n(s["symbols"])))
    lines.append("")
    lines.append(f"{data['n']['txt2img']} txt2img and {data['n']['img2img']} img2img cases, {data['steps']} steps, "
                 f"{data['wall_s']:.0f} s for the whole run ({data['machine']}; load average "
                 f"{' / '.join(f'{x:g}' for x in data['load_average_1_5_15'])}).")
    return lines


def seams_noisy(data: dict[str, Any]) -> list[str]:
    """The same run's pass with every link at the given SNR (AWGN both ways)."""
    key = next(k for k in data["summary"] if k.startswith("txt2img at "))
    lines = [f"| arm ({key}) | PSNR dB vs the ideal-link single-ES image, mean (min) |", "|---|---:|"]
    for name, s in data["summary"][key].items():
        label = "1 ES (UIEG: pixels down)" if name == "single" else _seam_arm(name)
        lines.append(_row(label, f"{s['psnr_vs_ideal_single_db']:.1f} ({s['min_db']:.1f})"))
    return lines


#: README's summary columns: (header, arm name in the latency files, arm name in seams.json)
SUMMARY_ARMS = [("1 ES (UIEG)", "1 ES (UIEG)", "single"),
                ("**2 ES, fused every 5 steps (default)**", None, "fused every 5 steps, halo 2 (default)"),
                ("2 ES, fused every step", "fused every step", "fused every step, halo 2"),
                ("2 ES, never fused", "windows never fused", "windows never fused, halo 2"),
                ("2 ES, shared head 0.8", "head 0.8", "head 0.8, halo 2"),
                ("2 ES, naive tiles", "naive tiles", "naive tiles")]


def multi_es_summary(files: list[dict[str, Any]]) -> list[str]:
    """README's one-table summary of the three cooperative runs (latency 512², 256², meg-tiny seams)."""
    lat512, lat256, seam = files

    def wall(data: dict[str, Any], arm: str | None) -> str:
        name = next((n for n in data["summary"] if arm and arm in n), None)
        if name is None:
            return "–"
        s = data["summary"][name]
        return f"{s['wall_s_median']:.2f}" if name.startswith("1 ES") else f"{s['wall_s_median']:.2f} ({s['speedup_wall']:.2f}×)"

    def seams_row(task: str, key: str, fmt: Callable[[dict[str, Any]], str]) -> list[str]:
        return [fmt(seam["summary"][task][a]) if a in seam["summary"][task] and key in seam["summary"][task][a] else "–"
                for _, _, a in SUMMARY_ARMS]

    noisy = next(k for k in seam["summary"] if k.startswith("txt2img at "))
    g512, g256 = lat512["geometry"]["image_size"], lat256["geometry"]["image_size"]
    return [
        "| | " + " | ".join(h for h, _, _ in SUMMARY_ARMS) + " |", "|---|" + "---:|" * len(SUMMARY_ARMS),
        _row(f"SD-v1.5 UNet widths, {g512}², {lat512['steps']} steps: wall s, median of {lat512['reps']}",
             *(wall(lat512, a) for _, a, _ in SUMMARY_ARMS)),
        _row(f"SD-v1.5 UNet widths, {g256}², {lat256['steps']} steps: wall s, median of {lat256['reps']}",
             *(wall(lat256, a) for _, a, _ in SUMMARY_ARMS)),
        _row(f"meg-tiny txt2img, {seam['n']['txt2img']} prompt × seed: seam score (border gradient / elsewhere)",
             *seams_row("txt2img", "seam_global", lambda s: f"{s['seam_global']:.2f}")),
        _row(f"meg-tiny img2img, {seam['n']['img2img']} inputs whose shapes cross the cut: seam score",
             *seams_row("img2img", "seam_global", lambda s: f"{s['seam_global']:.2f}")),
        _row("meg-tiny txt2img: PSNR vs the single-ES image, mean (min)",
             *seams_row("txt2img", "psnr_vs_single_db",
                        lambda s: f"{s['psnr_vs_single_db']:.1f} ({s['psnr_vs_single_min_db']:.1f}) dB")),
        _row(f"meg-tiny {noisy.replace(' at ', ', both links ')}: PSNR vs the ideal single-ES image",
             *seams_row(noisy, "psnr_vs_ideal_single_db", lambda s: f"{s['psnr_vs_ideal_single_db']:.1f} dB")),
        _row("meg-tiny txt2img: symbols over the air (both links)",
             *seams_row("txt2img", "symbols", lambda s: _n(s["symbols"]))),
        "",
        ("The latency runs predate the every-5-steps default and have no arm of it (with 2 or 4 steps it is one "
        "round: the never-fused arm)."),
    ]


# -- README.md --------------------------------------------------------------------------------------------

#: (row label, scheme, design, fc) of the README's AWGN table
EVAL_ROWS = [("centralized", "centralized", "-", "1.0"), ("raw latent", "raw-latent", "-", "1.0"),
             ("MEG paper fc 0.5", "meg-paper", "paper", "0.5"), ("MEG residual fc 0.5", "meg-residual", "residual", "0.5"),
             ("MEG residual fc 0.9", "meg-residual", "residual", "0.9")]
EVAL_SNRS = ["-20.0", "-10.0", "0.0", "10.0", "20.0", "30.0"]


def eval_awgn(rows: list[dict[str, str]]) -> list[str]:
    """meg-lab eval: PSNR / FID against the perfectly received image, AWGN, a few SNRs."""
    cell = {(r["channel"], r["scheme"], r["design"], r["fc"], r["snr_db"]): r for r in rows}
    head = " | ".join(f"{float(s):g} dB".replace("-", "−") for s in EVAL_SNRS)
    lines = [f"| AWGN, PSNR dB / FID | {head} |", "|---|" + "---|" * len(EVAL_SNRS)]
    for label, scheme, design, fc in EVAL_ROWS:
        cells = [cell[("awgn", scheme, design, fc, snr)] for snr in EVAL_SNRS]
        lines.append(_row(f"{label} ({_n(int(cells[0]['symbols']))} symbols)",
                          *(f"{float(c['psnr_db']):.1f} / {float(c['fid']):.0f}" for c in cells)))
    return lines


#: (column label, scheme, fc) of the README's 3GPP table, at each of EVAL_3GPP_SNRS
EVAL_3GPP_COLS = [("pixels", "centralized", "1.0"), ("latent", "raw-latent", "1.0"), ("seed paper", "meg-paper", "0.5"),
                  ("seed residual", "meg-residual", "0.5")]
EVAL_3GPP_SNRS = ["0.0", "20.0"]
EVAL_3GPP_COMMAND = ("meg-lab eval --channels tdl-a,tdl-c,cdl-c --speeds 3,30,120 --n 16 --snrs=-10:30:10 --fcs 0.5 "
                     "--out benchmarks/results/eval-3gpp")


def eval_3gpp(rows: list[dict[str, str]]) -> list[str]:
    """meg-lab eval on TR 38.901 traces: PSNR dB (FID) per scheme at two mean SNRs, and the digital images lost."""
    cell = {(r["channel"], r["scheme"], r["fc"], r["snr_db"]): r for r in rows}
    channels = list(dict.fromkeys(r["channel"] for r in rows))
    head, rule = ["channel"], ["---"]
    for snr in EVAL_3GPP_SNRS:
        db = f"{float(snr):g} dB".replace("-", "−")
        head += [f"{label}, {db}" for label, _, _ in EVAL_3GPP_COLS] + [f"digital lost, {db}"]
        rule += ["---:"] * (len(EVAL_3GPP_COLS) + 1)
    lines = [_row(*head), "|" + "|".join(rule) + "|"]
    for ch in channels:
        model, _, speed = ch.partition("@")
        cells = [f"{model.upper()} {speed.replace('kmh', ' km/h')}"]
        for snr in EVAL_3GPP_SNRS:
            for _, scheme, fc in EVAL_3GPP_COLS:
                c = cell[(ch, scheme, fc, snr)]
                cells.append(f"{float(c['psnr_db']):.1f} ({_r0(float(c['fid']))})")
            cells.append(f"{100 * float(cell[(ch, 'digital-png', '1.0', snr)]['outage']):.0f} %")
        lines.append(_row(*cells))
    n = rows[0]["n"]
    lines += ["", (f"PSNR dB against the perfectly received image (FID in brackets), mean over {n} prompts per cell; "
                   "digital lost = the share of PNG images with a lost transport block (the delivered ones are exact).")]
    return lines


def serving(data: dict[str, Any]) -> list[str]:
    """bench_serving: images/s served vs offline, medians of the interleaved rounds."""
    m = data["median"]
    cols = ["offline-one", "served-1", "served-4", "served-16", "offline-batched"]
    lines = ["| | offline, one at a time | served, 1 UE | 4 UEs | 16 UEs | offline, batch of 16 |",
             "|---|---:|---:|---:|---:|---:|",
             _row("images / s", *(f"**{m[c]['images_per_s']:.2f}**" if c == "served-16" else f"{m[c]['images_per_s']:.2f}"
                                  for c in cols)),
             _row("images / CPU-second (all processes)", *(f"{m[c]['images_per_cpu_s']:.2f}" for c in cols)),
             _row("latency p50 / p99 (s)", *(f"{m[c]['p50_s']:.2f} / {m[c]['p99_s']:.2f}" if "p50_s" in m[c] else "–"
                                             for c in cols))]
    r = data["ratios_median_of_rounds"]
    lines += ["", (f"{data['rounds']} rounds; 16 UEs over the offline batch: {r['served16_over_offline_batched']:.2f}× images/s, "
                  f"{r['cpu_served16_over_offline_batched']:.2f}× per CPU-second; over one UE: {r['served16_over_served1']:.1f}×. "
                  f"The proxy alone forwards {data['proxy_ceiling_64KiB']['seeds_per_s']:.0f} 64-KiB seeds/s with 64 callers.")]
    return lines


def channel_latency(data: dict[str, Any]) -> list[str]:
    """bench_channel: a 64 KiB Probe direct and through the proxy."""
    o, w = data["proxy_overhead_64KiB_seed"], data["proxy_work_per_message_us"]
    variants = [("direct", None), ("proxy-ideal", "ideal"), ("proxy-awgn", "awgn"), ("proxy-rayleigh", "rayleigh")]
    return ["| | direct | proxy, ideal | proxy, AWGN | proxy, Rayleigh L=256 |", "|---|---:|---:|---:|---:|",
            _row("median round trip (µs)", *(_n(round(o["median_us"][v])) for v, _ in variants)),
            _row("added by the proxy (µs)", *("–" if v == "direct" else _n(round(o["added_median_us"][v])) for v, _ in variants)),
            _row("the proxy's own work per message (parse, channel, stamp, serialise; µs)",
                 *("–" if k is None else _r0(w[k]) for _, k in variants))]


def channel_throughput(data: dict[str, Any]) -> list[str]:
    t = data["channel_throughput_Msymbols_per_s_one_core"]
    return ["| channel function | AWGN | Rayleigh L=256 | Rician L=256 |", "|---|---:|---:|---:|",
            _row("M real symbols / s, one core", *(_r0(t[k]) for k in ("awgn", "rayleigh_L256", "rician_L256")))]


def _power(rows: list[dict[str, str]], budgets: list[str] | None, sem: bool) -> list[str]:
    cell = {(r["budget"], r["policy"]): r for r in rows}
    all_budgets = sorted({r["budget"] for r in rows}, key=float)
    shown = [b for b in all_budgets if budgets is None or b in budgets]

    def psnr(r: dict[str, str]) -> str:
        return f"{float(r['psnr']):.2f} ± {float(r['psnr_sem']):.2f}" if sem else f"{float(r['psnr']):.2f}"

    lines = [("| budget | uniform PSNR | oracle PSNR | **PPO PSNR** | PPO − uniform (paired) | uniform FID | oracle FID "
             "| **PPO FID** | PPO dropped |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in shown:
        u, o, q = (cell[(b, k)] for k in ("uniform", "oracle", "ppo"))
        lines.append(_row(f"{float(b):g}", psnr(u), psnr(o), f"**{psnr(q)}**", _gain(q), f"{float(u['fid']):.1f}",
                          f"{float(o['fid']):.1f}", f"**{float(q['fid']):.1f}**", f"{float(q['dropped']) * 100:.0f} %"))
    worst = max(float(r["energy_ratio"]) for r in rows)
    r0 = rows[0]
    lines += ["", f"meg-tiny, Rayleigh block fading at {float(r0['snr_db']):g} dB, {r0['coherence']}-symbol blocks, "
                  f"{r0['episodes']} downloads per cell (FID over {r0['fid_images']} images); PSNR in dB"
                  + (" (mean ± s.e.m.)" if sem else "") + f"; the most energy any download used: {worst:.3f} × its budget."]
    return lines


def _gain(r: dict[str, str]) -> str:
    """A policy's paired PSNR gain over uniform, ``+x.xx ± s.e.m.`` (eval-power's psnr_gain columns)."""
    return f"{float(r['psnr_gain']):+.2f} ± {float(r['psnr_gain_sem']):.2f}"


def power_tdl(files: list[list[dict[str, str]]]) -> list[str]:
    """meg-lab eval-power --trace on TDL-A at 3, 30, 120 km/h: uniform / PPO PSNR and PPO's paired gain per budget."""
    speeds = ("3 km/h", "30 km/h", "120 km/h")
    cells = [{(r["budget"], r["policy"]): r for r in rows} for rows in files]
    budgets = sorted({r["budget"] for r in files[0]}, key=float)
    lines = ["| budget | " + " | ".join(f"{v}: uniform / **PPO** (PPO − uniform)" for v in speeds) + " |",
             "|---:|" + "---|" * len(speeds)]
    for b in budgets:
        lines.append(_row(f"{float(b):g}", *(f"{float(c[(b, 'uniform')]['psnr']):.2f} / **{float(c[(b, 'ppo')]['psnr']):.2f}** "
                                               f"({_gain(c[(b, 'ppo')])})" for c in cells)))
    r0 = files[0][0]
    worst = max(float(r["energy_ratio"]) for rows in files for r in rows)
    lines += ["", (f"meg-tiny on TDL-A traces, {float(r0['snr_db']):g} dB, {r0['coherence']}-symbol blocks, {r0['episodes']} "
                  "downloads per cell; PSNR in dB (mean; PPO − uniform: paired mean ± s.e.m. over the same downloads); "
                  f"the oracle equals uniform (one gain per seed); the most energy any download used: {worst:.3f} × its budget.")]
    return lines


def power_all(rows: list[dict[str, str]]) -> list[str]:
    """meg-lab eval-power: every budget, with the PSNR's standard error."""
    return _power(rows, None, sem=True)


def power_readme(rows: list[dict[str, str]]) -> list[str]:
    return _power(rows, ["0.25", "1.0", "4.0"], sem=False)


def serving_mixed(data: dict[str, Any]) -> list[str]:
    """bench_mixed: mixed 10/25/50-step txt2img and img2img, open loop, three batching policies."""
    arms = data["arms"]
    classes = list(next(iter(arms.values()))["per_class"])
    lines = ["| policy | images / s | p50 / p99 (s), all | " + " | ".join(f"{c} p50 / p99 (s)" for c in classes) + " |",
             "|---|---:|---:|" + "---:|" * len(classes)]
    for name, arm in arms.items():
        pc = arm["per_class"]
        lines.append(_row(name, f"{arm['images_per_s']:.2f}", f"{arm['p50_s']:.2f} / {arm['p99_s']:.2f}",
                          *(f"{pc[c]['p50_s']:.2f} / {pc[c]['p99_s']:.2f}" for c in classes)))
    lines += ["", f"{data['requests']} requests, Poisson arrivals at {data['rate_per_s']:.2f}/s "
                  f"({data['load_x_one_at_a_time_capacity']:g}× the one-at-a-time capacity); alone, a request takes "
                  + ", ".join(f"{c} {t:.2f} s" for c, t in data["service_s_alone"].items()) + "."]
    return lines


def airtime_accuracy(data: dict[str, Any]) -> list[str]:
    """bench_airtime: reported air time vs the extra latency measured through real processes."""
    acc, own = data["accuracy"], data["own_latency"]
    lines = ["| values | UEs | reported (ms, median) | measured extra (ms, median) | error (ms, median) | abs. error p95 (ms) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for pt in acc["points"]:
        lines.append(_row(_n(pt["values"]), pt["ues"], f"{pt['reported_s_median'] * 1e3:.1f}",
                          f"{pt['measured_extra_s_median'] * 1e3:.1f}", f"{pt['error_s_median'] * 1e3:+.1f}",
                          f"{pt['abs_error_s_p95'] * 1e3:.1f}"))
    added = own["added_vs_direct_ms"]
    lines += ["", f"Cell: {acc['cell']}; {data['calls']} calls per point. The proxy's own added latency for a "
                  f"{_n(own['probe_values'])}-value Probe (median, vs direct {own['median_ms']['direct']:.2f} ms): "
                  + ", ".join(f"{k} +{v:.2f} ms" for k, v in added.items() if k != "direct") + "."]
    return lines


_COOP = "python benchmarks/bench_cooperative.py"
TABLES: dict[str, Table] = {
    "multi-es/latency-512": Table("docs/multi-es.md", "benchmarks/results/multi_es/latency-512.json",
                                  f"{_COOP} latency --model DIR512 --reps 3 --steps 2 --only 'every step,never' "
                                  "--name latency-512.json", latency),
    "multi-es/latency-256": Table("docs/multi-es.md", "benchmarks/results/multi_es/latency.json",
                                  f"{_COOP} latency --model DIR256 --reps 4 --steps 4 --only 'every step,never,head,naive'",
                                  latency),
    "multi-es/seams": Table("docs/multi-es.md", "benchmarks/results/multi_es/seams.json", f"{_COOP} seams --snr-db 10",
                            seams),
    "multi-es/seams-10db": Table("docs/multi-es.md", "benchmarks/results/multi_es/seams.json",
                                 f"{_COOP} seams --snr-db 10", seams_noisy),
    "readme/multi-es": Table("README.md", "benchmarks/results/multi_es/latency-512.json",
                             f"{_COOP} latency ... / seams --snr-db 10 (the commands in docs/multi-es.md)", multi_es_summary,
                             extra=("benchmarks/results/multi_es/latency.json", "benchmarks/results/multi_es/seams.json")),
    "power/all": Table("docs/power.md", "benchmarks/results/power/results.csv",
                       "meg-lab eval-power --out benchmarks/results/power", power_all),
    "readme/power": Table("README.md", "benchmarks/results/power/results.csv",
                          "meg-lab eval-power --out benchmarks/results/power", power_readme),
    "power/tdl": Table("docs/power.md", "benchmarks/results/power-traces/tdl-a-3/results.csv",
                       "meg-lab eval-power --trace tdl-a-V.npz --images 100 --draws 2 --no-fid "
                       "--out benchmarks/results/power-traces/tdl-a-V (V = 3, 30, 120; docs/power.md)", power_tdl,
                       extra=("benchmarks/results/power-traces/tdl-a-30/results.csv",
                              "benchmarks/results/power-traces/tdl-a-120/results.csv")),
    "readme/eval-awgn": Table("README.md", "benchmarks/results/eval/results.csv", "meg-lab eval --out benchmarks/results/eval",
                              eval_awgn),
    "readme/eval-3gpp": Table("README.md", "benchmarks/results/eval-3gpp/results.csv", EVAL_3GPP_COMMAND, eval_3gpp),
    "readme/serving": Table("README.md", "benchmarks/results/serving/serving.json", "python -m benchmarks.bench_serving",
                            serving),
    "readme/serving-mixed": Table("README.md", "benchmarks/results/serving/mixed.json", "python -m benchmarks.bench_mixed",
                                  serving_mixed),
    "readme/airtime-accuracy": Table("README.md", "benchmarks/results/airtime.json", "python -m benchmarks.bench_airtime",
                                     airtime_accuracy),
    "readme/channel-latency": Table("README.md", "benchmarks/results/channel.json", "python -m benchmarks.bench_channel",
                                    channel_latency),
    "readme/channel-throughput": Table("README.md", "benchmarks/results/channel.json", "python -m benchmarks.bench_channel",
                                       channel_throughput),
}


def found(doc: str) -> dict[str, str]:
    """The generated tables of one Markdown text: name -> its text between the markers."""
    return {m.group("name"): m.group("body") for m in MARKER.finditer(doc)}


def problems(texts: dict[str, str] | None = None) -> list[str]:
    """What is wrong, one message per table (empty: every table equals its results file). ``texts``: the
    Markdown files' contents by path (those not given are read)."""
    out: list[str] = []
    docs = {t.doc for t in TABLES.values()}
    texts = {d: (texts or {}).get(d) or (ROOT / d).read_text() for d in docs}
    for doc in sorted(docs):
        have = found(texts[doc])
        for name, table in TABLES.items():
            if table.doc != doc:
                continue
            if name not in have:
                out.append(f"{doc}: no `<!-- table: {name} -->` markers (the table from {table.results})")
                continue
            want = table.text()
            if have[name] != want:
                diff = "\n".join(difflib.unified_diff(have[name].splitlines(), want.splitlines(), "in the doc",
                                                      f"from {table.results}", lineterm="", n=0))
                out.append(f"{doc}: table {name} differs from {table.results} "
                           f"(python scripts/doc_tables.py rewrites it):\n{diff}")
        for name in have:
            if name not in TABLES or TABLES[name].doc != doc:
                out.append(f"{doc}: markers of an unknown table {name!r}")
    return out


def write() -> list[str]:
    """Rewrite every table in place; returns the files changed."""
    changed = []
    for doc in sorted({t.doc for t in TABLES.values()}):
        path = ROOT / doc
        text = path.read_text()

        def fill(m: re.Match[str]) -> str:
            name = m.group("name")
            if name not in TABLES:
                return m.group(0)
            return f"<!-- table: {name} -->\n{TABLES[name].text()}<!-- /table -->"

        new = MARKER.sub(fill, text)
        if new != text:
            path.write_text(new)
            changed.append(doc)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--check", action="store_true", help="exit 1 when a table differs from its results file")
    p.add_argument("--list", action="store_true", help="list the tables")
    args = p.parse_args(argv)
    if args.list:
        for name, t in TABLES.items():
            print(f"{name:28s} {t.doc:18s} {t.results}  <- {t.command}")
        return 0
    if args.check:
        bad = problems()
        for line in bad:
            print(line, file=sys.stderr)
        return 1 if bad else 0
    for doc in write():
        print(f"rewrote tables in {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
