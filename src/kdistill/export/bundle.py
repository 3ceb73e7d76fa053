"""The export folder of a finished run's student, and the check that each file reproduces it.

    config.json          preprocessing (mean, std, input size, interpolation, crop), class names,
                         files; for a timm student also timm's own keys (architecture, model_args,
                         pretrained_cfg), so `timm.create_model("local-dir:<folder>")` loads it
    README.md            the model card: teacher, method, data, epochs, seed, top-1/top-5, config
    model.safetensors    the weights (timm / torchvision students: the library's own key names)
    model.pth            the public CIFAR checkpoint layout, {'model': state_dict}
    model.torchscript.pt TorchScript (config.json inside as an extra file)
    model.onnx           ONNX: input "image" [N, C, H, W] preprocessed, output "logits" [N, classes]

The student is loaded through the evaluations' one trained-model path (`load_evaluation`), so a
method whose deployable student differs from the bare model (one reusing the teacher's head) is
exported as that composite. Every file written is loaded back and run on a batch of the run's
evaluation split; its logits must equal the PyTorch model's within the precision's tolerance.
"""

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import kdistill
from kdistill.data import DatasetInfo
from kdistill.errors import KdistillError, first_line
from kdistill.eval.common import Target, load_evaluation, resolve_target
from kdistill.export import DEFAULT_OPSET, ExportFormat
from kdistill.export.card import model_card
from kdistill.files import atomic_write_bytes, atomic_write_text
from kdistill.loading import library_preprocessing
from kdistill.models.adapters import TimmModel, TorchvisionModel
from kdistill.models.checkpoint import (
    load_state_into,
    read_state_dict,
    save_model_weights,
    save_safetensors,
)
from kdistill.run_folder import RunFolder

FILES = {ExportFormat.safetensors: "model.safetensors", ExportFormat.pth: "model.pth",
         ExportFormat.torchscript: "model.torchscript.pt", ExportFormat.onnx: "model.onnx"}
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
CHECK_SAMPLES = 32  # evaluation images the check runs
# Largest allowed |exported - PyTorch| logit, relative to the largest |logit| (at least 1): float32
# kernels of two runtimes differ in summation order only; float16 ones also in where they round.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2}
# timm's pretrained_cfg keys that describe timm's published weights of the architecture, not these.
TIMM_SOURCE_KEYS = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "hf_hub_id", "url")


@dataclass(frozen=True)
class Check:
    """How one exported file's logits compare with the PyTorch model's on the check batch."""

    format: ExportFormat
    file: str
    max_abs_diff: float | None  # None: not run (its runtime is not installed)
    tolerance: float
    samples: int
    top1_agreement: int
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.max_abs_diff is None or self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        if self.max_abs_diff is None:
            return f"{self.format}: {self.file} written, not checked ({self.note})"
        return (f"{self.format}: {self.file} max |logit difference| to PyTorch {self.max_abs_diff:.2e} "
                f"(tolerance {self.tolerance:.1e}) on {self.samples} evaluation images, "
                f"top-1 agrees on {self.top1_agreement}/{self.samples}")


def is_timm(net: nn.Module) -> bool:
    return type(net).__module__.startswith("timm.")


def deployable(model: nn.Module) -> nn.Module:
    """What a deployment runs: a timm / torchvision student's own model (the library's forward and
    key names), else the kdistill model (its forward gives the logits)."""
    return model.model if isinstance(model, (TimmModel, TorchvisionModel)) else model


def default_formats(model: nn.Module, composite: bool) -> list[ExportFormat]:
    """safetensors; a CIFAR-zoo student (not a method's composite) also in the public checkpoint layout."""
    library = isinstance(model, (TimmModel, TorchvisionModel))
    return [ExportFormat.safetensors] + ([] if library or composite else [ExportFormat.pth])


def preprocessing_config(target: Target, info: DatasetInfo) -> dict[str, Any]:
    """The evaluation transform the student was measured with, in timm's pretrained_cfg names:
    resize the shorter side to size / crop_pct with `interpolation`, center-crop `size`, scale
    pixels to [0, 1], normalise with mean and std."""
    data_interpolation = library_preprocessing(target.cfg).get("interpolation") or target.cfg.data.interpolation
    return {"input_size": [info.in_chans, info.image_size, info.image_size], "mean": list(info.mean),
            "std": list(info.std), "interpolation": str(data_interpolation or "bilinear"),
            "crop_pct": info.eval_crop_pct, "crop_mode": "center"}


