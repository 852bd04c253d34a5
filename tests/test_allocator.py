"""The CPU allocator settings of the curvature operators (operators/allocator.py).

Each case runs in a fresh Python process: the settings are process-wide and set once, and this
test process has run curvature products already.
"""

import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
THRESHOLD_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
    "DEEPCURVATURE_TUNE_MALLOC",
)

# Hessian products of a small CNN (4 MiB activations): with glibc's default trim threshold
# (twice the largest freed block) the freed activations go back to the kernel and every column
# faults its pages in again; with the tuned allocator the products reuse them.
CNN_PRODUCTS = """
import resource, sys, torch
from torch import nn
import deepcurvature as dc
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
)
data = [(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))]
H = dc.hessian(model, nn.CrossEntropyLoss(), data)
H.chain_route = sys.argv[1] == "chain"
V = torch.randn(H.num_params, 4)
for _ in range(2):  # the heap settles in two products (the chain route's allocation pattern)
    H.matmat(V)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    H.matmat(V)
print(dc.cpu_allocator_status())
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

PRODUCT = """
import torch
import deepcurvature as dc
print(dc.cpu_allocator_status())
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
dc.hessian(model, torch.nn.CrossEntropyLoss(), data).matvec(torch.randn(23))
print(dc.cpu_allocator_status())
"""


def run(script, *args, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in THRESHOLD_VARIABLES}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")[:-1]


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's (Linux)")
@pytest.mark.parametrize("route", ["autograd", "chain"])
def test_tuned_products_reuse_freed_activations_without_page_faults(route):
    status, default = run(CNN_PRODUCTS, route, DEEPCURVATURE_TUNE_MALLOC="0")
    assert status.startswith("not tuned")
    status, tuned = run(CNN_PRODUCTS, route)
    assert status == "tuned"
    if route == "chain":
        # per column a few 4 MiB tangents (1024 pages each); 54k-120k faults by default and
        # 10-3.8k tuned in 5 runs, but the heap's layout varies from run to run and a default
        # run once faulted only 10k (the products allocate less since the spreading's zeros are
        # kept per batch): a low default run is measured once more and the larger count taken
        if int(default) <= 20_000:
            default = max(
                int(default), int(run(CNN_PRODUCTS, route, DEEPCURVATURE_TUNE_MALLOC="0")[1])
            )
        assert int(default) > 20_000, default
        assert int(tuned) < int(default) // 4, (tuned, default)
        return
    # 12 columns x several 4 MiB tensors (1024 pages each) of the gradient's graph
    assert int(default) > 50_000, default  # the default hands them back: faulted in again
    assert int(tuned) < int(default) // 10, (tuned, default)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's (Linux)")
def test_a_cpu_product_tunes_the_allocator_once():
    assert run(PRODUCT) == ["not attempted", "tuned"]


def test_the_users_choice_and_the_opt_out_stand():
    off = run(PRODUCT, DEEPCURVATURE_TUNE_MALLOC="0")
    assert off[-1] == "not tuned: switched off by DEEPCURVATURE_TUNE_MALLOC=0"
    if GLIBC:
        own = run(PRODUCT, MALLOC_TRIM_THRESHOLD_="1000000")
        assert own[-1] == (
            "not tuned: the thresholds are set by the environment: MALLOC_TRIM_THRESHOLD_"
        )
        tunables = run(PRODUCT, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1000000")
        assert tunables[-1].endswith("GLIBC_TUNABLES (mmap_threshold)")
