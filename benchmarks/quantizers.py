"""Quantizer speed and memory, side by side with vector-quantize-pytorch, in one run.

    python benchmarks/quantizers.py            # full shapes (a few minutes on 2 cores)
    python benchmarks/quantizers.py --quick    # small shapes, a smoke run

Every row runs both libraries on the same inputs with the same codebooks (copied into
vector-quantize-pytorch), fp32, with the thread count fixed, and checks that the chosen indices equal a
float64 brute-force reference. Both libraries are timed alike: the best of the same number of calls
after one warm-up; reported as ratios measured in this run, not absolute times.

The "beside a busy process" rows repeat the EvoTok eval with and without a competing process (a
Python busy loop, like a data-loader worker holding a core), alternating, and report the slow-down
each library suffers and the speed-up under load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from polytok.quant import MultiCodebookQuantizer, ResidualQuantizer, nearest_codes_reference

REPEATS = 3  # calls timed per measurement, the same for both libraries


def timed(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Best of ``repeats`` calls after a warm-up: the least disturbed run on a shared machine."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / timed(lambda: a @ b, 10) / 1e9


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@contextlib.contextmanager
def busy_process() -> Iterator[None]:
    """A competing process spinning on one core for the duration (the scheduler places it)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        proc.kill()
        proc.wait()


