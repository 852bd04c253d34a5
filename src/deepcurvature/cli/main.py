"""Entry point of the ``deepcurvature`` command: subcommands are the modules of ``commands``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from .._version import __version__
from . import commands
from .errors import CommandError

__all__ = ["build_parser", "main"]


def _command_modules() -> list:
    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return mods


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subparser per command module."""
    mods = _command_modules()
    lines = "\n".join(f"  {m.NAME:<11} {m.HELP}" for m in mods)
    parser = argparse.ArgumentParser(
        prog="deepcurvature",
        description=(
            "Curvature of neural-network loss surfaces: Hessian, Gauss-Newton and Fisher spectra "
            "learned with the Lanczos algorithm.\n\ncommands:\n" + lines
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'deepcurvature COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"deepcurvature {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in mods:
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (CommandError, ValueError, FileNotFoundError, TypeError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"deepcurvature {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
