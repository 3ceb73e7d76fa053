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
    evaluate = commands.add_parser("eval", help="top-1/top-5 of a run folder or a weight file")
    evaluate.add_argument("target", help="a run folder, or a .pth file (then give student=<model> and data.name=...)")
    evaluate.add_argument("--which", choices=["last", "best"], default="last", help="which weights of a run folder")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (student=, data.*, device=)")
    evaluate.set_defaults(handler=command_eval)
    listing = commands.add_parser("list", help="the models, methods and data sets")
    listing.set_defaults(handler=command_list)
    demo = commands.add_parser("demo", help="offline demo on the embedded data: teacher, vanilla and KD students")
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
