"""Products of layer chains written out layer by layer (operators/chain_products.py) against
autograd's products, in float64.

Every supported layer kind and loss (the cases of ``_chains.py``), every curvature (Hessian, GGN,
empirical and Monte Carlo Fisher), blocks of one and several columns, parameter selections and
weight decay must give autograd's products to rounding; networks that are not chains and
batches whose inputs are not a tensor must take autograd's route.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepcurvature as dc
from _chains import CASES, Residual, cnn_case, conv1d_case
from deepcurvature.operators import chain_products

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def every_hessian_product_by_chain(monkeypatch):
    """The chain route is taken for passes of several columns only; here for every pass."""
    monkeypatch.setattr(chain_products, "HESSIAN_MIN_COLUMNS", 1)
    monkeypatch.setattr(chain_products, "OUTPUT_SPACE_MIN_COLUMNS", 1)
    monkeypatch.setattr(chain_products, "CONVOLUTION_MIN_COLUMNS", 1)


MATRICES = {
    "hessian": lambda m, loss, data, **kw: dc.hessian(m, loss, data, **kw),
    "ggn": lambda m, loss, data, **kw: dc.ggn(m, loss, data, **kw),
    "fisher": lambda m, loss, data, **kw: dc.fisher(m, loss, data, **kw),
    "mc-fisher": lambda m, loss, data, **kw: dc.fisher(m, loss, data, kind="mc", seed=3, **kw),
}


def columns(P, k, seed=0):
    return torch.randn(P, k, generator=torch.Generator().manual_seed(seed), dtype=DT)


def both_routes(monkeypatch, build, V, block_size=None):
    """``C V`` by the chain route and by autograd (fresh operators), and the first's route."""
    out = []
    for enabled in (True, False):
        monkeypatch.setattr(chain_products, "ENABLED", enabled)
        op = build()
        if block_size is not None:
            op.block_size = block_size
        out.append((op.matmat(V), op.product_route))
    monkeypatch.setattr(chain_products, "ENABLED", True)
    return out


#: every case with every matrix, but the Monte Carlo Fisher only where the loss has a known
#: predictive distribution to sample from (not the custom loss, not the sequence's)
PAIRS = [
    (case, matrix)
    for case in sorted(CASES)
    for matrix in sorted(MATRICES)
    if not (matrix == "mc-fisher" and case in ("custom-loss", "sequence"))
]


@pytest.mark.parametrize(("case", "matrix"), PAIRS)
def test_chain_products_equal_autograd(case, matrix, monkeypatch):
    model, data, loss = CASES[case]()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def build():
        return MATRICES[matrix](model, loss, data, weight_decay=0.2)

    V = columns(build().shape[0], 5)
    for block_size in (1, 2, None):
        (chain, route), (reference, other) = both_routes(monkeypatch, build, V, block_size)
        assert route == "chain" and other == "autograd"
        scale = reference.abs().max()
        torch.testing.assert_close(chain, reference, rtol=1e-10, atol=1e-12 * scale)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_parameter_selection_takes_only_the_selected_parts(monkeypatch):
    model, data, loss = conv1d_case()
    for params in (["4.weight"], ["8.bias", "11.weight"], ["1.weight", "7.weight"]):
        for matrix in ("hessian", "ggn"):

            def build(matrix=matrix, params=params):
                return MATRICES[matrix](model, loss, data, params=params)

            V = columns(build().shape[0], 3)
            (chain, _), (reference, _) = both_routes(monkeypatch, build, V)
            torch.testing.assert_close(chain, reference, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("params", [["4.weight"], ["1.weight", "9.2.bias"], ["0.bias"]])
def test_parameter_selections_of_an_image_network(params, monkeypatch):
    """Layers before the first probed one run without tangents (no pooling taken first there);
    from a probed convolution on, max pooling is taken before batch norm and ReLU."""
    model, data, loss = cnn_case()
    for matrix in ("hessian", "ggn"):

        def build(matrix=matrix):
            return MATRICES[matrix](model, loss, data, params=params)

        V = columns(build().shape[0], 3, seed=6)
        (chain, route), (reference, _) = both_routes(monkeypatch, build, V)
        assert route == "chain"
        torch.testing.assert_close(chain, reference, rtol=1e-10, atol=1e-12 * reference.abs().max())


def test_the_eigenvalues_of_the_chain_route_are_the_dense_ones():
    model, data, loss = cnn_case()
    H = dc.hessian(model, loss, data)
    assert H.product_route == "chain"
    dense = H.to_dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-12)
    top = dc.eigsh(H, 2, tol=1e-10, seed=0, verbose=False)
    want = torch.linalg.eigvalsh(dense)[-2:]
    torch.testing.assert_close(torch.as_tensor(top.values).sort().values, want, rtol=1e-8, atol=0)


