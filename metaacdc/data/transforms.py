"""Episode transforms on ``(N, C, H, W)`` float tensors in ``[0, 1]`` (design §5).

Train (:class:`TrainTransform`): random resized crop, colour jitter 0.4 (brightness,
contrast, saturation), horizontal flip. Test (:class:`EvalTransform`, not ``Test...`` so test
runners do not collect it): resize to 1.15x then centre crop. Normalisation is applied by the
sampler with the cache's statistics. Every random draw comes from the generator passed in
(the episode's), never from torch's global generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metaacdc.errors import ConfigError


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop + colour jitter + horizontal flip, batched in one ``grid_sample``.

    Args:
        scale: range of the crop's area as a fraction of the image (torchvision default).
        ratio: range of the crop's aspect ratio.
        jitter: brightness, contrast and saturation factors drawn from ``[1-j, 1+j]``.
        flip: probability of a horizontal flip.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.4
    flip: float = 0.5

    def __post_init__(self) -> None:
        # comparisons with NaN are false, so NaN fails each check; infinity is named here
        if not all(math.isfinite(value) for value in (*self.ratio, self.jitter, self.flip)):
            raise ConfigError(
                f"ratio={self.ratio}, jitter={self.jitter} and flip={self.flip} must be finite"
            )
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"scale={self.scale} is not valid; expected 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"ratio={self.ratio} is not valid; expected 0 < low <= high")
        if not 0 <= self.jitter < 1 or not 0 <= self.flip <= 1:
            raise ConfigError(f"jitter={self.jitter} and flip={self.flip} must be in [0, 1)")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        area = _uniform(n, *self.scale, generator)
        log_ratio = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), generator)
        aspect = torch.exp(log_ratio)
        # crop width/height as fractions of the image side, clamped to the image
        width = torch.sqrt(area * aspect).clamp(max=1.0)
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
        centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
        flip = torch.rand(n, generator=generator) < self.flip
        # no rotation or shear, so the sampling grid is separable: build it by broadcasting
        height_px, width_px = images.shape[-2:]
        base_x = (torch.arange(width_px, dtype=images.dtype) * 2 + 1) / width_px - 1
        base_y = (torch.arange(height_px, dtype=images.dtype) * 2 + 1) / height_px - 1
        scale_x = torch.where(flip, -width, width).to(images.dtype)
        grid = torch.empty(n, height_px, width_px, 2, dtype=images.dtype)
        grid[..., 0] = (scale_x[:, None] * base_x + centre_x[:, None].to(images.dtype))[:, None]
        grid[..., 1] = (height[:, None] * base_y + centre_y[:, None]).to(images.dtype)[:, :, None]
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        if self.jitter > 0:
            out = self._colour_jitter(out, generator)
        return out

    def _colour_jitter(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation in torchvision's fixed order, in place."""
        n, j = images.shape[0], self.jitter
        shape = (n, 1, 1, 1)
        brightness = _uniform(n, 1 - j, 1 + j, generator).view(shape)
        contrast = _uniform(n, 1 - j, 1 + j, generator).view(shape)
        saturation = _uniform(n, 1 - j, 1 + j, generator).view(shape)
        images.mul_(brightness).clamp_(0, 1)
        channel_means = images.mean(dim=(2, 3), keepdim=True)
        grey_mean = _grayscale(channel_means)
        images.mul_(contrast).add_((1 - contrast) * grey_mean).clamp_(0, 1)
        if images.shape[1] == 3:
            grey = _grayscale(images)
            images.mul_(saturation).add_((1 - saturation) * grey).clamp_(0, 1)
        return images


@dataclass(frozen=True)
class EvalTransform:
    """Resize by ``zoom`` (default 1.15) then centre-crop back to the input size."""

    zoom: float = 1.15

    def __post_init__(self) -> None:
        zoom = self.zoom
        if isinstance(zoom, bool) or not isinstance(zoom, int | float) or not 1 <= zoom < math.inf:
            raise ConfigError(f"zoom={zoom!r} is not valid; expected a finite number >= 1")

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        size = images.shape[-1]
        big = int(size * self.zoom)
        if big == size:
            return images
        resized = F.interpolate(
            images, size=(big, big), mode="bilinear", align_corners=False, antialias=False
        )
        top = round((big - size) / 2.0)
        return resized[..., top : top + size, top : top + size].contiguous()


def train_transform(jitter: float = 0.4) -> TrainTransform:
    """The design §5 training augmentation."""
    return TrainTransform(jitter=jitter)


def eval_transform(zoom: float = 1.15) -> EvalTransform:
    """The design §5 test-time transform."""
    return EvalTransform(zoom=zoom)


def uses_image_transforms(dataset: str, augment: bool) -> bool:
    """Colour images get CloserLook's augmentation and test-time zoom (design §5); Omniglot
    and runs with ``augment: false`` get neither."""
    return augment and dataset != "omniglot"


def eval_transform_for(dataset: str, augment: bool) -> EvalTransform | None:
    """The test-time transform of a run on ``dataset`` (validation, evaluation, adaptation
    API): the zoom for colour images, none where :func:`uses_image_transforms` says so."""
    return eval_transform() if uses_image_transforms(dataset, augment) else None
