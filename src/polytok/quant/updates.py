"""When the statistics of training forwards become codebook updates.

A quantizer in training mode learns its codebooks outside the optimiser: EMA k-means statistics, k-means
initialisation, dead-code restarts and the step counters behind the EMA warm-up and the restart
threshold. By default each training-mode forward applies them at its end, which suits a plain loop of
one forward and one optimiser step.

A loop that accumulates gradients over micro-batches, or skips steps whose loss is not finite, defers
them: forwards then only record statistics (no collective), and after the optimiser step ``commit()``
sums them over ranks once and applies them, so the codebooks see the whole step and count optimiser
steps; a skipped step calls ``discard()`` and leaves every codebook bit-identical. With k-means
initialisation the first step's forwards still quantize with the initial codes; its commit initialises
from all of its micro-batches and redoes the step's statistics with the new codes, which leaves the state
an in-forward initialisation would have left. The Trainer does all this itself. In a loop of your own::

    updates = CodebookUpdates(model)          # every quantizer inside ``model`` now defers
    for batch in loader:
        for micro in split(batch):
            loss_fn(model(micro)).backward()
        if loss_is_finite_on_every_rank:     # the same decision on every rank
            optimizer.step()
            updates.commit()                  # collective: every rank, every kept step
        else:
            updates.discard()
        optimizer.zero_grad()
    updates.release()                         # back to applying at the end of each forward
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def codebook_owners(model: nn.Module) -> list[nn.Module]:
    """Modules of ``model`` that learn codebooks outside the optimiser, in ``modules()`` order (the same
    on every rank, so their commits run the same collectives in the same order)."""
    return [m for m in model.modules() if callable(getattr(m, "commit_codebook_updates", None))]


class CodebookUpdates:
    """Defers the codebook updates of every quantizer in ``model`` until ``commit()`` or ``discard()``."""

    def __init__(self, model: nn.Module) -> None:
        self.owners = codebook_owners(model)
        for owner in self.owners:
            owner.defer_codebook_updates = True

    def commit(self) -> dict[str, Tensor]:
        """Apply what every forward since the last call recorded (collective: call on every rank).

        Returns ``restarts`` (codes restarted, all quantizers) and ``skipped`` (1.0 when some quantizer
        applied nothing, e.g. because an input was not finite on some rank).
        """
        restarts, skipped = torch.zeros(()), torch.zeros(())
        for owner in self.owners:
            out = owner.commit_codebook_updates()
            restarts = restarts + out["restarts"]
            skipped = torch.maximum(skipped, out["skipped"])
        return {"restarts": restarts, "skipped": skipped}

    def discard(self) -> None:
        """Forget what the forwards since the last call recorded (a skipped step); no collective."""
        for owner in self.owners:
            owner.discard_codebook_updates()

    def release(self) -> None:
        """Discard anything pending and go back to applying updates at the end of each forward."""
        self.discard()
        for owner in self.owners:
            owner.defer_codebook_updates = False
