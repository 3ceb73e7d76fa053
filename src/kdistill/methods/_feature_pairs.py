"""What the feature-based baselines share: pairing student and teacher stages, the conv regressor
that maps a student map onto a teacher map, the teacher's classifier reused on the student's
features, and the options of an initialisation stage."""

from dataclasses import dataclass

from torch import Tensor, nn

from kdistill.errors import KdistillError
from kdistill.methods.base import MethodOptions
from kdistill.models.base import FeatureModel, Features
from kdistill.models.checkpoint import classifier_name


@dataclass(frozen=True)
class InitStageOptions(MethodOptions):
    """Options of a method with an initialisation stage (AB, FT, FSP)."""

    init_epochs: int = 30  # 0 skips the stage
    init_lr: float | None = None  # constant lr of the stage; None = the benchmark's choice


def pair_name(student: FeatureModel, teacher: FeatureModel) -> str:
    return f"teacher {type(teacher).__name__} -> student {type(student).__name__}"


def intermediate_maps(features: Features, preact: bool = False) -> list[Tensor]:
    """The stage outputs after the stem (the benchmark's `feat[1:-1]`), pre-ReLU with `preact`."""
    return (features.preact if preact else features.stages)[1:]


def stage_pairs(student_maps: list[Tensor], teacher_maps: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Student and teacher maps paired in order from the shallowest; when one network has more
    stages, its deepest extra ones are left out (the benchmark's `zip`)."""
    return list(zip(student_maps, teacher_maps))


def conv_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], relu: bool,
                   pair: str) -> nn.Sequential:
    """Conv + BN (+ ReLU) mapping a `[B, C_s, H_s, W_s]` map to `[B, C_t, H_t, W_t]`, as the
    benchmark's `ConvReg`: a stride-2 3x3 conv to halve, a stride-2 transposed conv to double, a
    valid conv of kernel `1 + H_s - H_t` to shrink otherwise; to grow by another factor (not in the
    benchmark), the transposed counterpart, a transposed conv of kernel `1 + H_t - H_s`."""
    (_, s_channels, s_height, s_width), (_, t_channels, t_height, t_width) = student_shape, teacher_shape
    if (s_height, s_width) == (2 * t_height, 2 * t_width):
        conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1)
    elif (2 * s_height, 2 * s_width) == (t_height, t_width):
        conv = nn.ConvTranspose2d(s_channels, t_channels, kernel_size=4, stride=2, padding=1)
    elif s_height >= t_height and s_width >= t_width:
        conv = nn.Conv2d(s_channels, t_channels, kernel_size=(1 + s_height - t_height, 1 + s_width - t_width))
    elif s_height <= t_height and s_width <= t_width:
        conv = nn.ConvTranspose2d(s_channels, t_channels, kernel_size=(1 + t_height - s_height, 1 + t_width - s_width))
    else:
        raise KdistillError(f"{pair}: no regressor maps a {s_height}x{s_width} student map onto a "
                            f"{t_height}x{t_width} teacher map; use inputs of equal aspect ratio")
    layers = [conv, nn.BatchNorm2d(t_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def reused_classifier_name(teacher: FeatureModel, width: int, method: str, pair: str) -> str:
    """Module name of the teacher's classifier, to be reused (frozen) on `width`-wide vectors
    projected from the student (SimKD, SRRL); a clear error when it does not read such vectors.
    Methods keep the name, not the module, so the teacher's weights never enter their state."""
    name = classifier_name(teacher)
    classifier = None if name is None else teacher.get_submodule(name)
    if not isinstance(classifier, nn.Linear) or classifier.in_features != width:
        raise KdistillError(f"method {method}, {pair}: the teacher's classifier does not read its {width}-wide "
                            "pooled feature, so it cannot be reused; use a CNN teacher whose classifier is one "
                            "linear layer after global pooling")
    return name
