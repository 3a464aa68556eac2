"""The docs tell the truth (issue 22): every results table in README.md and docs/ equals what
scripts/doc_tables.py writes from the committed results file it names; the overhead tables equal what
`meg-ue overhead` prints; every `--flag` the docs give a meg-* command exists in that command's `--help`."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import doc_tables

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_table_equals_its_results_file() -> None:
    bad = doc_tables.problems()
    assert not bad, "\n\n".join(bad)


def test_every_table_names_a_committed_results_file_and_its_command() -> None:
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
    for name, table in doc_tables.TABLES.items():
        for f in (table.results, *table.extra):
            assert f in tracked, f"{name}: {f} is not committed"
        text = table.text()
        assert table.command in text and table.results in text.splitlines()[0], name


def test_a_stale_table_is_caught() -> None:
    """Issue 22 item 1 as it stood: the 256² latency table's symbols column said 75,776 / 75,776 / 75,520
    where latency.json has 123,392 / 123,392 / 122,368."""
    doc = (ROOT / "docs" / "multi-es.md").read_text()
    body = doc_tables.found(doc)["multi-es/latency-256"]
    stale = body.replace("| 123,392 |", "| 75,776 |").replace("| 122,368 |", "| 75,520 |")
    assert stale != body
    bad = doc_tables.problems({"docs/multi-es.md": doc.replace(body, stale), "README.md": (ROOT / "README.md").read_text()})
    assert len(bad) == 1 and "multi-es/latency-256" in bad[0] and "123,392" in bad[0] and "75,776" in bad[0], bad
    no_markers = doc.replace("<!-- table: multi-es/seams -->", "")
    assert any("no `<!-- table: multi-es/seams -->`" in p
               for p in doc_tables.problems({"docs/multi-es.md": no_markers, "README.md": (ROOT / "README.md").read_text()}))


# -- overhead tables: what `meg-ue overhead` prints ---------------------------------------------------------

def _overhead(*args: str) -> dict[str, Any]:
    from ue_client.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["overhead", *args, "--json"]) == 0
    return json.loads(out.getvalue())


def _num(cell: str) -> int:
    return int(cell.replace(",", "").replace("*", "").strip())


def _readme_table_after(anchor: str) -> list[list[str]]:
    return _table_rows((ROOT / "README.md").read_text(), anchor)


def _table_rows(text: str, anchor: str) -> list[list[str]]:
    """The body rows (cells) of the first Markdown table at or after ``anchor`` (the header row dropped)."""
    rest = text[text.index(anchor):]
    rows = []
    started = False
    for line in rest.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-:"):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


def test_readme_overhead_tables_are_what_the_command_prints() -> None:
    one = _overhead("--geometry", "sd-v1-5", "--fc", "1", "--fc", "0.1")
    table_ii = _readme_table_after("`meg-ue overhead --geometry sd-v1-5` gives paper 2's Table II")
    assert [_num(c) for c in table_ii[0][1:]] == list(one["table_ii"].values())
    totals = {(r["task"], r["protocol"], r["fc"]): r["total_symbols"] for r in one["rows"]}
    rows = _readme_table_after("`meg-ue overhead --geometry sd-v1-5 --fc 1 --fc 0.1`")
    assert len(rows) >= 8
    for task, protocol, _, _, total in rows:
        name = protocol.split(" ")[0]
        tasks = ["txt2img", "img2img"] if task == "both" else [task]
        values = [_num(v) for v in total.split("/")]
        for t in tasks:
            assert [totals[(t, name, fc)] for fc in ((1.0, 0.1) if len(values) == 2 else (1.0,))] == values, (t, protocol)
    two = _overhead("--geometry", "sd-v1-5", "--es-count", "2")
    two_totals = {(r["task"], r["protocol"]): r["total_symbols"] for r in two["rows"] if r["fc"] == 1.0}
    variants = {sync: {(r["task"], r["protocol"]): r["total_symbols"] for r in
                       _overhead("--geometry", "sd-v1-5", "--es-count", "2", "--sync-every", sync)["rows"]}
                for sync in ("1", "0")}
    rows = _readme_table_after("With two ESs (`meg-ue overhead --geometry sd-v1-5 --es-count 2`")
    assert len(rows) == 10
    for task, protocol, _, _, total in rows:
        m = re.fullmatch(r"([\d,]+)(?: \(([\d,]+); ([\d,]+)\))?", total)
        assert m, total
        assert _num(m.group(1)) == two_totals[(task, protocol)], (task, protocol)
        if m.group(2):
            assert (_num(m.group(2)), _num(m.group(3))) == (variants["1"][(task, protocol)], variants["0"][(task, protocol)])


def test_multi_es_compare_table_symbols_are_what_overhead_predicts() -> None:
    """docs/multi-es.md's compare table (no committed results folder): its symbol columns, meg-tiny, 2 ESs."""
    text = (ROOT / "docs" / "multi-es.md").read_text()
    rows = _table_rows(text, "| protocol | uplink (both links) | downlink | total symbols |")
    assert len(rows) == 5
    predicted = {r["protocol"]: r for r in _overhead("--es-count", "2")["rows"] if r["task"] == "txt2img" and r["fc"] == 1.0}
    for protocol, up, down, total, *_ in rows:
        r = predicted[protocol.split(" ")[0]]
        assert (_num(up), _num(down), _num(total)) == (r["uplink_symbols"], r["downlink_symbols"], r["total_symbols"]), protocol


