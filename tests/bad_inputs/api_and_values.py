"""The adaptation API (``metaacdc.load``, ``Learner``) and damaged values: NaN and infinite
images, diverging adaptations, empty images, wrong tensors, checkpoints with non-finite
weights, files that are not checkpoints, and samplers given non-finite data. Each is refused
in one line naming the argument, the file or the value."""

from __future__ import annotations

import argparse
import copy
import functools
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from metaacdc.api import Learner, load
from metaacdc.data import CachedSplit, Episode, EpisodeSampler, synthetic_split
from metaacdc.data.transforms import EvalTransform
from metaacdc.errors import NonFiniteError
from metaacdc.runs.checkpoint import save_checkpoint
from metaacdc.runs.folder import RunFolder, read_checkpoint
from tests.bad_inputs.table import Case, Workspace
from tests.tiny_runs import TEST_QUERIES, evaluation_episodes, make_run, tiny_config

# --------------------------------------------------------------------------- set-up


def _make_run(root: Path) -> None:
    """The tiny untrained run every row starts from (queries as few as the test's, so the
    12 synthetic images per class hold a task)."""
    make_run(root, tiny_config(queries=TEST_QUERIES))


@functools.cache
def _loaded(run: Path) -> tuple[Learner, Episode]:
    """The run's learner and a 5-way 1-shot task of the synthetic test split, once per
    session: adaptation leaves the learner unchanged, so the rows can share it."""
    learner = load(run, device="cpu")
    return learner, evaluation_episodes(learner).episode(0)


def _api(ws: Workspace) -> tuple[Learner, Episode]:
    return _loaded(ws.templates.build("run", _make_run))


def _calling(
    action: Callable[[Learner, Episode], object],
) -> Callable[[Workspace], Callable[[], object]]:
    """A row's call: ``action(learner, task)`` on the shared learner and task."""

    def call(ws: Workspace) -> Callable[[], object]:
        learner, task = _api(ws)
        return lambda: action(learner, task)

    return call


