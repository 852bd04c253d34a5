"""Entry point of the ``deepcurvature`` command: subcommands are the modules of ``commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
import traceback
from collections.abc import Sequence

from .._open_figures import closing_new_figures
from .._version import __version__
from . import commands
from .failures import (
    exit_status,
    failure_line,
    install_signal_handlers,
    install_warning_format,
)
from .launch import failure_lines, leave_if_broken, process_group, wait_for_all

__all__ = ["build_parser", "main"]

_DEBUG_HELP = "show the full traceback of an error (also: DEEPCURVATURE_DEBUG=1)"


_STATES_DEFAULT = re.compile(r"\(default\b", re.IGNORECASE)


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append ``(default: X)`` only to options whose help does not already state its default.

    Many help strings say their default in words (``"number of epochs (default 20)"``,
    ``"(default: the checkpoint's)"``); argparse's formatter would add ``(default: None)`` after
    them, so each default would be printed twice.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if _STATES_DEFAULT.search(help_text):
            return help_text
        return super()._get_help_string(action) or ""


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
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    debug = argparse.ArgumentParser(add_help=False)  # --debug after the command name too
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in mods:
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=_DefaultsHelpFormatter,
            parents=[debug],
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _debug_wanted(args: argparse.Namespace) -> bool:
    env = os.environ.get("DEEPCURVATURE_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (module docstring of ``failures``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    install_signal_handlers()
    install_warning_format(args.command)
    status = _run_command(args)
    leave_if_broken(status)
    return status


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command (in a process group under torchrun); its exit status."""
    try:
        with process_group(args):  # under torchrun only (module docstring of ``launch``)
            try:
                with closing_new_figures():
                    status = int(args._run(args) or 0)
                wait_for_all()
                return status
            except (SystemExit, GeneratorExit):
                raise
            except BaseException as exc:  # one line for every failure; traceback with --debug
                return _report(args, exc)
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # the process group could not be set up
        return _report(args, exc)


def _report(args: argparse.Namespace, exc: BaseException) -> int:
    """Print the one line of ``exc`` (naming the rank in a process group); its exit status."""
    if _debug_wanted(args):
        traceback.print_exc()
    line, status = failure_lines(failure_line(args.command, exc), exit_status(exc), exc)
    print(line, file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
