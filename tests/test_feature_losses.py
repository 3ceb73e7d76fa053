"""The feature losses against hand-derived values and plain loop restatements of their formulas
(the benchmark's reductions), their gradients on the student's features, and their invariances."""

import itertools
import math

import pytest
import torch

from kdistill.losses import (
    ab_loss,
    at_loss,
    cc_loss,
    fitnet_loss,
    fsp_loss,
    ft_loss,
    nst_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
    vid_loss,
)


def fixed(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def student_gradient(loss_fn, student, *rest):
    student = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(student, *rest), student)
    return grad


def assert_same_value_and_gradient(loss_fn, reference_fn, student, *rest, rtol=1e-5, atol=1e-6):
    """The loss equals an independent restatement, and so does its gradient on the student (the
    restatement's gradient taken by autograd through its own loops, in double precision)."""
    rest_double = [r.double() if isinstance(r, torch.Tensor) else r for r in rest]
    reference_value = float(reference_fn(student.double(), *rest_double))
    assert loss_fn(student, *rest).item() == pytest.approx(reference_value, rel=rtol, abs=atol)
    reference_gradient = student_gradient(reference_fn, student.double(), *rest_double).float()
    torch.testing.assert_close(student_gradient(loss_fn, student, *rest), reference_gradient, rtol=rtol, atol=atol)


def block_average(f, size):
    """Average over non-overlapping blocks down to `size` x `size` (what adaptive pooling does when
    the size divides), written out."""
    batch, channels, height, _ = f.shape
    k = height // size
    out = torch.zeros(batch, channels, size, size, dtype=f.dtype)
    for y in range(size):
        for x in range(size):
            out[:, :, y, x] = f[:, :, y * k:(y + 1) * k, x * k:(x + 1) * k].mean(dim=(2, 3))
    return out


def smooth_l1(x):
    return 0.5 * x * x if abs(float(x.detach())) < 1 else abs(x) - 0.5


# --- FitNet ------------------------------------------------------------------------------------

def test_fitnet_is_the_mean_squared_error_with_its_gradient():
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0], [3.0, 0.0]]]])
    assert fitnet_loss(student, teacher).item() == pytest.approx((4 + 16) / 4)
    expected_grad = 2 * (student - teacher) / 4
    torch.testing.assert_close(student_gradient(fitnet_loss, student, teacher), expected_grad)
    with pytest.raises(ValueError, match="equal shapes"):
        fitnet_loss(student, teacher[..., :1])


# --- AT ----------------------------------------------------------------------------------------

def attention_rows(f):
    """Per sample: the channel mean of f^2 at every position, divided by the L2 norm over positions."""
    batch, channels, height, width = f.shape
    rows = []
    for b in range(batch):
        values = [sum(f[b, c, y, x] ** 2 for c in range(channels)) / channels
                  for y in range(height) for x in range(width)]
        norm = torch.sqrt(sum(v ** 2 for v in values))
        rows.append([v / norm for v in values])
    return rows


def at_reference(student, teacher):
    squares = [(s - t) ** 2 for row_s, row_t in zip(attention_rows(student), attention_rows(teacher))
               for s, t in zip(row_s, row_t)]
    return sum(squares) / len(squares)


def test_at_hand_computed():
    # Student channels [1, 2] and [3, 4]: channel means of squares [5, 10] -> [1, 2] / sqrt(5).
    # Teacher one channel [1, 0] -> [1, 0]. Mean of squared differences over the 2 positions.
    student = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0]]]])
    expected = ((1 - 1 / math.sqrt(5)) ** 2 + 4 / 5) / 2
    assert at_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_at_matches_a_loop_restatement_with_gradient():
    student, teacher = fixed(2, 3, 2, 2, seed=1), fixed(2, 5, 2, 2, seed=2)
    assert_same_value_and_gradient(at_loss, at_reference, student, teacher)


def test_at_pools_the_larger_map_to_the_smaller_size():
    student, teacher = fixed(2, 3, 2, 2, seed=1), fixed(2, 4, 4, 4, seed=2)
    assert_same_value_and_gradient(at_loss, lambda s, t: at_reference(s, block_average(t, 2)), student, teacher)
    swapped = at_reference(block_average(teacher, 2), student).item()
    assert at_loss(teacher, student).item() == pytest.approx(swapped, rel=1e-5)


def test_at_is_unchanged_by_a_positive_rescaling_of_either_map():
    student, teacher = fixed(2, 3, 4, 4, seed=3), fixed(2, 6, 4, 4, seed=4)
    base = at_loss(student, teacher).item()
    assert base > 1e-4
    assert at_loss(7.5 * student, teacher).item() == pytest.approx(base, rel=1e-5)
    assert at_loss(student, 0.2 * teacher).item() == pytest.approx(base, rel=1e-5)


