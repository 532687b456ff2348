"""Frozen episodes: task lists keyed by filename, so every model is scored on the same tasks.

A manifest is a JSON file (gzip when the name ends in ``.gz``) holding the generation
parameters (seed, ways, shots, queries, number of tasks), the class names and filenames it
refers to, one task per line as ``[[class...], [support file...], [query file...]]``
(indices into those two lists, class-major), and ``content_sha256``, a checksum of all the
rest that is verified on load.

Tasks are drawn exactly as :class:`~metaacdc.data.sampler.EpisodeSampler` draws them with
the same seed, over classes in sorted order and files in sorted order within a class: the
order every cache uses. :class:`ManifestSampler` replays a manifest on any cache holding the
files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaacdc.data.cache import CachedSplit
from metaacdc.data.sampler import Episode, EpisodeBuilder, Transform, draw_task, episode_generators
from metaacdc.errors import ConfigError, check_positive_int

FORMAT = "metaacdc-episodes"
VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """A frozen list of tasks.

    Attributes:
        header: generation parameters and provenance (``seed``, ``ways``, ``shots``,
            ``queries``, ``num_tasks``, ``source``, ``source_sha256``, ``command``).
        classes: class names referred to by ``tasks``.
        filenames: filenames referred to by ``tasks``.
        task_classes: ``(T, ways)`` indices into ``classes``, in label order.
        support: ``(T, ways, shots)`` indices into ``filenames``.
        query: ``(T, ways, queries)`` indices into ``filenames``.
    """

    header: dict[str, Any]
    classes: list[str]
    filenames: list[str]
    task_classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    def __len__(self) -> int:
        return len(self.task_classes)

    def _payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            **self.header,
            "classes": self.classes,
            "filenames": self.filenames,
            "tasks": [
                [c.tolist(), s.ravel().tolist(), q.ravel().tolist()]
                for c, s, q in zip(self.task_classes, self.support, self.query, strict=True)
            ],
        }

    def content_sha256(self) -> str:
        """sha256 of the canonical JSON of everything in the manifest."""
        text = json.dumps(self._payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def save(self, path: Path | str) -> Path:
        """Write the manifest (gzip when ``path`` ends in ``.gz``), one task per line."""
        path = Path(path)
        payload = self._payload()
        tasks = payload.pop("tasks")
        payload["content_sha256"] = self.content_sha256()
        head = json.dumps(payload, indent=1, sort_keys=True)
        lines = ",\n".join(json.dumps(t, separators=(",", ":")) for t in tasks)
        text = head[:-2] + ',\n "tasks": [\n' + lines + "\n ]\n}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode()
        if path.suffix == ".gz":
            data = gzip.compress(data, mtime=0)
        path.write_bytes(data)
        return path


def freeze(
    class_files: Mapping[str, Sequence[str]],
    ways: int,
    shots: int,
    queries: int,
    num_tasks: int,
    seed: int,
    **provenance: Any,
) -> Manifest:
    """Draw ``num_tasks`` tasks over ``class_files`` (class name -> filenames).

    Classes are sorted by name and files within a class by filename, as in every cache,
    so episode ``i`` equals ``EpisodeSampler(cache, ways, shots, queries, seed).episode(i)``
    on a cache of exactly these files. ``provenance`` goes into the header.
    """
    for name, value in (
        ("ways", ways),
        ("shots", shots),
        ("queries", queries),
        ("num_tasks", num_tasks),
    ):
        check_positive_int(name, value)
    check_positive_int("seed", seed, minimum=0)
    classes = sorted(class_files)
    if len(classes) < ways:
        raise ConfigError(f"ways={ways} but only {len(classes)} classes are given")
    short = [c for c in classes if len(class_files[c]) < shots + queries]
    if short:
        raise ConfigError(
            f"classes with fewer than shots + queries = {shots + queries} "
            f"files: {', '.join(short[:5])}"
        )
    filenames: list[str] = []
    class_indices = []
    for name in classes:
        files = sorted(class_files[name])
        class_indices.append(np.arange(len(filenames), len(filenames) + len(files)))
        filenames += files
    picked_classes = np.empty((num_tasks, ways), dtype=np.int64)
    items = np.empty((num_tasks, ways, shots + queries), dtype=np.int64)
    for i in range(num_tasks):
        rng, _ = episode_generators(seed, i)
        picked_classes[i], items[i] = draw_task(rng, class_indices, ways, shots + queries)
    header = {
        "seed": seed,
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "num_tasks": num_tasks,
        **provenance,
    }
    return Manifest(
        header, classes, filenames, picked_classes, items[:, :, :shots], items[:, :, shots:]
    )


def class_files_from_csv(rows: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Class name -> filenames from split-CSV rows ``(filename, label)``."""
    out: dict[str, list[str]] = {}
    for filename, label in rows:
        out.setdefault(label, []).append(filename)
    return out