def test_other_networks_and_inputs_take_autograd(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=DT)
    y = torch.randint(0, 3, (8,), generator=g)
    residual = nn.Sequential(Residual(), nn.Linear(3, 3)).to(DT)
    for matrix in ("hessian", "ggn"):
        op = MATRICES[matrix](residual, F.cross_entropy, [(x, y)])
        assert op.product_route == "autograd"
    chain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).to(DT)
    assert dc.hessian(chain, F.cross_entropy, [(x, y)], engine="forward").product_route == (
        "autograd"
    )
    assert dc.hessian(chain, F.cross_entropy, [(x, y)], bn_mode="train").product_route == (
        "autograd"
    )
    # keyword inputs: every batch goes to autograd, with the same result
    data = [{"input": x, "labels": y}]

    def build():
        return dc.hessian(chain, F.cross_entropy, data, targets="labels")

    V = columns(build().shape[0], 2)
    (a, _), (b, _) = both_routes(monkeypatch, build, V)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("matrix", sorted(MATRICES))
def test_weighted_losses_with_ignored_targets(matrix, monkeypatch):
    """Class weights, an ignored class and label smoothing: not a plain mean over samples."""
    model, data, _ = cnn_case()
    smoothing = 0.0 if matrix == "mc-fisher" else 0.1  # (the MC Fisher refuses smoothing)
    loss = nn.CrossEntropyLoss(
        weight=torch.tensor([0.5, 2.0, 1.0], dtype=DT), ignore_index=1, label_smoothing=smoothing
    )

    def build():
        return MATRICES[matrix](model, loss, data)

    V = columns(build().shape[0], 4, seed=2)
    (chain, route), (reference, _) = both_routes(monkeypatch, build, V)
    assert route == "chain"
    torch.testing.assert_close(chain, reference, rtol=1e-10, atol=1e-12 * reference.abs().max())


