import pytest
import torch
from torch import nn

from suptickets.models import MODEL_NAMES, build_model, forward_flops

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 100)]
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape,num_classes", SHAPES)
def test_forward_backward(name, shape, num_classes):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, num_classes)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(torch.randn(1, *shape)).shape == (1, num_classes)


@pytest.mark.parametrize("name,shape,num_classes,expected", [
    ("resnet32", (3, 32, 32), 10, 466_906),     # ~0.46M (+ option-B projection shortcuts)
    ("resnet50", (3, 32, 32), 100, 23_705_252),  # ~23.7M
    ("vgg19", (3, 32, 32), 10, 20_035_018),      # ~20.0M
    ("mlp", (1, 28, 28), 10, 784 * 300 + 300 * 100 + 100 * 10 + 10 + 2 * (300 + 100)),
])
def test_parameter_counts(name, shape, num_classes, expected):
    assert n_params(build_model(name, shape, num_classes)) == expected


def test_parameter_count_ranges():
    assert 450_000 <= n_params(build_model("resnet32", (3, 32, 32), 10)) <= 480_000
    assert 23.5e6 <= n_params(build_model("resnet50", (3, 32, 32), 100)) <= 23.9e6
    assert 19.9e6 <= n_params(build_model("vgg19", (3, 32, 32), 10)) <= 20.1e6


def test_model_options():
    wide = build_model("resnet32", (3, 32, 32), 10, width=2)
    assert wide.conv1.out_channels == 32 and wide.fc.in_features == 128
    mlp = build_model("mlp", (1, 28, 28), 10, hidden=[50], batch_norm=False)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 50), (50, 10)]
    assert all(m.bias is not None for m in linears)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in mlp.modules())
    bn_mlp = build_model("mlp", (1, 28, 28), 10)
    first, *_, last = [m for m in bn_mlp.modules() if isinstance(m, nn.Linear)]
    assert first.bias is None and last.bias is not None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_keys_are_plain(name):
    model = build_model(name, (3, 32, 32), 10)
    params = {n for n, _ in model.named_parameters()}
    for key in model.state_dict():
        assert "mask" not in key
        if key not in params:
            assert key.rsplit(".", 1)[-1] in BN_BUFFERS, key
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert f"{module_name}.weight" in params


