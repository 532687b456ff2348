import pytest
import torch

from metaacdc.runtime.device import describe_device


@pytest.mark.parametrize(("threads", "words"), [(1, "1 thread,"), (2, "2 threads,")])
def test_a_cpu_is_described_by_its_kernels_threads_and_torch(threads: int, words: str) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        text = describe_device(torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    capability = torch.backends.cpu.get_cpu_capability()
    assert text == f"cpu ({capability} kernels, {words} torch {torch.__version__})"
