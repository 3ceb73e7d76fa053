"""Training curves of a run from its metrics.jsonl: the loss terms and the accuracies per epoch."""

from pathlib import Path

from matplotlib.figure import Figure  # the object API renders with Agg: no display, no global state

from kdistill.files import atomic_write
from kdistill.run_folder import EpochRecord, RunFolder

ACCURACY_SPLITS = ("train", "test", "val")


def plot_training_curves(run: Path, png: Path) -> None:
    """Two panels against the epoch (counted over all phases): every logged train term (the
    weighted total among them) on a log scale when all are positive, and top-1."""
    history = RunFolder(run).read_metrics()
    terms = sorted({name for record in history for name in record.loss_terms()})
    figure = Figure(figsize=(11, 4), layout="constrained")
    losses, accuracy = figure.subplots(1, 2)
    for name in terms:
        points = [(record.global_epoch, record.loss_terms()[name]) for record in history if name in record.loss_terms()]
        losses.plot(*zip(*points), marker=".", label="total (weighted)" if name == EpochRecord.TOTAL else name)
    if terms and all(value > 0 for record in history for value in record.loss_terms().values()):
        losses.set_yscale("log")
    losses.set(title="training loss terms", xlabel="epoch")
    for split in ACCURACY_SPLITS:
        points = [(record.global_epoch, record.accuracy(split)) for record in history
                  if record.accuracy(split) is not None]
        if points:
            accuracy.plot(*zip(*points), marker=".", label=f"{split}/top1")
    accuracy.set(title="top-1 (%)", xlabel="epoch")
    for axis in (losses, accuracy):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    init_epochs = [record.global_epoch for record in history if record.phase == "init"]
    if init_epochs:  # shade a method's initialisation phase
        for axis in (losses, accuracy):
            axis.axvspan(min(init_epochs) - 0.5, max(init_epochs) + 0.5, color="grey", alpha=0.15)
    figure.suptitle(str(run))
    atomic_write(png, lambda file: figure.savefig(file, format="png", dpi=100))
