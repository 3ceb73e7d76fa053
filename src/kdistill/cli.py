"""The `kdistill` command. Every option is a config key: `--config FILE` plus `key=value` overrides."""

import argparse
import importlib
import inspect
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdistill.errors import KdistillError, RunStopped

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only in the command that needs them
    from kdistill.run_folder import RunResults

EPILOG = """options are config keys given as key=value, e.g.
  kdistill train student=resnet32x4 data.name=cifar100 data.root=./data/cifar100 out=runs/t
  kdistill distill --config configs/cifar100/kd/resnet32x4_resnet8x4.yaml seed=1
keys: `kdistill config [--method NAME]` lists every one with its default (student, teacher, teacher_checkpoint,
method.name, method.<option>, data.name, data.root, epochs, optim.lr, schedule.name, device, precision, compile,
teacher_cache, out, resume, seed, ...)"""


# A config override: a dotted key, '=', a value. A path such as runs/lr=0.1 is not one (its "key"
# holds a '/'); give a folder named like a key as ./name=value.
OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (not the whole usage), exit 2, as every other
    bad input of kdistill; its subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` shows the options)\n")


def is_override(token: str) -> bool:
    return OVERRIDE.match(token) is not None


def split_overrides(parser: argparse.ArgumentParser, tokens: list[str]) -> tuple[list[str], list[str]]:
    """(the tokens for `parser`, the key=value overrides among them, in order).

    A key=value token is an override wherever it stands, also after a list option (`--severities 3
    progress=false`): it is never a list's value. Only the value of an option that takes exactly
    one (`--out x=1.png`) is left to the option."""
    # argparse has no public list of its options; nargs None is an option taking one value.
    single_value = {flag for action in parser._actions if action.nargs is None for flag in action.option_strings}
    kept, overrides = [], []
    value_expected = False
    for token in tokens:
        if not value_expected and is_override(token):
            overrides.append(token)
            continue
        kept.append(token)
        value_expected = not value_expected and token in single_value
    return kept, overrides


def parse_with_overrides(parser: argparse.ArgumentParser, tokens: list[str]) -> argparse.Namespace:
    """Parse `tokens` with the key=value overrides taken out first; they go to `overrides`."""
    kept, overrides = split_overrides(parser, tokens)
    args = parser.parse_args(kept)
    if not hasattr(args, "overrides"):
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)} (this command takes no key=value)")
        return args
    args.overrides = [*args.overrides, *overrides]  # a stray token without '=' fails in load_config, named
    return args


def _add_overrides(parser: argparse.ArgumentParser, help_text: str = "config overrides, anywhere on the line") -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help_text)


def _add_run_arguments(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
    parser.add_argument("--config", help="YAML recipe; key=value overrides apply on top")
    if resumable:
        parser.add_argument("--resume", action="store_true", help="continue the run in out= from its last checkpoint")
    _add_overrides(parser)


def _run_config(args: argparse.Namespace, extra: list[str] = ()):
    from kdistill.config.loading import load_config

    overrides = list(extra) + list(args.overrides) + (["resume=true"] if getattr(args, "resume", False) else [])
    return load_config(args.config, overrides)


# The training commands load the configuration before they import the engine: a mistyped key is
# reported before the heavy imports.

def command_train(args: argparse.Namespace) -> None:
    cfg = _run_config(args)
    from kdistill.engine import train_run

    if cfg.method.spec.needs_teacher:
        raise KdistillError(f"`kdistill train` trains without a teacher; for method '{cfg.method.name}' "
                            "use `kdistill distill`")
    _print_results(train_run(cfg))


def command_distill(args: argparse.Namespace) -> None:
    cfg = _run_config(args)
    from kdistill.engine import train_run

    if not cfg.method.spec.needs_teacher:
        raise KdistillError("`kdistill distill` needs a distillation method: set method.name=kd "
                            "(or another, see `kdistill list`)")
    _print_results(train_run(cfg))


def command_cache(args: argparse.Namespace) -> None:
    cfg = _run_config(args)
    from kdistill.engine import fill_teacher_cache

    cache, filled = fill_teacher_cache(cfg)
    print(f"teacher cache {cache.folder}: epochs 1-{cfg.epochs} of view(s) {', '.join(cache.views)} ready "
          f"({filled} epoch files computed now)")


def _print_results(results: "RunResults") -> None:
    print(f"{results.method} {results.student}: top-1 last {results.top1_last:.2f}, "
          f"best {results.top1_best:.2f} (epoch {results.best_epoch}), time {results.train_time_s:.0f}s")


# ---- the evaluation commands: one table -------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """An option that sets the runner's keyword argument `parameter`; when it is not given the
    runner's own default applies, and `--help` shows that default."""

    flag: str
    parameter: str
    help: str
    type: Callable[[str], object] = str
    nargs: str | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EvalCommand:
    """`kdistill <name> TARGET [options] [key=value ...]` runs `module.runner(target, overrides,
    **options)` and prints `module.formatter(report)`."""

    name: str
    help: str
    module: str
    runner: str
    formatter: str
    options: tuple[Option, ...] = ()
    second_data: str | None = None  # the prefix of a second data set's keys (probe.*, ood.*, knn.*)
    many_targets: bool = False  # the runner takes a list of targets

    def function(self, name: str) -> Callable:
        return getattr(importlib.import_module(self.module), name)

    def default(self, parameter: str):
        return inspect.signature(self.function(self.runner)).parameters[parameter].default


WHICH = Option("--which", "which", "which weights of a run folder", choices=("last", "best"))
CORRUPTION_OPTIONS = (
    Option("--corruptions", "corruptions", "corruptions to apply", nargs="+"),
    Option("--severities", "severities", "severities of 1..5", type=int, nargs="+"),
)

EVAL_COMMANDS = (
    EvalCommand("eval", "top-1/top-5 of a run folder or a weight file", "kdistill.eval.run", "evaluate_target",
                "format_eval"),
    EvalCommand("probe", "linear probe of frozen features on another data set (transfer)", "kdistill.eval.probe",
                "run_probe", "format_probe",
                (Option("--weight-decay", "weight_decay", "L2 weight of the linear classifier", float),
                 Option("--max-iter", "max_iter", "L-BFGS iterations", int)), second_data="probe"),
    EvalCommand("correlate", "teacher/student inter-class correlation difference, heat map",
                "kdistill.eval.correlation", "run_correlate", "format_correlate",
                (Option("--out", "out", "PNG path (default: beside a single run, else ./correlation.png)"),),
                many_targets=True),
    EvalCommand("faithfulness", "agreement, KL, CKA of a student with its teacher", "kdistill.eval.faithfulness",
                "run_faithfulness", "format_faithfulness", CORRUPTION_OPTIONS),
    EvalCommand("ood", "OOD detection (AUROC, FPR95): max-softmax, energy, 1-NN feature similarity",
                "kdistill.eval.ood", "run_ood", "format_ood", second_data="ood"),
    EvalCommand("robustness", "accuracy under CIFAR-C-style corruptions", "kdistill.eval.robustness",
                "run_robustness", "format_robustness", CORRUPTION_OPTIONS),
    EvalCommand("knn", "weighted kNN accuracy on frozen features", "kdistill.eval.knn", "run_knn", "format_knn",
                (Option("--k", "ks", "neighbour counts", int, "+"),
                 Option("--temperature", "temperature", "T of the exp(similarity / T) vote weights", float)),
                second_data="knn"),
)

TARGET_HELP = ("a run folder, or a .pth file (then give student=<model> and data.name=...; "
               "teacher= and teacher_checkpoint= where a teacher takes part)")
OVERRIDES_HELP = ("config overrides, anywhere on the line (student=, teacher=, teacher_checkpoint=, data.*, "
                  "device=, progress=false)")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


class _HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default, read from its runner when the help is shown (so building the
    parser imports no evaluation module)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        source = getattr(action, "default_from", None)
        if source is None:
            return action.help
        command, parameter = source
        default = command.default(parameter)
        return action.help if default is None else f"{action.help} (default: {_shown(default)})"


def _add_eval_command(commands, command: EvalCommand) -> None:
    parser = commands.add_parser(command.name, help=command.help, formatter_class=_HelpFormatter)
    if command.many_targets:
        parser.add_argument("targets", nargs="+", metavar="target", help=TARGET_HELP + " (one heat-map panel each)")
    else:
        parser.add_argument("target", help=TARGET_HELP)
    for option in (WHICH, *command.options):
        action = parser.add_argument(option.flag, dest=option.parameter, type=option.type, nargs=option.nargs,
                                     choices=option.choices, default=argparse.SUPPRESS, help=option.help,
                                     metavar=None if option.choices else option.flag.lstrip("-").upper())
        action.default_from = (command, option.parameter)
    overrides_help = OVERRIDES_HELP
    if command.second_data:
        prefix = command.second_data
        overrides_help += f"; {prefix}.name=, {prefix}.root=, ... (the keys of data.*) set the {prefix} data"
    _add_overrides(parser, overrides_help)
    parser.set_defaults(handler=lambda args: run_eval_command(command, args))


def run_eval_command(command: EvalCommand, args: argparse.Namespace) -> None:
    options = {option.parameter: getattr(args, option.parameter) for option in (WHICH, *command.options)
               if hasattr(args, option.parameter)}
    target = args.targets if command.many_targets else args.target
    report = command.function(command.runner)(target, args.overrides, **options)
    print(command.function(command.formatter)(report))
    print(f"-> {report['written_to']}")


def command_report(args: argparse.Namespace) -> None:
    from kdistill.report import build_report

    report = build_report(args.runs, Path(args.out), published=args.published)
    print(report["markdown"])
    print(f"-> {', '.join(report['files'])} and {len(report['curves'])} training-curve plots in {args.out}/curves")

def command_export(args: argparse.Namespace) -> None:
    from kdistill.export.bundle import export_run

    export = export_run(args.run, args.overrides, formats=args.formats, out=args.out, dynamic_batch=args.dynamic_batch,
                        opset=args.opset, fp16=args.fp16, which=args.which)
    print(f"-> {export['folder']}: {', '.join(export['files'])}")


def _add_export_parser(commands) -> None:
    from kdistill.export import DEFAULT_OPSET, ExportFormat

    export = commands.add_parser("export", help="a finished run's student as safetensors, TorchScript or ONNX, "
                                                "with its preprocessing, class names and a model card, checked "
                                                "against PyTorch")
    export.add_argument("run", help="a finished run folder")
    export.add_argument("--format", dest="formats", nargs="+", choices=[str(item) for item in ExportFormat],
                        help="formats to write (default: safetensors, and for a CIFAR-zoo student also pth, the "
                             "public checkpoint layout)")
    export.add_argument("--out", help="export folder (default: <run>/export)")
    export.add_argument("--which", choices=("last", "best"), default="last", help="which weights of the run")
    export.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size (default: batch size 1)")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    export.add_argument("--fp16", action="store_true", help="float16 weights and computation in every format")
    _add_overrides(export, "config overrides of the run's configuration (e.g. data.root=...)")
    export.set_defaults(handler=command_export)


def command_data_check(args: argparse.Namespace) -> None:
    from kdistill.config.loading import load_config
    from kdistill.data.image_check import named_files
    from kdistill.data.loaders import check_image_folder, image_check_cache

    cfg = load_config(None, ["data.name=imagefolder", *args.overrides, f"data.root={args.root}"]).data
    start = time.perf_counter()  # listing the tree included, as at a run's start
    check = check_image_folder(cfg)
    print(f"{cfg.name} {args.root}: {check.files} image files checked, {check.decoded} decoded now (new or changed), "
          f"{len(check.bad)} bad, {time.perf_counter() - start:.2f} s (result kept in {image_check_cache(cfg)})")
    for path, reason in check.bad.items():
        print(f"  bad: {path} ({reason})")
    if check.bad:
        raise RunStopped(f"{len(check.bad)} of {check.files} image files cannot be decoded: "
                         f"{named_files(check.bad)}; replace or delete them, or set data.bad_images=skip "
                         "to leave them out of a run", exit_code=1)


def _add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="data set tools: `kdistill data check ROOT` checks an image folder "
                                            "ahead of a run")
    tools = data.add_subparsers(dest="tool", required=True)
    check = tools.add_parser("check", help="decode the image files that are new or changed since the last check, "
                                           "and keep the result for the runs' start")
    check.add_argument("root", help="the data set's folder (data.root)")
    _add_overrides(check, "data.name=imagefolder (default) or tiny-imagenet; data.cache_dir=... as the runs set it")
    check.set_defaults(handler=command_data_check)


def command_list(args: argparse.Namespace) -> None:
    from kdistill.data import list_datasets
    from kdistill.methods import list_methods, method_class
    from kdistill.models import list_models

    if args.teachers:
        from kdistill.models.pretrained import published_teachers

        rows = published_teachers()
        width = max(len(name) for name, _ in rows)
        print("teachers with public weights (teacher_pretrained=true fetches each once; the CIFAR-100 ones come "
              "in one archive, `kdistill teachers fetch` fetches it ahead):")
        for name, url in rows:
            print(f"  {name.ljust(width)}  {url}")
        return

    for title, names in (("models", list_models()), ("methods", list_methods()), ("datasets", list_datasets())):
        print(f"{title}: {', '.join(names)}")
    print("also: timm:<name> and tv:<name> models; any method X with a KD term added as X+kd")
    print("methods and their papers:")
    width = max(map(len, list_methods()))
    for name in list_methods():
        print(f"  {name.ljust(width)}  {method_class(name).paper}")


def command_teachers(args: argparse.Namespace) -> None:
    from kdistill.models.cifar_teachers import fetch_teachers, teachers_folder

    files = fetch_teachers(args.names)
    for name, path in files.items():
        print(f"{name}: {path}")
    print(f"-> teacher=<name> teacher_pretrained=true loads them from {teachers_folder()}")


def _add_teachers_parser(commands) -> None:
    teachers = commands.add_parser("teachers", help="the published CIFAR-100 teachers: fetch them into the cache")
    actions = teachers.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="download mdistiller's teacher archive once, check and unpack it "
                                             "($KDISTILL_HOME, default ~/.cache/kdistill)")
    fetch.add_argument("names", nargs="*", metavar="NAME",
                       help="teachers to make ready (default: all six; `kdistill list --teachers` names them)")
    teachers.set_defaults(handler=command_teachers)


def command_config(args: argparse.Namespace) -> None:
    from kdistill.config.reference import config_reference

    print(config_reference(args.method))


def command_bench(args: argparse.Namespace) -> None:
    from kdistill.bench import bench_command

    bench_command(args)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="kd")
    parser.add_argument("--teacher", default="wrn_40_2")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row (compilation happens here)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--train-size", type=int, default=50000, help="synthetic samples (CRD's memory banks)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional row")
    parser.add_argument("--rows", nargs="*", default=list("abcde"), choices=list("abcde"),
                        help="step rows to run (none: only the data pipeline)")
    parser.add_argument("--data-batches", type=int, default=20, help="batches per data-pipeline row (0: skip)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for MFU")
    parser.add_argument("--out", help="JSON file of the rows")


def command_demo(args: argparse.Namespace) -> None:
    from kdistill.demo import run_demo

    run_demo(Path(args.out), args.overrides + (["progress=false"] if args.quiet else []))


def command_grid(args: argparse.Namespace) -> None:
    from kdistill.errors import RunStopped
    from kdistill.grid.run import run_grid
    from kdistill.grid.spec import load_spec

    flags = {"out": args.out, "methods": args.methods, "pairs": args.pairs, "seeds": args.seeds,
             "recipes": args.recipes, "launcher": args.launcher, "jobs": args.jobs, "threads": args.threads,
             "gpus_per_run": args.gpus_per_run, "partition": args.partition, "time_min": args.time_min,
             "cpus_per_run": args.cpus_per_run, "array_parallelism": args.array_parallelism}
    if args.no_vanilla:
        flags["vanilla"] = False
    state = run_grid(load_spec(args.spec, flags, args.overrides, args.train_teachers))
    if state.failed:
        raise RunStopped(f"{len(state.failed)} of {len(state.runs)} runs failed (listed above, with their logs)",
                         exit_code=1)


def _add_grid_parser(commands) -> None:
    from kdistill.grid.spec import LAUNCHERS

    grid = commands.add_parser("grid", help="a methods x pairs x seeds grid of runs (local processes or SLURM), "
                                            "resumable, with the report table at the end")
    grid.add_argument("spec", nargs="?", metavar="SPEC.yaml", help="a grid spec (see kdistill.grid.spec)")
    grid.add_argument("--out", help="grid folder: <out>/<method>/<teacher>_<student>/seed<k>, logs/, report/")
    grid.add_argument("--methods", nargs="+", help="method names (kdistill list)")
    grid.add_argument("--pairs", nargs="+", metavar="TEACHER:STUDENT")
    grid.add_argument("--seeds", nargs="+", type=int)
    grid.add_argument("--recipes", nargs="+", metavar="PATH",
                      help="recipe files (each run with every seed), or a folder of generated recipes "
                           "(<dir>/<method>/<teacher>_<student>.yaml) that --methods x --pairs resolve to")
    grid.add_argument("--train-teachers", action="store_true",
                      help="train each pair's teacher first (once) with the common overrides")
    grid.add_argument("--no-vanilla", action="store_true",
                      help="no vanilla student runs unless --methods lists vanilla (by default each student's "
                           "is added: the report's baseline)")
    grid.add_argument("--launcher", choices=LAUNCHERS,
                      help="local processes (default), SLURM jobs, or submitit's local executor")
    grid.add_argument("--jobs", type=int, help="local: runs at once (default 1; at most one per free GPU set)")
    grid.add_argument("--threads", type=int, help="local, CPU: threads per run (default: cores / runs in flight)")
    grid.add_argument("--gpus-per-run", type=int, help="GPUs per run (several: under torchrun); default 1")
    grid.add_argument("--partition", help="slurm: partition")
    grid.add_argument("--time-min", type=int, help="slurm: time limit per job in minutes (default 1440)")
    grid.add_argument("--cpus-per-run", type=int, help="slurm: CPUs per job")
    grid.add_argument("--array-parallelism", type=int, help="slurm: jobs of an array running at once")
    _add_overrides(grid, "applied to every run of the grid (after the spec's overrides), anywhere on the line")
    grid.set_defaults(handler=command_grid)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and each command's own parser, by name."""
    parser = OneLineParser(prog="kdistill", description="Knowledge distillation for image classifiers.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a teacher or a vanilla student (CE only)")
    _add_run_arguments(train)
    train.set_defaults(handler=command_train)
    distill = commands.add_parser("distill", help="train a student from a frozen teacher with a method")
    _add_run_arguments(distill)
    distill.set_defaults(handler=command_distill)
    for command in EVAL_COMMANDS:
        _add_eval_command(commands, command)
    report = commands.add_parser("report", help="paper-style table (Markdown, CSV) and training curves from runs")
    report.add_argument("runs", nargs="+", help="run folders, or folders that hold them")
    report.add_argument("--out", default="report", help="folder of table.md, table.csv, report.json, curves/")
    report.add_argument("--published", action="store_true",
                        help="also set each measured mean beside its paper's published CIFAR-100 top-1")
    report.set_defaults(handler=command_report)
    _add_export_parser(commands)
    _add_teachers_parser(commands)
    cache = commands.add_parser("cache", help="fill a run's teacher cache (teacher_cache=<folder>) ahead of time")
    _add_run_arguments(cache, resumable=False)  # a fill picks up the epochs already there by itself
    cache.set_defaults(handler=command_cache)
    bench = commands.add_parser("bench", help="img/s of a training step: the conventional loop beside kdistill's paths")
    add_bench_arguments(bench)
    bench.set_defaults(handler=command_bench)
    config = commands.add_parser("config", help="every config key with its default and what it does")
    config.add_argument("--method", help="also list this method's options (method.<option>) and weights")
    config.set_defaults(handler=command_config)
    listing = commands.add_parser("list", help="the models, methods and data sets")
    listing.add_argument("--teachers", action="store_true",
                         help="the recipes' library teachers and the public CIFAR-100 teacher files, with URLs")
    listing.set_defaults(handler=command_list)
    demo = commands.add_parser("demo", help="offline demo on the embedded data: a resnet14 teacher, then vanilla, KD "
                                            "and DCD+KD resnet8 students (minutes on a CPU; steps_per_epoch=20 "
                                            "shortens it)")
    demo.add_argument("--out", default="runs/demo", help="folder of the demo's runs and table")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_overrides(demo, "applied to every demo run (e.g. device=cuda), anywhere on the line")
    demo.set_defaults(handler=command_demo)
    _add_grid_parser(commands)
    _add_data_parser(commands)
    return parser, commands.choices


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """Parse a command line; key=value overrides may stand anywhere after the command's name."""
    parser, command_parsers = build_parser()
    position = next((index for index, token in enumerate(argv) if not token.startswith("-")), None)
    if position is None or argv[position] not in command_parsers:
        return parser.parse_args(argv)  # argparse's own message for a missing or unknown command
    name = argv[position]
    args = parse_with_overrides(command_parsers[name], argv[position + 1:])
    args.command = name
    return args

def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(list(sys.argv[1:] if argv is None else argv))
    try:
        args.handler(args)
    except KdistillError as error:
        print(f"kdistill: {error.prefix}{error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        # Training handles Ctrl-C itself (saying what it kept); here nothing was kept or changed.
        print("kdistill: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
