"""Write the YAML recipes under configs/ (run from the repository root; the files are generated,
not edited by hand: change this script and run it again)."""

from pathlib import Path

import yaml

from kdistill.methods import method_class
from kdistill.models.cifar_teachers import CIFAR100_TEACHERS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# The 13 teacher -> student pairs of the seed papers' CIFAR-100 Tables 1 and 2.
CIFAR100_PAIRS = [
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
]

# The tables train these students at learning rate 0.01 instead of 0.05.
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
# FT's paraphraser trains at 0.01 under the benchmark's CIFAR ResNet and WRN students (the run's rate otherwise).
FT_SMALL_INIT_LR_STUDENTS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                             "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")


def run_folder(path: str) -> str:
    """A recipe's `out`: a folder per seed (OmegaConf resolves `${seed}`), so `seed=1` on the command
    line writes beside seed 0 instead of into its folder."""
    return f"{path}/seed${{seed}}"


def method_section(name: str, **options) -> dict:
    """A recipe's method section: the method's table weights, read from its class so there is one
    copy, written out so a recipe shows what it runs; then its options."""
    return {"name": name, **method_class(name).default_weights, **options}


CIFAR100_METHODS = {
    "vanilla": method_section("vanilla"),
    "kd": method_section("kd", temperature=4.0),
    "dcd": method_section("dcd"),
    "dcd+kd": method_section("dcd+kd", temperature=4.0),
    "crd": method_section("crd"),
    "crd+kd": method_section("crd+kd", temperature=4.0),
    "crld": method_section("crld", temperature=4.0, weak_threshold=0.9, strong_threshold=0.2,
                           within_view_weight=2.0, cross_view_weight=0.5),
}
# The tables' other baselines at their table weights; AB, FT and FSP open with their initialisation stage.
CIFAR100_METHODS.update({name: method_section(name, **({"init_epochs": 30} if name in ("ab", "ft", "fsp") else {}))
                         for name in ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst")})
# FSP needs equal channel counts stage by stage, so the tables run it on these pairs only.
CIFAR100_METHOD_PAIRS = {"fsp": [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
                                 ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]}

# The logit family (DKD, logit standardisation, MLKD) and CRLD on DKD; the settings that vary by
# pair come from the references' recipes (pair_section, pair_training).
CIFAR100_METHODS.update({
    "dkd": method_section("dkd", temperature=4.0, alpha=1.0, beta=8.0, warmup=20),
    "kd+ls": method_section("kd+ls", temperature=2.0, logit_standardize=True),
    "dkd+ls": method_section("dkd+ls", temperature=2.0, alpha=9.0, beta=72.0, warmup=20, logit_standardize=True),
    "mlkd": method_section("mlkd", temperature=4.0, extra_temperatures=[3.0, 5.0, 2.0, 6.0]),
    "crld+dkd": method_section("crld+dkd", temperature=4.0, weak_threshold=0.9, strong_threshold=0.2,
                               within_view_weight=2.0, cross_view_weight=0.5, alpha=1.0, beta=8.0, warmup=20),
    # DIST: its authors' CIFAR config (dist_cifar.yaml: CE 1, DIST(beta 1, gamma 1, tau 4) under weight 2).
    "dist": method_section("dist", temperature=4.0, beta=2.0, gamma=2.0),
})
# The DCD authors' code base's feature methods (giakoumoglou/distillers, from DefangChen/SimKD), with
# its scripts' weights (run_distill.sh) and option defaults (train_student.py).
CIFAR100_METHODS.update({
    "simkd": method_section("simkd", factor=2),
    "srrl": method_section("srrl", temperature=4.0),
    "rrd": method_section("rrd"),
    "rrd+kd": method_section("rrd+kd", temperature=4.0),
    "semckd": method_section("semckd", temperature=4.0, attention_scale=1.0),
})
# CTKD on KD, DKD and DIST: each one's recipe with the temperature learned as the CTKD code's CIFAR
# script does (global, T = 1 + 20 sigmoid(raw), reversal 0 -> 1 over 10 epochs); no fixed temperature.
CTKD_OPTIONS = {"curriculum_temperature": True, "instance_temperature": False, "temperature_min": 1.0,
                "temperature_range": 20.0, "reversal_start": 0.0, "reversal_end": 1.0, "reversal_epochs": 10}
CIFAR100_METHODS.update({
    f"{base}+ctkd": {key: value for key, value in {**CIFAR100_METHODS[base], "name": f"{base}+ctkd",
                                                  **CTKD_OPTIONS}.items() if key != "temperature"}
    for base in ("kd", "dkd", "dist")
})
# DKD's NCKD weight in mdistiller's CIFAR-100 recipes (8 elsewhere); the LS code multiplies it by its KD weight.
DKD_BETA = {("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("resnet110", "resnet20"): 2.0,
            ("vgg13", "MobileNetV2"): 6.0, ("vgg13", "vgg8"): 6.0, ("wrn_40_2", "wrn_16_2"): 6.0,
            ("wrn_40_2", "wrn_40_1"): 6.0}
LS_KD_WEIGHT = 9.0  # the LS code's --kd-weight; for DKD+LS it multiplies alpha and beta
# KD+LS (base temperature, KD weight) where the LS paper's logs differ from (2, 9); ResNet50 ->
# MobileNetV2's published result is the log "kd,ResNet50,MobileNetV2,3,1".
LS_KD_SETTINGS = {("vgg13", "vgg8"): (3.0, 9.0), ("vgg13", "MobileNetV2"): (3.0, 9.0),
                  ("ResNet50", "MobileNetV2"): (3.0, 1.0)}
CIFAR100_NOTES = {("kd+ls", ("ResNet50", "MobileNetV2")): "w_kd 1 and T 3: the LS paper's published result for "
                                                          "this pair is its log kd,ResNet50,MobileNetV2,3,1"}
# MLKD's (learning rate, epochs) in its authors' configs (0.025 and 240 elsewhere; the step
# milestones stay at 150/180/210 in its 480-epoch configs too).
MLKD_TRAINING = {("resnet32x4", "ShuffleV1"): (0.01, 480), ("resnet32x4", "ShuffleV2"): (0.01, 480),
                 ("wrn_40_2", "ShuffleV1"): (0.0025, 480), ("vgg13", "MobileNetV2"): (0.0025, 480),
                 ("ResNet50", "MobileNetV2"): (0.0025, 480)}

# ReviewKD at mdistiller's settings (CE 1, warm-up 20 epochs); its weight per pair as the authors'
# CIFAR-100 script (dvlab-research/ReviewKD, CIFAR-100/script/reviewKD.sh, which mdistiller's
# reviewkd.yaml repeats for resnet32x4 -> resnet8x4), mdistiller's default 1 for the pairs it leaves out.
CIFAR100_METHODS["reviewkd"] = method_section("reviewkd", warmup=20)
REVIEWKD_WEIGHT = {("wrn_40_2", "wrn_16_2"): 5.0, ("wrn_40_2", "wrn_40_1"): 5.0, ("wrn_40_2", "ShuffleV1"): 5.0,
                   ("resnet32x4", "resnet8x4"): 5.0, ("resnet32x4", "ShuffleV1"): 5.0,
                   ("resnet32x4", "ShuffleV2"): 8.0, ("resnet56", "resnet20"): 0.6, ("resnet110", "resnet32"): 1.0}
CIFAR100_NOTES.update({("reviewkd", pair): f"w_method {weight}: the ReviewKD authors' weight for this pair "
                                           "(their CIFAR-100 script/reviewKD.sh)"
                       for pair, weight in REVIEWKD_WEIGHT.items() if weight != 1.0})

# OFD at mdistiller's CIFAR-100 settings (its ofd.yaml: CE 1, feature weight 0.001, 1x1 connectors).
CIFAR100_METHODS["ofd"] = method_section("ofd", connector_kernel_size=1)

# KDSVD at mdistiller's CIFAR-100 settings (CE 1, feature weight 1, k 1); it aligns singular vectors
# over channels, so it runs on the pairs of equal stage widths, FSP's.
CIFAR100_METHODS["kdsvd"] = method_section("kdsvd", k=1)
CIFAR100_METHOD_PAIRS["kdsvd"] = CIFAR100_METHOD_PAIRS["fsp"]

# Registered methods with no CIFAR-100 recipe, and why. tests/test_recipes.py reads the registry: a
# method needs an entry in CIFAR100_METHODS (its recipes) or a line here.
NO_KD_TABLE_ROW = "the method with Hinton's KD term added: the tables report no CIFAR-100 row for it"
NO_CIFAR100_RECIPES = {
    **dict.fromkeys(("ab+kd", "at+kd", "cc+kd", "fitnet+kd", "fsp+kd", "ft+kd", "nst+kd", "pkt+kd", "rkd+kd",
                     "sp+kd", "vid+kd", "dist+kd", "crld+kd", "crld+dkd+kd", "crld+dcd+kd", "crld+dist+kd"),
                    NO_KD_TABLE_ROW),
    **dict.fromkeys(("icd", "icd+kd", "crld+icd", "crld+icd+kd"), "an alias of the dcd method of the same name"),
    **dict.fromkeys(("crld+dcd", "crld+dist"), "a composition offered without published CIFAR-100 settings"),
    **dict.fromkeys(("tintem", "proteus"), "label-free: ViT recipes on ImageNet and embedded recipes"),
    "deit": "ViT students only: its recipe is DeiT's ImageNet one (imagenet/deit/)",
}

CIFAR100_DATA = {"name": "cifar100", "root": "./data/cifar100", "batch_size": 64}
TABLE_SCHEDULE = {"epochs": 240, "schedule": {"name": "step", "milestones": [150, 180, 210], "gamma": 0.1}}


def teacher_weights(teacher: str) -> dict:
    """The tables' teachers are the published ones (mdistiller's archive, fetched once into the
    cache by teacher_pretrained); teacher_checkpoint= on the command line wins over it."""
    if teacher not in CIFAR100_TEACHERS:
        raise ValueError(f"teacher {teacher} of a CIFAR-100 pair has no published weights")
    return {"teacher_pretrained": True}


Pair = tuple[str, str]  # (teacher, student)


def dkd_beta(pair: Pair) -> float:
    return DKD_BETA.get(pair, 8.0)


# What a method's recipe changes by pair, as the references' recipes do: method -> pair -> the
# method section's changes (one line a method; the rest of a section is its CIFAR100_METHODS entry).
PAIR_OPTIONS = {
    "dkd": lambda pair: {"beta": dkd_beta(pair)},
    "crld+dkd": lambda pair: {"beta": dkd_beta(pair)},
    "dkd+ctkd": lambda pair: {"beta": dkd_beta(pair)},
    "dkd+ls": lambda pair: {"beta": LS_KD_WEIGHT * dkd_beta(pair)},
    "kd+ls": lambda pair: dict(zip(("temperature", "w_kd"), LS_KD_SETTINGS.get(pair, (2.0, LS_KD_WEIGHT)))),
    "reviewkd": lambda pair: {"w_method": REVIEWKD_WEIGHT.get(pair, 1.0)},
    "ft": lambda pair: {"init_lr": 0.01} if pair[1] in FT_SMALL_INIT_LR_STUDENTS else {},
}
# A method's own learning rate and epochs by pair, where its authors' configs set them.
PAIR_TRAINING = {
    "mlkd": lambda pair: dict(zip(("lr", "epochs"), MLKD_TRAINING.get(pair, (0.025, 240)))),
}


def pair_section(method: str, teacher: str, student: str) -> dict:
    """The method section of `method`'s recipe for the pair, with its per-pair settings."""
    return {**CIFAR100_METHODS[method], **PAIR_OPTIONS.get(method, lambda pair: {})((teacher, student))}


def pair_training(method: str, teacher: str, student: str) -> dict:
    """Learning rate and schedule: the tables' (lr 0.01 for SMALL_LR_STUDENTS), or the method's own."""
    own = PAIR_TRAINING.get(method, lambda pair: {})((teacher, student))
    lr = own.get("lr", 0.01 if student in SMALL_LR_STUDENTS else 0.05)
    return {"optim": {"lr": lr}, **TABLE_SCHEDULE, "epochs": own.get("epochs", TABLE_SCHEDULE["epochs"])}


def cifar100_recipes() -> dict[Path, dict]:
    recipes = {}
    for teacher in sorted({t for t, _ in CIFAR100_PAIRS}):
        recipes[Path("cifar100/teachers") / f"{teacher}.yaml"] = {
            "student": teacher, "method": CIFAR100_METHODS["vanilla"], "data": CIFAR100_DATA,
            "optim": {"lr": 0.05}, **TABLE_SCHEDULE, "out": run_folder(f"runs/cifar100/teachers/{teacher}"),
        }
    for method in CIFAR100_METHODS:
        for teacher, student in CIFAR100_METHOD_PAIRS.get(method, CIFAR100_PAIRS):
            recipe = {"student": student, "method": pair_section(method, teacher, student), "data": CIFAR100_DATA,
                      **pair_training(method, teacher, student),
                      "out": run_folder(f"runs/cifar100/{method}/{teacher}_{student}")}
            if method_class(method).needs_teacher:
                recipe = {"teacher": teacher, **teacher_weights(teacher), **recipe}
            if note := CIFAR100_NOTES.get((method, (teacher, student))):
                recipe["note"] = note
            recipes[Path("cifar100") / method / f"{teacher}_{student}.yaml"] = recipe
    return recipes


def short_name(model: str) -> str:
    """A model's name without its library prefix and weights tag: tv:resnet34:IMAGENET1K_V1 -> resnet34."""
    return model.split(":")[1] if ":" in model else model


# ImageNet recipes. The teachers are torchvision's ImageNet weights, fetched and cached by torchvision
# (teacher_pretrained); the V1 weights are the ones the papers' teachers are (73.3% / 76.1% top-1).
# data.root holds train/ and val/.
IMAGENET_PAIRS = [("tv:resnet34:IMAGENET1K_V1", "tv:resnet18"), ("tv:resnet50:IMAGENET1K_V1", "timm:mobilenetv1_100")]
IMAGENET_DATA = {"name": "imagefolder", "root": "./data/imagenet"}
STEP_SCHEDULE_30_60_90 = {"name": "step", "milestones": [30, 60, 90], "gamma": 0.1}
# The mdistiller family's ImageNet setting (CRLD, DKD): batch 512, lr 0.2, 100 epochs.
MDISTILLER_IMAGENET_TRAINING = {"data": {**IMAGENET_DATA, "batch_size": 512},
                                "optim": {"lr": 0.2, "weight_decay": 1e-4}, "epochs": 100,
                                "schedule": STEP_SCHEDULE_30_60_90}
# DCD's ImageNet setting, also for its baselines (giakoumoglou/distillers, imagenet/README.md's command
# and imagenet/train_student.py): batch 256, 120 epochs, SGD lr 0.1 (momentum 0.9) x0.1 at 30/60/90,
# weight decay 1e-4; CE weight 1, KD weight 1 where KD is on, T = 4.
DCD_IMAGENET_TRAINING = {"data": {**IMAGENET_DATA, "batch_size": 256}, "optim": {"lr": 0.1, "weight_decay": 1e-4},
                         "epochs": 120, "schedule": STEP_SCHEDULE_30_60_90}
DCD_IMAGENET_METHODS = {
    "dcd": method_section("dcd"),
    "dcd+kd": method_section("dcd+kd", temperature=4.0),
    "kd": {**method_section("kd", temperature=4.0), "w_ce": 1.0, "w_kd": 1.0},
    "crd": method_section("crd"),
    "simkd": method_section("simkd", factor=2),  # the command of that README is SimKD's own
}
# DIST's ImageNet setting (its authors' configs/strategies/distill/resnet_dist.yaml, run on 8 GPUs):
# batch 256 (32 x 8), SGD lr 0.1, x0.1 every 30 of 100 epochs, weight decay 1e-4; CE 1, DIST(1, 1, tau 1)
# under KD weight 2, so beta = gamma = 2.
DIST_IMAGENET_TRAINING = {"data": {**IMAGENET_DATA, "batch_size": 256}, "optim": {"lr": 0.1, "weight_decay": 1e-4},
                          "epochs": 100, "schedule": STEP_SCHEDULE_30_60_90}
IMAGENET_METHODS = {  # method -> ({pair -> method section}, training setting)
    "dist": ({pair: {**CIFAR100_METHODS["dist"], "temperature": 1.0} for pair in IMAGENET_PAIRS},
             DIST_IMAGENET_TRAINING),
    "crld": ({pair: {**CIFAR100_METHODS["crld"], "w_ce": 2.0, "temperature": 1.0} for pair in IMAGENET_PAIRS},
             MDISTILLER_IMAGENET_TRAINING),
    "dkd": ({pair: {**CIFAR100_METHODS["dkd"], "temperature": 1.0, "beta": beta, "warmup": 1}
             for pair, beta in zip(IMAGENET_PAIRS, (0.5, 2.0), strict=True)}, MDISTILLER_IMAGENET_TRAINING),
    **{method: ({pair: section for pair in IMAGENET_PAIRS}, DCD_IMAGENET_TRAINING)
       for method, section in DCD_IMAGENET_METHODS.items()},
}
IMAGENET_NOTES = {"dist": "T 1, beta = gamma = 2: DIST's ImageNet config (its loss at 1, 1, 1 under KD weight 2)",
                  "crld": "w_ce 2 and T 1: CRLD's ImageNet setting (its paper and code)",
                  "dkd": "T 1, warm-up 1 epoch, beta 0.5 (ResNet-34 -> ResNet-18) or 2 (ResNet-50 -> "
                         "MobileNetV1): mdistiller's ImageNet DKD recipes",
                  "kd": "w_ce 1 and w_kd 1: the ImageNet KD baseline of the DCD authors' script (CE 1, KD 1, T 4)"}
# data.batch_size is per process: the recipes give the papers' global batch for one process.
GLOBAL_BATCH_NOTE = "data.batch_size is per process: with N processes set data.batch_size={batch}/N"


def imagenet_recipes() -> dict[Path, dict]:
    recipes = {}
    for method, (sections, training) in IMAGENET_METHODS.items():
        for (teacher, student), section in sections.items():
            pair = f"{short_name(teacher)}_{short_name(student)}"
            recipes[Path("imagenet") / method / f"{pair}.yaml"] = {
                COMMENT: GLOBAL_BATCH_NOTE.format(batch=training["data"]["batch_size"]),
                "teacher": teacher, "teacher_pretrained": True, "student": student, "method": section,
                **training, "out": run_folder(f"runs/imagenet/{method}/{pair}"),
                **({"note": IMAGENET_NOTES[method]} if method in IMAGENET_NOTES else {}),
            }
    return recipes


# Label-free recipes: TinTeM and its Proteus baseline. ImageNet: the reference's (the cospress code's
# configs: R/proteus.yaml with model/augmentations/224px_proteus_train.yaml, optimizer/adamw_proteus.yaml,
# scheduler/cosine_proteus.yaml, networks/proteus_vit_s_t.yaml) DINOv2 ViT-S/14 teacher -> ViT-Ti/14
# student at 224 px. The teacher is timm's DINOv2 weights (teacher_pretrained); dynamic_img_size resamples
# its 518 px position embedding to the input's grid. The student is DINOv2's ViT-Ti/14 as the reference
# builds it: LayerScale init 1.0, 16x16 patches of 14 px at 224. The embedded recipes run here, with the
# lighter standard augmentation; their teacher is the embedded teacher recipe's run.
LABEL_FREE_METHODS = ("tintem", "proteus")
LABEL_FREE_VIT = {
    "teacher": "timm:vit_small_patch14_dinov2.lvd142m", "teacher_options": {"dynamic_img_size": True},
    "teacher_pretrained": True,
    "student": "timm:vit_tiny_patch16_224",
    "student_options": {"patch_size": 14, "img_size": 224, "init_values": 1.0, "dynamic_img_size": True},
}
LABEL_FREE_VIT_DATA = {
    **IMAGENET_DATA, "batch_size": 1024, "image_size": 224,
    # DeiT's augmentation as the reference's timm transform factory builds it, and repeated augmentation.
    "train_transform": "deit", "rand_augment": "rand-m9-mstd0.5-inc1", "color_jitter": 0.3, "random_erasing": 0.25,
    "interpolation": "bicubic", "repeated_augment": 3,
    # The reference's evaluation: resize to 224 / 0.875 (bicubic), center-crop 224, ImageNet mean/std.
    "eval_crop_pct": 0.875, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}
LABEL_FREE_VIT_TRAINING = {
    "optim": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.05}, "epochs": 300,
    "schedule": {"name": "cosine", "warmup_epochs": 5, "warmup_lr": 1e-6, "min_lr": 1e-5}, "precision": "bf16",
}
EMBEDDED_TRAINING = {"data": {"name": "embedded", "batch_size": 128}, "optim": {"lr": 0.05}, "epochs": 10,
                     "schedule": {"name": "cosine"}}


def label_free_recipes() -> dict[Path, dict]:
    recipes = {Path("embedded/teachers/resnet20.yaml"): {
        "student": "resnet20", "method": CIFAR100_METHODS["vanilla"], **EMBEDDED_TRAINING,
        "out": run_folder("runs/embedded/teachers/resnet20"),
    }}
    for method in LABEL_FREE_METHODS:
        recipes[Path("imagenet") / method / "vit_small14_vit_tiny14.yaml"] = {
            COMMENT: GLOBAL_BATCH_NOTE.format(batch=LABEL_FREE_VIT_DATA["batch_size"]),
            **LABEL_FREE_VIT, "method": method_section(method), "data": LABEL_FREE_VIT_DATA,
            **LABEL_FREE_VIT_TRAINING, "out": run_folder(f"runs/imagenet/{method}/vit_small14_vit_tiny14"),
        }
        recipes[Path("embedded") / method / "resnet20_resnet8.yaml"] = {
            "teacher": "resnet20", "teacher_checkpoint": "runs/embedded/teachers/resnet20/seed0",
            "student": "resnet8", "method": method_section(method), **EMBEDDED_TRAINING,
            "out": run_folder(f"runs/embedded/{method}/resnet20_resnet8"),
        }
    return recipes


# DeiT (facebookresearch/deit main.py's defaults, its paper's Table 9 and its README's DeiT-S command,
# 4 GPUs x 256): DeiT-S distilled <- RegNetY-16GF, hard distillation, batch 1024, AdamW lr 5e-4 x 1024 / 512,
# weight decay 0.05 (none on biases, norms, the position embedding and the tokens: timm's create_optimizer),
# 300 epochs cosine from 5 warm-up epochs at 1e-6 to 1e-5, drop path 0.1, label smoothing 0.1, DeiT's
# augmentation with repeated augmentation, AMP with loss scaling. The teacher is timm's copy of DeiT's
# RegNetY-16GF weights (82.9% top-1).
DEIT_RECIPE = {
    "teacher": "timm:regnety_160.deit_in1k", "teacher_pretrained": True,
    "student": "timm:deit_small_distilled_patch16_224", "student_options": {"drop_path_rate": 0.1},
    "method": method_section("deit", distillation="hard", label_smoothing=0.1),
    "data": {**LABEL_FREE_VIT_DATA, "batch_size": 1024},
    "optim": {"name": "adamw", "lr": 5e-4 * 1024 / 512, "weight_decay": 0.05, "model_no_weight_decay": True},
    "epochs": 300, "schedule": LABEL_FREE_VIT_TRAINING["schedule"], "precision": "fp16",
    "note": "DeiT-S distilled (81.2% top-1 in DeiT's table at 300 epochs) without DeiT's mixup 0.8 and CutMix "
            "1.0, which kdistill does not have, nor its model EMA (an evaluation copy)",
}


def deit_recipes() -> dict[Path, dict]:
    return {Path("imagenet/deit/regnety160_deit_small.yaml"): {
        COMMENT: GLOBAL_BATCH_NOTE.format(batch=DEIT_RECIPE["data"]["batch_size"]), **DEIT_RECIPE,
        "out": run_folder("runs/imagenet/deit/regnety160_deit_small")}}


COMMENT = "__comment__"  # a recipe's note, written as a YAML comment under the header


def main() -> None:
    recipes = {**cifar100_recipes(), **imagenet_recipes(), **label_free_recipes(), **deit_recipes()}
    for relative, recipe in recipes.items():
        path = CONFIGS / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        note = recipe.pop(COMMENT, None)
        header = "# generated by scripts/make_recipes.py\n" + (f"# {note}\n" if note else "")
        path.write_text(header + yaml.safe_dump(recipe, sort_keys=False))
    print(f"wrote {len(recipes)} recipes under {CONFIGS}")


if __name__ == "__main__":
    main()
