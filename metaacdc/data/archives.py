"""A dataset source read as the files it holds, whatever form it was downloaded in: a
folder, a zip or tar archive, or a folder holding archives.

Researchers keep datasets as they downloaded them, extracted or not, so a source module
should not have to care which. Every form is read under one naming: each path starts with
the source's own name (an archive's name without its suffix), and an archive found inside a
folder is read as the folder of the same name beside it. An archive whose members all sit
in one folder named like the archive (``images_background.zip`` holding
``images_background/...``) is not nested twice. So ``x.zip``, the folder ``x/`` it
extracts to, and a folder holding either list the same paths below the folder's name.

- :func:`source_files` lists the files of a source and reads them on demand, without
  extracting anything (for sources small enough to read from an archive, as Omniglot).
- :func:`extract` writes a source out as a real folder, for source modules that read files
  from disk; archive members are streamed, so a large tar is never held in memory.
- :func:`stat_listing` is the cheap identity of a source (names, sizes, modification times;
  nothing is opened), from which :mod:`metaacdc.data.source_cache` finds a prepared cache.

Member names that would escape the folder (absolute, ``..``) are refused; symbolic links,
devices and macOS metadata (``__MACOSX/``, ``._*``) inside archives are skipped.
"""

from __future__ import annotations

import functools
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from metaacdc.errors import ConfigError

#: suffixes read as archives, longest first so ``.tar.gz`` wins over ``.gz``-less ``.tar``
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")


@dataclass(frozen=True)
class SourceFile:
    """One file of a source.

    Attributes:
        path: ``/``-separated path, starting with the source's name.
        size: size in bytes.
        origin: where the file is (a path, or ``archive:member``), for messages.
        read: returns the file's bytes.
    """

    path: str
    size: int
    origin: str
    read: Callable[[], bytes]


def archive_stem(name: str) -> str | None:
    """``name`` without its archive suffix, or ``None`` when it is not an archive's name."""
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file with an archive suffix (see :data:`ARCHIVE_SUFFIXES`)."""
    return path.is_file() and archive_stem(path.name) is not None


def _check_source(source: Path) -> None:
    if not source.exists():
        raise FileNotFoundError(f"{source}: not found")
    if not source.is_dir() and not is_archive(source):
        raise ConfigError(
            f"{source}: neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )


def _skipped(parts: tuple[str, ...]) -> bool:
    """macOS metadata and hidden files: never part of a dataset."""
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


def _folder_files(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder`` (links followed), in sorted order."""
    for directory, names, files in os.walk(folder, followlinks=True):
        names[:] = sorted(n for n in names if not _skipped((n,)))
        for name in sorted(files):
            if not _skipped((name,)):
                yield Path(directory, name)


def holds_archives(folder: Path) -> bool:
    """Whether any file under ``folder`` is an archive."""
    return any(archive_stem(p.name) is not None for p in _folder_files(folder))


def stat_listing(source: Path) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of every file of ``source`` (archives as single files),
    paths relative to the source's parent: cheap to compute, opens nothing."""
    _check_source(source)
    files = _folder_files(source) if source.is_dir() else iter([source])
    listing = []
    for path in files:
        stat = path.stat()
        listing.append((path.relative_to(source.parent).as_posix(), stat.st_size, stat.st_mtime_ns))
    return listing


def _member_name(archive: Path, name: str) -> str | None:
    """A member's safe relative name; ``None`` for metadata to skip; refuses escapes."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ConfigError(f"{archive}: member {name!r} points outside the archive; refused")
    parts = tuple(p for p in pure.parts if p not in ("", "."))
    if not parts or _skipped(parts):
        return None
    return "/".join(parts)


def _collapsed(stem: str, names: list[str]) -> Callable[[str], str]:
    """Maps a member name to its path below the archive's mount point: the archive's own
    top folder (named like the archive) is dropped when every member is inside it."""
    prefix = f"{stem}/"
    if names and all(n.startswith(prefix) for n in names):
        return lambda n: n[len(prefix) :]
    return lambda n: n


def _zip_members(archive: Path) -> tuple[zipfile.ZipFile, list[tuple[str, zipfile.ZipInfo]]]:
    """The open archive and its file members with their safe names."""
    try:
        handle = zipfile.ZipFile(archive)
        infos = [i for i in handle.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"{archive}: not a readable zip archive ({error})") from error
    return handle, [(n, i) for i in infos if (n := _member_name(archive, i.filename)) is not None]


def _zip_reader(archive: Path, handle: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return handle.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ConfigError(f"{archive}:{info.filename}: unreadable ({error})") from error


def _zip_files(archive: Path, mount: str) -> list[SourceFile]:
    handle, named = _zip_members(archive)
    below = _collapsed(mount.rsplit("/", 1)[-1], [n for n, _ in named])
    return [
        SourceFile(
            f"{mount}/{below(name)}",
            info.file_size,
            f"{archive}:{info.filename}",
            functools.partial(_zip_reader, archive, handle, info),
        )
        for name, info in named
    ]


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ConfigError(f"{archive}: not a readable tar archive ({error})") from error


def _tar_members(archive: Path, tar: tarfile.TarFile) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """Regular members with their safe names, in archive order (streaming)."""
    try:
        for info in tar:
            if info.isreg() and (name := _member_name(archive, info.name)) is not None:
                yield name, info
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ConfigError(f"{archive}: truncated or damaged tar archive ({error})") from error


class _TarContents:
    """All regular members of a tar read in one pass on first use: a compressed tar has no
    random access, and reading members one by one out of order would decompress it again
    for each. Meant for sources read in place (a few tens of MB); large ones are extracted."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.data: dict[str, bytes] | None = None

    def read(self, name: str) -> bytes:
        if self.data is None:
            with _open_tar(self.archive) as tar:
                self.data = {}
                for member, info in _tar_members(self.archive, tar):
                    stream = tar.extractfile(info)
                    assert stream is not None  # a regular member
                    self.data[member] = stream.read()
        return self.data[name]


