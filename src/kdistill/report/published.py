"""Published CIFAR-100 top-1 values (%), each with the paper it comes from, and the report
section that sets them beside the measured ones (`kdistill report --published`).

Only values copied from the papers' tables (as their authors' repositories reproduce them) are
here; a pair or method a paper does not report has no entry.
"""

from kdistill.report.table import Pair, Table

SOURCES = {
    "ICD": "ICD/DCD paper (Invariant Consistency for Knowledge Distillation), CIFAR-100 tables 1-2",
    "DKD": "Zhao et al., CVPR 2022, Decoupled Knowledge Distillation (table as in mdistiller's README)",
    "LS": "Sun et al., CVPR 2024, Logit Standardization in Knowledge Distillation (tables as in its code's README)",
    "MLKD": "Jin et al., CVPR 2023, Multi-Level Logit Distillation (its values as tabulated by Sun et al. 2024)",
    "DIST": "Huang et al., NeurIPS 2022, Knowledge Distillation from A Stronger Teacher (CIFAR-100 means of "
            "its authors' README, hunto/DIST_KD, with their logs)",
    "DKD-baselines": "Zhao et al., CVPR 2022, Decoupled Knowledge Distillation, CIFAR-100 tables 1-2: the feature "
                     "baselines mdistiller reproduces (mdistiller's README has no table of its own for them)",
    "SimKD": "Chen et al., CVPR 2022, Knowledge Distillation with the Reused Teacher Classifier (CIFAR-100 table "
             "of its authors' README, DefangChen/SimKD: SimKD f=2, SemCKD and SRRL as they ran them, CE 1 KD 1)",
    "CTKD": "Li et al., AAAI 2023, Curriculum Temperature for Knowledge Distillation (CIFAR-100 table, as in "
            "its code's README, zhengli97/CTKD)",
}

