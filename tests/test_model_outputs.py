"""Models whose output is a dict and batches that are dicts (HuggingFace style), issue 16 §3.

A custom loss gets the model's output unchanged; the built-in losses (and the GGN/Fisher) use its
``logits``; ``targets="labels"`` takes the targets out of dict batches. Every product is checked
against a dense float64 reference (``torch.func`` over the flattened parameters).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

import deepcurvature as dc

DT = torch.float64
VOCAB, T, D, C = 11, 5, 4, 3


class TinyEncoder(nn.Module):
    """Embedding, masked mean pooling, a tanh layer and a linear head; returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.mix = nn.Linear(D, D)
        self.head = nn.Linear(D, C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        h = torch.tanh(self.mix(self.embed(input_ids)))  # (B, T, D)
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * m).sum(1) / m.sum(1)
        return {"logits": self.head(pooled), "pooled": pooled}


def custom_loss(o: dict, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(o["logits"], y)


def make_case(n: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    model = TinyEncoder().to(DT)
    ids = torch.randint(0, VOCAB, (n, T))
    mask = torch.ones(n, T)
    mask[::2, -2:] = 0  # padded sequences
    labels = torch.randint(0, C, (n,))
    return model, ids, mask, labels


def dict_batches(ids, mask, labels, size: int = 4) -> list[dict]:
    return [
        {
            "input_ids": ids[i : i + size],
            "attention_mask": mask[i : i + size],
            "labels": labels[i : i + size],
        }
        for i in range(0, len(labels), size)
    ]


def pair_batches(ids, mask, labels, size: int = 4) -> list[tuple]:
    return [
        (
            {"input_ids": ids[i : i + size], "attention_mask": mask[i : i + size]},
            labels[i : i + size],
        )
        for i in range(0, len(labels), size)
    ]


class Reference:
    """Dense curvature matrices of the mean cross-entropy over the flattened parameters."""

    def __init__(self, model: nn.Module, ids, mask, labels) -> None:
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        self.model, self.ids, self.mask, self.labels = model, ids, mask.to(DT), labels

    def params(self, theta: torch.Tensor) -> dict:
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            k = shape.numel()
            out[name] = theta[i : i + k].reshape(shape)
            i += k
        return out

    def logits(self, theta, ids=None, mask=None) -> torch.Tensor:
        ids = self.ids if ids is None else ids
        mask = self.mask if mask is None else mask
        kwargs = {"input_ids": ids, "attention_mask": mask}
        return functional_call(self.model, self.params(theta), (), kwargs)["logits"]

    def loss(self, theta) -> torch.Tensor:
        return F.cross_entropy(self.logits(theta), self.labels)

    def hessian(self) -> torch.Tensor:
        return hessian(self.loss)(self.theta)

    def ggn(self) -> torch.Tensor:
        J = jacrev(self.logits)(self.theta)  # (N, C, P)
        p = torch.softmax(self.logits(self.theta), -1)
        H = (torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)) / len(self.labels)
        return torch.einsum("ncp,ncd,ndq->pq", J, H, J)

    def empirical_fisher(self) -> torch.Tensor:
        def sample_loss(theta, i):
            f = self.logits(theta, self.ids[i : i + 1], self.mask[i : i + 1])
            return F.cross_entropy(f, self.labels[i : i + 1])

        G = torch.stack(
            [torch.func.grad(sample_loss)(self.theta, i) for i in range(len(self.labels))]
        )
        return G.T @ G / len(self.labels)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_custom_loss_of_a_dict_output_gets_the_output_unchanged():
    model, ids, mask, labels = make_case()
    ref = Reference(model, ids, mask, labels)
    dense = ref.hessian()
    for engine in ("reverse", "forward"):
        H = dc.hessian(model, custom_loss, pair_batches(ids, mask, labels), engine=engine)
        assert max_err(H.to_dense(), dense) < 1e-10
    v = torch.randn(H.num_params, dtype=DT)
    assert max_err(H.matvec(v), dense @ v) < 1e-10
    assert abs(H.loss() - float(ref.loss(ref.theta))) < 1e-12
    g = torch.func.grad(ref.loss)(ref.theta)
    assert max_err(H.gradient(), g) < 1e-12


def test_dict_batches_with_targets_key_hessian():
    model, ids, mask, labels = make_case()
    ref = Reference(model, ids, mask, labels)
    dense = ref.hessian()
    data = dict_batches(ids, mask, labels)
    H = dc.hessian(model, custom_loss, data, targets="labels")
    assert H.num_samples == 10
    assert H.metadata["targets_key"] == "labels"
    assert max_err(H.to_dense(), dense) < 1e-10
    # a built-in loss is applied to the output's logits
    H_ce = dc.hessian(model, nn.CrossEntropyLoss(), data, targets="labels")
    assert max_err(H_ce.to_dense(), dense) < 1e-10


def test_dict_batches_with_targets_key_ggn_and_fisher():
    model, ids, mask, labels = make_case()
    ref = Reference(model, ids, mask, labels)
    data = dict_batches(ids, mask, labels)
    G = dc.ggn(model, nn.CrossEntropyLoss(), data, targets="labels")
    assert max_err(G.to_dense(), ref.ggn()) < 1e-10
    Fe = dc.fisher(model, F.cross_entropy, data, targets="labels")
    assert max_err(Fe.to_dense(), ref.empirical_fisher()) < 1e-10
    Fmc = dc.fisher(model, nn.CrossEntropyLoss(), data, kind="mc", seed=0, targets="labels")
    v = torch.randn(Fmc.num_params, dtype=DT)
    assert torch.isfinite(Fmc.matvec(v)).all()


def test_unsupported_combinations_raise_one_clear_error():
    model, ids, mask, labels = make_case()
    data = dict_batches(ids, mask, labels)
    pairs = pair_batches(ids, mask, labels)
    v = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=DT)
    # the GGN/Fisher need the loss of a tensor output
    with pytest.raises(TypeError, match="need the loss as a function of a tensor output"):
        dc.ggn(model, custom_loss, pairs).matvec(v)
    with pytest.raises(TypeError, match="need the loss as a function of a tensor output"):
        dc.fisher(model, custom_loss, data, targets="labels").matvec(v)
    # dict batches without targets=
    with pytest.raises(TypeError, match="targets='labels'"):
        dc.hessian(model, custom_loss, data).matvec(v)
    # a missing key, or targets= with pair batches
    with pytest.raises(KeyError, match="no key 'label'"):
        dc.hessian(model, custom_loss, data, targets="label").matvec(v)
    with pytest.raises(TypeError, match="expects each batch to be a dict"):
        dc.hessian(model, custom_loss, pairs, targets="labels").matvec(v)
    with pytest.raises(TypeError, match="targets must be None or the key"):
        dc.hessian(model, custom_loss, data, targets=1)

    # a built-in loss of an output without logits
    class NoLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, **kw):
            return {"scores": self.inner(**kw)["logits"]}

    with pytest.raises(TypeError, match=r"returned a dict with keys \['scores'\] on batch 0"):
        dc.hessian(NoLogits(), nn.CrossEntropyLoss(), data, targets="labels").matvec(v)
    with pytest.raises(TypeError, match=r"returned a dict with keys \['scores'\]"):
        dc.ggn(NoLogits(), nn.CrossEntropyLoss(), data, targets="labels").matvec(v)


