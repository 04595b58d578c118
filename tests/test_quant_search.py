"""The shared nearest-code kernel against brute force and a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytok.quant import nearest_codes, nearest_codes_reference


def naive_nearest(x: torch.Tensor, codes: torch.Tensor, cosine: bool) -> torch.Tensor:
    """One vector and one code at a time, in float64."""
    groups, n, _ = x.shape
    out = torch.empty(groups, n, dtype=torch.long)
    for g in range(groups):
        for i in range(n):
            best, best_j = None, -1
            for j in range(codes.shape[1]):
                if cosine:
                    score = float((x[g, i].double() * codes[g, j].double()).sum())
                else:
                    score = -float(((x[g, i].double() - codes[g, j].double()) ** 2).sum())
                if best is None or score > best:
                    best, best_j = score, j
            out[g, i] = best_j
    return out


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("groups", [1, 3])
def test_matches_naive_loop(cosine: bool, groups: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(groups, 37, 5, generator=g)
    codes = torch.randn(groups, 23, 5, generator=g)
    if cosine:
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    got = nearest_codes(x, codes, cosine=cosine, buffer_bytes=4 * groups * 23 * 4)  # 4-row chunks
    assert torch.equal(got, naive_nearest(x, codes, cosine))


@pytest.mark.parametrize("buffer_bytes", [1, 4096, 1 << 22])
def test_chunking_does_not_change_result(buffer_bytes: int) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1000, 16, generator=g)
    codes = torch.randn(2, 512, 16, generator=g)
    assert torch.equal(nearest_codes(x, codes, buffer_bytes=buffer_bytes), nearest_codes_reference(x, codes))


def test_large_codebook_matches_float64_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 512, 32, generator=g)
    codes = torch.randn(1, 32768, 32, generator=g)
    assert torch.equal(nearest_codes(x, codes), nearest_codes_reference(x, codes))


def test_bf16_input_is_searched_in_fp32() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 200, 8, generator=g).bfloat16()
    codes = torch.randn(1, 300, 8, generator=g)
    assert torch.equal(nearest_codes(x, codes), nearest_codes_reference(x.float(), codes))


def test_empty_input_and_shape_errors() -> None:
    assert nearest_codes(torch.randn(1, 0, 4), torch.randn(1, 8, 4)).shape == (1, 0)
    with pytest.raises(ValueError, match="groups or dim"):
        nearest_codes(torch.randn(1, 3, 4), torch.randn(1, 8, 5))
    with pytest.raises(ValueError, match=r"\(G, N, d\)"):
        nearest_codes(torch.randn(3, 4), torch.randn(1, 8, 4))


# -- devices --------------------------------------------------------------------------------------------

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
    ),
]


def codes_with_known_nearest(
    groups: int, n: int, k: int, d: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit codes and inputs near chosen codes, with a margin float rounding cannot cross.

    Returns x (G, N, d), codes (G, K, d) and the chosen indices (G, N).
    """
    g = torch.Generator().manual_seed(seed)
    codes = F.normalize(torch.randn(groups, k, d, generator=g), dim=-1)
    chosen = torch.randint(k, (groups, n), generator=g)
    noise = 0.01 * F.normalize(torch.randn(groups, n, d, generator=g), dim=-1)
    x = torch.gather(codes, 1, chosen.unsqueeze(-1).expand(-1, -1, d)) + noise
    # Precondition, in float64: the chosen code beats every other one by far more than fp32 rounding.
    dist = torch.cdist(x.double(), codes.double())
    top2 = dist.topk(2, dim=-1, largest=False).values
    assert torch.equal(dist.argmin(-1), chosen) and (top2[..., 1] - top2[..., 0]).min() > 0.05
    return x, codes, chosen


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("cosine", [False, True])
def test_search_runs_on_the_input_device(device: str, groups: int, cosine: bool) -> None:
    x, codes, chosen = codes_with_known_nearest(groups, 700, 300, 16, seed=5)
    if cosine:
        x = F.normalize(x, dim=-1)
    # Small buffers: several row tiles and column blocks, so the running best crosses blocks.
    for buffer_bytes in (None, 4 * 256 * 64):
        got = nearest_codes(x.to(device), codes.to(device), cosine=cosine, buffer_bytes=buffer_bytes)
        assert got.device.type == device and got.dtype == torch.long
        assert torch.equal(got.cpu(), chosen)


