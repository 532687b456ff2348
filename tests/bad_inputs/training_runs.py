"""`metaacdc train`: flags, data that contradicts them, and run folders. A refused command
creates nothing (no folder, no lock file, no config.yaml), and a run folder is enough to
resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.bad_inputs.table import Case, Workspace
from tests.bad_inputs.templates import omniglot_cache, trained_run

TINY = ["--meta-updates", "1", "--workers", "0", "--image-size", "16"]


def _train(*flags: str) -> Callable[[Workspace], list[str]]:
    """`metaacdc train FLAGS` into the default run folder (under the workspace's runs/)."""
    return lambda ws: ["train", *flags, *TINY]


def _on_cache(*flags: str) -> Callable[[Workspace], list[str]]:
    """`metaacdc train --data <an Omniglot cache> FLAGS --out new-run`."""

    def argv(ws: Workspace) -> list[str]:
        cache = ws.copy("omniglot-cache", omniglot_cache)
        return ["train", "--data", str(cache), *flags, "--out", "new-run", *TINY]

    return argv


def _on_run(
    *flags: str, edit: Callable[[Path], object] | None = None
) -> Callable[[Workspace], list[str]]:
    """`metaacdc train --out <a finished tiny run> FLAGS`, after ``edit(run folder)``."""

    def argv(ws: Workspace) -> list[str]:
        run = ws.copy("trained-run", trained_run, "run")
        if edit is not None:
            edit(run)
        return ["train", "--out", str(run), *flags]

    return argv


def _edit_config(run: Path) -> None:
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("meta_updates: 2", "meta_updates: 5"))


CASES = [
    Case(
        "train cuda graphs on the cpu",
        r"--cuda-graphs on captures the batched engine's steps on a CUDA device, not on cpu; "
        r"use --cuda-graphs auto or off",
        argv=_train("--cuda-graphs", "on", "--device", "cpu"),
    ),
    Case(
        "train cuda graphs unknown",
        r"command line: cuda_graphs='yes' is not valid \(expected one of auto, on, off\)",
        argv=_train("--cuda-graphs", "yes"),
    ),
    Case(
        "train one way",
        r"command line: ways=1 is not valid \(expected a whole number >= 2\)",
        argv=_train("--ways", "1"),
    ),
    Case(
        "train nan meta lr",
        r"command line: meta_lr=nan is not valid",
        argv=_train("--meta-lr", "nan"),
    ),
    Case(
        "train infinite inner lr",
        r"command line: inner_lr=inf is not valid",
        argv=_train("--inner-lr", "inf"),
    ),
    Case(
        "train zero validation tasks", r"val_tasks=0 is not valid", argv=_train("--val-tasks", "0")
    ),
    Case("train unknown backbone", r"resnet99", argv=_train("--backbone", "resnet99")),
    Case(
        "train unknown acdc scope", r"--acdc='bogus' is not valid", argv=_train("--acdc", "bogus")
    ),
    Case("train unknown init", r"init='kaiming' is not valid", argv=_train("--init", "kaiming")),
    Case("train cuda absent", r"CUDA is not available here", argv=_train("--device", "cuda:3")),
    Case(
        "train more ways than classes",
        r"ways=20 but the synthetic val split .* has only 16 classes",
        argv=_train("--ways", "20"),
    ),
    Case("train stop after none", r"stop_after=0 is not valid", argv=_train("--stop-after", "0")),
    Case(
        "train data path missing",
        r"absent: --data path not found",
        argv=_train("--data", "absent"),
        raises=FileNotFoundError,
    ),
    Case(
        "train raw data without dataset",
        r"raw is not a prepared cache: name the dataset it holds with --dataset",
        argv=lambda ws: ["train", "--data", str(ws.write("raw/readme.txt", "").parent), *TINY],
    ),
    Case(
        "train dataset contradicting the cache",
        r"dataset=miniimagenet contradicts the data: .* is a cache of omniglot",
        argv=_on_cache("--dataset", "miniimagenet"),
    ),
    Case(
        "train protocol on a prepared cache",
        r"data_protocol=random contradicts the data: .* prepared with protocol vinyals",
        argv=_on_cache("--data-protocol", "random"),
    ),
    Case(
        "train out is a file",
        r"notes\.txt is a file, not a run folder",
        argv=lambda ws: ["train", "--out", str(ws.write("notes.txt", "mine")), *TINY],
    ),
    Case("train into a finished run", r"already holds a run; pass --resume", argv=_on_run(*TINY)),
    Case(
        "resume nothing there",
        r"empty: nothing to resume \(no checkpoints/last\.pt\)",
        argv=lambda ws: ["train", "--out", str(ws.write("empty/.keep", "").parent), "--resume"],
    ),
    Case(
        "resume with another setting",
        r"was trained with other settings \(meta_updates: 2 -> 9\)",
        argv=_on_run("--resume", "--meta-updates", "9"),
    ),
    Case(
        "resume after editing config yaml",
        r"config\.yaml was edited after the run's checkpoints were saved \(meta_updates: 2 -> 5\)",
        argv=_on_run("--resume", edit=_edit_config),
    ),
    Case(
        "resume after config yaml became garbage",
        r"config\.yaml was edited .*no longer a mapping",
        argv=_on_run("--resume", edit=lambda run: (run / "config.yaml").write_text("- 1\n")),
    ),
    Case(
        "resume from a file that is not a checkpoint",
        r"last\.pt: not a readable metaacdc checkpoint \(not a PyTorch file\)",
        argv=lambda ws: [
            "train",
            "--out",
            str(ws.write("run/checkpoints/last.pt", b"not a checkpoint").parents[1]),
            "--resume",
        ],
    ),
]
