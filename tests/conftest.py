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
