"""Token export speed: ``polytok encode`` to tar shards with 1 and 2 processes (torchrun, gloo), side by
side in one run.

    python benchmarks/token_export.py                     # evotok-tiny, 256 shapes images
    python benchmarks/token_export.py --tokenizer unitok-tiny --images 512 --threads 1
    python benchmarks/token_export.py --quick             # 16 images, a smoke run

Each configuration runs the real command in fresh processes on the same images and writes its own set;
the table gives the encode time (from joining the process group to the last shard, as the command
reports it), the whole command's wall time (imports and model loading included), images/s of the
encode time and the speed-up over one process. The sets are compared: both must hold the same
(key, codes) pairs. On a shared machine compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from polytok.tokensets.shards import load_token_shards


def run_export(nproc: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    cli = ["-m", "polytok.cli", "encode", args.tokenizer, "shapes", "--out", str(out)]
    cli += ["--max-images", str(args.images), "--shard-size", str(args.shard_size)]
    cli += ["--batch-size", str(args.batch_size)]
    if nproc > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        command = [sys.executable, *launcher, *cli]
    else:
        command = [sys.executable, *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"encode with {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    report = next(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    return {"samples": report["samples"], "encode_s": report["seconds"], "wall_s": wall}


def pairs(path: Path) -> dict[str, bytes]:
    data = load_token_shards(path)
    return {k: c.numpy().tobytes() for k, c in zip(data["keys"], data["codes"])}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", default="evotok-tiny")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="16 images in shards of 8: a smoke run")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.images, args.shard_size, args.batch_size = 16, 8, 4
    rows, sets = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in args.processes:
            out = Path(tmp) / f"p{nproc}"
            result = run_export(nproc, args, out)
            rows.append({"processes": nproc, **result, "images/s": result["samples"] / result["encode_s"]})
            sets[nproc] = pairs(out)
        first = sets[args.processes[0]]
        for row in rows:
            row["speed-up"] = row["images/s"] / rows[0]["images/s"]
            row["same (key, codes)"] = sets[row["processes"]] == first
    print(
        f"{args.tokenizer}, {args.images} shapes images at 64 px, shards of {args.shard_size}, "
        f"batch {args.batch_size}, {args.threads} thread(s) per process"
    )
    print(
        f"{'processes':>9} | {'encode s':>8} | {'wall s':>7} | {'images/s':>8} | {'speed-up':>8} | same set"
    )
    for row in rows:
        print(
            f"{row['processes']:>9} | {row['encode_s']:>9.2f} | {row['wall_s']:>9.2f} | "
            f"{row['images/s']:>9.1f} | {row['speed-up']:>9.2f} | {row['same (key, codes)']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
