"""Pool-first batch norm (metaacdc.backbones.pool_first): the textbook order's numbers (what
the blocks run with the CPU fast paths off), used only where it applies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaacdc.backbones import convnet, create_backbone
from metaacdc.backbones.pool_first import pooled_batch_norm
from metaacdc.convs import conv_kind
from metaacdc.runtime.fast_paths import cpu_fast_paths

#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def pool_first_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times the Conv blocks took the pool-first path."""
    calls: list[int] = []

    def counted(*args: object) -> torch.Tensor:
        calls.append(1)
        return pooled_batch_norm(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(convnet, "pooled_batch_norm", counted)
    yield calls


def trained_looking_norms(model: nn.Module) -> nn.Module:
    """Batch-norm weights and biases away from their 1 / 0 initialisation (weights > 0)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.2, 2.0)
            nn.init.normal_(module.bias)
    return model


@pytest.mark.parametrize("name", ["conv4", "conv6"])
@pytest.mark.parametrize("kind", ["plain", "acdc-net", "ks-net"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_without_autograd_blocks_pool_first_and_match_the_textbook_order(
    name: str,
    kind: str,
    memory_format: torch.memory_format,
    mode: type,
    pool_first_calls: list[int],
) -> None:
    torch.manual_seed(0)
    model = trained_looking_norms(create_backbone(name, conv_kind(kind), image_size=42))
    model.eval()  # ACDC-net drops atoms at random in training
    x = torch.randn(7, 3, 42, 42).contiguous(memory_format=memory_format)
    pool_first_calls.clear()  # building an ACDC-net model runs it once to find its layers
    with mode():
        ours = model(x)
        assert len(pool_first_calls) == convnet.POOLED_BLOCKS
        with cpu_fast_paths(False):
            expected = model(x)
    assert len(pool_first_calls) == convnet.POOLED_BLOCKS, "fast paths off: never pools first"
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_with_autograd_or_a_negative_weight_blocks_run_the_textbook_order(
    pool_first_calls: list[int],
) -> None:
    torch.manual_seed(0)
    model = trained_looking_norms(create_backbone("conv4", "plain", image_size=28))
    x = torch.randn(6, 3, 28, 28)
    with cpu_fast_paths(False):
        textbook = model(x)
    assert torch.equal(model(x), textbook)  # gradients recorded
    first_block = model.features[0]
    with torch.no_grad():
        first_block[1].weight[3] = -0.5
        with cpu_fast_paths(False):
            textbook = first_block(x)
        assert torch.equal(first_block(x), textbook)
    assert pool_first_calls == []


@pytest.mark.parametrize(
    "pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, ceil_mode=True)]
)
@pytest.mark.parametrize("size", [8, 9])
def test_pooled_batch_norm_equals_normalising_then_pooling(pool: nn.MaxPool2d, size: int) -> None:
    torch.manual_seed(0)
    norm = trained_looking_norms(nn.BatchNorm2d(5, track_running_stats=False))
    nn.init.zeros_(norm.weight[:1])  # a constant channel: any pooled value maps to the bias
    x = torch.randn(4, 5, size, size) * 3 + 2
    with torch.no_grad():
        got = pooled_batch_norm(x, norm, pool)  # type: ignore[arg-type]
        expected = pool(F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_blocks_keep_the_parameter_names_of_a_sequential() -> None:
    model = create_backbone("conv4", "plain", image_size=28)
    names = [name for name in model.state_dict() if name.startswith("features.0.")]
    expected = ["features.0.0.weight", "features.0.0.bias", "features.0.1.weight"]
    assert names == [*expected, "features.0.1.bias"]  # checkpoints of earlier runs load
