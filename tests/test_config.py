import dataclasses

import pytest
import torch
import yaml
from helpers import QUICK_RUN

from kdistill.config import OptimName, Precision, ScheduleName, config_to_dict, recorded_config
from kdistill.config.loading import load_config
from kdistill.engine import resolve_run, train_run
from kdistill.errors import KdistillError
from kdistill.losses import ContrastiveForm
from kdistill.methods.crd import CRD, CRDOptions
from kdistill.methods.crld import CRLDOptions
from kdistill.models import create_model


def test_the_loaded_config_is_frozen_all_the_way_down():
    cfg = load_config(None, ["epochs=3"])
    for node, key in ((cfg, "epochs"), (cfg.data, "batch_size"), (cfg.optim, "lr"), (cfg.schedule, "gamma"),
                      (cfg.method, "name")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(node, key, 1)
    assert cfg.schedule.milestones == (150, 180, 210)  # a tuple: not appendable either


def test_enum_keys_are_enums_and_bad_values_name_the_valid_ones(tmp_path):
    cfg = load_config(None, ["optim.name=adamw", "schedule.name=cosine"])
    assert cfg.optim.name is OptimName.adamw and cfg.schedule.name is ScheduleName.cosine
    with pytest.raises(KdistillError, match=r"optim.name.*sgd, adamw"):
        load_config(None, ["optim.name=rmsprop"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("schedule:\n  name: poly\n")
    with pytest.raises(KdistillError, match=r"schedule.name.*step, cosine"):
        load_config(str(recipe))


def test_the_method_section_is_parsed_into_the_methods_options_at_load(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method:\n  name: crd\n  feat_dim: 64\n")
    cfg = load_config(str(recipe), ["method.temperature_nce=0.1"])
    assert (cfg.method.name, cfg.method.options) == ("crd", CRDOptions(feat_dim=64, temperature_nce=0.1))
    assert type(cfg.method.options) is CRDOptions
    default = load_config()
    assert default.method.name == "vanilla" and default.method.options.w_ce is None


def test_the_method_is_resolved_once_into_a_spec_of_what_it_needs():
    crd = load_config(None, ["method.name=crd"]).method.spec
    assert (crd.distiller, crd.needs_teacher, crd.teacher_reads, crd.views) == (
        CRD, True, frozenset({"logits", "pooled"}), ("image",))
    # an option that picks a stage map makes the teacher's stages part of what the method reads
    assert load_config(None, ["method.name=dcd", "method.teacher_feature=-1"]).method.spec.teacher_reads == \
        frozenset({"logits", "pooled", "stages"})
    crld = load_config(None, ["method.name=crld"]).method.spec
    assert crld.views == ("image", "image_strong") and crld.needs_strong_view and crld.matches_logits
    vanilla = load_config().method.spec
    assert not vanilla.needs_teacher and not vanilla.needs_strong_view


def test_loaded_options_are_read_only_and_choices_are_enums():
    cfg = load_config(None, ["method.name=dcd", "method.form=sigmoid", "precision=bf16",
                             "teacher_options={drop_rate: 0.1}"])
    assert cfg.method.options.form is ContrastiveForm.sigmoid and cfg.precision is Precision.bf16
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.method.options.proj_dim = 3
    with pytest.raises(TypeError):
        cfg.teacher_options["drop_rate"] = 0.5
    for bad, key in (["method.form=cosine"], "form"), (["precision=fp8"], "precision"), \
            (["method.name=crd", "method.negatives=some"], "negatives"), \
            (["method.name=crd", "method.student_feature=last"], "student_feature"):
        with pytest.raises(KdistillError, match=key):
            load_config(None, ["method.name=dcd", *bad] if bad[0].startswith("method.form") else bad)


def test_unknown_method_and_unknown_option_are_one_line_errors_at_load():
    bad_option = r"method 'kd': bad option .*'feat_dim'.*its options are: .*temperature, .*w_ce"
    with pytest.raises(KdistillError, match=bad_option):
        load_config(None, ["method.name=kd", "method.feat_dim=3"])
    with pytest.raises(KdistillError, match="unknown method 'kdd': did you mean kd"):
        load_config(None, ["method.name=kdd"])


def test_non_positive_epochs_and_steps_are_refused_at_load():
    with pytest.raises(KdistillError, match="epochs=0: a run needs at least one epoch"):
        load_config(None, ["epochs=0"])
    with pytest.raises(KdistillError, match="steps_per_epoch=0"):
        load_config(None, ["steps_per_epoch=0"])


def test_saved_config_round_trips_in_the_users_shape(tmp_path):
    cfg = load_config(None, ["method.name=crld", "method.w_method=2", "optim.name=adamw", "schedule.milestones=[3,4]"])
    values = config_to_dict(cfg)
    assert values["method"]["name"] == "crld" and values["method"]["w_method"] == 2
    assert values["optim"]["name"] == "adamw" and values["schedule"]["milestones"] == [3, 4]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    assert load_config(str(tmp_path / "config.yaml")) == cfg


def test_derived_values_are_passed_not_written_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["method.name=crld", "resume=true", "data.root=data", "teacher_checkpoint=t.pth"])
    resolved = resolve_run(cfg)
    assert resolved.strong_view and not hasattr(cfg.data, "strong_view")  # not a config key any more
    absolute = (str(tmp_path / "data"), str(tmp_path / "t.pth"))
    assert (resolved.cfg.data.root, resolved.cfg.teacher_checkpoint) == absolute
    assert (cfg.data.root, cfg.teacher_checkpoint) == ("data", "t.pth")  # the loaded config is untouched
    assert cfg.resume and not recorded_config(cfg).resume  # what config.yaml records
    assert type(cfg.method.options) is CRLDOptions


def test_a_run_leaves_its_config_unchanged_and_saves_it_without_the_resume_flag(tmp_path):
    cfg = load_config(None, QUICK_RUN + ["epochs=1", "steps_per_epoch=1", "method.name=crld", "teacher=resnet8",
                                         f"teacher_checkpoint={tmp_path / 'teacher.pth'}", f"out={tmp_path / 'run'}",
                                         "resume=true"])
    torch.save(create_model("resnet8", num_classes=10, in_chans=1).state_dict(), tmp_path / "teacher.pth")
    before = dataclasses.asdict(cfg)
    train_run(cfg)
    assert dataclasses.asdict(cfg) == before
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    assert saved == dataclasses.replace(cfg, resume=False)


def test_a_config_saved_by_an_earlier_version_still_loads(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text("student: resnet8\namp: true\ndata:\n  name: embedded\n  strong_view: true\nmethod:\n  name: kd\n")
    cfg = load_config(str(saved))
    assert cfg.precision == "fp16" and cfg.data.name == "embedded" and not hasattr(cfg.data, "strong_view")
    saved.write_text("student: resnet8\namp: false\nmethod:\n  name: kd\n")
    assert load_config(str(saved)).precision == "fp32"
