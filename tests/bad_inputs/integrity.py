"""Damaged files: a cache whose bytes changed since it was prepared, a cache file missing,
cut short or edited, a run whose best checkpoint is damaged or foreign (its last one is
offered, never used in its place), and settings `metaacdc evaluate` refuses before it writes
anything. (A damaged evaluation journal is not refused: it is set aside with a note and the
evaluation goes on, see tests/evaluation/test_journal.py.)"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from metaacdc.api import load
from metaacdc.data import open_split, prepare
from metaacdc.runs.checkpoint import load_checkpoint, save_checkpoint
from tests.bad_inputs.table import Case, Workspace
from tests.tiny_runs import IMAGE_SIZE, make_run

#: the meta-update of the last checkpoint in the template run that has one
LAST_STEP = 7


def _make_cache(folder: Path) -> None:
    """A synthetic cache at the tiny runs' image size, with enough images per class for a
    training task (1 shot + 16 queries)."""
    prepare("synthetic", folder, image_size=IMAGE_SIZE, images_per_class=17, progress=False)


def _make_run_with_last(folder: Path) -> None:
    """A tiny run folder whose last.pt is of meta-update :data:`LAST_STEP`."""
    run = make_run(folder)
    save_checkpoint(run.last, {**load_checkpoint(run.best), "step": LAST_STEP})


def _flip(path: Path, offset: int = 100) -> None:
    """Invert one byte of ``path`` in place: the same size, other contents."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _cache(ws: Workspace, damage: Callable[[Path], object] | None = None) -> Path:
    """A copy of the template cache in the workspace, ``damage(cache)`` done to it."""
    cache = ws.copy("cache", _make_cache)
    if damage is not None:
        damage(cache)
    return cache


def _edit_meta(split: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """A damage: ``split``'s meta.json rewritten as ``edit`` of its content."""

    def damage(cache: Path) -> None:
        meta = cache / split / "meta.json"
        meta.write_text(json.dumps(edit(json.loads(meta.read_text()))))

    return damage


def _train_on(damage: Callable[[Path], object]) -> Callable[[Workspace], list[str]]:
    def argv(ws: Workspace) -> list[str]:
        cache = _cache(ws, damage)
        settings = ["--image-size", str(IMAGE_SIZE), "--meta-updates", "1", "--out", "run"]
        return ["train", "--data", str(cache), *settings]

    return argv


def _evaluate_on(damage: Callable[[Path], object]) -> Callable[[Workspace], list[str]]:
    def argv(ws: Workspace) -> list[str]:
        run = ws.copy("run", make_run)
        cache = _cache(ws, damage)
        return ["evaluate", str(run), "--data", str(cache), "--tasks", "2", "--device", "cpu"]

    return argv


def _info(damage: Callable[[Path], object], *flags: str) -> Callable[[Workspace], list[str]]:
    def argv(ws: Workspace) -> list[str]:
        return ["data", "info", str(_cache(ws, damage)), *flags]

    return argv


def _run_with(
    best: Callable[[Path], object],
    last: Callable[[Path], object] | None = None,
    keep_last: bool = True,
) -> Callable[[Workspace], Path]:
    """A copy of the template run with a last.pt, ``best(path)`` done to its best.pt and
    ``last(path)`` to its last.pt (deleted unless ``keep_last``)."""

    def folder(ws: Workspace) -> Path:
        run = ws.copy("run-with-last", _make_run_with_last, name="run")
        best(run / "checkpoints" / "best.pt")
        if not keep_last:
            (run / "checkpoints" / "last.pt").unlink()
        elif last is not None:
            last(run / "checkpoints" / "last.pt")
        return run

    return folder


def _evaluate_run(folder: Callable[[Workspace], Path]) -> Callable[[Workspace], list[str]]:
    def argv(ws: Workspace) -> list[str]:
        return ["evaluate", str(folder(ws)), "--tasks", "2", "--device", "cpu"]

    return argv


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:2000])


def _zip(path: Path) -> None:
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


