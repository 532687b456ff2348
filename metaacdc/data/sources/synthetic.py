"""A synthetic, miniImageNet-shaped source generated from a seed with numpy only (no files).

Classes 0-63 are ``train``, 64-79 ``val``, 80-99 ``test``. A class is a geometric recipe:
a main shape (one of six) filled with a grating of class-specific orientation and period,
plus a smaller secondary shape of its own type at a class-specific offset. Each image
draws position, scale, a small rotation, the grating phase, all colours, the background
(colour, gradient) and distractor shapes at random, then adds pixel noise. So mean colour
and any single pixel carry no class information, while shape, texture orientation and
layout do: a Conv4 learns it, a colour or pixel lookup does not.

Every class's recipe and images come from ``numpy.random.SeedSequence([seed, kind, class])``
and only IEEE arithmetic on pixels (the grating is a triangle wave, no ``sin`` on arrays),
so the same seed gives the same pixels on any machine.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from metaacdc.data.cache import FORMAT_VERSION, CachedSplit, CacheMeta, pixel_stats
from metaacdc.data.sources.base import SplitPlan, check_image_size, digest_of
from metaacdc.errors import check_choice, check_positive_int

CLASSES = {"train": range(0, 64), "val": range(64, 80), "test": range(80, 100)}
DEFAULT_IMAGE_SIZE = 84
DEFAULT_IMAGES_PER_CLASS = 60
DEFAULT_SEED = 0
GENERATOR_VERSION = 1
SHAPES = ("disk", "square", "diamond", "triangle", "ring", "cross")


def _recipe(seed: int, class_id: int) -> dict[str, float]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, class_id]))
    return {
        "main": float(rng.integers(len(SHAPES))),
        "theta": float(rng.uniform(0.0, math.pi)),
        "period": float(rng.uniform(0.22, 0.55)),
        "second": float(rng.integers(len(SHAPES))),
        "offset_angle": float(rng.uniform(0.0, 2 * math.pi)),
        "offset": float(rng.uniform(1.05, 1.35)),
        "second_scale": float(rng.uniform(0.35, 0.55)),
    }


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    name = SHAPES[kind]
    if name == "disk":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(au, av) <= 0.85
    if name == "diamond":
        return au + av <= 1.15
    if name == "triangle":
        return (v >= -0.6) & (1.6 * au + v <= 0.95)
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


def _cos_sin(angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise cos and sin through libm (numpy's SIMD versions differ across CPUs)."""
    cos = np.array([math.cos(a) for a in angle.ravel()], dtype=angle.dtype).reshape(angle.shape)
    sin = np.array([math.sin(a) for a in angle.ravel()], dtype=angle.dtype).reshape(angle.shape)
    return cos, sin


def _local(
    x: np.ndarray,
    y: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    scale: np.ndarray,
    angle: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in each image's object frame; per-image params have shape (n, 1, 1)."""
    cos, sin = _cos_sin(angle)
    dx, dy = (x - cx) / scale, (y - cy) / scale
    return cos * dx + sin * dy, -sin * dx + cos * dy


def render_class(seed: int, class_id: int, count: int, image_size: int) -> np.ndarray:
    """``count`` images of class ``class_id`` as ``count x S x S x 3`` uint8."""
    recipe = _recipe(seed, class_id)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, class_id]))
    n, s = count, image_size
    coords = ((np.arange(s) + 0.5) / s * 2.0 - 1.0).astype(np.float32)
    x, y = coords[None, None, :], coords[None, :, None]

    def per_image(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(n, 1, 1)).astype(np.float32)

    # Paint layers into an index map, colours come from a per-image palette at the end:
    # 0 background, 1-3 distractors, 4/5 the two grating colours, 6 the secondary shape.
    palette = rng.uniform(0.0, 1.0, size=(n, 7, 3)).astype(np.float32)
    palette[:, 5] = np.clip(1.0 - palette[:, 4] + rng.uniform(-0.15, 0.15, size=(n, 3)), 0, 1)
    layer = np.zeros((n, s, s), dtype=np.intp)
    for j in (1, 2, 3):  # distractors: random shape, colour, place
        kinds = rng.integers(len(SHAPES), size=n)
        u, v = _local(
            x,
            y,
            per_image(-0.8, 0.8),
            per_image(-0.8, 0.8),
            per_image(0.1, 0.2),
            per_image(0.0, 2 * math.pi),
        )
        for k in range(len(SHAPES)):
            chosen = np.flatnonzero(kinds == k)
            if len(chosen):
                mask = _shape_mask(k, u[chosen], v[chosen])
                layer[chosen] = np.where(mask, j, layer[chosen])
    # main object: class shape and grating (orientation, period); colours are random
    cx, cy = per_image(-0.3, 0.3), per_image(-0.3, 0.3)
    scale, tilt = per_image(0.38, 0.5), per_image(-0.25, 0.25)
    u, v = _local(x, y, cx, cy, scale, tilt)
    theta, period = np.float32(recipe["theta"]), np.float32(recipe["period"])
    along = u * np.float32(math.cos(theta)) + v * np.float32(math.sin(theta))
    phase = (along * scale / period + per_image(0.0, 1.0)) % np.float32(1.0)
    stripe = np.where(np.abs(phase - 0.5) < 0.25, 4, 5)
    main = _shape_mask(int(recipe["main"]), u, v)
    layer = np.where(main, stripe, layer)
    # secondary shape at the class's offset, in the object's frame
    angle, offset = recipe["offset_angle"], recipe["offset"]
    size = np.float32(recipe["second_scale"])
    su = (u - np.float32(offset * math.cos(angle))) / size
    sv = (v - np.float32(offset * math.sin(angle))) / size
    layer = np.where(_shape_mask(int(recipe["second"]), su, sv), 6, layer)
    # background gradient (random direction and per-channel amplitude), then pixel noise
    cos, sin = _cos_sin(per_image(0.0, 2 * math.pi))
    ramp = ((cos * x + sin * y) * (layer == 0))[..., None]
    image = np.take_along_axis(palette, layer.reshape(n, -1, 1), axis=1).reshape(n, s, s, 3)
    amplitude = rng.uniform(-0.25, 0.25, size=(n, 1, 1, 3)).astype(np.float32)
    image += ramp * amplitude
    image += np.float32(0.04) * rng.standard_normal(size=image.shape, dtype=np.float32)
    return np.clip(np.rint(image * np.float32(255.0)), 0, 255).astype(np.uint8)