# --- SP ----------------------------------------------------------------------------------------

def sp_reference(student, teacher):
    batch = student.shape[0]

    def similarity(f):
        x = f.reshape(batch, -1)
        rows = []
        for i in range(batch):
            row = [torch.dot(x[i], x[j]) for j in range(batch)]
            norm = torch.sqrt(sum(v ** 2 for v in row))
            rows.append([v / norm for v in row])
        return rows

    g_s, g_t = similarity(student), similarity(teacher)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(batch) for j in range(batch)) / batch ** 2


def test_sp_hand_computed():
    # Student rows [1, 0] and [0, 1]: G = I, rows already unit. Teacher rows [1, 0] and [1, 0]:
    # G = all ones, rows normalised to 1/sqrt(2). Squared Frobenius distance / B^2.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    r = 1 / math.sqrt(2)
    expected = (2 * (1 - r) ** 2 + 2 * r ** 2) / 4
    assert sp_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_sp_matches_a_loop_restatement_with_gradient():
    student, teacher = fixed(3, 2, 2, 2, seed=5), fixed(3, 4, 1, 1, seed=6)
    assert_same_value_and_gradient(sp_loss, sp_reference, student, teacher)


def test_sp_is_unchanged_by_a_positive_rescaling_of_the_map():
    student, teacher = fixed(4, 3, 2, 2, seed=7), fixed(4, 5, 2, 2, seed=8)
    base = sp_loss(student, teacher).item()
    assert base > 1e-3
    assert sp_loss(3.0 * student, teacher).item() == pytest.approx(base, rel=1e-5)
    assert sp_loss(student, 0.1 * teacher).item() == pytest.approx(base, rel=1e-5)


# --- CC ----------------------------------------------------------------------------------------

def test_cc_benchmark_hand_computed_with_gradient():
    # d = |e_s - e_t| = e_s; consecutive products summed over k: d0.d1 = 1, d1.d2 = 1.5; / (B - 1).
    student = torch.tensor([[1.0, 0.5], [0.5, 1.0], [1.0, 1.0]])
    teacher = torch.zeros(3, 2)
    assert cc_loss(student, teacher).item() == pytest.approx(1.25)
    # d/d e_s[i] = (d[i-1] + d[i+1]) / (B - 1) where e_s > e_t.
    expected_grad = torch.tensor([[0.25, 0.5], [1.0, 0.75], [0.25, 0.5]])
    torch.testing.assert_close(student_gradient(cc_loss, student, teacher), expected_grad)


def test_cc_benchmark_matches_a_loop_restatement_with_gradient():
    def reference(s, t):
        batch, dim = s.shape
        return sum(abs(s[i, k] - t[i, k]) * abs(s[i + 1, k] - t[i + 1, k])
                   for i in range(batch - 1) for k in range(dim)) / (batch - 1)

    assert_same_value_and_gradient(cc_loss, reference, fixed(5, 4, seed=9), fixed(5, 4, seed=10))


def test_cc_paper_form_is_the_taylor_expanded_gaussian_kernel():
    gamma = 0.4

    def reference(s, t, order):
        def correlation(f):
            unit = [row / torch.sqrt((row ** 2).sum()) for row in f]
            return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * torch.dot(a, b) ** p
                         for p in range(order + 1)) for b in unit] for a in unit]

        c_s, c_t = correlation(s), correlation(t)
        n = len(c_s)
        return sum((c_s[i][j] - c_t[i][j]) ** 2 for i in range(n) for j in range(n)) / n ** 2

    student, teacher = fixed(4, 3, seed=11), fixed(4, 6, seed=12)
    assert_same_value_and_gradient(lambda s, t: cc_loss(s, t, "paper", gamma, 2),
                                   lambda s, t: reference(s, t, 2), student, teacher)

    # With many terms the expansion is the Gaussian kernel exp(-gamma ||u_i - u_j||^2) itself.
    def gaussian(f):
        unit = torch.nn.functional.normalize(f.double(), dim=1)
        return torch.exp(-gamma * torch.cdist(unit, unit) ** 2)

    exact = ((gaussian(student) - gaussian(teacher)) ** 2).mean().item()
    assert cc_loss(student, teacher, "paper", gamma, order=30).item() == pytest.approx(exact, rel=1e-5)
    assert cc_loss(student, teacher, "paper", gamma, order=2).item() != pytest.approx(exact, rel=1e-3)


