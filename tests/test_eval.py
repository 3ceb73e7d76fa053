"""Each evaluation metric against a case with a known answer."""

import itertools
import math

import matplotlib.colors
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_nonblank_png
from matplotlib.backends.backend_agg import FigureCanvasAgg

from kdistill.config import DataConfig
from kdistill.data import DATASETS
from kdistill.errors import KdistillError
from kdistill.eval.common import build_eval_loaders, from_pixels, to_channels, to_pixels
from kdistill.eval.correlation import class_correlation, correlation_difference, plot_correlation_differences
from kdistill.eval.faithfulness import linear_cka, mean_kl, top1_agreement
from kdistill.eval.knn import nearest_neighbours, weighted_knn_accuracy
from kdistill.eval.ood import auroc, energy, fpr_at_tpr, max_softmax
from kdistill.eval.probe import fit_linear_probe
from kdistill.eval.robustness import CORRUPTIONS, SEVERITIES, corrupt


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- faithfulness and correlation

def test_identical_models_agree_fully():
    logits = torch.randn(500, 10, generator=generator())
    features = torch.randn(500, 32, generator=generator(1))
    assert top1_agreement(logits, logits) == 1.0
    assert mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert linear_cka(features, features) == pytest.approx(1.0, abs=1e-12)
    assert float(correlation_difference(logits, logits).abs().max()) == 0.0


def test_faithfulness_metrics_on_hand_computed_cases():
    # KL([.5, .5] || [.75, .25]) = 0.5 ln(.5/.75) + 0.5 ln(.5/.25) = 0.5 ln(4/3)
    kl = mean_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert kl == pytest.approx(0.5 * math.log(4 / 3))
    # One-dimensional linear CKA is the squared Pearson correlation: here r = 0.8.
    assert linear_cka(torch.tensor([[1.0], [2.0], [3.0], [4.0]]),
                      torch.tensor([[1.0], [3.0], [2.0], [4.0]])) == pytest.approx(0.64)
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    second = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    assert top1_agreement(first, second) == pytest.approx(1 / 3)


def test_cka_is_invariant_to_rotation_and_scale_but_not_to_noise():
    features = torch.randn(400, 16, generator=generator(), dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator(1), dtype=torch.float64))
    assert linear_cka(features, 3.0 * features @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(features, torch.randn(400, 8, generator=generator(2), dtype=torch.float64)) < 0.2


def test_class_correlation_is_pearsons():
    logits = torch.randn(200, 6, generator=generator())
    expected = np.corrcoef(logits.numpy().T)
    np.testing.assert_allclose(class_correlation(logits).numpy(), expected, atol=1e-6)
    assert float(correlation_difference(logits, torch.randn(200, 6, generator=generator(1))).mean()) > 0.05


def test_correlation_heat_map_is_a_png_with_content(tmp_path):
    logits = torch.randn(300, 10, generator=generator())
    panels = [("same", correlation_difference(logits, logits)),
              ("other", correlation_difference(logits, torch.randn(300, 10, generator=generator(1))))]
    plot_correlation_differences(panels, tmp_path / "difference.png")
    assert_nonblank_png(tmp_path / "difference.png")


def test_heat_map_titles_stay_whole_and_apart(tmp_path):
    """Library models' long names: every panel title lies inside the figure and overlaps no other
    title or panel (five panels: two rows)."""
    title = "kd: timm:vit_small_patch14_dinov2.lvd142m -> timm:vit_tiny_patch16_224\nmean |difference| 0.1234"
    matrix = torch.rand(10, 10, generator=generator())
    figure = plot_correlation_differences([(title, matrix)] * 5, tmp_path / "long.png")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # the layout as saved
    renderer = canvas.get_renderer()
    axes = [axis for axis in figure.axes if axis.get_visible() and axis.get_title()]
    titles = [axis.title.get_window_extent(renderer) for axis in axes]
    assert len(titles) == 5
    for box in titles:
        assert figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1, box.y1)
    for (first, box), (second, other) in itertools.combinations(enumerate(titles), 2):
        assert not box.overlaps(other), (first, second)
    for box in titles:  # nor any panel's map or axis label
        for axis in axes:
            for part in (axis.get_window_extent(renderer), axis.xaxis.label.get_window_extent(renderer)):
                assert not box.overlaps(part)


# ---- OOD detection

