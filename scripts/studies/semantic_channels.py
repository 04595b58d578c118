"""Can a tokenizer's own semantic channels learn the shape, and how fast? A reduced test bench.

Trains only what the semantic loss reaches in unitok-tiny with ``semantic_channels`` (encoder, projection,
the semantic head, with ``--train-codebooks`` the codebooks; no pixel loss, no pixel decoder) on ``shapes``
``train`` batches of 32, and every ``--every`` steps probes the position-averaged latent or code vectors for
the shape (logistic regression with scikit-learn's defaults on standardised features, 1024 train images;
512 ``val`` and 512 ``heldout``).

    python scripts/studies/semantic_channels.py --objective ce --steps 600
    python scripts/studies/semantic_channels.py --objective clip --quantize --steps 600

- ``--objective ce``: a linear shape classifier on the averaged vectors, trained with the shape labels (the
  best case: a direct signal; no real data has such labels);
- ``--objective clip``: the preset's CLIP head on the code vectors against the captions, each image's
  caption with the shape (or colour) word swapped as hard negatives (``loss.caption_negatives``);
- ``--objective choice``: the same head and captions, but each image chooses only among its caption and
  its own negatives (no other image's caption; ``loss.caption_choice``): one word is all there is to tell;
- ``--quantize``: through the quantizer (straight-through, its loss added) instead of the raw latent;
- ``--bound``: how the semantic channels are bounded before quantization, ``raw`` (the tokenizer's),
  ``tanh``, or ``norm`` (unit norm per codebook, UniTok's cosine codes);
- ``--lr``: AdamW's learning rate, constant (default 1e-3, the preset config's peak);
- ``--set KEY=VALUE ...``: model config overrides on top of the bench's (``semantic_channels=...``).

Prints one line per probe: step, loss, probe top-1 on val and on held-out pairs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.config import apply_overrides
from polytok.data import collate
from polytok.data.shapes import ShapesDataset
from polytok.losses import ClipContrastiveLoss
from polytok.models.tokenizer import Tokenizer

_TRAIN_IMAGES = 100_000  # training batches read images 32.. on; the probe's training images lie far beyond
_PROBE_FIRST = 50_000


def bounded_latent(tok: Tokenizer, images: Tensor, bound: str) -> Tensor:
    """The tokenizer's latent (B, N, D) with its semantic channels bounded as ``bound`` says."""
    z, _ = tok._latent(images)
    k = tok.linear_channels
    own = z[..., k:]
    if bound == "tanh":
        own = torch.tanh(own)
    elif bound == "norm":
        width = tok.config.quantizer.dim // (tok.config.quantizer.num_codebooks or 1)
        own = F.normalize(own.unflatten(-1, (-1, min(width, own.shape[-1]))), dim=-1).flatten(-2)
    elif bound != "raw":
        raise ValueError(f"unknown bound {bound!r}: expected raw, tanh or norm")
    return torch.cat([z[..., :k], own], dim=-1)


def shapes_captions() -> list[str]:
    """Every caption ``shapes`` can draw (5040: shape x colour x size x position x count x background)."""
    import itertools

    from polytok.data.shapes import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES, SIZES, caption_for

    keys = ("shape", "colour", "size", "position", "count", "background")
    ranges = [range(len(x)) for x in (SHAPES, COLOURS, SIZES, POSITIONS, COUNTS, BACKGROUNDS)]
    return [caption_for(dict(zip(keys, v, strict=True))) for v in itertools.product(*ranges)]


def whiten_caption_features(tok: Tokenizer, captions: list[str] | None = None, eps: float = 1e-3) -> None:
    """Make the frozen text tower's features white over every ``shapes`` caption (mean 0, covariance I):
    captions that differ in the shape word only lie close together in the sentence encoder's space, and
    whitening gives each attribute's direction the same scale before the trainable projection."""
    captions = captions if captions is not None else shapes_captions()
    tower = tok.text_tower
    feats = torch.cat([tower._frozen_features(captions[i : i + 512]) for i in range(0, len(captions), 512)])
    mean = feats.mean(0)
    cov = torch.cov((feats - mean).T.double())
    values, vectors = torch.linalg.eigh(cov)
    whitening = (vectors @ torch.diag((values.clamp(min=0) + eps).rsqrt()) @ vectors.T).float()
    plain = tower._frozen_features
    tower._frozen_features = lambda texts: (plain(texts) - mean) @ whitening


