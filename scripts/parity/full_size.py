"""What the full-size comparison scripts (``compare_*_full.py``) share: the command line, the timer and
the figures each prints.

Each script builds an official model at its published size from a checkout given by path, with seeded
random weights and perturbed norms, converts it with polytok's converter and runs both on the same random
images; it prints one JSON line. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the seconds it took (rounded to 0.1 s)."""
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 1)


def max_abs_diff(ours: Tensor, theirs: Tensor) -> float:
    return float((ours.detach().float() - theirs.detach().float()).abs().max())


def code_figures(ours: Tensor, theirs: Tensor) -> dict[str, int]:
    """How many of the official codes polytok's differ from, out of how many."""
    if ours.shape != theirs.shape:
        raise AssertionError(
            f"code shapes differ: polytok {tuple(ours.shape)}, official {tuple(theirs.shape)}"
        )
    return {"codes_differing": int((ours != theirs).sum()), "codes_total": theirs.numel()}


def main(
    doc: str, checkout: str, checkout_help: str, compare: Callable[..., dict], argv: list[str] | None = None
) -> None:
    """Parse ``--CHECKOUT PATH --images N --seed S --threads T``, run ``compare(root, n_images, seed)``
    on T torch threads and print its figures as one JSON line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(f"--{checkout}", type=Path, required=True, help=checkout_help)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = getattr(args, checkout.replace("-", "_")).resolve()
    with torch.no_grad():
        figures = compare(root, args.images, args.seed)
    print(json.dumps({**figures, "threads": torch.get_num_threads()}), flush=True)
