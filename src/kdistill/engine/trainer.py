"""The one training loop, for teachers and for every distillation method.

The Trainer knows nothing of a method: it weights and sums the named loss terms a Distiller
returns, logs each one, and handles optimisation, evaluation, checkpoints and resume.
"""

import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from kdistill.data import Loaders
from kdistill.engine.checkpoint import atomic_save, save_model_weights
from kdistill.engine.schedule import build_optimizer, build_scheduler
from kdistill.errors import KdistillError
from kdistill.eval.accuracy import evaluate
from kdistill.methods import Distiller

RESUME_FILE = "checkpoint.pt"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"


def prepare_out_dir(out: Path, resume: bool) -> None:
    """Create the run folder; refuse to overwrite a run that is there unless resuming it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise KdistillError(f"output folder '{out}' cannot be written ({error.strerror}): choose another out=<folder>") from None
    if not resume and ((out / RESUME_FILE).exists() or (out / RESULTS_FILE).exists()):
        raise KdistillError(f"output folder '{out}' already holds a run: pass resume=true to continue it, "
                            "or choose another out=<folder>")


class Trainer:
    def __init__(self, cfg: DictConfig, distiller: Distiller, loaders: Loaders, device: torch.device,
                 lr: float, out: Path):
        self.cfg = cfg
        self.distiller = distiller
        self.loaders = loaders
        self.device = device
        self.out = out
        self.steps_per_epoch = len(loaders.train) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(loaders.train))
        if self.steps_per_epoch == 0:
            raise KdistillError(f"the training set has fewer samples than one batch ({cfg.data.batch_size}): "
                                "lower data.batch_size")
        params = [p for p in distiller.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg.optim, lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch, cfg.epochs, lr)
        self.amp = bool(cfg.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.start_epoch = 0
        self.best = {"top1": -1.0, "epoch": -1}
        self.writer = self._tensorboard_writer() if cfg.tensorboard else None

    def _tensorboard_writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    # ---- checkpoint / resume -------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "method": self.distiller.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def resume(self) -> None:
        path = self.out / RESUME_FILE
        if not path.exists():
            return
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.distiller.load_trainable_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best = state["best"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.start_epoch = state["epoch"] + 1
        # Drop log lines of an epoch that ran after this checkpoint (killed before its save).
        metrics_path = self.out / METRICS_FILE
        if metrics_path.exists():
            kept = [line for line in metrics_path.read_text().splitlines()
                    if json.loads(line)["epoch"] <= self.start_epoch]
            metrics_path.write_text("".join(line + "\n" for line in kept))

    # ---- the loop ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.distiller.train()
        loader = self.loaders.train
        loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        correct = seen = 0
        start = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not self.cfg.progress, mininterval=1.0, dynamic_ncols=True)
        for step, batch in enumerate(loader):
            if step == self.steps_per_epoch:
                break
            if self.cfg.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, enabled=self.amp):
                output = self.distiller(batch)
            terms = {name: value.float() for name, value in output.losses.items()}
            loss = sum(self.distiller.loss_weight(name) * value for name, value in terms.items())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            # Sums stay on the device: no host synchronisation inside the step.
            for name, value in {**terms, "loss": loss}.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
            labels = batch["label"]
            correct += output.logits.detach().argmax(1).eq(labels).sum()
            seen += labels.numel()
            bar.update(1)
            if bar.n % 20 == 0 and self.cfg.progress:
                bar.set_postfix({name: f"{float(value) / (step + 1):.3f}" for name, value in sums.items()}
                                | {"img/s": f"{seen / (time.perf_counter() - start):.0f}"})
        bar.close()
        elapsed = time.perf_counter() - start
        steps = self.steps_per_epoch
        metrics = {f"train/{name}": float(value) / steps for name, value in sums.items()}
        metrics["train/top1"] = 100.0 * float(correct) / max(seen, 1)
        metrics["img_per_s"] = seen / elapsed
        metrics["epoch_time_s"] = elapsed
        return metrics

    def fit(self) -> dict[str, Any]:
        if self.cfg.resume:
            self.resume()
        OmegaConf.save(self.cfg, self.out / "config.yaml")
        student = self.distiller.student
        run_start = time.perf_counter()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            metrics = {"epoch": epoch + 1, "lr": lr, **self.train_epoch(epoch)}
            for split in ("test", "val"):
                loader = getattr(self.loaders, split)
                if loader is not None:
                    for name, value in evaluate(student, loader, amp=self.amp).items():
                        metrics[f"{split}/{name}"] = value
            self._log(metrics)
            if metrics["test/top1"] > self.best["top1"]:
                self.best = {"top1": metrics["test/top1"], "top5": metrics["test/top5"], "epoch": epoch + 1}
                save_model_weights(student, self.out / "student_best.pth", epoch=epoch + 1, accuracy=self.best["top1"])
            save_model_weights(student, self.out / "student_last.pth", epoch=epoch + 1, accuracy=metrics["test/top1"])
            atomic_save(self._state(epoch), self.out / RESUME_FILE)
        return self._finish(time.perf_counter() - run_start)

    def _log(self, metrics: dict[str, float]) -> None:
        with open(self.out / METRICS_FILE, "a") as file:
            file.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                if name != "epoch":
                    self.writer.add_scalar(name, value, metrics["epoch"])
            self.writer.flush()
        if self.cfg.progress:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train/loss", "test/top", "val/top")))
            tqdm.write(f"epoch {metrics['epoch']}/{self.cfg.epochs} {shown} ({metrics['img_per_s']:.0f} img/s)")

    def _finish(self, train_time: float) -> dict[str, Any]:
        history = [json.loads(line) for line in (self.out / METRICS_FILE).read_text().splitlines()]
        last = history[-1]
        results = {
            "student": self.cfg.student, "teacher": self.cfg.teacher, "method": self.cfg.method["name"],
            "dataset": self.cfg.data.name, "seed": self.cfg.seed, "epochs": self.cfg.epochs,
            "top1_last": last["test/top1"], "top5_last": last["test/top5"],
            "top1_best": self.best["top1"], "top5_best": self.best["top5"], "best_epoch": self.best["epoch"],
            "train_time_s": sum(entry["epoch_time_s"] for entry in history),
            "wall_time_s": train_time,
            "student_params": sum(p.numel() for p in self.distiller.student.parameters()),
        }
        (self.out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        if self.writer is not None:
            self.writer.close()
        return results
