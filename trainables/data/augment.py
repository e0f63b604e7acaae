"""The official transforms on decoded uint8 images, a batch at a time, on whatever device the batch is on.

Proxy-Anchor trains on RandomResizedCrop(size, scale 0.08-1, ratio 3/4-4/3) + horizontal flip and
evaluates on Resize(size * 256 / 224) + CenterCrop(size), both ImageNet-normalised (images.py holds
the per-image PIL versions). Here the images were already resized to that short side once, by the
driver (packed.py): the evaluation view is then a centre crop, and a training crop is drawn on the
stored image with torchvision's sampling rule, vectorised over the batch, so its scale (crop area /
image area), aspect ratio and flip have the official distribution. Crop boxes are drawn on the CPU
from a torch.Generator; only the resize runs on the batch's device (uint8 kernels on the CPU, floats
on CUDA, which has no uint8 interpolation), so the same code serves DataLoader workers and GPUs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from trainables.data.images import IMAGENET_MEAN, IMAGENET_STD

SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults, which Proxy-Anchor keeps
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10  # torchvision draws up to 10 boxes before it falls back to a centre crop


def short_side(image_size: int) -> int:
    """The evaluation Resize's short side: 256 for 224-px crops (Proxy-Anchor's Resize(256) + CenterCrop(224))."""
    return round(image_size * 256 / 224)


def resized_shape(height: int, width: int, short: int) -> tuple[int, int]:
    """(h, w) of torchvision's Resize(short) of an image: the short side becomes `short`, the long one is truncated."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def crop_boxes(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator | None = None,
               scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """RandomResizedCrop boxes (top, left, height, width), one row per image, int64 [N, 4].

    torchvision's `RandomResizedCrop.get_params` per image: up to ten tries of an area fraction
    uniform in `scale` and a log-uniform aspect ratio, the first box that fits wins, at a uniform
    position; if none fits, the centre crop with the ratio clamped to `ratio`. All images' ten
    tries are drawn at once.
    """
    n = len(heights)
    h_img, w_img = heights.double()[:, None], widths.double()[:, None]
    area = h_img * w_img * torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                       generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = fits.double().argmax(dim=1, keepdim=True)  # index of the first try that fits (0 if none does)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    h_img, w_img = h_img[:, 0], w_img[:, 0]
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (h_img - h + 1))
    left = torch.floor(u[:, 1] * (w_img - w + 1))
    # torchvision's fallback: the whole image, or its centre at the nearest allowed ratio.
    in_ratio = w_img / h_img
    fb_w = torch.where(in_ratio > ratio[1], torch.round(h_img * ratio[1]), w_img)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(w_img / ratio[0]), h_img)
    none = ~fits.any(dim=1)
    h, w = torch.where(none, fb_h, h), torch.where(none, fb_w, w)
    top = torch.where(none, torch.div(h_img - fb_h, 2, rounding_mode="floor"), top)
    left = torch.where(none, torch.div(w_img - fb_w, 2, rounding_mode="floor"), left)
    return torch.stack([top, left, h, w], dim=1).long()


def center_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop(size): offsets rounded half to even, as its int(round(...))."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def resize_crops(crops: Sequence[torch.Tensor], size: int, flips: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", uint8_kernel: bool | None = None) -> torch.Tensor:
    """Crops (uint8 [h, w, C], any sizes) bilinearly resized (antialiased, as torchvision's tensor Resize)
    to uint8 [N, C, size, size] on `device`, the ones marked in `flips` mirrored left-right.

    `uint8_kernel` (default: on the CPU) resizes the uint8 pixels directly, torch's fast path there;
    otherwise in float32, rounded back to uint8, which is what CUDA supports. Both are tested on the CPU.
    """
    device = torch.device(device)
    if uint8_kernel is None:
        uint8_kernel = device.type == "cpu"
    out = torch.empty((len(crops), crops[0].shape[-1], size, size), dtype=torch.uint8, device=device)
    for k, crop in enumerate(crops):
        x = crop.to(device, non_blocking=True).permute(2, 0, 1)[None]  # [1, C, h, w] in channels_last layout
        if x.shape[-2:] != (size, size):
            if uint8_kernel:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            else:
                x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False).round_().clamp_(0, 255)
        out[k] = x[0].flip(-1) if flips is not None and flips[k] else x[0]
    return out


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 ImageNet-normalised, as ToTensor + Normalize, on the images' device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, -1, 1, 1) * 255
    return images.float().sub_(mean).div_(std)  # in place: half the time of (x - mean) / std on the CPU
