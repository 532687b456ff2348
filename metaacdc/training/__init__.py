"""Meta-training: the MAML step, validation, and the resumable training loop."""

from metaacdc.training.state import TrainState
from metaacdc.training.step import StepStats, meta_train_step
from metaacdc.training.trainer import TrainingDivergedError, settings_for_resume, train

__all__ = [
    "StepStats",
    "TrainState",
    "TrainingDivergedError",
    "meta_train_step",
    "settings_for_resume",
    "train",
]