@pytest.mark.parametrize("groups", [1, 3])
def test_search_allocates_nothing_on_the_host(groups: int) -> None:
    """Meta tensors have no data: any buffer made on the CPU instead of the input's device fails."""
    x, codes = torch.empty(groups, 700, 16, device="meta"), torch.empty(groups, 300, 16, device="meta")
    got = nearest_codes(x, codes, buffer_bytes=4 * 256 * 64)
    assert got.device.type == "meta" and got.shape == (groups, 700)
    # The converse: CPU inputs while factory calls without a device default to meta.
    x, codes, chosen = codes_with_known_nearest(groups, 700, 300, 16, seed=6)
    with torch.device("meta"):
        got = nearest_codes(x, codes, buffer_bytes=4 * 256 * 64)
    assert torch.equal(got, chosen)


# -- several threads ------------------------------------------------------------------------------------


@pytest.fixture
def thread_count():
    """Set torch's thread count for one test (the suite runs single-threaded), restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("groups", [1, 3])
def test_tiles_shared_among_threads_match_brute_force(thread_count, threads: int, groups: int) -> None:
    thread_count(threads)
    g = torch.Generator().manual_seed(8)
    # 20000 rows: several row blocks of per-tile maxima for one codebook; small buffers: many tiles.
    x = torch.randn(groups, 20000, 16, generator=g).requires_grad_(True)  # grad mode is per thread
    codes = torch.randn(groups, 300, 16, generator=g)
    for buffer_bytes in (None, 4 * 256 * 64):
        got = nearest_codes(x, codes, buffer_bytes=buffer_bytes)
        assert torch.equal(got, nearest_codes_reference(x.detach(), codes))
        assert torch.get_num_threads() == threads  # the caller's thread count is left as it was


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("groups", [1, 3])
def test_ties_go_to_the_lowest_index_across_tiles(thread_count, threads: int, groups: int) -> None:
    """Small integer vectors: every score is exact in fp32, so ties are exact and many."""
    thread_count(threads)
    g = torch.Generator().manual_seed(9)
    x = torch.randint(-1, 2, (groups, 600, 4), generator=g).float()
    codes = torch.randint(-1, 2, (groups, 300, 4), generator=g).float()
    scores = (
        torch.einsum("gnd,gkd->gnk", x.double(), codes.double()) - codes.double().pow(2).sum(-1)[:, None] / 2
    )
    expected = scores.argmax(-1)  # the first of equal maxima
    assert ((scores == scores.max(-1, keepdim=True).values).sum(-1) > 1).float().mean() > 0.5  # many ties
    for buffer_bytes in (None, 4 * 64 * 16):
        assert torch.equal(nearest_codes(x, codes, buffer_bytes=buffer_bytes), expected)


def test_a_failing_tile_is_raised_to_the_caller(thread_count) -> None:
    """The caller gets the error once every tile taken is finished, and does not wait for the others."""
    import threading

    from polytok.quant.search import _run_tiles

    thread_count(3)
    done: list[int] = []
    outcome: list[BaseException | None] = []

    def tile(t: int, worker: int) -> None:
        if t == 7:
            raise ArithmeticError("tile 7")
        done.append(t)

    def call() -> None:
        try:
            _run_tiles(tile, 500, 3)
            outcome.append(None)
        except ArithmeticError as error:
            outcome.append(error)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "the caller hung"
    assert isinstance(outcome[0], ArithmeticError) and 7 not in done


@pytest.mark.parametrize("groups", [1, 3])
def test_search_under_inference_mode_on_several_threads(thread_count, groups: int) -> None:
    """Inference mode is per thread like grad mode: the helper threads write into buffers the caller made
    under inference mode, which outside it would be refused."""
    thread_count(2)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(groups, 5000, 8, generator=g)
    codes = torch.randn(groups, 400, 8, generator=g)
    with torch.inference_mode():
        got = nearest_codes(x, codes, buffer_bytes=4 * 64 * 400)
    assert torch.equal(got, nearest_codes_reference(x, codes))
