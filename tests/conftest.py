import os

# One intra-op thread per test process (and the commands it starts): the models here are tiny,
# and two spinning OpenMP threads per process on a two-core machine shared by a parallel CLI
# test run many times slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

# Test helpers live in tests/helpers.py; these names stay importable from conftest only for test
# files written before the move.
from helpers import QUICK_RUN, kdistill_command, mean_over_ranks, run_kdistill  # noqa: F401


@pytest.fixture
def run_cli():
    return run_kdistill


# pytest-xdist hands out whole files (--dist loadfile) in collection order: the longest go first, so
# that no worker is left alone with one of them at the end of the run (test_recipes, collected late
# as one 1057-test file, used to run alone for minutes).
LONGEST_FILES = ("test_recipe_forward.py", "test_teacher_cache.py", "test_cli.py", "test_data_safety.py",
                 "test_recipes.py", "test_grid.py", "test_pretrained.py", "test_crash_safety.py")


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: a file keeps its order
