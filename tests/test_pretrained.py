"""Pretrained timm / torchvision weights: the offline error, weights found in the libraries' caches,
the classifier kept or replaced, the library's preprocessing, and `kdistill list --teachers`."""

import json
import os
import re
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUICK_RUN, run_kdistill

from kdistill.errors import KdistillError
from kdistill.models import create_model
from kdistill.models.pretrained import preprocessing, torchvision_weights, torchvision_weights_file

TV_MODEL = "shufflenet_v2_x0_5"  # the smallest torchvision CNN the adapter supports (1.4 M parameters)
TIMM_MODEL = "test_resnet.r160_in1k"  # timm's tiny test model with published weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unavailable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch"


def put_torchvision_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision model's weights written where torchvision's cache keeps the real file."""
    from torchvision import models

    torch.manual_seed(seed)
    state = models.get_model(TV_MODEL, weights=None).state_dict()
    path = torchvision_weights_file(torchvision_weights(TV_MODEL, None))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_torchvision_offline_error_names_the_url_and_the_cache_file(torch_home):
    with pytest.raises(KdistillError) as error:
        create_model(f"tv:{TV_MODEL}", num_classes=10, pretrained=True)
    message = str(error.value)
    expected_file = torch_home / "hub" / "checkpoints" / Path(torchvision_weights(TV_MODEL, None).url).name
    assert "\n" not in message and torchvision_weights(TV_MODEL, None).url in message
    assert f"at {expected_file}" in message


def test_torchvision_weights_in_the_cache_load_with_the_head_kept_or_replaced(torch_home, capsys):
    state = put_torchvision_weights()
    kept = create_model(f"tv:{TV_MODEL}", num_classes=1000, pretrained=True).model.state_dict()
    assert all(torch.equal(kept[key], value) for key, value in state.items())
    assert "classifier kept (1000 classes)" in capsys.readouterr().err
    replaced = create_model(f"tv:{TV_MODEL}", num_classes=10, in_chans=1, pretrained=True).model.state_dict()
    assert "classifier replaced (the weights have 1000 classes, the data 10)" in capsys.readouterr().err
    assert replaced["fc.weight"].shape == (10, 1024)
    assert all(torch.equal(replaced[key], value) for key, value in state.items()
               if not key.startswith(("fc.", "conv1.0.weight")))
    # One input channel: timm's adaptation sums the RGB filters.
    assert torch.allclose(replaced["conv1.0.weight"], state["conv1.0.weight"].sum(dim=1, keepdim=True))
    with pytest.raises(KdistillError, match="has no weights 'NOPE': use one of IMAGENET1K_V1"):
        create_model(f"tv:{TV_MODEL}:NOPE", num_classes=10, pretrained=True)
    untrained = create_model(f"tv:{TV_MODEL}:IMAGENET1K_V1", num_classes=10)  # the architecture alone (a file's)
    assert untrained.model.fc.out_features == 10
    with pytest.raises(KdistillError, match="no library weights"):
        create_model("resnet8", num_classes=10, pretrained=True)


def hf_snapshot(hf_home: Path) -> Path:
    return hf_home / "hub" / f"models--timm--{TIMM_MODEL}" / "snapshots" / "main" / "model.safetensors"


def put_timm_weights(hf_home: Path) -> dict[str, torch.Tensor]:
    """A timm model's weights written where huggingface_hub's cache keeps timm's file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {key: value.contiguous() for key, value in timm.create_model(TIMM_MODEL).state_dict().items()}
    file = hf_snapshot(hf_home)
    file.parent.mkdir(parents=True)
    save_file(state, str(file))
    (file.parents[2] / "refs").mkdir()
    (file.parents[2] / "refs" / "main").write_text("main")
    return state


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def test_timm_weights_in_the_hub_cache_load_with_the_head_kept_or_replaced(hf_home, capsys):
    with pytest.raises(KdistillError) as error:
        create_model(f"timm:{TIMM_MODEL}", num_classes=10, pretrained=True)
    message = str(error.value)
    assert "\n" not in message and f"https://huggingface.co/timm/{TIMM_MODEL}/resolve/main/model.safetensors" in message
    assert str(hf_snapshot(hf_home)) in message and "refs" in message
    state = put_timm_weights(hf_home)
    kept = create_model(f"timm:{TIMM_MODEL}", num_classes=1000, pretrained=True).model.state_dict()
    assert all(torch.equal(kept[key], value) for key, value in state.items())
    assert "classifier kept (1000 classes)" in capsys.readouterr().err
    replaced = create_model(f"timm:{TIMM_MODEL}", num_classes=10, pretrained=True).model.state_dict()
    assert "classifier replaced (the weights have 1000 classes, the data 10)" in capsys.readouterr().err
    assert replaced["fc.weight"].shape[0] == 10
    assert all(torch.equal(replaced[key], value) for key, value in state.items() if not key.startswith("fc."))