@pytest.mark.parametrize("name", ["mlp", "resnet32", "vgg19"])
def test_seed_determinism(name):
    def build(seed):
        torch.manual_seed(seed)
        return build_model(name, (3, 32, 32), 10).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_init():
    torch.manual_seed(0)
    model = build_model("resnet32", (3, 32, 32), 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    w = model.layer3[0].conv2.weight  # fan_out = 64 * 9 -> std = sqrt(2 / 576)
    assert abs(w.std().item() - (2 / 576) ** 0.5) < 0.1 * (2 / 576) ** 0.5


def test_unknown_name():
    with pytest.raises(ValueError, match="'lenet'") as err:
        build_model("lenet", (3, 32, 32), 10)
    assert "mlp, resnet20, resnet32, vgg19, resnet50" in str(err.value)


@pytest.mark.parametrize("name,option", [("mlp", "width"), ("resnet32", "hidden"),
                                         ("vgg19", "width"), ("resnet50", "depth")])
def test_unknown_option(name, option):
    with pytest.raises(ValueError, match=repr(option)):
        build_model(name, (3, 32, 32), 10, **{option: 1})


def test_bad_option_value():
    with pytest.raises(ValueError, match="width"):
        build_model("resnet32", (3, 32, 32), 10, width=0)
    for width in (0.3, -1, True, "2"):
        with pytest.raises(ValueError, match=r"model.width=.*: resnet20 must be a positive multiple of 1/16"):
            build_model("resnet20", (1, 28, 28), 10, width=width)


def test_resnet20_is_the_cifar_family_with_three_blocks_per_stage():
    model = build_model("resnet20", (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 3 * 3 * 2 + 2  # stem, 9 blocks of two 3x3 convs, 2 projection shortcuts
    assert n_params(model) == 272_186  # ~0.27M, as He et al. (2016) (+ option-B projections)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]
    half = build_model("resnet20", (1, 28, 28), 10, width=0.5)
    assert half.conv1.out_channels == 8 and half.fc.in_features == 32
    assert build_model("resnet32", (3, 32, 32), 10, width=2.0).conv1.out_channels == 32


MLP_FLOPS = 2 * (784 * 300 + 300 * 100 + 100 * 10)


def test_flops_mlp_dense():
    model = build_model("mlp", (1, 28, 28), 10)
    assert forward_flops(model, (1, 28, 28)) == MLP_FLOPS
    assert forward_flops(model, (1, 28, 28), masks={}) == MLP_FLOPS


def test_flops_mlp_half_masks():
    model = build_model("mlp", (1, 28, 28), 10)
    masks = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() == 2:
            mask = torch.zeros(p.numel())
            mask[: p.numel() // 2] = 1
            masks[name] = mask[torch.randperm(p.numel())].view_as(p)
    assert len(masks) == 3
    assert forward_flops(model, (1, 28, 28), masks) == MLP_FLOPS / 2
    # a layer left out of `masks` counts dense
    first = next(iter(masks))
    partial = {k: v for k, v in masks.items() if k != first}
    assert forward_flops(model, (1, 28, 28), partial) == MLP_FLOPS / 2 + 784 * 300


def test_flops_restores_state():
    model = build_model("resnet32", (3, 32, 32), 10)
    model.train()
    model.layer2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops = forward_flops(model, (3, 32, 32))
    assert flops > 0
    assert model.training and not model.layer2.training and model.layer3.training
    assert not model.layer2[0].bn1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_flops_resnet32_cifar():
    model = build_model("resnet32", (3, 32, 32), 10)
    assert abs(forward_flops(model, (3, 32, 32)) - 1.38e8) <= 0.1 * 1.38e8


@pytest.mark.parametrize("name", ["vgg19", "resnet50"])
def test_flops_conv_models(name):
    model = build_model(name, (1, 28, 28), 10)
    dense = forward_flops(model, (1, 28, 28))
    assert dense > 0
    masks = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.dim() == 4}
    # with every conv pruned only the classifier remains
    (linear,) = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert forward_flops(model, (1, 28, 28), masks) == 2 * linear.weight.numel()


def test_global_pooling_is_a_mean_over_h_and_w_with_torchvisions_keys():
    """The conv nets pool with a mean over H and W (deterministic backward on CUDA, unlike the
    adaptive pool's): the same function, and the ImageNet ResNet-50 keeps torchvision's keys."""
    import torch.nn.functional as F
    from torchvision.models import resnet50

    from suptickets.models import GlobalMean, global_mean

    x = torch.randn(3, 5, 7, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(global_mean(x), F.adaptive_avg_pool2d(x, 1).flatten(1), rtol=0, atol=1e-6)
    assert torch.allclose(GlobalMean()(x), F.adaptive_avg_pool2d(x, 1), rtol=0, atol=1e-6)
    ours = build_model("resnet50", (3, 32, 32), 10, stem="imagenet")
    assert isinstance(ours.avgpool, GlobalMean)
    assert list(ours.state_dict()) == list(resnet50(weights=None, num_classes=10).state_dict())
    modules = {type(m).__name__ for name in MODEL_NAMES for m in build_model(name, (3, 32, 32), 10).modules()}
    assert "AdaptiveAvgPool2d" not in modules


def test_every_model_built_here_is_listed_with_its_options_in_choices():
    """choices.MODEL_OPTIONS (what config.py validates) names exactly the models built here, and each
    takes the options listed: every one is accepted, any other refused."""
    from suptickets.choices import MODEL_OPTIONS
    from suptickets.models import BUILDERS

    assert set(BUILDERS) == set(MODEL_OPTIONS)
    accepted = {"hidden": [8], "batch_norm": True, "width": 1, "stem": "cifar"}
    for name, options in MODEL_OPTIONS.items():
        build_model(name, (3, 32, 32), 10, **{k: accepted[k] for k in options})
        with pytest.raises(ValueError, match="unknown option"):
            build_model(name, (3, 32, 32), 10, **{"depth": 3})
