"""TinTeM and its Proteus baseline: the losses against the spec's golden values and against
formulas written out here, the map's angle preservation, where gradients go, and runs."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mean_over_ranks
from torch import nn

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.errors import KdistillError
from kdistill.losses import (
    MASKED_SIMILARITY,
    TINTEM_TEMPERATURES,
    masked_cosine_similarity,
    proteus_loss,
    tintem_loss,
    vmf_sne_loss,
)
from kdistill.methods import MethodContext, build_distiller
from kdistill.methods.label_free import resize_token_grid
from kdistill.models import create_model
from kdistill.models.base import TokenSequence

CONTEXT = MethodContext((1, 28, 28), num_classes=10)
TEN_TEMPERATURES = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# ---- the losses --------------------------------------------------------------------------


def test_temperatures_are_the_spec_ten():
    assert pytest.approx(TEN_TEMPERATURES) == TINTEM_TEMPERATURES


@pytest.mark.parametrize("temperatures, expected", [(TEN_TEMPERATURES, 8.49787), ([0.1], 2.67143)])
def test_golden_vmf_sne(temperatures, expected):
    teacher = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    mapped = torch.tensor([[1.0, 0], [0, 1], [1, 0.5], [-1, 1]])
    loss = vmf_sne_loss(masked_cosine_similarity(teacher), masked_cosine_similarity(mapped), temperatures)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def random_tokens(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_an_orthogonal_map_gives_zero_sne_loss_and_a_random_map_does_not():
    teacher = random_tokens(0, 4, 6, 5)  # 4 images of 1 + 5 tokens, width 5
    orthonormal_rows = torch.linalg.qr(random_tokens(1, 7, 7))[0][:5]  # 5 -> 7, preserves inner products
    random_map = random_tokens(2, 5, 7)
    student = random_tokens(3, 4, 6, 7)
    exact = tintem_loss(student, teacher, teacher @ orthonormal_rows)
    assert abs(exact["local"].item()) < 1e-6 and abs(exact["global"].item()) < 1e-6
    distorted = tintem_loss(student, teacher, teacher @ random_map)
    assert distorted["local"].item() > 0.05 and distorted["global"].item() > 0.05


def independent_sne(teacher_rows, mapped_rows, temperatures):
    """vMF-SNE written out in float64: per temperature, conditional probabilities over the other
    rows, the symmetrised joint distribution over ordered pairs, and KL(teacher || mapped)."""

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    def joint(rows, temperature):
        n = len(rows)
        conditional = []
        for j in range(n):
            weights = [math.exp(cosine(rows[j], rows[k]) / temperature) if k != j else 0.0 for k in range(n)]
            conditional.append([w / sum(weights) for w in weights])
        symmetric = [[conditional[j][k] + conditional[k][j] for k in range(n)] for j in range(n)]
        total = sum(map(sum, symmetric))
        return [[value / total for value in row] for row in symmetric]

    n = len(teacher_rows)
    loss = 0.0
    for temperature in temperatures:
        p, q = joint(teacher_rows, temperature), joint(mapped_rows, temperature)
        loss += sum(p[j][k] * math.log(p[j][k] / q[j][k]) for j in range(n) for k in range(n) if j != k)
    return loss / len(temperatures)


def one_minus_cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return 1 - dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.parametrize("temperatures", [[0.1], TEN_TEMPERATURES])
def test_tintem_loss_against_an_independent_computation(temperatures):
    teacher = [[[1.0, 0.0, 0.5], [0.2, 1.0, 0.0], [0.0, -0.3, 1.0], [1.0, 1.0, 0.0]],
               [[0.5, 0.5, 0.5], [1.0, -1.0, 0.2], [0.0, 0.4, -1.0], [-0.6, 0.1, 0.3]],
               [[0.3, -0.2, 0.9], [0.7, 0.1, 0.1], [-1.0, 0.5, 0.5], [0.2, 0.2, -0.8]]]
    weight, bias = [[0.8, -0.3], [0.1, 1.2], [-0.5, 0.4]], [0.05, -0.1]  # a fixed map 3 -> 2
    mapped = [[[sum(token[i] * weight[i][o] for i in range(3)) + bias[o] for o in range(2)] for token in image]
              for image in teacher]
    student = [[[0.9, -0.1], [0.3, 0.8], [-0.2, 0.5], [1.0, 0.7]],
               [[0.1, 0.6], [0.9, -0.9], [0.4, -0.6], [-0.5, 0.3]],
               [[0.2, 0.9], [0.6, 0.2], [-0.8, 0.1], [0.3, -0.7]]]
    flat = lambda image: [x for token in image for x in token]
    expected = {
        "local": sum(independent_sne(t, m, temperatures) for t, m in zip(teacher, mapped)) / 3,
        "global": independent_sne([t[0] for t in teacher], [m[0] for m in mapped], temperatures),
        "feature": sum(one_minus_cosine(flat(s), flat(m)) for s, m in zip(student, mapped)) / 3,
        "token": sum(one_minus_cosine(s[0], m[0]) for s, m in zip(student, mapped)) / 3,
    }
    expected["total"] = sum(expected.values())
    parts = tintem_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(mapped), temperatures)
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert min(expected["local"], expected["global"]) > 0.01  # the case is not trivially zero


def test_the_map_learns_to_preserve_angles():
    """Teacher tokens inside a 6-dimensional subspace of R^32, an 8-wide student space: the SNE
    terms alone bring the map's cosine similarities to the teacher's from far away."""
    basis = torch.linalg.qr(random_tokens(0, 32, 6))[0]
    teacher = random_tokens(1, 8, 17, 6) @ basis.T
    torch.manual_seed(0)
    head = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 8))  # TinTeM's map, randomly initialised

    def largest_cosine_difference():
        with torch.no_grad():
            unit = lambda z: nn.functional.normalize(z, dim=-1)
            cosines = lambda z: unit(z) @ unit(z).transpose(-1, -2)
            mapped = head(teacher)
            return max((cosines(mapped) - cosines(teacher)).abs().max().item(),
                       (cosines(mapped[:, 0]) - cosines(teacher[:, 0])).abs().max().item())

    assert largest_cosine_difference() > 0.8
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        mapped = head(teacher)
        parts = tintem_loss(mapped, teacher, mapped)
        optimizer.zero_grad()
        (parts["local"] + parts["global"]).backward()
        optimizer.step()
    assert largest_cosine_difference() < 0.1


def test_similarity_is_float32_under_autocast_and_masks_the_diagonal():
    z = random_tokens(0, 2, 5, 16)
    plain = masked_cosine_similarity(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = masked_cosine_similarity(z)
        loss_under_autocast = vmf_sne_loss(under_autocast, masked_cosine_similarity(z.flip(-1) * 2 - 1))
    assert under_autocast.dtype == torch.float32 and loss_under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain, rtol=0, atol=1e-6)  # bfloat16 products would be ~1e-2 off
    assert torch.all(torch.diagonal(plain, dim1=-2, dim2=-1) == MASKED_SIMILARITY)
    assert loss_under_autocast.item() == pytest.approx(
        vmf_sne_loss(plain, masked_cosine_similarity(z.flip(-1) * 2 - 1)).item(), rel=1e-5)


def test_no_nan_for_zero_features_or_an_all_masked_row():
    zeros = torch.zeros(2, 4, 3, requires_grad=True)
    similarity = masked_cosine_similarity(zeros)
    assert torch.all(similarity[:, 0, 1:] == 0)
    loss = vmf_sne_loss(masked_cosine_similarity(random_tokens(0, 2, 4, 3)), similarity)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zeros.grad).all()
    # One image: its CLS-CLS matrix is a single masked entry; zero tokens everywhere.
    mapped = torch.zeros(1, 3, 2, requires_grad=True)
    student = torch.zeros(1, 3, 2, requires_grad=True)
    parts = tintem_loss(student, torch.zeros(1, 3, 4), mapped)
    assert parts["global"].item() == 0.0
    parts["total"].backward()
    assert all(torch.isfinite(v) for v in parts.values())
    assert torch.isfinite(mapped.grad).all() and torch.isfinite(student.grad).all()


def test_proteus_loss_against_the_formula():
    mapped = [[[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], [[0.0, 1.0], [2.0, 2.0], [-1.0, 1.5]]]
    teacher = [[[0.5, 2.5], [0.0, 0.0], [1.0, 1.0]], [[1.0, -1.0], [2.0, 1.0], [0.0, 0.5]]]
    squares = lambda rows: [(m - t) ** 2 for (mr, tr) in rows for m, t in zip(mr, tr)]
    cls_errors = squares([(m[0], t[0]) for m, t in zip(mapped, teacher)])
    patch_errors = squares([(mr, tr) for m, t in zip(mapped, teacher) for mr, tr in zip(m[1:], t[1:])])
    parts = proteus_loss(torch.tensor(mapped), torch.tensor(teacher))
    assert parts["token"].item() == pytest.approx(sum(cls_errors) / len(cls_errors))
    # The feature term is one mean over the CLS and the patch tokens together, as the reference's.
    whole = (sum(cls_errors) + sum(patch_errors)) / 12
    assert parts["feature"].item() == pytest.approx(whole)
    assert parts["total"].item() == pytest.approx(sum(cls_errors) / 4 + whole)


def test_resize_token_grid_keeps_the_cls_and_resamples_positions():
    positions = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1)  # a 2x2 grid, one channel
    tokens = torch.cat([torch.full((1, 1, 1), 9.0), positions], dim=1)
    assert resize_token_grid(tokens, (2, 2), (1, 1)).flatten().tolist() == [9.0, 2.5]  # the 4 positions' mean
    upsampled = resize_token_grid(tokens[:, :2], (1, 1), (2, 3))
    assert upsampled.flatten().tolist() == [9.0] + [1.0] * 6
    assert resize_token_grid(tokens, (2, 2), (2, 2)) is tokens


# ---- the methods -------------------------------------------------------------------------


def make_distiller(method, teacher="resnet20", student="resnet8", context=CONTEXT, in_chans=1, **options):
    torch.manual_seed(0)
    student_model = create_model(student, num_classes=10, in_chans=in_chans)
    teacher_model = create_model(teacher, num_classes=10, in_chans=in_chans)
    return build_distiller({"name": method, **options}, student_model, teacher_model, context)


class LabelGuard(dict):
    """A batch that fails the test if anything looks for a label."""

    def __getitem__(self, key):
        assert key != "label", "the method read the label"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "label", "the method looked for the label"
        return super().get(key, default)

    def __contains__(self, key):
        assert key != "label", "the method looked for the label"
        return super().__contains__(key)


def images(n=4, shape=(1, 28, 28), seed=5):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_tintem_gradients_sne_terms_reach_the_map_only_and_cosine_terms_the_student_only():
    distiller = make_distiller("tintem")
    parts, _ = distiller.loss_parts(images())
    (parts["local"] + parts["global"]).backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.head.parameters())
    assert all(p.grad is None for p in distiller.student.parameters())
    distiller.zero_grad(set_to_none=True)
    (parts["feature"] + parts["token"]).backward()
    assert all(p.grad is None for p in distiller.head.parameters())
    assert sum(p.grad.abs().sum() for p in distiller.student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in distiller.teacher.parameters())


def one_step(distiller, batch):
    """One optimiser step on the method's loss; the parameters before it, by name."""
    before = {name: p.detach().clone() for name, p in distiller.named_parameters()}
    optimizer = torch.optim.AdamW(distiller.train_parameters(), lr=1e-3)
    output = distiller.train()(batch)
    loss = output.total
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    return before, output


