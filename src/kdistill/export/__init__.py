"""`kdistill export`: a finished run's student as files a deployment loads without kdistill.

This package's top level stays free of torch, so the CLI builds its parser from `ExportFormat`
without the heavy imports; the work is in `kdistill.export.bundle`.
"""

import enum


class ExportFormat(enum.StrEnum):
    safetensors = "safetensors"  # model.safetensors: the weights (the default; timm loads a timm student's)
    pth = "pth"  # model.pth: the public CIFAR checkpoint layout, {'model': state_dict}
    torchscript = "torchscript"  # model.torchscript.pt: torch.jit.load runs it without the model's code
    onnx = "onnx"  # model.onnx: onnxruntime and other ONNX runtimes


DEFAULT_OPSET = 17  # supported by every onnxruntime since 1.11
