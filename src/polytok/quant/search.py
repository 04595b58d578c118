"""Nearest-code search: one shared, chunked, fp32 kernel for every quantizer.

The nearest code under squared Euclidean distance is the argmax of ``x . c - |c|^2 / 2``; under cosine
similarity (unit-norm inputs and codes) it is the argmax of ``x . c``. Both are one matrix product plus a
row-wise max, so the search is a GEMM. It is run over tiles of inputs and codes into preallocated score
buffers: memory stays bounded (a full 65536 x 32768 score matrix would be 8 GiB) and no temporaries are
allocated per tile (which, on glibc, fragments the heap and inflates peak RSS).

On the CPU the tiles are shared out among ``torch.get_num_threads()`` threads, each running its GEMMs on
one core and taking the next tile from a common counter. Splitting every small GEMM over the whole thread
team instead costs a team barrier per tile, and while another process holds a core (a data-loader worker)
each barrier waits for a scheduler time slice: the search then ran several times slower than on one
thread. With a shared counter a thread whose core is busy simply takes fewer tiles.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

# Score buffer budgets, shared by the threads. One codebook: tiles of up to 256 inputs x (budget / threads)
# worth of codes, which stay in a core's cache, then a max over the tiles' maxima. Several codebooks: thin
# batched GEMMs over all codes of a few rows. Either way the budget bounds the memory beyond inputs and
# outputs (plus at most RESULT_BYTES of per-tile maxima).
DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
GROUPED_BUFFER_BYTES = 1024 * 1024
TILE_ROWS = 256
RESULT_BYTES = 1024 * 1024

_executor: ThreadPoolExecutor | None = None
_executor_owner = (-1, 0)  # (process id, size): threads do not survive fork(), so a child makes its own


def _thread_pool(size: int) -> ThreadPoolExecutor:
    global _executor, _executor_owner
    pid, current = _executor_owner
    if _executor is None or pid != os.getpid() or current < size:
        _executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="polytok-search")
        _executor_owner = (os.getpid(), size)
    return _executor


@functools.cache
def _per_thread_counts() -> bool:
    """Whether torch.set_num_threads(1) in a worker thread takes effect (OpenMP; the native pool ignores
    it once started, and its workers would then each split their GEMMs again)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _run_tiles(tile: Callable[[int, int], None], count: int, workers: int) -> None:
    """Call ``tile(t, worker)`` for every t in [0, count) on up to ``workers`` threads, the caller's included.

    ``worker`` numbers the thread (its private buffers). A thread takes the next tile when it is done with
    one, and runs torch single-threaded once it holds one (the caller already does: see
    ``_single_threaded``). The caller waits only for tiles that were taken: a helper thread that is slow to
    be scheduled (its core busy) finds the tiles gone and does nothing.
    """
    workers = min(workers, count)
    if workers <= 1:
        for t in range(count):
            tile(t, 0)
        return
    lock = threading.Lock()
    all_done = threading.Condition(lock)
    state = {"taken": 0, "finished": 0}
    errors: list[BaseException] = []
    # Grad mode and inference mode are per thread: the helpers take the caller's, or they could not
    # write into buffers the caller made under inference mode.
    inference = torch.is_inference_mode_enabled()

    def take() -> int | None:
        with lock:
            if state["taken"] >= count or errors:
                return None
            state["taken"] += 1
            return state["taken"] - 1

    def drain(worker: int) -> None:
        t = take()
        if t is None:
            return
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.no_grad():
            while t is not None:
                try:
                    tile(t, worker)
                except BaseException as error:  # handed to the caller; no further tiles are handed out
                    with lock:
                        errors.append(error)
                with lock:
                    state["finished"] += 1
                    all_done.notify_all()
                t = take()

    pool = _thread_pool(workers - 1)
    for worker in range(1, workers):
        pool.submit(drain, worker)
    try:
        drain(0)
    finally:
        with lock:
            all_done.wait_for(lambda: state["finished"] == state["taken"])
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _single_threaded(enabled: bool) -> Iterator[None]:
    """torch single-threaded on the calling thread for the duration, its thread count restored after.

    Used while the search runs on several threads: any multi-threaded op left inside it (the code norms,
    the merge of the tiles' maxima) would again wait on a thread team.
    """
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _workers(x: Tensor) -> int:
    # GPU kernels are queued asynchronously: one host thread suffices.
    if x.device.type != "cpu" or not _per_thread_counts():
        return 1
    return torch.get_num_threads()