def changed(distiller, before, prefix):
    return any(not torch.equal(p, before[name]) for name, p in distiller.named_parameters() if name.startswith(prefix))


@pytest.mark.parametrize("method, own_parts", [("tintem", ["head."]), ("proteus", ["token_head.", "feature_head."])])
def test_one_label_free_step_on_a_zoo_cnn_pair(method, own_parts):
    distiller = make_distiller(method)
    before, output = one_step(distiller, LabelGuard(image=images(), index=torch.arange(4)))
    assert output.logits.shape == (4, 10)  # the CNN student's own logits
    assert set(output.terms) == {method}
    assert all(changed(distiller, before, prefix) for prefix in ["student.", *own_parts])
    assert not changed(distiller, before, "teacher.")


def test_cnn_tokens_are_the_pooled_feature_then_the_last_map_resized_to_the_student_grid():
    distiller = make_distiller("tintem", teacher="resnet20", student="MobileNetV2")
    x = images()
    teacher_features = distiller.teacher.extract(x)
    teacher_tokens = distiller.teacher.tokens(x)
    torch.testing.assert_close(teacher_tokens.tokens[:, 0], teacher_features.pooled)
    torch.testing.assert_close(teacher_tokens.tokens[:, 1:], teacher_features.stages[-1].flatten(2).transpose(1, 2))
    assert teacher_tokens.grid == (7, 7)
    # MobileNetV2's pooled feature (1280) is wider than its last map (160, 2x2): the map's mean is its CLS.
    student_features = distiller.student.extract(x)
    student_tokens = distiller.student.tokens(x)
    assert student_tokens.grid == (2, 2) and student_tokens.tokens.shape == (4, 5, 160)
    torch.testing.assert_close(student_tokens.tokens[:, 0], student_features.stages[-1].mean(dim=(2, 3)))
    head = distiller.head
    assert isinstance(head[0], nn.LayerNorm) and head[0].normalized_shape == (64,)
    assert (head[1].in_features, head[1].out_features) == (64, 160)
    before, _ = one_step(distiller, LabelGuard(image=x))
    assert changed(distiller, before, "head.") and changed(distiller, before, "student.")


