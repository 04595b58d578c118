"""Run logging: one JSON object per logged step (file, optionally stdout), TensorBoard when installed,
and a tqdm progress bar with throughput and ETA (and, for a run with a time budget, the minutes used of
it: the ETA then counts steps that the clock may cut short). Only rank 0 writes; the other ranks get no-ops.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


def keep_records_through(path: Path, step: int) -> None:
    """Drop the records of ``path`` logged after ``step`` (and a line torn by a kill), atomically: a run
    resumed from the checkpoint of ``step`` logs the later steps again, and each step is logged once."""
    from polytok.storage import atomic_write_text

    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if kept != lines:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class RunLogger:
    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        images_per_step: int = 1,
        stdout: bool = False,
        progress: bool = True,
        tensorboard: bool = True,
        max_minutes: float | None = None,
    ) -> None:
        self.enabled = enabled
        self.max_minutes = max_minutes
        self.stdout = stdout and enabled
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not enabled:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "log.jsonl"
        if self.path.exists():
            keep_records_through(self.path, start_step)
        self.jsonl = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if progress:
            # counts steps; unit_scale turns the rate and totals into images (tqdm adds the ETA)
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train" if max_minutes is None else f"train ({max_minutes:g} min budget)",
                unit="img",
                unit_scale=images_per_step,
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one record (must contain ``step``)."""
        if not self.enabled:
            return
        line = json.dumps({k: _json_safe(v) for k, v in record.items()})
        self.jsonl.write(line + "\n")
        self.jsonl.flush()
        if self.stdout:
            print(line, flush=True)
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, record["step"])

    def progress(self, steps: int, postfix: Mapping[str, Any], train_seconds: float | None = None) -> None:
        """Advance the bar by ``steps`` and show e.g. loss and images/s (tqdm shows the ETA); with a time
        budget also the minutes of it used so far (``train_seconds``)."""
        if self.bar is not None:
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
            if self.max_minutes is not None and train_seconds is not None:
                shown["min"] = f"{train_seconds / 60:.2f}/{self.max_minutes:g}"
            self.bar.update(steps)
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None


class Throughput:
    """Images per second over the steps since the last call."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.images = 0

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.t0, 1e-9)
        self.t0, self.images = now, 0
        return rate