def _with_value(tensor: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``tensor`` with its first element set to ``value``."""
    changed = tensor.clone()
    changed.view(-1)[0] = value
    return changed


def _with_nan(array: np.ndarray) -> np.ndarray:
    array[1, 2] = np.nan
    return array


def _edited_run(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A template maker: the tiny run with its checkpoint's payload edited by ``edit``."""

    def make(root: Path) -> None:
        _make_run(root)
        best = RunFolder(root).best
        payload = read_checkpoint(root)
        payload.pop("format")
        edit(payload)
        save_checkpoint(best, payload)

    return make


def _nan_weight(payload: dict) -> None:
    name = next(iter(payload["model"]))
    payload["model"][name] = _with_value(payload["model"][name], float("nan"))


def _inf_optimizer_state(payload: dict) -> None:
    weight = next(iter(payload["model"].values()))
    exp_avg = torch.zeros_like(weight)
    exp_avg.view(-1)[3] = float("inf")
    payload["optimizer"] = {
        "state": {0: {"step": torch.tensor(1.0), "exp_avg": exp_avg}},
        "param_groups": [{"lr": 1e-3, "params": [0]}],
    }


def _nan_mean(payload: dict) -> None:
    payload["data"]["mean"] = [float("nan"), 0.5, 0.5]


def _evaluate(template: str, make: Callable[[Path], None]) -> Callable[[Workspace], list[str]]:
    """A row's command line: `metaacdc evaluate` of a copy of the run ``template``."""

    def argv(ws: Workspace) -> list[str]:
        run = ws.copy(template, make)
        return ["evaluate", str(run), "--tasks", "2", "--device", "cpu", "--no-progress"]

    return argv


def _load_of(
    template: str, make: Callable[[Path], None]
) -> Callable[[Workspace], Callable[[], object]]:
    """A row's call: ``metaacdc.load`` of the best checkpoint of a copy of the run
    ``template`` (the file: a run folder's damaged best.pt is reported as such)."""

    def call(ws: Workspace) -> Callable[[], object]:
        best = RunFolder(ws.copy(template, make)).best
        return lambda: load(best, device="cpu")

    return call


def _evaluate_file(content: Callable[[Path], None]) -> Callable[[Workspace], list[str]]:
    """A row's command line: `metaacdc evaluate` of a run folder whose only checkpoint,
    ``last.pt``, is the file ``content(path)`` writes."""

    def argv(ws: Workspace) -> list[str]:
        path = RunFolder(ws.root / "run").last
        path.parent.mkdir(parents=True)
        content(path)
        return ["evaluate", str(ws.root / "run"), "--tasks", "2", "--device", "cpu"]

    return argv


def _zip_file(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


def _pickled_code(path: Path) -> None:
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, path)


def _truncated(ws: Workspace) -> list[str]:
    """`metaacdc evaluate` of a run whose best checkpoint lost its second half."""
    run = ws.copy("run", _make_run)
    best = RunFolder(run).best
    whole = best.read_bytes()
    best.write_bytes(whole[: len(whole) // 2])
    return ["evaluate", str(run), "--tasks", "2", "--device", "cpu"]


#: a refusal that repeats PyTorch's advice to load with weights_only=False would invite
#: running a foreign file's code: no line of these rows may mention it
NO_ADVICE = r"^(?!.*weights_only)"


def _split_with_float_images(nan: bool) -> Callable[[Workspace], Callable[[], object]]:
    """A sampler over a split whose uint8 images were replaced by floats (NaN ones or not)."""

    def call(ws: Workspace) -> Callable[[], object]:
        split = copy.copy(synthetic_split("test", 8, 2))
        images = split.images.astype(np.float32) / 255.0
        if nan:
            images[1, 2, 3, 0] = np.nan
        split.images = images
        return lambda: EpisodeSampler(split, ways=5, shots=1, queries=1, seed=0)

    return call


def _float_cached_split(ws: Workspace) -> Callable[[], object]:
    split = synthetic_split("test", 8, 2)
    images = split.images.astype(np.float32) / 255.0
    images[0, 0, 0, 0] = np.inf
    return lambda: CachedSplit(images, split.labels, split.meta)


def _nan_normalisation(ws: Workspace) -> Callable[[], object]:
    split = synthetic_split("test", 8, 2)
    return lambda: EpisodeSampler(split, 5, 1, 1, 0, mean=[0.5, float("nan"), 0.5], std=[1, 1, 1])


# ------------------------------------------------------------------------------ rows

CASES = [
    # non-finite images given to the adaptation API
    Case(
        "api NaN support image",
        r"^support_x \(the support images\) holds 1 non-finite value",
        call=_calling(
            lambda learner, t: learner.predict(
                _with_value(t.support_x, float("nan")), t.support_y, t.query_x
            )
        ),
        raises=NonFiniteError,
    ),
    Case(
        "api Inf query image",
        r"^query_x \(the query images\) holds 1 non-finite value",
        call=_calling(
            lambda learner, t: learner.predict(
                t.support_x, t.support_y, _with_value(t.query_x, float("inf"))
            )
        ),
        raises=NonFiniteError,
    ),
    Case(
        "api NaN query image to the adapted model",
        r"^the input of the adapted model holds 1 non-finite",
        call=_calling(
            lambda learner, t: learner.adapt(t.support_x, t.support_y)(
                _with_value(t.query_x, float("nan"))
            )
        ),
        raises=NonFiniteError,
    ),
    Case(
        "api NaN support image in predict_tasks",
        r"^support_x \(the support images\) holds 1 non-finite",
        call=_calling(
            lambda learner, t: learner.predict_tasks(
                _with_value(t.support_x, float("nan"))[None], t.support_y[None], t.query_x[None]
            )
        ),
        raises=NonFiniteError,
    ),
    Case(
        "api NaN float array to preprocess",
        r"^images\[1\]: float array holds 1 non-finite",
        call=_calling(
            lambda learner, t: learner.preprocess([np.zeros((4, 4)), _with_nan(np.zeros((4, 4)))])
        ),
        raises=NonFiniteError,
    ),
    # diverging adaptation
    Case(
        "api adapt diverges",
        r"^the adaptation diverged after 10 step\(s\) at lr=1e\+20: the adapted weights hold "
        r"NaN or infinity; use a smaller lr or fewer steps",
        call=_calling(
            lambda learner, t: learner.adapt(t.support_x, t.support_y, steps=10, lr=1e20)
        ),
        raises=NonFiniteError,
    ),
    Case(
        "api predict diverges to infinite logits",
        r"^the adaptation diverged after 1 step\(s\) at lr=1e\+20: the adapted "
        r"(weights|model's logits) hold NaN or infinity; use a smaller lr",
        call=_calling(
            lambda learner, t: learner.predict(
                t.support_x, t.support_y, t.query_x, steps=1, lr=1e20
            )
        ),
        raises=NonFiniteError,
    ),
    Case(
        "api predict_tasks diverges",
        r"^the adaptation diverged after 10 step\(s\): the adapted models' logits hold NaN",
        call=_calling(
            lambda learner, t: learner.predict_tasks(
                t.support_x[None], t.support_y[None], t.query_x[None], steps=10, lr=1e20
            )
        ),
        raises=NonFiniteError,
    ),
    # bad step sizes and step counts
    Case(
        "api lr infinite",
        r"^lr=inf is not valid; expected a finite positive number",
        call=_calling(lambda learner, t: learner.adapt(t.support_x, t.support_y, lr=float("inf"))),
    ),
    Case(
        "api lr NaN",
        r"^lr=nan is not valid",
        call=_calling(
            lambda learner, t: learner.predict(t.support_x, t.support_y, t.query_x, lr=float("nan"))
        ),
    ),
    Case(
        "api lr negative",
        r"^lr=-0\.1 is not valid",
        call=_calling(
            lambda learner, t: learner.predict_tasks(
                t.support_x[None], t.support_y[None], t.query_x[None], lr=-0.1
            )
        ),
    ),
    Case(
        "api steps negative",
        r"^steps=-1 is not valid; expected an integer >= 0",
        call=_calling(lambda learner, t: learner.adapt(t.support_x, t.support_y, steps=-1)),
    ),
    # images and labels of the wrong kind
    Case(
        "api empty image to preprocess",
        r"^images\[0\]: the image is 0x0 pixels \(width x height\), which is empty",
        call=_calling(lambda learner, t: learner.preprocess(np.zeros((0, 0, 3), dtype=np.uint8))),
    ),
    Case(
        "api empty image tensor to preprocess",
        r"^images\[0\]: the image is 7x0 pixels",
        call=_calling(
            lambda learner, t: learner.preprocess(torch.zeros(3, 0, 7, dtype=torch.uint8))
        ),
    ),
    Case(
        "api grayscale support to an RGB run",
        r"^support_x has shape \(5, 1, 32, 32\); expected \(N, 3, 32, 32\)",
        call=_calling(lambda learner, t: learner.adapt(t.support_x[:, :1], t.support_y)),
    ),
    Case(
        "api one image without its batch dimension",
        r"^query_x has shape \(3, 32, 32\); expected \(N, 3, 32, 32\)",
        call=_calling(lambda learner, t: learner.predict(t.support_x, t.support_y, t.query_x[0])),
    ),
    Case(
        "api uint8 pixels to adapt",
        r"^support_x has dtype torch\.uint8; expected float images from learner\.preprocess",
        call=_calling(lambda learner, t: learner.adapt(t.support_x.to(torch.uint8), t.support_y)),
    ),
    Case(
        "api labels out of range",
        r"^support_y labels are \[0, 1, 2, 3, 7\]; expected every label of 0\.\.N-1",
        call=_calling(lambda learner, t: learner.adapt(t.support_x, torch.tensor([0, 1, 2, 3, 7]))),
    ),
    Case(
        "api fewer labels than images",
        r"^support_y has shape \(4,\); expected \(5,\), one label per support image",
        call=_calling(lambda learner, t: learner.adapt(t.support_x, t.support_y[:4])),
    ),
    Case(
        "api more classes than the head",
        r"^support_y has 6 classes but this model's head has 5 outputs",
        call=_calling(
            lambda learner, t: learner.adapt(
                torch.cat([t.support_x, t.support_x[:1]]), torch.arange(6, dtype=torch.int64)
            )
        ),
    ),
    # checkpoints holding non-finite values
    Case(
        "checkpoint NaN weight, evaluate",
        r"best\.pt is damaged \(model\['model\.\S+'\] holds NaN or infinity; the file is "
        r"damaged or its run diverged, and is refused\)",
        argv=_evaluate("nan-run", _edited_run(_nan_weight)),
    ),
    Case(
        "checkpoint NaN weight, load",
        r"^\S+/nan-run/checkpoints/best\.pt: model\['model\.\S+'\] holds NaN or infinity",
        call=_load_of("nan-run", _edited_run(_nan_weight)),
        raises=NonFiniteError,
    ),
    Case(
        "checkpoint Inf optimizer state, evaluate",
        r"best\.pt is damaged \(optimizer\['state'\]\[0\]\['exp_avg'\] holds NaN or infinity",
        argv=_evaluate("inf-optimizer-run", _edited_run(_inf_optimizer_state)),
    ),
    Case(
        "checkpoint NaN data mean, load",
        r"best\.pt: data\['mean'\]\[0\] holds NaN or infinity",
        call=_load_of("nan-mean-run", _edited_run(_nan_mean)),
        raises=NonFiniteError,
    ),
    # files that are not checkpoints: said in a few words, never PyTorch's unsafe advice
    Case(
        "not a checkpoint: text file",
        NO_ADVICE + r".*last\.pt: not a readable metaacdc checkpoint \(not a PyTorch file\)$",
        argv=_evaluate_file(lambda path: path.write_text("step: 3\nmodel: conv4\n")),
    ),
    Case(
        "not a checkpoint: random bytes",
        NO_ADVICE + r".*not a readable metaacdc checkpoint \(not a PyTorch file\)$",
        argv=_evaluate_file(lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096))),
    ),
    Case(
        "not a checkpoint: empty file",
        NO_ADVICE + r".*not a readable metaacdc checkpoint \(the file is empty\)$",
        argv=_evaluate_file(lambda path: path.write_bytes(b"")),
    ),
    Case(
        "not a checkpoint: zip archive",
        NO_ADVICE + r".*not a readable metaacdc checkpoint \(a zip archive but not a PyTorch file",
        argv=_evaluate_file(_zip_file),
    ),
    Case(
        "not a checkpoint: truncated",
        NO_ADVICE + r".*not a readable metaacdc checkpoint \(.*damaged \(truncated\)",
        argv=_truncated,
    ),
    Case(
        "not a checkpoint: pickled code",
        NO_ADVICE + r".*not a readable metaacdc checkpoint \(it holds pickled code "
        r"\(argparse\.Namespace\), which a metaacdc checkpoint never holds; it is not loaded",
        argv=_evaluate_file(_pickled_code),
    ),
    # samplers and transforms given non-finite data
    Case(
        "sampler over NaN float images",
        r"^the images of the synthetic test split \(in memory\) hold 1 non-finite value",
        call=_split_with_float_images(nan=True),
        raises=NonFiniteError,
    ),
    Case(
        "sampler over float images",
        r"^the images of the synthetic test split \(in memory\) are float32; episodes need uint8",
        call=_split_with_float_images(nan=False),
    ),
    Case(
        "split of float arrays",
        r"^images must be uint8 N x H x W x C, got float32",
        call=_float_cached_split,
    ),
    Case(
        "sampler NaN normalisation mean",
        r"^normalisation mean=\[0\.5, nan, 0\.5\] holds NaN or infinity",
        call=_nan_normalisation,
        raises=NonFiniteError,
    ),
    Case(
        "eval transform infinite zoom",
        r"^zoom=inf is not valid; expected a finite number >= 1",
        call=lambda ws: lambda: EvalTransform(zoom=float("inf")),
    ),
]
