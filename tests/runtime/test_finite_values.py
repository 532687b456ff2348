"""The finite-value checks (metaacdc.runtime.finite): what they name, and that integers and
finite values pass."""

from __future__ import annotations

import pytest
import torch

from metaacdc.errors import NonFiniteError
from metaacdc.runtime.finite import all_finite, first_non_finite, require_finite


def test_require_finite_counts_and_names() -> None:
    require_finite("labels", torch.tensor([1, 2, 3]))  # integers are always finite
    require_finite("weights", torch.ones(3))
    values = torch.tensor([[0.0, float("nan")], [float("-inf"), 1.0]])
    with pytest.raises(NonFiniteError, match=r"^weights holds 2 non-finite value\(s\) .* of 4$"):
        require_finite("weights", values)


def test_all_finite_skips_integers_and_empty_tensors() -> None:
    assert all_finite([])
    assert all_finite([torch.ones(2), torch.zeros(0), torch.tensor([7])])
    assert not all_finite([torch.ones(2), torch.tensor([1.0, float("inf")])])


def test_first_non_finite_names_the_first_value_as_python_indexes_it() -> None:
    state = {
        "model": {"a": torch.ones(2), "b": torch.tensor([float("nan")]), "c": torch.tensor([1])},
        "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}},
        "data": {"mean": [0.5, float("nan")], "source": "synthetic"},
    }
    assert first_non_finite(state["model"], "model") == "model['b']"
    assert first_non_finite(state["optimizer"], "optimizer") == "optimizer['state'][0]['exp_avg']"
    assert first_non_finite(state["data"], "data") == "data['mean'][1]"
    assert first_non_finite({"a": torch.ones(2), "n": 3, "s": "x"}, "fine") is None
    assert first_non_finite(None, "absent") is None
