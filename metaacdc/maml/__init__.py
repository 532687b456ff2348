"""MAML: the meta-learner and its task copies, adapting a trained learner to new tasks (the
evaluator's and the API's path), and the fused batch-norm double backward."""
