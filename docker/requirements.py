"""Print pyproject.toml's runtime requirements, one per line, for `pip install -r` in image builds.

The version specifiers stay in one home (pyproject.toml); the image installs them in a layer of its own,
before the source is copied, so editing code does not reinstall dependencies.

    python requirements.py pyproject.toml                  # everything (the meg image)
    python requirements.py pyproject.toml --proxy          # only what meg-channel needs (the proxy image)
    python requirements.py pyproject.toml --without torch  # everything but torch (installed separately)
    python requirements.py pyproject.toml --extra plots    # ... and an optional-dependencies group (repeat)
"""

from __future__ import annotations

import argparse
import re
import tomllib

#: Distributions the channel proxy (and shared.rpc.healthcheck) import; torch is not one of them by design.
PROXY = {"grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "numpy", "prometheus-client"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject")
    p.add_argument("--proxy", action="store_true", help="only the proxy's dependencies")
    p.add_argument("--without", action="append", default=[], help="leave this distribution out (repeat)")
    p.add_argument("--extra", action="append", default=[], help="add this optional-dependencies group (repeat)")
    args = p.parse_args()
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    deps: list[str] = list(project["dependencies"])
    for extra in args.extra:
        deps += project["optional-dependencies"][extra]
    left_out = {n.lower() for n in args.without}
    for dep in deps:
        name = _name(dep)
        if name in left_out or (args.proxy and name not in PROXY):
            continue
        print(dep)


if __name__ == "__main__":
    main()
