"""The examples of the batch-size learning rates and of the input Hessians (issue 14, 5 and 6).

Each example's ``main(small, out)`` runs at the small size into a temporary folder; the tests
assert the property its figure shows and that the PNG was written.
"""

import importlib.util
from pathlib import Path

import matplotlib.image
import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, out):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(small=True, out=out)


def assert_png(path, max_bytes=200_000):
    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    assert 0 < path.stat().st_size < max_bytes
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05


def test_batch_lr_digits(tmp_path, one_thread):
    res = run_example("batch_lr_digits", tmp_path)
    sizes = np.asarray(res["batch_sizes"])
    predicted = np.asarray(res["predicted_lr"])
    # the batch extremes exceed the full-data one and shrink with B; the SGD rate grows with B
    lam = np.asarray(res["lambda_max_mean"])
    assert np.all(lam > res["full_lambda_max"]) and np.all(np.diff(lam) < 0)
    assert np.all(np.diff(predicted) > 0)
    np.testing.assert_allclose(
        predicted, 2 / (res["fit"][0] + res["fit"][1] * (1 / sizes - 1 / 1437))
    )
    # every run below the predicted rate trains (2 / lambda_max is a safe learning rate) ...
    for b, rows in res["runs"].items():
        lr0 = predicted[list(sizes).index(b)]
        assert all(not bad for lr, _, bad in rows if lr <= lr0 * (1 + 1e-9))
        assert any(bad for _, _, bad in rows)  # ... and the grid reaches divergence
    # ... and the observed limit is within a factor of two above the prediction
    ratio = np.asarray(res["ratio"])
    assert np.all(ratio >= 1.0) and np.all(ratio <= 2.0 + 1e-9), ratio
    assert_png(res["figure"])


def test_input_hessian_poisoning(tmp_path, one_thread):
    res = run_example("input_hessian_poisoning", tmp_path)
    clean, poisoned5, poisoned20 = res["rows"]
    assert [r["fraction"] for r in res["rows"]] == [0.0, 0.05, 0.2]
    # the attack works when poisoned, not otherwise; clean accuracy is unharmed
    assert clean["attack_success"] < 0.1
    assert poisoned5["attack_success"] > 0.9 and poisoned20["attack_success"] > 0.95
    assert min(r["clean_accuracy"] for r in res["rows"]) > 0.93
    # signature on clean inputs: the trigger pixels' share of the input-Hessian trace grows
    shares = [r["clean"]["patch_share"] for r in res["rows"]]
    assert shares[0] < 1.2 * res["uniform_share"] and shares[0] < shares[1] < shares[2]
    assert shares[2] > 1.5 * res["uniform_share"]
    # on triggered inputs the input Hessian collapses and localises on the patch
    top = [r["triggered"]["top_eigenvalues"][0] for r in res["rows"]]
    assert top[2] < 0.1 * top[0]
    assert poisoned20["triggered"]["trace"] < 0.1 * clean["triggered"]["trace"]
    assert poisoned20["triggered"]["top_vector_patch_weight"] > 4 * res["uniform_share"]
    assert clean["triggered"]["top_vector_patch_weight"] < 2 * res["uniform_share"]
    for r in res["rows"]:
        for name in ("clean", "triggered"):
            ev = r[name]["top_eigenvalues"]
            assert ev == sorted(ev, reverse=True) and ev[-1] >= -1e-10  # ReLU + CE: PSD
    assert_png(res["figure"])
