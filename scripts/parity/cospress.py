"""cospress (emannix/cospress-cosine-similarity-preserving-compression), the TinTeM authors' code
("CosPress" in the repository): TinTeM, and Proteus as the paper's label-free baseline.

The code base is a Lightning / hydra one built around DINOv2's ViT: its methods call the backbones
as `backbone(x, is_training=True)` and read `x_prenorm`, `x_norm_clstoken`, ... and
`backbone.norm`, so it accepts no other backbone (no CIFAR zoo model). The pair is the closest
small one both sides accept: the reference's own DINOv2 ViTs (`goo.networks.proteus_dinov2`:
`vit_small` standing in for torch.hub's `dinov2_vits14_lc` backbone, which needs the network,
and `vit_tiny` with the run config's settings) at 32 px with 4 px patches (an 8x8 grid), against
kdistill's ImageNet recipe models (timm's `vit_small_patch14_dinov2` and `vit_tiny_patch16_224`
with DINOv2's ViT-Ti/14 settings) at the same size. Every weight is copied by name (DINOv2's and
timm's ViTs share their key names; `mask_token` has no counterpart in timm, the classifier head
none in DINOv2).

The reference side is the method module as `run/CosPress_imagenet_dinov2_vits.yaml` (TinTeM) and
`run/proteus_imagenet_dinov2_vits.yaml` (Proteus) configure it, its batches made by its own
collate function (`goo.augmentations.proteus.collate_data_and_cast_aug`, with the experiment
config's masking), each step its LightningModule's own `training_step` with Lightning's
automatic-optimisation order (zero_grad, backward, step), and its optimizer built by its
`timm_wrapper` from `adamw_proteus.yaml` with the run's overrides (timm's AdamW, lr 5e-4, weight
decay 0.05 on tensors of two or more dimensions). Neither side's schedule runs: both train at the
base rate 5e-4 (the reference's per-epoch warm-up would hold 1e-6 through the first epoch, kdistill's
per-step one rises from it; README: deviations). Patched in memory for a CPU run: xFormers (a
CUDA library) is left out, so attention runs as the code's own fallback, and a list of inputs
(Proteus' masked and unmasked passes) goes through the blocks one input at a time, as xFormers'
block-diagonal attention computes it; the collate function's float16 cast of the images (the
reference trains under 16-bit autocast) keeps the run's dtype. Stand-ins for the two modules a
training step never reaches that import the `lightly` library (a data set wrapper and a
class-weighted cross-entropy).
"""

import random
import sys
from functools import partial
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import torch
import yaml
from core import (
    NUM_CLASSES,
    Comparison,
    Data,
    Reference,
    ReferenceCode,
    copy_weights,
    in_dtype,
    largest_difference,
    resolve,
    run_dtype,
    run_kdistill,
)
from omegaconf import OmegaConf
from torch import nn

from kdistill.config import OptimConfig
from kdistill.methods import Distiller, MethodContext, build_distiller
from kdistill.models import create_model

IMAGE_SIZE, PATCH_SIZE = 32, 4  # CIFAR-sized images, an 8x8 token grid
RECIPES = Path(__file__).resolve().parents[2] / "configs" / "imagenet"
RECIPE_PAIR = "vit_small14_vit_tiny14"

# xFormers is a CUDA library: without it the code's own fallbacks run (plain attention; a list of
# inputs, which xFormers runs as one block-diagonal attention, one input at a time).
NO_XFORMERS = [
    ("from xformers.ops import memory_efficient_attention, unbind, fmha, scaled_index_add, index_select_cat\n"
     "from xformers.ops import SwiGLU\n", ""),
    ("else:\n    XFORMERS_AVAILABLE = True", "else:\n    XFORMERS_AVAILABLE = False"),
    ("class SwiGLUFFNFused(SwiGLU):", "class SwiGLUFFNFused(SwiGLUFFN):"),  # DINOv2's own fallback (unused: MLP)
    ('            if not XFORMERS_AVAILABLE:\n                raise AssertionError("xFormers is required for '
     'using nested tensors")\n            return self.forward_nested(x_or_x_list)',
     "            if not XFORMERS_AVAILABLE:\n"
     "                return [Basic_Block.forward(self, x) for x in x_or_x_list]\n"
     "            return self.forward_nested(x_or_x_list)"),
]
# Imported at module level by the method modules, never reached by a training step; they import `lightly`.
UNREACHED_MODULES = {"goo.lightly.dataset": "LightlyDataset", "goo.loss.cross_entropy_weighted": "CrossEntropyWeighted"}