def class_files_from_split(split: CachedSplit) -> dict[str, list[str]]:
    """Class name -> filenames of a cache (needs a source that records filenames)."""
    filenames = _require_filenames(split)
    return {
        name: [filenames[i] for i in split.class_indices[c]]
        for c, name in enumerate(split.class_names)
    }


def load_manifest(path: Path | str) -> Manifest:
    """Read and verify a manifest; ConfigError naming the file if it is damaged or edited."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: episode manifest not found")
    try:
        data = path.read_bytes()
        raw = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
        if raw.pop("format") != FORMAT or raw.pop("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} file")
        expected = raw.pop("content_sha256")
        tasks = raw.pop("tasks")
        classes, filenames = raw.pop("classes"), raw.pop("filenames")
        ways, shots, queries = raw["ways"], raw["shots"], raw["queries"]
        task_classes = np.array([t[0] for t in tasks], dtype=np.int64).reshape(-1, ways)
        support = np.array([t[1] for t in tasks], dtype=np.int64).reshape(-1, ways, shots)
        query = np.array([t[2] for t in tasks], dtype=np.int64).reshape(-1, ways, queries)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        raise ConfigError(f"{path}: not a readable episode manifest ({error})") from error
    manifest = Manifest(raw, classes, filenames, task_classes, support, query)
    if manifest.content_sha256() != expected:
        raise ConfigError(
            f"{path}: content checksum mismatch; the manifest was modified or "
            "damaged, restore it from the repository or freeze it again"
        )
    return manifest


def _require_filenames(split: CachedSplit) -> list[str]:
    if split.meta.filenames is None:
        raise ConfigError(
            f"the {split.describe()} records no filenames, so manifests cannot "
            "refer to its images; prepare it from a layout with filenames"
        )
    return split.meta.filenames


class ManifestSampler:
    """Replays a manifest's tasks on a cache that holds its files.

    Args:
        split: the cache to read images from.
        manifest: a loaded :class:`Manifest`.
        transform: optional transform, as for ``EpisodeSampler`` (seeded per task).
        mean, std: normalisation; default the cache's statistics.

    Raises:
        ConfigError: the cache lacks a file or class of the manifest (names the first one)
            or files sit in other classes than the manifest says.
    """

    def __init__(
        self,
        split: CachedSplit,
        manifest: Manifest,
        *,
        transform: Transform | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        where = {name: i for i, name in enumerate(_require_filenames(split))}
        table = np.array([where.get(name, -1) for name in manifest.filenames], dtype=np.int64)
        used = np.unique(np.concatenate([manifest.support.ravel(), manifest.query.ravel()]))
        missing = used[table[used] < 0]
        if len(missing):
            raise ConfigError(
                f"{manifest.filenames[missing[0]]}: needed by the episode manifest but absent "
                f"from the {split.describe()} ({len(missing)} files missing); prepare the "
                "cache from the complete split"
            )
        class_index = {name: i for i, name in enumerate(split.class_names)}
        absent = [name for name in manifest.classes if name not in class_index]
        if absent:
            raise ConfigError(
                f"class {absent[0]} of the manifest is absent from the {split.describe()}"
            )
        self.class_table = np.array([class_index[n] for n in manifest.classes], dtype=np.int64)
        self.items = table[np.concatenate([manifest.support, manifest.query], axis=2)]
        self.classes = self.class_table[manifest.task_classes]
        wrong = split.labels[self.items] != self.classes[:, :, None]
        if wrong.any():
            t, w, k = np.argwhere(wrong)[0]
            name = split.meta.filenames[self.items[t, w, k]]  # type: ignore[index]
            raise ConfigError(
                f"{name}: the manifest puts it in class "
                f"{split.class_names[self.classes[t, w]]}, the cache in "
                f"{split.class_names[split.labels[self.items[t, w, k]]]}"
            )
        self.manifest = manifest
        self.shots = int(manifest.header["shots"])
        self.seed = int(manifest.header["seed"])
        self.builder = EpisodeBuilder(split, transform, mean, std)

    def episode(self, i: int) -> Episode:
        """Task ``i`` of the manifest."""
        if not 0 <= i < len(self):
            raise ConfigError(f"episode index {i} outside 0..{len(self) - 1}")
        _, generator = episode_generators(self.seed, i)
        return self.builder.build(self.classes[i], self.items[i], self.shots, generator)

    def __len__(self) -> int:
        return len(self.manifest)

    def __iter__(self) -> Iterator[Episode]:
        return (self.episode(i) for i in range(len(self)))
