"""`kdistill eval`: accuracy of a run folder's or a weight file's model on a data set's test split."""

import json
from pathlib import Path
from typing import Any

from kdistill.data import build_loaders
from kdistill.engine.setup import load_config, load_trained_model, resolve_device
from kdistill.errors import KdistillError
from kdistill.eval.accuracy import evaluate


def evaluate_target(target: str, overrides: list[str], which: str = "last") -> dict[str, Any]:
    """Evaluate a run folder (its config names model and data) or a .pth file (`student=`, `data.*` given)."""
    path = Path(target)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise KdistillError(f"'{target}' is not a run folder (no config.yaml): give a run folder or a .pth file")
        cfg = load_config(str(path / "config.yaml"), overrides)
        report_path = path / f"eval_{which}.json"
    elif path.is_file():
        cfg = load_config(None, overrides)
        report_path = path.with_name(path.name + ".eval.json")
    else:
        raise KdistillError(f"'{target}' does not exist: give a run folder or a .pth weight file")
    device = resolve_device(cfg.device)
    loaders = build_loaders(cfg.data, device, seed=cfg.seed)
    info = loaders.info
    model = load_trained_model(cfg.student, target, info.num_classes, info.in_chans, cfg.data.name, which).to(device)
    report = {"model": cfg.student, "dataset": cfg.data.name, "split": "test", "weights": str(path),
              **evaluate(model, loaders.test)}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "written_to": str(report_path)}
