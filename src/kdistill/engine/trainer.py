"""The one training loop, for teachers and for every distillation method.

The Trainer knows nothing of a method: it calls `backward` on the total a Distiller returns,
logs each named term, and handles optimisation, evaluation, checkpoints and resume. The run
folder's files are read and written through `kdistill.run_folder.RunFolder`.

What a run survives: a kill at any instant (resume continues from the last saved state, also
within an epoch with `checkpoint_every_steps`, with the same weights as an unbroken run);
SIGINT/SIGTERM (the step is abandoned, saves in progress finish, and one line says what can be
resumed); a non-finite loss (the run stops before anything computed from it is saved, or skips
the step with `nonfinite=skip`).
"""

import dataclasses
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from kdistill.accuracy import evaluate
from kdistill.config import NonFinite, RunConfig
from kdistill.data import Loaders
from kdistill.data.batch import channels_last_views
from kdistill.distributed import barrier, broadcast_buffers, is_distributed, is_main_process
from kdistill.engine.schedule import build_optimizer, build_scheduler
from kdistill.engine.stops import NonFiniteWatch, Signalled, StopSignals
from kdistill.engine.teacher_cache import TeacherCache
from kdistill.errors import KdistillError, RunStopped
from kdistill.methods import Distiller
from kdistill.precision import autocast, autocast_dtype, grad_scaler
from kdistill.run_folder import EVALUATED_SPLITS, EpochRecord, RunFolder, RunResults

EXIT_NONFINITE = 3
BAR_REFRESH_STEPS = 20  # steps between progress-bar postfix updates (each reads the sums: a host sync)
# Reading whether a step's loss was finite is a host synchronisation. On the CPU it costs
# nothing, so every step is checked before its optimizer step (the weights never see a
# non-finite loss). On an asynchronous device (CUDA) a read per step would stall the queue, so
# the flags are kept on the device and read once per window of this many steps (as often as
# the progress bar syncs), and always before anything is saved: a non-finite step stops the
# run before any weight or checkpoint computed after it reaches the disk. `nonfinite=skip`
# decides before each optimizer step, so it reads every step.
NONFINITE_CHECK_WINDOW = BAR_REFRESH_STEPS


@dataclass
class Phase:
    """A stretch of epochs with its own optimizer: a method's initialisation, then distillation."""

    name: str
    epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class EpochTally:
    """What an epoch has counted so far; sums stay on the device (no host sync per step). A
    resume state saved within an epoch holds it, so the resumed epoch logs what an unbroken
    one would."""

    lr: float  # at the epoch's start
    steps: int = 0  # done, skipped ones included
    skipped: int = 0  # steps with a non-finite loss skipped (nonfinite=skip)
    sums: dict[str, Tensor] = field(default_factory=dict)
    correct: Tensor | int = 0
    seen: int = 0
    labelled: int = 0
    seconds: float = 0.0  # training time


