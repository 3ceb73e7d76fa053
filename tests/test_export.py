"""`kdistill export`: each format loads in a fresh process without kdistill and predicts what the run
measured on the whole evaluation split; a file that does not reproduce the model is refused."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUICK_RUN, run_kdistill

from kdistill.cli import main
from kdistill.config.loading import load_config
from kdistill.data.sources import DATASETS
from kdistill.engine import train_run
from kdistill.errors import KdistillError
from kdistill.eval.common import load_evaluation, resolve_target
from kdistill.eval.run import evaluate_target
from kdistill.export.bundle import export_run
from kdistill.models.checkpoint import UnreadableCheckpoint, read_state_dict

# Runs the exported model in each format on the evaluation split in a process that has no
# kdistill: the preprocessing comes from config.json only. Prints {format: predictions} as JSON.
FRESH_PROCESS = """
import json, sys
import numpy as np
folder, data, formats = sys.argv[1], np.load(sys.argv[2]), sys.argv[3:]
config = json.load(open(f"{folder}/config.json"))
prep = config["preprocessing"]
assert list(data["pixels"].shape[1:]) == prep["input_size"]  # same size: no resize, crop_pct 1
shape = (1, -1, 1, 1)
images = ((data["pixels"] / 255.0 - np.array(prep["mean"]).reshape(shape))
          / np.array(prep["std"]).reshape(shape)).astype(np.float32)


def onnx_logits():
    import onnxruntime
    session = onnxruntime.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    batch = 500 if config["onnx"]["dynamic_batch"] else 1
    return np.concatenate([session.run(["logits"], {"image": images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def torch_logits(fmt):
    import torch
    if fmt == "torchscript":
        model = torch.jit.load(f"{folder}/model.torchscript.pt")
    elif fmt == "timm-local-dir":
        import timm
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    else:  # timm-overlay: the architecture by name, with the exported pretrained_cfg and file
        import timm
        model = timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                                  pretrained_cfg_overlay=dict(config["pretrained_cfg"],
                                                              file=f"{folder}/model.safetensors"))
    with torch.no_grad():
        return torch.cat([model.eval()(torch.from_numpy(part)) for part in np.split(images, 4)]).numpy()


found = {fmt: (onnx_logits() if fmt == "onnx" else torch_logits(fmt)).argmax(1).tolist() for fmt in formats}
assert not [name for name in sys.modules if name.startswith("kdistill")]
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def eval_split(tmp_path_factory) -> Path:
    test = DATASETS.get("embedded")(None, False).test
    path = tmp_path_factory.mktemp("data") / "test_split.npz"
    np.savez(path, pixels=test.images.numpy(), labels=test.labels.numpy())
    return path


def trained_run(folder: Path, student: str) -> Path:
    """A finished 1-epoch run, trained in this process (the CLI's training path has its own tests)."""
    with contextlib.redirect_stdout(io.StringIO()):
        train_run(load_config(None, [*QUICK_RUN, f"student={student}", "epochs=1", f"out={folder}"]))
    return folder


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("zoo") / "run", "resnet8")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("timm") / "run", "timm:resnet10t")


def run_predictions(run: Path) -> tuple[list[int], float]:
    """The run's PyTorch student's test-split predictions, and the top-1 the run measured."""
    evaluation = load_evaluation(resolve_target(str(run), ["device=cpu"]), teacher="none")
    model = evaluation.models["student"].model
    with torch.no_grad():
        predictions = torch.cat([model(batch["image"]).argmax(1) for batch in evaluation.loaders.test])
    return predictions.tolist(), json.loads((run / "results.json").read_text())["top1_last"]


def assert_fresh_process_predicts_as_the_run(folder: Path, formats: list[str], run: Path, eval_split: Path) -> None:
    """Each format, loaded in one fresh process without kdistill, predicts every evaluation image as
    the run's PyTorch student does, so its top-1 is the run's."""
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder), str(eval_split), *formats],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    expected, top1 = run_predictions(run)
    labels = np.load(eval_split)["labels"]
    for fmt in formats:
        assert found[fmt] == expected, fmt
        assert 100.0 * float(np.mean(np.array(found[fmt]) == labels)) == pytest.approx(top1, abs=1e-9)