def residual_reference(z: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """Residual quantization by float64 brute force: (N, D) -> (N, L)."""
    residual = z.double()
    out = []
    for codes in codebooks:
        idx = nearest_codes_reference(residual[None], codes[None])[0]
        out.append(idx)
        residual = residual - codes.double()[idx]
    return torch.stack(out, -1)


def evotok_pair(levels: int, size: int, dim: int) -> tuple:
    """polytok's and vector-quantize-pytorch's residual quantizers with the same codebooks."""
    from vector_quantize_pytorch import ResidualVQ

    torch.manual_seed(0)
    ours = ResidualQuantizer(dim=dim, levels=levels, codebook_size=size, update="ema")
    theirs = ResidualVQ(dim=dim, num_quantizers=levels, codebook_size=size, decay=0.99)
    books = [ours.codebooks[i].embed[0].clone() for i in range(levels)]
    with torch.no_grad():
        for layer, codes in zip(theirs.layers, books):
            layer._codebook.embed.copy_(codes[None])
            layer._codebook.embed_avg.copy_(codes[None])
            layer._codebook.initted.fill_(True)
    return ours, theirs, books


def evotok_rows(tokens: int, levels: int, size: int, dim: int, fp32_rate: float) -> list[dict]:
    ours, theirs, books = evotok_pair(levels, size, dim)
    z = torch.randn(1, tokens, dim)
    ref = residual_reference(z[0], books)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        ours_idx = ours(z).indices[0]
        theirs_idx = theirs(z)[1][0]
        t_ours, t_theirs = timed(lambda: ours(z)), timed(lambda: theirs(z))
    flops = 2 * tokens * size * dim * levels
    rows = [
        {
            "case": f"EvoTok eval: {levels} x {size} x {dim}-d, {tokens} tokens",
            "polytok tok/s": tokens / t_ours,
            "vqp tok/s": tokens / t_theirs,
            "speed-up": t_theirs / t_ours,
            "search GFLOP/s": flops / t_ours / 1e9,
            "of fp32 matmul": flops / t_ours / 1e9 / fp32_rate,
            "indices == brute force": bool(torch.equal(ours_idx, ref)),
            "vqp == brute force": bool(torch.equal(theirs_idx, ref)),
        }
    ]

    def ours_step() -> None:
        x = z.clone().requires_grad_(True)
        out = ours(x)
        (out.quantized.square().mean() + out.loss).backward()

    def theirs_step() -> None:
        x = z.clone().requires_grad_(True)
        q, _, loss = theirs(x)
        (q.square().mean() + loss.sum()).backward()

    ours.train(), theirs.train()
    t_ours, t_theirs = timed(ours_step), timed(theirs_step)
    rows.append(
        {
            "case": f"EvoTok train step (fwd+bwd+EMA), {tokens} tokens",
            "polytok tok/s": tokens / t_ours,
            "vqp tok/s": tokens / t_theirs,
            "speed-up": t_theirs / t_ours,
        }
    )
    return rows


def loaded_row(tokens: int, levels: int, size: int, dim: int, threads: int, rounds: int) -> dict:
    """EvoTok eval quiet and beside a busy process, alternating ``rounds`` times; medians of the ratios."""
    ours, theirs, _ = evotok_pair(levels, size, dim)
    ours.eval(), theirs.eval()
    z = torch.randn(1, tokens, dim)
    runs: dict[str, list[float]] = {
        "ours": [],
        "theirs": [],
        "ours busy": [],
        "theirs busy": [],
        "ours 1t": [],
    }
    with torch.no_grad():
        for _ in range(rounds):
            for busy in ("", " busy"):
                with busy_process() if busy else contextlib.nullcontext():
                    runs["ours" + busy].append(timed(lambda: ours(z)))
                    runs["theirs" + busy].append(timed(lambda: theirs(z)))
            torch.set_num_threads(1)
            runs["ours 1t"].append(timed(lambda: ours(z)))
            torch.set_num_threads(threads)

    def median_ratio(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(runs[num], runs[den]))

    return {
        "case": f"EvoTok eval beside a busy process: {levels} x {size} x {dim}-d, {tokens} tokens, "
        f"{rounds} rounds",
        "polytok tok/s quiet": tokens / statistics.median(runs["ours"]),
        "polytok tok/s busy": tokens / statistics.median(runs["ours busy"]),
        "polytok slow-down": median_ratio("ours busy", "ours"),
        "vqp slow-down": median_ratio("theirs busy", "theirs"),
        "speed-up quiet": median_ratio("theirs", "ours"),
        "speed-up busy": median_ratio("theirs busy", "ours busy"),
        "polytok busy vs quiet 1 thread": median_ratio("ours busy", "ours 1t"),
    }


def unitok_row(tokens: int, books: int, size: int, sub_dim: int) -> dict:
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(0)
    dim = books * sub_dim
    ours = MultiCodebookQuantizer(dim=dim, num_codebooks=books, codebook_size=size, normalize=True).eval()
    theirs = VectorQuantize(
        dim=dim,
        codebook_size=size,
        codebook_dim=sub_dim,
        heads=books,
        separate_codebook_per_head=True,
        use_cosine_sim=True,
    ).eval()
    codes = ours.codebooks[0].codes().detach().clone()  # (C, K, d) unit norm
    with torch.no_grad():
        theirs._codebook.embed.copy_(codes)
        theirs._codebook.initted.fill_(True)
    z = torch.randn(1, tokens, dim)
    chunks = F.normalize(z[0].view(tokens, books, sub_dim), dim=-1).transpose(0, 1)
    ref = nearest_codes_reference(chunks, codes, cosine=True).T
    with torch.no_grad():
        ours_idx, theirs_idx = ours(z).indices[0], theirs(z)[1][0]
        t_ours, t_theirs = timed(lambda: ours(z)), timed(lambda: theirs(z))
    return {
        "case": f"UniTok eval: {books} x {size} x {sub_dim}-d cosine, {tokens} tokens",
        "polytok tok/s": tokens / t_ours,
        "vqp tok/s": tokens / t_theirs,
        "speed-up": t_theirs / t_ours,
        "indices == brute force": bool(torch.equal(ours_idx, ref)),
        "vqp == brute force": bool(torch.equal(theirs_idx, ref)),
    }


MEMORY_CHILD = """
import json, torch
torch.set_num_threads({threads})
from polytok.quant import nearest_codes

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

n, k, d = {tokens}, {size}, {dim}
x, codes = torch.randn(1, n, d), torch.randn(1, k, d)
out = torch.empty(1, n, dtype=torch.long)
nearest_codes(x[:, :8], codes)  # load the kernels before the baseline
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
out.copy_(nearest_codes(x, codes))
print(json.dumps({{"extra_mb": (status("VmHWM:") - before) / 1024, "full_matrix_mb": n * k * 4 / 2**20}}))
"""


def memory_row(tokens: int, size: int, dim: int, threads: int) -> dict:
    code = MEMORY_CHILD.format(threads=threads, tokens=tokens, size=size, dim=dim)
    result = json.loads(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    )
    return {
        "case": f"Memory: {tokens} tokens x {size} codes x {dim}-d (fresh process)",
        "peak extra MB": result["extra_mb"],
        "full distance matrix MB": result["full_matrix_mb"],
    }


def print_table(rows: list[dict]) -> None:
    for row in rows:
        cells = []
        for key, value in row.items():
            if key == "case":
                continue
            cells.append(f"{key} {value:,.2f}" if isinstance(value, float) else f"{key} {value}")
        print(f"| {row['case']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes for a smoke run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="quiet/busy alternations of the busy rows")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp32 = matmul_gflops(512 if args.quick else 2048)
    size = 512 if args.quick else 2048
    print(f"{cpu_model()}, {args.threads} threads")
    print(f"fp32 matmul {fp32:.0f} GFLOP/s ({size}^2, measured in this run)")
    if args.quick:
        rows = [
            *evotok_rows(64, 3, 1024, 32, fp32),
            unitok_row(256, 8, 256, 8),
            memory_row(4096, 4096, 32, 2),
            loaded_row(256, 3, 4096, 32, args.threads, rounds=2),
        ]
    else:
        rows = evotok_rows(1024, 16, 32768, 32, fp32)
        rows += [unitok_row(4096, 8, 4096, 8), memory_row(65536, 32768, 32, args.threads)]
        rows.append(loaded_row(1024, 16, 32768, 32, args.threads, rounds=args.rounds))
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
