"""The README's parity table from one or more results files of run.py (one per set of references;
rows sorted by method).

    python scripts/parity/table.py benchmarks/parity/cpu.json benchmarks/parity/cpu-*.json
"""

import json
import math
import sys
from pathlib import Path

FLOAT64_TOLERANCE = 1e-6  # step 1 and every later step, relative; weights (see core.largest_difference)
FLOAT32_TOLERANCE = 1e-4  # loss (relative) and weights
FLOAT32_STEP1_TOLERANCE = 1e-4  # the first step, before training amplifies rounding
NOISE_MULTIPLE = 10  # float32 drift this close to the reference's own float32-vs-float64 drift is noise
DIVERGED = 1e6  # a total this many times the first step's, or not finite: the run has diverged


def noise_floor(f32: dict) -> list[float] | None:
    """The reference's own float32-vs-float64 drift per step, when both runs began from the same weights."""
    return f32.get("reference_float32_vs_float64") if f32.get("same_initial_weights_as_float64") else None


def divergence_step(f64: dict) -> int | None:
    """The first step (from 1) at which both sides' float64 runs have diverged, if they do (one
    side alone diverging is a difference, not this)."""
    def diverged(side: dict) -> list[bool]:
        steps = [step for phase in side.values() for step in phase]
        return [not math.isfinite(step["total"]) or abs(step["total"]) > DIVERGED * abs(steps[0]["total"])
                for step in steps]

    for number, (reference, ours) in enumerate(zip(diverged(f64["reference"]), diverged(f64["kdistill"])), 1):
        if reference or ours:
            return number if reference and ours else None
    return None


# Differences kdistill keeps on purpose (README: "Where kdistill deliberately differs ...").
KNOWN = {"mlkd": "differs by the authors' strong-view slip, which kdistill does not copy",
         "dkd+ctkd": "differs by DKD's 20-epoch warm-up, which kdistill keeps (the CTKD code's DKD has none)",
         "simkd": "differs only in the student's own classifier, which no term reads: kdistill freezes it, "
                  "the reference's weight decay shrinks it",
         "ofd": "differs by mdistiller's teacher in training mode, which kdistill does not copy",
         "deit (kdistill's default AdamW groups)": "differs by DeiT's exemption of the position embedding and the "
                                                   "class and distillation tokens from weight decay, which "
                                                   "optim.model_no_weight_decay=true gives (the deit recipe's)"}


def verdict(entry: dict, method: str = "") -> str:
    if method in KNOWN:
        return KNOWN[method]
    f64, f32 = entry.get("float64", {}), entry.get("float32", {})
    if "error" in f64 or "error" in f32 or not f64 or not f32:
        return "not run: " + (f64.get("error") or f32.get("error") or "missing dtype")
    diverged = divergence_step(f64)
    before = max(f64["per_step_relative"][:diverged - 1]) if diverged and diverged > 1 else math.inf
    if before <= FLOAT64_TOLERANCE:
        return (f"both runs diverge alike (loss 10^{math.log10(DIVERGED):.0f}-fold by step {diverged}); "
                f"equal in float64 before ({before:.1e})")
    if max(f64["step1_relative"], f64["largest_relative"], f64["largest_weight"]) > FLOAT64_TOLERANCE:
        return "**differs** (float64)"
    if max(f32["largest_relative"], f32["largest_weight"]) <= FLOAT32_TOLERANCE:
        return "equal"
    if f32["step1_relative"] > FLOAT32_STEP1_TOLERANCE:
        return "**differs** (float32 step 1)"
    floor = noise_floor(f32)
    if floor is None:
        return "equal in float64; float32 drifts (noise floor not measured)"
    if f32["largest_relative"] <= NOISE_MULTIPLE * max(floor):
        return "equal in float64; float32 drift at the noise floor"
    return "**differs** (float32 drift above the noise floor)"


def rows(results: dict) -> list[str]:
    lines = ["| method | reference @ commit | steps | f64 step 1 | f64 loss | f64 weights | f32 step 1 "
             "| f32 loss (ref. f32 vs f64) | f32 weights | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, entry in results["methods"].items():
        f64, f32 = entry.get("float64", {}), entry.get("float32", {})

        def number(part: dict, key: str) -> str:
            return f"{part[key]:.1e}" if key in part else "—"

        floor = noise_floor(f32)
        f32_loss = number(f32, "largest_relative") + (f" ({max(floor):.1e})" if floor else "")
        # The weights' float32 noise floor (kdistill's float32 run against its float64 run) where measured.
        weights_floor = f32.get("kdistill_float32_vs_float64_largest_weight")
        f32_weights = number(f32, "largest_weight") + (f" ({weights_floor:.1e})" if weights_floor is not None else "")
        scale = entry.get("lr_scale", 1.0)
        steps = f"{entry.get('float64_steps', '—')}" + (f" (lr ×{scale:g})" if scale != 1 else "")
        lines.append(
            f"| {method} | {entry['repository']} @ {entry['commit'][:7]} | {steps} "
            f"| {number(f64, 'step1_relative')} | {number(f64, 'largest_relative')} | {number(f64, 'largest_weight')} "
            f"| {number(f32, 'step1_relative')} | {f32_loss} | {f32_weights} "
            f"| {verdict(entry, method)} |")
    return lines


def merged(paths: list[str]) -> dict:
    """The methods of several results files; a method in two files is an error (which one is current?)."""
    methods: dict = {}
    for path in paths:
        for method, entry in json.loads(Path(path).read_text())["methods"].items():
            if method in methods:
                sys.exit(f"{path}: method {method!r} is also in an earlier file; keep it in one file")
            methods[method] = entry
    return {"methods": dict(sorted(methods.items()))}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n".join(rows(merged(sys.argv[1:]))))