class HubClassifierStandIn(nn.Module):
    """torch.hub's `dinov2_vits14_lc` as the method uses it: its `.backbone` (the linear head is never read)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone


class Method:
    """One method of the reference: its run config, the module that builds it, the name map of its
    trained heads (reference -> kdistill) and of its loss terms (reference -> kdistill)."""

    def __init__(self, run_config: str, module: str, method: str, heads: dict[str, str], terms: dict[str, str]):
        self.run_config, self.module, self.method, self.heads, self.terms = run_config, module, method, heads, terms


METHODS = {
    "tintem": Method("run/CosPress_imagenet_dinov2_vits.yaml", "goo.methods.self_supervised.proteus_vmfsne7_reversed",
                     "tintem", {"teacher_head_linear": "head"},
                     {"sne_local_loss": "tintem_local", "sne_global_loss": "tintem_global",
                      "fea_loss": "tintem_feature", "token_loss": "tintem_token"}),
    # The patch level (weight 0 in the run config) has no counterpart: its masked pass adds exact zeros.
    "proteus": Method("run/proteus_imagenet_dinov2_vits.yaml", "goo.methods.self_supervised.proteus",
                      "proteus", {"token_head": "token_head", "fea_head": "feature_head"},
                      {"token_loss": "proteus_token", "fea_loss": "proteus_feature"}),
}


def merged(*configs: dict) -> dict:
    """Dictionaries merged as hydra merges config layers (later keys win, nested dicts merged)."""
    result: dict = {}
    for config in configs:
        for key, value in (config or {}).items():
            result[key] = merged(result.get(key, {}), value) if isinstance(value, dict) else value
    return result


class Cospress:
    reference = Reference("cospress", "emannix/cospress-cosine-similarity-preserving-compression",
                          "65e94c034dc26e0299a6dc935084a3aa84b329e8")
    methods = METHODS

    def __init__(self, path: Path, teacher: str, student: str, batch_size: int, data: Data):
        self.path = Path(path)
        self.code = ReferenceCode(path)
        self.batch_size, self.data = batch_size, data  # the CIFAR pair does not apply (module docstring)

    def __enter__(self):
        self.code.__enter__()
        for name, attribute in UNREACHED_MODULES.items():
            stand_in = ModuleType(name)
            setattr(stand_in, attribute, type(attribute, (), {}))
            sys.modules[name] = stand_in
        self.vits = self.code.load("goo.networks.proteus_dinov2", NO_XFORMERS)
        self.collate = self.code.load("goo.augmentations.proteus")
        self.timm_wrapper = self.code.load("goo.optimizer.timm_wrapper").timm_wrapper
        return self

    def __exit__(self, *exc):
        for name in UNREACHED_MODULES:
            sys.modules.pop(name, None)
        self.code.__exit__(*exc)

    def notes(self, method: str) -> dict:
        """The pair this reference runs instead of the CIFAR one (module docstring)."""
        return {"pair": f"DINOv2 ViT-S -> ViT-Ti, {IMAGE_SIZE} px, patch {PATCH_SIZE}"}

    def yaml(self, relative: str) -> dict:
        return yaml.safe_load((self.path / relative).read_text())

    # ---- the reference side, as its configs build it ----
    def build(self, method: Method) -> tuple[nn.Module, dict]:
        run = self.yaml(method.run_config)["model"]
        base_method = self.yaml("configs/model/methods/proteus.yaml")
        method_options = {key: value for key, value in merged(base_method, run.get("methods", {})).items()
                          if key != "_target_"}
        networks = merged(self.yaml("configs/model/networks/proteus_vit_s_t.yaml")["networks"],
                          run.get("networks", {}).get("networks", {}))
        student_options = {key: value for key, value in networks["student"].items() if not key.startswith("_")}
        student_options.update(img_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
        optimizer_args = merged(self.yaml("configs/model/optimizer/adamw_proteus.yaml")["optimizer"]["args"],
                                run.get("optimizer", {}).get("optimizer", {}).get("args", {}))
        module_class = self.code.load(method.module).Proteus
        networks = SimpleNamespace(
            student=partial(self.vits.vit_tiny, **student_options),
            # hub's dinov2_vits14_lc backbone has the student's settings (DINOv2's hubconf: LayerScale 1.0,
            # MLP, no registers, no chunks, offset 0.1) in the small width
            teacher=lambda: HubClassifierStandIn(self.vits.vit_small(**student_options)))
        module = module_class(num_classes=NUM_CLASSES, networks=networks, loss=None,
                              optimizer=partial(self.timm_wrapper, args=OmegaConf.create(optimizer_args)),
                              scheduler=None, scheduler_lightning={"interval": "epoch"}, parameter_groups=None,
                              **method_options)
        return module, optimizer_args

    def collate_options(self) -> dict:
        """The experiment config's collate function settings, for the run's token grid."""
        experiment = self.yaml("configs/R/experiment/proteus_proteus_vit_s_t_torchvision_cifar100.yaml")
        options = experiment["model"]["dataloaders"]["train_collate_fn"]
        grid = IMAGE_SIZE // PATCH_SIZE
        return {"mask_ratio": options["mask_ratio"], "mask_probability": options["mask_probability"],
                "n_tokens": grid * grid, "mask_first_n": options["mask_first_n"],
                "mask_generator": self.collate.RandomMaskingGenerator(input_size=grid),
                "clone_batch": options["clone_batch"]}

    # ---- kdistill's side, as its ImageNet recipe builds it ----
    def build_kdistill(self, method: str) -> tuple[Distiller, OptimConfig]:
        recipe = yaml.safe_load((RECIPES / method / f"{RECIPE_PAIR}.yaml").read_text())
        size = {"img_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}
        student = create_model(recipe["student"], NUM_CLASSES, **{**recipe.get("student_options", {}), **size})
        teacher_name = recipe["teacher"].split(".")[0]  # the architecture; its weights come from the reference
        teacher = create_model(teacher_name, NUM_CLASSES, **{**recipe.get("teacher_options", {}), **size})
        optim = OptimConfig(**recipe["optim"])
        context = MethodContext((3, IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, self.data.labels, optim.lr)
        distiller = build_distiller(recipe["method"], student, teacher, context)
        return distiller, optim

    def run(self, name: str, steps: int, dtype: torch.dtype) -> Comparison:
        method = self.methods[name]
        torch.manual_seed(0)  # built in float32 and then converted: the same initial weights in every dtype
        module, optimizer_args = self.build(method)
        ours, optim = self.build_kdistill(method.method)
        if float(optimizer_args["lr"]) != optim.lr or float(optimizer_args["weight_decay"]) != optim.weight_decay:
            raise RuntimeError(f"the reference's AdamW ({optimizer_args}) is not kdistill's recipe's ({optim})")
        with run_dtype(dtype):
            module.to(dtype)
            ours.to(dtype)
            copy_by_name(module.student.backbone, ours.student.model)
            copy_by_name(module.teacher.backbone, ours.teacher.model)
            for source, target in method.heads.items():
                copy_weights(resolve(module, source), resolve(ours, target))
            batches = [in_dtype(b, dtype) for b in self.data.batches(steps, self.batch_size, strong=False)]
            reference_steps = {"train": self.train_reference(module, optimizer_args, batches, dtype)}
            kdistill_steps = run_kdistill(ours, batches, [], optim.lr, optim=optim)
        terms = {**method.terms, "total": "total"}
        weights = {"student": largest_named_difference(module.student.backbone, ours.student.model)}
        weights.update({target: largest_difference(resolve(module, source), resolve(ours, target))
                        for source, target in method.heads.items()})
        return Comparison(terms, reference_steps, kdistill_steps, weights)

    def train_reference(self, module: nn.Module, optimizer_args: dict, batches: list[dict],
                        dtype: torch.dtype) -> list[dict[str, float]]:
        """Lightning's automatic optimisation of `training_step`, with the optimizer the config builds."""
        optimizer = self.timm_wrapper(OmegaConf.create(optimizer_args), model=module)
        options = self.collate_options()
        random.seed(self.data.seed)  # the masks' draws (they feed only Proteus' zero-weighted patch level)
        np.random.seed(self.data.seed)
        steps = []
        for index, batch in enumerate(batches):
            samples = [(image, int(label)) for image, label in zip(batch["image"], batch["label"])]
            collated = self.collate.collate_data_and_cast_aug(samples, dtype=dtype, **options)
            results = module.training_step(collated, index)
            optimizer.zero_grad()
            results["loss"].backward()
            optimizer.step()
            steps.append({**{key: float(value.detach()) for key, value in results.items() if key != "loss"},
                          "total": float(results["loss"].detach())})
        return steps


