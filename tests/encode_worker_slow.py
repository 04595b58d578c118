"""``polytok encode`` with the dataset slowed down after its first samples, so that a test can kill the run
part-way (after the first shard is written) and resume it. Usage: like ``polytok``, plus the environment
variables SLOW_FROM (first slowed dataset index) and SLOW_S (seconds per slowed sample)."""

from __future__ import annotations

import os
import sys
import time

import polytok.tokensets.npz
from polytok.cli import main

SLOW_FROM = int(os.environ.get("SLOW_FROM", "8"))
SLOW_S = float(os.environ.get("SLOW_S", "1.0"))


class Slowed:
    """The dataset, each item from SLOW_FROM on delivered after SLOW_S seconds."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if index >= SLOW_FROM:
            time.sleep(SLOW_S)
        return self.dataset[index]


real = polytok.tokensets.npz.dataset_for_encoding
polytok.tokensets.npz.dataset_for_encoding = lambda *a, **kw: Slowed(real(*a, **kw))

if __name__ == "__main__":
    sys.exit(main())