def _probe(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> float:
    """Top-1 of logistic regression (scikit-learn defaults, C = 1) on features standardised by ``train``."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train[0].mean(0), train[0].std(0) + 1e-6
    fit = LogisticRegression(max_iter=2000).fit(((train[0] - mean) / std).numpy(), train[1].numpy())
    return float(fit.score(((test[0] - mean) / std).numpy(), test[1].numpy()))


def run(
    objective: str = "ce",
    quantize: bool = False,
    bound: str = "raw",
    train_codebooks: bool = False,
    steps: int = 600,
    every: int = 100,
    channels: int = 8,
    seed: int = 0,
    probe_images: tuple[int, int] = (1024, 512),
    whiten_text: bool = False,
    lr: float = 1e-3,
    model_overrides: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Train unitok-tiny's semantic path as the module docstring says, batches of 32 at 64 px; returns one
    record per probe (step, loss, val, heldout)."""
    torch.manual_seed(seed)
    base = {"semantic_channels": channels, "semantic": {"head_input": "codes"}}
    tok = Tokenizer.from_preset("unitok-tiny", **apply_overrides(base, model_overrides))
    train = ShapesDataset("train", 64, length=_TRAIN_IMAGES)
    n_train, n_test = probe_images
    val, heldout = ShapesDataset("val", 64, length=n_test), ShapesDataset("heldout", 64, length=n_test)
    classifier = nn.Linear(tok.config.quantizer.dim, 6)
    trained = [tok.encoder, tok.projection, tok.clip_head, tok.text_tower.projection]
    params = [p for m in trained for p in m.parameters()] + [tok.log_logit_scale, *classifier.parameters()]
    if train_codebooks:
        params += list(tok.quantizer.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
    tok.train()
    with torch.no_grad():  # a run's first-batch initialisation: linear path fit, k-means on bounded latents
        first = collate([train[i] for i in range(32)])["image"]
        tok.linear_path.fit(first)
        tok.quantizer(bounded_latent(tok, first, bound))
    contrastive = ClipContrastiveLoss(learnable=False)
    choice = ClipContrastiveLoss(learnable=False, weight=0.0, choice_weight=1.0)  # the choice term alone
    if whiten_text:
        whiten_caption_features(tok)
    probe_sets = {
        "train": collate([train[i] for i in range(_PROBE_FIRST, _PROBE_FIRST + n_train)]),
        "val": collate([val[i] for i in range(n_test)]),
        "heldout": collate([heldout[i] for i in range(n_test)]),
    }

    def vectors(images: Tensor) -> tuple[Tensor, Tensor]:
        z = bounded_latent(tok, images, bound)
        if not quantize:
            return z, z.new_zeros(())
        q = tok.quantizer(z)
        return q.quantized, q.loss

    def probe() -> tuple[float, float]:
        with torch.no_grad():
            feats = {
                s: (vectors(b["image"])[0].mean(1), b["attributes"]["shape"]) for s, b in probe_sets.items()
            }
        return _probe(feats["train"], feats["val"]), _probe(feats["train"], feats["heldout"])

    records, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        batch = collate([train[i] for i in range(step * 32, step * 32 + 32)])
        v, quant_loss = vectors(batch["image"])
        if objective == "ce":
            loss = F.cross_entropy(classifier(v.mean(1)), batch["attributes"]["shape"])
        elif objective == "clip":
            negatives, mask = tok._encode_negatives(batch["negative_captions"])
            loss = contrastive(
                tok.clip_head(v), tok.encode_text(batch["caption"]), tok.logit_scale, negatives, mask
            ).loss
        elif objective == "choice":
            negatives, mask = tok._encode_negatives(batch["negative_captions"])
            loss = choice(
                tok.clip_head(v), tok.encode_text(batch["caption"]), tok.logit_scale, negatives, mask
            ).loss
        else:
            raise ValueError(f"unknown objective {objective!r}: expected ce, clip or choice")
        loss = loss + quant_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            val_top1, heldout_top1 = probe()
            value, seconds = float(loss.detach()), time.perf_counter() - start
            records.append({"step": step, "loss": value, "val": val_top1, "heldout": heldout_top1})
            print(f"{step} loss {value:.3f} probe {val_top1:.3f} / {heldout_top1:.3f} ({seconds:.0f} s)")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objective", choices=("ce", "clip", "choice"), default="ce")
    parser.add_argument("--quantize", action="store_true")
    parser.add_argument("--bound", choices=("raw", "tanh", "norm"), default="raw")
    parser.add_argument("--train-codebooks", action="store_true", help="codebooks in the optimiser too")
    parser.add_argument("--whiten-text", action="store_true", help="whitened caption features (clip)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's learning rate (constant)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run(
        args.objective,
        args.quantize,
        args.bound,
        args.train_codebooks,
        args.steps,
        args.every,
        args.channels,
        args.seed,
        whiten_text=args.whiten_text,
        lr=args.lr,
        model_overrides=tuple(args.set),
    )


if __name__ == "__main__":
    main()