def _nearest_one_codebook(
    x: Tensor, codes_t: Tensor, bias: Tensor | None, out: Tensor, buffer_bytes: int, workers: int
) -> None:
    """x (N, d), codes_t (d, K), bias (K,) or None -> out (N,)."""
    n, k = x.shape[0], codes_t.shape[1]
    rows = min(n, TILE_ROWS)
    cols = min(k, max(1, buffer_bytes // (4 * rows * workers)))
    col_tiles = -(-k // cols)
    # Rows are searched in blocks whose per-tile maxima (value + index, 12 bytes) fit RESULT_BYTES.
    block = min(n, max(rows, RESULT_BYTES // (12 * col_tiles) // rows * rows))
    vals = x.new_empty(col_tiles, block)
    idx = x.new_empty(col_tiles, block, dtype=torch.long)
    best, choice = x.new_empty(block), x.new_empty(block, dtype=torch.long)
    offsets = torch.arange(0, k, cols, device=x.device).unsqueeze(1)  # first code of each column tile
    scores = [x.new_empty(rows, cols) for _ in range(workers)]
    for b0 in range(0, n, block):
        m = min(block, n - b0)

        def tile(t: int, worker: int, b0: int = b0, m: int = m) -> None:
            r, c = divmod(t, col_tiles)
            r0, c0 = r * rows, c * cols
            r1, c1 = min(r0 + rows, m), min(c0 + cols, k)
            buf = scores[worker][: r1 - r0, : c1 - c0]
            xs = x[b0 + r0 : b0 + r1]
            if bias is None:
                torch.mm(xs, codes_t[:, c0:c1], out=buf)
            else:
                torch.addmm(bias[c0:c1], xs, codes_t[:, c0:c1], out=buf)
            torch.max(buf, dim=1, out=(vals[c, r0:r1], idx[c, r0:r1]))

        _run_tiles(tile, -(-m // rows) * col_tiles, workers)
        # torch.max keeps the first of equal maxima, within a tile and across tiles: ties go to the lowest
        # index whatever the tiling.
        torch.max(vals[:, :m], dim=0, out=(best[:m], choice[:m]))
        idx[:, :m].add_(offsets)
        torch.gather(idx[:, :m], 0, choice[:m].unsqueeze(0), out=out[b0 : b0 + m].unsqueeze(0))


def _nearest_grouped(
    x: Tensor, codes_t: Tensor, bias: Tensor | None, out: Tensor, buffer_bytes: int, workers: int
) -> None:
    """x (G, N, d), codes_t (G, d, K), bias (G, K) or None -> out (G, N)."""
    groups, n, _ = x.shape
    k = codes_t.shape[2]
    chunk = min(n, max(1, buffer_bytes // (4 * groups * k * workers)))
    scores = [x.new_empty(groups, chunk, k) for _ in range(workers)]
    vals = [x.new_empty(groups, chunk) for _ in range(workers)]
    idx = [x.new_empty(groups, chunk, dtype=torch.long) for _ in range(workers)]
    bias = None if bias is None else bias.unsqueeze(1)

    def tile(t: int, worker: int) -> None:
        start = t * chunk
        stop = min(start + chunk, n)
        buf, v, i = (
            scores[worker][:, : stop - start],
            vals[worker][:, : stop - start],
            idx[worker][:, : stop - start],
        )
        if bias is None:
            torch.bmm(x[:, start:stop], codes_t, out=buf)
        else:
            torch.baddbmm(bias, x[:, start:stop], codes_t, out=buf)
        torch.max(buf, dim=2, out=(v, i))
        out[:, start:stop] = i

    _run_tiles(tile, -(-n // chunk), workers)


@torch.no_grad()
def nearest_codes(
    x: Tensor,
    codebooks: Tensor,
    *,
    cosine: bool = False,
    buffer_bytes: int | None = None,
) -> Tensor:
    """Index of the nearest code for every vector, per group.

    Args:
        x: (G, N, d) vectors, G groups (codebooks) of N vectors each. Any float dtype; searched in fp32.
        codebooks: (G, K, d) codes of each group.
        cosine: if True, inputs and codes are taken as unit-norm and the largest dot product wins
            (callers normalise); else the smallest squared Euclidean distance wins.
        buffer_bytes: total size of the reusable score buffers, which bounds the memory beyond
            inputs/outputs (default 4 MiB for one codebook, 1 MiB for several).

    Returns:
        (G, N) int64 indices in [0, K), on the device of ``x``. Ties go to the lowest index.
    """
    if x.dim() != 3 or codebooks.dim() != 3:
        raise ValueError(
            f"expected x (G, N, d) and codebooks (G, K, d), got {tuple(x.shape)} and {tuple(codebooks.shape)}"
        )
    groups, n, d = x.shape
    if codebooks.shape[0] != groups or codebooks.shape[2] != d:
        raise ValueError(
            f"x {tuple(x.shape)} and codebooks {tuple(codebooks.shape)} disagree on groups or dim"
        )
    if buffer_bytes is None:
        buffer_bytes = DEFAULT_BUFFER_BYTES if groups == 1 else GROUPED_BUFFER_BYTES
    workers = _workers(x)
    with _single_threaded(workers > 1):
        x = x.float()
        codes_t = codebooks.float().transpose(1, 2)  # (G, d, K)
        out = torch.empty(groups, n, dtype=torch.long, device=x.device)
        if n == 0:
            return out
        bias = None if cosine else codebooks.float().pow(2).sum(-1) * -0.5  # (G, K)
        if groups == 1:
            _nearest_one_codebook(
                x[0], codes_t[0], None if bias is None else bias[0], out[0], buffer_bytes, workers
            )
        else:
            _nearest_grouped(x, codes_t, bias, out, buffer_bytes, workers)
    return out


def nearest_codes_reference(x: Tensor, codebooks: Tensor, *, cosine: bool = False) -> Tensor:
    """Brute force in float64 (full distance matrix): the independent reference for tests/benchmarks."""
    x64, c64 = x.double(), codebooks.double()
    if cosine:
        return torch.einsum("gnd,gkd->gnk", x64, c64).argmax(-1)
    return torch.cdist(x64, c64).argmin(-1)