def class_names(info: DatasetInfo) -> list[str]:
    return list(info.class_names) if info.class_names else [str(index) for index in range(info.num_classes)]


# ---- writers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_torch_deprecations() -> Iterator[None]:
    """torch.jit and the TorchScript-based ONNX exporter warn that they are deprecated; they are
    still what a runtime without the model's code loads, so the warning says nothing to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*legacy TorchScript-based ONNX")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def write_torchscript(net: nn.Module, example: Tensor, path: Path, config_text: str) -> None:
    with _quiet_torch_deprecations():
        traced = torch.jit.trace(net, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={CONFIG_FILE: config_text})
    atomic_write_bytes(path, buffer.getvalue())


def write_onnx(net: nn.Module, example: Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    # The TorchScript-based exporter (dynamo=False): the torch.export-based one needs onnxscript
    # as well, and the CNN students export the same through either.
    buffer = io.BytesIO()
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        with _quiet_torch_deprecations():
            torch.onnx.export(net, (example,), buffer, dynamo=False, input_names=["image"], output_names=["logits"],
                              opset_version=opset, dynamic_axes=axes)
    except (ValueError, RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
        if "opset" in str(error).lower():
            raise KdistillError(f"--opset {opset} is not supported by this torch ({first_line(error)}): "
                                f"use --opset {DEFAULT_OPSET}") from None
        raise KdistillError(f"the student cannot be exported to ONNX ({first_line(error)}): "
                            "export --format safetensors torchscript instead") from None
    atomic_write_bytes(path, buffer.getvalue())


def timm_config(net: nn.Module, preprocessing: dict[str, Any], names: list[str], scratch: Path) -> dict[str, Any]:
    """timm's own config.json of the student (`save_config_for_hf`): what its `local-dir:`
    loader reads, with the export's preprocessing as the pretrained_cfg."""
    from timm.models._hub import save_config_for_hf

    data_config = {key: preprocessing[key] for key in ("input_size", "mean", "std", "interpolation", "crop_pct",
                                                       "crop_mode")}
    try:
        save_config_for_hf(net, str(scratch), model_config={"label_names": names}, data_config=data_config)
        config = json.loads(scratch.read_text())
    finally:
        scratch.unlink(missing_ok=True)
    for key in TIMM_SOURCE_KEYS:
        config["pretrained_cfg"].pop(key, None)
    return config


# ---- loading the files back ------------------------------------------------------------------

def _reloaded_weights(net: nn.Module, path: Path, folder: Path) -> nn.Module:
    """A copy of `net` with the file's weights, loaded strictly (every key, every shape); a timm
    student through timm's own local-folder loader, as a user loads it."""
    if is_timm(net) and path.suffix == ".safetensors":
        import timm

        return timm.create_model(f"local-dir:{folder}", pretrained=True).to(next(net.parameters()).dtype)
    fresh = copy.deepcopy(net)
    load_state_into(fresh, read_state_dict(path), path)
    return fresh


def _runner(format: ExportFormat, net: nn.Module, path: Path, folder: Path) -> Callable[[Tensor], Tensor] | str:
    """A function from a batch to the exported file's logits, or why there is none."""
    if format in (ExportFormat.safetensors, ExportFormat.pth):
        module = _reloaded_weights(net, path, folder).eval()
        return lambda images: module(images)
    if format is ExportFormat.torchscript:
        with _quiet_torch_deprecations():
            module = torch.jit.load(str(path), map_location="cpu")
        return lambda images: module(images)
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed: pip install 'kdistill[export]'"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["logits"], {"image": images.numpy()})[0])


@torch.no_grad()
def check_file(format: ExportFormat, net: nn.Module, path: Path, folder: Path, images: Tensor, reference: Tensor,
               one_at_a_time: bool) -> Check:
    """Run the exported file on `images` (one image per call where its batch is fixed)."""
    tolerance = TOLERANCE[images.dtype] * max(1.0, float(reference.abs().max()))
    runner = _runner(format, net, path, folder)
    if isinstance(runner, str):
        return Check(format, path.name, None, tolerance, len(images), 0, runner)
    parts = [runner(image[None]) for image in images] if one_at_a_time else [runner(images)]
    logits = torch.cat(parts).float()
    difference = float((logits - reference).abs().max())
    agreement = int((logits.argmax(1) == reference.argmax(1)).sum())
    return Check(format, path.name, difference, tolerance, len(images), agreement)