def test_cc_rejects_an_unknown_form():
    with pytest.raises(ValueError, match="'other' is not a valid ReferenceForm"):
        cc_loss(torch.zeros(2, 2), torch.zeros(2, 2), "other")


# --- VID ---------------------------------------------------------------------------------------

def test_vid_hand_computed_with_gradient():
    # softplus(log(e - 1)) = 1: variance 1 + eps. Error 2 everywhere: 0.5 * (4 / var + log var).
    eps = 1e-5
    mean, target = torch.full((1, 2, 1, 2), 3.0), torch.full((1, 2, 1, 2), 1.0)
    raw = torch.full((2,), math.log(math.e - 1))
    expected = 0.5 * (4 / (1 + eps) + math.log(1 + eps))
    assert vid_loss(mean, target, raw, eps).item() == pytest.approx(expected, rel=1e-6)
    expected_grad = torch.full((1, 2, 1, 2), 2 / (1 + eps) / 4)  # (mu - t) / var / (number of entries)
    torch.testing.assert_close(student_gradient(vid_loss, mean, target, raw, eps), expected_grad)


def test_vid_matches_a_loop_restatement_with_per_channel_variance():
    eps = 1e-5
    raw = torch.tensor([-1.0, 0.5, 2.0])

    def reference(mean, target, raw, eps):
        batch, channels, height, width = mean.shape
        total = 0.0
        for b in range(batch):
            for c in range(channels):
                variance = math.log(1 + math.exp(float(raw[c]))) + eps
                for y in range(height):
                    for x in range(width):
                        error = mean[b, c, y, x] - target[b, c, y, x]
                        total = total + 0.5 * (error ** 2 / variance + math.log(variance))
        return total / mean.numel()

    student, teacher = fixed(2, 3, 2, 2, seed=13), fixed(2, 3, 2, 2, seed=14)
    assert_same_value_and_gradient(vid_loss, reference, student, teacher, raw, eps)


# --- RKD ---------------------------------------------------------------------------------------

def rkd_reference(student, teacher, distance_weight=25.0, angle_weight=50.0):
    batch = student.shape[0]

    def distances(e):
        d = [[torch.sqrt(((e[i] - e[j]) ** 2).sum()) if i != j else torch.zeros((), dtype=e.dtype)
              for j in range(batch)] for i in range(batch)]
        non_zero = [v for row in d for v in row if v > 0]
        mean = sum(non_zero) / len(non_zero)
        return [[v / mean for v in row] for row in d]

    def angles(e):
        out = {}
        for i in range(batch):
            for j in range(batch):
                for k in range(batch):
                    u, v = e[j] - e[i], e[k] - e[i]
                    if i in (j, k):  # a zero vector normalises to zero: cosine 0
                        out[i, j, k] = torch.zeros((), dtype=e.dtype)
                    else:
                        out[i, j, k] = torch.dot(u, v) / torch.sqrt((u ** 2).sum() * (v ** 2).sum())
        return out

    d_s, d_t = distances(student), distances(teacher)
    distance = sum(smooth_l1(d_s[i][j] - d_t[i][j]) for i in range(batch) for j in range(batch)) / batch ** 2
    a_s, a_t = angles(student), angles(teacher)
    angle = sum(smooth_l1(a_s[key] - a_t[key]) for key in a_s) / batch ** 3
    return distance_weight * distance + angle_weight * angle


def test_rkd_is_zero_for_a_scaled_and_shifted_copy():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert rkd_loss(student, 2 * student + 3).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_matches_a_loop_restatement_with_gradient():
    student, teacher = fixed(4, 3, seed=15), fixed(4, 5, seed=16)
    assert_same_value_and_gradient(rkd_loss, rkd_reference, student, teacher)
    assert_same_value_and_gradient(lambda s, t: rkd_loss(s, t, 1.0, 0.0), lambda s, t: rkd_reference(s, t, 1.0, 0.0),
                                   student, teacher)


def test_rkd_distance_term_is_unchanged_by_a_global_scale():
    student, teacher = fixed(5, 3, seed=17), fixed(5, 4, seed=18)
    base = rkd_loss(student, teacher, distance_weight=1.0, angle_weight=0.0).item()
    assert base > 1e-3
    assert rkd_loss(4.0 * student, teacher, 1.0, 0.0).item() == pytest.approx(base, rel=1e-5)
    assert rkd_loss(student, 0.3 * teacher, 1.0, 0.0).item() == pytest.approx(base, rel=1e-5)
    per_sample = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    assert rkd_loss(per_sample * student, teacher, 1.0, 0.0).item() != pytest.approx(base, rel=1e-3)


# --- PKT ---------------------------------------------------------------------------------------

