"""Kill a run for real: start it in a process group of its own, wait until a file appears (a checkpoint's
manifest), then SIGKILL the whole group (launcher, ranks, data-loader workers) without any clean-up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def kill_when_file_appears(
    command: Sequence[str], marker: Path, *, env: Mapping[str, str], timeout_s: float
) -> None:
    """Run ``command`` until ``marker`` exists, then SIGKILL its process group; fail if the run ends
    first or the file does not appear within ``timeout_s``."""
    proc = subprocess.Popen(
        list(command), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not marker.exists():
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace")[-3000:]
                raise AssertionError(f"the run ended before {marker} appeared:\n{output}")
            assert time.monotonic() < deadline, f"no {marker} within {timeout_s:.0f} s"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
