"""Scoring adapted learners: the evaluator (mean ± 95% CI over frozen or seeded tasks), its
worker-process pool, the journal that makes an evaluation resumable, and evaluating a run
folder."""

from metaacdc.evaluation.evaluator import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