def _tar_files(archive: Path, mount: str) -> list[SourceFile]:
    with _open_tar(archive) as tar:
        named = [(name, info.size) for name, info in _tar_members(archive, tar)]
    below = _collapsed(mount.rsplit("/", 1)[-1], [n for n, _ in named])
    contents = _TarContents(archive)
    return [
        SourceFile(
            f"{mount}/{below(name)}",
            size,
            f"{archive}:{name}",
            functools.partial(contents.read, name),
        )
        for name, size in named
    ]


def _archive_files(archive: Path, mount: str) -> list[SourceFile]:
    if archive.name.lower().endswith(".zip"):
        return _zip_files(archive, mount)
    return _tar_files(archive, mount)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: file vanished while being read") from error


def source_files(source: Path | str) -> dict[str, SourceFile]:
    """Every file of ``source`` (a folder, an archive, or a folder holding archives), keyed
    and sorted by path. A path present both as a plain file and inside an archive is read
    from the plain file.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ConfigError: ``source`` is neither a folder nor an archive, or an archive in it is
            unreadable or has a member that points outside it.
    """
    source = Path(source)
    _check_source(source)
    files: dict[str, SourceFile] = {}
    archives: list[tuple[Path, str]] = []
    if source.is_dir():
        for path in _folder_files(source):
            relative = path.relative_to(source.parent).as_posix()
            stem = archive_stem(path.name)
            if stem is None:
                files[relative] = SourceFile(
                    relative, path.stat().st_size, str(path), functools.partial(_read_file, path)
                )
            else:
                archives.append((path, f"{Path(relative).parent.as_posix()}/{stem}"))
    else:
        archives.append((source, str(archive_stem(source.name))))
    for archive, mount in archives:
        for file in _archive_files(archive, mount):
            files.setdefault(file.path, file)
    return dict(sorted(files.items()))


def _extract_zip(archive: Path, scratch: Path, bar: tqdm) -> None:
    handle, named = _zip_members(archive)
    with handle:
        for name, info in named:
            out = scratch / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(_zip_reader(archive, handle, info))
            bar.update()


def _extract_tar(archive: Path, scratch: Path, bar: tqdm) -> None:
    with _open_tar(archive) as tar:
        for name, member in _tar_members(archive, tar):
            out = scratch / name
            out.parent.mkdir(parents=True, exist_ok=True)
            stream = tar.extractfile(member)
            assert stream is not None  # a regular member
            with stream, open(out, "wb") as target:
                shutil.copyfileobj(stream, target)
            bar.update()


def _extract_archive(archive: Path, target: Path, progress: bool) -> None:
    """Extract ``archive`` to the folder ``target`` (its own top folder collapsed)."""
    scratch = target.with_name(f".{target.name}.extracting-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    with tqdm(
        desc=f"extracting {archive.name}", unit="file", disable=not progress, leave=False
    ) as bar:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, scratch, bar)
        else:
            _extract_tar(archive, scratch, bar)
    entries = list(scratch.iterdir())
    inner = scratch / target.name
    if entries == [inner] and inner.is_dir():  # the archive's own top folder: collapse it
        inner.rename(target)
        scratch.rmdir()
    else:
        scratch.rename(target)


def extract(source: Path | str, dest: Path | str, progress: bool = True) -> Path:
    """Write ``source`` out as a real folder under ``dest`` and return it
    (``dest/<source name>``): archives extracted, plain files of a folder linked (not copied).
    Same paths as :func:`source_files`; a folder and an archive of the same name beside it
    give the folder (the archive is taken as its download)."""
    source, dest = Path(source), Path(dest)
    _check_source(source)
    dest.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        target = dest / str(archive_stem(source.name))
        _extract_archive(source, target, progress)
        return target
    archives = []
    for path in _folder_files(source):
        relative = path.relative_to(source.parent)
        stem = archive_stem(path.name)
        if stem is not None:
            archives.append((path, dest / relative.parent / stem))
            continue
        link = dest / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    for archive, target in archives:
        if not target.exists():
            _extract_archive(archive, target, progress)
    return dest / source.name
