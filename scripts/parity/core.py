"""What every reference's parity run shares: loading a reference's code from its clone (patched
in memory for a CPU run), the batches both sides see, copying initial weights, running
kdistill's side as its Trainer does, recording each side's loss terms per step, and comparing.

Nothing of a reference is copied here: its modules are read from the user's clone at run time.
"""

import contextlib
import importlib.util
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from kdistill.config import OptimConfig
from kdistill.data.augment import crop_flip, crop_flip_params
from kdistill.data.loaders import BatchOrder
from kdistill.data.two_view import mean_fill, strong_view
from kdistill.engine.schedule import build_optimizer
from kdistill.methods import Distiller, MethodContext, build_distiller
from kdistill.models import create_model

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)  # the references' CIFAR-100 normalisation
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NUM_CLASSES = 100
TENSOR_FLOAT = torch.Tensor.float  # as torch defines it (run_dtype replaces it in float64 runs)
CALIBRATION_BATCHES = 4  # batches that set the random teacher's batch-norm statistics


# ---- the references' code -------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """A public reference repository, as the parity results were measured against it."""

    name: str  # the --reference key
    repository: str  # owner/name on GitHub
    commit: str  # the commit the results were measured at

    def check(self, path: Path) -> str:
        """The clone's HEAD commit; says so when it is not the expected one."""
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = head.stdout.strip() or "unknown (not a git clone)"
        note = "" if commit == self.commit else f"  (expected {self.commit}: results may differ)"
        print(f"{self.name}: github.com/{self.repository} at {commit}{note}")
        return commit


class ReferenceCode:
    """Modules of one reference clone, importable while the context is open. Top-level package
    names clash between references (mdistiller and the LS code both ship `mdistiller`), so every
    module imported from the clone leaves `sys.modules` on exit; the objects stay usable."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def __enter__(self) -> "ReferenceCode":
        sys.path.insert(0, str(self.root))
        return self

    def __exit__(self, *exc) -> None:
        sys.path.remove(str(self.root))
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None) or ""
            if origin.startswith(str(self.root)):
                del sys.modules[name]

    def load(self, dotted: str, patches: list[tuple[str, str]] = ()) -> ModuleType:
        """Import `dotted` from the clone; `patches` (old, new) replace text in its source in
        memory first (each must occur), for what a CPU run needs."""
        if not patches:
            return importlib.import_module(dotted)
        parts = dotted.split(".")
        path = self.root.joinpath(*parts).with_suffix(".py")
        source = path.read_text()
        for old, new in patches:
            if old not in source:
                raise RuntimeError(f"{path}: the text to patch is gone ({old!r}): a different commit?")
            source = source.replace(old, new)
        if len(parts) > 1:
            importlib.import_module(".".join(parts[:-1]))  # the parent package first
        spec = importlib.util.spec_from_file_location(dotted, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[dotted] = module
        exec(compile(source, str(path), "exec"), module.__dict__)
        return module


def stub_missing_modules(names: list[str]) -> None:
    """Empty stand-ins for the references' logging packages (tensorboard, wandb) when they are
    not installed: imported at module level, never used by a training step."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            stub = ModuleType(name)
            stub.SummaryWriter = None
            sys.modules[name] = stub


@contextlib.contextmanager
def cuda_calls_as_no_ops() -> Iterator[None]:
    """`.cuda()` on tensors and modules returns them unchanged (the references call it unguarded)."""
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda


@contextlib.contextmanager
def kl_div_target_gradient_of_torch_1_11() -> Iterator[None]:
    """`F.kl_div` (also inside `nn.KLDivLoss`) passes no gradient to target entries of 0, as
    torch 1.11's `kl_div_target_backward` did; the values are the same tensors as before."""
    kl_div = F.kl_div

    def masked_kl_div(input, target, *args, log_target: bool = False, **kwargs):
        if not log_target:
            target = torch.where(target > 0, target, target.detach())
        return kl_div(input, target, *args, log_target=log_target, **kwargs)

    F.kl_div = masked_kl_div
    try:
        yield
    finally:
        F.kl_div = kl_div