def _other_torch_file(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _outside_a_run(ws: Workspace) -> list[str]:
    run = ws.copy("run", make_run)
    return ["evaluate", str(ws.write("model.pt", (run / "checkpoints" / "best.pt").read_bytes()))]


def _changed_cache_opened(ws: Workspace) -> Callable[[], object]:
    cache = _cache(ws, lambda cache: _flip(cache / "val" / "images.u8"))
    return lambda: open_split(cache / "val")


def _load_damaged_best(ws: Workspace) -> Callable[[], object]:
    run = _run_with(_truncate)(ws)
    return lambda: load(run, device="cpu")


def _prepare_other_seed(ws: Workspace) -> list[str]:
    cache = _cache(ws)
    source = ["data", "prepare", "--source", "synthetic", "--out", str(cache)]
    settings = ["--image-size", str(IMAGE_SIZE), "--images-per-class", "17", "--seed", "9"]
    return [*source, *settings, "--no-progress"]


def _evaluate_refused_settings(ws: Workspace) -> list[str]:
    run = ws.copy("run", make_run)
    return ["evaluate", str(run), "--engine", "batched", "--processes", "2", "--device", "cpu"]


CHANGED = r"changed or damaged since the cache was prepared \(its sha256 differs.*--force"
DAMAGED_BEST = r"run: checkpoints/best\.pt is damaged \(not a readable metaacdc checkpoint"
OFFERS_LAST = (
    rf"; `metaacdc evaluate \S*run/checkpoints/last\.pt` scores the last checkpoint "
    rf"\(meta-update {LAST_STEP}\) instead$"
)

CASES = [
    Case(
        "cache bytes changed, train",
        rf"cache/train/images\.u8: {CHANGED}",
        argv=_train_on(lambda cache: _flip(cache / "train" / "images.u8")),
    ),
    Case(
        "cache bytes changed, evaluate",
        rf"cache/test/images\.u8: {CHANGED}",
        argv=_evaluate_on(lambda cache: _flip(cache / "test" / "images.u8")),
    ),
    Case(
        "cache bytes changed, data info --verify",
        rf"cache/train/images\.u8: {CHANGED}",
        argv=_info(lambda cache: _flip(cache / "train" / "images.u8"), "--verify"),
    ),
    Case(
        "cache labels changed, evaluate",
        rf"cache/test/labels\.npy: {CHANGED}",
        argv=_evaluate_on(lambda cache: _flip(cache / "test" / "labels.npy", offset=-3)),
    ),
    Case(
        "cache bytes changed, open_split",
        rf"cache/val/images\.u8: {CHANGED}",
        call=_changed_cache_opened,
    ),
    Case(
        "cache images cut short",
        r"cache/test/images\.u8: expected \d+ bytes .*found \d+ bytes; the cache is damaged",
        argv=_evaluate_on(lambda cache: _truncate(cache / "test" / "images.u8")),
    ),
    Case(
        "cache images missing",
        r"cache/test/images\.u8: expected \d+ bytes .*found no file",
        argv=_evaluate_on(lambda cache: (cache / "test" / "images.u8").unlink()),
    ),
    Case(
        "cache labels missing",
        r"cache/test/labels\.npy: missing; the cache is damaged",
        argv=_evaluate_on(lambda cache: (cache / "test" / "labels.npy").unlink()),
    ),
    Case(
        "cache meta.json cut short",
        r"cache/test/meta\.json: unreadable cache metadata",
        argv=_info(lambda cache: _truncate(cache / "test" / "meta.json")),
    ),
    Case(
        "cache meta.json edited",
        r"cache/train/meta\.json: changed or damaged since the cache was prepared",
        argv=_train_on(_edit_meta("train", lambda meta: {**meta, "mean": [0.4, 0.4, 0.4]})),
    ),
    Case(
        "cache meta.json field of the wrong type",
        r"cache/test/meta\.json: malformed cache metadata \(num_images is '1e3'\)",
        argv=_evaluate_on(_edit_meta("test", lambda meta: {**meta, "num_images": "1e3"})),
    ),
    Case(
        "cache meta.json not an object",
        r"cache/test/meta\.json: damaged cache metadata \(not a JSON object\)",
        argv=_evaluate_on(_edit_meta("test", lambda meta: [meta])),
    ),
    Case(
        "prepare over a cache prepared with another seed",
        r"cache/train: holds a different cache than the one asked for \(generator\.seed 0 "
        r"here, 9 asked for\); pass --force",
        argv=_prepare_other_seed,
    ),
    Case(
        "best.pt cut short, last.pt offered",
        rf"{DAMAGED_BEST}.*{OFFERS_LAST}",
        argv=_evaluate_run(_run_with(_truncate)),
    ),
    Case(
        "best.pt a zip of something else, last.pt offered",
        rf"{DAMAGED_BEST}.*{OFFERS_LAST}",
        argv=_evaluate_run(_run_with(_zip)),
    ),
    Case(
        "best.pt a torch file but no checkpoint, last.pt offered",
        rf"run: checkpoints/best\.pt is damaged \(not a metaacdc checkpoint \(missing format, "
        rf"config, data, step, model\)\){OFFERS_LAST}",
        argv=_evaluate_run(_run_with(_other_torch_file)),
    ),
    Case(
        "best.pt cut short, no last.pt",
        rf"{DAMAGED_BEST}.*\) and the run has no checkpoints/last\.pt; train it again$",
        argv=_evaluate_run(_run_with(_truncate, keep_last=False)),
    ),
    Case(
        "best.pt and last.pt cut short",
        rf"{DAMAGED_BEST}.*\) and so is checkpoints/last\.pt \(not a readable metaacdc "
        r"checkpoint .*\); train the run again$",
        argv=_evaluate_run(_run_with(_truncate, _truncate)),
    ),
    Case(
        "best.pt cut short, metaacdc.load",
        rf"{DAMAGED_BEST}.*{OFFERS_LAST}",
        call=_load_damaged_best,
    ),
    Case(
        "evaluate a checkpoint outside a run folder",
        r"model\.pt: `metaacdc evaluate` takes a run folder or a checkpoint in one",
        argv=_outside_a_run,
    ),
    Case(
        "evaluate settings refused before the evaluation lock",
        r"processes=2 .*batched",
        argv=_evaluate_refused_settings,
    ),
    Case(
        "prepare image size zero",
        r"image_size=0 is not valid; expected an integer >= 4",
        argv=lambda ws: [
            "data",
            "prepare",
            "--source",
            "synthetic",
            "--out",
            "c",
            "--image-size",
            "0",
        ],
    ),
]
