"""``meta.json`` of a cache split (:class:`CacheMeta`): what is recorded beside the pixels,
checked when read (types, sizes, and a sha256 of its own content), and the names of the
files of a split directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metaacdc.errors import ConfigError

FORMAT_VERSION = 1
IMAGES_FILE = "images.u8"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CacheMeta:
    """Everything recorded beside one split's pixels.

    Attributes:
        source: ``"miniimagenet"``, ``"omniglot"`` or ``"synthetic"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side ``H == W`` in pixels.
        channels: ``C`` (3 for RGB, 1 for grayscale).
        num_images: ``N``.
        class_names: class name of each class index, in index order.
        filenames: per-image source filename (the split-CSV filename for miniImageNet), or
            ``None`` when the source has none (synthetic).
        mean: per-channel pixel mean of the split, pixels scaled to ``[0, 1]``.
        std: per-channel pixel standard deviation, same scale.
        source_sha256: sha256 of the source inputs read (or of the generator parameters).
        fingerprint: cheap sha256 of input names, sizes and parameters; decides whether an
            existing split can be kept when ``prepare`` runs again.
        images_sha256: sha256 of ``images.u8``.
        preprocessing: every choice applied to the source pixels (resampling, inversion,
            rotations, layout, split seed); adaptation of user images must repeat it.
        format_version: version of this layout; other versions are refused.
        labels_sha256: sha256 of ``labels.npy`` (empty in caches written before it was
            recorded, whose labels are then not checked).
        meta_sha256: sha256 of the other fields as :meth:`to_json` writes them (empty in
            caches written before it was recorded); :meth:`from_file` checks it.
    """

    source: str
    split: str
    image_size: int
    channels: int
    num_images: int
    class_names: list[str]
    filenames: list[str] | None
    mean: list[float]
    std: list[float]
    source_sha256: str
    fingerprint: str
    images_sha256: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    labels_sha256: str = ""
    meta_sha256: str = ""

    def content_sha256(self) -> str:
        """sha256 of every field but ``meta_sha256`` (canonical JSON)."""
        fields = asdict(self)
        del fields["meta_sha256"]
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> str:
        """Serialise to indented JSON, ``meta_sha256`` set to :meth:`content_sha256`."""
        fields = {**asdict(self), "meta_sha256": self.content_sha256()}
        return json.dumps(fields, indent=1, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> CacheMeta:
        """Read ``meta.json``.

        Raises:
            ConfigError: naming ``path``, when it is unreadable, of another format version,
                malformed (a field missing, unknown or of the wrong type) or changed since
                it was written (its content does not match its ``meta_sha256``).
        """
        redo = "rerun `metaacdc data prepare ... --force` to rebuild the split"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: unreadable cache metadata ({error}); {redo}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: damaged cache metadata (not a JSON object); {redo}")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"{path}: cache format version {version!r}, this metaacdc reads version "
                f"{FORMAT_VERSION}; rerun `metaacdc data prepare ... --force` to rebuild it"
            )
        try:
            meta = cls(**raw)
        except TypeError as error:
            raise ConfigError(f"{path}: malformed cache metadata ({error}); {redo}") from error
        problem = meta._malformed()
        if problem is not None:
            raise ConfigError(f"{path}: malformed cache metadata ({problem}); {redo}")
        if meta.meta_sha256 and meta.meta_sha256 != meta.content_sha256():
            raise ConfigError(
                f"{path}: changed or damaged since the cache was prepared (its content does "
                f"not match the sha256 it records); {redo}"
            )
        return meta

    def _malformed(self) -> str | None:
        """What is wrong with the fields' types and sizes, if anything."""

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        def strings(value: object) -> bool:
            return isinstance(value, list) and all(isinstance(item, str) for item in value)

        def numbers(value: object) -> bool:
            return (
                isinstance(value, list)
                and len(value) == self.channels
                and all(
                    isinstance(item, int | float) and not isinstance(item, bool) for item in value
                )
            )

        checks = {
            "source": isinstance(self.source, str),
            "split": isinstance(self.split, str),
            "image_size": is_int(self.image_size),
            "channels": is_int(self.channels),
            "num_images": is_int(self.num_images),
            "class_names": strings(self.class_names),
            "filenames": self.filenames is None
            or (strings(self.filenames) and len(self.filenames) == self.num_images),
            "mean": numbers(self.mean),
            "std": numbers(self.std),
            "preprocessing": isinstance(self.preprocessing, dict),
            **{
                name: isinstance(getattr(self, name), str)
                for name in (
                    "source_sha256",
                    "fingerprint",
                    "images_sha256",
                    "labels_sha256",
                    "meta_sha256",
                )
            },
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if not wrong:
            return None
        value = repr(getattr(self, wrong[0]))
        return f"{wrong[0]} is {value[:40]}{'...' if len(value) > 40 else ''}"
