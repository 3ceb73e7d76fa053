"""Step-by-step parity of kdistill with the authors' reference code (a research tool: not part of
the installed package, not run by CI).

    python scripts/parity/run.py --reference repdistiller=../refs/repdistiller \\
        --reference mdistiller=../refs/mdistiller ... --methods all --steps 50 \\
        --out benchmarks/parity/cpu.json

Each PATH is a clone of the public repository the script names (it prints the commit it
expects); nothing of it is copied into kdistill, and what a CPU run needs (`.cuda()` calls,
float32 casts of the input) is patched in memory. For every method: both sides get the same
initial weights (student, teacher, auxiliary modules), the same batches (kdistill's keyed views)
and the same random draws, each its own optimizer; K steps; every loss term and the total per
step, and the largest weight difference per module at the end, in float64 and float32.
"""

import argparse
import fcntl
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import Data, learning_rates_scaled, state_differences, step_differences  # noqa: E402
from cospress import Cospress  # noqa: E402
from crld_reference import CRLDCopy  # noqa: E402
from ctkd_reference import CTKDCode  # noqa: E402
from dcd_reference import DistillersDCD  # noqa: E402
from defangchen import DefangChenSemCKD, DefangChenSimKD  # noqa: E402
from deit_reference import DeiTCode  # noqa: E402
from dist_reference import DISTAuthors  # noqa: E402
from distillers_imagenet import DistillersImageNetScript  # noqa: E402
from mdistiller_style import LogitStandardization, MDistiller, MLKDAuthors  # noqa: E402
from repdistiller import RepDistiller  # noqa: E402

REFERENCES = {runner.reference.name: runner for runner in (RepDistiller, MDistiller, DistillersDCD,
                                                             LogitStandardization, MLKDAuthors, CTKDCode,
                                                             DISTAuthors, DefangChenSimKD, DefangChenSemCKD, Cospress,
                                                             DistillersImageNetScript, CRLDCopy, DeiTCode)}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=PATH",
                        help=f"a reference clone; names: {', '.join(REFERENCES)}")
    parser.add_argument("--methods", nargs="+", default=["all"], help="kdistill method names, or all")
    parser.add_argument("--steps", type=int, default=50, help="steps in float32")
    parser.add_argument("--float64-steps", type=int, default=5, help="steps in float64 (slow on a CPU)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pair", default="resnet56:resnet20", help="teacher:student of the CIFAR zoo")
    parser.add_argument("--data-size", type=int, default=2000, help="samples of the synthetic training set")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--lr-scale", type=float, default=1.0, metavar="S",
                        help="multiply every learning rate of both sides by S (1: the recipes' and the "
                             "references' own rates); smaller rates amplify rounding less over many steps")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (merged into an existing file)")
    return parser.parse_args(argv)


def kdistill_commit() -> str:
    result = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                            capture_output=True, text=True)
    return result.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = {}
    for item in args.reference:
        name, _, path = item.partition("=")
        if name not in REFERENCES or not path:
            sys.exit(f"--reference {item}: give NAME=PATH with NAME one of {', '.join(REFERENCES)}")
        paths[name] = Path(path)
    teacher, student = args.pair.split(":")
    data = Data.synthetic(args.data_size, seed=0)
    command = shlex.join(["python", "scripts/parity/run.py", *(argv if argv is not None else sys.argv[1:])])
    run_info = {"kdistill_commit": kdistill_commit(), "torch": torch.__version__, "machine": platform.machine(),
                "threads": torch.get_num_threads(), "data_size": args.data_size, "lr_scale": args.lr_scale}
    for name, path in paths.items():
        runner_class = REFERENCES[name]
        reference = {"repository": runner_class.reference.repository, "commit": runner_class.reference.check(path)}
        wanted = [m for m in runner_class.methods if "all" in args.methods or m in args.methods]
        # Parts of other references a runner's rows use (e.g. DIST's loss in CTKD's loop).
        companions = {other: paths[other] for other in getattr(runner_class, "companions", ()) if other in paths}
        with runner_class(path, teacher, student, args.batch_size, data,
                          **({"companions": companions} if companions else {})) as runner:
            for method in wanted:
                entry = {"reference": name, **reference, "pair": f"{teacher} -> {student}",
                         "batch_size": args.batch_size, "command": command, **run_info,
                         **(runner.notes(method) if hasattr(runner, "notes") else {})}
                final_states = {}  # kdistill's trained state after the run, per dtype
                for dtype_name in args.dtypes:
                    started = time.perf_counter()
                    steps = args.float64_steps if dtype_name == "float64" else args.steps
                    entry[f"{dtype_name}_steps"] = steps
                    try:
                        with learning_rates_scaled(args.lr_scale):
                            comparison = runner.run(method, steps, DTYPES[dtype_name])
                    except Exception as error:  # one method's failure is recorded, the others still run
                        traceback.print_exc()
                        entry[dtype_name] = {"error": f"{type(error).__name__}: {error}"}
                        continue
                    entry[dtype_name] = comparison.as_dict()
                    final_states[dtype_name] = comparison.kdistill
                    print(f"{method:8s} {dtype_name}: step 1 rel {comparison.step1_relative:.2e}, "
                          f"largest rel {comparison.largest_relative:.2e}, "
                          f"weights {comparison.largest_weight:.2e}, moved {comparison.largest_movement:.2e} "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
                if {"float32", "float64"} <= final_states.keys():
                    # The float32 noise floor of the weights: kdistill's float32 run against its
                    # float64 run (equal to the reference's float64 run, as the float64 rows show).
                    float64, float32 = final_states["float64"], final_states["float32"]
                    floor = state_differences(float64.final, float32.final, float64.parameter_names)
                    entry["float32"]["kdistill_float32_vs_float64_weights"] = floor
                    entry["float32"]["kdistill_float32_vs_float64_largest_weight"] = max(
                        difference["difference"] for difference in floor.values())
                save(args.out, method, entry)  # after each method: a partial run counts


def save(out: Path, method: str, entry: dict) -> None:
    """Merge one method's entry into the results file (several runs may share it: locked); a run
    of one dtype keeps the other dtype's results, unless they were run at another --lr-scale."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(out.read_text()) if out.exists() else {"methods": {}}
        earlier = results["methods"].get(method, {})
        if earlier.get("lr_scale", 1.0) != entry["lr_scale"]:
            earlier = {}
        entry = {**earlier, **entry}
        if "reference" in entry.get("float32", {}) and "reference" in entry.get("float64", {}):
            # The float32 noise floor: how far the reference's own float32 run drifts from its
            # float64 run, step by step (early training amplifies rounding differences).
            same = {term: term for term in entry["float32"]["terms"]}
            entry["float32"]["reference_float32_vs_float64"] = step_differences(
                entry["float64"]["reference"], entry["float32"]["reference"], same)
            entry["float32"]["same_initial_weights_as_float64"] = True
        results["methods"][method] = entry
        results["methods"] = dict(sorted(results["methods"].items()))
        out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
