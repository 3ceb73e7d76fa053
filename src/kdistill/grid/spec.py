"""A grid spec (YAML and/or command-line flags) and its expansion into runs.

    out: runs/grid                       # the grid folder (flag --out wins)
    methods: [kd, dcd+kd]                # names, or a mapping label -> overrides of that entry
    pairs: ["resnet20:resnet8"]          # teacher:student (or [teacher, student])
    seeds: [0, 1, 2]
    overrides: [data.name=embedded, epochs=5]   # every run, before the entry's own
    teachers:                            # optional; a teacher listed here is trained by the grid
      resnet20: [epochs=8]               # (once, first, with these overrides), or given as a path:
      # resnet56: save/models/resnet56_vanilla/ckpt_epoch_240.pth
    teacher_seed: 0
    vanilla: true                        # add each student's vanilla run (the report's baseline)
    recipes: configs/cifar100            # optional: methods x pairs read the generated recipes
                                         # <dir>/<method>/<teacher>_<student>.yaml; or a list of
                                         # recipe files, each run with every seed
    launcher: local                      # and the other launcher options of `kdistill grid`
    slurm: {slurm_account: myaccount}    # extra submitit parameters for --launcher slurm

Run folders: `<out>/<method>/<teacher>_<student>/seed<k>`, `<out>/vanilla/<student>/seed<k>` (a
vanilla student has no teacher, so pairs sharing a student share its runs) and
`<out>/teachers/<teacher>`. A grid of methods x pairs trains each student's vanilla run with the
common overrides (or the generated vanilla recipe) even when `methods` does not list it: the
report's baseline and relative improvement need it (`vanilla: false` / `--no-vanilla`: none; a
recipe folder without `vanilla/` recipes: none).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdistill.config.yaml_file import read_yaml_mapping
from kdistill.errors import KdistillError, missing_path_hint

TEACHERS_DIR = "teachers"
LOGS_DIR = "logs"
REPORT_DIR = "report"
GRID_LOCK = "grid.lock"  # held by the grid that runs in the folder
TEACHER_CACHE_DIR = "teacher_cache"
DTYPE_KEY = "teacher_cache_dtype"
LAUNCHERS = ("local", "slurm", "submitit-local")
# Model-name prefixes that contain the pair separator ':' themselves (timm:<name>, tv:<name>).
MODEL_PREFIXES = ("timm", "tv")
SPEC_KEYS = {"out", "methods", "pairs", "seeds", "overrides", "teachers", "teacher_seed", "vanilla", "recipes",
             "launcher", "jobs", "threads", "gpus_per_run", "partition", "time_min", "cpus_per_run",
             "array_parallelism", "slurm"}


@dataclass
class GridRun:
    """One training of the grid: where it lives, what it trains, and the teacher run it waits for."""

    name: str  # its folder below the grid folder, e.g. kd/resnet20_resnet8/seed0
    folder: Path
    method: str  # the entry's label (a method name unless the spec names it otherwise)
    teacher: str | None
    student: str
    seed: int
    recipe: str | None
    overrides: list[str]
    logs: Path  # the stem of its logs: one file per attempt, <logs>.<attempt>.log
    needs: str | None = None  # name of the grid's teacher run this run reads

    def attempt_log(self, attempt: int) -> Path:
        return self.logs.with_name(f"{self.logs.name}.{attempt}.log")

    def next_log(self) -> Path:
        """The log of the run's next attempt (the first number without a file)."""
        attempt = 1
        while self.attempt_log(attempt).exists():
            attempt += 1
        return self.attempt_log(attempt)

    @property
    def title(self) -> str:
        models = f"{self.teacher}->{self.student}" if self.teacher else self.student
        return f"{self.method} {models} seed {self.seed}"


@dataclass
class GridSpec:
    out: Path
    methods: dict[str, list[str]] = field(default_factory=dict)  # label -> the entry's overrides
    pairs: list[tuple[str, str]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)
    teachers: dict[str, list[str] | str] = field(default_factory=dict)  # overrides to train it, or a path
    teacher_seed: int = 0
    vanilla: bool = True  # add each student's vanilla run to a grid of methods x pairs
    recipe_dir: Path | None = None
    recipe_files: list[Path] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # launcher options (flags win over these)