def pkt_reference(student, teacher, eps=1e-7):
    batch = student.shape[0]

    def probabilities(f):
        unit = [row / (torch.sqrt((row ** 2).sum()) + eps) for row in f]
        kernel = [[(torch.dot(a, b) + 1) / 2 for b in unit] for a in unit]
        return [[v / sum(row) for v in row] for row in kernel]

    p_s, p_t = probabilities(student), probabilities(teacher)
    return sum(p_t[i][j] * torch.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
               for i in range(batch) for j in range(batch)) / batch ** 2


def test_pkt_hand_computed():
    # Student rows orthogonal: K = [[1, .5], [.5, 1]], P rows [2/3, 1/3]. Teacher rows equal: K all
    # ones, P rows [1/2, 1/2]. Mean over the 4 entries of P_t log(P_t / P_s).
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    per_row = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert pkt_loss(student, teacher).item() == pytest.approx(2 * per_row / 4, rel=1e-5)


def test_pkt_matches_a_loop_restatement_with_gradient():
    assert_same_value_and_gradient(pkt_loss, pkt_reference, fixed(4, 3, seed=19), fixed(4, 6, seed=20))


def test_pkt_is_cosine_based_so_unchanged_by_per_sample_positive_scaling():
    student, teacher = fixed(5, 4, seed=21), fixed(5, 3, seed=22)
    base = pkt_loss(student, teacher).item()
    assert base > 1e-4
    per_sample = torch.tensor([[0.5], [1.0], [2.0], [3.0], [10.0]])
    assert pkt_loss(per_sample * student, teacher).item() == pytest.approx(base, rel=1e-4)
    assert pkt_loss(student, per_sample * teacher).item() == pytest.approx(base, rel=1e-4)


# --- AB ----------------------------------------------------------------------------------------

def test_ab_hand_computed_with_gradient():
    # Teacher off/off/on/on. s = 0.5 off: (0.5 + 1)^2 = 2.25; s = -2 off: beyond the margin, 0;
    # s = 0.5 on: (0.5 - 1)^2 = 0.25; s = 2 on: beyond the margin, 0. Sum 2.5, / B = 1, * 3/1000.
    student = torch.tensor([[[[0.5, -2.0], [0.5, 2.0]]]])
    teacher = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0]]]])
    assert ab_loss([student], [teacher]).item() == pytest.approx(2.5 * 3 / 1000)
    expected_grad = torch.tensor([[[[3.0, 0.0], [-1.0, 0.0]]]]) * 3 / 1000  # 2 (s + 1), 0, 2 (s - 1), 0
    torch.testing.assert_close(student_gradient(lambda s, t: ab_loss([s], [t]), student, teacher), expected_grad)


def test_ab_weights_shallower_stages_by_halves_and_divides_by_the_batch():
    def reference(student_maps, teacher_maps, margin=1.0):
        n = len(student_maps)
        total = 0.0
        for i, (s, t) in enumerate(zip(student_maps, teacher_maps)):
            stage = 0.0
            for value, target in zip(s.flatten(), t.flatten()):
                if target <= 0 and value > -margin:
                    stage = stage + (value + margin) ** 2
                elif target > 0 and value <= margin:
                    stage = stage + (value - margin) ** 2
            total = total + 2.0 ** (i - n + 1) * stage / s.shape[0] * 3 / 1000
        return total

    students = [fixed(2, 2, 2, 2, seed=23), fixed(2, 3, 1, 1, seed=24), fixed(2, 1, 2, 1, seed=25)]
    teachers = [fixed(2, 2, 2, 2, seed=26), fixed(2, 3, 1, 1, seed=27), fixed(2, 1, 2, 1, seed=28)]
    assert ab_loss(students, teachers).item() == pytest.approx(float(reference(students, teachers)), rel=1e-6)
    first = students[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ab_loss([first, *students[1:]], teachers), first)
    first_ref = students[0].double().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(reference([first_ref, *students[1:]], teachers), first_ref)
    torch.testing.assert_close(grad, grad_ref.float())


# --- FT ----------------------------------------------------------------------------------------

def test_ft_benchmark_form_is_the_l1_of_attention_factors():
    def reference(s, t):
        return sum(abs(a - b) for row_s, row_t in zip(attention_rows(s), attention_rows(t))
                   for a, b in zip(row_s, row_t)) / (s.shape[0] * s.shape[2] * s.shape[3])

    student, teacher = fixed(2, 3, 2, 2, seed=29), fixed(2, 3, 4, 4, seed=30)
    assert_same_value_and_gradient(ft_loss, lambda s, t: reference(s, block_average(t, 2)), student, teacher)


