"""Typed run configuration: every CLI option is a key here, settable from YAML or `key=value`.

A loaded configuration (`kdistill.config.loading.load_config`) is a tree of these frozen
dataclasses whose annotations hold at run time: enum-like keys are Enums, `method.options` is
the method's own (frozen) Options dataclass and `method.spec` the method resolved once
(`MethodSpec`). Values derived from it (the learning-rate rule, the strong view a method needs)
are computed by the engine and passed explicitly, never written back.
"""

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdistill.errors import KdistillError

__all__ = ["EXECUTION_KEYS", "TEACHER_CACHE_FIELDS", "BadImages", "CacheDtype", "DataConfig", "Interpolation",
           "MethodConfig", "MethodOptions", "MethodSpec", "NonFinite", "OptimConfig", "OptimName", "Precision",
           "ReadOnlyDict", "RunConfig", "ScheduleConfig", "ScheduleName", "TrainTransform", "config_to_dict",
           "enum_value", "flat_config", "flatten", "recorded_config"]


def enum_value(choices: type[enum.Enum], value: Any, key: str) -> enum.Enum:
    """`value` as a member of `choices`; a one-line error naming the valid values otherwise."""
    try:
        return choices(value)
    except ValueError:
        valid = ", ".join(member.value for member in choices)
        raise KdistillError(f"{key}={value!r} is not one of: {valid}") from None


