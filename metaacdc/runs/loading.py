"""Rebuilding a trained learner from a run folder or a checkpoint file."""

from __future__ import annotations

from pathlib import Path

import torch

from metaacdc.config import TrainConfig, resolve
from metaacdc.data.facts import DataFacts
from metaacdc.errors import ConfigError
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.experiment import build_model
from metaacdc.runs.folder import RunFolder, check_config_unedited, read_checkpoint
from metaacdc.runtime.device import resolve_device


def load(run_or_checkpoint: str | Path, device: str | torch.device | None = None) -> Learner:
    """Load a trained run for adaptation.

    Args:
        run_or_checkpoint: a run folder (its ``checkpoints/best.pt``, else ``last.pt``) or
            a checkpoint file.
        device: ``None``/``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...

    Returns:
        A :class:`Learner` in eval mode.

    Raises:
        FileNotFoundError: no such folder or file, or a run folder without checkpoints.
        ConfigError: not a metaacdc checkpoint, or one this version cannot rebuild
            (malformed config or data facts, weights that do not fit), or a run folder
            whose ``config.yaml`` was edited after its checkpoints were saved, in one line
            naming the file.
    """
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: run folder or checkpoint not found")
    target = resolve_device(device)
    payload = read_checkpoint(path, map_location="cpu")
    if path.is_dir():  # its config.yaml must still be the one the weights were trained with
        check_config_unedited(RunFolder(path), payload)
    config_values = payload["config"]
    if not isinstance(config_values, dict):
        raise ConfigError(f"{path}: incompatible checkpoint (config is not a mapping)")
    try:
        data = DataFacts.from_dict(payload["data"])
        config = resolve(TrainConfig.from_dict(config_values, source="checkpoint config"))
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"{path}: incompatible checkpoint ({error})") from error
    if config.image_size != data.image_size:
        raise ConfigError(
            f"{path}: incompatible checkpoint (config image_size {config.image_size} but "
            f"data image_size {data.image_size})"
        )
    assert config.first_order is not None
    model = build_model(config, data.channels)
    meta = MetaLearner(model, config.inner_lr, config.first_order, config.adapt, config.meta_sgd)
    try:
        meta.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{path}: incompatible checkpoint (its weights do not fit the model its config "
            f"describes: {first})"
        ) from error
    return Learner(meta.eval(), config, data, target)
