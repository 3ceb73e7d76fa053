"""Feature losses of the CRD benchmark's baselines (FitNet, AT, SP, CC, VID, RKD, PKT, AB, FT, FSP,
NST) and of the later feature methods (ReviewKD, SimKD, SRRL, OFD, KDSVD, SemCKD).

Student first, teacher second. A "map" is `[B, C, H, W]`, a "vector" `[B, D]`. The reductions are
those of the benchmark's public implementations (RepDistiller), which the table weights were tuned
for; where they differ from a paper, the docstring says so. Where two maps of different spatial
sizes meet, the larger is average-pooled to the smaller, as the benchmark does. Every loss is
computed in float32, so it is stable under mixed precision.
"""

import enum
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ReferenceForm", "ab_loss", "at_loss", "cc_loss", "fitnet_loss", "fsp_loss", "ft_loss", "hcl_loss",
           "kdsvd_loss", "nst_loss", "ofd_loss", "ofd_margin", "pkt_loss", "rkd_loss", "semckd_loss", "simkd_loss",
           "sp_loss", "srrl_loss", "vid_loss"]


def pool_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both maps at the smaller height and width of the two (adaptive average pooling; a map
    already at that size is returned as it is)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return tuple(x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size) for x in (a, b))


def _attention_map(f: Tensor, p: float) -> Tensor:
    """`[B, H*W]`: the channel mean of `f^p` at every position, L2-normalised over positions."""
    return F.normalize(f.float().pow(p).mean(dim=1).flatten(1), dim=1)


def fitnet_loss(regressed_student: Tensor, teacher: Tensor) -> Tensor:
    """FitNet's hint loss (Romero et al. 2015).

    Takes the student's hint map already passed through the regressor (so it has the teacher's
    shape) and the teacher's map of the same stage. Reduction: mean squared error over all
    `B*C*H*W` entries (the benchmark's `MSELoss`).
    """
    if regressed_student.shape != teacher.shape:
        raise ValueError(f"fitnet_loss needs equal shapes, got {tuple(regressed_student.shape)} "
                         f"and {tuple(teacher.shape)}")
    return F.mse_loss(regressed_student.float(), teacher.float())


def at_loss(student: Tensor, teacher: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017) between one student map and one teacher map.

    `a(f) = normalise_over_positions(mean_over_channels(f^p))`; loss = mean over all `B*H*W`
    entries of `(a(f_s) - a(f_t))^2`. Channel counts may differ; the larger map is pooled to the
    smaller size. The method sums it over the intermediate stages.
    """
    student, teacher = pool_to_common_size(student, teacher)
    return (_attention_map(student, p) - _attention_map(teacher, p)).pow(2).mean()


def _batch_similarity(f: Tensor) -> Tensor:
    flat = f.float().flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019) on one map (or vector) per network.

    `G = x x^T` with `x` the features flattened to `[B, -1]`, each row of `G` L2-normalised;
    loss = `||G_t - G_s||_F^2 / B^2`. The benchmark applies it to the last stage's map.
    """
    batch = student.shape[0]
    return (_batch_similarity(teacher) - _batch_similarity(student)).pow(2).sum() / batch**2


def _gaussian_correlation(features: Tensor, gamma: float, order: int) -> Tensor:
    """`[B, B]` Gaussian-kernel correlation of L2-normalised features, Taylor-expanded to `order`:
    `exp(-gamma ||x_i - x_j||^2) = exp(-2 gamma) exp(2 gamma x_i.x_j)
    ~ sum_{p <= order} exp(-2 gamma) (2 gamma x_i.x_j)^p / p!`."""
    unit = F.normalize(features.float().flatten(1), dim=1)
    dot = unit @ unit.T
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot.pow(p) for p in range(order + 1))


class ReferenceForm(enum.StrEnum):
    """Which reading of a baseline a loss computes where its benchmark code and its paper differ."""

    benchmark = "benchmark"  # what the tables ran (RepDistiller)
    paper = "paper"