def test_the_chain_route_is_taken_for_wide_passes_only(monkeypatch):
    model, data, loss = cnn_case()
    monkeypatch.setattr(chain_products, "CONVOLUTION_MIN_COLUMNS", 4)
    calls = []
    original = chain_products.chain_products

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return original(*args, **kwargs)

    monkeypatch.setattr(chain_products, "chain_products", counted)
    H = dc.hessian(model, loss, data)
    H.block_size = 2
    narrow, wide = columns(H.shape[0], 3), columns(H.shape[0], 4)
    H.matmat(narrow)
    assert calls == []  # 3 columns: autograd's route
    H.matmat(wide)
    assert calls == [2] * len(data)  # 4 columns in two blocks, one chain call per batch
    assert chain_products.min_columns(chain_products.chain_of(H), True) == 4
    monkeypatch.setattr(chain_products, "CONVOLUTION_MIN_COLUMNS", 2)
    G = dc.ggn(model, loss, data)
    G.matvec(narrow[:, 0])
    assert len(calls) == len(data)  # one column: autograd's route
    G.matmat(narrow[:, :2])
    assert len(calls) == 2 * len(data)
    # a chain without convolutions: the thresholds of its kind
    del calls[:]
    mlp, data, loss = CASES["sequence"]()
    monkeypatch.setattr(chain_products, "HESSIAN_MIN_COLUMNS", 3)
    monkeypatch.setattr(chain_products, "OUTPUT_SPACE_MIN_COLUMNS", 2)
    H, G = dc.hessian(mlp, loss, data), dc.ggn(mlp, loss, data)
    V = columns(H.shape[0], 3)
    for op, k, taken in ((H, 2, 0), (H, 3, 1), (G, 1, 0), (G, 2, 1)):
        del calls[:]
        op.matmat(V[:, :k])
        assert len(calls) == taken * len(data), (op, k)
    assert chain_products.min_columns(chain_products.chain_of(H), True) == 3
    assert chain_products.min_columns(chain_products.chain_of(G), False) == 2
    # convolutions without a max pool: the Hessian from CONVOLUTION_MIN_COLUMNS, the GGN and
    # the Fisher from OUTPUT_SPACE_MIN_COLUMNS (autograd's route is the faster for one column)
    model, data, loss = CASES["global-average"]()
    monkeypatch.setattr(chain_products, "CONVOLUTION_MIN_COLUMNS", 1)
    H, G, F_ = (build(model, loss, data) for build in (dc.hessian, dc.ggn, dc.fisher))
    V = columns(H.shape[0], 2)
    for op, k, taken in ((H, 1, 1), (G, 1, 0), (F_, 1, 0), (G, 2, 1), (F_, 2, 1)):
        del calls[:]
        op.matmat(V[:, :k])
        assert len(calls) == taken * len(data), (op, k)
    assert chain_products.min_columns(chain_products.chain_of(H), True) == 1
    assert chain_products.min_columns(chain_products.chain_of(G), False) == 2
    # with a max pool (cnn_case) the GGN takes it from one column
    model, data, loss = cnn_case()
    G = dc.ggn(model, loss, data)
    assert chain_products.min_columns(chain_products.chain_of(G), False) == 1


def _pool_records(model, data):
    """The max-pooling records of the first batch's forward pass, and the chain's records."""
    from deepcurvature.operators.chain import chain_layers
    from deepcurvature.operators.chain_forward import record_forward

    layers = chain_layers(model, "eval")
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    probes = dict(model.named_parameters())
    records, _ = record_forward(layers, tensors, probes, data[0][0], graph=False)
    return [r for r in records if r.index is not None], records


@pytest.mark.parametrize("gamma", ["mixed signs", "a zero"])
def test_max_pooling_is_taken_before_monotone_layers(gamma, monkeypatch):
    """``conv -> batch norm -> ReLU -> max pool`` pools the convolution's output (times the sign
    of batch norm's scale) and runs batch norm and ReLU on the pooled positions; a zero scale
    (ties everywhere) and a non-monotone activation (GELU) keep the pool in its place."""
    model, data, loss = cnn_case()
    bn = model[1]
    assert (bn.weight < 0).any() and (bn.weight > 0).any()  # both signs of the scale
    if gamma == "a zero":
        with torch.no_grad():
            bn.weight[2] = 0.0
    pools, records = _pool_records(model, data)
    pooled = pools[0].x0.shape  # the pool's record: (n, 8, 4, 4) taken first, or (n, 8, 8, 8)
    assert pooled[-1] == (4 if gamma == "mixed signs" else 8)
    assert records[1].x0.shape[-1] == pooled[-1]  # batch norm's input
    for matrix in ("hessian", "ggn"):

        def build(matrix=matrix):
            return MATRICES[matrix](model, loss, data)

        V = columns(build().shape[0], 3, seed=4)
        (chain, route), (reference, _) = both_routes(monkeypatch, build, V)
        assert route == "chain"
        torch.testing.assert_close(chain, reference, rtol=1e-10, atol=1e-12 * reference.abs().max())
    gelu, _, _ = conv1d_case()  # batch norm -> GELU -> adaptive max pool
    pools, _ = _pool_records(gelu, conv1d_case()[1])
    assert pools[0].x0.shape[-1] > pools[0].y0.shape[-1]


