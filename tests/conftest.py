"""Fixtures shared by the tests; helpers (command-line runners, tiny configs) are in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One torch thread per test process and per CLI run it starts (inherited): `make test` runs two pytest
# workers on two cores, so more threads only oversubscribe them; and multi-threaded CPU reductions are not
# bit-for-bit reproducible from one process to the next (about 1 fresh process in 7 differed in the 7th
# digit of its first loss with 2 threads, none in 14 with 1), which the exact-resume tests compare.
os.environ.setdefault("OMP_NUM_THREADS", "1")

@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One dataset cache for the whole session (synthetic data is generated once)."""
    return tmp_path_factory.mktemp("segtrain-cache")
