"""A unified-model training run from the command line, optionally slowed down once checkpoint N is
written, or in the middle of writing checkpoint N (its files staged, not yet published), so that a test
can kill it there:

    python train_worker_unified.py CONFIG key=value ... [--sleep-after-step N] [--stall-in-checkpoint N]
"""

from __future__ import annotations

import sys
import time

from polytok.recipes.unified_run import load_unified_run_config, train_unified


def main(argv: list[str]) -> None:
    sleep_after = None
    if "--sleep-after-step" in argv:
        i = argv.index("--sleep-after-step")
        sleep_after = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]

    if "--stall-in-checkpoint" in argv:
        i = argv.index("--stall-in-checkpoint")
        stall_at = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
        from polytok.train import checkpoint

        publish = checkpoint.finalize_checkpoint

        def finalize_slowly(root, step, *args, **kwargs):
            if step == stall_at:
                time.sleep(60)  # every file of the step is staged; the manifest and the rename wait
            return publish(root, step, *args, **kwargs)

        checkpoint.finalize_checkpoint = finalize_slowly

    def slow_down(trainer, record) -> None:
        if sleep_after is not None and trainer.step > sleep_after:  # checkpoint N is written first
            time.sleep(60)

    train_unified(load_unified_run_config(argv[0], argv[1:]), callbacks=[slow_down])


if __name__ == "__main__":
    main(sys.argv[1:])