@pytest.mark.slow
def test_zoo_student_exports_every_format_and_each_predicts_what_the_run_measured(zoo_run, eval_split):
    result = run_kdistill("export", str(zoo_run), "--format", "safetensors", "pth", "torchscript", "onnx")
    assert result.returncode == 0, result.stderr
    for fmt in ("safetensors", "pth", "torchscript", "onnx"):
        assert any(line.startswith(f"{fmt}: model.") and "max |logit difference| to PyTorch" in line
                   for line in result.stdout.splitlines()), result.stdout
    folder = zoo_run / "export"
    assert_fresh_process_predicts_as_the_run(folder, ["onnx", "torchscript"], zoo_run, eval_split)
    # The weight files load where kdistill takes a weight file (the public layout as a teacher's).
    top1 = json.loads((zoo_run / "results.json").read_text())["top1_last"]
    for name in ("model.pth", "model.safetensors"):
        assert evaluate_target(str(folder / name), QUICK_RUN)["top1"] == pytest.approx(top1, abs=1e-9)
    assert set(torch.load(folder / "model.pth", weights_only=True)) == {"model"}

    config = json.loads((folder / "config.json").read_text())
    assert config["class_names"][:2] == ["T-shirt/top", "Trouser"]
    assert config["preprocessing"] == {"input_size": [1, 28, 28], "mean": [0.286], "std": [0.353],
                                       "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    card = (folder / "README.md").read_text()
    for fragment in ("| method | `vanilla` |", "| seed | 0 |", "| epochs | 1 |", f"{top1:.2f} / ", "student: resnet8",
                     "| kdistill | 0.1.0 |"):
        assert fragment in card


@pytest.mark.slow
def test_timm_student_loads_in_timm_from_the_export_folder(timm_run, eval_split, tmp_path):
    folder = tmp_path / "export"
    result = run_kdistill("export", str(timm_run), "--format", "safetensors", "torchscript", "onnx", "--dynamic-batch",
                          "--out", str(folder))
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.onnx",
                                                              "model.safetensors", "model.torchscript.pt"]
    assert_fresh_process_predicts_as_the_run(folder, ["timm-local-dir", "timm-overlay", "torchscript", "onnx"],
                                             timm_run, eval_split)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["model_args"]["in_chans"] == 1
    assert config["pretrained_cfg"]["mean"] == [0.286] and "tag" not in config["pretrained_cfg"]


@pytest.mark.slow
def test_a_student_predicting_through_the_teachers_head_is_exported_with_it(zoo_run, eval_split, tmp_path):
    # SimKD deploys student + projector + the teacher's classifier; the export holds all three.
    run = tmp_path / "simkd"
    with contextlib.redirect_stdout(io.StringIO()):
        train_run(load_config(None, [*QUICK_RUN, "epochs=1", "method.name=simkd", "teacher=resnet8",
                                     f"teacher_checkpoint={zoo_run}", f"out={run}"]))
    folder = tmp_path / "export"
    export_run(str(run), [], out=str(folder), formats=["safetensors", "onnx"], dynamic_batch=True,
               report=lambda line: None)
    parts = {key.split(".")[0] for key in read_state_dict(folder / "model.safetensors")}
    assert parts == {"backbone", "projector", "classifier"}
    assert_fresh_process_predicts_as_the_run(folder, ["onnx"], run, eval_split)


def test_fp16_export_passes_its_check(zoo_run, tmp_path):
    lines = []
    export_run(str(zoo_run), [], formats=["safetensors", "onnx"], out=str(tmp_path), fp16=True, report=lines.append)
    assert len(lines) == 2 and all("(tolerance 2.0e-02)" in line for line in lines)
    weights = read_state_dict(tmp_path / "model.safetensors").values()
    assert {value.dtype for value in weights if value.is_floating_point()} == {torch.float16}


def test_a_file_that_does_not_reproduce_the_model_is_refused(zoo_run, tmp_path, monkeypatch):
    from kdistill.export import bundle

    def save_perturbed(state_dict, path, metadata=None):
        real_save({key: value + 0.5 if value.is_floating_point() else value for key, value in state_dict.items()},
                  path, metadata)

    real_save = bundle.save_safetensors
    monkeypatch.setattr(bundle, "save_safetensors", save_perturbed)
    with pytest.raises(KdistillError, match="does not reproduce the PyTorch model: max"):
        export_run(str(zoo_run), [], formats=["safetensors"], out=str(tmp_path), report=lambda line: None)


def test_export_of_what_is_not_a_finished_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"kdistill: error: '{tmp_path / 'missing'}' is not a run folder: give the folder of a finished run"]
    (tmp_path / "config.yaml").write_text("student: resnet8\n")
    with pytest.raises(KdistillError, match="the run has not finished"):
        export_run(str(tmp_path), [])


def test_an_out_that_is_a_file_is_one_line(zoo_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["export", str(zoo_run), "--out", str(taken)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"kdistill: error: --out {taken} is a file: give a folder for the exported files"]


def test_a_damaged_safetensors_file_is_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UnreadableCheckpoint, match="not a readable safetensors file"):
        read_state_dict(path)
