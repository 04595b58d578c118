"""A linear probe on the code vectors of each prefix averaged over positions
(``tokenizer.code_embedding(codes)``): what the tokens carry, with or without a semantic branch."""

from __future__ import annotations

from typing import Any

from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch, at_depth
from polytok.eval.metrics.linear_probe import FeatureBank, probe_top1
from polytok.eval.options import EvalOptions


class CodeProbe:
    reads = "codes"
    label = "code probe"  # named in progress lines

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.skipped: dict[str, str] = {}
        self.banks: dict[int, FeatureBank] = {}

    def prepare(self, batch: RealBatch) -> None:
        pass

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        bank = at_depth(self.banks, depth.levels, FeatureBank)
        if batch.labels is not None:
            bank.update(self.tokenizer.code_embedding(depth.codes), batch.labels)

    def compute(self) -> list[DepthResult]:
        results = []
        for levels in sorted(self.banks):
            outcome = probe_top1(self.banks[levels], "code vectors averaged over positions")
            if isinstance(outcome, str):
                self.skipped["code probe top-1"] = outcome
                continue
            results.append(DepthResult(levels, "codes", {"code probe top-1": outcome}))
        return results


def build(tokenizer: Any, options: EvalOptions, device: Any, skipped: dict[str, str]) -> CodeProbe | None:
    if options.linear_probe_features and hasattr(tokenizer, "code_embedding"):
        return CodeProbe(tokenizer)
    return None
