"""``deepcurvature density``: maximum-entropy density, outliers and log-dets of a spectrum."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CommandError
from ._common import add_output_options, check_dpi, claim_output

NAME = "density"
HELP = "maximum-entropy density, outliers and log-determinants of a spectrum file"
DESCRIPTION = (
    "Read SPECTRUM_FILE (written by 'deepcurvature spectrum', SpectrumResult.save or "
    "SpectralDensity.save) and, from its Lanczos nodes and weights: fit the maximum-entropy "
    "density matching the first --moments moments (maxent.npz, maxent.json, maxent.png); "
    "separate the outliers from the bulk with the --outliers rule (outliers.npz, outliers.json, "
    "outliers.png); and with --logdet-shift LAMBDA (repeatable) print log det(A + LAMBDA I) by "
    "stochastic Lanczos quadrature, P * sum_j w_j log(theta_j + LAMBDA) per probe (P the "
    "operator's dimension stored in the file), with the standard error across probes. The "
    "files go into --out (default: a new folder runs/density-YYYYmmdd-HHMMSS)."
)

#: The files a run writes into --out.
DENSITY_FILES = (
    "maxent.npz",
    "maxent.json",
    "maxent.png",
    "outliers.npz",
    "outliers.json",
    "outliers.png",
)
OUTLIER_RULES = ("gap", "mp", "semicircle")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spectrum_file", metavar="SPECTRUM_FILE", help="spectrum result (.npz/.json)")
    p.add_argument("--moments", type=int, default=10, help="moments of the maximum-entropy density")
    p.add_argument(
        "--outliers", choices=OUTLIER_RULES, default="gap", help="rule separating the outliers"
    )
    p.add_argument(
        "--logdet-shift",
        type=float,
        action="append",
        default=None,
        metavar="LAMBDA",
        help="print log det(A + LAMBDA I) (repeatable; A + LAMBDA I must be positive definite)",
    )
    p.add_argument("--dpi", type=int, default=150, help="resolution of the figures")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    add_output_options(p, "density")


def _read(source: Path) -> tuple[Path, Any, dict[str, Any]]:
    """The spectrum file's ``.npz``, its :class:`SpectralDensity` and JSON metadata."""
    from ...plotting.spectrum import read_spectrum
    from ...report.detect import check_spectrum_file, detect_result

    kind, file = detect_result(source)  # FileNotFoundError / ValueError name the problem
    if kind != "spectrum":
        raise CommandError(
            f"{source} is a {kind} result, not a spectrum: give a spectrum file written by "
            "'deepcurvature spectrum' (or SpectrumResult.save / SpectralDensity.save)"
        )
    check_spectrum_file(file)
    density, meta = read_spectrum(file)
    return file, density, meta


