"""AdamW with parameter groups: weight decay on matrices/kernels only.

Parameters with fewer than 2 dimensions (norm scales, biases, scalars such as CLIP's ``logit_scale``) and
parameters whose name contains one of ``no_decay`` (position embeddings, class tokens, ...) get no decay:
decaying them pulls normalisation gains and temperatures towards zero for no regularisation benefit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from polytok.train.train_config import OptimConfig


def split_decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], no_decay: Sequence[str] = ()
) -> tuple[list[str], list[str], dict[str, nn.Parameter]]:
    """Split trainable parameters into (decay names, no-decay names, name -> parameter)."""
    decay, skip, table = [], [], {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        table[name] = param
        if param.ndim < 2 or any(fragment in name for fragment in no_decay):
            skip.append(name)
        else:
            decay.append(name)
    return decay, skip, table


def build_param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float, no_decay: Sequence[str] = ()
) -> list[dict]:
    """Two AdamW parameter groups, ``decay`` and ``no_decay`` (empty groups are left out)."""
    decay, skip, table = split_decay_groups(named_parameters, no_decay)
    groups = []
    if decay:
        groups.append({"params": [table[n] for n in decay], "weight_decay": weight_decay, "group": "decay"})
    if skip:
        groups.append({"params": [table[n] for n in skip], "weight_decay": 0.0, "group": "no_decay"})
    if not groups:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    return groups


def build_adamw(
    named_parameters: Iterable[tuple[str, nn.Parameter]], config: OptimConfig
) -> torch.optim.AdamW:
    """AdamW over the decay / no-decay groups of ``named_parameters`` (use ``model.named_parameters()``)."""
    groups = build_param_groups(named_parameters, config.weight_decay, config.no_decay)
    extra = {"fused": True} if config.fused else {}
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, **extra)
