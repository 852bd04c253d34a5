"""Test configuration: deterministic, headless, float64 references."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib

matplotlib.use("Agg")

import signal

import pytest
import torch

# A suite started in the background by a non-interactive shell (``pytest &``, ``nohup``) has
# Ctrl-C ignored, and so would every CLI process the tests start and then interrupt with SIGINT
# (an ignored signal stays ignored across exec; a handled one is reset to the default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Under pytest-xdist each worker gets one thread, so two workers use the two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the CLI subprocesses of the tests
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy/scipy BLAS too, else two workers oversubscribe two cores


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures are registered with pyplot (``plt.show()`` works): close them after each test."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def one_thread():
    """Small dense problems run fastest on one BLAS / torch thread on a shared machine."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)
