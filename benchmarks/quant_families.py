"""The quantizer families (FSQ, LFQ, BSQ, SimVQ, VAR multi-scale, dual codebook) side by side with
vector-quantize-pytorch, in one run.

    python benchmarks/quant_families.py            # full shapes (three to four minutes on 2 cores)
    python benchmarks/quant_families.py --quick    # small shapes, a smoke run

Each row runs both libraries on the same inputs, fp32, the thread count fixed: forward in eval mode, and
forward + backward in training mode (loss = mean square of the output + the quantizer's loss). Calls of
the two libraries alternate and each time is the median of ``--rounds`` alternations, so a machine
shared with other work slows both alike. Reported: milliseconds per call, their ratio (polytok /
vector-quantize-pytorch, below 1 is faster) and the speed-up (its inverse), and the peak memory of a
training step, measured in a fresh process per library (the peak resident size of a child process as
``resource.getrusage(RUSAGE_CHILDREN)`` reports it, minus that of a child that stops just before the
step). ``agree`` is the fraction of eval indices the two libraries share.

What is compared with what:
  FSQ          FiniteScalarQuantizer(levels) vs FSQ(levels): the same definition.
  LFQ          LookupFreeQuantizer(dim=18) (entropy over 2 groups of 9 bits) vs LFQ(dim=18,
               num_codebooks=2, codebook_size=2^9): the same factorised entropy; there the two groups
               are also two indices (and their entropies are averaged, here summed).
  BSQ          BinarySphericalQuantizer(dim=18) vs LFQ(..., spherical=True) as for LFQ (normalised per
               group there, over all 18 channels here: the codes differ, not the work).
  SimVQ        VectorQuantizer(projected=True) vs SimVQ(rotation_trick=False): both straight-through.
  multi-scale  no equivalent in vector-quantize-pytorch: polytok alone (VAR's 10 scales).
  dual         no equivalent either: polytok alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from polytok.quant import (
    BinarySphericalQuantizer,
    DualCodebookQuantizer,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    MultiScaleResidualQuantizer,
    VectorQuantizer,
)

FSQ_LEVELS = [8, 5, 5, 5]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# -- the cases: (polytok module, vqp module or None, inputs, how to call each) -----------------------


def _ours_call(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    out = module(*args)
    return out.quantized, out.loss


def _vqp_call(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    result = module(*args)
    quantized, _, loss = result if len(result) == 3 else (*result, None)
    return quantized, loss if loss is not None else quantized.new_zeros(())


def _indices(module: torch.nn.Module, args: tuple[torch.Tensor, ...], ours: bool) -> torch.Tensor:
    out = module(*args)
    return out.indices if ours else out[1]


def build(case: str, tokens: int) -> dict:
    """Modules and inputs of one case (identical on every call: seeded)."""
    import vector_quantize_pytorch as vqp

    torch.manual_seed(0)
    batch, n = max(tokens // 1024, 1), min(tokens, 1024)
    g = torch.Generator().manual_seed(1)
    if case == "FSQ":
        ours, theirs = FiniteScalarQuantizer(FSQ_LEVELS), vqp.FSQ(levels=FSQ_LEVELS)
        args = (torch.randn(batch, n, len(FSQ_LEVELS), generator=g),)
        label = f"FSQ {FSQ_LEVELS}, {tokens} tokens"
    elif case in ("LFQ", "BSQ"):
        spherical = case == "BSQ"
        ours = (BinarySphericalQuantizer if spherical else LookupFreeQuantizer)(dim=18, group_size=9)
        theirs = vqp.LFQ(dim=18, num_codebooks=2, codebook_size=2**9, spherical=spherical)
        args = (torch.randn(batch, n, 18, generator=g),)
        label = f"{case} 18 bits (2 x 9), {tokens} tokens"
    elif case == "SimVQ":
        ours = VectorQuantizer(dim=32, codebook_size=4096, projected=True, init_std=32**-0.5)
        theirs = vqp.SimVQ(dim=32, codebook_size=4096, rotation_trick=False)
        book = ours.codebooks[0]
        with torch.no_grad():  # the same basis and map in both (vector-quantize-pytorch's has no bias)
            book.embed.copy_(theirs.frozen_codebook[None])
            book.proj_weight.copy_(theirs.code_transform.weight[None])
            book.proj_bias.zero_()
        args = (torch.randn(batch, n, 32, generator=g),)
        label = f"SimVQ 4096 x 32-d, {tokens} tokens"
    elif case == "multi-scale":
        side = 16 if tokens >= 4096 else 8
        scales = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) if side == 16 else (1, 2, 4, 8)
        ours, theirs = MultiScaleResidualQuantizer(dim=32, codebook_size=4096, scales=scales), None
        args = (torch.randn(max(tokens // side**2, 1), side, side, 32, generator=g),)
        label = f"multi-scale VAR {len(scales)} scales to {side}x{side}, 4096 x 32-d, {tokens} tokens"
    elif case == "dual":
        ours, theirs = DualCodebookQuantizer(semantic_dim=32, pixel_dim=8, codebook_size=4096), None
        args = (torch.randn(batch, n, 32, generator=g), torch.randn(batch, n, 8, generator=g))
        label = f"dual codebook 4096 x (32 + 8)-d, {tokens} tokens"
    else:
        raise ValueError(case)
    return {"ours": ours, "theirs": theirs, "args": args, "label": label}


CASES = ["FSQ", "LFQ", "BSQ", "SimVQ", "multi-scale", "dual"]


def train_step(module: torch.nn.Module, args: tuple[torch.Tensor, ...], ours: bool) -> None:
    inputs = tuple(a.clone().requires_grad_() for a in args)
    quantized, loss = (_ours_call if ours else _vqp_call)(module, inputs)
    (quantized.square().mean() + loss.sum()).backward()


@torch.no_grad()
def eval_call(module: torch.nn.Module, args: tuple[torch.Tensor, ...], ours: bool) -> None:
    (_ours_call if ours else _vqp_call)(module, args)


def medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` alternations (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# -- peak memory, one fresh process per library ------------------------------------------------------

MEMORY_CHILD = """
import sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {bench_dir!r})
import quant_families as qf
case = qf.build({case!r}, {tokens})
module = case["ours" if {ours} else "theirs"].train()
if {run}:
    qf.train_step(module, case["args"], {ours})
