"""The `kdistill` command. Every option is a config key: `--config FILE` plus `key=value` overrides."""

import argparse
import sys
from pathlib import Path

from kdistill.errors import KdistillError

EXIT_USER_ERROR = 2

EPILOG = """options are config keys given as key=value, e.g.
  kdistill train student=resnet32x4 data.name=cifar100 data.root=./data/cifar100 out=runs/t
  kdistill distill --config configs/cifar100/kd/resnet32x4_resnet8x4.yaml seed=1
keys: see kdistill.config.RunConfig (student, teacher, teacher_checkpoint, method.name, method.<option>,
data.name, data.root, epochs, optim.lr, schedule.name, device, amp, out, resume, seed, ...)"""


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe; key=value overrides apply on top")
    parser.add_argument("--resume", action="store_true", help="continue the run in out= from its last checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _run_config(args: argparse.Namespace, extra: list[str] = ()):
    from kdistill.engine import load_config

    overrides = list(extra) + list(args.overrides) + (["resume=true"] if args.resume else [])
    return load_config(args.config, overrides)


def command_train(args: argparse.Namespace) -> None:
    from kdistill.engine import train_run

    cfg = _run_config(args)
    if cfg.method["name"] != "vanilla":
        raise KdistillError(f"`kdistill train` trains without a teacher; for method '{cfg.method['name']}' use `kdistill distill`")
    _print_results(train_run(cfg))


def command_distill(args: argparse.Namespace) -> None:
    from kdistill.engine import train_run

    cfg = _run_config(args)
    if cfg.method["name"] == "vanilla":
        raise KdistillError("`kdistill distill` needs a distillation method: set method.name=kd (or another, see `kdistill list`)")
    _print_results(train_run(cfg))


def _print_results(results: dict) -> None:
    print(f"{results['method']} {results['student']}: top-1 last {results['top1_last']:.2f}, "
          f"best {results['top1_best']:.2f} (epoch {results['best_epoch']}), "
          f"time {results['train_time_s']:.0f}s")


def command_eval(args: argparse.Namespace) -> None:
    from kdistill.eval.run import evaluate_target

    report = evaluate_target(args.target, args.overrides, which=args.which)
    print(f"{report['model']} on {report['dataset']} ({report['split']}): top-1 {report['top1']:.2f}, "
          f"top-5 {report['top5']:.2f}  -> {report['written_to']}")


def _print_report(text: str, report: dict) -> None:
    print(text)
    print(f"-> {report['written_to']}")


def _given(**options) -> dict:
    """The options set on the command line; the others keep the evaluation's own defaults."""
    return {name: value for name, value in options.items() if value is not None}


def command_probe(args: argparse.Namespace) -> None:
    from kdistill.eval.probe import format_probe, run_probe

    report = run_probe(args.target, args.overrides, args.which,
                       **_given(weight_decay=args.weight_decay, max_iter=args.max_iter))
    _print_report(format_probe(report), report)


def _targets_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Split positional items into targets (existing paths, or anything without '=') and key=value."""
    overrides = [item for item in items if "=" in item and not Path(item).exists()]
    return [item for item in items if item not in overrides], overrides


def command_correlate(args: argparse.Namespace) -> None:
    from kdistill.eval.correlation import format_correlate, run_correlate

    targets, overrides = _targets_and_overrides(args.items)
    report = run_correlate(targets, overrides, args.which, args.out)
    _print_report(format_correlate(report), report)


def command_faithfulness(args: argparse.Namespace) -> None:
    from kdistill.eval.faithfulness import format_faithfulness, run_faithfulness

    report = run_faithfulness(args.target, args.overrides, args.which, args.corruptions, args.severities)
    _print_report(format_faithfulness(report), report)


def command_ood(args: argparse.Namespace) -> None:
    from kdistill.eval.ood import format_ood, run_ood

    report = run_ood(args.target, args.overrides, args.which)
    _print_report(format_ood(report), report)


def command_robustness(args: argparse.Namespace) -> None:
    from kdistill.eval.robustness import format_robustness, run_robustness

    report = run_robustness(args.target, args.overrides, args.which, args.corruptions, args.severities)
    _print_report(format_robustness(report), report)


def command_knn(args: argparse.Namespace) -> None:
    from kdistill.eval.knn import format_knn, run_knn

    report = run_knn(args.target, args.overrides, args.which,
                     **_given(ks=tuple(args.k) if args.k else None, temperature=args.temperature))
    _print_report(format_knn(report), report)


def command_report(args: argparse.Namespace) -> None:
    from kdistill.report import build_report

    report = build_report(args.runs, Path(args.out))
    print(report["markdown"])
    print(f"-> {', '.join(report['files'])} and {len(report['curves'])} training-curve plots in {args.out}/curves")


def command_list(args: argparse.Namespace) -> None:
    from kdistill.data import list_datasets
    from kdistill.methods import list_methods
    from kdistill.models import list_models

    for title, names in (("models", list_models()), ("methods", list_methods()), ("datasets", list_datasets())):
        print(f"{title}: {', '.join(names)}")
    print("also: timm:<name> and tv:<name> models; any method X with a KD term added as X+kd")


def command_demo(args: argparse.Namespace) -> None:
    from kdistill.demo import run_demo

    run_demo(Path(args.out), args.overrides + (["progress=false"] if args.quiet else []))


TARGET_HELP = ("a run folder, or a .pth file (then give student=<model> and data.name=...; "
               "teacher= and teacher_checkpoint= where a teacher takes part)")
OVERRIDES_HELP = "config overrides (student=, teacher=, teacher_checkpoint=, data.*, device=, progress=false)"


def _add_which(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--which", choices=["last", "best"], default="last", help="which weights of a run folder")


def _add_eval_parser(commands, name: str, help_text: str, handler, second_data: str | None = None):
    """A command on one target; `second_data` names the prefix of a second data set's keys."""
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("target", help=TARGET_HELP)
    _add_which(parser)
    overrides_help = OVERRIDES_HELP
    if second_data:
        overrides_help += f"; {second_data}.name=, {second_data}.root=, ... (the keys of data.*) set the {second_data} data"
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    parser.set_defaults(handler=handler)
    return parser


def _add_corruption_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corruptions", nargs="+", metavar="NAME",
                        help="gaussian_noise shot_noise gaussian_blur contrast brightness jpeg pixelate (default: all)")
    parser.add_argument("--severities", nargs="+", type=int, metavar="N", help="of 1..5 (default: all)")