@contextlib.contextmanager
def run_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tensors the references create inside their losses follow the run's dtype. In float64,
    `.float()` keeps a float64 tensor as it is: kdistill computes its losses in float32 (and the
    references cast here and there), which would cap a float64 comparison at float32's precision."""
    previous, to_float = torch.get_default_dtype(), torch.Tensor.float
    torch.set_default_dtype(dtype)
    if dtype == torch.float64:
        torch.Tensor.float = lambda self, *args, **kwargs: self if self.dtype == torch.float64 else to_float(self)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
        torch.Tensor.float = to_float


@contextlib.contextmanager
def learning_rates_scaled(scale: float) -> Iterator[None]:
    """Every optimizer step, on both sides, uses each parameter group's learning rate times
    `scale`, whoever built the optimizer and whatever the loop set the rate to; between steps the
    groups hold their own rates again (the loops' schedules read and set them). SGD's and AdamW's
    step with the rate scaled is their step with an optimizer built at the scaled rate."""
    if scale == 1:
        yield
        return
    own_rates: dict[int, list[float]] = {}

    def scale_rates(optimizer, args, kwargs):
        own_rates[id(optimizer)] = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * scale

    def restore_rates(optimizer, args, kwargs):
        for group, rate in zip(optimizer.param_groups, own_rates.pop(id(optimizer)), strict=True):
            group["lr"] = rate

    handles = [register_optimizer_step_pre_hook(scale_rates), register_optimizer_step_post_hook(restore_rates)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---- the data both sides see ------------------------------------------------------------------
@dataclass
class Data:
    """A synthetic CIFAR-100-shaped training set (uint8 images, balanced labels) and the batches
    of a run: kdistill's keyed views (pad-4 crop + flip; the strong view for two-view methods),
    normalised as the references normalise CIFAR-100."""

    images: Tensor  # [N, 3, 32, 32] uint8
    labels: Tensor  # [N] int64
    seed: int

    @classmethod
    def synthetic(cls, size: int, seed: int) -> "Data":
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)
        labels = torch.arange(size) % NUM_CLASSES
        return cls(images, labels[torch.randperm(size, generator=generator)], seed)

    def batches(self, steps: int, batch_size: int, strong: bool) -> list[dict[str, Tensor]]:
        """float32 batches whatever the run's dtype (kdistill's augmentation works in float32)."""
        previous, to_float = torch.get_default_dtype(), torch.Tensor.float
        torch.set_default_dtype(torch.float32)
        torch.Tensor.float = TENSOR_FLOAT
        try:
            return self._batches(steps, batch_size, strong)
        finally:
            torch.set_default_dtype(previous)
            torch.Tensor.float = to_float

    def _batches(self, steps: int, batch_size: int, strong: bool) -> list[dict[str, Tensor]]:
        order = BatchOrder(len(self.labels), batch_size, self.seed, rank=0, world_size=1, train=True)
        mean = torch.tensor(CIFAR100_MEAN)[:, None, None]
        std = torch.tensor(CIFAR100_STD)[:, None, None]
        fill = mean_fill(CIFAR100_MEAN)
        batches, epoch = [], 0
        while len(batches) < steps:
            for index in order.batches(epoch)[: steps - len(batches)]:
                images = self.images[index]
                batch = {"label": self.labels[index], "index": index,
                         "image": (crop_flip(images, *crop_flip_params(self.seed, epoch, index)) / 255 - mean) / std}
                if strong:
                    batch["image_strong"] = (strong_view(images, self.seed, epoch, index, fill) / 255 - mean) / std
                batches.append(batch)
            epoch += 1
        return batches


def in_dtype(batch: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in batch.items()}


# ---- weights ------------------------------------------------------------------------------------
def tensors_of(module: nn.Module | Tensor) -> list[tuple[str, Tensor]]:
    """Parameters and buffers of a module in registration order (a lone tensor: itself)."""
    if isinstance(module, Tensor):
        return [("", module)]
    return list(module.state_dict(keep_vars=True).items())


