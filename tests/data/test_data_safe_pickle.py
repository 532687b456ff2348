"""The restricted unpickler: plain data loads, anything else is refused in one line and
never runs, in every pickle layout a dataset source reads."""

from __future__ import annotations

import builtins
import os
import pickle
import re
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metaacdc.data import prepare
from metaacdc.data.sources import safe_pickle
from metaacdc.errors import ConfigError
from tests.data.benchmark_fakes import (
    tiered_pickles,
    write_cifar100_archive,
    write_cifar100_folder,
    write_tiered_pickles,
)
from tests.data.data_fakes import write_fake_miniimagenet


class System:
    """Pickles as ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class Exec:
    """Pickles as ``exec(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, (self.code,))


class Popen:
    """Pickles as ``subprocess.Popen(args)``."""

    def __init__(self, args: list[str]) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (self.args,))


def hostile_payloads(marker: Path) -> dict[str, Any]:
    """Objects whose unpickling would create ``marker``."""
    return {
        "os.system": System(f"touch {marker}"),
        "exec": Exec(f"open({str(marker)!r}, 'w').close()"),
        "subprocess": Popen(["touch", str(marker)]),
    }


REFUSED = r"refused to load: the pickle asks for [\w.]+\.(system|exec|Popen)\b"


def _assert_refused(error: pytest.ExceptionInfo[ConfigError], where: str, marker: Path) -> None:
    message = str(error.value)
    assert re.search(REFUSED, message), message
    assert where in message and "\n" not in message
    assert not marker.exists(), "the hostile pickle ran code"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_dataset_content_round_trips(protocol: int) -> None:
    content = {
        "image_data": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
        "labels": np.array([3, 1], dtype=np.int32),
        "scalar": np.int64(7),
        "names": ["a", b"b", ("c", 1.5, None, True)],
        "blobs": [np.frombuffer(b"\x89PNG", dtype=np.uint8).reshape(-1, 1)],
        "objects": np.array([b"x", "y"], dtype=object),
        "set": {1, 2},
        "frozen": frozenset({3}),
        "ordered": OrderedDict(a=1),
        "raw": bytearray(b"\x00\xff"),
        "complex": 1 + 2j,
    }
    loaded = safe_pickle.loads(pickle.dumps(content, protocol=protocol), "x.pkl")
    assert loaded.keys() == content.keys()
    for key, value in content.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(loaded[key], value) and loaded[key].dtype == value.dtype
        elif key == "blobs":
            assert loaded[key][0].tobytes() == b"\x89PNG"
        else:
            assert loaded[key] == value


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("payload", ["os.system", "exec", "subprocess"])
def test_hostile_pickle_is_refused_and_never_runs(
    tmp_path: Path, protocol: int, payload: str
) -> None:
    marker = tmp_path / "pwned"
    hostile = hostile_payloads(marker)[payload]
    # hidden deep inside otherwise plain data: refused wherever it is
    data = pickle.dumps({"image_data": np.zeros(3, np.uint8), "x": [1, {"y": hostile}]}, protocol)
    with pytest.raises(ConfigError) as error:
        safe_pickle.loads(data, "evil.pkl")
    _assert_refused(error, "evil.pkl", marker)


def test_numpy_globals_cannot_be_turned_into_code(tmp_path: Path) -> None:
    # an array "subtype" other than ndarray, and a codec other than latin-1
    subtype = (
        b"\x80\x02cnumpy._core.multiarray\n_reconstruct\nc__builtin__\ndict\nK\x00\x85C\x01b\x87R."
    )
    with pytest.raises(ConfigError, match=r"not a readable pickle.*not numpy\.ndarray"):
        safe_pickle.loads(subtype, "sub.pkl")
    codec = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x06\x00\x00\x00base64\x86R."
    with pytest.raises(ConfigError, match="'base64' is not allowed"):
        safe_pickle.loads(codec, "codec.pkl")
    with pytest.raises(ConfigError, match="persistent id"):
        safe_pickle.loads(b"\x80\x02X\x01\x00\x00\x00xQ.", "pid.pkl")
    with pytest.raises(ConfigError, match=r"junk\.pkl: not a readable pickle"):
        safe_pickle.loads(b"not a pickle at all", "junk.pkl")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pkl"):
        safe_pickle.load(tmp_path / "nothing.pkl")


def test_hostile_miniimagenet_pickle_is_refused(tmp_path: Path) -> None:
    root = write_fake_miniimagenet(tmp_path / "mini", "pickle")
    marker = tmp_path / "pwned"
    path = root / "mini-imagenet-cache-val.pkl"
    path.write_bytes(pickle.dumps({"image_data": hostile_payloads(marker)["os.system"]}))
    with pytest.raises(ConfigError) as error:
        prepare("miniimagenet", tmp_path / "cache", root=root, image_size=8, progress=False)
    _assert_refused(error, str(path), marker)
    assert not (tmp_path / "cache" / "val").exists()


@pytest.mark.parametrize("form", ["folder", "archive"])
@pytest.mark.parametrize("member", ["meta", "train", "test"])
def test_hostile_cifar100_pickle_is_refused(tmp_path: Path, form: str, member: str) -> None:
    marker = tmp_path / "pwned"
    evil = {member: pickle.dumps({"data": hostile_payloads(marker)["exec"]}, protocol=2)}
    if form == "folder":
        root = write_cifar100_folder(tmp_path / "cifar", evil)
    else:
        root = write_cifar100_archive(tmp_path / "cifar", evil)
    for source in ("cifar-fs", "fc100"):
        with pytest.raises(ConfigError) as error:
            prepare(source, tmp_path / source, root=root, progress=False)
        _assert_refused(error, member, marker)


@pytest.mark.parametrize("which", ["labels", "images"])
def test_hostile_tiered_pickle_is_refused(tmp_path: Path, which: str) -> None:
    marker = tmp_path / "pwned"
    images, labels = tiered_pickles("test")
    hostile = hostile_payloads(marker)["subprocess"]
    if which == "labels":
        labels["label_specific_str"] = [hostile]
        name, data = "test_labels.pkl", pickle.dumps(labels, protocol=2)
    else:
        name, data = "test_images_png.pkl", pickle.dumps([*images[:-1], hostile], protocol=2)
    root = write_tiered_pickles(tmp_path / "tiered", replace={name: data})
    with pytest.raises(ConfigError) as error:
        prepare("tieredimagenet", tmp_path / "cache", root=root, image_size=8, progress=False)
    _assert_refused(error, str(root / name), marker)
    assert not (tmp_path / "cache" / "test").exists()
