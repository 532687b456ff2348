"""`metaacdc data`: prepare a cache, describe (and with ``--verify`` check) one, freeze episode
manifests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from metaacdc.data.sources.omniglot_protocols import PROTOCOLS
from metaacdc.errors import ConfigError

SOURCE_OPTIONS = {
    "miniimagenet": ("layout",),
    "omniglot": ("protocol", "rotations", "split_seed"),
    "synthetic": ("images_per_class", "seed"),
    "cifar-fs": (),
    "fc100": (),
    "cub": (),
    "tieredimagenet": ("layout",),
}


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("data", help="prepare and inspect episode caches, freeze episodes")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    prepare = actions.add_parser("prepare", help="turn a dataset into a cache (resumable)")
    prepare.add_argument("--source", required=True, choices=tuple(SOURCE_OPTIONS))
    prepare.add_argument(
        "--root",
        type=Path,
        help="the dataset as downloaded: a zip/tar archive, the folder it extracts to, or a "
        "folder holding them",
    )
    prepare.add_argument(
        "--out",
        type=Path,
        help="cache folder to write (default: the content-keyed cache in $METAACDC_CACHE "
        "that `metaacdc train --data` would use; its path is printed)",
    )
    prepare.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side in pixels (default 84; Omniglot 28; CIFAR-FS, FC100 32)",
    )
    prepare.add_argument(
        "--splits", nargs="+", default=None, choices=("train", "val", "test"), help="(with --out)"
    )
    prepare.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing splits built from other inputs/parameters",
    )
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.add_argument(
        "--layout",
        choices=("csv", "pickle", "folders", "imagenet"),
        help="miniImageNet: csv, pickle or folders; tieredImageNet: pickle, folders or "
        "imagenet (default: detected)",
    )
    prepare.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="Omniglot: how characters are split (default random; see data/README.md)",
    )
    prepare.add_argument(
        "--rotations",
        action="store_true",
        default=None,
        help="Omniglot: add 90/180/270 degree rotations as new classes (default: with "
        "--protocol vinyals only)",
    )
    prepare.add_argument(
        "--no-rotations",
        dest="rotations",
        action="store_false",
        help="Omniglot: no rotations, also with --protocol vinyals",
    )
    prepare.add_argument(
        "--split-seed", type=int, help="Omniglot: character split seed (--protocol random)"
    )
    prepare.add_argument("--images-per-class", type=int, help="synthetic: images per class")
    prepare.add_argument("--seed", type=int, help="synthetic: generator seed")
    prepare.set_defaults(handler=run_prepare)

    info = actions.add_parser("info", help="describe a cache folder or one split of it")
    info.add_argument("directory", type=Path)
    info.add_argument(
        "--verify",
        action="store_true",
        help="hash every split's files and check them against the sha256 meta.json records "
        "(a run checks them when it first opens a split, then again only if they change)",
    )
    info.set_defaults(handler=run_info)

    freeze = actions.add_parser("freeze", help="freeze a list of test tasks into a manifest")
    origin = freeze.add_mutually_exclusive_group()
    origin.add_argument(
        "--split-csv",
        type=Path,
        help="split CSV (filename,label); default: the shipped miniImageNet one",
    )
    origin.add_argument("--cache", type=Path, help="a prepared split directory instead")
    freeze.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="which shipped miniImageNet CSV (default test)",
    )
    freeze.add_argument("--ways", type=int, default=5)
    freeze.add_argument("--shots", type=int, required=True)
    freeze.add_argument("--queries", type=int, default=15)
    freeze.add_argument("--tasks", type=int, default=3000)
    freeze.add_argument("--seed", type=int, default=0)
    freeze.add_argument("--out", type=Path, required=True, help="manifest file (.json[.gz])")
    freeze.set_defaults(handler=run_freeze)


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {}
    for name in sorted({name for names in SOURCE_OPTIONS.values() for name in names}):
        value = getattr(args, name)
        if value is None:
            continue
        if name not in SOURCE_OPTIONS[args.source]:
            owners = [source for source, names in SOURCE_OPTIONS.items() if name in names]
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} applies to --source {' or '.join(owners)} only")
        options[name] = value
    return options


def run_prepare(args: argparse.Namespace) -> int:
    from metaacdc.data import open_split, prepare
    from metaacdc.data.cache import SPLITS
    from metaacdc.data.source_cache import ensure_cache, prepare_source

    def report(result: Any) -> None:
        meta = result.meta
        print(
            f"{result.split}: {result.status} {result.directory} ({meta.num_images} images, "
            f"{len(meta.class_names)} classes, {meta.image_size}px)"
        )

    options = _source_options(args)
    if args.out is None:
        if args.source == "synthetic":
            raise ConfigError("--source synthetic needs --out (it has no files to key a cache by)")
        if args.root is None:
            raise ConfigError(f"--root is required for source {args.source!r}: the dataset's files")
        for flag, given in (("--splits", args.splits is not None), ("--force", args.force)):
            if given:
                raise ConfigError(f"{flag} needs --out (a user cache holds all three splits)")
        cache = ensure_cache(
            args.source,
            args.root,
            args.image_size,
            progress=not args.no_progress,
            **options,
        )
        for split in SPLITS:
            meta = open_split(cache / split).meta
            print(
                f"{split}: {cache / split} ({meta.num_images} images, "
                f"{len(meta.class_names)} classes, {meta.image_size}px)"
            )
        print(f"cache: {cache} (metaacdc train --data {cache})")
        return 0
    settings: dict[str, Any] = {
        "image_size": args.image_size,
        "splits": args.splits or SPLITS,
        "force": args.force,
        "progress": not args.no_progress,
        "on_split": report,
        **options,
    }
    if args.root is None:  # synthetic; the others refuse a missing --root
        prepare(args.source, args.out, **settings)
    else:
        prepare_source(args.source, args.root, args.out, **settings)
    return 0


def _describe(directory: Path, verify: bool = False) -> str:
    from metaacdc.data import open_split
    from metaacdc.data.cache import is_verified

    split = open_split(directory, verify="always" if verify else "never")
    meta = split.meta
    counts = [len(ix) for ix in split.class_indices]
    size = sum(p.stat().st_size for p in directory.iterdir()) / 2**20
    lines = [
        f"{directory}: {meta.source} {meta.split}, format version {meta.format_version}",
        f"  images: {meta.num_images} x {meta.image_size}x{meta.image_size}x{meta.channels} "
        f"uint8 ({size:.1f} MiB on disk)",
        f"  classes: {len(counts)} ({min(counts, default=0)}-{max(counts, default=0)} "
        "images per class)",
        f"  filenames: {'recorded' if meta.filenames is not None else 'none'}",
        "  mean: "
        + ", ".join(f"{v:.4f}" for v in meta.mean)
        + "  std: "
        + ", ".join(f"{v:.4f}" for v in meta.std),
        f"  source sha256: {meta.source_sha256}",
        f"  images sha256: {meta.images_sha256}",
        f"  labels sha256: {meta.labels_sha256 or 'not recorded (an older cache)'}",
        "  checksums: "
        + (
            "match (checked now)"
            if verify
            else "matched when last checked, files unchanged since"
            if is_verified(directory, meta)
            else "not checked since the files last changed (a run checks them when it "
            "opens the split; `metaacdc data info --verify` checks now)"
        ),
    ]
    lines += [f"  {key}: {value}" for key, value in sorted(meta.preprocessing.items())]
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from metaacdc.data.cache import SPLITS, is_complete

    directory: Path = args.directory
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such cache directory")
    if (directory / "images.u8").exists() or is_complete(directory):
        print(_describe(directory, args.verify))
        return 0
    found = [directory / s for s in SPLITS if (directory / s).is_dir()]
    if not found:
        raise ConfigError(
            f"{directory}: holds no cache splits (train/ val/ test/); create "
            "them with `metaacdc data prepare`"
        )
    descriptions = [_describe(path, args.verify) for path in found]  # all checked first
    print("\n".join(descriptions))
    return 0


def run_freeze(args: argparse.Namespace) -> int:
    from metaacdc.data import (
        class_files_from_csv,
        class_files_from_split,
        freeze,
        open_split,
        shipped_split_csv,
    )
    from metaacdc.data.cache import file_sha256
    from metaacdc.data.sources.miniimagenet import read_split_csv

    if args.cache is not None:
        split = open_split(args.cache)
        class_files = class_files_from_split(split)
        provenance = {
            "source": f"{split.meta.source} {split.meta.split} cache",
            "source_sha256": split.meta.source_sha256,
        }
        origin = f"--cache {args.cache}"
    else:
        csv_path = args.split_csv or shipped_split_csv(args.split)
        class_files = class_files_from_csv(read_split_csv(csv_path))
        provenance = {
            "source": f"split CSV {csv_path.name}",
            "source_sha256": file_sha256(csv_path),
        }
        origin = f"--split-csv {csv_path}" if args.split_csv else f"--split {args.split}"
    command = (
        f"metaacdc data freeze {origin} --ways {args.ways} --shots {args.shots} "
        f"--queries {args.queries} --tasks {args.tasks} --seed {args.seed}"
    )
    manifest = freeze(
        class_files,
        args.ways,
        args.shots,
        args.queries,
        args.tasks,
        args.seed,
        command=command,
        **provenance,
    )
    path = manifest.save(args.out)
    print(
        f"{path}: {len(manifest)} tasks, {args.ways}-way {args.shots}-shot "
        f"{args.queries} queries, content sha256 {manifest.content_sha256()}"
    )
    return 0
