"""Several processes (torch.distributed, gloo on CPU): two processes train and evaluate as
one does, resume across process counts, only rank 0 writes, and a failing rank ends the job.

One torchrun job (two processes) runs every command line of the success cases; the
single-process references run in this process with the same command lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from metaacdc.cli import main
from metaacdc.data import class_files_from_split, freeze
from metaacdc.data.loader import ShardedSampler
from metaacdc.data.sampler import task_seed
from metaacdc.errors import ConfigError
from metaacdc.runs.folder import RunFolder
from metaacdc.runtime import distributed
from metaacdc.runtime.distributed import World
from tests.conftest import REPO
from tests.tiny_runs import make_run, synthetic
from tests.torchrun_worker import FAILURE

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node")
MANIFEST_TASKS = 5  # odd: the two processes take 3 and 2 tasks


def torchrun_command(*args: str) -> list[str]:
    return [*TORCHRUN, "2", "-m", "tests.torchrun_worker", *args]


def torchrun_environment(**env: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **env}  # as in one_thread() below


def torchrun(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(*args),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=torchrun_environment(**env),
    )


def train_args(root: Path, name: str, *extra: str) -> list[str]:
    """`metaacdc train` of 3 meta-updates of 4 tasks on 16 px synthetic images, validated
    at the end on 3 tasks (odd: shared 2 + 1)."""
    config = root / "tiny.yaml"
    if not config.is_file():
        config.write_text(yaml.safe_dump({"synthetic_images_per_class": 10}))
    return [
        "train", "--config", str(config), "--out", str(root / name), "--backbone", "conv4",
        "--image-size", "16", "--meta-batch", "4", "--meta-updates", "3", "--val-every", "3",
        "--val-tasks", "3", "--inner-steps", "1", "--queries", "2", "--test-queries", "2",
        "--workers", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def eval_args(run: Path, manifest: Path) -> list[str]:
    return ["evaluate", str(run), "--episodes", str(manifest), "--device", "cpu", "--no-progress"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run as each of torchrun's processes does (OMP_NUM_THREADS=1); two threads also crawl
    when other jobs keep the CPU busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same command lines run by two processes (under torchrun) and by this one."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    manifest = freeze(class_files_from_split(synthetic("test")), 3, 1, 3, MANIFEST_TASKS, seed=0)
    manifest_path = manifest.save(two / "tiny-3w1s.json.gz")
    for root in (two, one):
        make_run(root / "untrained")
    with one_thread():  # started by one process, resumed by two
        assert main(train_args(two, "resumed", "--stop-after", "2")) == 0
    commands = {
        "plain": train_args(two, "plain"),
        "acdc": train_args(two, "acdc", "--acdc", "net"),
        "batched": train_args(two, "batched", "--acdc", "net", "--engine", "batched"),
        "resumed": train_args(two, "resumed", "--resume"),
        "halfway": train_args(two, "halfway", "--stop-after", "2"),
        "evaluate": eval_args(two / "untrained", manifest_path),
    }
    (two / "commands.json").write_text(json.dumps(list(commands.values())))
    job = torchrun("commands", str(two / "commands.json"), str(two / "report.json"))
    assert job.returncode == 0, job.stderr[-3000:]
    with one_thread():
        for argv in (
            train_args(one, "plain"),
            train_args(one, "acdc", "--acdc", "net"),
            train_args(one, "batched", "--acdc", "net", "--engine", "batched"),
        ):
            assert main(argv) == 0
        assert main(eval_args(one / "untrained", manifest_path)) == 0
        # started by two processes, finished by one
        assert main(train_args(two, "halfway", "--resume")) == 0
    report = dict(zip(commands, json.loads((two / "report.json").read_text())))
    return {"two": two, "one": one, "report": report, "stdout": job.stdout}


def parameters(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(RunFolder(run).last, weights_only=True)["model"]


def assert_same_model(left: Path, right: Path) -> None:
    """Bit-identical parameters: task gradients are added in meta-batch order whatever the
    number of processes (on CPU, with one thread per process on both sides). Float
    tolerance would not do: an all-reduce's other rounding drifts visibly within 3 updates."""
    a, b = parameters(left), parameters(right)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different


