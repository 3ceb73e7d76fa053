"""Training curves of a run from its metrics.jsonl: the loss terms and the accuracies per epoch."""

from pathlib import Path

from matplotlib.figure import Figure  # the object API renders with Agg: no display, no global state

from kdistill.files import atomic_write
from kdistill.run_folder import RunFolder

ACCURACY_KEYS = ("train/top1", "test/top1", "val/top1")


def plot_training_curves(run: Path, png: Path) -> None:
    """Two panels against the epoch (counted over all phases): every logged train/<term> (the
    weighted total `train/loss` among them) on a log scale when all are positive, and top-1."""
    history = RunFolder(run).read_metrics()
    epochs = [entry["global_epoch"] for entry in history]
    terms = sorted({key for entry in history for key in entry if key.startswith("train/") and key not in ACCURACY_KEYS})
    figure = Figure(figsize=(11, 4), layout="constrained")
    losses, accuracy = figure.subplots(1, 2)
    for key in terms:
        points = [(epoch, entry[key]) for epoch, entry in zip(epochs, history) if key in entry]
        label = "total (weighted)" if key == "train/loss" else key.removeprefix("train/")
        losses.plot(*zip(*points), marker=".", label=label)
    if terms and all(entry[key] > 0 for entry in history for key in terms if key in entry):
        losses.set_yscale("log")
    losses.set(title="training loss terms", xlabel="epoch")
    for key in ACCURACY_KEYS:
        points = [(epoch, entry[key]) for epoch, entry in zip(epochs, history) if key in entry]
        if points:
            accuracy.plot(*zip(*points), marker=".", label=key)
    accuracy.set(title="top-1 (%)", xlabel="epoch")
    for axis in (losses, accuracy):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    init_epochs = [epoch for epoch, entry in zip(epochs, history) if entry.get("phase") == "init"]
    if init_epochs:  # shade a method's initialisation phase
        for axis in (losses, accuracy):
            axis.axvspan(min(init_epochs) - 0.5, max(init_epochs) + 0.5, color="grey", alpha=0.15)
    figure.suptitle(str(run))
    atomic_write(png, lambda file: figure.savefig(file, format="png", dpi=100))