# -- flags named in the docs exist -----------------------------------------------------------------------

CLIS = {"meg-edge": "edge_server.cli", "meg-channel": "channel_emulator.cli", "meg-ue": "ue_client.cli", "meg-lab": "meg_lab.cli"}
#: `meg-X SUB ...` up to the end of the code span / shell command (a pipe, a comment, `&&`, `;`, a backtick)
COMMAND = re.compile(r"\b(meg-edge|meg-channel|meg-ue|meg-lab) ([a-z][a-z-]*)((?:[^`|#;&\n]|\\\|)*)")


#: settings whose value is a daemon's extra flags (docker-compose.yml, deploy/k8s)
ARGS_SETTINGS = {"MEG_COMPOSE_ES_ARGS": ("meg-edge", "serve"), "MEG_ES_ARGS": ("meg-edge", "serve"),
                 "MEG_COMPOSE_CHANNEL_ARGS": ("meg-channel", "serve")}


def _mentions() -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(command, subcommand) -> {(flag, where)} over README.md and docs/*.md."""
    out: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for doc in DOCS:
        for lineno, line in enumerate(doc.read_text().splitlines(), 1):
            for setting, key in ARGS_SETTINGS.items():
                if setting in line:
                    out.setdefault(key, set()).update(
                        (f, f"{doc.relative_to(ROOT)}:{lineno}") for f in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line))
            for m in COMMAND.finditer(line):
                flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(3)))
                out.setdefault((m.group(1), m.group(2)), set()).update(
                    (f, f"{doc.relative_to(ROOT)}:{lineno}") for f in flags)
    return out


def _help(cli: str, sub: str) -> str | None:
    """``cli sub --help`` (in this process), or None when ``sub`` is not one of its subcommands."""
    mod = importlib.import_module(CLIS[cli])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as ex:
        mod.main([sub, "--help"])
    return out.getvalue() if ex.value.code == 0 else None


def test_flags_named_in_the_docs_exist() -> None:
    mentions = _mentions()
    assert ("meg-channel", "serve") in mentions and ("meg-ue", "generate") in mentions  # the scan works
    missing = []
    for (cli, sub), flags in sorted(mentions.items()):
        if not flags:
            continue
        if cli == "meg-lab":
            pytest.importorskip("stable_baselines3")  # meg-lab's commands need the lab extra
        text = _help(cli, sub)
        if text is None:
            continue  # prose such as "meg-ue prints", or an old spelling that says where the command moved
        known = set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
        missing += [f"{where}: `{cli} {sub} {flag}` is not in `{cli} {sub} --help`" for flag, where in sorted(flags)
                    if flag not in known]
    assert not missing, "\n".join(missing)


def test_the_flag_scan_would_catch_a_hidden_flag() -> None:
    """Issue 22 item 8: `--max-concurrency` is hidden from `meg-edge serve --help` (a deprecated alias)."""
    text = _help("meg-edge", "serve")
    assert text is not None and "--max-batch" in text and "--max-concurrency" not in text
