"""The unified model's training objective for :class:`polytok.train.Trainer`.

Batches are the dicts :class:`polytok.unified.data.MixedTaskCollate` builds (the fields of a
``SequenceBatch``). The loss is the model's own: image weight x image cross-entropy (text -> image rows)
+ text weight x text cross-entropy (image -> text rows), each on the target part of the sequences only.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from polytok.train.objective import StepContext
from polytok.unified.sequence import SequenceBatch


class UnifiedObjective:
    """Captioning and text-to-image losses of one mixed batch."""

    def generator_loss(
        self, model: nn.Module, batch: dict[str, Any], ctx: StepContext
    ) -> tuple[Tensor, dict]:
        out = model(SequenceBatch(**batch))  # through the DDP/FSDP wrapper: gradients are synchronised
        logs = {"image_loss": out.image_loss.detach(), "text_loss": out.text_loss.detach()}
        return out.loss, logs
