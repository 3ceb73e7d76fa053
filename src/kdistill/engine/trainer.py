"""The one training loop, for teachers and for every distillation method.

The Trainer knows nothing of a method: it calls `backward` on the total a Distiller returns,
logs each named term, and handles optimisation, evaluation, checkpoints and resume. The run
folder's files are read and written through `kdistill.run_folder.RunFolder`.
"""

import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from kdistill.accuracy import evaluate
from kdistill.data import Loaders
from kdistill.distributed import barrier, broadcast_buffers, is_distributed, is_main_process
from kdistill.engine.schedule import build_optimizer, build_scheduler
from kdistill.errors import KdistillError
from kdistill.methods import Distiller
from kdistill.run_folder import RunFolder


def prepare_out_dir(run: RunFolder, resume: bool) -> None:
    """Create the run folder; refuse to overwrite a run that is there unless resuming it."""
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        probe = run.path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise KdistillError(f"output folder '{run.path}' cannot be written ({error.strerror}): choose another out=<folder>") from None
    if not resume and (run.has_resume_state() or run.is_finished()):
        raise KdistillError(f"output folder '{run.path}' already holds a run: pass resume=true to continue it, "
                            "or choose another out=<folder>")
    run.remove_temporary_files()  # left by a save that a kill interrupted


@dataclass
class Phase:
    """A stretch of epochs with its own optimizer: a method's initialisation, then distillation."""

    name: str
    epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