"""

WRAPPER = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-c", {code!r}], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_mb(case: str, tokens: int, ours: bool, run: bool, threads: int) -> float:
    """Peak resident MB of a fresh child process that builds the case and (``run``) takes one step."""
    code = MEMORY_CHILD.format(
        threads=threads, bench_dir=str(Path(__file__).parent), case=case, tokens=tokens, ours=ours, run=run
    )
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER.format(code=code)], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def step_memory(case: str, tokens: int, ours: bool, threads: int) -> float:
    return peak_mb(case, tokens, ours, True, threads) - peak_mb(case, tokens, ours, False, threads)


# -- rows --------------------------------------------------------------------------------------------


def case_rows(case: str, tokens: int, rounds: int, threads: int, memory: bool) -> list[dict]:
    built = build(case, tokens)
    ours, theirs, args = built["ours"], built["theirs"], built["args"]
    rows = []
    for mode in ("eval", "train"):
        fns: dict[str, Callable[[], object]] = {}
        for name, module in (("ours", ours), ("theirs", theirs)):
            if module is None:
                continue
            module.train(mode == "train")
            if mode == "eval":
                fns[name] = lambda m=module, o=(name == "ours"): eval_call(m, args, o)
            else:
                fns[name] = lambda m=module, o=(name == "ours"): train_step(m, args, o)
        t = medians(fns, rounds)
        row: dict = {"case": f"{built['label']}, {mode}", "polytok ms": t["ours"] * 1e3}
        if theirs is not None:
            row["vqp ms"] = t["theirs"] * 1e3
            row["time ratio"] = t["ours"] / t["theirs"]
            row["speed-up"] = t["theirs"] / t["ours"]
            if mode == "eval":
                ours.eval(), theirs.eval()
                with torch.no_grad():
                    a, b = _indices(ours, args, True), _indices(theirs, args, False).long()
                if b.shape != a.shape:  # two 9-bit indices there, one 18-bit index here
                    b = b[..., 0] * 2**9 + b[..., 1]
                row["agree"] = float((a == b).float().mean())
        else:
            row["vqp ms"] = "none"
        if mode == "train" and memory:
            row["polytok step MB"] = step_memory(case, tokens, True, threads)
            if theirs is not None:
                row["vqp step MB"] = step_memory(case, tokens, False, threads)
                row["memory ratio"] = row["polytok step MB"] / max(row["vqp step MB"], 1e-3)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    keys = ["polytok ms", "vqp ms", "time ratio", "speed-up", "agree"]
    keys += ["polytok step MB", "vqp step MB", "memory ratio"]
    print("| case | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key, "")
            cells.append(f"{value:,.2f}" if isinstance(value, float) else str(value))
        print(f"| {row['case']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes for a smoke run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="alternations per median")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens = 256 if args.quick else 8192
    rounds = args.rounds or (3 if args.quick else 15)
    print(
        f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, {tokens} tokens, {rounds} rounds"
    )
    rows = []
    for case in CASES:
        # The peak memory of every case in full runs; of LFQ only (the entropy tables) in quick ones.
        rows += case_rows(case, tokens, rounds, args.threads, memory=not args.quick or case == "LFQ")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"cpu": cpu_model(), "threads": args.threads, "tokens": tokens, "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
