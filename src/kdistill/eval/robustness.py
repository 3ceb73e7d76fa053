"""`kdistill robustness`: accuracy under CIFAR-C-style corruptions, made on the fly.

The corruptions and their five severities follow the CIFAR-C generator of Hendrycks &
Dietterich (2019, `make_cifar_c.py`). Its pixel-sized parameter (the blur's sigma) is for
32x32 images and is scaled with the image side; pixelate's is a fraction of the side already.
"""

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from kdistill.data import DatasetInfo, Loader, keyed_bits
from kdistill.errors import KdistillError, unknown_name_error
from kdistill.eval.common import (
    Evaluation,
    Outputs,
    collect_outputs,
    from_pixels,
    load_evaluation,
    resolve_target,
    to_pixels,
    top1,
    write_report,
)

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 32
BLUR_TRUNCATE = 4.0  # kernel radius in sigmas, as skimage's gaussian filter that CIFAR-C used

# A corruption maps float images in [0, 1] [B, C, H, W] to corrupted ones (clamped afterwards).
Corruption = Callable[[Tensor, int, torch.Generator], Tensor]


def gaussian_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    return images + sigma * noise


def shot_noise(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    photons = (500, 250, 100, 75, 50)[severity - 1]  # fewer photons per unit intensity: more noise
    counts = torch.poisson((images * photons).cpu(), generator=generator).to(images.device)
    return counts / photons


def gaussian_blur(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1] * images.shape[-1] / REFERENCE_SIDE
    radius = max(1, int(BLUR_TRUNCATE * sigma + 0.5))
    return F.gaussian_blur(images, [2 * radius + 1] * 2, [sigma, sigma])


def contrast(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    means = images.mean(dim=(-2, -1), keepdim=True)  # per image and channel, as CIFAR-C
    return (images - means) * factor + means


def brightness(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """CIFAR-C adds the shift to the HSV value (the largest channel): with hue and saturation
    fixed, every channel scales by new value / old value; black becomes grey."""
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    value = images.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1.0)
    return torch.where(value > 0, images * new_value / value.clamp_min(1e-12), new_value)


def _through_pil(images: Tensor, transform: Callable[[Image.Image], Image.Image]) -> Tensor:
    """Apply a PIL transform to each image (as 8-bit pixels): CIFAR-C made these corruptions with PIL."""
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    results = []
    for pixel_array in pixels:
        result = transform(Image.fromarray(pixel_array[..., 0] if pixel_array.shape[-1] == 1 else pixel_array))
        results.append(np.asarray(result).reshape(pixel_array.shape))
    return torch.from_numpy(np.stack(results)).permute(0, 3, 1, 2).to(images.device).float() / 255


def jpeg(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Through PIL's encoder as CIFAR-C (torchvision.io's codecs are deprecated since torchvision 0.29)."""
    quality = (80, 65, 58, 50, 40)[severity - 1]

    def compress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        with Image.open(buffer) as compressed:
            return compressed.copy()

    return _through_pil(images, compress)


def pixelate(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Box-filter down to a fraction of the side and back up, with PIL's BOX filter as CIFAR-C
    (torch's "area" mode averages whole-pixel windows and shifts the image at ratios near 1)."""
    ratio = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]

    def box_resample(image: Image.Image) -> Image.Image:
        small = image.resize((int(image.width * ratio), int(image.height * ratio)), Image.Resampling.BOX)
        return small.resize(image.size, Image.Resampling.BOX)

    return _through_pil(images, box_resample)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "brightness": brightness,
    "jpeg": jpeg,
    "pixelate": pixelate,
}


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Corrupt a batch [B, C, H, W] of uint8 pixels or of floats in [0, 1]; the result has the same
    shape, dtype and range. `generator` (a CPU generator) draws the noise of the noisy corruptions."""
    check_corruptions([name], [severity])
    is_uint8 = images.dtype == torch.uint8
    floats = images.float() / 255 if is_uint8 else images.float()
    corrupted = CORRUPTIONS[name](floats, severity, generator or torch.Generator()).clamp(0, 1)
    return (corrupted * 255).round().to(torch.uint8) if is_uint8 else corrupted.to(images.dtype)


def check_corruptions(names: list[str], severities: list[int]) -> None:
    for name in names:
        if name not in CORRUPTIONS:
            raise unknown_name_error("corruption", name, CORRUPTIONS)
    for severity in severities:
        if severity not in SEVERITIES:
            raise KdistillError(f"severity {severity} is not one of {', '.join(map(str, SEVERITIES))}")


def corrupted_batches(loader: Loader, info: DatasetInfo, name: str, severity: int,
                      seed: int) -> Iterator[dict[str, Tensor]]:
    """The loader's batches corrupted; the noise of batch n depends only on (seed, corruption,
    severity, n), so every model (and every rerun) sees the same corrupted images."""
    stream = list(CORRUPTIONS).index(name)
    for number, batch in enumerate(loader):
        generator = torch.Generator().manual_seed(int(keyed_bits(seed, severity, number, stream)))
        pixels = corrupt(to_pixels(batch["image"], info), name, severity, generator)
        yield {**batch, "image": from_pixels(pixels, info)}


def outputs_under_corruptions(evaluation: Evaluation, names: list[str],
                              severities: list[int]) -> Iterator[tuple[str, int, dict[str, Outputs]]]:
    """(corruption, severity, every model's outputs on the corrupted test split), one pass each."""
    test, info = evaluation.loaders.test, evaluation.loaders.info
    for name in names:
        for severity in severities:
            batches = corrupted_batches(test, info, name, severity, evaluation.cfg.seed)
            yield name, severity, collect_outputs(evaluation.models, batches, len(test), f"{name} s{severity}",
                                                  evaluation.cfg.progress, evaluation.autocast_dtype)


def run_robustness(target: str, overrides: list[str], which: str = "last",
                   corruptions: tuple[str, ...] = tuple(CORRUPTIONS),
                   severities: tuple[int, ...] = SEVERITIES) -> dict[str, Any]:
    """Top-1 of the model (and its teacher, when the run has one) on the clean and the corrupted
    test split; the mean corruption accuracy averages all corruptions and severities."""
    names, severities = list(corruptions), list(severities)
    check_corruptions(names, severities)
    resolved = resolve_target(target, overrides, which)
    evaluation = load_evaluation(resolved)
    test = evaluation.loaders.test
    clean = collect_outputs(evaluation.models, test, len(test), "clean", evaluation.cfg.progress,
                            evaluation.autocast_dtype)
    accuracy = {role: {} for role in evaluation.models}
    for name, severity, outputs in outputs_under_corruptions(evaluation, names, severities):
        for role, output in outputs.items():
            accuracy[role].setdefault(name, {})[str(severity)] = top1(output.logits, output.labels)
    report = {
        "weights": str(resolved.path), "dataset": resolved.cfg.data.name, "severities": severities,
        "models": {role: loaded.name for role, loaded in evaluation.models.items()},
        "clean_top1": {role: top1(output.logits, output.labels) for role, output in clean.items()},
        "corruption_top1": accuracy,
        "mean_corruption_top1": {role: float(np.mean([value for by_severity in table.values()
                                                      for value in by_severity.values()]))
                                 for role, table in accuracy.items()},
    }
    return write_report(report, resolved.output_path("robustness", ".json"))


def format_robustness(report: dict[str, Any]) -> str:
    roles = list(report["models"])
    header = f"{'top-1 (%)':<18}" + "".join(f"{role + ' ' + report['models'][role]:>22}" for role in roles)
    lines = [f"robustness on {report['dataset']} test, mean over severities {report['severities']}", header,
             f"{'clean':<18}" + "".join(f"{report['clean_top1'][role]:>22.2f}" for role in roles)]
    for name in report["corruption_top1"][roles[0]]:
        means = [np.mean(list(report["corruption_top1"][role][name].values())) for role in roles]
        lines.append(f"{name:<18}" + "".join(f"{mean:>22.2f}" for mean in means))
    lines.append(f"{'mean corruption':<18}" + "".join(f"{report['mean_corruption_top1'][role]:>22.2f}"
                                                      for role in roles))
    return "\n".join(lines)
