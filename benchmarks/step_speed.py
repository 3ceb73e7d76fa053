"""Training-step throughput and peak memory of each method on one teacher -> student pair.

Random data of the pair's input size; the step is the Trainer's (forward, weighted loss,
backward, SGD step). Writes a JSON list of {method, img_per_s, step_ms, peak_mem_mb} rows.

    PYTHONPATH=src python benchmarks/step_speed.py --out benchmarks/results/step_speed_cpu.json
"""

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from kdistill.config import OptimConfig
from kdistill.engine.schedule import build_optimizer
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="wrn_40_2")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--methods", nargs="+", default=["vanilla", "kd", "dcd", "dcd+kd", "crd", "crd+kd", "crld"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--train-size", type=int, default=50000, help="data set size (CRD's memory banks)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/step_speed.json")
    return parser.parse_args()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # process peak RSS (KiB on Linux)


def measure(method: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    student = create_model(args.student, num_classes=args.num_classes)
    teacher = create_model(args.teacher, num_classes=args.num_classes)
    labels = torch.arange(args.train_size) % args.num_classes
    context = MethodContext((3, 32, 32), args.num_classes, labels)
    distiller = build_distiller({"name": method}, student, teacher, context).to(device).train()
    optimizer = build_optimizer(distiller.train_parameters(), OptimConfig(), lr=0.05)
    batch = {"image": torch.randn(args.batch_size, 3, 32, 32, device=device),
             "label": torch.randint(0, args.num_classes, (args.batch_size,), device=device),
             "index": torch.randint(0, args.train_size, (args.batch_size,), device=device)}
    if distiller.needs_strong_view:
        batch["image_strong"] = torch.randn_like(batch["image"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        output = distiller(batch)
        loss = output.total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    return {"method": method, "img_per_s": args.batch_size / seconds, "step_ms": 1000 * seconds,
            "peak_mem_mb": peak_memory_mb(device)}


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    rows = []
    for method in args.methods:
        row = measure(method, args, device)
        print(f"{method:10s} {row['img_per_s']:8.1f} img/s  {row['step_ms']:8.1f} ms/step", flush=True)
        rows.append(row)
    report = {"teacher": args.teacher, "student": args.student, "batch_size": args.batch_size,
              "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
