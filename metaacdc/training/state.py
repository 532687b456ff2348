"""Where a training run stands between meta-updates: what its checkpoints record beside the
weights and the optimizer, so a resumed run continues exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TrainState:
    """Where a run stands, as its checkpoints record it beside the weights and optimizer.

    ``owed``: the metrics of meta-update ``step`` (training loss, accuracy, tasks/s, elapsed
    s) while its validation has not run; a session interrupted then runs it first on resume.
    """

    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    owed: list[float] | None = None

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> TrainState:
        """The state a checkpoint (:func:`~metaacdc.runs.folder.checkpoint_payload`) holds."""
        return cls(
            payload["step"],
            payload["best_val"],
            payload["best_step"],
            payload.get("owed_validation"),
        )
