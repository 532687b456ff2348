"""bfloat16 autocast on the CPU (``meta_train_step(..., amp=True)``): in effect, float32
weights and gradients, and a meta-update close to float32's. (tests/test_cuda.py checks the
same on a GPU.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from metaacdc.acdc.layer import ACDCConv2d
from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind
from metaacdc.data import EpisodeSampler
from metaacdc.maml.learner import MetaLearner
from metaacdc.training import meta_train_step
from metaacdc.training.step import StepStats
from tests.tiny_runs import IMAGE_SIZE, synthetic

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")

WAYS = 3
#: Measured (3-way 1-shot 4-query and 5-way 1- and 5-shot tasks of 32 px images, sampler
#: seeds 0-2, plain and acdc-net, first and second order; 36 cases): the query loss within
#: 0.32 % of float32's, the meta-gradient's cosine with float32's 0.938-0.985, its norm
#: 0.978-1.025 times float32's, while the difference's norm is 18-36 % of it (bfloat16 keeps
#: 8 bits of mantissa and batch norm over a few images amplifies the rounding; docs/gpu.md).
LOSS_RTOL = 0.01
MIN_COSINE = 0.9
NORM_RATIO = (0.9, 1.1)


class ConvOutputs(TorchFunctionMode):
    """Records the dtype of every ``conv2d`` result (plain convs and ACDC layers alike
    call ``F.conv2d``), after autocast has chosen its precision."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in (F.conv2d, torch.conv2d):
            self.dtypes.append(out.dtype)
        return out


def meta_step(conv: str, amp: bool) -> tuple[StepStats, list[torch.Tensor], list[torch.dtype]]:
    """One second-order meta-update (frozen weights) on two 3-way 1-shot tasks: its
    statistics, meta-gradient and the dtypes of the conv results it computed."""
    sampler = EpisodeSampler(synthetic("train"), ways=WAYS, shots=1, queries=4, seed=0)
    tasks = [sampler.episode(i) for i in range(2)]
    torch.manual_seed(3)
    kind = conv_kind(conv, atom_drop=0.0)
    model = create_backbone("conv4", kind, num_classes=WAYS, image_size=IMAGE_SIZE)
    learner = MetaLearner(model, 0.01, first_order=False)
    frozen = torch.optim.SGD(learner.parameters(), lr=0.0)
    with ConvOutputs() as convs:
        stats = meta_train_step(learner, tasks, frozen, 2, torch.device("cpu"), amp)
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    return stats, [p.grad for p in learner.parameters()], convs.dtypes  # type: ignore[misc]


@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
def test_bfloat16_autocast_on_the_cpu_stays_close_to_float32(conv: str) -> None:
    exact_stats, exact, exact_convs = meta_step(conv, amp=False)
    mixed_stats, mixed, mixed_convs = meta_step(conv, amp=True)
    # in effect: every convolution (inner steps and queries, 2 tasks) ran in bfloat16
    assert len(mixed_convs) == len(exact_convs) > 0
    assert set(exact_convs) == {torch.float32} and set(mixed_convs) == {torch.bfloat16}
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in mixed)
    assert mixed_stats.loss == pytest.approx(exact_stats.loss, rel=LOSS_RTOL)
    flat_mixed = torch.cat([g.flatten() for g in mixed])
    flat_exact = torch.cat([g.flatten() for g in exact])
    assert F.cosine_similarity(flat_mixed, flat_exact, dim=0) > MIN_COSINE
    ratio = float(flat_mixed.norm() / flat_exact.norm())
    assert NORM_RATIO[0] < ratio < NORM_RATIO[1]


@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
def test_every_conv_layer_hands_bfloat16_to_the_next_layer(conv: str) -> None:
    """Under autocast each conv layer's output, bias included, stays bfloat16, so batch
    norm and the layers after it run in bfloat16 too (an ACDC layer's float32 bias once
    promoted its output back to float32, and AMP saved nothing after the first conv)."""
    model = create_backbone(
        "conv4", conv_kind(conv, atom_drop=0.0), num_classes=WAYS, image_size=IMAGE_SIZE
    )
    outputs: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | ACDCConv2d):
            module.register_forward_hook(lambda m, i, out: outputs.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert len(outputs) == 4 and set(outputs) == {torch.bfloat16}
    assert logits.dtype == torch.bfloat16
