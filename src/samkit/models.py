"""Small reference models: an MLP, a small CNN and a CIFAR-style ResNet-20 (He et al. 2016).

Each takes images of shape ``(N, C, H, W)`` with ``C`` in {1, 3} and ``H = W`` in {28, 32}.

>>> import torch
>>> from samkit.models import build_model
>>> build_model("resnet20", in_channels=3, image_size=32)(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN", "ResNet20", "build_model", "MODELS", "DESCRIPTIONS"]


class MLP(nn.Module):
    """Flatten, then ``Linear-ReLU`` hidden layers, then a linear classifier."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (256, 256), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two ``conv3x3-ReLU-maxpool`` blocks (``channels``, default 32 and 64) and a ``hidden``-unit hidden layer.

    With ``batchnorm=True`` each convolution is followed by BatchNorm (and has no bias, which BatchNorm's shift
    replaces): ``cnn-small`` and ``cnn-small-bn`` (8 and 16 channels) differ only in that, so E7 can tell what
    BatchNorm changes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in channels:
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20: a 16-channel stem, 3 stages of 3 basic blocks (16, 32, 64 channels), BatchNorm."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(3):
                blocks.append(_BasicBlock(cin, cout, stride=2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


#: The model names: ``cnn-small`` / ``cnn-small-bn`` are the SmallCNN with 8 and 16 channels, without and with
#: BatchNorm (a fifth of ``cnn``'s cost on the CPU: E7's medium preset trains them near interpolation).
MODELS = ("mlp", "cnn", "cnn-small", "cnn-small-bn", "resnet20")
_SMALL = (8, 16)


#: Each model in words (the report says which architectures the deep-net claims were judged on).
DESCRIPTIONS = {
    "mlp": "MLP 784-256-256-10 (ReLU, no normalization)",
    "cnn": "CNN, two conv3x3-ReLU-maxpool blocks (32, 64 channels) and a 128-unit hidden layer, no normalization",
    "cnn-small": "CNN, two conv3x3-ReLU-maxpool blocks (8, 16 channels) and a 128-unit hidden layer, no normalization",
    "cnn-small-bn": "cnn-small with BatchNorm after each convolution",
    "resnet20": "ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels, BatchNorm)",
}


def build_model(name: str, *, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """Build a model by name (one of :data:`MODELS`) for the given input shape."""
    if name == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes=num_classes)
    if name == "cnn":
        return SmallCNN(in_channels, image_size, num_classes)
    if name in ("cnn-small", "cnn-small-bn"):
        return SmallCNN(in_channels, image_size, num_classes, channels=_SMALL, batchnorm=name.endswith("-bn"))
    if name == "resnet20":
        return ResNet20(in_channels, num_classes)
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
