"""The adaptation API: loading, preprocessing equal to the evaluation sampler's, adaptation
that leaves the loaded model untouched, N-way tasks, and every input error."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import metaacdc
from metaacdc.api import Learner, load
from metaacdc.data import EpisodeSampler, open_split, prepare
from metaacdc.errors import ConfigError, NonFiniteError
from metaacdc.maml.l2l import learn2learn as l2l
from metaacdc.maml.learner import InLayout
from metaacdc.runs.checkpoint import save_checkpoint
from metaacdc.runs.experiment import evaluation_transform
from metaacdc.runs.folder import read_checkpoint
from metaacdc.runtime.device import resolve_device
from tests.data.data_fakes import write_fake_miniimagenet
from tests.tiny_runs import IMAGE_SIZE, make_run, synthetic, tiny_config

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run")).root


@pytest.fixture(scope="module")
def learner(run_dir: Path) -> Learner:
    return load(run_dir, device="cpu")


@pytest.fixture(scope="module")
def task(learner: Learner) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    sampler = EpisodeSampler(
        synthetic("test"),
        ways=5,
        shots=2,
        queries=3,
        seed=1,
        mean=learner.data.mean,
        std=learner.data.std,
        transform=evaluation_transform(learner.config),
    )
    return tuple(sampler.episode(0)[:4])  # type: ignore[return-value]


def snapshot(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.meta.state_dict().items()}


# ------------------------------------------------------------------------- loading


def test_load_rebuilds_the_saved_model(run_dir: Path, learner: Learner) -> None:
    payload = read_checkpoint(run_dir)
    assert metaacdc.load is load
    assert not learner.meta.training
    assert (learner.ways, learner.channels, learner.image_size) == (5, 3, IMAGE_SIZE)
    assert learner.config == tiny_config()
    for key, value in learner.meta.state_dict().items():
        assert torch.equal(value, payload["model"][key]), key
    from_file = load(run_dir / "checkpoints" / "best.pt", device="cpu")
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(from_file.meta.model(x), learner.meta.model(x))
    assert "conv4" in repr(learner)


def test_load_errors(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/best.pt or last.pt"):
        load(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable metaacdc checkpoint"):
        load(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="device='tpu'"):
        load(run_dir, device="tpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["config"].update(colour="blue"), "unknown setting.*colour"),
        (lambda p: p["config"].update(backbone="vgg"), "backbone='vgg'"),
        (lambda p: p["config"].update(ways=7), "weights do not fit"),
        (lambda p: p["data"].pop("mean"), "data facts lack mean"),
        (lambda p: p["data"].update(image_size=40), "image_size"),
        (lambda p: p["data"].update(channels=2), "channels=2; expected 1 or 3"),
        (lambda p: p["data"].update(std=[1.0, 0.0, 1.0]), "std=.*expected positive"),
        (lambda p: p["data"].update(mean=[0.5]), r"mean=\[0.5\]; expected 3 numbers"),
        (lambda p: p["data"].update(colour="blue"), r"unknown key\(s\) colour"),
        (lambda p: p.update(data=[0.5, 0.5]), "data facts are not a mapping"),
        (lambda p: p.update(config="conv4"), "config is not a mapping"),
    ],
    ids=[
        "unknown-key",
        "unknown-backbone",
        "other-head",
        "no-mean",
        "size-mismatch",
        "two-channels",
        "zero-std",
        "short-mean",
        "unknown-fact",
        "facts-not-a-mapping",
        "config-not-a-mapping",
    ],
)
def test_load_refuses_incompatible_checkpoints(
    tmp_path: Path, run_dir: Path, edit, message: str
) -> None:
    payload = read_checkpoint(run_dir)
    payload.pop("format")
    edit(payload)
    save_checkpoint(tmp_path / "edited.pt", payload)
    with pytest.raises(ConfigError, match=f"incompatible checkpoint.*{message}") as error:
        load(tmp_path / "edited.pt")
    # one line naming the file
    assert str(error.value).startswith(f"{tmp_path / 'edited.pt'}: ")
    assert "\n" not in str(error.value)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        count = torch.cuda.device_count()
        assert resolve_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
        with pytest.raises(ConfigError, match=f"has {count} CUDA device"):
            resolve_device(f"cuda:{count}")


# --------------------------------------------------------------------- preprocessing


def test_preprocess_equals_the_evaluation_sampler_on_synthetic_cache(tmp_path: Path) -> None:
    """Raw uint8 arrays of a cache, preprocessed by the API, equal the sampler's tensors
    (evaluation transform: zoom 1.15 + centre crop, then normalisation)."""
    split = synthetic("test")
    learner = load(make_run(tmp_path, split=split).root, device="cpu")
    assert evaluation_transform(learner.config) is not None
    sampler = EpisodeSampler(
        split, ways=3, shots=2, queries=2, seed=4, transform=evaluation_transform(learner.config)
    )
    _, items = sampler.indices(0)
    episode = sampler.episode(0)
    support = items[:, :2].ravel()
    query = items[:, 2:].ravel()
    torch.testing.assert_close(learner.preprocess(list(split.images[support])), episode.support_x)
    torch.testing.assert_close(learner.preprocess(list(split.images[query])), episode.query_x)


def test_preprocess_equals_the_sampler_on_image_files_with_resizing(tmp_path: Path) -> None:
    """JPEG files (24 px) of a fake miniImageNet, prepared at 32 px: the API reads and
    resizes the files exactly as `prepare` did."""
    root = write_fake_miniimagenet(tmp_path / "mini", "folders")
    prepare("miniimagenet", tmp_path / "cache", root=root, image_size=IMAGE_SIZE, progress=False)
    split = open_split(tmp_path / "cache" / "test")
    config = tiny_config(dataset="miniimagenet", data=str(tmp_path / "cache"))
    learner = load(make_run(tmp_path / "run", config, split).root, device="cpu")
    sampler = EpisodeSampler(
        split, ways=3, shots=1, queries=2, seed=0, transform=evaluation_transform(config)
    )
    classes, items = sampler.indices(0)
    assert split.meta.filenames is not None
    paths = [
        root / "test" / split.class_names[classes[c]] / split.meta.filenames[i]
        for c in range(len(classes))
        for i in items[c, 1:]
    ]
    torch.testing.assert_close(learner.preprocess(paths), sampler.episode(0).query_x)
    torch.testing.assert_close(
        learner.preprocess([str(p) for p in paths]), sampler.episode(0).query_x
    )


def _write_fake_omniglot(root: Path, characters: int = 8, drawings: int = 4) -> None:
    rng = np.random.default_rng(0)
    for c in range(characters):
        folder = root / "images_background" / "Alphabet" / f"character{c + 1:02d}"
        folder.mkdir(parents=True)
        for k in range(drawings):
            page = np.full((105, 105), 255, dtype=np.uint8)
            for _ in range(3):  # dark strokes on white, as the real drawings
                x, y = rng.integers(10, 80, size=2)
                page[y : y + 20, x : x + 4] = 0
            Image.fromarray(page, "L").convert("1").save(folder / f"{c:02d}{k:02d}.png")


def test_preprocess_inverts_and_resizes_like_the_omniglot_cache(tmp_path: Path) -> None:
    _write_fake_omniglot(tmp_path / "omni")
    prepare("omniglot", tmp_path / "cache", root=tmp_path / "omni", progress=False)
    split = open_split(tmp_path / "cache" / "test")
    config = tiny_config(dataset="omniglot", image_size=28, data=str(tmp_path / "cache"))
    learner = load(make_run(tmp_path / "run", config, split).root, device="cpu")
    assert learner.data.inverted and learner.channels == 1
    assert evaluation_transform(config) is None
    sampler = EpisodeSampler(split, ways=2, shots=1, queries=3, seed=0)
    _, items = sampler.indices(0)
    assert split.meta.filenames is not None
    paths = [
        tmp_path / "omni" / "images_background" / split.meta.filenames[i]
        for i in items[:, 1:].ravel()
    ]
    inputs = learner.preprocess(paths)
    assert inputs.shape == (6, 1, 28, 28)
    torch.testing.assert_close(inputs, sampler.episode(0).query_x)


def test_every_input_kind_gives_the_same_tensor(learner: Learner) -> None:
    pixels = synthetic("test").images[:2]  # (2, H, W, 3) uint8
    expected = learner.preprocess(list(pixels))
    as_tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    for images in (
        [Image.fromarray(p) for p in pixels],
        [p.astype(np.float32) / 255.0 for p in pixels],
        as_tensor,
        list(as_tensor),
    ):
        assert torch.equal(learner.preprocess(images), expected)
    assert torch.equal(learner.preprocess(pixels[0]), expected[:1])
    assert expected.dtype == torch.float32 and expected.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    gray = learner.preprocess(np.full((50, 40), 128, dtype=np.uint8))  # grey -> RGB, resized
    assert gray.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "empty list"),
        (np.zeros((0, 4), dtype=np.uint8), "the image is 4x0 pixels"),
        ([3], "int is not supported"),
        (torch.zeros(3, 8, 8), "must be uint8"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "is not an image"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "is not an image"),
        (np.full((4, 4), 2.0), "outside 0..1"),
        (np.zeros((4, 4), dtype=np.int32), "dtype int32"),
    ],
    ids=[
        "empty",
        "no-pixels",
        "int",
        "float-tensor",
        "two-channels",
        "4d-array",
        "float-range",
        "int32",
    ],
)
def test_preprocess_errors(learner: Learner, images: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        learner.preprocess(images)  # type: ignore[arg-type]


def test_preprocess_missing_file(learner: Learner, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        learner.preprocess(tmp_path / "missing.png")


# ------------------------------------------------------------------------ adaptation


def hand_adapted(
    learner: Learner, support_x: torch.Tensor, support_y: torch.Tensor, steps: int, lr: float
) -> torch.nn.Module:
    """Independent reference: learn2learn's MAML on a copy of the model, first order, fed
    channels-last images as the project's first-order adaptation is (in the default layout
    the rounding differs, and near-ties in max-pooling amplify it over the steps)."""
    maml = l2l.algorithms.MAML(copy.deepcopy(learner.meta.model), lr=lr, first_order=True)
    clone = maml.clone()
    ways = int(support_y.max()) + 1
    support_x = support_x.contiguous(memory_format=torch.channels_last)
    for _ in range(steps):
        clone.adapt(F.cross_entropy(clone(support_x)[:, :ways], support_y))
    return InLayout(clone, torch.channels_last)


def test_adapt_leaves_the_learner_unchanged(learner: Learner, task) -> None:
    support_x, support_y, query_x, _ = task
    before = snapshot(learner)
    model = learner.adapt(support_x, support_y)
    logits = model(query_x)
    assert not logits.requires_grad  # the adapted copy carries no graph at all
    for key, value in learner.meta.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in learner.meta.parameters())
    assert logits.shape == (len(query_x), 5)
    assert not model.training
    assert all(p.grad_fn is None for p in model.parameters())
    assert not torch.allclose(logits, learner.meta.model(query_x))


def test_adapt_equals_learn2learn_by_hand(learner: Learner, task) -> None:
    support_x, support_y, query_x, _ = task
    default_lr = learner.config.inner_lr
    # the default: twice the training steps (config.TEST_STEPS_PER_STEP), written out
    assert learner.config.test_inner_steps == 2 * learner.config.inner_steps == 10
    for steps, lr in ((5, default_lr), (2, 0.3)):
        expected = hand_adapted(learner, support_x, support_y, steps, lr)(query_x)
        got = learner.adapt(support_x, support_y, steps=steps, lr=lr)(query_x)
        torch.testing.assert_close(got, expected)
    default = learner.adapt(support_x, support_y)(query_x)
    by_hand = hand_adapted(learner, support_x, support_y, 10, default_lr)(query_x)
    torch.testing.assert_close(default, by_hand)
    unadapted = learner.adapt(support_x, support_y, steps=0)(query_x)
    torch.testing.assert_close(unadapted, learner.meta.model(query_x))
    assert not torch.allclose(unadapted, default)


def test_fewer_ways_than_the_head_use_the_first_logits(learner: Learner, task) -> None:
    support_x, support_y, query_x, _ = task
    keep = support_y < 3
    three_x, three_y = support_x[keep], support_y[keep]
    model = learner.adapt(three_x, three_y)
    with torch.no_grad():  # as predict runs it (see metaacdc.backbones.pool_first)
        logits = model(query_x)
    assert logits.shape == (len(query_x), 3)
    steps = learner.config.test_inner_steps
    expected = hand_adapted(learner, three_x, three_y, steps, learner.config.inner_lr)(query_x)
    torch.testing.assert_close(logits, expected[:, :3])
    labels, both = learner.predict(three_x, three_y, query_x, return_logits=True)
    assert torch.equal(labels, logits.argmax(1)) and torch.equal(both, logits)


def test_predict_returns_labels(learner: Learner, task) -> None:
    support_x, support_y, query_x, _ = task
    labels = learner.predict(support_x, support_y, query_x)
    assert isinstance(labels, torch.Tensor)
    assert labels.dtype == torch.int64 and labels.shape == (len(query_x),)
    assert torch.equal(labels, learner.adapt(support_x, support_y)(query_x).argmax(1))


def test_adapt_works_under_no_grad(learner: Learner, task) -> None:
    support_x, support_y, query_x, _ = task
    with torch.no_grad():
        inside = learner.predict(support_x, support_y, query_x)
    assert torch.equal(inside, learner.predict(support_x, support_y, query_x))


def check_adapts_without_touching(learner: Learner, task) -> None:
    support_x, support_y, query_x, _ = task
    before = snapshot(learner)
    logits = learner.adapt(support_x, support_y)(query_x)
    assert logits.shape == (len(query_x), 5)
    assert not torch.allclose(logits, learner.meta.model(query_x))
    for key, value in learner.meta.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in learner.meta.parameters())


def test_head_only_run(tmp_path: Path, task) -> None:
    learner = load(make_run(tmp_path, tiny_config(adapt="head")).root, device="cpu")
    check_adapts_without_touching(learner, task)


def test_meta_sgd_run(tmp_path: Path, task) -> None:
    learner = load(make_run(tmp_path, tiny_config(meta_sgd=True)).root, device="cpu")
    check_adapts_without_touching(learner, task)
    with pytest.raises(ConfigError, match="Meta-SGD"):
        learner.adapt(task[0], task[1], lr=0.1)


def _bad_inputs(task):
    support_x, support_y, query_x, _ = task
    return {
        "x-list": ([support_x[0]], support_y, None, "must be a tensor"),
        "x-uint8": ((support_x * 50).to(torch.uint8), support_y, None, "dtype torch.uint8"),
        "x-3d": (support_x[0], support_y, None, "has shape"),
        "x-channels": (support_x[:, :1], support_y, None, r"expected \(N, 3, 32, 32\)"),
        "x-size": (support_x[..., :16, :16], support_y, None, "has shape"),
        "x-empty": (support_x[:0], support_y[:0], None, "is empty"),
        "y-float": (support_x, support_y.float(), None, "int64"),
        "y-list": (support_x, support_y.tolist(), None, "int64"),
        "y-length": (support_x, support_y[:-1], None, "one label per support image"),
        "y-gap": (support_x, support_y * 2, None, "every label of 0..N-1"),
        "y-negative": (support_x, support_y - 1, None, "every label of 0..N-1"),
        "y-one-class": (support_x, torch.zeros_like(support_y), None, "single class"),
        "y-too-many": (
            torch.cat([support_x, support_x[:2]]),
            torch.cat([support_y, torch.tensor([5, 6])]),
            None,
            "7 classes but this model's head has 5",
        ),
        "query-size": (support_x, support_y, query_x[..., :16, :16], "query_x has shape"),
        "query-dtype": (support_x, support_y, query_x.double().int(), "query_x has dtype"),
    }


BAD = [
    "x-list",
    "x-uint8",
    "x-3d",
    "x-channels",
    "x-size",
    "x-empty",
    "y-float",
    "y-list",
    "y-length",
    "y-gap",
    "y-negative",
    "y-one-class",
    "y-too-many",
    "query-size",
    "query-dtype",
]


@pytest.mark.parametrize("case", BAD)
def test_adapt_and_predict_validate_inputs(learner: Learner, task, case: str) -> None:
    support_x, support_y, query_x, message = _bad_inputs(task)[case]
    with pytest.raises(ConfigError, match=message):
        if query_x is None:
            learner.adapt(support_x, support_y)
        else:
            learner.predict(support_x, support_y, query_x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "steps=-1"),
        ({"steps": 1.5}, "steps=1.5"),
        ({"lr": 0}, "lr=0"),
        ({"lr": "fast"}, "lr='fast'"),
    ],
)
def test_adapt_validates_steps_and_lr(learner: Learner, task, kwargs, message: str) -> None:
    support_x, support_y, _, _ = task
    with pytest.raises(ConfigError, match=message):
        learner.adapt(support_x, support_y, **kwargs)


def test_other_float_types_are_converted_to_the_models(learner: Learner, task) -> None:
    """float64 (or half) images give what their float32 values give: they are converted to
    the model's type, by adapt, predict, predict_tasks and the adapted model alike."""
    support_x, support_y, query_x, _ = task
    expected, logits = learner.predict(support_x, support_y, query_x, return_logits=True)
    got, got_logits = learner.predict(
        support_x.double(), support_y, query_x.double(), return_logits=True
    )
    assert got_logits.dtype == torch.float32
    assert torch.equal(got, expected) and torch.equal(got_logits, logits)
    model = learner.adapt(support_x.double(), support_y)
    with torch.no_grad():
        assert torch.equal(model(query_x.double()), logits)
    tasks = learner.predict_tasks(
        support_x[None].double(), support_y[None], query_x[None].double(), return_logits=True
    )
    batched = learner.predict_tasks(
        support_x[None], support_y[None], query_x[None], return_logits=True
    )
    assert torch.equal(tasks[1], batched[1])
    # half precision holds other values; it is converted all the same
    half = learner.predict(support_x.half(), support_y, query_x.half())
    assert half.shape == expected.shape and half.dtype == torch.int64