@pytest.mark.parametrize("matrix", ["hessian", "ggn", "fisher"])
def test_a_kept_forward_pass_gives_the_same_products_until_the_model_changes(matrix, monkeypatch):
    """``cache="forward"``: the second and later products reuse each batch's forward pass;
    a parameter changed in place is seen at the next product."""
    model, data, loss = cnn_case()
    forwards = []
    original = chain_products.record_forward

    def counted(*args, **kwargs):
        forwards.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(chain_products, "record_forward", counted)
    kept = MATRICES[matrix](model, loss, data, cache="forward")
    V = columns(kept.shape[0], 3, seed=5)
    first = kept.matmat(V)
    assert len(forwards) == len(data)
    for _ in range(2):
        torch.testing.assert_close(kept.matmat(V), first, rtol=0, atol=0)
        torch.testing.assert_close(kept.matvec(V[:, 1]), first[:, 1], rtol=1e-12, atol=1e-13)
    assert len(forwards) == len(data)  # kept: no forward pass after the first product
    masks = [  # ReLU's masks stay bool between products (widened for each batch's columns only)
        r.d1.dtype
        for *_, prepared in kept.__dict__["_kept_forwards"].values()
        for r in prepared.records
        if isinstance(r.layer.module, nn.ReLU)
    ]
    assert masks and set(masks) == {torch.bool}
    reference = MATRICES[matrix](model, loss, data).matmat(V)
    torch.testing.assert_close(first, reference, rtol=1e-12, atol=1e-13 * reference.abs().max())
    with torch.no_grad():
        model[4].weight.mul_(1.5)  # in place: the operator must see it
    changed = kept.matmat(V)
    assert len(forwards) == 3 * len(data)  # (the uncached reference and the changed model)
    fresh = MATRICES[matrix](model, loss, data).matmat(V)
    torch.testing.assert_close(changed, fresh, rtol=1e-12, atol=1e-13 * fresh.abs().max())
    assert not torch.allclose(changed, first)


def test_a_forward_cache_that_would_not_fit_is_refused_in_one_line(monkeypatch):
    """The kept passes are projected from the first batch's (times the batches) and compared
    with the memory available: too much is refused with the fix, and what was kept dropped."""
    from deepcurvature.operators import memory

    model, data, loss = cnn_case()
    op = dc.hessian(model, loss, data, cache="forward")
    V = columns(op.shape[0], 2, seed=1)
    op.matmat(V)  # fits (the real available memory)
    kept = op.__dict__["_kept_forwards"]
    assert sorted(kept) == list(range(len(data)))
    one = memory.held_bytes(kept[0][3], exclude=op._tensors(kept[0][1], kept[0][2]).values())
    assert 0 < one < 2**24
    records = kept[0][3].records
    assert one >= sum(r.x0.untyped_storage().nbytes() for r in records if r.layer.has_params)

    fresh = dc.hessian(model, loss, data, cache="forward")
    room = one * (len(data) - 1) / chain_products.KEPT_MEMORY_FRACTION
    monkeypatch.setattr(chain_products, "available_memory", lambda device: int(room * 0.9))
    with pytest.raises(ValueError, match=r"cache='forward'\) needs about .* per batch, .* for "
                       r"the 3 batches, but .* of cpu memory is available: keep the batches "
                       r"only \(cache=True\)"):  # fmt: skip
        fresh.matmat(V)
    assert fresh.__dict__["_kept_forwards"] == {}
    monkeypatch.setattr(chain_products, "available_memory", lambda device: int(room * 1.1))
    torch.testing.assert_close(fresh.matmat(V), op.matmat(V), rtol=0, atol=0)


