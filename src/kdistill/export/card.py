"""The model card (README.md) of an export folder: what was trained, how well, how to load it."""

import math
from typing import Any

import yaml

import kdistill
from kdistill.config import RunConfig
from kdistill.run_folder import RunResults


def _loading_lines(config: dict[str, Any]) -> list[str]:
    files = config["files"]
    lines = []
    if "safetensors" in files:
        if "pretrained_cfg" in config:  # a timm student: timm reads the folder itself
            args = ", ".join(f"{key}={value!r}" for key, value in config.get("model_args", {}).items())
            lines.append("\n".join([
                "timm (no kdistill needed):", "```python", "import timm",
                'model = timm.create_model("local-dir:<this folder>", pretrained=True).eval()',
                "# or by architecture name, with this folder's pretrained_cfg (its classes, preprocessing) and file:",
                "import json",
                'pretrained_cfg = json.load(open("<this folder>/config.json"))["pretrained_cfg"]',
                f'model = timm.create_model("{config["architecture"]}", pretrained=True{", " + args if args else ""},',
                '                          pretrained_cfg_overlay=dict(pretrained_cfg, '
                'file="<this folder>/model.safetensors"))',
                "```"]))
        else:
            lines += [f"safetensors weights of `{config['student']}`: "
                      f"`kdistill eval <this folder>/model.safetensors student={config['student']} data.name=...`, "
                      "or `safetensors.torch.load_file` into the architecture's module."]
    if "pth" in files:
        lines += ["`model.pth` is the public CIFAR checkpoint layout: "
                  "`torch.load(path, weights_only=True)['model']` is the state dict (as RepDistiller and "
                  f"mdistiller read their teachers), or `teacher={config['student']} "
                  "teacher_checkpoint=<this folder>/model.pth` for kdistill."]
    if "torchscript" in files:
        lines += ["TorchScript: `torch.jit.load('model.torchscript.pt')(images)` (config.json is inside as an extra "
                  "file)."]
    if "onnx" in files:
        batch = "any batch size" if config["onnx"]["dynamic_batch"] else "batch size 1"
        lines += [f"ONNX (opset {config['onnx']['opset']}, {batch}): "
                  "`onnxruntime.InferenceSession('model.onnx').run(['logits'], {'image': images})`."]
    return lines


def model_card(cfg: RunConfig, results: RunResults, which: str, config: dict[str, Any], checks: list,
               run_config: dict[str, Any]) -> str:
    """README.md of the export: `results` are the run's, `checks` the export's checks."""
    prep = config["preprocessing"]
    size = prep["input_size"][-1]
    resize = math.floor(size / prep["crop_pct"] + 1e-6)  # as the evaluation (and timm) round it
    top1, top5 = (results.top1_last, results.top5_last) if which == "last" else (results.top1_best, results.top5_best)
    weights = "last epoch" if which == "last" else f"best epoch ({results.best_epoch})"
    teacher = f"`{cfg.teacher}`" if cfg.teacher else "none (trained without a teacher)"
    rows = [("student", f"`{cfg.student}`"), ("teacher", teacher), ("method", f"`{cfg.method.name}`"),
            ("data", f"`{cfg.data.name}` ({config['num_classes']} classes)"), ("epochs", str(cfg.epochs)),
            ("seed", str(cfg.seed)), (f"top-1 / top-5, test split, {weights}", f"{top1:.2f} / {top5:.2f}"),
            ("weights dtype", config["dtype"]), ("kdistill", kdistill.__version__)]
    lines = [f"# {cfg.student} ({cfg.method.name}, {cfg.data.name})", "",
             "Exported by `kdistill export` from a kdistill run.", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "## Preprocessing", "",
              f"Resize the shorter side to {resize} ({prep['interpolation']}), center-crop "
              f"{size}x{size}, scale pixels to [0, 1], subtract mean {prep['mean']}, divide by std {prep['std']}; "
              f"the input has {prep['input_size'][0]} channel(s). The class names are in `config.json`.", "",
              "## Loading", ""]
    lines += [line for entry in _loading_lines(config) for line in (entry, "")][:-1]
    lines += ["", "## Check at export", "",
              "Each file was loaded back and run on images of the evaluation split beside the PyTorch model:", ""]
    lines += [f"- {check.line()}" for check in checks]
    lines += ["", "## Training configuration", "", "```yaml", yaml.safe_dump(run_config, sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(lines)
