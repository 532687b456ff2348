"""The adaptation API: load a trained run, turn your images into its inputs, adapt it to a
few labelled examples and classify new ones.

Typical use::

    import metaacdc
    learner = metaacdc.load("runs/conv4-5w1s")          # a run folder or a checkpoint file
    support_x = learner.preprocess(["cat1.jpg", "dog1.jpg"])   # (2, C, H, W)
    predicted = learner.predict(support_x, torch.tensor([0, 1]), learner.preprocess(queries))

Adaptation is the one the evaluator uses (:func:`metaacdc.maml.learner.adapt_task` on a
first-order, detached task copy): no second-order graph is built and nothing is written into
the loaded model, which can be adapted to any number of tasks in turn.
"""

from __future__ import annotations

from metaacdc.maml.adaptation import Learner
from metaacdc.runs.loading import load

__all__ = ["Learner", "load"]
