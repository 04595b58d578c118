"""Shared test set-up: one compute thread per test process.

The suite runs under pytest-xdist with one worker per core; torch's default of one thread per core in
every worker (and in every process a test spawns: torchrun ranks, CLI runs) would oversubscribe the
cores several times over and make the timing of the whole suite erratic.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses tests start
    import torch

    torch.set_num_threads(1)
