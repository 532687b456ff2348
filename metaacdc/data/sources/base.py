"""What every source hands to ``prepare``: a plan per split, and image decoding."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from metaacdc.errors import ConfigError

RESAMPLE = "PIL bilinear (antialiased when shrinking), aspect ratio not kept"


@dataclass
class SplitPlan:
    """How to build one split's cache: names, labels and a reader for image ``i``.

    Attributes:
        source: source name recorded in the cache.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: target side in pixels.
        channels: 3 (RGB) or 1 (grayscale).
        class_names: class name of each class index.
        labels: class index of every image, in cache order.
        filenames: per-image filename, or ``None``.
        fingerprint: sha256 of input names, sizes and all parameters (cheap to compute).
        preprocessing: choices applied to the pixels, recorded in ``meta.json``.
        read: ``read(i)`` returns image ``i`` as ``H x W x C`` uint8 at the target size and
            the raw bytes it came from (hashed into ``source_sha256``).
        source_digest: set when the source checksum is known without reading (synthetic).
    """

    source: str
    split: str
    image_size: int
    channels: int
    class_names: list[str]
    labels: np.ndarray
    filenames: list[str] | None
    fingerprint: str
    preprocessing: dict[str, Any]
    read: Callable[[int], tuple[np.ndarray, bytes]]
    source_digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def digest_of(value: Any) -> str:
    """sha256 of a JSON-serialisable value (sorted keys), for fingerprints."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def decode_image(data: bytes, name: str, image_size: int, mode: str) -> np.ndarray:
    """Decode image bytes, convert to ``mode`` ("RGB" or "L") and resize to a square.

    Raises:
        ConfigError: naming ``name`` when the bytes are not a readable, complete image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = image.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ConfigError(
            f"{name}: unreadable or truncated image ({error}); replace or remove the file"
        ) from error
    return resize_array(converted, image_size)


def resize_array(image: Image.Image, image_size: int) -> np.ndarray:
    """``image`` resized to ``image_size`` squared (bilinear), as ``H x W x C`` uint8."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def read_bytes(path: Any, name: str | None = None) -> bytes:
    """Read a file, turning a missing file into FileNotFoundError naming it."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{name or path}: image file not found") from error


def check_image_size(image_size: int) -> None:
    """Raise ConfigError unless ``image_size`` is a sensible positive side."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise ConfigError(f"image_size={image_size!r} is not valid; expected an integer >= 4")