def slq_logdet(density: Any, shift: float, source: Path) -> Any:
    r"""``log det(A + shift I)`` by stochastic Lanczos quadrature from a stored density.

    Per probe ``l`` (nodes grouped by ``probe_index``, weights renormalised to sum 1 within the
    probe, as the squared first components of its tridiagonal's eigenvectors do):
    :math:`\Gamma_l = P \sum_j w_{lj} \log(\theta_{lj} + \lambda)`, the same as
    ``dc.logdet(lanczos_result, shift=shift, method="slq")`` on the run that wrote the file. The
    estimate is the mean over probes, its standard error ``sd(Gamma_l) / sqrt(n_v)`` (``nan``
    with one probe, or when the file does not say which probe each node came from).

    Raises:
        CommandError: the file has no dimension ``P``, or a node is at or below ``-shift``
            (``A + shift I`` is then not positive definite).
    """
    from ...linalg.logdet import LogdetResult

    if density.dim is None:
        raise CommandError(
            f"{source} does not record the dimension P of its operator, so log det = "
            "P * integral log(x + LAMBDA) d rho cannot be computed from it: drop --logdet-shift "
            "(or use dc.logdet on the operator)"
        )
    if not math.isfinite(shift):
        raise CommandError(f"--logdet-shift must be finite, got {shift}")
    nodes, weights, index = density.nodes, density.weights, density.probe_index
    low = float(nodes.min())
    if low + shift <= 0:
        radius = float(np.abs(nodes).max())
        suggest = max(-low, 0.0) + 1e-2 * radius
        raise CommandError(
            f"--logdet-shift {shift:g}: A + LAMBDA*I is not positive definite (a Ritz value "
            f"{low:.6g} <= -LAMBDA; Ritz values lie inside the spectrum) and its log-determinant "
            f"is not real; give --logdet-shift {suggest:.3g} or more"
        )
    known = bool(np.all(index >= 0))
    groups = [index == i for i in np.unique(index)] if known else [np.ones(nodes.size, bool)]
    P = int(density.dim)
    per_probe = np.array(
        [P * float(weights[g] @ np.log(nodes[g] + shift)) / float(weights[g].sum()) for g in groups]
    )
    n = per_probe.size
    se = float(per_probe.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    meta = density.metadata
    return LogdetResult(
        value=float(per_probe.mean()),
        standard_error=se,
        per_probe=per_probe,
        shift=float(shift),
        method="slq",
        dim=P,
        products=int(nodes.size),
        steps=int(meta.get("steps") or max(int(g.sum()) for g in groups)),
        seed=meta.get("seed"),
        metadata={
            "lowest_ritz_value": low,
            "precision": meta.get("precision"),
            "spectrum_file": str(source.absolute()),
            "per_probe_known": known,
        },
    )


def _print_text(fit: Any, found: Any, logdets: list[Any], out: Path) -> None:
    s = fit.summary()
    a, b = s["support"]
    print(
        f"maximum-entropy density: {s['n_moments']} moments on [{a:.6g}, {b:.6g}], moment "
        f"error {s['max_error']:.2g}, mean {s['mean']:.6g}, variance {s['variance']:.6g}, "
        f"entropy {s['entropy']:.6g}"
    )
    o = found.summary()
    shown = o["values"][::-1][:8]  # the largest first
    values = ", ".join(f"{v:.6g}" for v in shown) or "none"
    if o["count"] > len(shown):
        values += f", ... ({len(shown)} largest shown)"
    print(
        f"outliers ({o['method']}): {o['count']} ({values}); bulk [{o['lower_edge']:.6g}, "
        f"{o['upper_edge']:.6g}]"
        + (f", outlier mass x P = {o['count_from_mass']:.3g}" if o["count_from_mass"] else "")
    )
    for ld in logdets:
        err = (
            f" +- {ld.standard_error:.3g} ({ld.n_probes} probes)"
            if math.isfinite(ld.standard_error)
            else " (no standard error: one probe)"
        )
        print(f"log det(A + {ld.shift:g} I) = {ld.value:.8g}{err}  [SLQ, P = {ld.dim:,}]")
    print(f"results in {out}/ ({', '.join(DENSITY_FILES)})")


def run(args: argparse.Namespace) -> int:
    from ...analysis.outliers import outliers
    from ...plotting import plot_maxent, plot_outliers, save_figure

    if args.moments < 1:
        raise CommandError(f"--moments must be a positive integer, got {args.moments}")
    check_dpi(args.dpi)
    for shift in args.logdet_shift or ():
        if not math.isfinite(shift):
            raise CommandError(f"--logdet-shift must be finite, got {shift}")
    source = Path(args.spectrum_file)
    file, density, _ = _read(source)
    # everything is computed before a file is written: a failure leaves nothing behind
    fit = density.maxent(args.moments)
    found = outliers(density, args.outliers)
    logdets = [slq_logdet(density, shift, file) for shift in args.logdet_shift or ()]
    origin = str(file.absolute())
    fit.metadata["spectrum_file"] = origin
    found.metadata["spectrum_file"] = origin
    folder = claim_output(args, "density", DENSITY_FILES)
    out = folder.path
    with folder:  # on any failure or interrupt: remove this run's files, and only those
        fit.save(out / "maxent")
        save_figure(plot_maxent(fit, density), out / "maxent.png", dpi=args.dpi)
        found.save(out / "outliers")
        save_figure(plot_outliers(found, density), out / "outliers.png", dpi=args.dpi)
        if args.overwrite:
            folder.remove_stale()
    if args.json:
        doc = {
            "spectrum_file": origin,
            "out": str(out),
            "maxent": fit.summary(),
            "outliers": found.summary(),
            "logdet": [ld.summary() for ld in logdets],
        }
        print(json.dumps(doc, indent=2, default=str))
    else:
        _print_text(fit, found, logdets, out)
    return 0