def cc_loss(student: Tensor, teacher: Tensor, form: ReferenceForm | str = ReferenceForm.benchmark, gamma: float = 0.4,
            order: int = 2) -> Tensor:
    """Correlation congruence (Peng et al. 2019) on `[B, D]` vectors.

    `form="benchmark"` (what the tables ran): both vectors are embeddings of the same size (the
    method embeds the pooled features linearly to 128); `d = |e_s - e_t|`; loss =
    `(1/(B-1)) * sum_{i<B-1} sum_k d[i,k] * d[i+1,k]` (consecutive samples of the batch).
    `form="paper"`: the `B x B` correlation matrices of the L2-normalised vectors under a Gaussian
    kernel (`gamma`) expanded to `order`; loss = mean over the `B^2` entries of their squared
    difference. Dimensions may differ between student and teacher here.
    """
    if ReferenceForm(form) is ReferenceForm.benchmark:
        gap = (student.float() - teacher.float()).abs()
        return (gap[:-1] * gap[1:]).sum(dim=1).mean()
    difference = _gaussian_correlation(student, gamma, order) - _gaussian_correlation(teacher, gamma, order)
    return difference.pow(2).mean()


def vid_loss(predicted_mean: Tensor, teacher: Tensor, raw_variance: Tensor, eps: float = 1e-5) -> Tensor:
    """Variational information distillation (Ahn et al. 2019): the negative log-likelihood of the
    teacher's map under a Gaussian predicted from the student.

    `predicted_mean` is the student's map through the method's regressor (the teacher's shape);
    `raw_variance` is the learned `[C]` parameter, variance = `softplus(raw_variance) + eps` per
    channel. Loss = mean over all `B*C*H*W` entries of
    `0.5 * ((mu - t)^2 / var + log var)` (the authors' code: the paper's per-sample sum, without
    its constant, averaged over entries).
    """
    variance = (F.softplus(raw_variance.float()) + eps).view(1, -1, 1, 1)
    error = predicted_mean.float() - teacher.float()
    return (0.5 * (error.pow(2) / variance + variance.log())).mean()


def _normalised_distances(features: Tensor) -> Tensor:
    """Euclidean distances between the rows (diagonal 0), divided by the mean non-zero distance."""
    squared_norms = features.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2 * features @ features.T
    off_diagonal = 1 - torch.eye(features.shape[0], device=features.device, dtype=features.dtype)
    distances = squared.clamp(min=1e-12).sqrt() * off_diagonal
    return distances / distances[distances > 0].mean()


def _angles(features: Tensor) -> Tensor:
    """`[B, B, B]`: entry (i, j, k) is the cosine between `e_j - e_i` and `e_k - e_i`."""
    directions = F.normalize(features[None, :, :] - features[:, None, :], dim=2)
    return directions @ directions.transpose(1, 2)


def rkd_loss(student: Tensor, teacher: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """Relational KD (Park et al. 2019) on vectors (the benchmark: the pooled features).

    Distance term: pairwise Euclidean distances, each matrix divided by the mean of its non-zero
    entries, smooth-L1 (beta 1) averaged over all `B^2` entries. Angle term: for every anchor `i`
    the cosines between the unit vectors `(e_j - e_i)` and `(e_k - e_i)`, smooth-L1 averaged over
    all `B^3` entries. Loss = `distance_weight * distance + angle_weight * angle`.
    """
    student, teacher = student.float().flatten(1), teacher.float().flatten(1)
    distance = F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))
    angle = F.smooth_l1_loss(_angles(student), _angles(teacher))
    return distance_weight * distance + angle_weight * angle