def current(part: nn.Module | Tensor | Callable[[], Tensor]) -> nn.Module | Tensor:
    """A reference part, or the buffer a callable reads (a module's buffers are replaced, not
    updated, when the module changes dtype, so they are looked up when used)."""
    return part if isinstance(part, (nn.Module, Tensor)) else part()


def copy_weights(source: nn.Module | Tensor, target: nn.Module | Tensor) -> list[tuple[str, str]]:
    """Copy every parameter and buffer of `source` into `target`, matched in registration order
    with equal shapes (the zoo shares the public key names; auxiliary modules differ in names
    only). Returns the (source, target) key pairs."""
    pairs = list(zip(tensors_of(source), tensors_of(target), strict=True))
    with torch.no_grad():
        for (source_key, source_value), (target_key, target_value) in pairs:
            if source_value.shape != target_value.shape:
                raise RuntimeError(f"{source_key} {tuple(source_value.shape)} does not fit "
                                   f"{target_key} {tuple(target_value.shape)}")
            target_value.copy_(source_value)
    return [(source_key, target_key) for (source_key, _), (target_key, _) in pairs]


def resolve(module: nn.Module, path: str) -> nn.Module | Tensor:
    """The submodule, parameter or buffer at `path` (e.g. "embed_s", "raw_variances.0", "bank_s")."""
    for getter in (module.get_submodule, module.get_parameter, module.get_buffer):
        try:
            return getter(path)
        except AttributeError:
            pass
    raise AttributeError(f"{type(module).__name__} has nothing at '{path}'")


def largest_difference(source: nn.Module | Tensor, target: nn.Module | Tensor) -> dict[str, float | str]:
    """The largest difference over every parameter and buffer, matched as `copy_weights` matches
    them: |a - b| / max(1, max |a|) (absolute for weights of unit scale or below, relative for
    larger tensors such as batch-norm variances), with the absolute value and the tensor."""
    largest = {"difference": 0.0, "absolute": 0.0, "tensor": ""}
    for (key, a), (_, b) in zip(tensors_of(source), tensors_of(target), strict=True):
        if a.is_floating_point() and a.numel():
            a, b = a.detach().double(), b.detach().double()
            absolute = (a - b).abs().max().item()
            difference = absolute / max(1.0, a.abs().max().item())
            if not (a.isfinite().all() and b.isfinite().all()):  # a NaN compares as nothing: report it
                absolute = difference = math.inf
            if difference > largest["difference"]:
                largest = {"difference": difference, "absolute": absolute, "tensor": key}
    return largest


def trained_state(distiller: Distiller) -> dict[str, Tensor]:
    """A copy of the distiller's parameters and buffers but its teacher's, by key."""
    return {key: value.detach().clone() for key, value in distiller.state_dict().items()
            if not key.startswith("teacher.")}


def state_differences(before: dict[str, Tensor], after: dict[str, Tensor],
                      parameter_names: set[str]) -> dict[str, dict[str, float | str]]:
    """Per module (the first part of a key): the largest |after - before| / max(1, max |before|)
    over its parameters, the normalisation of `largest_difference`; over its buffers (batch-norm
    statistics, memory banks) apart, as "<module> buffers", since batch-norm statistics move with
    the data whatever the learning rate."""
    modules: dict[str, dict] = {}
    for key, first in before.items():
        if not first.is_floating_point() or not first.numel():
            continue
        module, _, tensor = key.partition(".")
        module = module if key in parameter_names else f"{module} buffers"
        moved = {**largest_difference(first, after[key]), "tensor": tensor}
        if moved["difference"] > modules.get(module, {"difference": -1.0})["difference"]:
            modules[module] = moved
    return modules