_ICD_PAIRS = [
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
]
# Rows of the ICD tables in the pair order above: teacher, student, KD, CRD, CRD+KD, ICD, ICD+KD.
_ICD_COLUMNS = ("teacher", "student", "kd", "crd", "crd+kd", "dcd", "dcd+kd")
_ICD_VALUES = [
    (75.61, 73.26, 74.92, 75.48, 75.64, 74.92, 76.06), (75.61, 71.98, 73.54, 74.14, 74.38, 73.69, 74.76),
    (72.34, 69.06, 70.66, 71.16, 71.63, 71.18, 71.81), (74.31, 69.06, 70.67, 71.46, 71.56, 71.00, 71.57),
    (74.31, 71.14, 73.08, 73.48, 73.75, 73.11, 73.62), (79.42, 72.50, 73.33, 75.51, 75.46, 74.23, 74.99),
    (74.64, 70.36, 72.98, 73.94, 74.29, 72.98, 73.83), (74.64, 64.60, 67.37, 69.73, 69.94, 68.22, 69.37),
    (79.34, 64.60, 67.35, 69.11, 69.54, 67.39, 69.28), (79.34, 70.36, 73.81, 74.30, 74.58, 73.85, 73.88),
    (79.42, 70.50, 74.07, 75.11, 75.12, 74.07, 75.27), (79.42, 71.82, 74.45, 75.65, 76.05, 75.23, 76.53),
    (75.61, 70.50, 74.83, 76.05, 76.27, 74.98, 76.39),
]
# The logit family's pairs that are among the 13: (pair, DKD, KD+LS, DKD+LS, MLKD); None = not reported.
_R8X4, _VGG8 = ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")
_W401, _W162 = ("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "wrn_16_2")
_R20, _R32, _R110_20 = ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet110", "resnet20")
_SHV2, _V_MV2, _R50_MV2 = ("resnet32x4", "ShuffleV2"), ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2")
_LOGIT_FAMILY = [
    (_R8X4, 76.32, 76.62, 77.01, 77.08), (_VGG8, 74.68, 74.36, 74.81, 75.18), (_W401, 74.81, 74.37, 74.89, 75.35),
    (_W162, 76.23, 76.11, 76.39, 76.63), (_R20, 71.97, 71.43, 72.32, 72.19), (_R32, 74.11, 74.17, 74.29, 74.11),
    (_R110_20, 71.06, 71.48, 71.85, 71.89), (_SHV2, 77.07, 75.56, 77.37, 78.44),
    (_V_MV2, 69.71, 68.61, 69.98, 70.57), (_R50_MV2, 70.35, 69.02, 70.45, 71.04),
    (("resnet32x4", "ShuffleV1"), 76.45, None, None, None), (("wrn_40_2", "ShuffleV1"), 76.70, None, None, None),
]
# DKD's ResNet110 -> ResNet20 and ResNet32x4 -> ShuffleV2 values are from the LS tables (mdistiller's
# README has no ResNet110 -> ResNet20 column and labels the ShuffleV2 column "MobileNet-V2").
_DKD_FROM_LS = {_R110_20, _SHV2}
# CTKD on KD (global temperature), the six pairs of its CIFAR-100 table that are among the 13.
_KD_CTKD = {_R20: 71.19, _R32: 73.52, _R110_20: 70.99, _W162: 75.45, _W401: 73.93, _VGG8: 73.52}
# DIST's CIFAR-100 results (the six pairs its authors report that are among the 13).
_DIST = {_W401: 74.43, _R20: 71.75, _R8X4: 76.31, _R50_MV2: 68.66, ("resnet32x4", "ShuffleV1"): 76.34, _SHV2: 77.35}
# The SimKD authors' table; of its pairs only ResNet32x4 -> ResNet8x4 is among the 13.
_SIMKD_TABLE = {("simkd", _R8X4): 78.08, ("srrl", _R8X4): 75.39, ("semckd", _R8X4): 76.23}

# The feature baselines of the DKD paper's tables: {method: {pair: top-1}}; pairs it leaves out have none.
_FEATURE_BASELINES = {
    "reviewkd": {_R20: 71.89, _R32: 73.89, _R8X4: 75.63, _W162: 76.12, _W401: 75.09, _VGG8: 74.84, _V_MV2: 70.37,
                 _R50_MV2: 69.89, ("resnet32x4", "ShuffleV1"): 77.45, ("wrn_40_2", "ShuffleV1"): 77.14,
                 _SHV2: 77.78},
    "ofd": {_R20: 70.98, _R32: 73.23, _R8X4: 74.95, _W162: 75.24, _W401: 74.33, _VGG8: 73.95, _V_MV2: 69.48,
            _R50_MV2: 69.04, ("resnet32x4", "ShuffleV1"): 75.98, ("wrn_40_2", "ShuffleV1"): 75.85, _SHV2: 76.82},
}


def _published() -> dict[tuple[str, Pair], tuple[float, str]]:
    values: dict[tuple[str, Pair], tuple[float, str]] = {}
    for pair, row in zip(_ICD_PAIRS, _ICD_VALUES, strict=True):
        values.update({(column, pair): (value, "ICD") for column, value in zip(_ICD_COLUMNS, row, strict=True)})
    for pair, dkd, kd_ls, dkd_ls, mlkd in _LOGIT_FAMILY:
        for method, value, source in (("dkd", dkd, "LS" if pair in _DKD_FROM_LS else "DKD"),
                                      ("kd+ls", kd_ls, "LS"), ("dkd+ls", dkd_ls, "LS"), ("mlkd", mlkd, "MLKD")):
            if value is not None:
                values[(method, pair)] = (value, source)
    values.update({("dist", pair): (value, "DIST") for pair, value in _DIST.items()})
    for method, pairs in _FEATURE_BASELINES.items():
        values.update({(method, pair): (value, "DKD-baselines") for pair, value in pairs.items()})
    values.update({key: (value, "SimKD") for key, value in _SIMKD_TABLE.items()})
    values.update({("kd+ctkd", pair): (value, "CTKD") for pair, value in _KD_CTKD.items()})
    return values


PUBLISHED = _published()  # (method or "teacher"/"student", (teacher, student)) -> (top-1 %, source key)
_ALIASES = {"icd": "dcd", "icd+kd": "dcd+kd"}


def published_top1(row: str, pair: Pair, dataset: str = "cifar100") -> tuple[float, str] | None:
    """The published CIFAR-100 top-1 of a report row (a method, "teacher" or "student") on a
    pair, and its source key; None where none is known."""
    if dataset != "cifar100":
        return None
    return PUBLISHED.get((_ALIASES.get(row, row), pair))


def format_published(tables: list[Table]) -> str:
    """A Markdown section per table with published values: each measured mean beside the paper's
    value and the difference (measured - published); '-' where either is missing."""
    sections, used = [], set()
    for table in tables:
        rows = [row for row in table.rows if any(published_top1(row, pair, table.dataset) for pair in table.pairs)]
        if not rows:
            continue
        header = ["", *[f"{teacher} → {student}" for teacher, student in table.pairs]]
        lines = [f"### {table.dataset}: measured / published top-1 (%) at the {table.variant} epoch", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [row]
            for pair in table.pairs:
                cell, published = table.rows[row].get(pair), published_top1(row, pair, table.dataset)
                if published is None:
                    cells.append("-" if cell is None else f"{cell.mean:.2f} / -")
                    continue
                used.add(published[1])
                measured = "-" if cell is None else f"{cell.mean:.2f}"
                # + 0.0 turns a rounded -0.00 into +0.00
                difference = "" if cell is None else f" ({round(cell.mean - published[0], 2) + 0.0:+.2f})"
                cells.append(f"{measured} / {published[0]:.2f} [{published[1]}]{difference}")
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    if not sections:
        return "No published values for these runs (kdistill ships CIFAR-100 values of its 13 table pairs).\n"
    notes = "\n".join(f"- [{key}] {SOURCES[key]}" for key in SOURCES if key in used)
    return "\n\n".join(sections) + "\n\nmeasured / published [source] (measured − published):\n" + notes + "\n"
