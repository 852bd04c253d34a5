"""``deepcurvature local-stats``: spacing ratios of a file of eigenvalues against GOE/Poisson."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CommandError

NAME = "local-stats"
HELP = "level-spacing ratios of eigenvalues against the GOE and Poisson laws"
DESCRIPTION = (
    "Read eigenvalues from EIGENVALUE_FILE and compare their local statistics with random-matrix "
    "universality: the consecutive spacing ratios min(s_i, s_i+1) / max(s_i, s_i+1) of a window "
    "(the eigenvalues inside --window, minus --trim at each end), their mean with a batch-means "
    "standard error, and the Kolmogorov-Smirnov distances to the GOE surmise (<r~> = 0.5307 at "
    "large N) and to the Poisson law (0.3863). EIGENVALUE_FILE is a .npy array, a text file of "
    "numbers, or a result .npz holding an 'eigenvalues' or 'values' array. A spectrum file of "
    "'deepcurvature spectrum' holds Ritz values (quadrature nodes), which are not eigenvalues: "
    "it is accepted only when its Lanczos run covered the whole dimension. With --out, writes "
    "OUT.npz, OUT.json (a LocalStatistics result) and OUT.png (the histogram)."
)
_TEXT = (".txt", ".csv", ".dat", ".tsv", "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("eigenvalue_file", metavar="EIGENVALUE_FILE", help="file of eigenvalues")
    parser.add_argument(
        "--trim", type=float, default=0.1, help="fraction dropped at each end of the window"
    )
    parser.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        default=None,
        help="keep eigenvalues in [LOW, HIGH] before trimming (default: all)",
    )
    parser.add_argument(
        "--out", default=None, help="write OUT.npz, OUT.json and OUT.png (default: print only)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out files")


def _ritz_refusal(path: Path, meta: dict[str, Any], n: int) -> str | None:
    """Why a spectrum file's Ritz values are not its eigenvalues (None when they are)."""
    dim = meta.get("dim")
    probes = int(meta.get("n_probes", 1) or 1)
    if dim is not None and probes == 1 and n == int(dim):
        return None
    return (
        f"{path} holds Ritz values ({n} nodes of {probes} Lanczos probe(s) for P = {dim}): "
        "quadrature nodes spread over the spectrum, not eigenvalues, so their spacings say "
        "nothing about level repulsion; compute converged eigenvalues (dc.eigsh(op, k).values, "
        "hundreds of them, or a dense eigvalsh) and save them with numpy.save"
    )


def read_eigenvalues(path: Path) -> np.ndarray:
    """The 1-D eigenvalues of a ``.npy``, text or result ``.npz`` file (one-line errors)."""
    from ...io.results import load_npz_json

    if not path.exists():
        raise FileNotFoundError(f"no eigenvalue file at {path}")
    if path.is_dir():
        raise CommandError(f"{path} is a folder: give a file of eigenvalues")
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise CommandError(f"{path} is empty: give a file of eigenvalues")
    if suffix in (".npz", ".json"):
        arrays, meta = load_npz_json(path)
        for key in ("eigenvalues", "values"):
            if key in arrays:
                return np.asarray(arrays[key], dtype=np.float64).reshape(-1)
        if "nodes" in arrays:
            nodes = np.asarray(arrays["nodes"], dtype=np.float64)
            why = _ritz_refusal(path, meta, nodes.size)
            if why:
                raise CommandError(why)
            return nodes
        raise CommandError(
            f"{path} holds arrays {sorted(arrays)}, none of them eigenvalues: save them as "
            "'eigenvalues' (or a .npy array)"
        )
    try:
        if suffix == ".npy":
            with path.open("rb") as fh:
                if fh.read(6) != b"\x93NUMPY":
                    raise CommandError(f"{path} is not a .npy file (no numpy header)")
            values = np.load(path, allow_pickle=False)
        elif suffix in _TEXT:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": said below
                values = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=1)
        else:
            raise CommandError(
                f"cannot tell the format of {path.name!r}: use .npy, .npz or a text file "
                f"({', '.join(s for s in _TEXT if s)})"
            )
    except CommandError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CommandError(f"{path} is not a file of eigenvalues ({reason})") from None
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise CommandError(f"{path} holds no eigenvalues")
    if values.ndim != 1 and 1 not in values.shape[-1:]:
        raise CommandError(
            f"{path} holds an array of shape {values.shape}: give a 1-D array of eigenvalues"
        )
    return values.reshape(-1)


def run(args: argparse.Namespace) -> int:
    from ...analysis.local_statistics import local_statistics
    from ...plotting.local_statistics import plot_local_statistics
    from ...plotting.spectrum import save_figure

    if not (0 <= args.trim < 0.5) or not math.isfinite(args.trim):
        raise CommandError(f"--trim must be a fraction in [0, 0.5), got {args.trim}")
    outputs: list[Path] = []
    if args.out:
        out = Path(args.out)
        outputs = [out.with_name(out.name + s) for s in (".npz", ".json", ".png")]
        existing = [p for p in outputs if p.exists()]
        if existing and not args.overwrite:
            raise CommandError(f"{existing[0]} exists: pass --overwrite to replace it")
    values = read_eigenvalues(Path(args.eigenvalue_file))
    window = tuple(args.window) if args.window else None
    res = local_statistics(values, trim=args.trim, window=window)
    res.metadata["file"] = str(Path(args.eigenvalue_file).absolute())
    summary = res.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        lo, hi = summary["window_range"]
        print(
            f"{summary['n_window']} of {summary['n_eigenvalues']} eigenvalues in "
            f"[{lo:.6g}, {hi:.6g}], {summary['n_ratios']} spacing ratios"
        )
        print(
            f"<r~> = {res.mean:.4f} ± {res.stderr:.4f} (batch means); GOE {summary['goe_mean']}, "
            f"Poisson {summary['poisson_mean']:.4f}"
        )
        print(
            f"Kolmogorov-Smirnov distance: GOE {res.ks_goe:.3f}, Poisson {res.ks_poisson:.3f} "
            f"-> closer to {res.closer_to}"
        )
    if args.out:
        print(res.save(outputs[0]))
        print(save_figure(plot_local_statistics(res), outputs[2]))
    return 0