def test_a_numpy_step_size_is_a_step_size(learner: Learner, task) -> None:
    support_x, support_y, query_x, _ = task
    by_numpy = learner.adapt(support_x, support_y, steps=2, lr=np.float32(0.25))(query_x)
    by_float = learner.adapt(support_x, support_y, steps=2, lr=0.25)(query_x)
    assert torch.equal(by_numpy, by_float)


def test_the_adapted_model_refuses_to_return_non_finite_logits(learner: Learner, task) -> None:
    """A huge step size is refused where it makes the adapted weights overflow; an adapted
    model whose weights are finite but whose logits are not raises when called instead of
    returning them, and names its input when that is the cause."""
    support_x, support_y, query_x, _ = task
    with pytest.raises(NonFiniteError, match=r"diverged after 1 step\(s\) at lr=1e\+20"):
        learner.adapt(support_x, support_y, steps=1, lr=1e20)
    model = learner.adapt(support_x, support_y, steps=1, lr=0.5)
    head = [p for p in model.parameters() if p.dim() == 2][-1]  # the classifier's weight
    with torch.no_grad():
        head.div_(head.abs().max()).mul_(1e38)  # finite, and sums of products overflow
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with pytest.raises(
        NonFiniteError, match=r"diverged after 1 step\(s\) at lr=0\.5: the adapted "
    ):
        model(query_x)
    sane = learner.adapt(support_x, support_y, steps=1)
    bad = query_x.clone()
    bad[2, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteError, match="the input of the adapted model holds 1 non-finite"):
        sane(bad)
