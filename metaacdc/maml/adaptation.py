"""Adapting a trained meta-learner to new few-shot tasks: the code path of the evaluator,
of validation and of the adaptation API (:func:`metaacdc.load`).

Adaptation is :func:`metaacdc.maml.learner.adapt_task` on a first-order, detached task copy:
no second-order graph is built and nothing is written into the meta-learner, which can be
adapted to any number of tasks in turn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metaacdc.config import TrainConfig
from metaacdc.data.facts import DataFacts
from metaacdc.data.images import ImageLike, ImagePreprocessor
from metaacdc.data.normalise import Normalise
from metaacdc.data.transforms import eval_transform_for
from metaacdc.errors import ConfigError, NonFiniteError, check_positive_int
from metaacdc.maml.adapted import FirstWays, checked_lr, checked_module, diverged
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.l2l import learn2learn as l2l
from metaacdc.maml.learner import MetaLearner, adapt_task
from metaacdc.maml.modes import evaluation_mode
from metaacdc.runtime.budget import pieces_that_fit
from metaacdc.runtime.finite import all_finite, require_finite

#: what the image arguments hold, for the messages that name them
_WHAT = {"support_x": "the support images", "query_x": "the query images"}


class Learner:
    """A trained meta-learner ready to adapt to new few-shot tasks (see :func:`metaacdc.load`).

    Args:
        meta: the meta-learner, with its trained weights.
        config: the run's resolved configuration.
        data: the preprocessing facts recorded with the run (its
            :class:`~metaacdc.data.facts.DataFacts`).
        device: where adaptation runs.

    Attributes:
        meta: the :class:`~metaacdc.maml.learner.MetaLearner`. Adaptation runs in its
            current mode: :func:`metaacdc.load` gives it in eval mode (atom-drop off), and
            :func:`metaacdc.evaluation.evaluate` holds it there for its tasks.
        config: the resolved :class:`~metaacdc.config.TrainConfig`.
        data: the recorded :class:`~metaacdc.data.facts.DataFacts` (``data.mean``,
            ``data.std``, ``data.source``, ...).
        device: the device of the model; inputs are moved to it.
    """

    def __init__(
        self, meta: MetaLearner, config: TrainConfig, data: DataFacts, device: torch.device
    ) -> None:
        self.meta = meta.to(device)
        self.config = config
        self.data = data
        self.device = device
        assert config.dataset is not None, "resolve() the config first"
        transform = eval_transform_for(config.dataset, config.augment)
        self._engine: BatchedMAML | None = None
        self._task_bytes: dict[tuple[object, ...], int] = {}
        self._task_counts: dict[tuple[object, ...], int] = {}
        self._preprocess = ImagePreprocessor(
            data.channels,
            data.image_size,
            data.inverted,
            Normalise(data.channels, data.mean, data.std, transform),
        )

    @property
    def ways(self) -> int:
        """Outputs of the classifier head: the largest N of an N-way task."""
        return int(self.meta.model.head.out_features)

    @property
    def channels(self) -> int:
        """Input channels (3 for RGB, 1 for grayscale)."""
        return self.data.channels

    @property
    def image_size(self) -> int:
        """Input side ``H == W`` in pixels."""
        return self.data.image_size

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
            ConfigError: an input of an unsupported type, shape or dtype, an image of no
                pixels (0 wide or high), or an empty list.
            NonFiniteError: (a ``ConfigError``) a float array holding NaN or infinity.
            FileNotFoundError: a path that does not exist.
        """
        return self._preprocess(images).to(self.device)

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
            support_x: ``(S, C, H, W)`` float images from :meth:`preprocess` (another float
                type than the model's, float64 say, is converted to it).
            support_y: ``(S,)`` int64 labels in ``0..N-1``, each label present,
                ``2 <= N <= ways``.
            steps: inner steps (0 gives the unadapted model); default the run's
                ``test_inner_steps``.
            lr: inner step size, finite and positive; default the run's ``inner_lr``. Not
                accepted for Meta-SGD runs, whose step sizes are learned per parameter.

        Returns:
            A module in eval mode: ``model(query_x)`` gives ``(Q, N)`` logits. Its adapted
            parameters are plain tensors (no gradient). With ``adapt: head`` runs, the
            feature extractor is the learner's own (not adapted, shared). Called without
            autograd (``torch.no_grad()``, as :meth:`predict` and the evaluator call it), a
            Conv backbone pools before its batch norms' per-channel map
            (:mod:`metaacdc.backbones.pool_first`): the same logits up to float rounding.
            It converts float inputs to the model's type, and raises
            :class:`~metaacdc.errors.NonFiniteError` rather than return NaN or infinite
            logits (naming the query images when they hold such values).

        Raises:
            ConfigError: inputs of a wrong type, shape, dtype or label set; a bad
                ``steps`` or ``lr``.
            NonFiniteError: (a ``ConfigError``) ``support_x`` holds NaN or infinity, or the
                adaptation diverged (NaN or infinite adapted weights: use a smaller ``lr``
                or fewer ``steps``).
        """
        ways = self._check_support(support_x, support_y)
        steps = self.config.test_inner_steps if steps is None else steps
        check_positive_int("steps", steps, minimum=0)
        assert steps is not None
        lr = checked_lr(lr)
        support_x = self._finite_inputs("support_x", support_x)
        with torch.enable_grad():  # also when called under torch.no_grad()
            task = self.meta.task_learner(first_order=True, detached=True)
            if lr is not None:
                if not isinstance(task.head, l2l.algorithms.MAML):
                    raise ConfigError(
                        "lr cannot be set for a Meta-SGD run: its step sizes are learned per "
                        "parameter; leave lr=None"
                    )
                task.head.lr = lr
            if ways < self.ways:
                task = FirstWays(task, ways)
            adapt_task(task, support_x, support_y.to(self.device), steps)
        l2l.utils.detach_module(task.head)  # the adapted copy only, never shared features
        if lr is None and self.config.meta_sgd:
            adapted = f"after {steps} step(s) at the learned step sizes"
        else:
            adapted = f"after {steps} step(s) at lr={self.config.inner_lr if lr is None else lr}"
        if not all_finite(task.head.parameters()):
            if not all_finite(self.meta.parameters()):  # only on the way out: not the cause
                raise NonFiniteError(
                    "the model's own weights hold NaN or infinity (its training diverged, or "
                    "they were changed after loading)"
                )
            raise diverged(adapted, "the adapted weights")
        return checked_module(task.as_module(), self.dtype, adapted).eval()

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

        Raises:
            ConfigError: as for :meth:`adapt`, and a query set of a wrong type or shape.
            NonFiniteError: ``support_x`` or ``query_x`` holds NaN or infinity, or the
                adaptation diverged (NaN or infinite adapted weights or logits).
        """
        self._check_images("query_x", query_x)  # the model's size, hence the support's
        query_x = self._finite_inputs("query_x", query_x)
        model = self.adapt(support_x, support_y, steps=steps, lr=lr)
        with torch.no_grad():
            logits = model(query_x)  # checked finite by the adapted model
        predicted = logits.argmax(1)
        return (predicted, logits) if return_logits else predicted

    def predict_tasks(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        *,
        steps: int | None = None,
        lr: float | None = None,
        return_logits: bool = False,
        tasks_per_batch: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """:meth:`predict` for many tasks at once, by the batched engine
        (:mod:`metaacdc.maml.batched`): the tasks are adapted together, as many per call as
        fit in memory, each exactly as :meth:`predict` adapts it alone (up to float
        rounding). On a GPU this is many times faster than a loop over :meth:`predict`.

        Args:
            support_x: ``(T, S, C, H, W)`` float support images, ``T`` tasks of one shape.
            support_y: ``(T, S)`` int64 labels; each task's are ``0..N-1``, one ``N`` for
                every task.
            query_x: ``(T, Q, C, H, W)`` float query images.
            steps, lr: as for :meth:`adapt`.
            return_logits: also return the ``(T, Q, N)`` logits.
            tasks_per_batch: tasks adapted per call; default :meth:`tasks_per_batch`.

        Returns:
            ``(T, Q)`` int64 predicted labels (on :attr:`device`), and the logits when asked.

        Raises:
            ConfigError: inputs of a wrong type, shape, dtype or label set (tasks of
                different shapes or ways are refused: predict them in separate calls); a
                bad ``steps``, ``lr`` or ``tasks_per_batch``.
            NonFiniteError: ``support_x`` or ``query_x`` holds NaN or infinity, or an
                adaptation diverged (NaN or infinite logits: use a smaller ``lr`` or fewer
                ``steps``).
        """
        ways = self._check_tasks(support_x, support_y, query_x)
        steps = self.config.test_inner_steps if steps is None else steps
        check_positive_int("steps", steps, minimum=0)
        assert steps is not None
        lr = checked_lr(lr)
        support_x = self._finite_inputs("support_x", support_x)
        query_x = self._finite_inputs("query_x", query_x)
        support_y = support_y.to(self.device)
        if tasks_per_batch is None:
            tasks_per_batch = self.tasks_per_batch(support_x[0], support_y[0])
        check_positive_int("tasks_per_batch", tasks_per_batch)
        engine = self._batched_engine()
        logits = torch.cat(
            [
                engine.adapted_logits(
                    support_x[start : start + tasks_per_batch],
                    support_y[start : start + tasks_per_batch],
                    query_x[start : start + tasks_per_batch],
                    steps,
                    lr=lr,
                    ways=ways,
                )
                for start in range(0, len(support_x), tasks_per_batch)
            ]
        )
        if not all_finite([logits]):
            raise diverged(f"after {steps} step(s)", "the adapted models' logits")
        predicted = logits.argmax(-1)
        return (predicted, logits) if return_logits else predicted

    def tasks_per_batch(self, support_x: Tensor, support_y: Tensor) -> int:
        """How many tasks like this one (``support_x`` ``(S, C, H, W)``, ``support_y``
        ``(S,)``) :meth:`predict_tasks` adapts per call: as many as fit in a share of the
        device's free memory (:func:`metaacdc.runtime.budget.pieces_that_fit`), measured
        from the activations one task's inner step keeps."""
        support_x = support_x.to(self.device, self.dtype)
        key = (tuple(support_x.shape), support_x.dtype)
        if key not in self._task_bytes:
            with evaluation_mode(self.meta):
                self._task_bytes[key] = self._batched_engine().adaptation_bytes(
                    support_x, support_y.to(self.device)
                )
        engine = self._batched_engine()
        if not engine.captures:
            return pieces_that_fit(self._task_bytes[key], self.device)
        # captured adaptations are kept per call shape: a count fixed once for the shape,
        # not re-read from the free memory their own graphs take
        if key not in self._task_counts:
            self._task_counts[key] = pieces_that_fit(self._task_bytes[key], self.device)
        return self._task_counts[key]

    def _batched_engine(self) -> BatchedMAML:
        if self._engine is None:
            graphs = self.device.type == "cuda" and self.config.cuda_graphs != "off"
            self._engine = BatchedMAML(self.meta, cuda_graphs=graphs)
        return self._engine

    # ------------------------------------------------------------------- validation

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point type; float images of another are converted to it."""
        return next(self.meta.parameters()).dtype

    def _finite_inputs(self, name: str, images: Tensor) -> Tensor:
        """Checked float ``images`` (argument ``name``) on :attr:`device` as :attr:`dtype`.

        Raises:
            NonFiniteError: a NaN or infinite pixel (one pass over the images).
        """
        require_finite(f"{name} ({_WHAT[name]})", images)
        return images.to(self.device, self.dtype)

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

    def _check_tasks(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> int:
        """Validate stacked tasks for :meth:`predict_tasks`; returns their N."""
        for name, tensor in (("support_x", support_x), ("query_x", query_x)):
            if not isinstance(tensor, Tensor) or tensor.dim() != 5:
                got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise ConfigError(
                    f"{name} must be a (T, N, {self.channels}, {self.image_size}, "
                    f"{self.image_size}) tensor of T tasks, got {got}"
                )
        if len(query_x) != len(support_x):
            raise ConfigError(
                f"support_x holds {len(support_x)} tasks but query_x {len(query_x)}; "
                "give one query set per task"
            )
        if not isinstance(support_y, Tensor) or support_y.dim() != 2:
            got = tuple(support_y.shape) if isinstance(support_y, Tensor) else type(support_y)
            raise ConfigError(f"support_y must be a (T, S) tensor of labels, got {got}")
        if len(support_y) != len(support_x):
            raise ConfigError(
                f"support_y holds {len(support_y)} tasks but support_x {len(support_x)}"
            )
        if len(support_x) == 0:
            raise ConfigError("no task given; stack at least one task along the first dimension")
        ways = [self._check_support(x, y) for x, y in zip(support_x, support_y)]
        for index, query in enumerate(query_x):
            self._check_images(f"query_x[{index}]", query)
        if len(set(ways)) > 1:
            raise ConfigError(
                f"the tasks have {sorted(set(ways))} ways; predict_tasks takes tasks of one "
                "N (predict the others in another call)"
            )
        return ways[0]

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