class Trainer:
    def __init__(self, cfg: RunConfig, distiller: Distiller, loaders: Loaders, device: torch.device,
                 lr: float, run: RunFolder, teacher_cache: TeacherCache | None = None):
        self.cfg = cfg
        self.teacher_cache = teacher_cache
        self.distiller = distiller
        self.loaders = loaders
        self.device = device
        self.run = run
        batches = len(loaders.train)
        self.steps_per_epoch = batches if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, batches)
        if self.steps_per_epoch == 0:
            raise KdistillError(f"the training set has fewer samples than one batch ({cfg.data.batch_size}): "
                                "lower data.batch_size")
        self.phases = []
        init = distiller.init_phase()
        if init is not None and init.epochs > 0:
            optimizer = build_optimizer(init.parameters, cfg.optim, init.lr, owner=distiller)
            constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
            self.phases.append(Phase("init", init.epochs, optimizer, constant))
        optimizer = build_optimizer(distiller.train_parameters(), cfg.optim, lr, owner=distiller)
        scheduler = build_scheduler(optimizer, cfg.schedule, self.steps_per_epoch, cfg.epochs, lr)
        self.phases.append(Phase("train", cfg.epochs, optimizer, scheduler))
        if cfg.checkpoint_every_steps < 0:
            raise KdistillError(f"checkpoint_every_steps={cfg.checkpoint_every_steps} is negative: "
                                "use 0 (at epoch ends only) or a number of steps")
        self.check_window = 1 if device.type == "cpu" or cfg.nonfinite is NonFinite.skip else NONFINITE_CHECK_WINDOW
        self.model = self._data_parallel(distiller, device, find_unused=init is not None)
        self.is_main = is_main_process()
        self.autocast_dtype = autocast_dtype(cfg.precision, device)
        self.scaler = grad_scaler(device, self.autocast_dtype)
        self.start_epoch = 0  # counted over all phases
        self.start_tally: dict[str, Any] | None = None  # of start_epoch, when resuming within it
        self.last_metrics: EpochRecord | None = None  # the last finished epoch's log line
        self.resumable: str | None = None  # what the newest saved resume state continues from
        self.signals = StopSignals()
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
    def _state(self, finished_epochs: int, tally: EpochTally | None = None) -> dict[str, Any]:
        """A resume state after `finished_epochs` epochs (over all phases), and `tally.steps` steps
        into the next one when a tally is given."""
        return {
            "epoch": finished_epochs - 1,  # the last finished epoch (from 0)
            # its log line, restored if a kill lost it after the save
            "metrics": None if self.last_metrics is None else self.last_metrics.to_line(),
            "tally": None if tally is None else vars(tally),
            "method": self.distiller.trainable_state_dict(),
            "phases": {phase.name: {"optimizer": phase.optimizer.state_dict(),
                                    "scheduler": phase.scheduler.state_dict()} for phase in self.phases},
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def _save_state(self, finished_epochs: int, tally: EpochTally | None = None) -> None:
        self.run.save_resume_state(self._state(finished_epochs, tally))
        self.resumable = self._position(finished_epochs, None if tally is None else tally.steps)

    def _position(self, finished_epochs: int, steps: int | None) -> str:
        """Where a state continues from, in the words of the progress bar."""
        if steps is None:
            return f"the end of {self._epoch_name(finished_epochs - 1)}"
        return f"{self._epoch_name(finished_epochs)} step {steps}"

    def _epoch_name(self, global_epoch: int) -> str:
        for phase in self.phases:
            if global_epoch < phase.epochs:
                break
            global_epoch -= phase.epochs
        return f"{phase.name} epoch {global_epoch + 1}"

    def resume(self) -> bool:
        """Load the newest resume state, if any; False when the folder has none."""
        state = self.run.load_resume_state(self.device)
        if state is None:
            return False
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
        self.start_tally = state.get("tally")
        self.last_metrics = None if state["metrics"] is None else EpochRecord.from_line(state["metrics"])
        steps = None if self.start_tally is None else self.start_tally["steps"]
        self.resumable = self._position(self.start_epoch, steps)
        if self.is_main:
            # The log holds exactly the epochs this state covers: later lines (killed before
            # their save) go, and the last finished epoch's line comes back if a kill lost it.
            self.run.trim_metrics(self.start_epoch)
            lost = not any(record.global_epoch == self.start_epoch for record in self.run.read_metrics())
            if self.last_metrics is not None and lost:
                self.run.append_metrics(self.last_metrics)
        return True

    def _refuse_non_finite_teacher(self) -> None:
        """A teacher whose outputs on the first batch are not finite (NaN/inf weights) would
        turn every step's loss non-finite: refuse it before training."""
        teacher = self.distiller.teacher
        if teacher is None:
            return
        batch = next(iter(self.loaders.test))
        with autocast(self.device, self.autocast_dtype):
            features = self.distiller.teacher_features(batch["image"])
        if not (torch.isfinite(features.pooled).all() and torch.isfinite(features.logits).all()):
            raise KdistillError(f"teacher '{self.cfg.teacher}' from '{self.cfg.teacher_checkpoint}' gives non-finite "
                                "outputs on the first batch (its weights hold NaN or inf): "
                                "give a trained teacher's weights")

    # ---- the loop ------------------------------------------------------------------------
    def train_epoch(self, phase: Phase, epoch: int, global_epoch: int, tally: EpochTally) -> EpochRecord:
        """Train the rest of an epoch (`tally.steps` are done) and return its record (not yet evaluated)."""
        self.distiller.set_phase(phase.name)
        if phase.name == "init":
            self.distiller.init_mode()
        else:
            self.distiller.train()
            self.distiller.on_epoch_start(epoch + 1, phase.epochs)
            if self.teacher_cache is not None:  # filled here if this epoch is new
                with self.run.writing_elsewhere():
                    self.teacher_cache.prepare_epoch(global_epoch, range(tally.steps, self.steps_per_epoch))
        loader = self.loaders.train
        loader.set_epoch(global_epoch, skip_batches=tally.steps)
        watch = NonFiniteWatch()
        every = self.cfg.checkpoint_every_steps
        resumed_at = fetch_start = time.perf_counter()
        started = resumed_at - tally.seconds
        data_wait = 0.0  # time this process's steps waited for the loader's next batch
        bar = tqdm(total=self.steps_per_epoch, initial=tally.steps,
                   desc=f"{self.run.path}: {phase.name} epoch {epoch + 1}/{phase.epochs}", leave=False,
                   disable=not (self.cfg.progress and self.is_main), mininterval=1.0, dynamic_ncols=True)
        for step, batch in enumerate(loader, start=tally.steps):
            if step == self.steps_per_epoch:
                break
            data_wait += time.perf_counter() - fetch_start
            if self.cfg.channels_last:
                batch = channels_last_views(batch)
            with autocast(self.device, self.autocast_dtype):
                output = self.model(batch)
            logits, loss, logged = output.logits, output.total, {**output.terms, **output.extras}
            phase.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            watch.add(step, loss, output.terms)
            last_step = step + 1 == self.steps_per_epoch
            save_due = bool(every) and (step + 1) % every == 0 and not last_step
            skip = False
            if (step + 1) % self.check_window == 0 or save_due or last_step:
                non_finite = watch.first_non_finite()
                if non_finite is not None and self.cfg.nonfinite is NonFinite.stop:
                    raise self._non_finite_stop(phase, epoch, *non_finite)
                skip = non_finite is not None  # in skip mode the window is this one step
            if skip:
                tally.skipped += 1
            else:
                self.scaler.step(phase.optimizer)
                self.scaler.update()
                # Sums stay on the device: no host synchronisation inside the step.
                for name, value in {**logged, "loss": loss}.items():
                    tally.sums[name] = tally.sums.get(name, 0.0) + value.detach()
                if logits is not None and "label" in batch:
                    tally.correct += logits.detach().argmax(1).eq(batch["label"]).sum()
                    tally.labelled += batch["label"].numel()
            phase.scheduler.step()  # also after a skipped step: the schedule follows the step count
            tally.seen += batch["image"].shape[0]
            tally.steps = step + 1
            bar.update(1)
            # Host-device syncs: this refresh and the non-finite check once per window (check_window).
            if bar.n % BAR_REFRESH_STEPS == 0 and not bar.disable:
                counted = max(tally.steps - tally.skipped, 1)
                bar.set_postfix({name: f"{float(value) / counted:.3f}" for name, value in tally.sums.items()}
                                | {"img/s": f"{tally.seen / (time.perf_counter() - started):.0f}"})
            if save_due and self.is_main:
                tally.seconds = time.perf_counter() - started
                with self.signals.deferred():
                    self._save_state(global_epoch, tally)
            fetch_start = time.perf_counter()
        bar.close()
        elapsed = time.perf_counter() - started
        counted = max(tally.steps - tally.skipped, 1)
        train = {name: float(value) / counted for name, value in tally.sums.items()}
        if tally.labelled:
            train["top1"] = 100.0 * float(tally.correct) / tally.labelled
        # The data-wait fraction is this process's part of the epoch.
        return EpochRecord(phase.name, epoch + 1, global_epoch + 1, tally.lr, train, {}, tally.seen / elapsed,
                           elapsed, data_wait / max(time.perf_counter() - resumed_at, 1e-9), self.cfg.precision.value,
                           tally.skipped if self.cfg.nonfinite is NonFinite.skip else None)

    def _non_finite_stop(self, phase: Phase, epoch: int, step: int, terms: list[str]) -> RunStopped:
        which = f"term {', '.join(terms)}" if terms else "the weighted sum of finite terms"
        if self.resumable:
            kept = f"{self.run.resume_path.name} ({self.resumable}) and the weight files are as before that step"
        else:
            kept = "no checkpoint was saved before it"
        return RunStopped(f"the loss is not finite in {phase.name} epoch {epoch + 1} step {step + 1} ({which}); "
                          f"stopped, {kept}: lower optim.lr, check the data and teacher, or set nonfinite=skip "
                          "to skip such steps", EXIT_NONFINITE)

    def _signal_stop(self, signum: int) -> RunStopped:
        if self.is_main:
            self.run.remove_temporary_files()
        if self.resumable:
            kept = (f"{self.run.resume_path.name} keeps {self.resumable}: "
                    "add --resume (resume=true) to continue from there")
        else:
            kept = "no checkpoint was saved yet: run the command again to start over"
        return RunStopped(f"stopped by {signal.Signals(signum).name}; {kept}", 128 + signum, prefix="")

    def fit(self) -> RunResults:
        self._refuse_non_finite_teacher()
        student = self.distiller.deployed_student()  # what is evaluated and saved every epoch
        run_start = time.perf_counter()
        with self.signals:
            try:
                resumed = self.cfg.resume and self.resume()
                if self.is_main:
                    if not resumed:
                        self.run.trim_metrics(0)  # lines of a start killed before its first checkpoint
                    self.run.write_config(self.cfg)
                global_epoch = 0
                for phase in self.phases:
                    for epoch in range(phase.epochs):
                        if global_epoch >= self.start_epoch:
                            self._run_epoch(phase, epoch, global_epoch, student)
                        global_epoch += 1
                return self._finish(time.perf_counter() - run_start)
            except Signalled as stop:
                raise self._signal_stop(stop.signum) from None

    def _run_epoch(self, phase: Phase, epoch: int, global_epoch: int, student) -> None:
        if global_epoch == self.start_epoch and self.start_tally is not None:
            tally = EpochTally(**self.start_tally)
        else:
            tally = EpochTally(lr=phase.optimizer.param_groups[0]["lr"])
        record = self.train_epoch(phase, epoch, global_epoch, tally)
        broadcast_buffers(student)
        evaluation = {split: evaluate(student, getattr(self.loaders, split), self.autocast_dtype)
                      for split in EVALUATED_SPLITS if getattr(self.loaders, split) is not None}
        record = dataclasses.replace(record, evaluation=evaluation)
        accuracy = record.accuracy("test")
        improved = phase.name == "train" and accuracy is not None and accuracy > self.best["top1"]
        if improved:
            self.best = {"top1": accuracy, "top5": evaluation["test"]["top5"], "epoch": epoch + 1}
        self.last_metrics = record
        if not self.is_main:
            return
        with self.signals.deferred():
            if phase.name == "train":
                if improved:
                    self.run.save_weights(student, "best", epoch=epoch + 1, accuracy=accuracy)
                self.run.save_weights(student, "last", epoch=epoch + 1, accuracy=accuracy)
            # The resume state first, then the log line: a kill between them loses no epoch (resume restores the line).
            self._save_state(global_epoch + 1)
            self._log(record)

    def _log(self, record: EpochRecord) -> None:
        self.run.append_metrics(record)
        if self.writer is not None:
            for name, value in record.scalars().items():
                self.writer.add_scalar(f"{record.phase}/{name}", value, record.global_epoch)
            self.writer.flush()
        if self.cfg.progress:
            # Named by the run folder: the demo and the experiments print several runs' lines in a row.
            tqdm.write(f"{self.run.path}: {record.phase} epoch {record.epoch} {record.summary()} "
                       f"({record.img_per_s:.0f} img/s)")

    def _finish(self, wall_time: float) -> RunResults:
        barrier()  # rank 0's last epoch is on disk before anyone reads it
        history = self.run.read_metrics()
        last = [record for record in history if record.phase == "train"][-1]
        cfg = self.cfg
        results = RunResults(
            cfg.student, cfg.teacher if cfg.method.spec.needs_teacher else None, cfg.method.name, cfg.data.name,
            cfg.seed, cfg.epochs, last.accuracy("test"), last.evaluation.get("test", {}).get("top5"),
            self.best["top1"], self.best["top5"], self.best["epoch"],
            train_time_s=sum(record.epoch_time_s for record in history), wall_time_s=wall_time,
            student_params=sum(p.numel() for p in self.distiller.deployed_student().parameters()))
        if self.is_main:
            self.run.write_results(results)
        if self.writer is not None:
            self.writer.close()
        return results
