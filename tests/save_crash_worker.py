"""Saves into an existing directory and dies by SIGKILL at a chosen point; launched by test_saved_dirs.py.

    python tests/save_crash_worker.py tokenizer DIR SEED CRASH_AT   # Tokenizer.save_pretrained(DIR)
    python tests/save_crash_worker.py checkpoint ROOT STEP CRASH_AT # a training checkpoint of STEP
    python tests/save_crash_worker.py loop DIR                      # save_pretrained forever, seeds 1, 2

CRASH_AT = k kills the process just before its k-th rename (``os.rename`` / ``os.replace``); 0 never.
"""

from __future__ import annotations

import os
import signal
import sys

import torch


def crash_before_rename(k: int) -> None:
    calls = [0]

    def wrap(real):
        def rename(src, dst, *args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *args, **kwargs)

        return rename

    os.rename, os.replace = wrap(os.rename), wrap(os.replace)


def tokenizer(seed: int):
    from polytok.models.tokenizer import Tokenizer

    torch.manual_seed(seed)
    return Tokenizer.from_preset("evotok-tiny", load_backbone_weights=False)


def write_checkpoint(root: str, step: int, value: float) -> None:
    from polytok.train import checkpoint as ckpt

    staging = ckpt.begin_checkpoint(root, step)
    ckpt.atomic_save_safetensors({"w": torch.full((1024,), value)}, staging / "model.safetensors")
    ckpt.atomic_torch_save({"step": step}, staging / ckpt.STATE_FILE)
    ckpt.finalize_checkpoint(root, step)


def main(argv: list[str]) -> None:
    mode, target = argv[0], argv[1]
    if mode == "loop":
        models = [tokenizer(1), tokenizer(2)]
        i = 0
        while True:
            models[i % 2].save_pretrained(target)
            i += 1
    crash_before_rename(int(argv[3]))
    if mode == "tokenizer":
        tokenizer(int(argv[2])).save_pretrained(target)
    else:
        write_checkpoint(target, int(argv[2]), 2.0)


if __name__ == "__main__":
    main(sys.argv[1:])
