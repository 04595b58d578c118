"""A linear probe on the code vectors of each prefix averaged over positions
(``tokenizer.code_embedding(codes)``, :attr:`TokenizerCapabilities.code_embedding`): what the tokens
carry, with or without a semantic branch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch, at_depth
from polytok.eval.metrics.linear_probe import FeatureBank, probe_top1
from polytok.eval.options import EvalOptions


class CodeProbe:
    reads = "codes"
    label = "code probe"  # named in progress lines

    def __init__(self, code_embedding: Callable[[Tensor], Tensor]) -> None:
        self.code_embedding = code_embedding
        self.skipped: dict[str, str] = {}
        self.banks: dict[int, FeatureBank] = {}

    def prepare(self, batch: RealBatch) -> None:
        pass

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        bank = at_depth(self.banks, depth.levels, FeatureBank)
        if batch.labels is not None:
            bank.update(self.code_embedding(depth.codes), batch.labels)

    def compute(self) -> list[DepthResult]:
        results = []
        for levels in sorted(self.banks):
            outcome = probe_top1(self.banks[levels], "code vectors averaged over positions")
            if isinstance(outcome, str):
                self.skipped["code probe top-1"] = outcome
                continue
            results.append(DepthResult(levels, "codes", {"code probe top-1": outcome}))
        return results


def build(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> CodeProbe | None:
    if options.linear_probe_features and caps.code_embedding is not None:
        return CodeProbe(caps.code_embedding)
    return None