def offline_env(hf_home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


def test_cli_offline_error_then_a_run_with_the_cached_weights(tmp_path, monkeypatch):
    hf_home = tmp_path / "hf"
    for key, value in offline_env(hf_home).items():
        monkeypatch.setenv(key, value)
    args = [*QUICK_RUN, "epochs=1", "method.name=tintem", f"teacher=timm:{TIMM_MODEL}", "teacher_pretrained=true",
            "data.image_size=32"]
    result = run_kdistill("distill", *args, f"out={tmp_path / 'a'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert str(hf_snapshot(hf_home)) in result.stderr
    put_timm_weights(hf_home)
    result = run_kdistill("distill", *args, f"out={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "classifier replaced (the weights have 1000 classes, the data 10)" in result.stderr
    # The teacher's library preprocessing (mean/std 0.5, crop 0.95) was used where the run set none.
    data = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["data"]
    assert (data["mean"], data["std"], data["eval_crop_pct"], data["image_size"]) == ([0.5] * 3, [0.5] * 3, 0.95, 32)
    kd = run_kdistill("distill", *QUICK_RUN, "method.name=kd", f"teacher=timm:{TIMM_MODEL}", "teacher_pretrained=true",
                      f"out={tmp_path / 'c'}")
    assert kd.returncode == 2 and "have 1000 classes but data set 'embedded' has 10" in kd.stderr


def test_library_preprocessing_of_the_weights():
    tv = preprocessing("tv:resnet50:IMAGENET1K_V2")
    assert (tv.image_size, tv.interpolation, tv.mean) == (224, "bilinear", (0.485, 0.456, 0.406))
    assert round(tv.image_size / tv.crop_pct) == 232  # torchvision's resize_size for these weights
    timm_cfg = preprocessing(f"timm:{TIMM_MODEL}")
    assert (timm_cfg.image_size, timm_cfg.crop_pct, timm_cfg.std) == (160, 0.95, (0.5, 0.5, 0.5))
    assert preprocessing("timm:vit_small_patch14_dinov2.lvd142m").interpolation == "bicubic"
    assert preprocessing("resnet8") is None


def test_list_teachers_shows_recipe_teachers_and_cifar100_files(run_cli):
    result = run_cli("list", "--teachers")
    assert result.returncode == 0, result.stderr
    assert re.search(r"tv:resnet34:IMAGENET1K_V1 +https://download.pytorch.org/models/resnet34-b627a593.pth",
                     result.stdout)
    assert "https://huggingface.co/timm/vit_small_patch14_dinov2.lvd142m" in result.stdout
    assert ("https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar "
            "(member cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth)") in result.stdout


def test_every_analysis_runs_on_a_run_whose_teacher_comes_from_its_library(tmp_path, monkeypatch):
    """A library teacher has no weight file: the analyses build it as the run did and identify it by checksum."""
    hf_home = tmp_path / "hf"
    for key, value in offline_env(hf_home).items():
        monkeypatch.setenv(key, value)
    put_timm_weights(hf_home)
    run = tmp_path / "tintem"
    trained = run_kdistill("distill", *QUICK_RUN, "epochs=1", "method.name=tintem", f"teacher=timm:{TIMM_MODEL}",
                           "teacher_pretrained=true", "data.image_size=32", f"out={run}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    # Every analysis loads its models through eval.common.load_evaluation; one command of each of its
    # teacher modes ("optional": knn; "required": faithfulness) covers the library teacher's path
    # (each command's own behaviour is tested in test_eval_cli.py).
    commands = {
        "knn": ["knn", str(run), "--k", "5", "progress=false"],
        "faithfulness": ["faithfulness", str(run), "--corruptions", "jpeg", "--severities", "1", "progress=false"],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_kdistill, *args) for name, args in commands.items()}
    for name, future in futures.items():
        result = future.result()
        assert result.returncode == 0 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
    knn = json.loads((run / "knn_last.json").read_text())
    assert set(knn["top1"]) == {"student", "teacher"} and knn["models"]["teacher"] == f"timm:{TIMM_MODEL}"
