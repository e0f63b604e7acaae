"""Embedding networks by name: a backbone, pooled features, a linear embedding, L2-normalised.

`glyphcnn` is small enough that a 2-core CPU trains it in seconds per epoch. The real
benchmarks use torchvision's resnet18, resnet50 and googlenet, cut after their last convolutional
stage (Proxy-Anchor's heads: GAP + GMP, linear, L2). They take ImageNet-normalised RGB
(trainables/data/images.py) and start from random weights unless `pretrained=True` asks for
torchvision's ImageNet weights (downloaded once into the torch hub cache: see `fetch_pretrained`).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Embedder(nn.Module):
    """features -> global average + max pooling -> linear -> L2 normalisation (Proxy-Anchor's head)."""

    def __init__(self, features: nn.Module, feature_dim: int, embedding_size: int) -> None:
        super().__init__()
        self.features = features
        self.embedding = nn.Linear(feature_dim, embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        f = F.adaptive_avg_pool2d(f, 1).flatten(1) + F.adaptive_max_pool2d(f, 1).flatten(1)
        return F.normalize(self.embedding(f), dim=1)


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def glyph_cnn(in_channels: int, embedding_size: int) -> Embedder:
    """Three stride-2 conv stages (32 -> 4 px) and one at 4 px: ~2 s per glyph epoch on one CPU core.

    Strided convolutions instead of conv + max-pool halve the epoch time at 32 px (measured:
    3.3 s -> 2.1 s per 3,600 images), which is what lets the default search finish in minutes.
    """
    features = nn.Sequential(
        _conv_block(in_channels, 24, 2), _conv_block(24, 48, 2), _conv_block(48, 96, 2), _conv_block(96, 96, 1),
    )
    return Embedder(features, 96, embedding_size)


# torchvision's weights enum per backbone, by name; `.DEFAULT` is torchvision's recommended ImageNet
# weights (for resnet50 that is IMAGENET1K_V2; Proxy-Anchor's paper ran on the older IMAGENET1K_V1).
PRETRAINED_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights", "googlenet": "GoogLeNet_Weights"}


def pretrained_weights(backbone: str) -> Any:
    """torchvision's default ImageNet weights enum member for `backbone` (nothing is downloaded)."""
    import torchvision.models as tvm

    if backbone not in PRETRAINED_WEIGHTS:
        raise ValueError(f"Backbone {backbone!r} has no pretrained weights; those with weights are "
                         f"{sorted(PRETRAINED_WEIGHTS)}.")
    return getattr(tvm, PRETRAINED_WEIGHTS[backbone]).DEFAULT


def fetch_pretrained(backbone: str) -> str:
    """Download the backbone's ImageNet weights into the torch hub cache once, before trials start.

    Call it in the driver: parallel trials then load the cached file instead of racing to download
    it. Returns the weights' name (e.g. 'ResNet50_Weights.IMAGENET1K_V2') for the run's config.
    """
    weights = pretrained_weights(backbone)
    weights.get_state_dict(progress=True, check_hash=True)
    return f"{type(weights).__name__}.{weights.name}"


def _rgb_only(name: str, in_channels: int) -> None:
    if in_channels != 3:
        raise ValueError(f"{name} takes RGB images (in_channels=3), but got in_channels={in_channels}; "
                         "use glyphcnn for other channel counts.")


def _resnet(name: str, feature_dim: int) -> Callable[..., Embedder]:
    def build(in_channels: int, embedding_size: int, pretrained: bool = False) -> Embedder:
        import torchvision.models as tvm

        _rgb_only(name, in_channels)
        net = getattr(tvm, name)(weights=pretrained_weights(name) if pretrained else None)
        features = nn.Sequential(OrderedDict((k, getattr(net, k)) for k in (
            "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))
        return Embedder(features, feature_dim, embedding_size)

    build.__name__ = name
    build.__doc__ = f"torchvision's {name} up to layer4 (stride 32, {feature_dim} channels)."
    return build


class GoogLeNetFeatures(nn.Module):
    """torchvision's GoogLeNet up to inception5b (1024 channels at stride 32), without the classifier.

    Keeps torchvision's input transform: its ImageNet weights expect inputs scaled to [-1, 1], so
    with `transform_input` (set when pretrained) ImageNet-normalised inputs are re-scaled first,
    exactly as `GoogLeNet.forward` does.
    """

    LAYERS = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
              "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
              "inception5a", "inception5b")

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.transform_input = bool(net.transform_input)
        for k in self.LAYERS:
            setattr(self, k, getattr(net, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            # torchvision GoogLeNet._transform_input: ImageNet mean/std normalisation -> (x - 0.5) / 0.5.
            x = torch.cat([x[:, c: c + 1] * (s / 0.5) + (m - 0.5) / 0.5
                           for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))], 1)
        for k in self.LAYERS:
            x = getattr(self, k)(x)
        return x


def googlenet(in_channels: int, embedding_size: int, pretrained: bool = False) -> Embedder:
    """torchvision's GoogLeNet (Inception v1) features; inputs of at least 64 px (stride 32, two 3x3 pools)."""
    import torchvision.models as tvm

    _rgb_only("googlenet", in_channels)
    if pretrained:
        net = tvm.googlenet(weights=pretrained_weights("googlenet"))  # drops the untrained aux heads
    else:
        net = tvm.googlenet(weights=None, aux_logits=False, init_weights=True)
    return Embedder(GoogLeNetFeatures(net), 1024, embedding_size)


BACKBONES: dict[str, Callable[..., Embedder]] = {
    "glyphcnn": glyph_cnn,
    "resnet18": _resnet("resnet18", 512),
    "resnet50": _resnet("resnet50", 2048),
    "googlenet": googlenet,
}


def build_model(backbone: str, in_channels: int, embedding_size: int, pretrained: bool = False) -> Embedder:
    """The named embedding network; `pretrained=True` starts from torchvision's ImageNet weights."""
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}.")
    if embedding_size < 2:
        raise ValueError(f"embedding_size must be at least 2, but got {embedding_size}.")
    if pretrained:
        pretrained_weights(backbone)  # a clear error for a backbone without weights (glyphcnn)
        return BACKBONES[backbone](in_channels, embedding_size, pretrained=True)
    return BACKBONES[backbone](in_channels, embedding_size)