def test_model_output_object_with_logits_attribute():
    """A HuggingFace-style output object: attribute access for the user, .logits for built-ins."""

    class Output(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return Output(self.inner(**kw))

    model, ids, mask, labels = make_case()
    ref = Reference(model, ids, mask, labels)
    data = dict_batches(ids, mask, labels)
    H = dc.hessian(
        Wrapped(model), lambda o, y: F.cross_entropy(o.logits, y), data, targets="labels"
    )
    assert max_err(H.to_dense(), ref.hessian()) < 1e-10
    G = dc.ggn(Wrapped(model), nn.CrossEntropyLoss(), data, targets="labels")
    assert max_err(G.to_dense(), ref.ggn()) < 1e-10


def test_spectrum_records_peak_memory_per_step(tmp_path):
    """Issue 16 §4: peak memory per Lanczos step (a high-water mark) in info and summary."""
    model, ids, mask, labels = make_case()
    H = dc.hessian(model, custom_loss, dict_batches(ids, mask, labels), targets="labels")
    res = dc.lanczos(H, 4, seed=0, verbose=False)
    assert len(res.step_memory) == 4 and res.memory_kind == "host_max_rss"
    assert all(m > 0 for m in res.step_memory)
    assert res.step_memory == sorted(res.step_memory)  # a high-water mark never decreases
    spec = dc.spectrum(H, steps=4, seed=0, verbose=False)
    assert len(spec.info["peak_memory_per_step"]) == 4
    assert spec.info["peak_memory_bytes"] > 0 and spec.info["memory_kind"] == "host_max_rss"
    assert spec.summary()["peak_memory_mb"] > 0
    back = dc.SpectrumResult.load(spec.save(tmp_path / "spec"))
    assert back.info["peak_memory_bytes"] == spec.info["peak_memory_bytes"]


class LogitsOnly(nn.Module):
    """The same module returning its logits tensor, for pair batches ``(inputs, labels)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)["logits"]


def _same_values(a: dict, b: dict, tol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if x is None or y is None:
            assert x is None and y is None, key
            continue
        x, y = torch.as_tensor(x, dtype=DT), torch.as_tensor(y, dtype=DT)
        assert torch.equal(torch.isnan(x), torch.isnan(y)), key
        ok = ~torch.isnan(x)
        if ok.any():
            assert float((x[ok] - y[ok]).abs().max()) < tol, key


@pytest.mark.parametrize("matrix", ["hessian", "ggn"])
def test_loss_stats_with_dict_outputs_and_dict_batches(matrix):
    model, ids, mask, labels = make_case(n=12)
    test_ids, test_mask, test_labels = ids.flip(0), mask.flip(0), labels.roll(1)
    kw = {"matrix": matrix, "probes": 2, "seed": 3, "num_batches": 2, "verbose": False}
    loss = custom_loss if matrix == "hessian" else nn.CrossEntropyLoss()
    plain_loss = F.cross_entropy if matrix == "hessian" else nn.CrossEntropyLoss()
    got = dc.loss_stats(
        model,
        loss,
        dict_batches(ids, mask, labels),
        test_data=dict_batches(test_ids, test_mask, test_labels),
        targets="labels",
        **kw,
    )
    want = dc.loss_stats(
        LogitsOnly(model),
        plain_loss,
        pair_batches(ids, mask, labels),
        test_data=pair_batches(test_ids, test_mask, test_labels),
        **kw,
    )
    assert 0 <= got["accuracy"] <= 1 and 0 <= got["test_accuracy"] <= 1
    _same_values(got.values, want.values)
    for key in got.batches:
        _same_values({key: got.batches[key]}, {key: want.batches[key]})
    assert [n.removeprefix("inner.") for n in want.config["param_names"]] == got.config[
        "param_names"
    ]


def test_loss_landscape_with_dict_outputs_and_dict_batches():
    model, ids, mask, labels = make_case(n=12)
    test_ids, test_mask, test_labels = ids.flip(0), mask.flip(0), labels.roll(1)
    kw = {"directions": "gaussian:2", "dist": 0.5, "n_points": 5, "seed": 1, "verbose": False}
    results = []
    for loss in (custom_loss, nn.CrossEntropyLoss()):
        results.append(
            dc.loss_landscape(
                model,
                loss,
                dict_batches(ids, mask, labels),
                dict_batches(test_ids, test_mask, test_labels),
                targets="labels",
                **kw,
            )
        )
    want = dc.loss_landscape(
        LogitsOnly(model),
        F.cross_entropy,
        pair_batches(ids, mask, labels),
        pair_batches(test_ids, test_mask, test_labels),
        **kw,
    )
    for got in results:
        for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "quadratic"):
            g, w = getattr(got, name), getattr(want, name)
            assert g is not None and w is not None, name
            assert float(abs(torch.as_tensor(g) - torch.as_tensor(w)).max()) < 1e-12, name
        _same_values(got.origin, want.origin)
        assert float(abs(torch.as_tensor(got.slopes - want.slopes)).max()) < 1e-12