def named_pairs(source: nn.Module, target: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The tensors of a DINOv2 ViT and the timm ViT of kdistill's side with the same name; every
    tensor of either side but DINOv2's `mask_token` and timm's classifier head must have its pair."""
    theirs, ours = source.state_dict(keep_vars=True), target.state_dict(keep_vars=True)
    unmatched = {key for key in theirs.keys() ^ ours.keys() if key != "mask_token" and not key.startswith("head.")}
    if unmatched:
        raise RuntimeError(f"no counterpart for {sorted(unmatched)}")
    return [(key, value, ours[key]) for key, value in theirs.items() if key in ours]


def copy_by_name(source: nn.Module, target: nn.Module) -> None:
    with torch.no_grad():
        for key, theirs, ours in named_pairs(source, target):
            if theirs.shape != ours.shape:
                raise RuntimeError(f"{key}: {tuple(theirs.shape)} does not fit {tuple(ours.shape)}")
            ours.copy_(theirs)


def largest_named_difference(source: nn.Module, target: nn.Module) -> dict[str, float | str]:
    """`largest_difference` over the tensors `named_pairs` matches."""
    differences = [{**largest_difference(theirs, ours), "tensor": key}
                   for key, theirs, ours in named_pairs(source, target)]
    return max(differences, key=lambda difference: difference["difference"])
