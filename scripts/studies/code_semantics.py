"""Semantics in the codes: does a tokenizer's semantic loss shape its discrete codes?

For one run config this trains (a) the tokenizer, (b) its semantics-free twin (``loss.semantic=0``, the
same seed, steps and data), and builds (c) the untrained start, then measures all three the same way:

    python scripts/studies/code_semantics.py configs/unitok-tiny.yaml --steps 300 --seed 0 --out runs/sem
    python scripts/studies/code_semantics.py configs/evotok-tiny.yaml --steps 300 --set loss.semantic=1.0

- **code probe**: a linear probe (``polytok.eval.metrics.linear_probe``: logistic regression on
  standardised features) on the code vectors averaged over positions (``Tokenizer.code_embedding``),
  trained on the codes of ``shapes`` ``train`` images to name their shape, tested on ``val`` images (the
  same (shape, colour) pairs, other images) and on ``heldout`` images (the held-out pairs). Residual
  tokenizers are probed at every prefix depth. Chance is 1/6.
- **references** beside it, from the pixels themselves: the mean colour (3 values) and the mean 4 x 4 patch
  (48 values: everything a position-averaged *linear* patch code can carry, so the bound of a linear
  path's codes under this probe); for distillation configs also the teacher's features averaged over
  positions (what the semantic target itself carries).
- **semantic probe**: the same probe on the semantic branch's own embedding (``semantic_features``,
  full depth): whether the semantic objective learnt the shape at all, wherever it keeps it.
- **PSNR** on held-out photo crops (``photos`` ``val``), decoded from the pixel prefix.
- the **gates** of the linear path (encoder path, pixel decoder), where the tokenizer has them.

The untrained start is the tokenizer built with the run's seed after one training-mode forward, without
gradient or optimiser step, on ``train.batch_size`` images of the run's training data: exactly the
first-batch initialisation of a training run (the linear path's principal components, k-means codebooks;
EMA codebooks also take that batch's update, as the first training step does). It is what training starts
from, so a probe above it is something training put in the codes.

``--set key=value`` applies dotted run-config overrides to the tokenizer and its twin (a design under
test); the twin then also gets ``loss.semantic=0``. Results: ``<out>/code_semantics.json`` and a Markdown
table ``<out>/code_semantics.md``; the table is printed too.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polytok.data import build_dataset, collate
from polytok.data.shapes import PROMPT_TEMPLATES, TASK_CLASSES, task_label
from polytok.eval.metrics.linear_probe import linear_probe
from polytok.eval.metrics.pixel import psnr_per_image
from polytok.eval.metrics.zero_shot import ZeroShotClassifier
from polytok.losses import ClipContrastiveLoss, FeatureDistillationLoss
from polytok.models.levels import code_prefix
from polytok.recipes.sections import build_training_dataset
from polytok.recipes.tokenizer_objective import semantic_branch
from polytok.recipes.tokenizer_run import build_tokenizer, load_run_config, train_tokenizer
from polytok.train.schedule import lr_multiplier

CHANCE = 1.0 / 6.0  # six shapes


class ProbeImages:
    """Images and shape labels of the probe's three ``shapes`` splits, and held-out photo crops."""

    def __init__(
        self,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        heldout: tuple[Tensor, Tensor],
        photos: Tensor,
        objects: dict[str, Tensor] | None = None,
    ) -> None:
        self.train, self.val, self.heldout, self.photos = train, val, heldout, photos
        # per split, the (shape, colour) pair's class of the ``object`` task (shape * 7 + colour)
        self.objects = objects or {}

    @classmethod
    def build(
        cls, image_size: int = 64, train: int = 2048, val: int = 512, heldout: int = 512, photos: int = 256
    ) -> ProbeImages:
        objects = {}

        def split(name: str, count: int) -> tuple[Tensor, Tensor]:
            data = build_dataset("shapes", split=name, image_size=image_size, length=count)
            items = [data[i] for i in range(count)]
            objects[name] = torch.tensor([task_label(it["attributes"], "object") for it in items])
            return torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])

        crops = build_dataset("photos", split="val", image_size=image_size, length=photos)
        return cls(
            split("train", train),
            split("val", val),
            split("heldout", heldout),
            torch.stack([crops[i]["image"] for i in range(photos)]),
            objects,
        )


