"""Raw sources on the command line: `metaacdc train --data <the downloaded zip>` trains and
records its cache; `metaacdc data prepare --protocol ...`, with and without --out; one-line
errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaacdc.cli import main
from metaacdc.data import open_split
from tests.data.omniglot_fakes import BOTH, EXPECTED, write_zip

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "--ways", "2", "--shots", "1", "--queries", "1", "--test-queries", "1",
    "--meta-batch", "1", "--meta-updates", "2", "--val-every", "2", "--val-tasks", "2",
    "--inner-steps", "1", "--workers", "0", "--device", "cpu",
]  # fmt: skip


def test_train_on_the_downloaded_small_zip(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAACDC_CACHE", str(tmp_path / "user-cache"))
    zipped = shared_dir / "data" / "omniglot" / "images_background_small1.zip"
    argv = ["train", "--dataset", "omniglot", "--data", str(zipped), *TINY]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    cache = Path(record["cache"])
    assert cache.parent == tmp_path / "user-cache" and record["data"] == str(zipped)
    train = open_split(cache / "train")
    assert record["splits"]["train"]["images_sha256"] == train.meta.images_sha256
    assert train.meta.preprocessing["protocol"] == "random"
    assert train.meta.preprocessing["inputs"] == ["images_background_small1"]
    stamp = (cache / "train" / "meta.json").stat().st_mtime_ns
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0  # reuses the cache
    assert json.loads((tmp_path / "again" / "data.json").read_text())["cache"] == str(cache)
    assert (cache / "train" / "meta.json").stat().st_mtime_ns == stamp


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    root = tmp_path / "downloads"
    for name in BOTH:
        write_zip(root / f"{name}.zip", (name,))
    return root


def test_prepare_a_protocol_into_the_user_cache(
    fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METAACDC_CACHE", str(tmp_path / "user-cache"))
    argv = ["data", "prepare", "--source", "omniglot", "--root", str(fake), "--no-progress"]
    assert main([*argv, "--protocol", "vinyals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cache = Path(lines[-1].split()[1])
    assert cache.parent == tmp_path / "user-cache"
    assert lines[0].endswith(f"({EXPECTED['vinyals']['train'] * 4 * 2} images, 36 classes, 28px)")
    meta = open_split(cache / "test").meta
    assert meta.preprocessing["protocol"] == "vinyals" and meta.num_images == 4 * 4 * 2
    assert main([*argv, "--protocol", "vinyals"]) == 0  # found again
    assert f"cache: {cache} " in capsys.readouterr().out
    out = tmp_path / "out"
    assert main([*argv, "--protocol", "background-evaluation", "--out", str(out)]) == 0
    assert open_split(out / "val").meta.preprocessing["protocol"] == "background-evaluation"
    assert "test: written" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--protocol", "vinyals", "--split-seed", "2"],
            "--split-seed applies to --protocol random",
        ),
        (["--splits", "val"], "--splits needs --out"),
        (["--force"], "--force needs --out"),
    ],
)
def test_prepare_mistakes_are_one_line_errors(
    fake: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "prepare", "--source", "omniglot", "--root", str(fake), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaacdc data: error:") and err.count("\n") == 1
    assert message in err


def test_protocol_belongs_to_omniglot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "prepare", "--source", "synthetic", "--out", str(tmp_path), "--protocol"]
    assert main([*argv, "vinyals"]) == 2
    assert "--protocol applies to --source omniglot only" in capsys.readouterr().err
    assert main(["data", "prepare", "--source", "synthetic"]) == 2  # no files to key a cache
    assert "--source synthetic needs --out" in capsys.readouterr().err


def test_train_on_a_wrong_source_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METAACDC_CACHE", str(tmp_path / "user-cache"))
    (tmp_path / "notes.txt").write_text("not a dataset")
    argv = ["train", "--dataset", "omniglot", "--data", str(tmp_path / "notes.txt"), *TINY]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaacdc train: error:") and err.count("\n") == 1
    assert "neither a folder nor an archive" in err
