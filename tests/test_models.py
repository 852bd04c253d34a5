"""Model registry: every architecture runs, has the published parameter count, and works with
torch.func forward-mode AD."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp

import deepcurvature as dc
from deepcurvature.models import registry as model_registry
from deepcurvature.operators import chain_products

# Small configurations for the generic families, whose defaults duplicate a named big model.
GENERIC_KWARGS = {
    "VGG": {"depth": 11},
    "PreResNet": {"depth": 20},
    "WideResNet": {"depth": 10, "widen_factor": 2},
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name, **kwargs):
    # Parameters on the meta device: no memory, no initialisation cost, exact counts.
    with torch.device("meta"):
        return dc.get_model(name, **kwargs)


def test_list_models_has_the_paper_architectures():
    names = {n.lower() for n in dc.list_models()}
    for required in [
        "mlp", "cnn", "vgg11", "vgg11bn", "vgg16", "vgg16bn", "vgg19", "vgg19bn",
        "preresnet8", "preresnet56", "preresnet110", "preresnet164",
        "wideresnet28x10", "resnet18", "allcnn",
    ]:  # fmt: skip
        assert required in names


@pytest.mark.parametrize("name", dc.list_models())
def test_forward_backward_on_cifar_shapes(name):
    """Every registered model maps a tiny CIFAR batch (2, 3, 32, 32) to (2, num_classes) logits
    and back-propagates finite gradients into every parameter."""
    torch.manual_seed(0)
    model = dc.get_model(name, num_classes=7, in_channels=3, input_size=32,
                         **GENERIC_KWARGS.get(name, {}))  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", dc.list_models())
def test_single_channel_digits_shapes(name):
    """digits shapes (1x8x8) work for every model: pools that would shrink the map below 1x1
    are skipped."""
    model = dc.get_model(name, num_classes=10, in_channels=1, input_size=8,
                         **GENERIC_KWARGS.get(name, {}))  # fmt: skip
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "cnn", "VGG16BN", "PreResNet8", "ResNet18", "AllCNN"])
def test_mnist_shapes(name):
    model = dc.get_model(name, num_classes=3, in_channels=1, input_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28)).shape == (1, 3)


def vgg_count(cfg, in_channels, num_classes, batch_norm):
    total, c = 0, in_channels
    for item in cfg:
        if item == "M":
            continue
        total += 9 * c * item + item + (2 * item if batch_norm else 0)
        c = item
    return total + (512 * 512 + 512) * 2 + 512 * num_classes + num_classes


def test_vgg16_cifar100_has_the_papers_parameter_count():
    # Section 7.1: "a 16-layer VGG network, comprising of P = 15,291,300 parameters".
    model = build_on_meta("VGG16", num_classes=100)
    assert n_params(model) == 15_291_300
    assert dc.count_parameters(model) == 15_291_300
    cfg16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"] + [512, 512, 512, "M"] * 2
    assert vgg_count(cfg16, 3, 100, False) == 15_291_300
    assert n_params(build_on_meta("VGG16BN", num_classes=100)) == vgg_count(cfg16, 3, 100, True)
    cfg11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    assert n_params(build_on_meta("vgg11", num_classes=10)) == vgg_count(cfg11, 3, 10, False)


def test_residual_network_counts_match_published_figures():
    # PreResNet-110 (He et al. 2016, "Identity Mappings in Deep Residual Networks", Table 3:
    # 1.7M parameters; basic blocks, 18 per stage, 1x1 projection shortcuts): exact count.
    p110 = n_params(build_on_meta("PreResNet110", num_classes=10))
    assert p110 == 1_730_522
    # Stem + 3 stages of basic blocks + final BN + head, counted by hand.
    blocks = 0
    c = 16
    for planes in (16, 32, 64):
        for _ in range(18):
            blocks += 2 * c + 9 * c * planes + 2 * planes + 9 * planes * planes
            if c != planes:
                blocks += c * planes  # 1x1 projection shortcut
            c = planes
    assert p110 == 9 * 3 * 16 + blocks + 2 * 64 + 64 * 10 + 10
    # PreResNet-164 (bottleneck, same paper: 1.7M).
    assert n_params(build_on_meta("PreResNet164", num_classes=10)) == 1_703_258
    # ResNet-18 for CIFAR: 11.2M (11,173,962 with the 3x3 stem and no max-pool).
    assert n_params(build_on_meta("ResNet18", num_classes=10)) == 11_173_962
    # WRN-28-10 (Zagoruyko & Komodakis 2016, Table: 36.5M).
    wrn = n_params(build_on_meta("WideResNet28x10", num_classes=10))
    assert wrn == 36_479_194
    assert abs(wrn - 36.5e6) / 36.5e6 < 0.005
    # All-CNN-C (Springenberg et al. 2015: 1.4M).
    assert n_params(build_on_meta("AllCNN", num_classes=10)) == 1_369_738


def test_small_models_sizes():
    # MLP on digits (64 inputs): 64*64+64 + 64*64+64 + 64*10+10.
    mlp = dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8)
    assert n_params(mlp) == 8970
    mlp2 = dc.get_model("mlp", num_classes=3, in_channels=1, input_size=(4, 5), hidden=(7,),
                        activation="tanh")  # fmt: skip
    assert n_params(mlp2) == 20 * 7 + 7 + 7 * 3 + 3
    assert any(isinstance(m, nn.Tanh) for m in mlp2.modules())
    assert n_params(dc.get_model("logistic", num_classes=10, in_channels=1, input_size=8)) == 650
    # The small CNN: ~100k parameters at 3x32x32, with batch norm.
    cnn = dc.get_model("cnn", num_classes=10)
    assert n_params(cnn) == 94_762
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules()) == 3
    w = 8
    expected = 27 * w + 2 * w + 9 * w * 2 * w + 4 * w + 9 * 2 * w * 4 * w + 8 * w + 4 * w * 5 + 5
    assert n_params(dc.get_model("cnn", num_classes=5, width=w)) == expected


def test_pools_are_skipped_only_when_the_map_is_too_small():
    def pools(size):
        m = dc.get_model("vgg16", num_classes=10, in_channels=1, input_size=size)
        return sum(isinstance(x, nn.MaxPool2d) for x in m.modules())

    assert pools(32) == 5
    assert pools(28) == 4  # 28 -> 14 -> 7 -> 3 -> 1
    assert pools(8) == 3  # 8 -> 4 -> 2 -> 1


def test_allcnn_averages_over_6x6_maps_on_cifar():
    model = dc.get_model("allcnn", num_classes=10).eval()
    with torch.no_grad():
        fmap = model.features(torch.randn(1, 3, 32, 32))
    assert fmap.shape == (1, 10, 6, 6)  # "global averaging over 6x6 spatial dimensions"


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("VGG16", "vgg16"), ("vgg-16", "vgg16"), ("VGG16BN", "vgg16bn"), ("vgg16_bn", "vgg16bn"),
        ("PreResNet110", "preresnet110"), ("preresnet-110", "preresnet110"),
        ("WideResNet28x10", "wideresnet28x10"), ("WRN-28-10", "wideresnet28x10"),
        ("ResNet-18", "resnet18"), ("All-CNN-C", "allcnn"), ("MLP", "mlp"),
    ],
)  # fmt: skip
def test_names_are_case_insensitive_and_accept_paper_spellings(alias, canonical):
    a = build_on_meta(alias, num_classes=10)
    b = build_on_meta(canonical, num_classes=10)
    assert type(a) is type(b)
    assert n_params(a) == n_params(b)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'vgg17'") as err:
        dc.get_model("vgg17", num_classes=10)
    assert "VGG16" in str(err.value) and "PreResNet110" in str(err.value)


def test_bad_arguments_are_explained():
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['widht'\]"):
        dc.get_model("cnn", num_classes=10, widht=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        dc.get_model("mlp", num_classes=0)
    with pytest.raises(ValueError, match="unknown activation"):
        dc.get_model("mlp", num_classes=2, activation="swish2")
    with pytest.raises(ValueError, match="depth = 6n"):
        dc.get_model("preresnet", num_classes=2, depth=111)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        dc.get_model("wideresnet", num_classes=2, depth=27)


def test_module_is_returned_unchanged():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert dc.get_model(net, num_classes=2) is net
    with pytest.raises(TypeError, match="existing nn.Module"):
        dc.get_model(net, num_classes=2, hidden=(3,))


def test_register_model_adds_a_user_factory():
    @dc.register_model("TestTinyNet", aliases=("tiny-net",))
    def tiny(num_classes, in_channels, input_size, scale=1):
        h, w = input_size
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, num_classes * scale))

    try:
        assert "TestTinyNet" in dc.list_models()
        m = dc.get_model("TINY_NET", num_classes=3, in_channels=2, input_size=(3, 4), scale=2)
        assert m(torch.randn(5, 2, 3, 4)).shape == (5, 6)
        with pytest.raises(ValueError, match="already registered"):
            dc.register_model("testtinynet")(tiny)
        assert dc.model_info("tiny-net")["kwargs"] == {"scale": 1}
    finally:
        model_registry._REGISTRY.pop("testtinynet")
        model_registry._ALIASES.pop("testtinynet")
        model_registry._ALIASES.pop("tinynet")


def test_seeded_construction_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = dc.get_model("cnn", num_classes=10, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = dc.get_model("cnn", num_classes=10, seed=7)
    c = dc.get_model("cnn", num_classes=10, seed=8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


@pytest.mark.parametrize("name", ["mlp", "cnn", "preresnet8", "allcnn"])
def test_functional_call_jvp_matches_reverse_mode_jacobian(name):
    """torch.func forward-mode AD through the model equals the reverse-mode Jacobian contracted
    with the tangent, and a central finite difference (float64)."""
    torch.manual_seed(0)
    model = dc.get_model(name, num_classes=4, in_channels=1, input_size=8, **(
        {"width": 8} if name in ("cnn", "allcnn") else {})).double().eval()  # fmt: skip
    if name == "cnn":
        # Non-trivial running statistics, so eval-mode BN is not the identity.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)

    def f(p):
        return functional_call(model, (p, buffers), (x,))

    out, jv = jvp(f, (params,), (tangent,))
    assert jv.shape == (3, 4)
    jac = jacrev(f)(params)
    ref = sum((jac[k] * tangent[k]).flatten(2).sum(-1) for k in params)
    torch.testing.assert_close(jv, ref, rtol=1e-10, atol=1e-10)
    eps = 1e-6
    plus = f({k: v + eps * tangent[k] for k, v in params.items()})
    minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    torch.testing.assert_close(jv, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, model(x))


def test_jvp_through_batchnorm_in_training_mode():
    """In training mode BN updates its running statistics in place, which torch.func refuses;
    replace_all_batch_norm_modules_ (no running statistics) makes forward-mode AD work, with
    batch statistics exactly as in training mode."""
    torch.manual_seed(0)
    model = dc.get_model("cnn", num_classes=4, in_channels=1, input_size=8, width=4).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    expected = model(x)
    torch.func.replace_all_batch_norm_modules_(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    out, jv = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tangent,))
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(jv).all() and jv.abs().sum() > 0


CHAIN_MODELS = {  # registry models that are nn.Sequential chains, at small sizes
    "mlp": {"hidden": (6, 5), "activation": "tanh"},
    "cnn": {"width": 3, "blocks": 2},
    "AllCNN": {"width": 2, "batch_norm": True},
    "VGG11BN": {},
}


@pytest.mark.parametrize("name", sorted(CHAIN_MODELS))
def test_registry_chains_take_the_chain_route_with_the_same_products(name):
    """MLP, CNN, All-CNN and VGG are ``nn.Sequential`` chains: their curvature products take
    the layer-by-layer route and equal autograd's (float64, Hessian and GGN, eval batch norm
    with non-trivial running statistics)."""
    torch.manual_seed(0)
    model = dc.get_model(name, num_classes=4, in_channels=2, input_size=(8, 8),
                         **CHAIN_MODELS[name]).double()  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    for build in (dc.hessian, dc.ggn):
        op = build(model, nn.CrossEntropyLoss(), data)
        assert op.product_route == "chain"
        # 4 columns: the GGN of a chain without max pooling (All-CNN) takes the chain route from
        # chain_products.OUTPUT_SPACE_MIN_COLUMNS columns
        V = torch.randn(op.shape[0], 4, dtype=torch.float64)
        hessian = isinstance(op, dc.HessianOperator)
        assert chain_products.min_columns(chain_products.chain_of(op), hessian) <= V.shape[1]
        got = op.matmat(V)
        op.chain_route = False
        assert op.product_route == "autograd"
        want = op.matmat(V)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10 * want.abs().max())


def test_chain_models_keep_their_parameter_names():
    """Checkpoints of these models (state dicts) load as before they became ``nn.Sequential``."""
    kw = {"num_classes": 3, "in_channels": 1, "input_size": (8, 8)}
    assert list(dc.get_model("mlp", hidden=(4,), **kw).state_dict()) == [
        "net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias",
    ]  # fmt: skip
    cnn = list(dc.get_model("cnn", width=2, blocks=1, **kw).state_dict())
    assert cnn[:3] == ["features.0.weight", "features.1.weight", "features.1.bias"]
    assert cnn[-2:] == ["classifier.weight", "classifier.bias"]
    vgg = list(dc.get_model("VGG11", **kw).state_dict())
    assert vgg[0] == "features.0.weight" and vgg[-1] == "classifier.6.bias"
    allcnn = list(dc.get_model("AllCNN", **kw).state_dict())
    assert allcnn[0] == "features.1.weight" and allcnn[-1] == "features.19.bias"


def test_a_sequential_subclass_with_its_own_forward_is_not_a_chain():
    from deepcurvature.operators.chain import chain_layers

    class Doubled(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    model = Doubled(nn.Linear(3, 2))
    assert chain_layers(model, "eval") is None
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    op = dc.hessian(model.double(), nn.CrossEntropyLoss(), [(x, y)])
    assert op.product_route == "autograd"
    exact = torch.func.hessian(
        lambda w: nn.functional.cross_entropy(2 * (x @ w.reshape(2, 3).T + model[0].bias), y)
    )(model[0].weight.detach().flatten())
    torch.testing.assert_close(op.to_dense()[:6, :6], exact)