def _in_batches(fn, images: Tensor, batch: int = 128) -> Tensor:
    return torch.cat([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


def _probe(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> float:
    return float(linear_probe(train[0], train[1], test[0], test[1])["top1"].value)


@torch.no_grad()
def measure(tokenizer: Any, images: ProbeImages, name: str, steps: int) -> dict[str, Any]:
    """Probe, PSNR and gates of one tokenizer (in eval mode while measured): ``probe_val`` and
    ``probe_heldout`` hold the top-1 per prefix depth (1..L)."""
    was = tokenizer.training
    tokenizer.eval()
    try:
        codes = {s: _in_batches(tokenizer.encode, getattr(images, s)[0]) for s in ("train", "val", "heldout")}
        levels = tokenizer.num_levels
        val, heldout = {}, {}
        for depth in range(1, levels + 1):
            feats = {
                s: tokenizer.code_embedding(code_prefix(c, depth, tokenizer.code_shape, levels)).float()
                for s, c in codes.items()
            }
            train = (feats["train"], images.train[1])
            val[depth] = _probe(train, (feats["val"], images.val[1]))
            heldout[depth] = _probe(train, (feats["heldout"], images.heldout[1]))
        semantic = {"val": None, "heldout": None}
        if tokenizer.semantic_kind != "none":
            feats = {s: _in_batches(tokenizer.semantic_features, c) for s, c in codes.items()}
            train = (feats["train"], images.train[1])
            for s in semantic:
                semantic[s] = _probe(train, (feats[s], getattr(images, s)[1]))
        zero_shot = {"val": None, "heldout": None}
        if tokenizer.semantic_kind == "contrastive" and images.objects:
            zero_shot = zero_shot_objects(tokenizer, {s: feats[s] for s in zero_shot}, images.objects)
        recon = _in_batches(lambda x: tokenizer.decode(tokenizer.encode(x)), images.photos)
        psnr = float(psnr_per_image(recon, images.photos).mean())
        gates = getattr(tokenizer, "linear_path_gates", None)
        return {
            "name": name,
            "steps": steps,
            "probe_val": val,
            "probe_heldout": heldout,
            "semantic_probe_val": semantic["val"],
            "semantic_probe_heldout": semantic["heldout"],
            "zero_shot_val": zero_shot["val"],
            "zero_shot_heldout": zero_shot["heldout"],
            "psnr_photos": psnr,
            "gates": [float(g) for g in gates] if gates is not None else None,
            "pixel_depth": int(tokenizer.pixel_depth),
        }
    finally:
        tokenizer.train(was)


def zero_shot_objects(tokenizer: Any, embeddings: dict[str, Tensor], objects: dict[str, Tensor]) -> dict:
    """Per split, zero-shot top-1 of naming the (colour, shape) pair among all 42 (``shapes``' ``object``
    prompts) from the semantic embeddings (B, E): on held-out pairs a colour-only model scores 1/6."""
    classifier = ZeroShotClassifier(tokenizer.encode_text, TASK_CLASSES["object"], PROMPT_TEMPLATES["object"])
    top1 = {}
    for split, embedding in embeddings.items():
        classifier.reset()
        classifier.update(embedding, objects[split])
        top1[split] = float(classifier.compute()["top1"].value)
    return top1


def pixel_references(images: ProbeImages, stride: int = 4) -> dict[str, tuple[float, float]]:
    """(val, held-out) probe top-1 of the mean colour and of the mean ``stride`` x ``stride`` patch."""

    def mean_patch(x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c, h // stride, stride, w // stride, stride).mean(dim=(2, 4)).flatten(1)

    out = {}
    for label, fn in (("mean colour (3)", lambda x: x.mean(dim=(2, 3))), ("mean 4x4 patch (48)", mean_patch)):
        train = (fn(images.train[0]), images.train[1])
        out[label] = (
            _probe(train, (fn(images.val[0]), images.val[1])),
            _probe(train, (fn(images.heldout[0]), images.heldout[1])),
        )
    return out


@torch.no_grad()
def teacher_reference(tokenizer: Any, images: ProbeImages) -> tuple[float, float]:
    """(val, held-out) probe top-1 of the distillation teacher's features averaged over positions: what
    the semantic target itself carries under this probe."""

    def pooled(x: Tensor) -> Tensor:
        return tokenizer.teacher_features(
            x, (x.shape[-2] // tokenizer.stride, x.shape[-1] // tokenizer.stride)
        )

    feats = {
        s: _in_batches(lambda x: pooled(x).mean(1), getattr(images, s)[0])
        for s in ("train", "val", "heldout")
    }
    train = (feats["train"], images.train[1])
    return _probe(train, (feats["val"], images.val[1])), _probe(train, (feats["heldout"], images.heldout[1]))


def semantic_parameters(tokenizer: Any) -> list[Tensor]:
    """What the semantic loss alone trains (``semantic_branch``), less a frozen pretrained text encoder:
    of such a tower only its projection trains."""
    tower = getattr(tokenizer, "text_tower", None)
    frozen = set(map(id, tower.encoder.parameters())) if getattr(tower, "frozen", False) else set()
    params = []
    for part in semantic_branch(tokenizer):
        params += [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
    return [p for p in params if id(p) not in frozen]


def head_on_frozen_codes(tokenizer: Any, config: Any, steps: int) -> Any:
    """A copy of ``tokenizer`` (the twin) whose semantic branch alone is trained on its frozen codes with
    the run's semantic loss (``config``: the tokenizer's run config), the run's optimiser settings, batch
    size, seed and number of steps: the twin with the same head training as the tokenizer had, so a
    head cannot take the credit for what only the codes of the tokenizer hold."""
    tok = copy.deepcopy(tokenizer).eval()
    tok.requires_grad_(False)
    params = semantic_parameters(tok)
    for p in params:
        p.requires_grad_(True)
    opt = config.train.optim
    optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)
    loss_cfg = config.loss
    contrastive = ClipContrastiveLoss(
        learnable=False, weight=loss_cfg.semantic, choice_weight=loss_cfg.caption_choice
    )
    distill = None
    if tok.semantic_kind == "distill":
        dim = tok.config.semantic.feature_dim
        distill = FeatureDistillationLoss(
            dim, dim, num_folds=loss_cfg.distill_folds, fold_weight=loss_cfg.distill_fold_weight
        )
    dataset = build_training_dataset(config.data)
    g = torch.Generator().manual_seed(config.train.seed)
    batch_size = config.train.batch_size
    epochs = 1 + steps * batch_size // len(dataset)
    order = torch.cat([torch.randperm(len(dataset), generator=g) for _ in range(epochs)])
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = opt.lr * lr_multiplier(step, steps, opt.warmup_steps, opt.min_lr_ratio)
        batch = collate([dataset[int(i)] for i in order[step * batch_size : (step + 1) * batch_size]])
        with torch.no_grad():
            codes = tok.encode(batch["image"])
            flat, grid = tok._flatten_codes(codes)
            vectors = tok.quantizer.indices_to_codes(flat)
        embedding, tokens = tok._semantic(vectors, grid)
        if distill is not None:
            with torch.no_grad():
                teacher = tok.teacher_features(batch["image"], grid)
            loss = distill(tokens, teacher).loss
        else:
            negatives = batch.get("negative_captions") if loss_cfg.caption_negatives else None
            neg, mask = tok._encode_negatives(negatives) if negatives is not None else (None, None)
            out = contrastive(
                embedding,
                tok.encode_text(batch["caption"]),
                tok.logit_scale,
                negatives=neg,
                negative_mask=mask,
            )
            loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.train.grad_clip or float("inf"))
        optimizer.step()
    return tok.eval()


def untrained_start(config: Any) -> Any:
    """The tokenizer as training starts: built with the run's seed, then one training-mode forward without
    gradient on ``train.batch_size`` training images (linear-path fit, k-means init; see the docstring)."""
    torch.manual_seed(config.train.seed)
    tokenizer = build_tokenizer(config.model)
    dataset = build_training_dataset(config.data)
    g = torch.Generator().manual_seed(config.train.seed)
    order = torch.randperm(len(dataset), generator=g)[: config.train.batch_size].tolist()
    batch = collate([dataset[i] for i in order])
    tokenizer.train()
    with torch.no_grad():
        tokenizer(batch["image"])
    return tokenizer.eval()


def run_configs(config_path: str | Path, overrides: list[str], steps: int, seed: int, out: Path):
    """(tokenizer config, twin config): the run config with ``overrides``, its twin with semantic 0."""
    common = [
        *overrides,
        f"train.max_steps={steps}",
        f"train.seed={seed}",
        "train.save_every=0",
        "train.progress=false",
        "train.overwrite=true",
    ]
    tok = load_run_config(config_path, [*common, f"train.out_dir={out / 'tokenizer'}"])
    twin = load_run_config(
        config_path, [*common, "loss.semantic=0", "loss.caption_choice=0", f"train.out_dir={out / 'twin'}"]
    )
    return tok, twin


def code_semantics(
    config_path: str | Path,
    *,
    steps: int,
    seed: int = 0,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    images: ProbeImages | None = None,
    which: tuple[str, ...] = ("tokenizer", "twin", "twin+head", "start"),
) -> dict[str, Any]:
    """Train and measure the tokenizer, its twin and the untrained start; returns the results dict
    (``rows``: one per tokenizer, ``references``, ``chance``) and writes ``<out>/code_semantics.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_cfg, twin_cfg = run_configs(config_path, list(overrides), steps, seed, out)
    images = images or ProbeImages.build(tok_cfg.data.image_size)
    rows = []
    references = pixel_references(images)
    twin = None
    for name in which:
        start = time.perf_counter()
        if name == "start":
            tokenizer, trained = untrained_start(tok_cfg), 0
        elif name == "twin+head":
            if twin is None:
                raise ValueError("'twin+head' needs 'twin' before it in --which")
            tokenizer, trained = head_on_frozen_codes(twin, tok_cfg, steps), steps
        else:
            tokenizer, trained = train_tokenizer(tok_cfg if name == "tokenizer" else twin_cfg), steps
            if name == "twin":
                twin = tokenizer
        row = measure(tokenizer, images, name, trained)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if tokenizer.semantic_kind == "distill" and "teacher features" not in references:
            references["teacher features"] = teacher_reference(tokenizer, images)
    result = {
        "config": str(config_path),
        "overrides": list(overrides),
        "seed": seed,
        "steps": steps,
        "chance": CHANCE,
        "images": {s: len(getattr(images, s)[0]) for s in ("train", "val", "heldout")}
        | {"photos": len(images.photos)},
        "references": references,
        "rows": rows,
    }
    (out / "code_semantics.json").write_text(json.dumps(result, indent=1))
    (out / "code_semantics.md").write_text(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: one line per tokenizer and prefix depth, then the references."""
    lines = [
        "| tokenizer | steps | depth | code probe val | code probe held-out | semantic probe val / held-out "
        "| PSNR photos | gates (enc, dec) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for row in result["rows"]:
        depths = sorted(row["probe_val"], key=int)
        for depth in depths:
            gates = ", ".join(f"{g:.4f}" for g in row["gates"]) if row["gates"] else "-"
            sem = "-"
            if depth == depths[-1] and row["semantic_probe_val"] is not None:
                sem = f"{fmt(row['semantic_probe_val'])} / {fmt(row['semantic_probe_heldout'])}"
            lines.append(
                f"| {row['name']} | {row['steps']} | {depth} | {row['probe_val'][depth]:.3f} | "
                f"{row['probe_heldout'][depth]:.3f} | {sem} | {row['psnr_photos']:.2f} | {gates} |"
            )
    lines.append(f"| chance | - | - | {result['chance']:.3f} | {result['chance']:.3f} | - | - | - |")
    for label, (val, heldout) in result["references"].items():
        lines.append(f"| reference: {label} | - | - | {val:.3f} | {heldout:.3f} | - | - | - |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="run config, e.g. configs/unitok-tiny.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/code-semantics")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config overrides")
    parser.add_argument(
        "--which",
        nargs="*",
        default=["tokenizer", "twin", "twin+head", "start"],
        help="twin+head: the twin's semantic branch trained alone on its frozen codes (after twin)",
    )
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--probe-images", type=int, default=512, help="images of each of val and heldout")
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image_size = load_run_config(args.config, args.set).data.image_size
    count = args.probe_images
    images = ProbeImages.build(image_size, args.train_images, count, count, args.photos)
    result = code_semantics(
        args.config,
        steps=args.steps,
        seed=args.seed,
        out=args.out,
        overrides=args.set,
        images=images,
        which=tuple(args.which),
    )
    print(table(result), end="")


if __name__ == "__main__":
    main()