def model_folder_name(model: str) -> str:
    """timm:resnet18 -> resnet18, as the generated recipes name their files."""
    return model.split(":")[-1]


def parse_pair(text: str | list) -> tuple[str, str]:
    """'teacher:student' (timm:/tv: prefixes kept with their name) or [teacher, student]."""
    if isinstance(text, (list, tuple)):
        parts = [str(part) for part in text]
    else:
        parts, pending = [], ""
        for token in str(text).split(":"):
            if not pending and token in MODEL_PREFIXES:
                pending = token + ":"
                continue
            parts.append(pending + token)
            pending = ""
    if len(parts) != 2 or not all(parts):
        raise KdistillError(f"pair '{text}' is not teacher:student (e.g. resnet32x4:resnet8x4)")
    return parts[0], parts[1]


def _overrides(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
        raise KdistillError(f"{where} must be a list of key=value overrides (e.g. [epochs=5, optim.lr=0.05])")
    return list(value)


def _methods(value: Any) -> dict[str, list[str]]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = value.split()
    if isinstance(value, list):
        return {str(name): [] for name in value}
    if isinstance(value, dict):
        return {str(label): _overrides(entry, f"methods.{label}") for label, entry in value.items()}
    raise KdistillError("methods must be a list of method names or a mapping label -> overrides")


def _teachers(value: Any) -> dict[str, list[str] | str]:
    if value is None:
        return {}
    if isinstance(value, list):  # names only: train each with the common overrides
        return {str(name): [] for name in value}
    if not isinstance(value, dict):
        raise KdistillError("teachers must map a teacher to its training overrides (or to a checkpoint path)")
    return {str(name): entry if isinstance(entry, str) and "=" not in entry else _overrides(entry, f"teachers.{name}")
            for name, entry in value.items()}


def _seeds(value: Any) -> list[int]:
    seeds = value if isinstance(value, list) else [value]
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        raise KdistillError(f"seeds {value!r}: give whole numbers (e.g. seeds: [0, 1, 2] or --seeds 0 1 2)")
    return list(seeds)


def load_spec(spec_file: str | None, flags: dict[str, Any], extra_overrides: list[str] = (),
              train_teachers: bool = False) -> GridSpec:
    """The spec file's values with the command-line flags (those given, not None) on top;
    `extra_overrides` go after the spec's common overrides; `train_teachers` has the grid train
    every pair's teacher that the spec does not list (with the common overrides)."""
    values: dict[str, Any] = {}
    if spec_file is not None:
        path = Path(spec_file)
        if not path.is_file():
            raise KdistillError(f"grid spec '{spec_file}' not found{missing_path_hint(spec_file)}: give the path of a "
                                "grid YAML file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise KdistillError(f"grid spec '{spec_file}' is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise KdistillError(f"grid spec '{spec_file}' must be a mapping of keys ({', '.join(sorted(SPEC_KEYS))})")
        unknown = sorted(set(values) - SPEC_KEYS)
        if unknown:
            raise KdistillError(f"unknown grid spec key(s) {', '.join(unknown)} in '{spec_file}': "
                                f"the keys are {', '.join(sorted(SPEC_KEYS))}")
    values.update({key: value for key, value in flags.items() if value is not None})
    recipes = values.get("recipes") or []
    recipes = [recipes] if isinstance(recipes, str) else [str(item) for item in recipes]
    recipe_dirs = [Path(item) for item in recipes if Path(item).is_dir()]
    recipe_files = [Path(item) for item in recipes if not Path(item).is_dir()]
    missing = [str(path) for path in recipe_files if not path.is_file()]
    if missing or len(recipe_dirs) > 1:
        raise KdistillError(f"recipes: {', '.join(missing) or 'several folders'} — give recipe files, "
                            "or one folder of generated recipes (<dir>/<method>/<teacher>_<student>.yaml)")
    spec = GridSpec(
        out=Path(values.get("out") or "runs/grid"),
        methods=_methods(values.get("methods")),
        pairs=[parse_pair(pair) for pair in values.get("pairs") or []],
        seeds=_seeds(values.get("seeds") or [0]),
        overrides=_overrides(values.get("overrides"), "overrides") + list(extra_overrides),
        teachers=_teachers(values.get("teachers")),
        teacher_seed=int(values.get("teacher_seed", 0)),
        vanilla=bool(values.get("vanilla", True)),
        recipe_dir=recipe_dirs[0] if recipe_dirs else None,
        recipe_files=recipe_files,
        options={key: values[key] for key in SPEC_KEYS - {"out", "methods", "pairs", "seeds", "overrides", "teachers",
                                                          "teacher_seed", "vanilla", "recipes"} if key in values},
    )
    if train_teachers:
        spec.teachers = {**{teacher: [] for teacher, _ in spec.pairs}, **spec.teachers}
    if not spec.recipe_files and not (spec.methods and spec.pairs):
        raise KdistillError("an empty grid: give methods and pairs (--methods kd dcd --pairs resnet20:resnet8), "
                            "or recipe files (--recipes a.yaml b.yaml)")
    if spec.methods and not spec.pairs and not spec.recipe_files:
        raise KdistillError("methods given without pairs: add --pairs teacher:student")
    return spec


def _log_stem(out: Path, name: str) -> Path:
    return out / LOGS_DIR / name.replace("/", "_")


def _recipe(spec: GridSpec, *parts: str) -> str | None:
    """The generated recipe under the spec's recipe folder (an error if it is missing)."""
    if spec.recipe_dir is None:
        return None
    path = spec.recipe_dir.joinpath(*parts)
    if not path.is_file():
        raise KdistillError(f"no recipe '{path}' (recipes are {spec.recipe_dir}/<method>/<teacher>_<student>.yaml): "
                            "generate it with scripts/make_recipes.py or drop the recipes folder")
    return str(path)


def teacher_cache_overrides(out: Path, teacher: str | None, seed: int, recipe: str | None,
                            overrides: list[str]) -> list[str]:
    """Runs that share a teacher and a seed (and the grid's data) share one teacher cache; the cache
    itself refuses a mismatching run. It stores float32 (exact: a grid's run computes what the same
    run alone computes) unless the recipe or the overrides choose teacher_cache_dtype."""
    if teacher is None:
        return []
    cache = [f"teacher_cache={out / TEACHER_CACHE_DIR / f'{model_folder_name(teacher)}_seed{seed}'}"]
    chosen = any(item.startswith(f"{DTYPE_KEY}=") for item in overrides) or (
        recipe is not None and DTYPE_KEY in read_yaml_mapping(Path(recipe)))
    return cache if chosen else [*cache, f"{DTYPE_KEY}=float32"]


def _reads_a_cache(recipe: str | None, overrides: list[str]) -> bool:
    """Whether the run's method reads only what a teacher cache stores (a feature method runs its
    teacher); a configuration that does not load is left to fail as its own run, with the cache."""
    from kdistill.config.loading import load_config

    try:
        return load_config(recipe, overrides).method.spec.reads_teacher_cache
    except KdistillError:
        return True


def _run(spec: GridSpec, name: str, method: str, teacher: str | None, student: str, seed: int,
         recipe: str | None, overrides: list[str], needs: str | None) -> GridRun:
    out = spec.out.resolve()
    folder = out / name
    cache = teacher_cache_overrides(out, teacher, seed, recipe, overrides) if _reads_a_cache(recipe, overrides) else []
    own = [f"seed={seed}", f"out={folder}", "progress=false", *cache]
    return GridRun(name, folder, method, teacher, student, seed, recipe, [*overrides, *own], _log_stem(out, name),
                   needs)


def _teacher_runs(spec: GridSpec, teachers: set[str]) -> dict[str, GridRun]:
    from kdistill.methods import TEACHER_FREE_METHOD

    runs = {}
    for teacher in sorted(teachers):
        entry = spec.teachers.get(teacher)
        if not isinstance(entry, list):
            continue  # given as a checkpoint path, or not in the spec: the grid does not train it
        recipe = _recipe(spec, TEACHERS_DIR, f"{model_folder_name(teacher)}.yaml") if spec.recipe_dir else None
        model = [] if recipe else [f"student={teacher}", f"method.name={TEACHER_FREE_METHOD}"]
        runs[teacher] = _run(spec, f"{TEACHERS_DIR}/{model_folder_name(teacher)}", "teacher", None, teacher,
                             spec.teacher_seed, recipe, [*model, *spec.overrides, *entry], None)
    return runs


def _teacher_checkpoint(spec: GridSpec, teacher: str | None, teacher_runs: dict[str, GridRun]) -> list[str]:
    if teacher in teacher_runs:
        return [f"teacher_checkpoint={teacher_runs[teacher].folder}"]
    if isinstance(spec.teachers.get(teacher), str):
        return [f"teacher_checkpoint={spec.teachers[teacher]}"]
    return []  # the recipe's or the overrides' own teacher_checkpoint


def _recipe_models(path: Path) -> tuple[str, str | None, str]:
    """Method name, teacher and student of a recipe file (for its run folder's name)."""
    from kdistill.config.loading import load_config

    cfg = load_config(str(path))
    return cfg.method.name, cfg.teacher if cfg.method.spec.needs_teacher else None, cfg.student


def _method_name(label: str, overrides: list[str]) -> str:
    """The method an entry runs: its `method.name=` override, else its label."""
    names = [item.split("=", 1)[1] for item in overrides if item.startswith("method.name=")]
    return names[-1] if names else label


def expand(spec: GridSpec) -> list[GridRun]:
    """Every run of the grid: the teachers it trains first, then the students, in spec order."""
    # Imported here: `kdistill grid --help` (which reads LAUNCHERS) needs no method registry, nor torch.
    from kdistill.methods import TEACHER_FREE_METHOD, method_class

    entries: list[tuple[str, str | None, str, str | None, list[str]]] = []  # label, teacher, student, recipe, overrides
    for path in spec.recipe_files:
        method, teacher, student = _recipe_models(path)
        entries.append((method, teacher, student, str(path), list(spec.overrides)))
    methods = dict(spec.methods)
    # The report's baseline: each student's vanilla run, listed or not (a recipe folder without
    # vanilla recipes, such as configs/imagenet, has none to give).
    if spec.vanilla and methods and (spec.recipe_dir is None or (spec.recipe_dir / TEACHER_FREE_METHOD).is_dir()):
        methods.setdefault(TEACHER_FREE_METHOD, [])
    for label, method_overrides in methods.items():
        for teacher, student in spec.pairs:
            vanilla = not method_class(_method_name(label, method_overrides)).needs_teacher
            if vanilla and any(entry[1] is None and entry[2] == student for entry in entries):
                continue  # one teacher-free run per student, whichever pairs it appears in
            # the generated vanilla recipes are named by pair too (the first pair of the student is used)
            recipe = _recipe(spec, label, f"{model_folder_name(teacher)}_{model_folder_name(student)}.yaml")
            models = [] if recipe else [f"student={student}", *([] if vanilla else [f"teacher={teacher}"])]
            name_override = [] if recipe or _method_name(label, method_overrides) != label else [f"method.name={label}"]
            entries.append((label, None if vanilla else teacher, student, recipe,
                            [*models, *name_override, *spec.overrides, *method_overrides]))
    teacher_runs = _teacher_runs(spec, {teacher for _, teacher, _, _, _ in entries if teacher})
    runs = list(teacher_runs.values())
    for label, teacher, student, recipe, overrides in entries:
        pair = f"{model_folder_name(teacher)}_{model_folder_name(student)}" if teacher else model_folder_name(student)
        needs = teacher_runs[teacher].name if teacher in teacher_runs else None
        for seed in spec.seeds:
            runs.append(_run(spec, f"{label}/{pair}/seed{seed}", label, teacher, student, seed, recipe,
                             [*overrides, *_teacher_checkpoint(spec, teacher, teacher_runs)], needs))
    names = [run.name for run in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise KdistillError(f"the grid names run folder(s) {', '.join(repeated)} twice: give each method entry "
                            "(or recipe) its own label, method or pair")
    return runs
