"""The adaptation API: load a trained run, turn your images into its inputs, adapt it to a
few labelled examples and classify new ones.

Typical use::

    import metaacdc
    learner = metaacdc.load("runs/conv4-5w1s")          # a run folder or a checkpoint file
    support_x = learner.preprocess(["cat1.jpg", "dog1.jpg"])   # (2, C, H, W)
    predicted = learner.predict(support_x, torch.tensor([0, 1]), learner.preprocess(queries))

Adaptation is the one the evaluator uses (:func:`metaacdc.maml.learner.adapt_task` on a
first-order, detached task copy): no second-order graph is built and nothing is written into
the loaded model, which can be adapted to any number of tasks in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from metaacdc.config import TrainConfig, resolve
from metaacdc.data.sources.base import decode_image, read_bytes, resize_array
from metaacdc.errors import ConfigError, check_positive_int
from metaacdc.experiment import build_model, evaluation_transform
from metaacdc.maml.l2l import learn2learn as l2l
from metaacdc.maml.learner import MetaLearner, TaskLearner, adapt_task
from metaacdc.runfolder import read_checkpoint

ImageLike: TypeAlias = Image.Image | np.ndarray | str | Path | Tensor
"""One raw image: a PIL image, an ``H x W (x C)`` array, a file path or a uint8 tensor."""

DATA_FACTS = ("channels", "image_size", "mean", "std", "inverted")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; otherwise ``torch.device(device)``.

    Raises:
        ConfigError: an unknown device name, CUDA asked for but not available, or a GPU
            number this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"device={device!r} is not valid; accepted: auto, cpu, cuda, cuda:N"
        ) from error
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} asked for, but CUDA is not available here")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ConfigError(
            f"device={device!r} is not available: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return resolved


class FirstLogits(nn.Module):
    """``module`` restricted to the logits of its first ``ways`` classes (an N-way task on
    a head with more outputs)."""

    def __init__(self, module: nn.Module, ways: int) -> None:
        super().__init__()
        self.module = module
        self.ways = ways

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images -> ``(N, ways)`` logits."""
        return self.module(x)[:, : self.ways]


class _FirstWays(TaskLearner):
    """A task learner whose logits (hence its support loss) use the first ``ways`` outputs."""

    def __init__(self, task: TaskLearner, ways: int) -> None:
        super().__init__(task.features, task.head, task.first_order, task.layouts)
        self.ways = ways

    def logits_in(self, x: Tensor, memory_format: torch.memory_format) -> Tensor:
        return super().logits_in(x, memory_format)[:, : self.ways]

    def as_module(self) -> nn.Module:
        return FirstLogits(super().as_module(), self.ways)