def tiny_vit_pair():
    """Random-weight timm ViTs of two blocks: the teacher has register tokens and an 8x8 grid, the student a 4x4 one."""
    torch.manual_seed(0)
    teacher = create_model("timm:vit_small_patch14_reg4_dinov2", num_classes=10, img_size=32, patch_size=4, depth=2)
    student = create_model("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2)
    return student, teacher


@pytest.mark.parametrize("method, own_parts", [("tintem", ["head."]), ("proteus", ["token_head.", "feature_head."])])
def test_one_label_free_step_on_a_tiny_timm_vit_pair(method, own_parts):
    student, teacher = tiny_vit_pair()
    distiller = build_distiller({"name": method}, student, teacher, MethodContext((3, 32, 32), 10))
    x = images(shape=(3, 32, 32))
    assert teacher.tokens(x).tokens.shape == (4, 1 + 64, 384)  # CLS, then 8x8 patches: registers dropped
    assert student.tokens(x).grid == (4, 4)
    before, output = one_step(distiller, LabelGuard(image=x))
    assert output.logits is None  # a ViT's tokens come without its logits
    assert all(changed(distiller, before, prefix) for prefix in ["student.", *own_parts])
    assert not changed(distiller, before, "teacher.")


@pytest.mark.parametrize("method", ["tintem", "proteus"])
def test_label_free_methods_refuse_ce_and_kd(method):
    with pytest.raises(KdistillError, match="label-free"):
        make_distiller(method, w_ce=1.0)
    with pytest.raises(KdistillError, match="label-free"):
        make_distiller(method, w_kd=1.0)
    with pytest.raises(KdistillError, match=f"unknown method '{method}\\+kd'"):  # not offered at all
        make_distiller(f"{method}+kd")


def test_tintem_refuses_bad_temperatures():
    with pytest.raises(KdistillError, match="temperatures"):
        make_distiller("tintem", temperatures=[])
    with pytest.raises(KdistillError, match="temperatures"):
        make_distiller("tintem", temperatures=[0.1, 0.0])


# ---- the global term across processes -----------------------------------------------------

WORLD = 2


GLOBAL_BATCH = 8


def global_term_and_head_grads(rows: slice):
    """TinTeM's global term and its map's gradients when the teacher gives the rows `rows` of a
    fixed set of random tokens (resnet14's width, 1 + 4 tokens per image)."""
    distiller = make_distiller("tintem", teacher="resnet14")
    teacher_tokens = random_tokens(7, GLOBAL_BATCH, 5, 64)[rows]
    student = TokenSequence(random_tokens(8, GLOBAL_BATCH, 5, 64)[rows], (2, 2), None)
    distiller.token_sequences = lambda x: (student, teacher_tokens)
    parts, _ = distiller.loss_parts(None)
    parts["global"].backward()
    return parts["global"].detach(), [p.grad.clone() for p in distiller.head.parameters()]


def distributed_worker(rank: int, init_file: str, out_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    half = GLOBAL_BATCH // WORLD
    loss, grads = global_term_and_head_grads(slice(rank * half, (rank + 1) * half))
    mean_over_ranks(grads)
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out_file)
    dist.destroy_process_group()


def test_global_term_over_two_processes_equals_the_single_process_batch(tmp_path):
    mp.spawn(distributed_worker, args=(str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=WORLD, join=True)
    distributed = torch.load(tmp_path / "out.pt", weights_only=True)
    loss, grads = global_term_and_head_grads(slice(None))
    first_half_alone, _ = global_term_and_head_grads(slice(GLOBAL_BATCH // WORLD))
    assert abs(first_half_alone.item() - loss.item()) > 0.01  # gathering changes the term
    torch.testing.assert_close(distributed["loss"], loss)
    for got, expected in zip(distributed["grads"], grads):
        torch.testing.assert_close(got, expected)


# ---- a real run --------------------------------------------------------------------------

QUICK = ["steps_per_epoch=2", "epochs=1", "progress=false", "tensorboard=false", "device=cpu", "data.batch_size=32"]


@pytest.fixture(scope="module")
def embedded_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_run(load_config(str(CONFIGS / "embedded/teachers/resnet20.yaml"), [*QUICK, f"out={out}"]))
    return out


@pytest.mark.parametrize("method", ["tintem", "proteus"])
def test_a_short_run_from_the_embedded_recipe(embedded_teacher, tmp_path, method):
    recipe = CONFIGS / "embedded" / method / "resnet20_resnet8.yaml"
    cfg = load_config(str(recipe), [*QUICK, f"teacher_checkpoint={embedded_teacher}", f"out={tmp_path / method}"])
    assert cfg.method.name == method and cfg.teacher == "resnet20" and cfg.student == "resnet8"
    results = train_run(cfg)
    assert results.method == method
    metrics = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(metrics[-1][f"train/{method}"]) and metrics[-1][f"train/{method}"] > 0
    if method == "tintem":
        logged = sum(metrics[-1][f"train/tintem_{name}"] for name in ("local", "global", "feature", "token"))
        assert metrics[-1]["train/loss"] == pytest.approx(logged, rel=1e-5)
