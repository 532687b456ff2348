"""Any form a dataset is downloaded in gives the same cache: an archive, the folder it
extracts to, a folder holding either; byte-identical from the same files; one-line errors
for a wrong or damaged source."""

from __future__ import annotations

import filecmp
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from metaacdc.data import open_split, prepare
from metaacdc.data.archives import extract, source_files
from metaacdc.data.source_cache import ensure_cache, prepare_source
from metaacdc.errors import ConfigError
from tests.data.data_fakes import write_fake_miniimagenet
from tests.data.omniglot_fakes import BOTH, members, write_folder, write_forms, write_zip

SPLITS = ("train", "val", "test")
CACHE_FILES = ["images.u8", "labels.npy", "meta.json"]


def _same_cache(first: Path, second: Path) -> None:
    for split in SPLITS:
        _, mismatch, errors = filecmp.cmpfiles(
            first / split, second / split, CACHE_FILES, shallow=False
        )
        assert not mismatch and not errors, (split, mismatch, errors)


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_forms(tmp_path_factory.mktemp("forms"))


def test_every_form_lists_the_same_files(forms: dict[str, Path]) -> None:
    expected = {f"{name}/{key}": data for name in BOTH for key, data in members(name).items()}
    for form, path in forms.items():
        files = source_files(path)
        below = {p.split("/", 1)[1]: f for p, f in files.items()}  # drop the source's name
        assert set(below) == set(expected), form
        assert all(below[p].read() == expected[p] for p in expected), form
        assert all(below[p].size == len(expected[p]) for p in expected), form


def test_every_form_gives_one_byte_identical_cache(forms: dict[str, Path], tmp_path: Path) -> None:
    caches = {
        form: ensure_cache("omniglot", path, 8, cache_root=tmp_path, progress=False)
        for form, path in forms.items()
    }
    assert len(set(caches.values())) == 1, caches  # one content key, one folder
    assert len(list((tmp_path / "index").iterdir())) == len(forms)  # one entry per form
    reference = tmp_path / "reference"
    prepare(
        "omniglot", reference, root=forms["folder holding folders"], image_size=8, progress=False
    )
    _same_cache(reference, next(iter(caches.values())))
    for form, path in forms.items():  # and written into --out, each on its own
        out = tmp_path / "out" / form.replace(" ", "-")
        prepare_source("omniglot", path, out, image_size=8, progress=False)
        _same_cache(reference, out)


def test_one_input_as_zip_as_folder_and_inside_a_folder(tmp_path: Path) -> None:
    zipped = write_zip(tmp_path / "dl" / "images_background.zip", ("images_background",))
    bare = write_zip(tmp_path / "bare" / "images_background.zip", ("images_background",), False)
    extracted = write_folder(tmp_path / "x", "images_background")
    caches = {
        ensure_cache("omniglot", source, 8, cache_root=tmp_path / "c", progress=False)
        for source in (zipped, zipped.parent, bare, extracted, extracted.parent)
    }
    assert len(caches) == 1
    meta = open_split(caches.pop() / "train").meta
    assert meta.preprocessing["inputs"] == ["images_background"]


def test_same_files_give_byte_identical_caches_twice(
    forms: dict[str, Path], tmp_path: Path
) -> None:
    source = forms["one tar.gz of both"]
    for out in ("a", "b"):
        prepare("omniglot", tmp_path / out, root=source, protocol="vinyals", progress=False)
    _same_cache(tmp_path / "a", tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == list(sorted(SPLITS))


def test_miniimagenet_from_an_archive_equals_its_folder(tmp_path: Path) -> None:
    folder = write_fake_miniimagenet(tmp_path / "mini", "folders")
    with tarfile.open(tmp_path / "mini.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="mini")
    direct = tmp_path / "direct"
    prepare("miniimagenet", direct, root=folder, image_size=16, progress=False)
    root = tmp_path / "cache"
    from_archive = ensure_cache(
        "miniimagenet", tmp_path / "mini.tar.gz", 16, cache_root=root, progress=False
    )
    _same_cache(direct, from_archive)
    holding = tmp_path / "holding"
    holding.mkdir()
    shutil.move(tmp_path / "mini.tar.gz", holding / "mini.tar.gz")
    assert (
        ensure_cache("miniimagenet", holding, 16, cache_root=root, progress=False) == from_archive
    )
    assert not any((root / "staging").iterdir())  # extracted copies are removed


def test_extract_links_plain_files_and_collapses_top_folders(tmp_path: Path) -> None:
    source = tmp_path / "dl"
    write_zip(source / "images_background.zip", ("images_background",))
    (source / "README.txt").write_text("notes")
    out = extract(source, tmp_path / "staging", progress=False)
    assert (out / "README.txt").is_symlink()
    assert (out / "images_background" / "Greek" / "character01").is_dir()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: p / "nothing", FileNotFoundError, r"nothing: --data path not found"),
        (lambda p: _write(p / "notes.txt", b"hi"), ConfigError, r"notes\.txt: neither a folder"),
        (
            lambda p: _write(p / "images_background.zip", b"PK broken"),
            ConfigError,
            r"images_background\.zip: not a readable zip archive",
        ),
        (
            lambda p: _write(p / "o.tar.gz", _tar_bytes()[:300]),
            ConfigError,
            r"o\.tar\.gz: (not a readable|truncated or damaged) tar archive",
        ),
        (lambda p: _evil_zip(p / "evil.zip"), ConfigError, r"points outside the archive; refused"),
        (
            lambda p: _write(p / "flat" / "0001_01.png", b"x").parent,
            ConfigError,
            r"flat: no Omniglot drawings \(<Alphabet>/characterNN/\*\.png",
        ),
    ],
    ids=["missing", "plain-file", "broken-zip", "truncated-tar", "escaping-member", "flat-folder"],
)
def test_wrong_or_damaged_sources_are_one_line_errors(
    tmp_path: Path, make, error: type[Exception], message: str
) -> None:
    source = make(tmp_path)
    with pytest.raises(error, match=message) as caught:
        ensure_cache("omniglot", source, 8, cache_root=tmp_path / "c", progress=False)
    assert "\n" not in str(caught.value)
    assert not list((tmp_path / "c").glob("omniglot-*"))  # nothing that looks like a cache


def test_unreadable_drawing_names_its_member(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        for key in members("images_background"):
            archive.writestr(f"images_background/{key}", b"not a png")
    with pytest.raises(
        ConfigError,
        match=r"images_background\.zip:images_background/\w+/character\d+/\d+_\d+\.png: unread",
    ):
        prepare("omniglot", tmp_path / "c", root=tmp_path, progress=False)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for key, data in members("images_background").items():
            info = tarfile.TarInfo(f"images_background/{key}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _evil_zip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../Greek/character01/0001_01.png", b"x")
    return path
