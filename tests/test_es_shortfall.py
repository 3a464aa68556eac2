"""Issue 21 (the UE's part): a multi-ES generation that finds fewer ESs than it asked for, or only one, says
so on stderr (stdout stays one JSON object) and in ``--json`` (``es_requested``, ``es_used``, ``es_missing``);
an ES asked for by name that the proxy does not have is an error naming it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import running, script

pytestmark = pytest.mark.slow  # real processes


@pytest.fixture(scope="module")
def via(random_model_dir: Path) -> Iterator[str]:
    """es0 (a real `meg-edge`) and `dead` (nobody listens) behind a real proxy."""
    es = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir), "--name", "es0"]
    with running(es, "meg.v1.EdgeService") as (_, es_port):
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{es_port}",
                 "--upstream", "dead=127.0.0.1:1"]
        with running(proxy, "meg.v1.ChannelControl") as (_, port):
            yield f"127.0.0.1:{port}"


def _generate(via: str, model: Path, out: Path, *flags: str) -> tuple[dict[str, object], str]:
    argv = [script("meg-ue"), "generate", "a red circle", "--protocol", "UIDG", "--via", via, "--model", str(model),
            "--steps", "2", "--pick", "first", "--timeout", "60", "--out", str(out), "--json", *flags]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_an_es_named_but_not_behind_the_proxy_is_an_error_naming_it(via: str, random_model_dir: Path,
                                                                    tmp_path: Path) -> None:
    argv = [script("meg-ue"), "generate", "a red circle", "--protocol", "UIDG", "--via", via, "--model",
            str(random_model_dir), "--es", "es0,es7", "--out", str(tmp_path / "a.png")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "es7: not behind it now" in done.stderr, done.stderr


def test_an_es_that_fails_and_one_asked_alone(via: str, random_model_dir: Path, tmp_path: Path) -> None:
    s, err = _generate(via, random_model_dir, tmp_path / "b.png")  # every upstream: es0 and dead
    assert (s["es_requested"], s["es_used"], s["es_missing"]) == (2, ["es0"], ["dead"])
    assert set(s["failed"]) == {"dead"}  # type: ignore[arg-type]
    assert "UIDG asked for 2 edge servers and ran on 1 (es0); missing: dead" in err
    s, err = _generate(via, random_model_dir, tmp_path / "c.png", "--es", "es0")
    assert (s["es_requested"], s["es_used"], s["es_missing"]) == (1, ["es0"], [])
    assert "UIDG asked for 1 edge server and ran on 1 (es0)" in err
