"""One call from a configuration to a finished run folder."""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdistill.engine.setup import build_run
from kdistill.engine.trainer import Trainer, prepare_out_dir


def train_run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the run that `cfg` describes; returns its results, also in results.json."""
    out = Path(cfg.out)
    prepare_out_dir(out, cfg.resume)
    parts = build_run(cfg)
    cfg.optim.lr = parts.lr  # the saved config records the learning rate actually used
    return Trainer(cfg, parts.distiller, parts.loaders, parts.device, parts.lr, out).fit()
