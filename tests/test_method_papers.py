"""Every registered method names its paper: in `kdistill list` (through the real command) and in
the README's method table (issue 19)."""

import re
from pathlib import Path

from helpers import run_kdistill

from kdistill.methods import list_methods
from kdistill.methods.registry import CTKD_PAPER, KD_PAPER, LS_PAPER

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_HEADER = "| method | name | paper |"


def listed_papers() -> dict[str, str]:
    """{method: paper} from the "methods and their papers:" section of `kdistill list`."""
    result = run_kdistill("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    section = lines[lines.index("methods and their papers:") + 1:]
    rows = [line.strip().split(maxsplit=1) for line in section if line.startswith("  ")]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def test_kdistill_list_gives_every_registered_method_its_paper():
    papers = listed_papers()
    assert list(papers) == list_methods()
    for name, paper in papers.items():
        # A variant's paper composes its parts': none of them may be empty.
        assert all(part.strip() for part in paper.split(" + ")), (name, paper)
    assert papers["kd"] == KD_PAPER and papers["dcd+kd"].endswith(f" + {KD_PAPER}")
    assert papers["kd+ls"] == f"{KD_PAPER} + {LS_PAPER}" and papers["dkd+ctkd"].endswith(f" + {CTKD_PAPER}")
    assert papers["crld+dkd+kd"] == f"{papers['crld']} + {papers['dkd']} + {KD_PAPER}"


def readme_table() -> list[tuple[str, str]]:
    """(name column, paper column) of each row of the README's method table."""
    lines = README.read_text().splitlines()
    rows = []
    for line in lines[lines.index(TABLE_HEADER) + 2:]:  # past the header and its rule
        if not line.startswith("|"):
            break
        rows.append(tuple(cell.strip() for cell in line.split("|")[2:4]))
    return rows


def test_the_readme_method_table_lists_every_registered_method_with_a_paper():
    rows = readme_table()
    assert all(paper for _, paper in rows), "a row of README.md's method table has no paper"
    # The `code` spans that are names, not options (`method.logit_standardize=true`) or models (`timm:...`).
    names = {name for column, _ in rows for name in re.findall(r"`([^`]+)`", column) if not re.search(r"[=:*\s]", name)}
    assert set(list_methods()) - names == set(), "registered but missing from README.md's method table"
    assert names - set(list_methods()) == set(), "in README.md's method table but not registered"