@pytest.mark.parametrize("name", ["plain", "acdc"])
def test_two_processes_train_as_one(jobs: dict, name: str) -> None:
    """2 processes x meta-batch 4 = 1 process x meta-batch 4 after 3 meta-updates; the ACDC
    run includes atom-drop, whose masks follow the task, not the process."""
    assert_same_model(jobs["two"] / name, jobs["one"] / name)
    outcome = jobs["report"][name]
    assert outcome["code"] == 0 and outcome["rank_difference"] == 0.0  # ranks stay identical
    two = pd.read_csv(RunFolder(jobs["two"] / name).metrics)
    one = pd.read_csv(RunFolder(jobs["one"] / name).metrics)
    assert list(two.step) == [3], "one metrics row: only rank 0 writes"
    columns = ["loss", "accuracy", "val_accuracy", "val_ci95"]  # over both processes' tasks
    assert two[columns].equals(one[columns])
    assert RunFolder(jobs["two"] / name).log.read_text().count("meta-update 3:") == 1


def test_two_processes_batch_their_shares_like_one_process(jobs: dict) -> None:
    """The batched engine under torchrun: each process batches its two tasks of the
    meta-batch of 4 (atom-drop masks from the task seeds); the shares' gradients are summed
    in rank order, so both ranks take the same step, and the run is the one-process run up
    to float rounding (one batch of 4 sums its losses in another order than two of 2)."""
    outcome = jobs["report"]["batched"]
    assert outcome["code"] == 0 and outcome["rank_difference"] == 0.0
    two = pd.read_csv(RunFolder(jobs["two"] / "batched").metrics)
    one = pd.read_csv(RunFolder(jobs["one"] / "batched").metrics)
    np.testing.assert_allclose(two[["loss", "accuracy"]], one[["loss", "accuracy"]], rtol=1e-5)
    assert yaml.safe_load(RunFolder(jobs["two"] / "batched").config.read_text())["engine"] == (
        "batched"
    )


@pytest.mark.parametrize("name", ["resumed", "halfway"])
def test_resume_with_another_number_of_processes(jobs: dict, name: str) -> None:
    """Two meta-updates by one process and the third by two (resumed), or the reverse
    (halfway): the run of one process."""
    assert_same_model(jobs["two"] / name, jobs["one"] / "plain")
    assert jobs["report"][name]["code"] == 0


def test_distributed_evaluation_equals_single_process(jobs: dict) -> None:
    name = f"test-tiny-3w1s-{MANIFEST_TASKS}tasks-10steps.csv"  # 5 steps, twice at test
    two = pd.read_csv(jobs["two"] / "untrained" / "eval" / name, dtype={"task": str})
    one = pd.read_csv(jobs["one"] / "untrained" / "eval" / name, dtype={"task": str})
    assert list(two.task) == [*map(str, range(MANIFEST_TASKS)), "mean", "ci95"]
    np.testing.assert_array_equal(two.accuracy.to_numpy(), one.accuracy.to_numpy())
    assert not list((jobs["two"] / "untrained" / "eval").glob("*.partial.*")), "journals left"
    assert jobs["stdout"].count("per-task accuracies:") == 1, "only rank 0 prints"
    assert jobs["stdout"].count("finished; best validation accuracy") == 4  # and 1 stopped