def test_perfectly_separating_score():
    inside, outside = torch.linspace(1.0, 2.0, 100), torch.linspace(-1.0, 0.5, 70)
    assert auroc(inside, outside) == 1.0
    assert fpr_at_tpr(inside, outside) == 0.0
    assert auroc(outside, inside) == 0.0  # the reversed score ranks every pair wrongly
    assert fpr_at_tpr(outside, inside) == 1.0


def test_random_score_has_auroc_one_half():
    scores = torch.rand(40000, generator=generator())
    assert auroc(scores[:20000], scores[20000:]) == pytest.approx(0.5, abs=0.02)


def test_auroc_and_fpr95_by_hand():
    # Pairs (in, out): (1,2) 0, (1,0) 1, (2,2) 1/2, (2,0) 1, (3,2) 1, (3,0) 1 -> 4.5 / 6.
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0])) == pytest.approx(0.75)
    # 95% of 20 in-distribution scores 1..20 are the top 19: threshold 2, which 2.0 and 19.5 reach.
    assert fpr_at_tpr(torch.arange(1.0, 21.0), torch.tensor([0.5, 1.5, 2.0, 19.5])) == pytest.approx(0.5)
    # 95% of 30 is 28.5: the top 29 must pass, so the threshold is 2 again.
    assert fpr_at_tpr(torch.arange(1.0, 31.0), torch.tensor([1.5, 2.0])) == pytest.approx(0.5)


def test_auroc_and_fpr95_match_scikit_learn_with_ties():
    from sklearn import metrics  # in the test extra: an independent implementation to compare with
    inside = torch.randint(0, 30, (500,), generator=generator()).float()
    outside = torch.randint(0, 20, (400,), generator=generator(1)).float()
    labels = np.r_[np.ones(500), np.zeros(400)]
    scores = np.r_[inside.numpy(), outside.numpy()]
    assert auroc(inside, outside) == pytest.approx(metrics.roc_auc_score(labels, scores))
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    assert fpr_at_tpr(inside, outside) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_softmax_and_energy_scores():
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    torch.testing.assert_close(max_softmax(logits), torch.tensor([0.5, 1 / (1 + math.exp(-10))]))
    torch.testing.assert_close(energy(logits), torch.tensor([math.log(2.0), 10.0 + math.log1p(math.exp(-10))]))


# ---- frozen-feature classifiers

def separable_features(samples: int, seed: int, classes: int = 4, dim: int = 20):
    """Features labelled by a fixed linear rule (argmax of a random projection): linearly separable."""
    rule = torch.randn(dim, classes, generator=generator(123))
    features = torch.randn(samples, dim, generator=generator(seed)) * 3 + 1
    return features, (features @ rule).argmax(1)


def test_linear_probe_learns_linearly_separable_features():
    train_x, train_y = separable_features(3000, seed=0)
    test_x, test_y = separable_features(1000, seed=1)
    probe = fit_linear_probe(train_x, train_y, num_classes=4)
    with torch.no_grad():
        accuracy = float((probe(test_x).argmax(1) == test_y).float().mean())
    assert accuracy > 0.95  # chance is about 0.25


def test_knn_on_separable_clusters():
    centres = torch.eye(8)[:4] * 10
    bank_labels = torch.arange(4).repeat(250)
    bank = centres[bank_labels] + torch.randn(1000, 8, generator=generator())
    query_labels = torch.arange(4).repeat(50)
    queries = centres[query_labels] + torch.randn(200, 8, generator=generator(1))
    assert weighted_knn_accuracy(bank, bank_labels, queries, query_labels, 4) == {10: 100.0, 200: 100.0}
    shuffled = bank_labels[torch.randperm(1000, generator=generator(2))]
    assert weighted_knn_accuracy(bank, shuffled, queries, query_labels, 4)[10] < 60.0


def test_knn_votes_are_weighted_by_similarity():
    # One very close neighbour of class 0 against two orthogonal ones of class 1.
    bank, bank_labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1, 1])
    query, label = torch.tensor([[1.0, 0.1]]), torch.tensor([0])
    assert weighted_knn_accuracy(bank, bank_labels, query, label, 2, ks=(3,), temperature=0.07) == {3: 100.0}
    assert weighted_knn_accuracy(bank, bank_labels, query, label, 2, ks=(3,), temperature=100.0) == {3: 0.0}