class Trainer:
    def __init__(self, cfg: DictConfig, distiller: Distiller, loaders: Loaders, device: torch.device,
                 lr: float, run: RunFolder):
        self.cfg = cfg
        self.distiller = distiller
        self.loaders = loaders
        self.device = device
        self.run = run
        self.steps_per_epoch = len(loaders.train) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(loaders.train))
        if self.steps_per_epoch == 0:
            raise KdistillError(f"the training set has fewer samples than one batch ({cfg.data.batch_size}): "
                                "lower data.batch_size")
        self.phases = []
        init = distiller.init_phase()
        if init is not None and init.epochs > 0:
            optimizer = build_optimizer(init.parameters, cfg.optim, init.lr)
            self.phases.append(Phase("init", init.epochs, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)))
        optimizer = build_optimizer(distiller.train_parameters(), cfg.optim, lr)
        scheduler = build_scheduler(optimizer, cfg.schedule, self.steps_per_epoch, cfg.epochs, lr)
        self.phases.append(Phase("train", cfg.epochs, optimizer, scheduler))
        self.model = self._data_parallel(distiller, device, find_unused=init is not None)
        self.is_main = is_main_process()
        self.amp = bool(cfg.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.start_epoch = 0  # counted over all phases
        self.best = {"top1": -1.0, "top5": -1.0, "epoch": -1}
        self.writer = self._tensorboard_writer() if cfg.tensorboard and self.is_main else None

    @staticmethod
    def _data_parallel(distiller: Distiller, device: torch.device, find_unused: bool) -> torch.nn.Module:
        """DistributedDataParallel under torchrun, else the distiller itself.

        Buffers are not broadcast each step: memory banks are kept identical by the methods, and
        batch-norm statistics stay per rank (rank 0's are saved), as usual with DDP. Methods with
        an initialisation phase leave its parts unused during distillation (`find_unused`)."""
        if not is_distributed():
            return distiller
        return DistributedDataParallel(distiller, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=find_unused)

    def _tensorboard_writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run.tensorboard_dir))

    # ---- checkpoint / resume -------------------------------------------------------------
    def _state(self, global_epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": global_epoch,
            "metrics": metrics,  # this epoch's log line, restored if a kill lost it after the save
            "method": self.distiller.trainable_state_dict(),
            "phases": {phase.name: {"optimizer": phase.optimizer.state_dict(), "scheduler": phase.scheduler.state_dict()}
                       for phase in self.phases},
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def resume(self) -> None:
        loaded = self.run.load_resume_state(self.device)
        if loaded is None:
            return
        state, _ = loaded
        self.distiller.load_trainable_state_dict(state["method"])
        for phase in self.phases:
            phase.optimizer.load_state_dict(state["phases"][phase.name]["optimizer"])
            phase.scheduler.load_state_dict(state["phases"][phase.name]["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best = state["best"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.start_epoch = state["epoch"] + 1
        if self.is_main:
            # The log holds exactly the epochs this state covers: later lines (killed before
            # their save) go, and the state's own epoch line comes back if a kill lost it.
            self.run.trim_metrics(self.start_epoch)
            if not any(entry.get("global_epoch") == self.start_epoch for entry in self.run.read_metrics()):
                self.run.append_metrics(state["metrics"])

    # ---- the loop ------------------------------------------------------------------------
    def train_epoch(self, phase: Phase, epoch: int, global_epoch: int) -> dict[str, float]:
        self.distiller.set_phase(phase.name)
        if phase.name == "init":
            self.distiller.init_mode()
        else:
            self.distiller.train()
            self.distiller.on_epoch_start(epoch + 1, phase.epochs)
        loader = self.loaders.train
        loader.set_epoch(global_epoch)
        sums: dict[str, torch.Tensor] = {}
        correct = seen = labelled = 0
        start = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, desc=f"{phase.name} epoch {epoch + 1}/{phase.epochs}", leave=False,
                   disable=not (self.cfg.progress and self.is_main), mininterval=1.0, dynamic_ncols=True)
        for step, batch in enumerate(loader):
            if step == self.steps_per_epoch:
                break
            if self.cfg.channels_last:  # every view of the batch ("image", "image_strong")
                batch = {key: value.contiguous(memory_format=torch.channels_last) if key.startswith("image") else value
                         for key, value in batch.items()}
            with torch.autocast(self.device.type, enabled=self.amp):
                output = self.model(batch)
            logits, loss, logged = output.logits, output.total, {**output.terms, **output.extras}
            phase.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(phase.optimizer)
            self.scaler.update()
            phase.scheduler.step()
            # Sums stay on the device: no host synchronisation inside the step.
            for name, value in {**logged, "loss": loss}.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
            seen += batch["image"].shape[0]
            if logits is not None and "label" in batch:
                correct += logits.detach().argmax(1).eq(batch["label"]).sum()
                labelled += batch["label"].numel()
            bar.update(1)
            if bar.n % 20 == 0 and not bar.disable:
                bar.set_postfix({name: f"{float(value) / (step + 1):.3f}" for name, value in sums.items()}
                                | {"img/s": f"{seen / (time.perf_counter() - start):.0f}"})
        bar.close()
        elapsed = time.perf_counter() - start
        metrics = {f"train/{name}": float(value) / self.steps_per_epoch for name, value in sums.items()}
        if labelled:
            metrics["train/top1"] = 100.0 * float(correct) / labelled
        metrics["img_per_s"] = seen / elapsed
        metrics["epoch_time_s"] = elapsed
        return metrics

    def fit(self) -> dict[str, Any]:
        if self.cfg.resume:
            self.resume()
        if self.is_main:
            self.run.write_config(OmegaConf.to_yaml(self.cfg))
        student = self.distiller.student
        run_start = time.perf_counter()
        global_epoch = 0
        for phase in self.phases:
            for epoch in range(phase.epochs):
                if global_epoch >= self.start_epoch:
                    self._run_epoch(phase, epoch, global_epoch, student)
                global_epoch += 1
        return self._finish(time.perf_counter() - run_start)

    def _run_epoch(self, phase: Phase, epoch: int, global_epoch: int, student) -> None:
        metrics = {"phase": phase.name, "epoch": epoch + 1, "global_epoch": global_epoch + 1,
                   "lr": phase.optimizer.param_groups[0]["lr"], **self.train_epoch(phase, epoch, global_epoch)}
        broadcast_buffers(student)
        for split in ("test", "val"):
            loader = getattr(self.loaders, split)
            if loader is not None:
                for name, value in evaluate(student, loader, amp=self.amp).items():
                    metrics[f"{split}/{name}"] = value
        improved = phase.name == "train" and metrics.get("test/top1", -1.0) > self.best["top1"]
        if improved:
            self.best = {"top1": metrics["test/top1"], "top5": metrics["test/top5"], "epoch": epoch + 1}
        if not self.is_main:
            return
        if phase.name == "train":
            accuracy = metrics.get("test/top1")
            if improved:
                self.run.save_weights(student, "best", epoch=epoch + 1, accuracy=accuracy)
            self.run.save_weights(student, "last", epoch=epoch + 1, accuracy=accuracy)
        # The resume state first, then the log line: a kill between them loses no epoch (resume restores the line).
        self.run.save_resume_state(self._state(global_epoch, metrics))
        self._log(metrics)

    def _log(self, metrics: dict[str, Any]) -> None:
        self.run.append_metrics(metrics)
        if self.writer is not None:
            for name, value in metrics.items():
                if name not in ("phase", "epoch", "global_epoch"):
                    self.writer.add_scalar(f"{metrics['phase']}/{name}", value, metrics["global_epoch"])
            self.writer.flush()
        if self.cfg.progress:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train/loss", "test/top", "val/top")))
            tqdm.write(f"{metrics['phase']} epoch {metrics['epoch']} {shown} ({metrics['img_per_s']:.0f} img/s)")

    def _finish(self, wall_time: float) -> dict[str, Any]:
        barrier()  # rank 0's last epoch is on disk before anyone reads it
        history = self.run.read_metrics()
        trained = [entry for entry in history if entry["phase"] == "train"]
        last = trained[-1]
        results = {
            "student": self.cfg.student, "teacher": self.cfg.teacher, "method": self.cfg.method["name"],
            "dataset": self.cfg.data.name, "seed": self.cfg.seed, "epochs": self.cfg.epochs,
            "top1_last": last.get("test/top1"), "top5_last": last.get("test/top5"),
            "top1_best": self.best["top1"], "top5_best": self.best["top5"], "best_epoch": self.best["epoch"],
            "train_time_s": sum(entry["epoch_time_s"] for entry in history),
            "wall_time_s": wall_time,
            "student_params": sum(p.numel() for p in self.distiller.student.parameters()),
        }
        if self.is_main:
            self.run.write_results(results)
        if self.writer is not None:
            self.writer.close()
        return results
