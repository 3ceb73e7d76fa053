import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.losses import kd_loss
from kdistill.methods import MethodContext, build_distiller, list_methods, method_class
from kdistill.models import create_model

INPUT = MethodContext((1, 28, 28), num_classes=10)


def make_pair():
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=10, in_chans=1), create_model("resnet14", num_classes=10, in_chans=1)


def batch(n=4):
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, *INPUT.input_shape, generator=generator), "label": torch.arange(n) % 10,
            "index": torch.arange(n)}


def test_registry_lists_vanilla_and_kd():
    assert {"vanilla", "kd"} <= set(list_methods())


def test_kd_method_terms_and_table_weights():
    student, teacher = make_pair()
    distiller = build_distiller({"name": "kd"}, student, teacher, INPUT)
    data = batch()
    output = distiller(data)
    assert set(output.terms) == {"ce", "kd"}
    assert (distiller.loss_weight("ce"), distiller.loss_weight("kd")) == (0.1, 0.9)
    with torch.no_grad():
        expected = kd_loss(student(data["image"]), teacher(data["image"]), 4.0)
    torch.testing.assert_close(output.terms["kd"], expected)


def test_weights_and_temperature_are_options():
    student, teacher = make_pair()
    distiller = build_distiller({"name": "kd", "w_ce": 0.5, "temperature": 2.0}, student, teacher, INPUT)
    assert distiller.loss_weight("ce") == 0.5 and distiller.loss_weight("kd") == 0.9
    assert distiller.options.temperature == 2.0


def test_teacher_is_frozen_and_stays_in_eval_mode():
    student, teacher = make_pair()
    distiller = build_distiller({"name": "kd"}, student, teacher, INPUT).train()
    assert not distiller.teacher.training and distiller.student.training
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    output = distiller(batch())
    sum(output.terms.values()).backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert any(p.grad is not None for p in distiller.student.parameters())
    assert not any(k.startswith("teacher.") for k in distiller.trainable_state_dict())


def test_vanilla_ignores_the_teacher():
    student, teacher = make_pair()
    distiller = build_distiller({"name": "vanilla"}, student, teacher, INPUT)
    assert distiller.teacher is None
    assert set(distiller(batch()).terms) == {"ce"}


def test_plus_kd_variants_are_registered_exactly_for_the_methods_that_offer_them():
    offered = {name for name in list_methods() if name.endswith("+kd")}
    assert {"dcd+kd", "icd+kd", "crd+kd", "crld+kd", "fitnet+kd"} <= offered
    assert not {"kd+kd", "vanilla+kd", "tintem+kd", "proteus+kd"} & offered
    assert method_class("crd+kd").default_weights == {**method_class("crd").default_weights, "w_kd": 1.0}
    with pytest.raises(KdistillError, match="unknown method 'tintem\\+kd'"):
        method_class("tintem+kd")


def test_unknown_method_and_option_errors_name_the_fix():
    student, teacher = make_pair()
    with pytest.raises(KdistillError, match="did you mean kd"):
        build_distiller({"name": "kdd"}, student, teacher, INPUT)
    with pytest.raises(KdistillError, match="temperature"):
        build_distiller({"name": "kd", "temprature": 3}, student, teacher, INPUT)
    with pytest.raises(KdistillError, match="needs a teacher"):
        build_distiller({"name": "kd"}, student, None, INPUT)