class KdistillSteps(dict):
    """kdistill's steps per phase (as a reference's record); its trained state before and after
    the run (`trained_state`) and which of it are parameters."""

    def __init__(self, phases: dict[str, list[dict[str, float]]], initial: dict[str, Tensor],
                 final: dict[str, Tensor], parameter_names: set[str]):
        super().__init__(phases)
        self.initial, self.final, self.parameter_names = initial, final, parameter_names

    @property
    def movement(self) -> dict[str, dict[str, float | str]]:
        """How far each trained module (the student, every auxiliary module) moved over the run:
        the scale of what a weight comparison is compared to."""
        return state_differences(self.initial, self.final, self.parameter_names)


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, batches: list[dict[str, Tensor]]) -> None:
    """Set a randomly initialised teacher's batch-norm statistics from a few batches (a
    cumulative average), so its activations have a trained network's scale instead of growing
    through the depth; the statistics are then copied to the other side like every weight."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for batch in batches:
        model(batch["image"])
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    model.eval()


# ---- each side's steps ----------------------------------------------------------------------------
class TermRecorder:
    """Records a reference's loss terms per step: forward hooks on its criterion modules add each
    output (a list is summed) to the current step; `Tensor.backward` closes the step with the
    total it is called on."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.handles = []

    def watch(self, module: nn.Module, term: str, weight: float = 1.0) -> None:
        """Record `module`'s output as `term`, times `weight` (the loop's weight of it, to compare
        with kdistill's weighted term where the two split a weight differently)."""
        def hook(_module, _inputs, output):
            value = sum(output) if isinstance(output, (list, tuple)) else output
            self.current[term] = self.current.get(term, 0.0) + weight * float(value.detach())
        self.handles.append(module.register_forward_hook(hook))

    @contextlib.contextmanager
    def steps_by_backward(self) -> Iterator[None]:
        backward = torch.Tensor.backward
        recorder = self

        def recording_backward(tensor, *args, **kwargs):
            recorder.steps.append({**recorder.current, "total": float(tensor.detach())})
            recorder.current = {}
            return backward(tensor, *args, **kwargs)

        torch.Tensor.backward = recording_backward
        try:
            yield
        finally:
            torch.Tensor.backward = backward
            for handle in self.handles:
                handle.remove()


RECIPES = Path(__file__).resolve().parents[2] / "configs" / "cifar100"


@dataclass(frozen=True)
class Recipe:
    """kdistill's own recipe of a method and pair (`configs/cifar100/<method>/<teacher>_<student>.yaml`)."""

    method: str
    options: dict  # the method section without its name
    lr: float

    @classmethod
    def load(cls, method: str, teacher: str, student: str, **overrides) -> "Recipe":
        path = RECIPES / method / f"{teacher}_{student}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"no kdistill recipe {path}: choose a pair the recipes cover")
        config = yaml.safe_load(path.read_text())
        options = {key: value for key, value in config["method"].items() if key != "name"}
        return cls(method, {**options, **overrides}, float(config.get("optim", {}).get("lr", OptimConfig().lr)))


def build_kdistill(recipe: Recipe, student_name: str, teacher_name: str, labels: Tensor,
                   batch_size: int | None = None, teacher_weights: nn.Module | None = None) -> Distiller:
    """kdistill's distiller of the recipe; `teacher_weights` (the reference's teacher) are copied
    into its teacher first, as a run loads its teacher before it builds the method (OFD's margins
    are read off the teacher's batch norms then)."""
    student = create_model(student_name, num_classes=NUM_CLASSES)
    teacher = create_model(teacher_name, num_classes=NUM_CLASSES)
    if teacher_weights is not None:
        copy_weights(teacher_weights, teacher)
    context = MethodContext((3, 32, 32), NUM_CLASSES, labels, recipe.lr, batch_size)
    return build_distiller({"name": recipe.method, **recipe.options}, student, teacher, context)


def run_kdistill(distiller: Distiller, batches: list[dict[str, Tensor]], init_batches: list[dict[str, Tensor]],
                 lr: float, epoch: int = 1, epochs: int = 240,
                 optim: OptimConfig | None = None) -> KdistillSteps:
    """kdistill's side, step for step as `kdistill.engine.Trainer` runs it (its optimizers, its
    init phase, `zero_grad` / `backward` / `step`; the step schedule is flat within the first
    epoch; `optim`: the run's optimizer, SGD by default): the unweighted terms, the logged scalar
    extras and the total of every step, per phase; and how far its weights moved."""
    initial = trained_state(distiller)
    record = {}
    init = distiller.init_phase()
    if init is not None and init_batches:
        optimizer = build_optimizer(init.parameters, OptimConfig(), init.lr)
        distiller.set_phase("init")
        distiller.init_mode()
        record["init"] = _steps(distiller, optimizer, init_batches)
    optimizer = build_optimizer(distiller.train_parameters(), optim or OptimConfig(), lr, owner=distiller)
    distiller.set_phase("train")
    distiller.train()
    distiller.on_epoch_start(epoch, epochs)
    record["train"] = _steps(distiller, optimizer, batches)
    return KdistillSteps(record, initial, trained_state(distiller), {name for name, _ in distiller.named_parameters()})


