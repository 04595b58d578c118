"""The floating-point precision of a training run: ``precision: auto`` picks bf16 autocast where the
hardware computes bf16 natively and fp32 elsewhere (emulated bf16 is slower than fp32 on older CPUs)."""

from __future__ import annotations

import platform
import warnings
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has bf16 arithmetic in hardware.

    CUDA: ``torch.cuda.is_bf16_supported()``. x86 CPUs: AVX512-BF16 or AMX tiles (AMX comes with
    AMX-BF16). Arm CPUs: the BF16 extension, as oneDNN reports it.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        queries = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in queries)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(
    requested: str, device: torch.device | str, *, hardware_bf16: bool | None = None
) -> Precision:
    """``requested`` ("auto", "fp32" or "bf16") on ``device`` -> the precision to train in.

    An explicit "bf16" is honoured on a CPU (autocast works there, only slower without hardware support)
    and falls back to fp32 with a warning on a GPU without bf16. ``hardware_bf16`` replaces the hardware
    query (None: ask :func:`native_bf16`).
    """
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {requested!r}")
    if requested == "fp32":
        return "fp32"
    kind = torch.device(device).type
    native = native_bf16(kind) if hardware_bf16 is None else hardware_bf16
    if requested == "auto":
        return "bf16" if native else "fp32"
    if kind == "cuda" and not native:
        warnings.warn("bf16 is not supported on this GPU; training in fp32", RuntimeWarning, stacklevel=2)
        return "fp32"
    return "bf16"