def _add_eval_parsers(commands) -> None:
    probe = _add_eval_parser(commands, "probe", "linear probe of frozen features on another data set (transfer)",
                             command_probe, second_data="probe")
    probe.add_argument("--weight-decay", type=float, help="L2 weight of the linear classifier (default 5e-4)")
    probe.add_argument("--max-iter", type=int, help="L-BFGS iterations (default 100)")
    correlate = commands.add_parser("correlate", help="teacher/student inter-class correlation difference, heat map")
    correlate.add_argument("items", nargs="+", metavar="RUN_OR_key=value",
                           help="run folders or .pth files (one heat-map panel each), then config overrides")
    _add_which(correlate)
    correlate.add_argument("--out", help="PNG path (default: beside a single run, else ./correlation.png)")
    correlate.set_defaults(handler=command_correlate)
    faithfulness = _add_eval_parser(commands, "faithfulness", "agreement, KL, CKA of a student with its teacher",
                                    command_faithfulness)
    _add_corruption_arguments(faithfulness)
    _add_eval_parser(commands, "ood", "OOD detection (AUROC, FPR95): max-softmax, energy, 1-NN feature similarity",
                     command_ood, second_data="ood")
    robustness = _add_eval_parser(commands, "robustness", "accuracy under CIFAR-C-style corruptions",
                                  command_robustness)
    _add_corruption_arguments(robustness)
    knn = _add_eval_parser(commands, "knn", "weighted kNN accuracy on frozen features", command_knn)
    knn.add_argument("--k", nargs="+", type=int, help="neighbour counts (default 10 200)")
    knn.add_argument("--temperature", type=float, help="T of the exp(similarity / T) vote weights (default 0.07)")
    report = commands.add_parser("report", help="paper-style table (Markdown, CSV) and training curves from runs")
    report.add_argument("runs", nargs="+", help="run folders, or folders that hold them")
    report.add_argument("--out", default="report", help="folder of table.md, table.csv, report.json, curves/")
    report.set_defaults(handler=command_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdistill", description="Knowledge distillation for image classifiers.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a teacher or a vanilla student (CE only)")
    _add_run_arguments(train)
    train.set_defaults(handler=command_train)
    distill = commands.add_parser("distill", help="train a student from a frozen teacher with a method")
    _add_run_arguments(distill)
    distill.set_defaults(handler=command_distill)
    _add_eval_parser(commands, "eval", "top-1/top-5 of a run folder or a weight file", command_eval)
    _add_eval_parsers(commands)
    listing = commands.add_parser("list", help="the models, methods and data sets")
    listing.set_defaults(handler=command_list)
    demo = commands.add_parser("demo", help="offline demo on the embedded data: a teacher, then vanilla, KD and DCD+KD students")
    demo.add_argument("--out", default="runs/demo", help="folder of the demo's runs and table")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every demo run (e.g. device=cuda)")
    demo.set_defaults(handler=command_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except KdistillError as error:
        print(f"kdistill: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kdistill: interrupted; the last finished epoch's checkpoint is kept (resume=true continues)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