# ---- the export ------------------------------------------------------------------------------

def export_run(run: str, overrides: list[str], formats: list[str] | None = None, out: str | None = None,
               dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, fp16: bool = False, which: str = "last",
               report: Callable[[str], None] = print) -> dict[str, Any]:
    """Export the student of the finished run folder `run` into `out` (default `<run>/export`);
    `report` gets one line per file checked. KdistillError if a file does not reproduce the model."""
    folder = RunFolder(run)
    if not folder.path.is_dir():
        raise KdistillError(f"'{run}' is not a run folder: give the folder of a finished run")
    results = folder.read_results()  # an unfinished run has no results to put in the card
    # Exported files hold no device; the check runs where onnxruntime's CPU provider runs.
    target = resolve_target(run, [*overrides, "device=cpu"], which)
    evaluation = load_evaluation(target, teacher="none")
    info = evaluation.loaders.info
    model = evaluation.models["student"].model
    dtype = torch.float16 if fp16 else torch.float32
    net = copy.deepcopy(deployable(model)).to(dtype).eval()
    composite = target.cfg.method.spec.deploys_composite
    chosen = list(dict.fromkeys(ExportFormat(name) for name in formats)) if formats else \
        default_formats(model, composite)
    destination = Path(out) if out else folder.path / "export"
    if destination.exists() and not destination.is_dir():
        raise KdistillError(f"--out {destination} is a file: give a folder for the exported files")
    destination.mkdir(parents=True, exist_ok=True)

    images = next(iter(evaluation.loaders.test))["image"][:CHECK_SAMPLES].cpu().to(dtype).contiguous()
    with torch.no_grad():
        reference = net(images).float()
    preprocessing = preprocessing_config(target, info)
    names = class_names(info)
    config: dict[str, Any] = {"architecture": target.cfg.student, "num_classes": info.num_classes}
    if is_timm(net):
        config = timm_config(net, preprocessing, names, destination / f".{CONFIG_FILE}.timm")
    config.update({"class_names": names, "preprocessing": preprocessing,
                   "files": {str(format): FILES[format] for format in chosen},
                   "dtype": str(dtype).removeprefix("torch."),
                   "input": "image [N, C, H, W], preprocessed", "output": "logits [N, classes]",
                   "student": target.cfg.student, "student_options": target.cfg.student_options,
                   "kdistill_version": kdistill.__version__})
    if ExportFormat.onnx in chosen:
        config["onnx"] = {"opset": opset, "dynamic_batch": dynamic_batch}
    config_text = json.dumps(config, indent=2) + "\n"
    atomic_write_text(destination / CONFIG_FILE, config_text)

    checks = []
    for format in chosen:
        path = destination / FILES[format]
        if format is ExportFormat.safetensors:
            save_safetensors(net.state_dict(), path, metadata={"format": "pt"})
        elif format is ExportFormat.pth:
            save_model_weights(net, path)
        elif format is ExportFormat.torchscript:
            write_torchscript(net, images, path, config_text)
        else:
            write_onnx(net, images if dynamic_batch else images[:1], path, opset, dynamic_batch)
        check = check_file(format, net, path, destination, images, reference,
                           one_at_a_time=format is ExportFormat.onnx and not dynamic_batch)
        report(check.line())
        checks.append(check)
        if not check.passed:
            raise KdistillError(f"the exported {path} does not reproduce the PyTorch model: max |logit difference| "
                                f"{check.max_abs_diff:.3g} on {check.samples} evaluation images exceeds "
                                f"{check.tolerance:.1g}; do not deploy it (without --fp16 the tolerance is tighter)")
    card = model_card(target.cfg, results, which, config, checks, folder.read_config())
    atomic_write_text(destination / CARD_FILE, card)
    return {"folder": str(destination), "files": [FILES[format] for format in chosen] + [CONFIG_FILE, CARD_FILE],
            "checks": checks}
