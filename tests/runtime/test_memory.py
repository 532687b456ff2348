"""The scoped allocator setting: applied on Linux, harmless elsewhere, never changes a number."""

from __future__ import annotations

import sys

import pytest
import torch

from metaacdc.runtime.memory import reuse_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_scope_applies_and_changes_no_number() -> None:
    torch.manual_seed(0)
    x = torch.randn(300, 1000)
    before = (x @ x.T).sum()
    with reuse_freed_memory() as applied:
        inside = (x @ x.T).sum()
    assert applied is True
    assert torch.equal(inside, before)
    assert torch.equal((x @ x.T).sum(), before)


def test_scope_is_a_no_op_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with reuse_freed_memory() as applied:
        assert applied is False
