"""`metaacdc train`: meta-train one configuration into a run folder.

Settings come from the protocol defaults, then ``--config FILE``, then the command line
(the command line wins). Under ``torchrun`` the processes share each meta-batch (see
:mod:`metaacdc.runtime.distributed`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from metaacdc.cli.options import ACDC_SHARES, KERNEL_SHARES, add_conv_option, conv_spec, given
from metaacdc.config import DATASETS, TrainConfig, build_config, load_config_file
from metaacdc.errors import ConfigError

#: (flag, config field, type, help); flags left unset do not override the config file.
OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--backbone", "backbone", str, "conv4, conv6, resnet10, resnet18 or resnet34"),
    (
        "--dataset",
        "dataset",
        str,
        f"one of {', '.join(DATASETS)} (default: the one a --data cache records; synthetic "
        "without --data)",
    ),
    ("--data", "data", str, "a cache, or a raw source (archive, its folder, a folder of them)"),
    (
        "--data-protocol",
        "data_protocol",
        str,
        "Omniglot split of a raw --data: random (default), vinyals or background-evaluation",
    ),
    ("--ways", "ways", int, "classes per task (default 5)"),
    ("--shots", "shots", int, "support images per class (default 1)"),
    ("--queries", "queries", int, "query images per class in training (default 16)"),
    ("--test-queries", "test_queries", int, "query images per class at validation (15)"),
    ("--atoms", "atoms", int, "atoms per ACDC layer (default 8)"),
    ("--atom-drop", "atom_drop", float, "atom-drop rate (default 0.1)"),
    ("--group-size", "group_size", int, "channels per group for the g- variants"),
    ("--inner-lr", "inner_lr", float, "inner-loop SGD step size (default 0.01)"),
    ("--inner-steps", "inner_steps", int, "inner-loop steps (default 5)"),
    (
        "--test-inner-steps",
        "test_inner_steps",
        int,
        "inner steps at validation/test (default twice --inner-steps)",
    ),
    ("--meta-batch", "meta_batch", int, "tasks per meta-update (default 4)"),
    ("--meta-lr", "meta_lr", float, "Adam step size (default 1e-3)"),
    ("--meta-updates", "meta_updates", int, "length (default 60k for 1-shot, 40k otherwise)"),
    ("--val-every", "val_every", int, "validate every N meta-updates (default 100)"),
    ("--val-tasks", "val_tasks", int, "validation tasks (default 100)"),
    ("--image-size", "image_size", int, "input side (default 84 Conv, 224 ResNet, 28 Omniglot)"),
    ("--adapt", "adapt", str, "all (MAML) or head (adapt only the classifier, ANIL)"),
    ("--seed", "seed", int, "random seed (default 0)"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N (default auto)"),
    (
        "--engine",
        "engine",
        str,
        "learn2learn (tasks one by one), batched (the meta-batch at once) or auto (default: "
        "batched on CUDA, learn2learn on the CPU; a resumed run keeps its engine)",
    ),
    (
        "--cuda-graphs",
        "cuda_graphs",
        str,
        "auto (default: capture each batched meta-update as one CUDA graph where supported), "
        "on, or off",
    ),
    ("--workers", "workers", int, "background episode workers (default 2)"),
    (
        "--init",
        "init",
        str,
        "kernel scale: pytorch (nn.Conv2d's default) or closerlook (Kaiming fan-out, the "
        "paper protocol); auto (default): pytorch, a resumed run keeps its own",
    ),
)
FLAGS = (
    ("--first-order", "first_order", "first-order MAML (default for ResNets)"),
    ("--meta-sgd", "meta_sgd", "learn per-parameter inner step sizes (Meta-SGD)"),
    ("--amp", "amp", "bfloat16 autocast (CUDA)"),
    ("--include-1x1", "include_1x1", "decompose 1x1 convs too"),
    ("--regulators", "regulators", "kernel-sharing regulators"),
)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("train", help="meta-train a backbone with MAML")
    for flag, dest, kind, text in OPTIONS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    for flag, dest, text in FLAGS:
        parser.add_argument(flag, dest=dest, action="store_true", default=None, help=text)
    parser.add_argument(
        "--second-order",
        dest="first_order",
        action="store_false",
        help="second-order MAML (default for Conv4/Conv6)",
    )
    parser.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=None,
        help="no train-time augmentation or test-time zoom",
    )
    parser.add_argument(
        "--acdc", default=None, help=f"ACDC sharing scope: none or one of {', '.join(ACDC_SHARES)}"
    )
    parser.add_argument(
        "--kernel-sharing",
        default=None,
        help=f"kernel-sharing baseline: none or one of {', '.join(KERNEL_SHARES)}",
    )
    add_conv_option(parser)
    parser.add_argument("--config", type=Path, help="YAML or TOML file of settings")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<name>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with the settings its folder holds (flags given again "
        "must agree; --device, --workers, --cuda-graphs and --stop-after may change)",
    )
    parser.add_argument(
        "--stop-after", type=int, default=None, help="do at most N meta-updates now (resume later)"
    )
    parser.set_defaults(handler=run)


def settings_given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line sets: the flags given (``--acdc``/``--kernel-sharing``
    /``--conv`` as ``conv``)."""
    overrides = given(args, [o[1] for o in OPTIONS] + [f[1] for f in FLAGS] + ["augment"])
    conv = conv_spec(args.acdc, args.kernel_sharing, args.conv)
    if conv is not None:
        overrides["conv"] = conv
    return overrides


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Protocol defaults < ``--config`` file < command line, by
    :func:`~metaacdc.config.build_config`: the flags given are its overrides."""
    return build_config(args.config, settings_given(args), source="command line")


def resumed_config(args: argparse.Namespace, out: Path, given: TrainConfig) -> TrainConfig:
    """The settings of the run in ``out`` (:func:`~metaacdc.training.trainer.saved_settings`)
    with those the ``--config`` file and the flags set (``given``, from
    :func:`config_from_args`) on top; :func:`~metaacdc.training.train` refuses those that
    differ from the run's, listing them."""
    from metaacdc.training.trainer import saved_settings

    names = set(settings_given(args))
    if args.config is not None:
        names |= set(load_config_file(args.config))
    return dataclasses.replace(saved_settings(out), **{n: getattr(given, n) for n in names})


def run(args: argparse.Namespace) -> int:
    from metaacdc.config import resolve
    from metaacdc.runs.folder import run_name
    from metaacdc.runtime import distributed
    from metaacdc.training import TrainingDivergedError, train

    config = config_from_args(args)
    out = args.out or Path("runs") / run_name(resolve(config, source="command line"))
    if args.resume:
        config = resumed_config(args, out, config)
    config = resolve(config, source="command line")
    with distributed.join(config.device) as world:
        try:
            summary = train(config, out, resume=args.resume, stop_after=args.stop_after)
        except TrainingDivergedError as error:
            raise ConfigError(str(error)) from error
    if not world.is_main:
        return 0
    best = (
        "none yet"
        if summary.best_val is None
        else f"{summary.best_val:.4f} (meta-update {summary.best_step})"
    )
    state = "finished" if summary.finished else f"stopped at {summary.step}; continue with --resume"
    print(f"{summary.run_dir}: {state}; best validation accuracy {best}")
    return 0
