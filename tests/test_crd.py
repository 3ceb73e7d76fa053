import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import crd_loss, crd_nce_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.methods.crd import NegativeSampler
from kdistill.models import create_model


def test_nce_loss_against_the_formula():
    probs = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])
    n = 10
    noise = 2 / n
    expected = 0.0
    for row in probs.tolist():
        expected += math.log(row[0] / (row[0] + noise + 1e-7))
        expected += sum(math.log(noise / (p + noise + 1e-7)) for p in row[1:])
    assert crd_nce_loss(probs, n).item() == pytest.approx(-expected / 2, rel=1e-6)


def test_scores_equal_gathering_bank_rows():
    generator = torch.Generator().manual_seed(0)
    z_s = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    z_t = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    bank_s = F.normalize(torch.randn(20, 8, generator=generator), dim=1)
    bank_t = F.normalize(torch.randn(20, 8, generator=generator), dim=1)
    index = torch.randint(0, 20, (4, 6), generator=generator)
    parts = crd_loss(z_s, z_t, bank_s, bank_t, index, num_data=20, temperature=0.07)
    # The reference's way: gather B x (1+K) rows, then a batched product.
    exp_s = torch.exp(torch.bmm(bank_t[index], z_s[:, :, None]).squeeze(2) / 0.07)
    exp_t = torch.exp(torch.bmm(bank_s[index], z_t[:, :, None]).squeeze(2) / 0.07)
    norm_s, norm_t = exp_s.mean() * 20, exp_t.mean() * 20
    torch.testing.assert_close(parts["norm_s"], norm_s)
    expected = crd_nce_loss(exp_s / norm_s, 20) + crd_nce_loss(exp_t / norm_t, 20)
    torch.testing.assert_close(parts["total"], expected)
    kept = crd_loss(z_s, z_t, bank_s, bank_t, index, 20, 0.07, norm_s=torch.tensor(7.0), norm_t=torch.tensor(-1.0))
    assert kept["norm_s"].item() == 7.0 and kept["norm_t"].item() == pytest.approx(norm_t.item(), rel=1e-6)


@pytest.mark.parametrize("k", [5, 50])  # without and with replacement
def test_exact_negatives_exclude_the_anchor_class(k):
    torch.manual_seed(0)  # the draws are random: every sample shows up for this seed (12 rows of k)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 3])
    sampler = NegativeSampler(labels, exact=True)
    index = torch.arange(12)
    negatives = sampler(index, k)
    assert negatives.shape == (12, k)
    assert (labels[negatives] != labels[index][:, None]).all()
    if k == 5:  # without replacement: no repeats within a row
        assert all(len(set(row.tolist())) == k for row in negatives)
    assert set(negatives.flatten().tolist()) == set(range(12))


def test_any_negatives_exclude_only_the_anchor():
    labels = torch.zeros(6, dtype=torch.long)
    sampler = NegativeSampler(labels, exact=False)
    negatives = sampler(torch.arange(6), 40)
    assert (negatives != torch.arange(6)[:, None]).all()
    assert (labels[negatives] == 0).all()


def make_crd(**options):
    torch.manual_seed(0)
    labels = torch.arange(40) % 10
    context = MethodContext((1, 28, 28), num_classes=10, train_labels=labels)
    student = create_model("resnet8", num_classes=10, in_chans=1)
    teacher = create_model("resnet14", num_classes=10, in_chans=1)
    return build_distiller({"name": "crd", "num_negatives": 16, **options}, student, teacher, context)


def test_bank_update_and_normalisation_constant():
    distiller = make_crd()
    assert distiller.bank_s.shape == (40, 128) and distiller.bank_s.dtype == torch.float32
    before = distiller.bank_s.clone()
    batch = {"image": torch.randn(4, 1, 28, 28), "label": torch.arange(4), "index": torch.arange(4)}
    distiller.train()
    output = distiller(batch)
    assert set(output.terms) == {"ce", "crd"} and distiller.loss_weight("crd") == 0.8
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[:4] = False
    assert torch.equal(distiller.bank_s[untouched], before[untouched])
    assert torch.allclose(distiller.bank_s[:4].norm(dim=1), torch.ones(4))
    assert not torch.allclose(distiller.bank_s[:4], before[:4])
    norm = distiller.norm_s.item()
    assert norm > 0
    distiller(batch)
    assert distiller.norm_s.item() == norm  # estimated once, then kept


def test_bank_update_rule():
    distiller = make_crd()
    index = torch.tensor([3, 7])
    z = F.normalize(torch.randn(2, 128), dim=1)
    expected = F.normalize(distiller.bank_t[index] * 0.5 + z * 0.5, dim=1)
    distiller.update_banks(index, z, z)
    torch.testing.assert_close(distiller.bank_t[index], expected)


def test_crd_lowers_its_loss_on_a_fixed_batch():
    distiller = make_crd()
    batch = {"image": torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)),
             "label": torch.arange(8) % 10, "index": torch.arange(8)}
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        torch.manual_seed(2)  # the same negatives every step: a fixed problem
        loss = distiller(batch).terms["crd"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]
