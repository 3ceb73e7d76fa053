"""The model zoo, the timm/torchvision adapters and checkpoint loading."""

import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.models import (
    create_model,
    list_models,
    load_checkpoint,
)

# Parameters in millions (num_classes=100) of the CRD benchmark's CIFAR-100 models.
PARAM_MILLIONS = {
    "resnet8": 0.084,
    "resnet14": 0.181,
    "resnet20": 0.278,
    "resnet32": 0.473,
    "resnet44": 0.667,
    "resnet56": 0.862,
    "resnet110": 1.737,
    "resnet8x4": 1.234,
    "resnet32x4": 7.434,
    "wrn_16_1": 0.181,
    "wrn_16_2": 0.703,
    "wrn_40_1": 0.570,
    "wrn_40_2": 2.255,
    "vgg8": 3.965,
    "vgg11": 9.277,
    "vgg13": 9.462,
    "vgg16": 14.774,
    "vgg19": 20.087,
    "ResNet50": 23.705,
    "MobileNetV2": 0.813,
    "ShuffleV1": 0.949,
    "ShuffleV2": 1.356,
}

# Feature shapes on a [2, 3, 32, 32] batch: (stages, pooled).
FEATURE_SHAPES = {
    "resnet8x4": ([[2, 32, 32, 32], [2, 64, 32, 32], [2, 128, 16, 16], [2, 256, 8, 8]], [2, 256]),
    "resnet56": ([[2, 16, 32, 32], [2, 16, 32, 32], [2, 32, 16, 16], [2, 64, 8, 8]], [2, 64]),
    "wrn_40_2": ([[2, 16, 32, 32], [2, 32, 32, 32], [2, 64, 16, 16], [2, 128, 8, 8]], [2, 128]),
    "vgg13": ([[2, 64, 32, 32], [2, 128, 16, 16], [2, 256, 8, 8], [2, 512, 4, 4], [2, 512, 4, 4]], [2, 512]),
    "ResNet50": ([[2, 64, 32, 32], [2, 256, 32, 32], [2, 512, 16, 16], [2, 1024, 8, 8], [2, 2048, 4, 4]], [2, 2048]),
    "MobileNetV2": ([[2, 16, 16, 16], [2, 12, 16, 16], [2, 16, 8, 8], [2, 48, 4, 4], [2, 160, 2, 2]], [2, 1280]),
    "ShuffleV1": ([[2, 24, 32, 32], [2, 240, 16, 16], [2, 480, 8, 8], [2, 960, 4, 4]], [2, 960]),
    "ShuffleV2": ([[2, 24, 32, 32], [2, 116, 16, 16], [2, 232, 8, 8], [2, 464, 4, 4]], [2, 1024]),
}

RESNET18_STAGES = [[2, 64, 16, 16], [2, 64, 8, 8], [2, 128, 4, 4], [2, 256, 2, 2], [2, 512, 1, 1]]


def shapes(tensors):
    return [list(t.shape) for t in tensors]


