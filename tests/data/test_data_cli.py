"""`metaacdc data prepare | info [--verify] | freeze`, including one-line errors with exit code
2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metaacdc.cli import main
from metaacdc.data import load_manifest, open_split, prepare


def test_prepare_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "data",
        "prepare",
        "--source",
        "synthetic",
        "--out",
        str(tmp_path),
        "--image-size",
        "10",
        "--images-per-class",
        "3",
        "--splits",
        "val",
        "test",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "val: written" in capsys.readouterr().out
    assert main(argv) == 0
    assert "test: kept" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "synthetic val" in out and "48 x 10x10x3 uint8" in out and "synthetic test" in out
    assert main(["data", "info", str(tmp_path / "test")]) == 0
    assert "60 x 10x10x3" in capsys.readouterr().out


def test_refusal_and_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [
        "data",
        "prepare",
        "--source",
        "synthetic",
        "--out",
        str(tmp_path),
        "--splits",
        "val",
        "--images-per-class",
        "2",
        "--no-progress",
    ]
    assert main([*base, "--image-size", "8"]) == 0
    capsys.readouterr()
    assert main([*base, "--image-size", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaacdc data: error:") and "--force" in err
    assert err.count("\n") == 1
    assert main([*base, "--image-size", "9", "--force"]) == 0
    assert open_split(tmp_path / "val").image_size == 9
    assert main([*base, "--rotations"]) == 2
    assert "--rotations applies to --source omniglot only" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "miniimagenet",
                "--out",
                str(tmp_path / "m"),
                "--root",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    assert "missing: miniImageNet folder not found" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2


def test_freeze_from_shipped_csv_and_from_cache(tmp_path: Path) -> None:
    out = tmp_path / "m.json.gz"
    assert main(["data", "freeze", "--shots", "1", "--tasks", "20", "--out", str(out)]) == 0
    manifest = load_manifest(out)
    assert len(manifest) == 20 and len(manifest.classes) == 20
    assert manifest.header["command"].startswith("metaacdc data freeze --split test")
    main(
        [
            "data",
            "prepare",
            "--source",
            "synthetic",
            "--out",
            str(tmp_path / "c"),
            "--image-size",
            "8",
            "--images-per-class",
            "3",
            "--splits",
            "val",
            "--no-progress",
        ]
    )
    assert (
        main(
            [
                "data",
                "freeze",
                "--cache",
                str(tmp_path / "c" / "val"),
                "--shots",
                "1",
                "--queries",
                "2",
                "--tasks",
                "4",
                "--out",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    assert load_manifest(tmp_path / "s.json").header["source"] == "synthetic val cache"


def test_info_verify_checks_every_split_and_refuses_a_changed_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    prepare("synthetic", cache, image_size=8, progress=False, images_per_class=2)
    assert main(["data", "info", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.count("checksums: matched when last checked, files unchanged since") == 3
    assert main(["data", "info", str(cache), "--verify"]) == 0
    assert capsys.readouterr().out.count("checksums: match (checked now)") == 3
    images = cache / "test" / "images.u8"
    images.write_bytes(bytes(255 - b for b in images.read_bytes()))  # same size, new bytes
    later = images.stat().st_mtime_ns + 1_000_000  # the kernel's file clock may not have ticked
    os.utime(images, ns=(later, later))
    assert main(["data", "info", str(cache / "test")]) == 0  # describing reads no pixels
    assert "checksums: not checked since the files last changed" in capsys.readouterr().out
    assert main(["data", "info", str(cache), "--verify"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"metaacdc data: error: {images}: changed or damaged since")
