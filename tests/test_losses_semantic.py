"""CLIP contrastive loss (single process and real 2-rank gloo DDP) and feature distillation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from polytok.losses import ClipContrastiveLoss, FeatureDistillationLoss, cosine_distance, fold_cosine_distance


def _naive_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: float) -> tuple[float, float]:
    """Symmetric InfoNCE by explicit loops over rows (embeddings normalised first)."""
    img = [[float(v) for v in row] for row in F.normalize(images, dim=-1).tolist()]
    txt = [[float(v) for v in row] for row in F.normalize(texts, dim=-1).tolist()]
    n = len(img)

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def row_ce(queries, keys, i):
        logits = [scale * dot(queries[i], keys[j]) for j in range(n)]
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
        return log_sum - logits[i]

    i2t = sum(row_ce(img, txt, i) for i in range(n)) / n
    t2i = sum(row_ce(txt, img, i) for i in range(n)) / n
    return i2t, t2i


def test_clip_loss_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    images, texts = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    loss = ClipContrastiveLoss(weight=2.0)
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    out = loss(images, texts)
    i2t, t2i = _naive_clip_loss(images, texts, 1 / 0.07)
    assert float(out.terms["image_to_text"]) == pytest.approx(i2t, rel=1e-5)
    assert float(out.terms["text_to_image"]) == pytest.approx(t2i, rel=1e-5)
    assert out.loss.item() == pytest.approx(2.0 * 0.5 * (i2t + t2i), rel=1e-5)
    assert float(out.terms["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)
    out.loss.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0


def test_clip_logit_scale_clamped_at_100():
    loss = ClipContrastiveLoss()
    with torch.no_grad():
        loss.logit_scale.fill_(8.0)  # exp(8) ~ 2981 > 100
    gen = torch.Generator().manual_seed(1)
    images, texts = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    out = loss(images, texts)
    assert float(out.terms["logit_scale"]) == pytest.approx(100.0, rel=1e-5)
    i2t, t2i = _naive_clip_loss(images, texts, 100.0)
    assert out.loss.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-5)
    out.loss.backward()
    assert float(loss.logit_scale.grad) == 0.0  # beyond the clamp the scale no longer moves


def test_clip_accuracy_and_bad_input():
    base = torch.eye(4)
    out = ClipContrastiveLoss()(base, base + 0.01)
    assert float(out.terms["accuracy"]) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        ClipContrastiveLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="exceeds"):
        ClipContrastiveLoss(init_logit_scale=6.0)
    frozen = ClipContrastiveLoss(learnable=False)
    assert not any(True for _ in frozen.parameters())


# --- real 2-process DDP --------------------------------------------------------------------------------


class _TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(6, 4)
        self.text_proj = nn.Linear(5, 4)
        self.clip = ClipContrastiveLoss()

    def forward(self, images, texts):
        return self.clip(self.image_proj(images), self.text_proj(texts))


def _data():
    gen = torch.Generator().manual_seed(42)
    return torch.randn(8, 6, generator=gen), torch.randn(8, 5, generator=gen)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(_TwoTower())
        images, texts = _data()
        rows = slice(rank * 4, (rank + 1) * 4)
        out = model(images[rows], texts[rows])
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        mismatch = ""
        try:  # unequal local batches must raise the same clear error on every rank
            model.module.clip(torch.randn(3 + rank, 4), torch.randn(3 + rank, 4))
        except ValueError as error:
            mismatch = str(error)
        torch.save(
            {"loss": out.loss.detach(), "grads": grads, "mismatch": mismatch}, f"{out_dir}/rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_clip_loss_two_rank_gloo_matches_full_batch(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    torch.manual_seed(0)
    single = _TwoTower()
    images, texts = _data()
    full = single(images, texts)
    full.loss.backward()
    # Each rank's local loss averages to the full-batch loss; DDP's averaged gradients equal the full ones.
    mean_loss = sum(float(r["loss"]) for r in results) / world
    assert mean_loss == pytest.approx(full.loss.item(), rel=1e-5)
    for name, param in single.named_parameters():
        torch.testing.assert_close(results[0]["grads"][name], param.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(results[1]["grads"][name], param.grad, atol=1e-6, rtol=1e-5)
    assert all("same local batch size" in r["mismatch"] for r in results)


# --- distillation ------------------------------------------------------------------------------------


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _hand_distill(student: torch.Tensor, teacher: torch.Tensor, folds: int) -> tuple[float, float]:
    s_rows = student.reshape(-1, student.shape[-1]).tolist()
    t_rows = teacher.reshape(-1, teacher.shape[-1]).tolist()
    token = sum(1 - _cos(s, t) for s, t in zip(s_rows, t_rows)) / len(s_rows)
    width = len(s_rows[0]) // folds
    chunks = [
        1 - _cos(s[k * width : (k + 1) * width], t[k * width : (k + 1) * width])
        for s, t in zip(s_rows, t_rows)
        for k in range(folds)
    ]
    return token, sum(chunks) / len(chunks)


def test_distillation_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 8, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 5, 8, generator=gen)
    token, fold = _hand_distill(student.detach(), teacher, folds=4)
    out = FeatureDistillationLoss(8, num_folds=4, token_weight=0.7, fold_weight=1.5, weight=2.0)(
        student, teacher
    )
    assert float(out.terms["cosine"]) == pytest.approx(token, rel=1e-5)
    assert float(out.terms["fold"]) == pytest.approx(fold, rel=1e-5)
    assert out.loss.item() == pytest.approx(2.0 * (0.7 * token + 1.5 * fold), rel=1e-5)
    out.loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert float(cosine_distance(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(fold_cosine_distance(teacher, 3 * teacher, 2)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_teacher_map_and_resize():
    gen = torch.Generator().manual_seed(1)
    teacher_map = torch.randn(2, 8, 4, 4, generator=gen)  # (B, C, h, w)
    student = torch.randn(2, 16, 8, generator=gen)  # (B, N, C)
    loss = FeatureDistillationLoss(8, num_folds=2)
    tokens = teacher_map.permute(0, 2, 3, 1).reshape(2, 16, 8)  # row-major grid -> tokens
    token, fold = _hand_distill(student, tokens, folds=2)
    assert loss(student, teacher_map).loss.item() == pytest.approx(token + fold, rel=1e-5)
    # An 8x8 teacher map against a 4x4 student grid: bilinear halving is the 2x2 block mean.
    big = torch.randn(2, 8, 8, 8, generator=gen)
    pooled = F.avg_pool2d(big, 2).permute(0, 2, 3, 1).reshape(2, 16, 8)
    token, fold = _hand_distill(student, pooled, folds=2)
    assert loss(student, big).loss.item() == pytest.approx(token + fold, rel=1e-5)
    with pytest.raises(ValueError, match="resampling"):
        FeatureDistillationLoss(8, num_folds=2, resize_teacher=False)(student, big)


def test_distillation_linear_adapter_when_dims_differ():
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(2, 3, 6, generator=gen)
    teacher = torch.randn(2, 3, 8, generator=gen)
    with pytest.raises(ValueError, match="adapter='linear'"):
        FeatureDistillationLoss(6, 8)
    loss = FeatureDistillationLoss(6, 8, num_folds=4, adapter="linear")
    projected = student @ loss.adapter.weight.detach().t() + loss.adapter.bias.detach()
    token, fold = _hand_distill(projected, teacher, folds=4)
    out = loss(student, teacher)
    assert out.loss.item() == pytest.approx(token + fold, rel=1e-5)
    out.loss.backward()
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0


def test_distillation_rejects_bad_input_and_evotok_preset():
    with pytest.raises(ValueError, match="num_folds"):
        FeatureDistillationLoss(10, num_folds=4)
    with pytest.raises(ValueError, match="channels"):
        FeatureDistillationLoss(8, num_folds=2)(torch.randn(1, 4, 6), torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="tokens or"):
        FeatureDistillationLoss(8, num_folds=2)(torch.randn(4, 8), torch.randn(4, 8))
    preset = FeatureDistillationLoss.evotok()
    assert (preset.teacher_dim, preset.num_folds, preset.token_weight, preset.fold_weight) == (
        1024,
        4,
        1.0,
        1.0,
    )
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(1, 4, 1024, generator=gen), torch.randn(1, 4, 1024, generator=gen)
    token, fold = _hand_distill(s, t, folds=4)
    assert preset(s, t).loss.item() == pytest.approx(token + fold, rel=1e-4)


def test_contrastive_external_logit_scale_matches_own_scale() -> None:
    torch.manual_seed(0)
    img, txt = torch.randn(6, 16), torch.randn(6, 16)
    own = ClipContrastiveLoss(init_logit_scale=math.log(20.0), gather=False)
    external = ClipContrastiveLoss(gather=False)
    scale = torch.tensor(20.0, requires_grad=True)
    out = external(img, txt, logit_scale=scale)
    assert torch.allclose(out.loss, own(img, txt).loss, atol=1e-6)
    out.loss.backward()
    assert scale.grad is not None and scale.grad != 0


def test_clip_hard_negatives_match_naive_loop() -> None:
    """Each image's own negatives join its image-to-text row as extra wrong columns; masked ones do not
    count; text-to-image is unchanged (naive loops over rows as reference)."""
    gen = torch.Generator().manual_seed(3)
    images, texts = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    negatives = torch.randn(4, 3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    scale = 1 / 0.07
    out = ClipContrastiveLoss()(images, texts, negatives=negatives, negative_mask=mask)

    img = F.normalize(images, dim=-1).double()
    txt = F.normalize(texts, dim=-1).double()
    neg = F.normalize(negatives, dim=-1).double()
    i2t, beaten = 0.0, 0
    for i in range(4):
        logits = [scale * float(img[i] @ txt[j]) for j in range(4)]
        logits += [scale * float(img[i] @ neg[i, k]) for k in range(3) if mask[i, k]]
        top = max(logits)
        i2t += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[i]
        beaten += all(v < logits[i] for v in logits[4:])
    _, t2i = _naive_clip_loss(images, texts, scale)
    assert float(out.terms["image_to_text"]) == pytest.approx(i2t / 4, rel=1e-5)
    assert float(out.terms["text_to_image"]) == pytest.approx(t2i, rel=1e-5)
    assert float(out.terms["negative_accuracy"]) == pytest.approx(beaten / 4)
    plain = ClipContrastiveLoss()(images, texts)
    assert float(out.terms["image_to_text"]) > float(plain.terms["image_to_text"])  # negatives only add
    with pytest.raises(ValueError, match="negatives"):
        ClipContrastiveLoss()(images, texts, negatives=negatives[:, :, :4])
    with pytest.raises(ValueError, match="negative_mask"):
        ClipContrastiveLoss()(images, texts, negatives=negatives, negative_mask=mask[:, :2])


def test_caption_choice_matches_naive_loop() -> None:
    """The choice term: each image's caption against its own (unmasked) negatives only, no other image's
    caption; images without negatives leave the mean; the loss is weight * contrastive + choice_weight *
    choice (naive float64 loop as reference)."""
    gen = torch.Generator().manual_seed(4)
    images, texts = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    negatives = torch.randn(4, 3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    scale = 1 / 0.07
    out = ClipContrastiveLoss(weight=0.1, choice_weight=2.0)(
        images, texts, negatives=negatives, negative_mask=mask
    )

    img = F.normalize(images, dim=-1).double()
    txt = F.normalize(texts, dim=-1).double()
    neg = F.normalize(negatives, dim=-1).double()
    choices = []
    for i in range(4):
        others = [scale * float(img[i] @ neg[i, k]) for k in range(3) if mask[i, k]]
        if not others:
            continue
        logits = [scale * float(img[i] @ txt[i]), *others]
        top = max(logits)
        choices.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[0])
    choice = sum(choices) / len(choices)
    assert len(choices) == 3
    assert float(out.terms["choice"]) == pytest.approx(choice, rel=1e-5)
    expected = 0.1 * float(out.terms["contrastive"]) + 2.0 * choice
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    none = torch.zeros(4, 3, dtype=torch.bool)  # no image has a negative: the term is 0 and still backprops
    empty = ClipContrastiveLoss(weight=0.0, choice_weight=1.0)(
        images.requires_grad_(), texts, negatives=negatives, negative_mask=none
    )
    assert float(empty.terms["choice"]) == 0.0
    empty.loss.backward()
    with pytest.raises(ValueError, match="negative captions"):
        ClipContrastiveLoss(choice_weight=1.0)(images, texts)


def test_caption_choice_config_needs_negatives_and_keeps_the_branch_trainable() -> None:
    """``loss.caption_choice`` without ``caption_negatives`` is refused; with it, a semantic weight of 0
    still trains the semantic branch (only both weights at 0 freeze it)."""
    from polytok.models.tokenizer import Tokenizer
    from polytok.recipes.tokenizer_objective import LossConfig, TokenizerObjective

    with pytest.raises(ValueError, match="caption_negatives"):
        LossConfig(caption_choice=1.0)
    with pytest.raises(ValueError, match="caption_choice"):
        LossConfig(caption_choice=-1.0, caption_negatives=True)
    tok = Tokenizer.from_preset("unitok-tiny", semantic={"text_tower": {"kind": "transformer"}})
    TokenizerObjective(tok, LossConfig(semantic=0.0, caption_choice=1.0, caption_negatives=True), 10)
    assert tok.clip_head is not None and all(p.requires_grad for p in tok.clip_head.parameters())
    TokenizerObjective(tok, LossConfig(semantic=0.0, caption_choice=0.0), 10)
    assert not any(p.requires_grad for p in tok.clip_head.parameters())
    evotok = Tokenizer.from_preset("evotok-tiny")
    with pytest.raises(ValueError, match="contrastive"):
        TokenizerObjective(evotok, LossConfig(caption_choice=1.0, caption_negatives=True), 10)