def test_nearest_neighbours_by_cosine():
    bank = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    similarities, indices = nearest_neighbours(torch.tensor([[3.0, 0.2], [-1.0, 1.0]]), bank, k=2)
    assert indices.tolist() == [[0, 2], [1, 2]]
    assert similarities[1].tolist() == pytest.approx([1 / math.sqrt(2), 0.0], abs=1e-6)


# ---- corruptions

@pytest.fixture(scope="module")
def images():
    """Real grayscale images and RGB ones built from them (uint8 [B, C, H, W])."""
    gray = DATASETS.get("embedded")(None, False).test.images[:24]
    rgb = torch.cat([gray, gray.flip(-1), gray.transpose(-1, -2)], dim=1).float()
    return {"gray": gray, "rgb": F.interpolate(rgb, size=32).round().to(torch.uint8)}


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_corruption_changes_the_image_more_with_severity(images, name, kind):
    batch = images[kind]
    changes = []
    for severity in SEVERITIES:
        corrupted = corrupt(batch, name, severity, generator(severity))
        assert corrupted.dtype == torch.uint8 and corrupted.shape == batch.shape
        changes.append(float((corrupted.float() - batch.float()).abs().mean()))
    assert changes[0] > 0.5  # the mildest severity still changes the images (pixel values 0..255)
    assert all(later > earlier for earlier, later in itertools.pairwise(changes)), changes


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_of_floats_keeps_dtype_and_range(images, name):
    floats = images["rgb"].float() / 255
    corrupted = corrupt(floats, name, 5, generator())
    assert corrupted.dtype == torch.float32 and corrupted.shape == floats.shape
    assert float(corrupted.min()) >= 0.0 and float(corrupted.max()) <= 1.0
    assert float((corrupted - floats).abs().mean()) > 0.01


def test_noise_is_reproducible_from_its_generator(images):
    first = corrupt(images["rgb"], "gaussian_noise", 3, generator(7))
    assert torch.equal(first, corrupt(images["rgb"], "gaussian_noise", 3, generator(7)))
    assert not torch.equal(first, corrupt(images["rgb"], "gaussian_noise", 3, generator(8)))


def test_brightness_shifts_the_hsv_value_as_cifar_c(images):
    floats = images["rgb"].float() / 255
    hsv = matplotlib.colors.rgb_to_hsv(floats.permute(0, 2, 3, 1).numpy())
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)  # severity 5
    expected = matplotlib.colors.hsv_to_rgb(hsv)
    corrupted = corrupt(floats, "brightness", 5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(corrupted, expected, atol=1e-5)


def test_unknown_corruption_and_severity_are_user_errors(images):
    with pytest.raises(KdistillError, match="unknown corruption 'fog'"):
        corrupt(images["gray"], "fog", 1)
    with pytest.raises(KdistillError, match="severity 6"):
        corrupt(images["gray"], "contrast", 6)


# ---- data plumbing of the evaluations

def test_pixels_round_trip_and_train_split_is_read_whole_and_in_order():
    data = DataConfig(name="embedded", eval_batch_size=3000)
    loaders = build_eval_loaders(data, torch.device("cpu"), seed=0)
    source = DATASETS.get("embedded")(None, False)
    batches = list(loaders.train)
    assert "image_strong" not in batches[0]
    assert sum(len(batch["label"]) for batch in batches) == len(source.train.labels)  # no partial batch dropped
    assert torch.equal(torch.cat([batch["index"] for batch in batches]), torch.arange(len(source.train.labels)))
    first = batches[0]
    assert torch.equal(to_pixels(first["image"], loaders.info), source.train.images[:3000])  # unaugmented
    torch.testing.assert_close(from_pixels(to_pixels(first["image"], loaders.info), loaders.info), first["image"])


def test_channels_convert_as_pil_does():
    from PIL import Image

    colour = torch.randint(0, 256, (2, 3, 8, 8), generator=generator(), dtype=torch.uint8)
    luma = np.stack([np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")) for image in colour])
    assert torch.equal(to_channels(colour, 1)[:, 0], torch.from_numpy(luma))
    grey = colour[:, :1]
    assert torch.equal(to_channels(grey.expand(-1, 3, -1, -1), 1), grey)  # a grey file read as RGB: exact
    assert torch.equal(to_channels(grey, 3), grey.expand(-1, 3, -1, -1)) and to_channels(grey, 1) is grey
