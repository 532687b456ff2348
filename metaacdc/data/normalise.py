"""uint8 pixels to normalised model inputs: the one path the episode sampler and the
adaptation API share, so an image preprocessed by either gives the same tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from metaacdc.errors import ConfigError

#: a batch transform on ``(N, C, H, W)`` floats in 0..1, drawing from the generator if random
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Normalise:
    """``(N, C, H, W)`` uint8 pixels -> ``(x / 255 - mean) / std`` float32, with an optional
    transform (augmentation, test-time zoom) applied to the 0..1 floats in between.

    Raises:
        ConfigError: ``mean`` or ``std`` not of length ``channels``, or a std not positive.
    """

    def __init__(
        self,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Transform | None = None,
    ) -> None:
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ConfigError(
                f"normalisation needs {channels} means and {channels} positive "
                f"stds, got mean={list(mean)} std={list(std)}"
            )
        self.transform = transform
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
        # uint8 -> normalised float in one multiply-add when there is no transform
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = -self.mean / self.std

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Contiguous normalised ``(N, C, H, W)`` float32 from uint8 ``pixels``."""
        if self.transform is None:
            return pixels.float().mul_(self.scale).add_(self.shift)
        images = self.transform(pixels.float().div_(255.0), generator)
        return images.sub_(self.mean).div_(self.std).contiguous()
