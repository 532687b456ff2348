"""Raw images (PIL images, arrays, files, uint8 tensors) as a run's model inputs, with
exactly the preprocessing of its evaluation episodes: what the adaptation API gives users."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from metaacdc.data.normalise import Normalise
from metaacdc.data.sources.base import decode_image, read_bytes, resize_array
from metaacdc.errors import ConfigError, NonFiniteError

ImageLike: TypeAlias = Image.Image | np.ndarray | str | Path | Tensor
"""One raw image: a PIL image, an ``H x W (x C)`` array, a file path or a uint8 tensor."""


class ImagePreprocessor:
    """Raw images -> normalised ``(N, C, H, W)`` float32, as a run's evaluation sees them.

    Args:
        channels: 3 (RGB) or 1 (grayscale ``L``).
        image_size: the side every image is resized to (PIL bilinear, as ``metaacdc data
            prepare`` does; no resize when it already has that size).
        inverted: invert after resizing (Omniglot caches hold white strokes on black).
        normalise: the run's evaluation transform and normalisation, shared with the
            episode sampler.
    """

    def __init__(
        self, channels: int, image_size: int, inverted: bool, normalise: Normalise
    ) -> None:
        self.channels = channels
        self.image_size = image_size
        self.inverted = inverted
        self.normalise = normalise

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """One image or a list of them (a uint8 ``(N, C, H, W)`` tensor is a batch) as
        ``(N, C, H, W)`` float32 on the CPU.

        Raises:
            ConfigError: an input of an unsupported type, shape or dtype, an image of no
                pixels (0 wide or high), or an empty list.
            NonFiniteError: (a ``ConfigError``) a float array holding NaN or infinity.
            FileNotFoundError: a path that does not exist.
        """
        if isinstance(images, Tensor) and images.dim() == 4:
            items: list[Any] = list(images)
        elif isinstance(images, list | tuple):
            items = list(images)
        else:
            items = [images]
        if not items:
            raise ConfigError("images: empty list; give at least one image")
        pixels = np.stack([self._pixels(item, i) for i, item in enumerate(items)])
        batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        return self.normalise(batch, torch.Generator())

    def _pixels(self, item: Any, index: int) -> np.ndarray:
        """One raw image as ``image_size x image_size x channels`` uint8, as in a cache."""
        mode = "RGB" if self.channels == 3 else "L"
        if isinstance(item, str | Path):
            name = str(item)
            array = decode_image(read_bytes(item, name), name, self.image_size, mode)
        else:
            if isinstance(item, Tensor):
                item = _tensor_to_array(item, index)
            if isinstance(item, np.ndarray):
                item = _array_to_image(item, index)
            if not isinstance(item, Image.Image):
                raise ConfigError(
                    f"images[{index}]: {type(item).__name__} is not supported; accepted: a PIL "
                    "image, a numpy array, a file path, a uint8 tensor, or a list of these"
                )
            _check_size(item.width, item.height, index)
            array = resize_array(item.convert(mode), self.image_size)
        if self.inverted:
            array = 255 - array  # after resizing, as the Omniglot cache does
        return array


def _tensor_to_array(item: Tensor, index: int) -> np.ndarray:
    """A uint8 ``(C, H, W)`` tensor as an ``H x W x C`` array."""
    if item.dtype != torch.uint8 or item.dim() != 3:
        raise ConfigError(
            f"images[{index}]: a tensor given to preprocess must be uint8 (C, H, W) or "
            f"(N, C, H, W) pixels, got {item.dtype} {tuple(item.shape)}; float tensors are "
            "taken as already preprocessed: pass them to adapt/predict directly"
        )
    return item.detach().cpu().permute(1, 2, 0).numpy()


def _array_to_image(array: np.ndarray, index: int) -> Image.Image:
    """An ``H x W`` or ``H x W x C`` array (uint8, or float in 0..1) as a PIL image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ConfigError(
            f"images[{index}]: array of shape {array.shape} is not an image; expected "
            "H x W or H x W x C with C in 1, 3, 4"
        )
    _check_size(array.shape[1], array.shape[0], index)
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise NonFiniteError(
                f"images[{index}]: float array holds {bad} non-finite value(s) (NaN or "
                f"infinity) of {array.size}; give floats in 0..1 or uint8 in 0..255"
            )
        if array.min() < 0 or array.max() > 1:
            raise ConfigError(
                f"images[{index}]: float array with values outside 0..1; give floats in "
                "0..1 or uint8 in 0..255"
            )
        pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    else:
        raise ConfigError(
            f"images[{index}]: array dtype {array.dtype} is not supported; expected uint8 "
            "(0..255) or float (0..1)"
        )
    mode = "L" if pixels.ndim == 2 else ("RGB" if pixels.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(pixels), mode)


def _check_size(width: int, height: int, index: int) -> None:
    """Refuse an image without pixels, which would otherwise resize to a blank input."""
    if width < 1 or height < 1:
        raise ConfigError(
            f"images[{index}]: the image is {width}x{height} pixels (width x height), "
            "which is empty; give a picture of at least 1x1 pixel"
        )