def _cosine_probabilities(features: Tensor, eps: float) -> Tensor:
    unit = features / (features.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.T + 1) / 2
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018) on vectors (the pooled features).

    `x / (||x|| + eps)`; cosine matrix `C` (diagonal included); `K = (C + 1) / 2`, each row
    normalised to sum 1 (`P`); loss = mean over all `B^2` entries of
    `P_t * log((P_t + eps) / (P_s + eps))` (the authors' code: a mean, not a per-row sum).
    """
    p_student = _cosine_probabilities(student.float().flatten(1), eps)
    p_teacher = _cosine_probabilities(teacher.float().flatten(1), eps)
    return (p_teacher * torch.log((p_teacher + eps) / (p_student + eps))).mean()


def ab_loss(connected_student: Sequence[Tensor], teacher: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """Activation-boundary transfer (Heo et al. 2019) over a list of stages, shallow to deep.

    Takes the student's pre-ReLU maps passed through the connectors (the teacher's shapes) and the
    teacher's pre-ReLU maps. Per stage, the paper's alternative L2 loss with margin `m`:
    `(s + m)^2` where `s > -m` and the teacher's neuron is off (`t <= 0`), plus `(s - m)^2` where
    `s <= m` and it is on (`t > 0`), summed over all entries. Reduction (the authors' code):
    stage `i` of `n` is weighted `2^(i - n + 1)` (the deepest 1, each shallower one half the
    next), each stage's sum divided by `B` and scaled by `3/1000`; the stages are summed.
    """
    if len(connected_student) != len(teacher):
        raise ValueError(f"ab_loss needs as many student as teacher maps, got {len(connected_student)} "
                         f"and {len(teacher)}")
    num_stages = len(teacher)
    total = connected_student[0].new_zeros((), dtype=torch.float32)
    for i, (s, t) in enumerate(zip(connected_student, teacher)):
        if s.shape != t.shape:
            raise ValueError(f"ab_loss needs equal shapes at stage {i}, got {tuple(s.shape)} and {tuple(t.shape)}")
        s, teacher_on = s.float(), t > 0
        wrongly_on = (s > -margin) & ~teacher_on
        wrongly_off = (s <= margin) & teacher_on
        stage_sum = ((s + margin).pow(2) * wrongly_on + (s - margin).pow(2) * wrongly_off).sum()
        total = total + 2.0 ** (i - num_stages + 1) * stage_sum / s.shape[0] * 3 / 1000
    return total


def ft_loss(student_factor: Tensor, teacher_factor: Tensor,
            form: ReferenceForm | str = ReferenceForm.benchmark) -> Tensor:
    """Factor transfer (Kim et al. 2018): the translator's factor of the student against the
    paraphraser's factor of the teacher; the larger map is pooled to the smaller size.

    `form="benchmark"` (what the tables ran): each factor reduced to an attention map (channel
    mean of its square, L2-normalised over positions); loss = mean over `B*H*W` of the absolute
    difference. `form="paper"`: each factor flattened to `[B, C*H*W]` and L2-normalised; loss =
    the L1 distance per sample, averaged over the batch (needs equal factor channels).
    """
    student_factor, teacher_factor = pool_to_common_size(student_factor, teacher_factor)
    if ReferenceForm(form) is ReferenceForm.benchmark:
        return (_attention_map(student_factor, 2) - _attention_map(teacher_factor, 2)).abs().mean()
    student_unit = F.normalize(student_factor.float().flatten(1), dim=1)
    teacher_unit = F.normalize(teacher_factor.float().flatten(1), dim=1)
    return (student_unit - teacher_unit).abs().sum(dim=1).mean()


def _flow_matrices(stages: Sequence[Tensor]) -> list[Tensor]:
    """Per pair of consecutive maps: `G[b, i, j]` = mean over positions of `upper[b, i] * lower[b, j]`."""
    matrices = []
    for lower, upper in itertools.pairwise(stages):
        lower, upper = pool_to_common_size(lower.float(), upper.float())
        positions = lower.shape[-2] * lower.shape[-1]
        matrices.append(upper.flatten(2) @ lower.flatten(2).transpose(1, 2) / positions)
    return matrices


def fsp_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Flow of solution procedure (Yim et al. 2017) over a list of maps (the benchmark: the stem
    and every stage output).

    Per pair of consecutive maps (the larger pooled to the smaller size) the `[B, C_upper, C_lower]`
    flow matrix; loss = mean over its entries of `(G_s - G_t)^2`, summed over the pairs. Student
    and teacher need the same number of maps with equal channel counts.
    """
    student_channels = [s.shape[1] for s in student]
    teacher_channels = [t.shape[1] for t in teacher]
    if student_channels != teacher_channels:
        raise ValueError(f"fsp_loss needs equal channel counts, got {student_channels} and {teacher_channels}")
    return sum((s - t).pow(2).mean() for s, t in zip(_flow_matrices(student), _flow_matrices(teacher)))


def _polynomial_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Mean over samples and channel pairs of `(a_i . b_j)^2`."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017) between one student map and one teacher map.

    Every channel map flattened over positions and L2-normalised; squared MMD with the kernel
    `k(a, b) = (a . b)^2`: `mean K(t,t) + mean K(s,s) - 2 mean K(s,t)` over all channel pairs and
    samples (the teacher's constant term included, as in the benchmark). Channel counts may
    differ; the larger map is pooled to the smaller size. The method sums it over stages.
    """
    student, teacher = pool_to_common_size(student, teacher)
    s = F.normalize(student.float().flatten(2), dim=2)
    t = F.normalize(teacher.float().flatten(2), dim=2)
    return _polynomial_kernel_mean(t, t) + _polynomial_kernel_mean(s, s) - 2 * _polynomial_kernel_mean(s, t)


def _at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32, or as it is when already float32 or float64 (so float64 stays exact)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


HCL_LEVELS = (4, 2, 1)  # the pooled sizes of ReviewKD's hierarchical context loss


def hcl_loss(features_s: list[Tensor], features_t: list[Tensor]) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021), summed over pairs of
    equal-shaped maps (the student's fused maps first, the teacher's second).

    Per pair: the mean squared error at full resolution, weight 1, then at each of the sizes 4x4,
    2x2, 1x1 (adaptive average pooling) smaller than the map's height, each with half the weight
    of the level before (1/2, 1/4, 1/8); the weighted sum divided by the sum of the weights used.
    """
    total = features_s[0].new_zeros((), dtype=_at_least_float32(features_s[0]).dtype)
    for i, (s, t) in enumerate(zip(features_s, features_t, strict=True)):
        if s.shape != t.shape:
            raise ValueError(f"hcl_loss needs equal shapes at pair {i}, got {tuple(s.shape)} and {tuple(t.shape)}")
        s, t = _at_least_float32(s), _at_least_float32(t)
        levels = [size for size in HCL_LEVELS if size < s.shape[-2]]
        weights = [0.5 ** (rank + 1) for rank in range(len(levels))]
        weighted = F.mse_loss(s, t) + sum(
            weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            for weight, size in zip(weights, levels))
        total = total + weighted / (1 + sum(weights))
    return total


def simkd_loss(projected_student: Tensor, teacher: Tensor) -> Tensor:
    """SimKD's feature loss (Chen et al. 2022): the student's last map after the projector against
    the teacher's last map, the teacher's average-pooled to the projected map's size when it is
    larger (the projector pools the student's map when that one is the larger, as the reference
    does). Reduction: mean squared error over all `B*C*H*W` entries (the reference's `MSELoss`).
    """
    if teacher.shape[-2:] != projected_student.shape[-2:]:
        teacher = F.adaptive_avg_pool2d(teacher, projected_student.shape[-2:])
    if projected_student.shape != teacher.shape:
        raise ValueError(f"simkd_loss needs maps of equal batch and channels, got {tuple(projected_student.shape)} "
                         f"and {tuple(teacher.shape)}")
    return F.mse_loss(projected_student.float(), teacher.float())


def srrl_loss(projected_student: Tensor, teacher: Tensor, regressed_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """SRRL (Yang et al., ICLR 2021), as its reference code computes it: the student's pooled
    feature after the connector (`[B, D_t]`) against the teacher's pooled feature, plus the
    teacher's classifier applied to that projected feature (`regressed_logits`) against the
    teacher's logits (the "softmax regression", an MSE of logits in the reference). Reduction:
    each a mean squared error over all entries; the two summed with weight 1.
    """
    pairs = {"features": (projected_student, teacher), "logits": (regressed_logits, teacher_logits)}
    for name, (a, b) in pairs.items():
        if a.shape != b.shape:
            raise ValueError(f"srrl_loss needs {name} of equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (F.mse_loss(projected_student.float(), teacher.float())
            + F.mse_loss(regressed_logits.float(), teacher_logits.float()))


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """OFD's per-channel margin (Heo et al., ICCV 2019) from the affine parameters of the batch
    norm before a teacher's ReLU, read as the pre-activation's std (`|weight|`) and mean (`bias`):
    the expected value of the pre-activation below zero, `m - s * phi(m/s) / Phi(-m/s)`, or
    `-3 s` where `Phi(-m/s) <= 0.001` (as mdistiller's `get_margin`). Shape `[C]`, float32,
    computed in float64."""
    std, mean = bn_weight.detach().double().abs(), bn_bias.detach().double()
    below_zero = torch.special.ndtr(-mean / std)
    density = torch.exp(-(mean / std) ** 2 / 2) / math.sqrt(2 * math.pi)
    expected_negative = mean - std * density / below_zero
    return torch.where(below_zero > 0.001, expected_negative, -3 * std).float()


def ofd_loss(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance between the student's connected pre-ReLU map `source` and the
    teacher's pre-ReLU map `target` (`[B, C, H, W]`), with the teacher's per-channel `margin`
    (`[C]` or `[1, C, 1, 1]`).

    Per entry: `(s - m)^2` where `s > m >= t` (the teacher's neuron is off: the student need only
    stay below the margin), `(s - t)^2` where `s > t` and `m < t <= 0`, and `(s - t)^2` where
    `t > 0` (the conditions as mdistiller writes them, overlaps included). Reduction: mean over the
    batch, summed over channels and positions.
    """
    source, target = _at_least_float32(source), _at_least_float32(target)
    margin = margin.to(source).reshape(1, -1, 1, 1)
    off_above_margin = (source > margin) & (target <= margin)
    negative_below_student = (source > target) & (target > margin) & (target <= 0)
    to_margin = torch.where(off_above_margin, (source - margin).pow(2), 0.0)
    # The last two conditions exclude each other (t <= 0 against t > 0); the first can overlap the
    # third (a positive margin), and then both count, as in mdistiller.
    to_target = torch.where(negative_below_student | (target > 0), (source - target).pow(2), 0.0)
    return (to_margin + to_target).mean(dim=0).sum()


def _leading_singular_vectors(feature_map: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The `count` largest singular values (`[B, n]`, L2-normalised together) and right singular
    vectors (`[B, C, n]`, unit columns) of each sample's positions x channels matrix, non-finite
    entries zeroed (as the reference does after its SVD)."""
    matrix = _at_least_float32(feature_map).flatten(2).transpose(1, 2)
    _, values, right_transposed = torch.linalg.svd(matrix, full_matrices=False)
    values, vectors = (torch.where(torch.isfinite(x), x, 0.0) for x in (values, right_transposed.transpose(1, 2)))
    return F.normalize(values[:, :count], dim=1), F.normalize(vectors[:, :, :count], dim=1)


def _radial_basis(deeper: Tensor, shallower: Tensor) -> Tensor:
    """`[B, C_deep, C_shallow, n]`: exp(-(a - b)^2 / 8) between every pair of the two levels' vector entries."""
    return torch.exp(-(deeper[:, :, None, :] - shallower[:, None, :, :]).pow(2) / 8)


def kdsvd_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], k: int = 1) -> Tensor:
    """KDSVD (Lee et al., ECCV 2018), as RepDistiller's `distiller_zoo/KDSVD.py` computes it, over
    stage maps shallow to deep with equal channel counts stage by stage.

    Per stage, each sample's map as a positions x channels matrix: the teacher's `k` leading right
    singular vectors, the student's `k + 3`; each teacher vector takes the student vector of largest
    |cosine| with it, sign-flipped to agree (ties add up, as in the reference); both sets are then
    scaled by the teacher's normalised singular values. Between consecutive stages, the radial
    basis `exp(-(v_deep - v_shallow)^2 / 8)` over every pair of channel entries; loss = the squared
    difference of student and teacher kernels (non-finite entries dropped), summed, divided by `B`,
    summed over the stage pairs.
    """
    if [s.shape[1] for s in student] != [t.shape[1] for t in teacher]:
        raise ValueError(f"kdsvd_loss needs equal channel counts, got {[s.shape[1] for s in student]} "
                         f"and {[t.shape[1] for t in teacher]}")
    total = student[0].new_zeros((), dtype=_at_least_float32(student[0]).dtype)
    previous = None
    for s, t in zip(student, teacher):
        teacher_values, teacher_vectors = _leading_singular_vectors(t.detach(), k)
        _, student_vectors = _leading_singular_vectors(s, k + 3)
        cosine = student_vectors.transpose(1, 2) @ teacher_vectors  # [B, k + 3, k]
        closest = cosine.abs() == cosine.abs().amax(dim=1, keepdim=True)
        student_vectors = student_vectors @ torch.where(closest, cosine.sign(), 0.0)
        scale = teacher_values[:, None, :]
        current = (student_vectors * scale, teacher_vectors * scale)
        if previous is not None:
            difference = (_radial_basis(current[0], previous[0]) - _radial_basis(current[1], previous[1])).pow(2)
            total = total + torch.where(torch.isfinite(difference), difference, 0.0).sum() / s.shape[0]
        previous = current
    return total


def semckd_loss(projected_student: Sequence[Sequence[Tensor]], teacher: Sequence[Sequence[Tensor]],
                attention: Tensor) -> Tensor:
    """SemCKD's cross-layer loss (Chen et al., AAAI 2021), as its reference code computes it.

    `projected_student[i][j]`: student stage i projected onto teacher stage j's channels (and the
    spatial size both were aligned to); `teacher[i][j]`: teacher stage j at that size; `attention`:
    `[B, S, T]`, each sample's weights over the teacher stages for every student stage. Per sample
    and pair, the mean squared error over `C*H*W`; weighted by the attention, summed over
    samples and pairs, divided by `B * S` (S student stages).
    """
    batch, student_stages, teacher_stages = attention.shape
    per_pair = torch.stack([
        torch.stack([(_at_least_float32(projected_student[i][j]) - _at_least_float32(teacher[i][j]))
                     .pow(2).flatten(1).mean(dim=1)
                     for j in range(teacher_stages)], dim=1)
        for i in range(student_stages)], dim=1)  # [B, S, T]
    return (_at_least_float32(attention) * per_pair).sum() / (batch * student_stages)