def test_held_bytes_counts_each_storage_once_and_available_memory_is_real():
    from dataclasses import dataclass

    from deepcurvature.operators.memory import available_memory, held_bytes

    @dataclass
    class Holder:
        a: torch.Tensor
        rest: list

    base = torch.zeros(1000, dtype=DT)
    other = torch.ones(10, dtype=torch.float32)
    holder = Holder(base[:10], [base[500:], {"x": other, "y": (other.view(2, 5), None)}])
    assert held_bytes(holder) == 8000 + 40
    assert held_bytes(holder, exclude=[other]) == 8000
    have = available_memory(torch.device("cpu"))
    physical = __import__("os").sysconf("SC_PAGE_SIZE") * __import__("os").sysconf("SC_PHYS_PAGES")
    assert have is not None and 0 < have <= physical


def test_the_cache_values_read_as_the_command_line_options():
    from deepcurvature.cli.failures import failure_line

    line = failure_line(
        "spectrum", ValueError("keep (cache=True) or (cache=False), cache='forward'")
    )
    assert "(--cache data) or (--cache none), --cache forward" in line


def test_the_cache_argument_is_checked():
    model, data, loss = cnn_case()
    with pytest.raises(ValueError, match="cache must be False, True .* or 'forward'"):
        dc.hessian(model, loss, data, cache="activations")


@pytest.mark.parametrize("matrix", ["hessian", "ggn", "fisher"])
def test_products_run_under_a_flop_counter(matrix, monkeypatch):
    """``FlopCounterMode`` (global module hooks) neither breaks nor changes a product.

    Its hooks put gradient hooks on every module's output, which fail inside ``torch.func``
    transforms: the chain route's pullbacks of parameter-free modules and the Fisher's output
    gradient call modules without hooks.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model, data, _ = cnn_case()
    loss = nn.CrossEntropyLoss()
    V = columns(sum(p.numel() for p in model.parameters()), 3)
    for enabled in (True, False):
        monkeypatch.setattr(chain_products, "ENABLED", enabled)
        op = MATRICES[matrix](model, loss, data)
        for k in (1, 3):
            reference = op.matmat(V[:, :k])
            with FlopCounterMode(display=False) as counter:
                counted = op.matmat(V[:, :k])
            assert op.product_route == ("chain" if enabled else "autograd")
            assert counter.get_total_flops() > 0
            torch.testing.assert_close(counted, reference, rtol=0, atol=0)


def test_a_loss_without_closed_form_runs_under_a_flop_counter():
    """A loss module without a closed-form output Hessian (``HuberLoss``: ``torch.func``)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT)
    x, y = torch.randn(10, 4, dtype=DT), torch.randn(10, 2, dtype=DT)
    for build in (dc.ggn, dc.fisher):
        op = build(model, nn.HuberLoss(delta=0.5), [(x, y)])
        V = columns(op.shape[0], 2)
        reference = op.matmat(V)
        with FlopCounterMode(display=False) as counter:
            counted = op.matmat(V)
        assert counter.get_total_flops() > 0
        torch.testing.assert_close(counted, reference, rtol=0, atol=0)


@pytest.mark.parametrize("matrix", ["hessian", "ggn"])
@pytest.mark.parametrize("case", ["cnn", "overlapping-pools", "conv1d", "custom-loss"])
def test_columns_taken_in_chunks_give_the_same_products(case, matrix, monkeypatch):
    """A pass's columns in chunks of 2, 2 and 1 (as a large model's are): each chunk spreads
    its cotangents back through the pools into the batch's kept zeros (disjoint windows) or
    fresh ones (overlapping windows), and adds a convolution's bias at the pooled positions."""
    model, data, loss = CASES[case]()
    chunks = []

    def two(records, out, k, chunk_bytes):
        chunks.append(k)
        return 2

    monkeypatch.setattr(chain_products, "chunk_columns", two)

    def build():
        return MATRICES[matrix](model, loss, data)

    V = columns(build().shape[0], 5, seed=5)
    (chain, route), (reference, _) = both_routes(monkeypatch, build, V)
    assert route == "chain" and chunks and set(chunks) == {5}
    torch.testing.assert_close(chain, reference, rtol=1e-10, atol=1e-12 * reference.abs().max())


