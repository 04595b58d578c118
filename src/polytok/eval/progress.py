"""Progress bars of the evaluation and the report (tqdm on stderr, as the training engine's bar).

``progress``: True shows the bar, False hides it, None (the library's default) shows it only when stderr
is a terminal, so library calls from scripts and tests stay quiet unless asked.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

REFRESH_S = 0.5  # not on a terminal: at most two redraws a second, so a log file stays readable


def progress_bar(total: int | None, desc: str, progress: bool | None, unit: str = "img") -> tqdm:
    """A bar on stderr; ``progress`` as in the module docstring (tqdm's ``disable=None`` is "not a TTY")."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        mininterval=REFRESH_S,
        file=sys.stderr,
        disable=None if progress is None else not progress,
    )


class StageTimes:
    """Seconds spent per named part (e.g. per metric family), shown on a bar while it runs."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.seconds: dict[str, float] = {}
        self._shown = 0.0  # when the bar was last redrawn for a part
        self._terminal = sys.stderr.isatty()  # a terminal redraws in place: name every part

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        redraw = self._terminal or start - self._shown >= REFRESH_S
        self.bar.set_postfix_str(name, refresh=redraw)
        if redraw:
            self._shown = start
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        """``"Frechet features 5.1 s, pixel fidelity 0.3 s"``, slowest first."""
        ranked = sorted(self.seconds.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in ranked)
