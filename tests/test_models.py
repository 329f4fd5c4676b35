"""samkit.models: output shapes, parameter counts that pin each architecture, BatchNorm where documented, seeding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samkit.models import MLP, MODELS, ResNet20, SmallCNN, build_model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def _conv3(cin: int, cout: int, bias: bool) -> int:
    return 9 * cin * cout + (cout if bias else 0)


def _block(cin: int, cout: int) -> int:
    """A basic block: two bias-free 3x3 convolutions with BatchNorm (2 parameters per channel), plus a 1x1
    projection with BatchNorm when the width changes."""
    n = _conv3(cin, cout, False) + 2 * cout + _conv3(cout, cout, False) + 2 * cout
    return n + (cin * cout + 2 * cout if cin != cout else 0)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32)])
def test_output_shape(name, channels, side):
    model = build_model(name, in_channels=channels, image_size=side, num_classes=7)
    assert model(torch.zeros(2, channels, side, side)).shape == (2, 7)


@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32)])
def test_parameter_counts_pin_the_architectures(channels, side):
    mlp = build_model("mlp", in_channels=channels, image_size=side)
    d = channels * side * side
    assert _params(mlp) == _linear(d, 256) + _linear(256, 256) + _linear(256, 10)

    cnn = build_model("cnn", in_channels=channels, image_size=side)
    flat = 64 * (side // 4) ** 2  # two 2x2 max-pools
    assert _params(cnn) == _conv3(channels, 32, True) + _conv3(32, 64, True) + _linear(flat, 128) + _linear(128, 10)

    resnet = build_model("resnet20", in_channels=channels, image_size=side)
    stages = [_block(16, 16)] * 3 + [_block(16, 32)] + [_block(32, 32)] * 2 + [_block(32, 64)] + [_block(64, 64)] * 2
    stem = _conv3(channels, 16, False) + 2 * 16
    assert _params(resnet) == stem + sum(stages) + _linear(64, 10)


def test_resnet20_is_the_cifar_resnet20():
    model = ResNet20(in_channels=3)
    assert _params(model) == 272_474  # He et al. (2016): "0.27M" parameters (here with 1x1 projection shortcuts)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs3) + len(linears) == 20  # 6n + 2 weighted layers with n = 3
    assert [m.out_channels for m in convs3] == [16] + [16] * 6 + [32] * 6 + [64] * 6
    # stride 2 at the first block of stages 2 and 3: 32x32 -> 8x8 feature maps before pooling
    assert model.blocks(model.stem(torch.zeros(1, 3, 32, 32))).shape == (1, 64, 8, 8)


def test_batchnorm_only_in_the_resnet_and_cnn_small_bn():
    def bns(m: nn.Module) -> int:
        return sum(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())

    assert bns(MLP()) == 0 and bns(SmallCNN()) == 0 and bns(build_model("cnn-small")) == 0
    assert bns(build_model("cnn-small-bn")) == 2
    assert bns(ResNet20()) == 1 + 9 * 2 + 2  # stem, two per block, two projection shortcuts


@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32)])
def test_cnn_small_and_its_batchnorm_twin_differ_only_in_the_normalization(channels, side):
    flat = 16 * (side // 4) ** 2
    head = _linear(flat, 128) + _linear(128, 10)
    plain = build_model("cnn-small", in_channels=channels, image_size=side)
    assert _params(plain) == _conv3(channels, 8, True) + _conv3(8, 16, True) + head
    bn = build_model("cnn-small-bn", in_channels=channels, image_size=side)
    # the convolutions lose their bias (BatchNorm's shift replaces it) and BatchNorm adds a scale and a shift
    assert _params(bn) == _conv3(channels, 8, False) + 2 * 8 + _conv3(8, 16, False) + 2 * 16 + head
    kinds = [type(m).__name__ for m in bn.features]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] * 2


def test_every_model_is_described_for_the_report():
    from samkit.models import DESCRIPTIONS

    assert set(DESCRIPTIONS) == set(MODELS)
    assert "BatchNorm" in DESCRIPTIONS["cnn-small-bn"] and "no normalization" in DESCRIPTIONS["cnn-small"]


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_model_and_outputs(name):
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))

    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(name).eval()

    a, b, c = make(0), make(0), make(1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vit'; allowed: mlp, cnn, cnn-small, cnn-small-bn, resnet20"):
        build_model("vit")
