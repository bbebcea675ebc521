"""Backbones for 32x32 images: CIFAR ResNet-18/34 and ResNet-9.

ResNet-18/34 follow the CIFAR-N authors' code (Wei et al., 2022; used by the OGA paper, B.2.1): a 3x3 stride-1
stem without max-pool, four stages of basic blocks, 4x4 average pooling, a 512 -> classes linear layer. Module
names follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``downsample``, ``fc``) so that
``pretrained=True`` can copy torchvision's ImageNet weights into every layer but the stem and the classifier.

ResNet-9 comes in two published variants: ``trak`` (the TRAK/LoGra CIFAR model, which the dropout paper's
Table 8 recipe -- SGD, peak lr 0.4, linear schedule, 24 epochs -- belongs to) and ``dawnbench`` (Page's
DAWNBench ResNet-9, 64-128-256-512 channels).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """ResNet with basic blocks and a 3x3 stem for 32x32 inputs; ``fc`` is the last (512 x classes + bias) layer."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths, inplanes = (64, 128, 256, 512), 64
        for i, (width, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(inplanes, width, stride=2 if (j == 0 and i > 0) else 1))
                inplanes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def load_imagenet_weights(model: CifarResNet, arch: str) -> list[str]:
    """Copy torchvision's ImageNet-1K weights into ``model`` except the stem conv and ``fc``; returns copied keys.

    The OGA paper fine-tunes an ImageNet-pretrained ResNet-34 (B.2.1); needs torchvision and network access.
    """
    try:
        import torchvision
    except ImportError as e:
        raise ImportError("model.pretrained=true needs torchvision to fetch ImageNet weights: "
                          "pip install 'gradsift[vision]' (or set model.pretrained=false)") from e
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    source = torchvision.models.get_model(arch, weights=weights).state_dict()
    target = model.state_dict()
    copied = [k for k, v in source.items() if k in target and k != "conv1.weight" and not k.startswith("fc.")
              and target[k].shape == v.shape]
    model.load_state_dict({k: source[k] for k in copied}, strict=False)
    return copied


def resnet18(num_classes: int = 10, pretrained: bool = False) -> CifarResNet:
    """CIFAR ResNet-18 (11.17M parameters for 10 classes)."""
    model = CifarResNet((2, 2, 2, 2), num_classes)
    if pretrained:
        load_imagenet_weights(model, "resnet18")
    return model


def resnet34(num_classes: int = 10, pretrained: bool = False) -> CifarResNet:
    """CIFAR ResNet-34 (21.28M parameters for 10 classes), the OGA paper's CIFAR-N model."""
    model = CifarResNet((3, 4, 6, 3), num_classes)
    if pretrained:
        load_imagenet_weights(model, "resnet34")
    return model


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 for CIFAR: ``features`` then a bias-free linear ``fc`` whose output is scaled by ``scale``.

    ``trak``: 64-128(5x5, s2)-res128-256-pool-res256-128, global max-pool, fc 128 x classes, scale 0.2.
    ``dawnbench``: 64-128-pool-res128-256-pool-512-pool-res512, global max-pool, fc 512 x classes, scale 0.125.
    """

    def __init__(self, num_classes: int = 10, variant: str = "trak"):
        super().__init__()
        if variant == "trak":
            self.features = nn.Sequential(
                _conv_bn(3, 64), _conv_bn(64, 128, 5, 2, 2),
                Residual(nn.Sequential(_conv_bn(128, 128), _conv_bn(128, 128))),
                _conv_bn(128, 256), nn.MaxPool2d(2), Residual(nn.Sequential(_conv_bn(256, 256), _conv_bn(256, 256))),
                _conv_bn(256, 128, padding=0), nn.AdaptiveMaxPool2d(1), nn.Flatten())
            width, self.scale = 128, 0.2
        elif variant == "dawnbench":
            self.features = nn.Sequential(
                _conv_bn(3, 64), _conv_bn(64, 128), nn.MaxPool2d(2),
                Residual(nn.Sequential(_conv_bn(128, 128), _conv_bn(128, 128))),
                _conv_bn(128, 256), nn.MaxPool2d(2), _conv_bn(256, 512), nn.MaxPool2d(2),
                Residual(nn.Sequential(_conv_bn(512, 512), _conv_bn(512, 512))), nn.AdaptiveMaxPool2d(1), nn.Flatten())
            width, self.scale = 512, 0.125
        else:
            raise ValueError(f"model.backbone.variant={variant!r}; expected 'trak' or 'dawnbench'")
        self.fc = nn.Linear(width, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * self.scale


def resnet9(num_classes: int = 10, variant: str = "trak") -> ResNet9:
    """ResNet-9 (the dropout paper's small-scale CIFAR-10 model, Section 4.2.1)."""
    return ResNet9(num_classes, variant)
