"""AdamW with parameter groups: weight decay on matrices/kernels only, optional lr multipliers by name.

Parameters with fewer than 2 dimensions (norm scales, biases, scalars such as CLIP's ``logit_scale``) and
parameters whose name contains one of ``no_decay`` (position embeddings, class tokens, ...) get no decay:
decaying them pulls normalisation gains and temperatures towards zero for no regularisation benefit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay: Sequence[str] = (),
    lr_scales: Mapping[str, float] | None = None,
    lr: float | None = None,
) -> list[dict]:
    """AdamW parameter groups ``decay`` and ``no_decay`` (empty groups are left out).

    With ``lr_scales`` (parameter-name prefix -> lr multiplier; needs ``lr``), the parameters under each
    prefix get their own pair of groups, named ``decay:<prefix>`` / ``no_decay:<prefix>``, with
    ``lr * scale``; the longest matching prefix wins. A prefix that matches no trainable parameter is an
    error (a typo would otherwise train everything at the full rate).
    """
    decay, skip, table = split_decay_groups(named_parameters, no_decay)
    if not table:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    scales = dict(lr_scales or {})
    if scales and lr is None:
        raise ValueError("lr_scales needs the base lr")
    prefixes = sorted(scales, key=len, reverse=True)

    def prefix_of(name: str) -> str | None:
        return next((p for p in prefixes if name.startswith(p)), None)

    unmatched = [p for p in prefixes if not any(prefix_of(n) == p for n in table)]
    if unmatched:
        raise ValueError(
            f"lr_scales prefixes {unmatched} match no trainable parameter; "
            f"trainable names start with e.g. {sorted({n.split('.')[0] + '.' for n in table})}"
        )
    groups = []
    for prefix in [None, *prefixes]:
        for kind, names, wd in (("decay", decay, weight_decay), ("no_decay", skip, 0.0)):
            chosen = [table[n] for n in names if prefix_of(n) == prefix]
            if not chosen:
                continue
            group = {
                "params": chosen,
                "weight_decay": wd,
                "group": kind if prefix is None else f"{kind}:{prefix}",
            }
            if prefix is not None:
                group["lr"] = lr * scales[prefix]
            groups.append(group)
    return groups


def build_adamw(
    named_parameters: Iterable[tuple[str, nn.Parameter]], config: OptimConfig
) -> torch.optim.AdamW:
    """AdamW over the decay / no-decay groups of ``named_parameters`` (use ``model.named_parameters()``)."""
    groups = build_param_groups(
        named_parameters, config.weight_decay, config.no_decay, config.lr_scales, config.lr
    )
    extra = {"fused": True} if config.fused else {}
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, **extra)
