"""Plain PyTorch architectures (MLP, CIFAR ResNet-20/32/50, VGG-19-BN) and a forward FLOP counter.

Models carry no masking machinery: sparse masks live outside and apply to the `weight` of every
nn.Conv2d / nn.Linear, so `state_dict()` keys are those of the bare architecture. All conv nets end
in global average pooling (a mean over H and W), so they accept any (C, H, W) input, e.g. 1x28x28 or 3x32x32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .choices import MODEL_NAMES, MODEL_OPTIONS, STEMS
from .errors import ConfigError

VGG19_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling as a mean over H and W, [N, C, H, W] -> [N, C]: the function of
    `adaptive_avg_pool2d(x, 1)`, but with a deterministic CUDA backward (the pool's is not)."""
    return x.mean(dim=(2, 3))


class GlobalMean(nn.Module):
    """`global_mean` keeping the dims ([N, C, 1, 1]): a drop-in for torchvision's `avgpool`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out)]


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 conv + BN projection (option B) when the shape changes."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*conv_bn(c_in, c_out, 1, stride))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(c_in, planes, 3, stride)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.shortcut = shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1, self.bn1 = conv_bn(c_in, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)  # stride on the 3x3 (v1.5)
        self.conv3, self.bn3 = conv_bn(planes, c_out, 1)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, stages, global average pool, Linear."""

    def __init__(self, block: type[nn.Module], blocks: list[int], widths: list[int],
                 strides: list[int], in_channels: int, stem: int, num_classes: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, stem, 3)
        c_in, stages = stem, []
        for n, planes, stride in zip(blocks, widths, strides):
            layers = []
            for i in range(n):
                layers.append(block(c_in, planes, stride if i == 0 else 1))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        for i, stage in enumerate(stages, start=1):
            self.add_module(f"layer{i}", stage)
        self.stages = len(stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(global_mean(x))


class VGG(nn.Module):
    """VGG with BatchNorm; ceil-mode max-pools so inputs smaller than 32x32 still reach 1x1."""

    def __init__(self, config: list, in_channels: int, num_classes: int):
        super().__init__()
        layers, c_in = [], in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [*conv_bn(c_in, v, 3), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(global_mean(self.features(x)))


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int, batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers.append(nn.Linear(in_features, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def _mlp(shape, num_classes, hidden=(300, 100), batch_norm=True):
    hidden = [_positive_int("model.hidden", h) for h in hidden]
    return MLP(shape[0] * shape[1] * shape[2], hidden, num_classes, bool(batch_norm))


def _cifar_resnet(depth: int):
    """The CIFAR ResNet-(6n+2) of He et al. (2016): three stages of n basic blocks with 16·width,
    32·width and 64·width channels. `width` may be a fraction (0.25: 4/8/16 channels) as long as
    16·width is a whole number."""
    n = (depth - 2) // 6

    def build(shape, num_classes, width=1):
        base = 16 * width if isinstance(width, (int, float)) and not isinstance(width, bool) else 0
        if base < 1 or base != int(base):
            raise ConfigError(f"model.width={width!r}: resnet{depth} must be a positive multiple of 1/16 "
                             f"(16*width channels in the first stage)")
        b = int(base)
        return ResNet(BasicBlock, [n, n, n], [b, 2 * b, 4 * b], [1, 2, 2], shape[0], b, num_classes)
    return build


BUILDERS = {  # model.name -> builder(shape, num_classes, **options); the options each takes: choices.MODEL_OPTIONS
    "mlp": _mlp,
    "resnet20": _cifar_resnet(20),
    "resnet32": _cifar_resnet(32),
    "vgg19": lambda shape, k: VGG(VGG19_CONFIG, shape[0], k),
    "resnet50": lambda shape, k, stem="cifar": _resnet50(shape, k, stem),
}


def _resnet50(shape, num_classes, stem="cifar"):
    """stem=cifar: 3x3 stride-1 stem, no max-pool (the paper's CIFAR ResNet-50); stem=imagenet:
    torchvision's ImageNet ResNet-50 (7x7 stride-2 stem and max-pool)."""
    if stem == "imagenet":
        from torchvision.models import resnet50

        if shape[0] != 3:
            raise ConfigError(f"model.stem='imagenet' needs 3-channel images, got {shape[0]}")
        model = resnet50(weights=None, num_classes=num_classes)
        model.avgpool = GlobalMean()  # no parameters: the state_dict keys stay torchvision's
        return model
    if stem != "cifar":
        raise ConfigError(f"model.stem={stem!r} is not one of: {', '.join(STEMS)}")
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], [1, 2, 2, 2], shape[0], 64, num_classes)


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                **options) -> nn.Module:
    """Build a freshly initialised model; RNG use is torch's global generator only."""
    if name not in BUILDERS:
        raise ConfigError(f"model.name={name!r} is not one of: {', '.join(MODEL_NAMES)}")
    builder, allowed = BUILDERS[name], MODEL_OPTIONS[name]
    for key in options:
        if key not in allowed:
            raise ConfigError(f"unknown option {key!r} for model {name!r}; "
                             f"allowed: {', '.join(allowed) or '(none)'}")
    c, h, w = (int(s) for s in input_shape)
    model = builder((c, h, w), int(num_classes), **options)
    init_weights(model)
    return model


def layer_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, float]:
    """Dense FLOPs (2 * MACs) of one forward pass for one sample, per Conv2d / Linear weight, keyed by
    parameter name (e.g. "layer1.0.conv1.weight"); measured with forward hooks on a zero input."""
    found: dict[str, float] = {}

    def hook(name: str):
        def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
            key = f"{name}.weight" if name else "weight"
            found[key] = found.get(key, 0.0) + 2.0 * output.numel() * module.weight[0].numel()
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters(), None)
    kwargs = {} if param is None else {"device": param.device, "dtype": param.dtype}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, **kwargs))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return found


def sparse_flops(dense: dict[str, float], masks: dict[str, torch.Tensor] | None = None) -> float:
    """Forward FLOPs with each layer of `dense` (from `layer_flops`) scaled by the fraction of nonzero
    entries of its weight mask; layers without a mask count dense."""
    masks = masks or {}
    total = 0.0
    for name, flops in dense.items():
        mask = masks.get(name)
        total += flops if mask is None else flops * float(mask.count_nonzero()) / mask.numel()
    return total


def forward_flops(model: nn.Module, input_shape: tuple[int, int, int],
                  masks: dict[str, torch.Tensor] | None = None) -> float:
    """FLOPs (2 * MACs) of one forward pass for one sample, Conv2d and Linear layers only.

    With `masks`, each layer's cost is scaled by the fraction of nonzero entries in its weight
    mask (keyed by parameter name, e.g. "layer1.0.conv1.weight"); layers without a mask are dense.
    """
    return sparse_flops(layer_flops(model, input_shape), masks)