def randomize_bn_statistics(model):
    """Non-trivial BN buffers, so outputs in eval mode depend on them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)


def test_every_zoo_name_is_registered():
    assert set(PARAM_MILLIONS) <= set(list_models())


@pytest.mark.parametrize("name", PARAM_MILLIONS)
def test_zoo_model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).eval()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == PARAM_MILLIONS[name]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.extract(x, preact=True)
        assert list(features.logits.shape) == [2, 100]
        assert shapes(features.preact) == shapes(features.stages)
        assert model.extract(x).preact is None
        torch.testing.assert_close(model(x), features.logits)


@pytest.mark.parametrize("name", PARAM_MILLIONS)
def test_zoo_model_takes_one_channel_28px_input(name):
    model = create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert list(model(torch.randn(2, 1, 28, 28)).shape) == [2, 10]


@pytest.mark.parametrize("name", FEATURE_SHAPES)
def test_feature_shapes(name):
    stage_shapes, pooled_shape = FEATURE_SHAPES[name]
    with torch.no_grad():
        features = create_model(name).eval().extract(torch.randn(2, 3, 32, 32))
    assert shapes(features.stages) == stage_shapes
    assert list(features.pooled.shape) == pooled_shape


def test_vgg_pools_before_its_last_block_only_on_64px_inputs():
    with torch.no_grad():
        stages = create_model("vgg8").eval().extract(torch.randn(2, 3, 64, 64)).stages
    assert shapes(stages[-2:]) == [[2, 512, 8, 8], [2, 512, 4, 4]]


def test_wrn_preact_does_not_touch_bn_statistics():
    """preact=True re-applies BNs to read the maps; that must not update their statistics."""
    torch.manual_seed(0)
    plain = create_model("wrn_16_1").train()
    torch.manual_seed(0)
    with_preact = create_model("wrn_16_1").train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(with_preact.extract(x, preact=True).logits, plain.extract(x).logits)
    for name, buffer in plain.state_dict().items():
        torch.testing.assert_close(with_preact.state_dict()[name], buffer, msg=name)


def test_zoo_models_reject_options():
    with pytest.raises(KdistillError, match="img_size"):
        create_model("resnet8", img_size=32)


# --- checkpoints -------------------------------------------------------------------------


def save_public_checkpoint(model, directory):
    path = directory / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "epoch": 240}, path)
    return path


def test_public_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path):
    trained = create_model("resnet8x4").eval()
    randomize_bn_statistics(trained)
    path = save_public_checkpoint(trained, tmp_path)
    fresh = create_model("resnet8x4").eval()
    load_checkpoint(fresh, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: {"state_dict": state},
        lambda state: state,
        lambda state: {f"module.{key}": value for key, value in state.items()},
        lambda state: {"model": {key: v for key, v in state.items() if not key.endswith("num_batches_tracked")}},
    ],
    ids=["state_dict_key", "bare", "dataparallel_prefix", "no_num_batches_tracked"],
)
def test_other_checkpoint_layouts_load(tmp_path, wrap):
    trained = create_model("resnet8").eval()
    randomize_bn_statistics(trained)
    torch.save(wrap(trained.state_dict()), tmp_path / "ckpt.pth")
    fresh = create_model("resnet8").eval()
    load_checkpoint(fresh, tmp_path / "ckpt.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)


def test_wrong_architecture_names_mismatched_keys(tmp_path):
    path = save_public_checkpoint(create_model("resnet8"), tmp_path)
    with pytest.raises(KdistillError) as error:
        load_checkpoint(create_model("resnet8x4"), path)
    assert "layer1.0.downsample.0.weight" in str(error.value)  # missing from the file
    assert "conv1.weight" in str(error.value)  # wrong shape


@pytest.mark.parametrize("contents", [b"not a checkpoint", None], ids=["garbage", "no_state_dict"])
def test_unreadable_checkpoint_raises(tmp_path, contents):
    path = tmp_path / "bad.pth"
    if contents is None:
        torch.save({"epoch": 240}, path)
    else:
        path.write_bytes(contents)
    with pytest.raises(KdistillError, match="bad.pth"):
        load_checkpoint(create_model("resnet8"), path)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(KdistillError, match="not found"):
        load_checkpoint(create_model("resnet8"), tmp_path / "nope.pth")


# --- adapters ----------------------------------------------------------------------------


def test_timm_cnn_adapter():
    model = create_model("timm:resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.extract(x, preact=True)
        torch.testing.assert_close(model(x), features.logits)
    assert shapes(features.stages) == RESNET18_STAGES
    assert list(features.pooled.shape) == [2, 512]
    assert list(features.logits.shape) == [2, 10]
    assert shapes(features.preact) == RESNET18_STAGES


def test_timm_vit_adapter_and_tokens():
    model = create_model("timm:vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=32, patch_size=4, depth=2)
    model.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        features = model.extract(x)
        tokens = model.tokens(x)
    assert shapes(features.stages) == [[2, 192, 8, 8]] * 2  # one map per block, 8x8 patches
    assert list(features.pooled.shape) == [2, 192]
    assert list(features.logits.shape) == [2, 10]
    assert list(tokens.tokens.shape) == [2, 1 + 64, 192] and tokens.grid == (8, 8) and tokens.logits is None
    torch.testing.assert_close(tokens.tokens[:, 0], features.pooled)  # class token first


@pytest.mark.parametrize("name", ["resnet8", "timm:resnet18", "tv:resnet18", "MobileNetV2"])
def test_cnn_tokens_are_the_pooled_feature_then_the_last_map_positions(name):
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, tokens = model.extract(x), model.tokens(x)
    last_map = features.stages[-1]
    channels, height, width = last_map.shape[1:]
    assert tokens.grid == (height, width) and tokens.tokens.shape == (2, 1 + height * width, channels)
    torch.testing.assert_close(tokens.tokens[:, 1:], last_map.flatten(2).transpose(1, 2))
    # MobileNetV2's pooled feature follows a further conv, so its CLS token is the map's mean.
    cls = last_map.mean(dim=(2, 3)) if features.pooled.shape[1] != channels else features.pooled
    torch.testing.assert_close(tokens.tokens[:, 0], cls)
    torch.testing.assert_close(tokens.logits, features.logits)


def test_timm_head_runs_once_so_dropout_draws_one_mask():
    model = create_model("timm:resnet18", num_classes=10, drop_rate=0.5).train()
    features = model.extract(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(features.logits, model.model.get_classifier()(features.pooled))


def test_torchvision_adapter():
    model = create_model("tv:resnet18", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        features = model.extract(x)
        torch.testing.assert_close(model(x), features.logits)
    assert shapes(features.stages) == RESNET18_STAGES
    assert list(features.pooled.shape) == [2, 512]
    assert list(features.logits.shape) == [2, 10]
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("name", ["foo", "timm:nonexistent", "tv:nonexistent", "tv:vit_b_16"])
def test_unknown_or_unsupported_names_raise(name):
    with pytest.raises(KdistillError):
        create_model(name)


def test_plain_torchvision_weight_file_loads_into_its_adapter(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # as torchvision's own weight files are stored
    adapter = create_model("tv:resnet18", num_classes=10)
    load_checkpoint(adapter, path)
    x = torch.randn(2, 3, 32, 32)
    adapter.eval(), reference.eval()
    torch.testing.assert_close(adapter(x), reference(x))


def test_backbone_only_file_loads_only_when_the_head_may_be_missing(tmp_path):
    model = create_model("resnet8", num_classes=10)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "backbone.pth"
    torch.save(backbone, path)
    with pytest.raises(KdistillError, match="missing fc.weight"):
        load_checkpoint(create_model("resnet8", num_classes=10), path)
    fresh = create_model("resnet8", num_classes=10)
    load_checkpoint(fresh, path, allow_missing_head=True)
    torch.testing.assert_close(fresh.conv1.weight, model.conv1.weight)
