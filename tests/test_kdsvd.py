"""KDSVD: the loss against a per-sample restatement (float32 and float64), its invariance to the
sign of the teacher's and student's singular vectors, the pairs it accepts, the loss going down."""

import pytest
import torch
from helpers import term_over_steps

from kdistill.errors import KdistillError
from kdistill.losses import kdsvd_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model


def fixed(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def singular_by_sample(f, count):
    """Per sample: (normalised leading singular values, right singular vectors as unit columns)."""
    out = []
    for sample in f:
        matrix = sample.reshape(sample.shape[0], -1).T  # positions x channels
        _, values, vh = torch.linalg.svd(matrix, full_matrices=False)
        values, vectors = values[:count], vh[:count].T
        out.append((values / values.norm(), vectors / vectors.norm(dim=0, keepdim=True)))
    return out


def kdsvd_by_hand(students, teachers, k=1):
    total, previous = 0.0, None
    batch = students[0].shape[0]
    for s, t in zip(students, teachers):
        current = []
        for (_, s_vectors), (t_values, t_vectors) in zip(singular_by_sample(s, k + 3), singular_by_sample(t, k)):
            aligned = torch.zeros_like(t_vectors)
            for j in range(k):  # each teacher vector takes the best-matching student vector, sign-flipped
                cosines = s_vectors.T @ t_vectors[:, j]
                best = int(cosines.abs().argmax())
                aligned[:, j] = torch.sign(cosines[best]) * s_vectors[:, best]
            current.append((aligned * t_values, t_vectors * t_values))
        if previous is not None:
            for (s_now, t_now), (s_before, t_before) in zip(current, previous):
                for a in range(s_now.shape[0]):
                    for b in range(s_before.shape[0]):
                        s_kernel = torch.exp(-(s_now[a] - s_before[b]) ** 2 / 8)
                        t_kernel = torch.exp(-(t_now[a] - t_before[b]) ** 2 / 8)
                        total += ((s_kernel - t_kernel) ** 2).sum().item() / batch
        previous = current
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kdsvd_loss_equals_the_per_sample_restatement(dtype):
    shapes = [(3, 6, 8, 8), (3, 8, 4, 4), (3, 10, 2, 2)]
    students = [fixed(*shape, seed=i, dtype=dtype) for i, shape in enumerate(shapes)]
    teachers = [fixed(*shape, seed=10 + i, dtype=dtype) for i, shape in enumerate(shapes)]
    for k in (1, 2):
        value = kdsvd_loss(students, teachers, k)
        assert value.dtype == dtype
        # In the inputs' precision: the teacher's singular vectors' signs (which the loss keeps) are LAPACK's choice.
        expected = kdsvd_by_hand(students, teachers, k)
        assert value.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_the_student_alignment_makes_its_vectors_sign_free():
    # Negating the student's maps negates its singular vectors; aligned to the teacher's, the loss is unchanged.
    students = [fixed(2, 4, 4, 4), fixed(2, 6, 2, 2, seed=1)]
    teachers = [fixed(2, 4, 4, 4, seed=2), fixed(2, 6, 2, 2, seed=3)]
    torch.testing.assert_close(kdsvd_loss([-s for s in students], teachers), kdsvd_loss(students, teachers))
    assert kdsvd_loss(teachers, teachers).item() == pytest.approx(0.0, abs=1e-10)


def test_unequal_channels_are_refused_by_the_loss_and_the_method():
    with pytest.raises(ValueError, match="equal channel counts"):
        kdsvd_loss([fixed(2, 4, 4, 4)], [fixed(2, 5, 4, 4)])
    with pytest.raises(KdistillError, match="method kdsvd cannot distil .* same stage channel counts"):
        build("wrn_40_2", "wrn_40_1")


def build(teacher: str, student: str, **options):
    torch.manual_seed(0)
    return build_distiller({"name": "kdsvd", **options}, create_model(student), create_model(teacher),
                           MethodContext((3, 32, 32), 100))


def test_kdsvd_loss_goes_down_on_a_fixed_batch():
    distiller = build("resnet14", "resnet8", w_ce=0.0)
    assert distiller.loss_weight("kdsvd") == 1.0 and build("resnet14", "resnet8").loss_weight("ce") == 1.0
    batch = {"image": fixed(8, 3, 32, 32), "label": torch.arange(8), "index": torch.arange(8)}
    losses = term_over_steps(distiller, batch, "kdsvd", lr=2.0)
    assert losses[-1] < 0.9 * losses[0], losses