def _steps(distiller: Distiller, optimizer: torch.optim.Optimizer,
           batches: list[dict[str, Tensor]]) -> list[dict[str, float]]:
    steps = []
    for batch in batches:
        output = distiller(batch)
        optimizer.zero_grad(set_to_none=True)
        output.total.backward()
        optimizer.step()
        steps.append({**{name: float(value.detach()) for name, value in output.extras.items() if value.numel() == 1},
                      **{name: float(value.detach()) for name, value in output.terms.items()},
                      **{f"weighted {name}": float(value.detach()) * output.weights[name]
                         for name, value in output.terms.items()},
                      "total": float(output.total.detach())})
    return steps


# ---- comparison -----------------------------------------------------------------------------------
def relative(a: float, b: float) -> float:
    """|a - b| relative to the larger; infinite when either is not finite (a NaN would compare as
    no difference at all)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if a == b else math.inf
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def step_differences(a: dict[str, list[dict[str, float]]], b: dict[str, list[dict[str, float]]],
                     terms: dict[str, str]) -> list[float]:
    """Per step (the phases one after another, as far as both go): the largest relative
    difference over the terms `terms` pairs (a's name -> b's name)."""
    differences = []
    for phase, a_steps in a.items():
        for a_step, b_step in zip(a_steps, b.get(phase, [])):
            differences.append(max(relative(a_step[x], b_step[y]) for x, y in terms.items()
                                   if x in a_step and y in b_step))
    return differences


@dataclass
class Comparison:
    """One method in one dtype: both sides' steps and the differences."""

    terms: dict[str, str]  # reference term -> kdistill term (plus "total")
    reference: dict[str, list[dict[str, float]]]
    kdistill: dict[str, list[dict[str, float]]]
    weights: dict[str, dict]  # module -> largest difference after the run (`largest_difference`)
    step1_relative: float = 0.0
    largest_relative: float = 0.0
    per_step_relative: list[float] = field(default_factory=list)
    movement: dict[str, dict] = field(default_factory=dict)  # kdistill's modules from their initial weights

    def __post_init__(self):
        self.movement = self.movement or getattr(self.kdistill, "movement", {})
        for phase, reference_steps in self.reference.items():
            if len(self.kdistill.get(phase, [])) != len(reference_steps):
                raise RuntimeError(f"{phase}: {len(reference_steps)} reference steps, "
                                   f"{len(self.kdistill.get(phase, []))} kdistill")
        per_step = step_differences(self.reference, self.kdistill, self.terms)
        self.per_step_relative = per_step
        self.step1_relative = per_step[0]
        self.largest_relative = max(per_step)

    @property
    def largest_weight(self) -> float:
        """The largest weight difference over the modules (`largest_difference`)."""
        return max(difference["difference"] for difference in self.weights.values())

    @property
    def largest_movement(self) -> float | None:
        """How far the trained parameters moved over the run, the largest over the modules (`movement`)."""
        return max((moved["difference"] for module, moved in self.movement.items()
                    if not module.endswith(" buffers")), default=None)

    def as_dict(self) -> dict:
        return {"terms": self.terms, "step1_relative": self.step1_relative,
                "largest_relative": self.largest_relative, "largest_weight": self.largest_weight,
                "weights": self.weights, "largest_movement": self.largest_movement, "movement": self.movement,
                "per_step_relative": self.per_step_relative,
                "reference": self.reference, "kdistill": self.kdistill}


@dataclass
class MethodRun:
    """What a reference module gives the runner for one method and dtype."""

    run: Callable[[torch.dtype], Comparison]
    pair: str
    notes: str = ""