@pytest.fixture(scope="module")
def failing_jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """The exit code and stderr of the two failing jobs, run side by side: the stall job
    mostly waits for rank 0's timeout (raise: the default timeout, the gather fails as rank
    1's connection closes; stall: 8 s, long enough for both processes to start on a busy
    machine). A hang fails the tests at the 120 s limit of each, killing the job."""
    folder = tmp_path_factory.mktemp("failing")
    timeouts = {"raise": {}, "stall": {distributed.TIMEOUT_VARIABLE: "8"}}
    started = {}
    with contextlib.ExitStack() as stack:
        for mode, timeout in timeouts.items():
            stderr = stack.enter_context((folder / f"{mode}.err").open("w"))
            started[mode] = subprocess.Popen(
                torchrun_command(mode),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=REPO,
                env=torchrun_environment(**timeout),
            )
        try:
            codes = {mode: job.wait(timeout=120) for mode, job in started.items()}
        finally:
            for job in started.values():
                if job.poll() is None:
                    job.kill()
                    job.wait()
    return {mode: (code, (folder / f"{mode}.err").read_text()) for mode, code in codes.items()}


@pytest.mark.parametrize("mode", ["raise", "stall"])
def test_a_failing_rank_ends_the_job(failing_jobs: dict[str, tuple[int, str]], mode: str) -> None:
    """Rank 1 raises (rank 0's gather fails as its peer goes) or never comes to the gather
    (rank 0 gives up after the timeout): torchrun exits 1, the failing rank's error shown."""
    code, stderr = failing_jobs[mode]
    assert code == 1, stderr[-3000:]
    if mode == "raise":
        assert f"[rank1]: RuntimeError: {FAILURE}" in stderr
    else:  # rank 0 gave up after the 8 s set, not the default half hour
        assert re.search(r"\[rank0\]: .*imed out .*\b8000 ?ms", stderr), stderr[-3000:]


def test_shards_cover_every_task_once() -> None:
    for size in (1, 2, 3):
        shards = [World(rank, size).shard(7) for rank in range(size)]
        assert sorted(task for shard in shards for task in shard) == list(range(7))
    assert list(World(1, 2).shard(1)) == []


def test_sharded_sampler_keeps_global_episode_numbers() -> None:
    class Numbers:
        def episode(self, i: int) -> int:
            return i

    training = ShardedSampler(Numbers(), 4, [1, 3])  # type: ignore[arg-type]
    assert [training.episode(k) for k in range(6)] == [1, 3, 5, 7, 9, 11]
    evaluation = ShardedSampler(Numbers(), 3, [2])  # type: ignore[arg-type]
    assert [evaluation.episode(k) for k in range(3)] == [2, 5, 8]
    with pytest.raises(ConfigError, match="positions"):
        ShardedSampler(Numbers(), 2, [])  # type: ignore[arg-type]


def test_task_seeds_are_a_function_of_seed_and_index() -> None:
    for seed, index in [(0, 0), (0, 5), (7, 123_456)]:
        # the documented derivation, by numpy's spawn: the third child of the episode's
        # SeedSequence([seed, index]), whose first two children draw the episode
        episode = np.random.SeedSequence([seed, index]).spawn(3)
        expected = int(episode[2].generate_state(1, np.uint64)[0]) >> 1
        assert task_seed(seed, index) == expected
        drawing = int(episode[1].generate_state(1, np.uint64)[0]) >> 1  # the episode's torch
        assert task_seed(seed, index) != drawing
    seeds = {task_seed(0, i) for i in range(100)} | {task_seed(1, 0)}
    assert len(seeds) == 101
    assert all(0 <= s < 2**63 for s in seeds)  # torch.manual_seed's range


def test_one_process_creates_no_group() -> None:
    with distributed.join("cpu") as world:
        assert world == distributed.SINGLE and world.is_main and not world.distributed
        assert not torch.distributed.is_initialized()
    values = np.arange(3.0)
    assert distributed.gather_strided(values, 3, world) is values


def test_more_processes_than_tasks_per_meta_batch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(distributed, "current", lambda: World(0, 8))
    assert main(train_args(tmp_path, "run")) == 2
    assert "use at most 4 processes" in capsys.readouterr().err


def test_bad_timeout_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ConfigError, match="METAACDC_DIST_TIMEOUT='soon' is not valid"):
        distributed.timeout()
