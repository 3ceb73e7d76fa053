"""Typed run configuration: every CLI option is a key here, settable from YAML or `key=value`."""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    name: str = "embedded"
    root: str | None = None  # folder of the data set; None = the data set's default location
    download: bool = False  # let torchvision download it (needs a network)
    batch_size: int = 64
    eval_batch_size: int = 256
    val_fraction: float = 0.0  # carve a validation split from train (0 = none)
    num_workers: int = 4  # for streamed (folder) data sets
    augment: bool = True  # standard train augmentation (pad-4 crop + flip / random-resized crop)
    image_size: int | None = None  # resize to this side (None = the data set's own size)
    device_resident: bool = True  # keep small data sets on the training device
    strong_view: bool = False  # also yield a strongly augmented view (set by methods that need it)
    # Image files that cannot be decoded (found by a check at start): error = stop before training,
    # naming them; skip = leave them out.
    bad_images: str = "error"
    cache_dir: str | None = None  # where that check's result is kept (None: <data root>/.kdistill-cache)
    # Train augmentation of streamed (folder) data sets: "standard" = keyed random-resized crop +
    # flip (pad-4 crop + flip for small images), light enough for small data sets; "deit" = DeiT's,
    # built by timm's transform factory (random-resized crop, flip, RandAugment, random erasing),
    # every random choice seeded per sample by (seed, epoch, index) (`kdistill.data.deit`).
    train_transform: str = "standard"
    rand_augment: str = "rand-m9-mstd0.5-inc1"  # deit: timm's RandAugment string ("" = none)
    color_jitter: float = 0.3  # deit: as timm, used only when rand_augment is off
    random_erasing: float = 0.25  # deit: probability of erasing a random box with pixel noise
    # Repeated augmentation (timm's RepeatAugSampler; DeiT uses 3): each epoch draws about
    # 1/repeats of the samples, each `repeats` times with its own view. deit only; 1 = off.
    repeated_augment: int = 1
    # Preprocessing; None = the data set's, or the library config of a pretrained model (the
    # student's when student_pretrained, else the teacher's when teacher_pretrained).
    mean: list[float] | None = None  # normalisation, per channel
    std: list[float] | None = None
    interpolation: str | None = None  # resizing: bilinear | bicubic (None: bilinear)
    eval_crop_pct: float | None = None  # streamed ImageNet-style sets: evaluate on a center crop of image_size
    # from the image resized to image_size / eval_crop_pct (None: 224/256)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.05  # the tables' rate; their recipes set 0.01 for MobileNetV2/ShuffleNet students
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: str = "step"  # step | cosine
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: int = 0
    # Learning rate of the first warm-up step, rising linearly to optim.lr (timm's warmup_lr);
    # None = optim.lr / the number of warm-up steps.
    warmup_lr: float | None = None
    min_lr: float = 0.0  # cosine floor


@dataclass
class RunConfig:
    student: str = "resnet8"  # the model that is trained
    student_checkpoint: str | None = None  # start the student from these weights
    student_options: dict[str, Any] = field(default_factory=dict)  # timm:/tv: builder options
    student_pretrained: bool = False  # start a timm:/tv: student from its library's weights
    teacher: str | None = None
    teacher_checkpoint: str | None = None  # weight file or run folder; wins over teacher_pretrained
    teacher_pretrained: bool = False  # a timm:/tv: teacher with its library's weights (fetched and cached)
    teacher_options: dict[str, Any] = field(default_factory=dict)
    # method.name picks the method; its other keys are that method's options and the loss
    # weights w_ce / w_kd / w_method (None = the method's table default).
    method: dict[str, Any] = field(default_factory=lambda: {"name": "vanilla"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 240
    steps_per_epoch: int | None = None  # cap on steps per epoch (quick runs, smoke tests)
    checkpoint_every_steps: int = 0  # also save a resume state every N steps within an epoch (0: at epoch ends only)
    nonfinite: str = "stop"  # a non-finite loss: stop (exit 3, checkpoint and weights as before it) | skip the step
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA or CPU) | fp16 (autocast + loss scaling, CUDA)
    compile: bool = False  # torch.compile the student's and the teacher's forward passes
    channels_last: bool = True  # NHWC activations: faster convolutions on CUDA and on this project's CPUs
    # A folder of the teacher's outputs (logits, pooled feature) per (epoch, sample, view), shared by
    # runs with the same teacher, data, transform and seed: the teacher runs once per epoch (`kdistill cache`).
    teacher_cache: str | None = None
    teacher_cache_dtype: str = "float16"  # float16 | bfloat16 | float32 (float32: reads are exact)
    out: str = "runs/run"
    note: str | None = None  # a recipe's reason for departing from its method's default weights
    resume: bool = False
    tensorboard: bool = True  # written when tensorboard is installed
    progress: bool = True