class Learner:
    """A trained meta-learner ready to adapt to new few-shot tasks (see :func:`load`).

    Args:
        meta: the meta-learner, with its trained weights.
        config: the run's resolved configuration.
        data: the preprocessing facts recorded with the run (``channels``, ``image_size``,
            ``mean``, ``std``, ``inverted``; see :func:`metaacdc.experiment.data_facts`).
        device: where adaptation runs.

    Attributes:
        meta: the :class:`~metaacdc.maml.learner.MetaLearner` (eval mode).
        config: the resolved :class:`~metaacdc.config.TrainConfig`.
        data: the recorded data facts.
        device: the device of the model; inputs are moved to it.
    """

    def __init__(
        self, meta: MetaLearner, config: TrainConfig, data: dict[str, Any], device: torch.device
    ) -> None:
        self.meta = meta.to(device).eval()
        self.config = config
        self.data = data
        self.device = device
        channels = int(data["channels"])
        self._mean = torch.tensor(data["mean"], dtype=torch.float32).view(1, channels, 1, 1)
        self._std = torch.tensor(data["std"], dtype=torch.float32).view(1, channels, 1, 1)
        self._transform = evaluation_transform(config)

    @property
    def ways(self) -> int:
        """Outputs of the classifier head: the largest N of an N-way task."""
        return int(self.meta.model.head.out_features)

    @property
    def channels(self) -> int:
        """Input channels (3 for RGB, 1 for grayscale)."""
        return int(self.data["channels"])

    @property
    def image_size(self) -> int:
        """Input side ``H == W`` in pixels."""
        return int(self.data["image_size"])

    def __repr__(self) -> str:
        return (
            f"Learner({self.config.backbone}, conv={self.config.conv}, ways={self.ways}, "
            f"{self.channels}x{self.image_size}x{self.image_size} inputs, device={self.device})"
        )

    # ----------------------------------------------------------------- preprocessing

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Raw images -> model inputs, with exactly the run's evaluation preprocessing.

        Each image is converted to the run's channels (RGB or grayscale ``L``), resized to
        ``image_size`` squared with PIL bilinear (as ``metaacdc data prepare`` does; no
        resize when it already has that size), inverted for Omniglot runs, then given the
        run's evaluation transform (resize 1.15x and centre crop, when it has one) and
        normalised with the mean and std recorded in the checkpoint.

        Args:
            images: one image or a list of them. An image is a PIL image; a numpy array
                ``H x W`` or ``H x W x C`` (C in 1, 3, 4), uint8 in 0..255 or float in
                0..1 (rounded to uint8 first, as an image file would be); a path to an
                image file; or a uint8 tensor ``(C, H, W)``. A uint8 tensor
                ``(N, C, H, W)`` is a batch. All are raw pictures, as a dataset's files
                hold them (Omniglot: dark strokes on white).

        Returns:
            ``(N, C, H, W)`` float32 on :attr:`device`.

        Raises:
            ConfigError: an input of an unsupported type, shape or dtype, or an empty list.
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
        # the same float operations as the episode sampler (EpisodeBuilder.images)
        if self._transform is None:
            out = batch.float().mul_(1.0 / (255.0 * self._std)).add_(-self._mean / self._std)
        else:
            out = self._transform(batch.float().div_(255.0), None)
            out = out.sub_(self._mean).div_(self._std).contiguous()
        return out.to(self.device)

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
            array = resize_array(item.convert(mode), self.image_size)
        if self.data["inverted"]:
            array = 255 - array  # after resizing, as the Omniglot cache does
        return array

    # ------------------------------------------------------------------- adaptation

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int | None = None,
        lr: float | None = None,
    ) -> nn.Module:
        """An adapted copy of the model for one N-way task; the learner is unchanged.

        Takes ``steps`` first-order SGD steps on the support set's cross-entropy, on a copy
        detached from the learner (no second-order graph, no ``.grad`` written into it).
        For ``N`` below the head's :attr:`ways` only the first ``N`` logits are used, in
        adaptation and in the returned model.

        Args:
            support_x: ``(S, C, H, W)`` float images from :meth:`preprocess`.
            support_y: ``(S,)`` int64 labels in ``0..N-1``, each label present,
                ``2 <= N <= ways``.
            steps: inner steps; default the run's ``test_inner_steps``.
            lr: inner step size; default the run's ``inner_lr``. Not accepted for Meta-SGD
                runs, whose step sizes are learned per parameter.

        Returns:
            A module in eval mode: ``model(query_x)`` gives ``(Q, N)`` logits. Its adapted
            parameters are plain tensors (no gradient). With ``adapt: head`` runs, the
            feature extractor is the learner's own (not adapted, shared). Called without
            autograd (``torch.no_grad()``, as :meth:`predict` and the evaluator call it), a
            Conv backbone pools before its batch norms' per-channel map
            (:mod:`metaacdc.backbones.pool_first`): the same logits up to float rounding.

        Raises:
            ConfigError: inputs of a wrong type, shape, dtype or label set; a bad
                ``steps`` or ``lr``.
        """
        ways = self._check_support(support_x, support_y)
        steps = self.config.test_inner_steps if steps is None else steps
        check_positive_int("steps", steps, minimum=0)
        assert steps is not None
        if lr is not None and (
            isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0
        ):
            raise ConfigError(f"lr={lr!r} is not valid; expected a positive number")
        with torch.enable_grad():  # also when called under torch.no_grad()
            task = self.meta.task_learner(first_order=True, detached=True)
            if lr is not None:
                if not isinstance(task.head, l2l.algorithms.MAML):
                    raise ConfigError(
                        "lr cannot be set for a Meta-SGD run: its step sizes are learned per "
                        "parameter; leave lr=None"
                    )
                task.head.lr = float(lr)
            if ways < self.ways:
                task = _FirstWays(task, ways)
            adapt_task(task, support_x.to(self.device), support_y.to(self.device), steps)
        l2l.utils.detach_module(task.head)  # the adapted copy only, never shared features
        return task.as_module().eval()

    def predict(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        *,
        steps: int | None = None,
        lr: float | None = None,
        return_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Adapt to the support set (:meth:`adapt`) and classify the queries.

        Args:
            support_x: ``(S, C, H, W)`` float support images.
            support_y: ``(S,)`` int64 labels in ``0..N-1``.
            query_x: ``(Q, C, H, W)`` float query images, same size as the support.
            steps: inner steps; default the run's ``test_inner_steps``.
            lr: inner step size; default the run's ``inner_lr``.
            return_logits: also return the ``(Q, N)`` logits.

        Returns:
            ``(Q,)`` int64 predicted labels (on :attr:`device`), and the logits when asked.
        """
        self._check_images("query_x", query_x)  # the model's size, hence the support's
        model = self.adapt(support_x, support_y, steps=steps, lr=lr)
        with torch.no_grad():
            logits = model(query_x.to(self.device))
        predicted = logits.argmax(1)
        return (predicted, logits) if return_logits else predicted

    # ------------------------------------------------------------------- validation

    def _check_images(self, name: str, images: object) -> None:
        expected = f"(N, {self.channels}, {self.image_size}, {self.image_size})"
        if not isinstance(images, Tensor):
            raise ConfigError(
                f"{name} must be a tensor {expected}, got {type(images).__name__}; "
                "use learner.preprocess(images) to build one"
            )
        if not images.is_floating_point():
            raise ConfigError(
                f"{name} has dtype {images.dtype}; expected float images from "
                "learner.preprocess (uint8 pixels are not normalised)"
            )
        if images.dim() != 4 or images.shape[1:] != (
            self.channels,
            self.image_size,
            self.image_size,
        ):
            raise ConfigError(f"{name} has shape {tuple(images.shape)}; expected {expected}")
        if images.shape[0] == 0:
            raise ConfigError(f"{name} is empty; give at least one image per class")

    def _check_support(self, support_x: Tensor, support_y: Tensor) -> int:
        """Validate a support set; returns N, its number of classes."""
        self._check_images("support_x", support_x)
        if not isinstance(support_y, Tensor) or support_y.dtype != torch.int64:
            kind = support_y.dtype if isinstance(support_y, Tensor) else type(support_y).__name__
            raise ConfigError(f"support_y must be an int64 (long) tensor of labels, got {kind}")
        if support_y.dim() != 1 or len(support_y) != len(support_x):
            raise ConfigError(
                f"support_y has shape {tuple(support_y.shape)}; expected ({len(support_x)},), "
                "one label per support image"
            )
        present = torch.unique(support_y.cpu()).tolist()
        ways = present[-1] + 1
        if present[0] < 0 or present != list(range(ways)):
            raise ConfigError(
                f"support_y labels are {present}; expected every label of 0..N-1 "
                "(N classes, each with at least one support image)"
            )
        if ways < 2:
            raise ConfigError("support_y has a single class; a task needs N >= 2 classes")
        if ways > self.ways:
            raise ConfigError(
                f"support_y has {ways} classes but this model's head has {self.ways} "
                f"outputs; tasks of 2 to {self.ways} ways are accepted"
            )
        return ways


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
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
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


def load(run_or_checkpoint: str | Path, device: str | torch.device | None = None) -> Learner:
    """Load a trained run for adaptation.

    Args:
        run_or_checkpoint: a run folder (its ``checkpoints/best.pt``, else ``last.pt``) or
            a checkpoint file.
        device: ``None``/``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...

    Returns:
        A :class:`Learner` in eval mode.

    Raises:
        FileNotFoundError: no such folder or file, or a run folder without checkpoints.
        ConfigError: not a metaacdc checkpoint, or one this version cannot rebuild.
    """
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: run folder or checkpoint not found")
    target = resolve_device(device)
    payload = read_checkpoint(path, map_location="cpu")
    config_values, data = payload["config"], payload["data"]
    if not isinstance(config_values, dict) or not isinstance(data, dict):
        raise ConfigError(f"{path}: incompatible checkpoint (config or data is not a mapping)")
    missing = [key for key in DATA_FACTS if key not in data]
    if missing:
        raise ConfigError(
            f"{path}: incompatible checkpoint (its data facts lack {', '.join(missing)})"
        )
    try:
        config = resolve(TrainConfig.from_dict(config_values, source="checkpoint config"))
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"{path}: incompatible checkpoint ({error})") from error
    if config.image_size != data["image_size"]:
        raise ConfigError(
            f"{path}: incompatible checkpoint (config image_size {config.image_size} but "
            f"data image_size {data['image_size']})"
        )
    assert config.first_order is not None
    model = build_model(config, int(data["channels"]))
    meta = MetaLearner(model, config.inner_lr, config.first_order, config.adapt, config.meta_sgd)
    try:
        meta.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{path}: incompatible checkpoint (its weights do not fit the model its config "
            f"describes: {first})"
        ) from error
    return Learner(meta, config, data, target)
