"""MAML on learn2learn: the meta-learner, task adaptation, the training step."""
