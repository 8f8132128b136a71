"""ResNet-50, MobileNetV2 and SqueezeNet 1.0 from examples/ equal hand-written references.

Each reference below is plain ``torch.nn``, laid out as torchvision lays the network out
(written here: torchvision is not a dependency). The generated module gets the
reference's weights, entry by entry in ``state_dict`` order (the names differ, the order
and every shape agree), and must then compute the same logits and the same gradients
with respect to the input and to every parameter, in eval mode (running statistics) and
in train mode (batch statistics, running statistics updated alike, dropout with one
seed), at two image sizes from one compiled module: its inputs are declared
``[3, H, W]``, sizes bound when the module is called.
"""

from __future__ import annotations

from pathlib import Path

import machc
import pytest
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SIZES = (64, 97)  # small enough for CPUs; odd and even sizes occur inside
DOUBLE = torch.float64

# --- ResNet-50 (He et al. 2015), torchvision's "v1.5": the stride on the 3×3 conv ---------


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class RefResNet50(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, stages = 64, []
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = [RefBottleneck(cin, width, stride)]
            cin = width * RefBottleneck.expansion
            layers += [RefBottleneck(cin, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * RefBottleneck.expansion, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- MobileNetV2 (Sandler et al. 2018), width 1.0 ------------------------------------------


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class RefInvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if t == 1 else [conv_bn_relu6(cin, hidden, 1)]
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # linear bottleneck
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class RefMobileNetV2(nn.Module):
    SETTING = (  # t, c, n, s: the paper's table 2
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        cin = 32
        features = [conv_bn_relu6(3, cin, 3, stride=2)]
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(RefInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --- SqueezeNet 1.0 (Iandola et al. 2016) --------------------------------------------------


class RefFire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class RefSqueezeNet10(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            RefFire(96, 16, 64, 64),
            RefFire(128, 16, 64, 64),
            RefFire(128, 32, 128, 128),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            RefFire(256, 32, 128, 128),
            RefFire(256, 48, 192, 192),
            RefFire(384, 48, 192, 192),
            RefFire(384, 64, 256, 256),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            RefFire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Conv2d(512, classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# --- the comparison ------------------------------------------------------------------------

# file, machine, reference, published parameter count
NETWORKS = {
    "resnet50": ("resnet50.mach", "ResNet50", RefResNet50, 25_557_032),
    "mobilenet_v2": ("mobilenet_v2.mach", "MobileNetV2", RefMobileNetV2, 3_504_872),
    "squeezenet": ("squeezenet.mach", "SqueezeNet", RefSqueezeNet10, 1_248_424),
}


def generated(name: str) -> nn.Module:
    file, machine, _, _ = NETWORKS[name]
    return getattr(machc.load(EXAMPLES / file), machine)()


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def copy_weights(reference: nn.Module, model: nn.Module) -> list[tuple[str, str]]:
    """The reference's state into the model, entry by entry in registration order.

    Returns the pairs of names. Every entry must agree in kind (weight, bias, running
    statistics) and in shape, and parameters must map onto parameters.
    """
    theirs, mine = reference.state_dict(), model.state_dict()
    assert len(theirs) == len(mine)
    pairs = list(zip(theirs, mine, strict=True))
    for ref_name, name in pairs:
        assert ref_name.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1], (ref_name, name)
        assert theirs[ref_name].shape == mine[name].shape, (ref_name, name)
    ref_params = dict(reference.named_parameters())
    params = dict(model.named_parameters())
    assert [params.get(name) is None for _, name in pairs] == [
        ref_params.get(ref_name) is None for ref_name, _ in pairs
    ]
    model.load_state_dict({name: theirs[ref_name] for ref_name, name in pairs})
    return pairs


def randomise_batchnorm(reference: nn.Module) -> None:
    """Running statistics away from 0 and 1, so that eval mode tests that they are used,
    and scales up to 4, so that ReLU6 clips (with unit scales it hardly ever would)."""
    generator = torch.Generator().manual_seed(1)
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + 3.5 * torch.rand(n, generator=generator))
            module.bias.data.copy_(0.5 * torch.randn(n, generator=generator))


def pair(name: str) -> tuple[nn.Module, nn.Module, list[tuple[str, str]]]:
    torch.manual_seed(0)
    reference = NETWORKS[name][2]()
    with torch.no_grad():
        randomise_batchnorm(reference)
    model = generated(name)
    names = copy_weights(reference, model)
    return reference.to(DOUBLE), model.to(DOUBLE), names


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_counts_are_the_published_ones(name: str) -> None:
    published = NETWORKS[name][3]
    model = generated(name)
    assert count(model) == published
    assert count(NETWORKS[name][2]()) == published


def run(model: nn.Module, x: Tensor, cotangent: Tensor, seed: int):
    """Logits, then gradients of <logits, cotangent> for the input and every parameter."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # one dropout mask for both models in train mode
    y = model(x)
    grads = torch.autograd.grad((y * cotangent).sum(), [x, *model.parameters()])
    return y.detach(), grads[0], grads[1:]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", NETWORKS)
def test_equals_the_reference_at_two_image_sizes(name: str, mode: str) -> None:
    reference, model, names = pair(name)
    reference.train(mode == "train")
    model.train(mode == "train")
    assert model.SPACES["img"] == (3, "H", "W")  # any image size: run at SIZES below
    by_name = dict(names)
    ref_params = [n for n, _ in reference.named_parameters()]
    # the parameters pair up in order, as copy_weights paired them
    assert [by_name[n] for n in ref_params] == [n for n, _ in model.named_parameters()]
    worst = 0.0
    for size in SIZES:
        generator = torch.Generator().manual_seed(size)
        x = torch.randn(2, 3, size, size, generator=generator, dtype=DOUBLE)
        cotangent = torch.randn(2, 1000, generator=generator, dtype=DOUBLE)
        y_ref, dx_ref, dp_ref = run(reference, x, cotangent, seed=size)
        y, dx, dp = run(model, x, cotangent, seed=size)
        assert y.shape == (2, 1000)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(dx, dx_ref)
        for ref_name, g_ref, g in zip(ref_params, dp_ref, dp, strict=True):
            torch.testing.assert_close(g, g_ref, msg=lambda m, n=ref_name: f"{n}: {m}")
        pairs = [(y, y_ref), (dx, dx_ref), *zip(dp, dp_ref, strict=True)]
        worst = max(worst, *((a - b).abs().max().item() for a, b in pairs))
        # in train mode, batch statistics: the running statistics moved alike
        mine = model.state_dict()
        for ref_name, value in reference.state_dict().items():
            torch.testing.assert_close(mine[by_name[ref_name]], value)
    print(f"{name} {mode}: max abs difference {worst:.3g}")
