"""Every registered backbone x conv kind; the registry; parameter counts in closed form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaacdc.acdc import count_parameters
from metaacdc.backbones import Backbone, create_backbone, list_backbones, register_backbone
from metaacdc.convs import conv_kind
from metaacdc.convs.kernel_sharing import Regulator, SharedKernelConv2d

#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONES = ["conv4", "conv6", "resnet10", "resnet18", "resnet34"]
KINDS = [
    "plain",
    "acdc-layer",
    "acdc-block",
    "acdc-net",
    "acdc-g-layer",
    "acdc-g-block",
    "acdc-g-net",
    "ks-net",
    "ks-stage",
]


def build(name: str, kind: str, image_size: int = 32, **kw: object) -> Backbone:
    options = {"group_size": 16} if "-g-" in kind else {}
    return create_backbone(name, conv_kind(kind, **options), image_size=image_size, **kw)


def test_registry_lists_the_depth_study() -> None:
    # user backbones registered by other tests join them (tests/backbones/toy_backbone.py)
    assert set(BACKBONES) <= set(list_backbones()) and list_backbones() == sorted(list_backbones())


def test_registry_refuses_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("conv4", depth=4, image_size=84, first_order=False)(
            lambda **kw: None  # type: ignore[arg-type,return-value]
        )
    with pytest.raises(
        ValueError, match="backbone='resnet50' is not valid; accepted values: conv4"
    ):
        create_backbone("resnet50")
    with pytest.raises(ValueError, match="conv='acdc-all' is not valid"):
        create_backbone("conv4", "acdc-all")
    with pytest.raises(ValueError, match="image_size=8 is too small"):
        create_backbone("conv4", image_size=8)
    with pytest.raises(ValueError, match="num_classes=0"):
        create_backbone("conv4", num_classes=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", BACKBONES)
def test_forward_shapes_and_gradients_reach_every_parameter(name: str, kind: str) -> None:
    model = build(name, kind, num_classes=4)
    x = torch.randn(4, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (4, model.feature_dim)
    logits = model.forward_head(features)
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize(
    ("name", "size", "dim"),
    [("conv4", 84, 1600), ("conv6", 84, 1600), ("conv4", 28, 64), ("resnet10", 224, 512)],
)
def test_feature_size_follows_image_size(name: str, size: int, dim: int) -> None:
    model = create_backbone(name, image_size=size)
    assert model.feature_dim == dim
    assert model.forward_features(torch.zeros(2, 3, size, size)).shape == (2, dim)


def test_batch_norm_uses_batch_statistics_in_eval_mode() -> None:
    model = create_backbone("conv4", image_size=28).eval()
    x = torch.randn(6, 3, 28, 28)
    together = model(x)
    alone = model(x[:3])
    assert not torch.allclose(together[:3], alone), "support and query are normalised separately"
    assert all(not m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def relu_then_pool_reference(model: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The textbook block order conv -> BN -> ReLU -> pool, on the model's own modules."""
    for block in model.features:
        if isinstance(block, nn.Sequential):
            conv, norm, *rest = block
            x = norm(conv(x))
            pools = [m for m in rest if isinstance(m, nn.MaxPool2d)]
            x = F.relu(x)
            x = pools[0](x) if pools else x
        else:
            x = block(x)
    return model.head(x)


