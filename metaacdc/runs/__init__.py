"""Run folders and what they hold: the folder layout, checkpoints, locks, building a run's
model and data from its config, and loading a trained learner back."""