def test_which_pools_have_disjoint_windows():
    """Disjoint windows (each position taken at most once) keep the spreading's zeros."""
    from deepcurvature.operators.chain_backward import disjoint_windows

    expected = {
        "cnn": [True],  # MaxPool2d(2)
        "overlapping-pools": [False, True],  # MaxPool2d(3, stride=1), MaxPool2d(2, ceil_mode)
        "conv1d": [False],  # AdaptiveMaxPool1d(3) of 5 positions
        "custom-loss": [True],  # AdaptiveMaxPool2d(1)
    }
    for case, disjoint in expected.items():
        model, data, _ = CASES[case]()
        pools, records = _pool_records(model, data)
        producers = {id(r.gather): r for r in records if r.gather is not None}
        got = []
        for pool in pools:
            like = producers[id(pool)].y0 if id(pool) in producers else pool.x0
            got.append(disjoint_windows(pool, like))
        assert got == disjoint, case


def test_the_patches_are_torchs_unfold():
    """``conv_unfold`` (strided windows, one copy) equals ``F.unfold`` bit for bit, for every
    kernel, stride, padding and dilation, 2-D and 1-D, and ``conv(x, W) = W @ patches``."""
    import itertools

    from deepcurvature.operators.chain import conv_unfold

    g = torch.Generator().manual_seed(0)
    grid = itertools.product([1, 2, 3, (2, 3)], [1, 2, (1, 2)], [0, 1, (2, 1)], [1, 2, (1, 2)])
    for k, s, p, d in grid:
        m = nn.Conv2d(3, 4, k, stride=s, padding=p, dilation=d).to(DT)
        x = torch.randn(2, 3, 9, 8, generator=g, dtype=DT)
        ref = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        assert torch.equal(conv_unfold(m, x), ref), (k, s, p, d)
        if not all(isinstance(v, int) for v in (k, s, p, d)):
            continue
        m1 = nn.Conv1d(3, 4, k, stride=s, padding=p, dilation=d).to(DT)
        x1 = torch.randn(2, 3, 11, generator=g, dtype=DT)
        y = m1.weight.reshape(4, -1) @ conv_unfold(m1, x1) + m1.bias[:, None]
        torch.testing.assert_close(y.reshape(2, 4, -1), m1(x1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("graph", [True, False])
def test_the_recorded_pass_keeps_the_default_layout(graph):
    """The first convolution's output feeds its max pooling in the channels-last layout (no
    copy of it), but what the records keep for the columns is in the default layout, and the
    pooled positions and values are those of the default layout's pass (the positions of the
    convolution's output times the sign of batch norm's scale, see the test above)."""
    from deepcurvature.operators.chain import chain_layers
    from deepcurvature.operators.chain_forward import record_forward

    model, data, _ = cnn_case()
    layers = chain_layers(model, "eval")
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    x = data[0][0]
    records, out = record_forward(layers, tensors, dict(model.named_parameters()), x, graph)
    conv, pool = records[0], records[0].gather
    assert conv.y0.is_contiguous(memory_format=torch.channels_last)
    assert not conv.y0.is_contiguous()
    kept = [t for r in records for t in (r.x0, r.index, r.d1, r.x_hat, r.patches) if t is not None]
    assert len(kept) > len(records) and all(t.is_contiguous() for t in kept)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)
        sign = torch.sign(model[1].weight).reshape(-1, 1, 1)
        _, index = F.max_pool2d(model[0](x) * sign, 2, return_indices=True)
        values = F.max_pool2d(model[2](model[1](model[0](x))), 2)
    assert torch.equal(pool.index, index)
    torch.testing.assert_close(pool.y0, values, rtol=1e-12, atol=1e-12)
    assert pool.y0.requires_grad == graph