def test_ft_paper_form_is_the_l1_of_normalised_factors():
    # Per sample: the flattened factors divided by their L2 norms, then the L1 distance; batch mean.
    student = torch.tensor([[[[3.0, 4.0]]], [[[1.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, 2.0]]], [[[5.0, 0.0]]]])
    expected = ((0.6 + abs(0.8 - 1.0)) + 0.0) / 2
    assert ft_loss(student, teacher, "paper").item() == pytest.approx(expected, rel=1e-6)

    def reference(s, t):
        total = 0.0
        for a, b in zip(s, t):
            a, b = a.flatten(), b.flatten()
            total = total + (a / torch.sqrt((a ** 2).sum()) - b / torch.sqrt((b ** 2).sum())).abs().sum()
        return total / s.shape[0]

    assert_same_value_and_gradient(lambda s, t: ft_loss(s, t, "paper"), reference,
                                   fixed(3, 2, 2, 2, seed=31), fixed(3, 2, 2, 2, seed=32))


# --- FSP ---------------------------------------------------------------------------------------

def fsp_reference(student_maps, teacher_maps):
    def flows(maps):
        out = []
        for lower, upper in itertools.pairwise(maps):
            size = min(lower.shape[2], upper.shape[2])
            lower, upper = block_average(lower, size), block_average(upper, size)
            batch, c_upper, c_lower = lower.shape[0], upper.shape[1], lower.shape[1]
            g = {}
            for b in range(batch):
                for i in range(c_upper):
                    for j in range(c_lower):
                        g[b, i, j] = (upper[b, i] * lower[b, j]).sum() / (size * size)
            out.append(g)
        return out

    total = 0.0
    for g_s, g_t in zip(flows(student_maps), flows(teacher_maps)):
        total = total + sum((g_s[key] - g_t[key]) ** 2 for key in g_s) / len(g_s)
    return total


def test_fsp_hand_computed():
    # Two 1x1 one-channel maps per network: G = upper * lower. Student 2 * 3 = 6, teacher 1 * 1 = 1.
    student = [torch.tensor([[[[2.0]]]]), torch.tensor([[[[3.0]]]])]
    teacher = [torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1)]
    assert fsp_loss(student, teacher).item() == pytest.approx(25.0)


def test_fsp_matches_a_loop_restatement_with_pooling_and_gradient():
    shapes = [(2, 2, 4, 4), (2, 3, 2, 2), (2, 3, 2, 2)]
    student = [fixed(*shape, seed=33 + i) for i, shape in enumerate(shapes)]
    teacher = [fixed(*shape, seed=43 + i) for i, shape in enumerate(shapes)]
    assert fsp_loss(student, teacher).item() == pytest.approx(float(fsp_reference(student, teacher)), rel=1e-5)
    first = student[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fsp_loss([first, *student[1:]], teacher), first)
    first_ref = student[0].double().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(fsp_reference([first_ref, *student[1:]], teacher), first_ref)
    torch.testing.assert_close(grad, grad_ref.float(), rtol=1e-5, atol=1e-6)


def test_fsp_needs_equal_channel_counts():
    with pytest.raises(ValueError, match="channel"):
        fsp_loss([torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 1, 1)], [torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 1, 1)])


# --- NST ---------------------------------------------------------------------------------------

def nst_reference(student, teacher):
    def unit_channels(f):
        flat = f.reshape(f.shape[0], f.shape[1], -1)
        return [[row / torch.sqrt((row ** 2).sum()) for row in sample] for sample in flat]

    def kernel_mean(a, b):
        values = [torch.dot(x, y) ** 2 for sample_a, sample_b in zip(a, b) for x in sample_a for y in sample_b]
        return sum(values) / len(values)

    s, t = unit_channels(student), unit_channels(teacher)
    return kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)


def test_nst_hand_computed():
    # One sample, 2 positions. Student channels [1, 0] and [0, 1]: K(s,s) = I, mean 1/2. Teacher
    # one channel [1, 0]: K(t,t) = 1. K(s,t) = [1, 0], mean 1/2. Total 1 + 1/2 - 1 = 1/2.
    student = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    teacher = torch.tensor([[[[3.0, 0.0]]]])
    assert nst_loss(student, teacher).item() == pytest.approx(0.5, rel=1e-6)
    assert nst_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_nst_matches_a_loop_restatement_with_pooling_and_gradient():
    student, teacher = fixed(2, 3, 2, 2, seed=53), fixed(2, 2, 4, 4, seed=54)
    assert_same_value_and_gradient(nst_loss, lambda s, t: nst_reference(s, block_average(t, 2)), student, teacher)