def _parameters(split: str, image_size: int, images_per_class: int, seed: int) -> dict:
    return {
        "generator": "metaacdc.synthetic",
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "image_size": image_size,
        "images_per_class": images_per_class,
        "seed": seed,
        "classes": [CLASSES[split].start, CLASSES[split].stop],
    }


def _check(split: str, image_size: int, images_per_class: int, seed: int) -> None:
    check_choice("split", split, tuple(CLASSES))
    check_image_size(image_size)
    check_positive_int("images_per_class", images_per_class)
    check_positive_int("seed", seed, minimum=0)


def plan_split(
    split: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
    seed: int = DEFAULT_SEED,
) -> SplitPlan:
    """Plan for writing a synthetic split to disk with ``prepare``."""
    _check(split, image_size, images_per_class, seed)
    params = _parameters(split, image_size, images_per_class, seed)
    classes = list(CLASSES[split])
    block: dict[int, np.ndarray] = {}

    def read(i: int) -> tuple[np.ndarray, bytes]:
        c = i // images_per_class
        if c not in block:
            block.clear()
            block[c] = render_class(seed, classes[c], images_per_class, image_size)
        return block[c][i % images_per_class], b""

    digest = digest_of(params)
    names = [f"synthetic-{c:03d}" for c in classes]
    return SplitPlan(
        source="synthetic",
        split=split,
        image_size=image_size,
        channels=3,
        class_names=names,
        labels=np.repeat(np.arange(len(classes)), images_per_class),
        filenames=[f"{name}/{k:04d}" for name in names for k in range(images_per_class)],
        fingerprint=digest,
        preprocessing={"generator": params},
        read=read,
        source_digest=digest,
    )


def synthetic_split(
    split: str = "train",
    image_size: int = DEFAULT_IMAGE_SIZE,
    images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
    seed: int = DEFAULT_SEED,
) -> CachedSplit:
    """Generate a synthetic split in memory, the same object ``open_split`` returns.

    Args:
        split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
        image_size: side in pixels.
        images_per_class: images generated per class.
        seed: generator seed; the same seed gives the same pixels.
    """
    plan = plan_split(split, image_size, images_per_class, seed)
    images = np.concatenate(
        [render_class(seed, c, images_per_class, image_size) for c in CLASSES[split]]
    )
    mean, std = pixel_stats(images)
    meta = CacheMeta(
        source="synthetic",
        split=split,
        image_size=image_size,
        channels=3,
        num_images=len(images),
        class_names=plan.class_names,
        filenames=plan.filenames,
        mean=mean,
        std=std,
        source_sha256=plan.fingerprint,
        fingerprint=plan.fingerprint,
        images_sha256=hashlib.sha256(images.tobytes()).hexdigest(),
        preprocessing=plan.preprocessing,
        format_version=FORMAT_VERSION,
    )
    return CachedSplit(images, plan.labels, meta)
