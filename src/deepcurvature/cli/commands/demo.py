"""``deepcurvature demo``: the paper's section 6 random-matrix examples, figures and a summary."""

from __future__ import annotations

import argparse
import sys

from ...demo import DEMO_FILES, run_demo, validate_demo_arguments
from ..errors import CommandError
from ._common import add_output_options, claim_output

NAME = "demo"
HELP = "learn the spectra of random matrices with Lanczos (the paper's section 6) and plot them"
DESCRIPTION = (
    "Run the paper's section 6 examples on random matrices: Wigner (semicircle), Marcenko-Pastur "
    "with q = 0.5 and q = 2, and the synthetic spectrum of section 6.4 (spike at zero, bulk, "
    "outliers). Each spectral density is learned with Lanczos from one random probe and "
    "compared with the exact eigenvalues and the limiting law. Writes wigner.png, "
    "marchenko_pastur_q0.5.png, marchenko_pastur_q2.png, synthetic.png and summary.json into "
    "the output folder, and prints a table of extremal eigenvalues and masses at zero."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_options(parser, "demo")
    parser.add_argument("--steps", type=int, default=30, help="Lanczos steps m")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[225, 1000],
        metavar="P",
        help="matrix sizes (1 to 4; the synthetic matrix uses the largest)",
    )
    parser.add_argument("--seed", type=int, default=0, help="master seed of matrices and probes")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar or table: print only the folder"
    )


def _fmt(x: object, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


_SHORT = {"marchenko_pastur_q0.5": "MP q=0.5", "marchenko_pastur_q2": "MP q=2"}


def _print_table(experiments: list[dict]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Lanczos from one probe vs exact eigenvalues vs the law",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("matrix")
    for col in (
        "P",
        "m",
        "λ_min exact→Ritz",
        "λ_max exact→Ritz",
        "law edges",
        "mass at 0 law/exact/SLQ",
    ):
        table.add_column(col, justify="right")
    for e in experiments:
        edges = e.get("theory_edges")
        name = e["name"]
        name = _SHORT.get(name, name.replace("synthetic_m", "synthetic ").split(" ")[0])
        table.add_row(
            name,
            str(e["P"]),
            str(e["steps"]),
            f"{_fmt(e['exact_min'])}→{_fmt(e['ritz_min'])}",
            f"{_fmt(e['exact_max'])}→{_fmt(e['ritz_max'])}",
            "-" if edges is None else f"{edges[0]:.3g}, {edges[1]:.3g}",
            "/".join(
                _fmt(e[k], 2) for k in ("theory_zero_mass", "exact_zero_mass", "slq_zero_mass")
            ),
        )
    Console(width=max(Console().width, 100)).print(table)


def run(args: argparse.Namespace) -> int:
    # check everything before creating a folder, so a bad argument leaves no files behind
    try:
        validate_demo_arguments(args.sizes, args.steps, args.seed)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with claim_output(args, "demo", DEMO_FILES) as folder:
        out = folder.path
        paths = run_demo(
            out, sizes=args.sizes, steps=args.steps, seed=args.seed, verbose=not args.quiet
        )
    print(out)
    if not args.quiet:
        import json

        summary = json.loads(paths[-1].read_text())
        _print_table(summary["experiments"])
        print("files: " + ", ".join(p.name for p in paths), file=sys.stderr)
    return 0