@pytest.mark.parametrize("name", ["conv4", "conv6"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_pooling_before_relu_is_exactly_the_textbook_order(
    name: str, memory_format: torch.memory_format
) -> None:
    torch.manual_seed(0)
    model = build(name, "plain", image_size=28)
    x = torch.randn(6, 3, 28, 28).contiguous(memory_format=memory_format)
    y = torch.arange(6) % 5
    grads = []
    for forward in (model, lambda images: relu_then_pool_reference(model, images)):
        model.zero_grad()
        logits = forward(x)
        F.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (ours, our_grads), (textbook, textbook_grads) = grads
    assert torch.equal(ours, textbook)
    for got, expected in zip(our_grads, textbook_grads):
        assert torch.equal(got, expected)


def test_grayscale_input_channels() -> None:
    model = create_backbone("conv4", "acdc-net", image_size=28, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)


# ---------------------------------------------------------------- closed-form parameter counts
# Written from design §4, independently of the model code: (c_in, c_out, k, block) per conv,
# the 1x1 shortcuts, BN widths and bias widths.


Conv = tuple[int, int, int, str]  # c_in, c_out, kernel, block


def conv_spec(name: str) -> tuple[list[Conv], list[tuple[int, int]], list[int], list[int], int]:
    """Convs, 1x1 shortcuts, BN widths, conv-bias widths and feature size at 84 px."""
    if name in ("conv4", "conv6"):
        depth = int(name[-1])
        convs = [(3 if i == 0 else 64, 64, 3, f"b{min(i, 4)}") for i in range(depth)]
        return convs, [], [64] * depth, [64] * depth, 64 * 5 * 5  # 84 px input
    layout = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}[name]
    convs = [(3, 64, 7, "stem")]
    shortcuts, bns = [], [64]
    width = 64
    for stage, (out, count) in enumerate(zip((64, 128, 256, 512), layout)):
        for _ in range(count):
            convs += [(width, out, 3, f"s{stage}"), (out, out, 3, f"s{stage}")]
            bns += [out, out]
            if width != out:
                shortcuts.append((width, out))
                bns.append(out)
            width = out
    return convs, shortcuts, bns, [], 512


def expected_counts(
    name: str, share: str, m: int = 8, s: int | None = None
) -> tuple[int, int, int]:
    convs, shortcuts, bns, biases, feature_dim = conv_spec(name)
    other = sum(2 * c for c in bns) + sum(biases) + sum(a * b for a, b in shortcuts)
    other += feature_dim * 5 + 5
    if share == "plain":
        return 0, 0, other + sum(a * b * k * k for a, b, k, _ in convs)
    groupable = [c for c in convs if s is not None and c[0] >= s]
    alone = [c for c in convs if c not in groupable]
    units = {c: max(c[0], c[1]) // s for c in groupable} if s else {}
    atoms = sum(m * c[2] * c[2] * units.get(c, 1) for c in convs)
    scopes: dict[str, list[Conv]] = {}
    for index, conv in enumerate(groupable if s else convs):
        key = {"layer": str(index), "block": conv[3], "net": "net"}[share]
        scopes.setdefault(key, []).append(conv)
    if s is None:
        coefficients = sum(
            max(b for _, b, _, _ in g) * max(a for a, _, _, _ in g) * m for g in scopes.values()
        )
    else:
        coefficients = len(scopes) * s * s * m + sum(a * b * m for a, b, _, _ in alone)
    return coefficients, atoms, other


@pytest.mark.parametrize("share", ["plain", "layer", "block", "net"])
@pytest.mark.parametrize("name", BACKBONES)
def test_parameter_counts_match_closed_form(name: str, share: str) -> None:
    spec = "plain" if share == "plain" else f"acdc-{share}"
    counts = count_parameters(create_backbone(name, spec, image_size=84))
    assert (counts.coefficients, counts.atoms, counts.other) == expected_counts(name, share)


@pytest.mark.parametrize("share", ["layer", "block", "net"])
@pytest.mark.parametrize("name", BACKBONES)
def test_grouped_parameter_counts_match_closed_form(name: str, share: str) -> None:
    kind = conv_kind(f"acdc-g-{share}", group_size=32, atoms=16)
    counts = count_parameters(create_backbone(name, kind, image_size=84))
    assert (counts.coefficients, counts.atoms, counts.other) == expected_counts(name, share, 16, 32)


def test_acdc_net_formula_for_equal_widths() -> None:
    """Design §3: c^2 m + N m l^2 for N equal-width 3x3 layers (Conv4 without its stem)."""
    counts = count_parameters(create_backbone("conv4", "acdc-net", image_size=84))
    assert counts.coefficients == 64 * 64 * 8 and counts.atoms == 4 * 8 * 9


# ------------------------------------------------------------------------ kernel sharing


def shared_weights(model: nn.Module) -> list[list[SharedKernelConv2d]]:
    groups: dict[int, list[SharedKernelConv2d]] = {}
    for module in model.modules():
        if isinstance(module, SharedKernelConv2d):
            groups.setdefault(id(module.weight), []).append(module)
    return list(groups.values())


def test_kernel_sharing_net_anchors_one_kernel_per_shape() -> None:
    model = create_backbone("resnet18", "ks-net", image_size=32)
    sizes = sorted(len(g) for g in shared_weights(model))
    # stem alone; per stage the first conv of stages 2-4 differs in shape from the rest
    assert sizes == [1, 1, 1, 1, 3, 3, 3, 4]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len({id(b.weight) for b in bns}) == len(bns), "every layer keeps its own BN"


def test_kernel_sharing_stage_scope_respects_pooling() -> None:
    conv6 = create_backbone("conv6", "ks-stage", image_size=84)
    assert sorted(len(g) for g in shared_weights(conv6)) == [1, 1, 1, 1, 2]
    conv6_net = create_backbone("conv6", "ks-net", image_size=84)
    assert sorted(len(g) for g in shared_weights(conv6_net)) == [1, 5]


def test_kernel_sharing_regulators_one_per_block() -> None:
    model = create_backbone("resnet10", conv_kind("ks-net", regulators=True), image_size=32)
    assert len([m for m in model.modules() if isinstance(m, Regulator)]) == 4
    plain = create_backbone("resnet10", "ks-net", image_size=32)
    extra = count_parameters(model).total - count_parameters(plain).total
    assert extra == sum(c * c + 2 * c for c in (64, 128, 256, 512))