class ReadOnlyDict(dict):
    """A dict that refuses changes: a loaded configuration's free-form mappings (builder options)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a loaded configuration is read-only: build another with dataclasses.replace")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse


class OptimName(enum.StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class ScheduleName(enum.StrEnum):
    step = "step"
    cosine = "cosine"


class BadImages(enum.StrEnum):
    error = "error"  # stop before training, naming the files that cannot be decoded
    skip = "skip"  # leave them out, counted in the log


class TrainTransform(enum.StrEnum):
    standard = "standard"  # keyed random-resized crop + flip (pad-4 crop + flip for small images)
    deit = "deit"  # DeiT's (timm's transform factory), keyed per sample


class Interpolation(enum.StrEnum):
    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"


class Precision(enum.StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast, CUDA or CPU
    fp16 = "fp16"  # autocast + loss scaling, CUDA


class CacheDtype(enum.StrEnum):
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"  # reads are exact


class NonFinite(enum.StrEnum):
    stop = "stop"  # exit 3, checkpoint and weights as before the step
    skip = "skip"  # skip the step, counted in the metrics


@dataclass(frozen=True)
class DataConfig:
    name: str = "embedded"  # data set (`kdistill list`): embedded, cifar10, cifar100, imagefolder, ...
    root: str | None = None  # folder of the data set; None = the data set's default location
    download: bool = False  # let torchvision download it (needs a network)
    batch_size: int = 64  # training batch, per process
    eval_batch_size: int = 256  # evaluation batch
    val_fraction: float = 0.0  # carve a validation split from train (0 = none)
    num_workers: int = 4  # for streamed (folder) data sets
    augment: bool = True  # standard train augmentation (pad-4 crop + flip / random-resized crop)
    image_size: int | None = None  # resize to this side (None = the data set's own size)
    device_resident: bool = True  # keep small data sets on the training device
    # Image files that cannot be decoded (found by a check at start): error = stop before training,
    # naming them; skip = leave them out.
    bad_images: BadImages = BadImages.error
    cache_dir: str | None = None  # where that check's result is kept (None: <data root>/.kdistill-cache)
    # false: no check at start, for a trusted tree (a file that cannot be decoded then stops the
    # run when it is read, naming it).
    check_images: bool = True
    # Train augmentation of streamed (folder) data sets: "standard" = keyed random-resized crop +
    # flip (pad-4 crop + flip for small images), light enough for small data sets; "deit" = DeiT's,
    # built by timm's transform factory (random-resized crop, flip, RandAugment, random erasing),
    # every random choice seeded per sample by (seed, epoch, index) (`kdistill.data.deit`).
    train_transform: TrainTransform = TrainTransform.standard
    rand_augment: str = "rand-m9-mstd0.5-inc1"  # deit: timm's RandAugment string ("" = none)
    color_jitter: float = 0.3  # deit: as timm, used only when rand_augment is off
    random_erasing: float = 0.25  # deit: probability of erasing a random box with pixel noise
    # Repeated augmentation (timm's RepeatAugSampler; DeiT uses 3): each epoch draws about
    # 1/repeats of the samples, each `repeats` times with its own view. deit only; 1 = off.
    repeated_augment: int = 1
    # Preprocessing; None = the data set's, or the library config of a pretrained model (the
    # student's when student_pretrained, else the teacher's when teacher_pretrained).
    mean: tuple[float, ...] | None = None  # normalisation, per channel
    std: tuple[float, ...] | None = None  # normalisation, per channel
    interpolation: Interpolation | None = None  # resizing (None: bilinear)
    eval_crop_pct: float | None = None  # streamed ImageNet-style sets: evaluate on a center crop of image_size
    # from the image resized to image_size / eval_crop_pct (None: 224/256)

    def __post_init__(self):
        object.__setattr__(self, "bad_images", enum_value(BadImages, self.bad_images, "data.bad_images"))
        object.__setattr__(self, "train_transform",
                           enum_value(TrainTransform, self.train_transform, "data.train_transform"))
        if self.interpolation is not None:
            object.__setattr__(self, "interpolation",
                               enum_value(Interpolation, self.interpolation, "data.interpolation"))


@dataclass(frozen=True)
class OptimConfig:
    name: OptimName = OptimName.sgd  # sgd | adamw
    lr: float = 0.05  # the tables' rate; their recipes set 0.01 for MobileNetV2/ShuffleNet students
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 weight decay
    nesterov: bool = False  # Nesterov momentum (SGD)
    # AdamW: also no weight decay on the tensors a model lists in its `no_weight_decay()` (timm's
    # convention, e.g. a ViT's position embedding and class and distillation tokens), as timm's
    # create_optimizer and DeiT do; false: on biases and 1-D tensors only (the TinTeM authors' code).
    model_no_weight_decay: bool = False

    def __post_init__(self):
        object.__setattr__(self, "name", enum_value(OptimName, self.name, "optim.name"))
        if self.model_no_weight_decay and self.name is not OptimName.adamw:
            raise KdistillError(f"optim.model_no_weight_decay shapes AdamW's weight-decay groups, not "
                                f"optim.name={self.name}'s (one decay for every tensor): set optim.name=adamw "
                                "or drop it")


@dataclass(frozen=True)
class ScheduleConfig:
    name: ScheduleName = ScheduleName.step  # step (x gamma at each milestone) | cosine (per step)
    milestones: tuple[int, ...] = (150, 180, 210)  # step: epochs at which the rate is multiplied by gamma
    gamma: float = 0.1  # step: the factor at each milestone
    warmup_epochs: int = 0  # linear warm-up from warmup_lr, per step
    # Learning rate of the first warm-up step, rising linearly to optim.lr (timm's warmup_lr);
    # None = optim.lr / the number of warm-up steps.
    warmup_lr: float | None = None
    min_lr: float = 0.0  # cosine floor

    def __post_init__(self):
        object.__setattr__(self, "name", enum_value(ScheduleName, self.name, "schedule.name"))


@dataclass(frozen=True)
class MethodOptions:
    """Options every method has; a method extends this with its own fields (its `Options`).

    The loss is `w_ce * CE + w_kd * KD + w_method * (method terms)`; None takes the method's
    table default (`Distiller.default_weights`).
    """

    w_ce: float | None = None  # weight of cross-entropy with the labels
    w_kd: float | None = None  # weight of Hinton's KD term
    w_method: float | None = None  # weight of the method's own terms
    temperature: float = 4.0  # of the KD term
    # Logit standardisation (Sun et al., CVPR 2024): z-score each sample's teacher and student
    # logits before the softmax of every logit-matching term (KD, DKD, MLKD, CRLD, DIST).
    logit_standardize: bool = False
    # CTKD (Li et al., AAAI 2023): the temperature of every logit-matching term is learned, through
    # a gradient reversal of strength lambda that rises from `reversal_start` to `reversal_end`
    # over `reversal_epochs` epochs (cosine); T = temperature_min + temperature_range * sigmoid(raw).
    # Defaults: the reference's CIFAR script (t_start 1, t_end 20, decay 0 -> -1 over 10 epochs).
    curriculum_temperature: bool = False
    instance_temperature: bool = False  # one temperature per sample (an MLP of both logits), not one global
    temperature_min: float = 1.0  # CTKD: the lowest temperature
    temperature_range: float = 20.0  # CTKD: the span above temperature_min
    reversal_start: float = 0.0  # CTKD: gradient-reversal strength at the start
    reversal_end: float = 1.0  # CTKD: ... after reversal_epochs
    reversal_epochs: int = 10  # CTKD: epochs of the rise


# What a teacher cache stores of the teacher's outputs.
TEACHER_CACHE_FIELDS = frozenset({"logits", "pooled"})


@dataclass(frozen=True)
class MethodSpec:
    """A method resolved once from its name and options (`kdistill.methods.method_spec`): its
    Distiller class and what it needs of a run, so nothing downstream looks the method up again
    or compares its name."""

    name: str
    distiller: type  # the method's Distiller subclass
    needs_teacher: bool
    uses_teacher_logits: bool  # False: a backbone-only teacher file will do (label-free methods)
    teacher_reads: frozenset[str]  # the fields of the teacher's Features it reads (a cache holds logits, pooled)
    views: tuple[str, ...]  # the batch views it trains on: ("image",) or ("image", "image_strong")
    matches_logits: bool  # its own terms compare teacher and student logits (KD, DKD, CRLD, ...)
    deploys_composite: bool  # its deployed student holds parts beyond the student model (SimKD: the teacher's head)

    @property
    def needs_strong_view(self) -> bool:
        return "image_strong" in self.views

    @property
    def reads_teacher_cache(self) -> bool:
        """A teacher cache (its logits and pooled feature) can stand in for running the teacher."""
        return self.needs_teacher and self.teacher_reads <= TEACHER_CACHE_FIELDS


@dataclass(frozen=True)
class MethodConfig:
    """`method.name` and the method's options, written `method.<option>` in YAML and overrides;
    `spec` is the method resolved by `load_config` (None only in a hand-built RunConfig)."""

    name: str = "vanilla"
    options: MethodOptions = field(default_factory=MethodOptions)  # the method's Options subclass
    spec: MethodSpec | None = None


@dataclass(frozen=True)
class RunConfig:
    student: str = "resnet8"  # the model that is trained
    student_checkpoint: str | None = None  # start the student from these weights
    student_options: dict[str, Any] = field(default_factory=dict)  # timm:/tv: builder options (read-only once loaded)
    student_pretrained: bool = False  # start a timm:/tv: student from its library's weights
    teacher: str | None = None  # the frozen model (None with teacher_checkpoint= a run folder: that run's model)
    teacher_checkpoint: str | None = None  # weight file or run folder; wins over teacher_pretrained
    # A timm:/tv: teacher with its library's weights, or a published CIFAR-100 teacher (resnet32x4,
    # wrn_40_2, ...: mdistiller's archive); fetched once and cached.
    teacher_pretrained: bool = False
    teacher_options: dict[str, Any] = field(default_factory=dict)  # timm:/tv: builder options of the teacher
    # method.name picks the method; its other keys are that method's options and the loss
    # weights w_ce / w_kd / w_method (None = the method's table default).
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 240  # training epochs
    steps_per_epoch: int | None = None  # cap on steps per epoch (quick runs, smoke tests)
    checkpoint_every_steps: int = 0  # also save a resume state every N steps within an epoch (0: at epoch ends only)
    nonfinite: NonFinite = NonFinite.stop  # what a non-finite loss does: stop | skip the step
    seed: int = 0  # seeds the weights and every random choice of the data
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = Precision.fp32  # fp32 | bf16 (autocast, CUDA or CPU) | fp16 (autocast + loss scaling, CUDA)
    compile: bool = False  # torch.compile the student's and the teacher's forward passes
    channels_last: bool = True  # NHWC activations: faster convolutions on CUDA and on this project's CPUs
    # A folder of the teacher's outputs (logits, pooled feature) per (epoch, sample, view), shared by
    # runs with the same teacher, data, transform and seed: the teacher runs once per epoch (`kdistill cache`).
    teacher_cache: str | None = None
    teacher_cache_dtype: CacheDtype = CacheDtype.float16  # float16 | bfloat16 | float32 (float32: reads are exact)
    # The compact cache: per sample only the K largest logits, their classes and the log-sum-exp of
    # the others (methods that read only logits and accept it: KD, DKD, DIST, MLKD, CRLD); None = exact.
    teacher_cache_topk: int | None = None
    # Samples per teacher pass when filling the cache (the largest batch that fits); None = data.batch_size.
    # Another size changes the teacher's outputs at the rounding level only.
    teacher_cache_fill_batch: int | None = None
    out: str = "runs/run"  # the run folder (recipes: one per seed, .../seed${seed})
    note: str | None = None  # a recipe's reason for departing from its method's default weights
    resume: bool = False  # continue the run in out= from its last checkpoint (--resume)
    resume_force: bool = False  # resume although the configuration differs from the saved one
    tensorboard: bool = True  # written when tensorboard is installed
    progress: bool = True  # progress bars

    def __post_init__(self):
        object.__setattr__(self, "nonfinite", enum_value(NonFinite, self.nonfinite, "nonfinite"))
        object.__setattr__(self, "precision", enum_value(Precision, self.precision, "precision"))
        object.__setattr__(self, "teacher_cache_dtype",
                           enum_value(CacheDtype, self.teacher_cache_dtype, "teacher_cache_dtype"))
        for name in ("student_options", "teacher_options"):
            object.__setattr__(self, name, ReadOnlyDict(getattr(self, name)))


# Keys that say how a run executes, not what it computes: a resume may change them, a grid does
# not take a saved run that differs only in them for another experiment, a report pools over them.
EXECUTION_KEYS = frozenset({"out", "resume", "resume_force", "progress", "tensorboard", "device", "note",
                            "checkpoint_every_steps", "teacher_cache", "data.root", "data.download",
                            "data.num_workers", "data.cache_dir", "data.check_images", "data.device_resident",
                            "data.eval_batch_size"})


def recorded_config(cfg: RunConfig) -> RunConfig:
    """What a run folder's config.yaml records: `cfg` without the resume flags of one invocation
    (so a copied config.yaml starts a fresh run)."""
    return dataclasses.replace(cfg, resume=False, resume_force=False)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as plain YAML values, in the shape a user writes it (`method: {name, <options>}`)."""
    values = {item.name: getattr(cfg, item.name) for item in dataclasses.fields(cfg)}
    values = {name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
              for name, value in values.items()}
    values["method"] = {"name": cfg.method.name, **dataclasses.asdict(cfg.method.options)}
    return _plain(values)


def flatten(values: Mapping[str, Any], keep: frozenset[str] = frozenset(), prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested mappings as dotted keys; an empty mapping, and the
    mappings named in `keep` (by dotted key), stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and dotted not in keep:
            flat.update(flatten(value, keep, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """`config_to_dict` with dotted keys (`data.root`, `method.temperature`), for comparing configurations."""
    return flatten(config_to_dict(cfg), keep=frozenset({"student_options", "teacher_options"}))
