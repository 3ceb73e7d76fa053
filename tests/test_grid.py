"""`kdistill grid`: expansion, local and submitit launchers, kill-and-rerun, failure isolation.

The grids are tiny (resnet8 on the embedded data, 2 steps, 1 epoch); most of their time is the
start-up of each run's process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import kdistill_command

from kdistill.errors import KdistillError
from kdistill.grid.spec import expand, load_spec, parse_pair
from kdistill.run_folder import RunFolder

TINY = ["data.name=embedded", "data.batch_size=32", "steps_per_epoch=2", "epochs=1", "tensorboard=false",
        "device=cpu"]
METHODS, SEEDS = ["kd", "dcd+kd"], [0, 1]
RECIPES = Path(__file__).resolve().parent.parent / "configs/cifar100"
STUDENT_RUNS = [f"{method}/resnet8_resnet8/seed{seed}" for method in METHODS for seed in SEEDS]
VANILLA_RUNS = [f"vanilla/resnet8/seed{seed}" for seed in SEEDS]  # added by the grid: the report's baseline


def grid_arguments(out: Path, teacher: Path | None = None, methods: list[str] = METHODS, jobs: int = 2) -> list[str]:
    """The test grid: `methods` x resnet8 -> resnet8 x 2 seeds; the teacher trained by the grid (and
    the vanilla students it adds), or the given teacher run and no vanilla run (most tests reuse the
    first grid's teacher: each run costs a process start)."""
    teachers = ["--train-teachers"] if teacher is None else ["--no-vanilla"]
    spec = out.parent / f"{out.name}.yaml"
    spec.write_text(json.dumps({"teachers": {} if teacher is None else {"resnet8": str(teacher)}}))
    return [str(spec), *TINY, "--out", str(out), "--methods", *methods, "--pairs", "resnet8:resnet8", "--seeds",
            *map(str, SEEDS), "--jobs", str(jobs), "--threads", "1", *teachers]


def grid(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([*kdistill_command(), "grid", *arguments], check=False, capture_output=True, text=True,
                          timeout=600)


def top1(run: Path) -> float:
    return RunFolder(run).read_results().top1_last


def attempts(out: Path, run: str) -> int:
    """How many times the grid started a run: one log per attempt, logs/<run>.<attempt>.log."""
    return len(list((out / "logs").glob(f"{run.replace('/', '_')}.*.log")))


def alive(pid: int) -> bool:
    """A process that runs (a zombie, ended but not yet reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_for(condition, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert condition(), "the grid ended (or timed out) before the awaited moment"


def trainer_pid(run: Path) -> int | None:
    """The pid in a run's lock file: the process that trains it (None before it has locked it)."""
    try:
        text = (run / "run.lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grids") / "local"
    result = grid(*grid_arguments(out))
    return out, result


def test_local_grid_trains_the_teacher_first_then_every_run_and_writes_the_report(local_grid):
    out, result = local_grid
    assert result.returncode == 0, result.stdout + result.stderr
    assert RunFolder(out / "teachers/resnet8").is_finished()
    for name in STUDENT_RUNS:
        config = (out / name / "config.yaml").read_text()
        assert f"teacher_checkpoint: {out / 'teachers/resnet8'}" in config
        assert f"seed: {name[-1]}" in config
    assert "7/7 done, 0 failed" in result.stdout
    for method in METHODS:
        accuracy = top1(out / method / "resnet8_resnet8/seed1")
        assert f"{method} resnet8->resnet8 seed 1: top-1 {accuracy:.2f}" in result.stdout
    table = (out / "report/table.md").read_text()
    assert "resnet8 → resnet8" in table and "| dcd+kd |" in table and "| kd |" in table
    assert "teacher outputs: read from a float32 teacher cache (exact) in 4 run(s)" in table  # the grid's cache
    vanilla = [top1(out / name) for name in VANILLA_RUNS]
    assert f"| student (vanilla) | {sum(vanilla) / 2:.2f} ± " in table  # the baseline the grid added
    # the students start once the teacher has finished
    teacher_done = result.stdout.index("teacher resnet8 seed 0: top-1")
    assert all(result.stdout.index(f"starting {name}") > teacher_done for name in STUDENT_RUNS)


def test_a_rerun_with_a_changed_spec_reports_the_runs_and_reuses_none(local_grid):
    out, _ = local_grid
    before = {name: RunFolder(out / name).results_path.stat().st_mtime for name in STUDENT_RUNS}
    arguments = grid_arguments(out)
    changed = grid(*arguments[:1], "optim.momentum=0.5", *arguments[1:])
    assert changed.returncode == 1 and "7 of 7 runs failed" in changed.stderr
    assert "another configuration (optim.momentum: saved 0.9, spec 0.5)" in changed.stdout
    assert "starting" not in changed.stdout and attempts(out, "teachers/resnet8") == 1
    assert before == {name: RunFolder(out / name).results_path.stat().st_mtime for name in STUDENT_RUNS}


def test_a_killed_grid_rerun_waits_for_the_run_it_left_and_trains_only_the_missing_runs(local_grid, tmp_path):
    """One run at a time: the grid is killed (-9) once the first run has finished and the second has
    started. The second run's process lives on; the rerun waits for it instead of failing it."""
    out = tmp_path / "killed"
    arguments = grid_arguments(out, local_grid[0] / "teachers/resnet8", methods=["kd"], jobs=1)
    process = subprocess.Popen([*kdistill_command(), "grid", *arguments], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first, second = out / "kd/resnet8_resnet8/seed0", out / "kd/resnet8_resnet8/seed1"
    wait_for(lambda: trainer_pid(second) is not None, process)
    os.kill(process.pid, signal.SIGKILL)  # the grid only: its run lives on
    process.wait()
    orphan = trainer_pid(second)
    mtime = RunFolder(first).results_path.stat().st_mtime
    result = grid(*arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not alive(orphan)
    assert RunFolder(first).results_path.stat().st_mtime == mtime  # kept, not trained again
    assert attempts(out, "kd/resnet8_resnet8/seed0") == 1 and "finished before, kept" in result.stdout
    assert RunFolder(second).is_finished() and attempts(out, "kd/resnet8_resnet8/seed1") == 1  # never restarted
    assert "FAILED" not in result.stdout
    assert "2/2 done, 0 failed" in result.stdout and (out / "report/table.md").is_file()


def test_sigterm_to_the_grid_stops_its_runs_after_their_saves_and_a_second_grid_is_refused(local_grid, tmp_path):
    out = tmp_path / "stopped"
    # Runs long enough (200 steps each) that they are still training when the second grid starts
    # and when SIGTERM arrives, however fast the machine is.
    arguments = [*grid_arguments(out, local_grid[0] / "teachers/resnet8", methods=["kd"], jobs=2),
                 "steps_per_epoch=200"]
    process = subprocess.Popen([*kdistill_command(), "grid", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    runs = [out / f"kd/resnet8_resnet8/seed{seed}" for seed in SEEDS]
    wait_for(lambda: (out / "grid.lock").is_file() and (out / "grid.lock").read_text().strip(), process)
    second = grid(*arguments)
    assert second.returncode == 2 and "starting" not in second.stdout
    assert second.stderr.strip().splitlines() == [
        f"kdistill: error: grid folder '{out}' is in use by another kdistill grid (pid {process.pid}): "
        "wait for it to end or stop it, or choose another --out"]
    wait_for(lambda: all(trainer_pid(run) for run in runs), process)
    trainers = [trainer_pid(run) for run in runs]
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdistill: grid stopped by SIGTERM: the runs in flight saved "
                                                   "their checkpoints and stopped"), stderr
    assert not any(alive(pid) for pid in trainers)  # no orphan
    result = grid(*arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(RunFolder(run).is_finished() for run in runs) and "2/2 done, 0 failed" in result.stdout


def test_the_same_grid_through_submitits_local_executor(local_grid, tmp_path):
    """The same run folders and, with the same teacher and seeds, the same results as the local launcher."""
    local_out = local_grid[0]
    out = tmp_path / "submitit"
    result = grid(*grid_arguments(out, local_out / "teachers/resnet8", methods=["kd"]), "--launcher", "submitit-local")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [name for name in STUDENT_RUNS if name.startswith("kd/")]
    assert sorted(str(run.path.relative_to(out)) for run in RunFolder.find([out])) == runs
    for name in runs:
        assert top1(out / name) == top1(local_out / name)
    assert (out / "submitit").is_dir() and (out / "report/table.md").is_file()


def test_a_failing_run_is_reported_and_the_others_finish(local_grid, tmp_path):
    out = tmp_path / "failing"
    spec = tmp_path / "failing.yaml"
    spec.write_text(json.dumps({
        "out": str(out), "pairs": ["resnet8:resnet8"], "seeds": [0], "overrides": TINY,
        "teachers": {"resnet8": str(local_grid[0] / "teachers/resnet8")},
        "methods": {"kd": [], "broken": ["method.name=kd", "method.no_such_option=1"]}, "vanilla": False,
    }))
    result = grid(str(spec), "--jobs", "2", "--threads", "1")
    assert result.returncode == 1 and "1 of 2 runs failed" in result.stderr
    assert RunFolder(out / "kd/resnet8_resnet8/seed0").is_finished()
    assert not RunFolder(out / "broken/resnet8_resnet8/seed0").is_finished()
    log = out / "logs/broken_resnet8_resnet8_seed0.1.log"  # its first attempt
    error = log.read_text().strip().splitlines()[-1]
    assert "no_such_option" in error
    assert f"failed: broken/resnet8_resnet8/seed0: {error}\n        log: {log}" in result.stdout
    assert "2/2 done, 1 failed" in result.stdout


def test_expansion_names_folders_shares_vanilla_runs_and_resolves_generated_recipes(tmp_path):
    spec = load_spec(None, {"out": str(tmp_path), "methods": ["vanilla", "kd"], "seeds": [3],
                            "pairs": ["resnet56:resnet20", "resnet110:resnet20"], "recipes": [str(RECIPES)]},
                     ["epochs=2"], train_teachers=True)
    runs = {run.name: run for run in expand(spec)}
    assert sorted(runs) == ["kd/resnet110_resnet20/seed3", "kd/resnet56_resnet20/seed3", "teachers/resnet110",
                            "teachers/resnet56", "vanilla/resnet20/seed3"]  # one vanilla run per student
    kd = runs["kd/resnet110_resnet20/seed3"]
    assert kd.recipe == str(RECIPES / "kd/resnet110_resnet20.yaml") and kd.needs == "teachers/resnet110"
    assert "epochs=2" in kd.overrides and f"teacher_checkpoint={runs['teachers/resnet110'].folder}" in kd.overrides
    assert runs["teachers/resnet110"].recipe == str(RECIPES / "teachers/resnet110.yaml")
    assert runs["vanilla/resnet20/seed3"].needs is None
    # A grid without vanilla in its methods adds each student's vanilla run (the report's baseline).
    added = expand(load_spec(None, {"out": str(tmp_path), "methods": ["kd"], "pairs": ["resnet56:resnet20"]}))
    assert [run.name for run in added] == ["kd/resnet56_resnet20/seed0", "vanilla/resnet20/seed0"]
    assert "method.name=vanilla" in added[1].overrides and not any(o.startswith("teacher") for o in added[1].overrides)
    none = expand(load_spec(None, {"out": str(tmp_path), "methods": ["kd"], "pairs": ["resnet56:resnet20"],
                                   "vanilla": False}))
    assert [run.name for run in none] == ["kd/resnet56_resnet20/seed0"]
    assert parse_pair("timm:resnet50:tv:resnet18") == ("timm:resnet50", "tv:resnet18")
    assert parse_pair(["vgg13", "vgg8"]) == ("vgg13", "vgg8")
    with pytest.raises(KdistillError, match="teacher:student"):
        parse_pair("resnet56")


def test_the_grids_teacher_cache_is_exact_unless_the_spec_chooses_its_dtype(tmp_path):
    def cache_options(*overrides: str) -> list[list[str]]:
        spec = load_spec(None, {"out": str(tmp_path), "methods": ["vanilla", "kd"], "pairs": ["resnet20:resnet8"]},
                         list(overrides))
        return [[item for item in run.overrides if item.startswith("teacher_cache")] for run in expand(spec)]

    vanilla, kd = cache_options()
    assert vanilla == [] and kd == [f"teacher_cache={tmp_path.resolve() / 'teacher_cache/resnet20_seed0'}",
                                    "teacher_cache_dtype=float32"]
    assert cache_options("teacher_cache_dtype=float16")[1] == ["teacher_cache_dtype=float16", kd[0]]


def test_submitit_jobs_requeue_as_a_resume_of_the_same_run(tmp_path):
    from kdistill.grid.launch import Launch
    from kdistill.grid.slurm import SubmititRun

    run = expand(load_spec(None, {"out": str(tmp_path), "methods": ["kd"], "pairs": ["resnet8:resnet8"]}))[0]
    requeued = SubmititRun(Launch(run, "distill", resume=False), gpus=2).checkpoint()
    assert requeued.function.launch == Launch(run, "distill", resume=True) and requeued.function.gpus == 2


def test_slurm_without_submitit_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['submitit'] = None; from kdistill.cli import main; "
            f"sys.exit(main(['grid', '--launcher', 'slurm', '--methods', 'kd', '--pairs', 'resnet8:resnet8', "
            f"'--out', '{tmp_path}']))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ('kdistill: error: --launcher slurm needs submitit: pip install -e ".[slurm]" '
                                      '(in a clone of kdistill)')


def test_the_grid_gives_a_teacher_cache_only_to_the_methods_it_can_serve(tmp_path):
    """A feature method (ReviewKD reads the teacher's stage maps) runs its teacher: the grid's
    implicit cache would make its run refuse to start."""
    methods = {"kd": [], "reviewkd": [], "dcd": [], "dcd_stage": ["method.name=dcd", "method.teacher_feature=-1"]}
    spec = load_spec(None, {"out": str(tmp_path), "methods": methods, "pairs": ["resnet20:resnet8"],
                            "vanilla": False})
    cached = {run.method: any(item.startswith("teacher_cache=") for item in run.overrides) for run in expand(spec)}
    # DCD on a stage map (teacher_feature=-1) reads more than the cache stores
    assert cached == {"kd": True, "reviewkd": False, "dcd": True, "dcd_stage": False}
