"""Zero-shot classification and the linear probe on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polytok.eval import ZeroShotClassifier, build_class_embeddings, linear_probe, zero_shot_logits

NUM_CLASSES, DIM = 10, 32
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "art of the {}."]


def orthonormal_centres(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen, dtype=torch.float64))
    return q[:NUM_CLASSES].float()  # (10, 32) unit rows, mutually orthogonal


def text_encoder(centres: torch.Tensor):
    """Each prompt embeds to its class centre plus a template-specific offset that cancels over templates."""
    gen = torch.Generator().manual_seed(1)
    offsets = torch.randn(len(TEMPLATES), DIM, generator=gen) * 0.3
    offsets -= offsets.mean(dim=0)
    calls: list[list[str]] = []

    def encode_text(prompts: list[str]) -> torch.Tensor:
        calls.append(list(prompts))
        rows = []
        for prompt in prompts:
            template = next(i for i, t in enumerate(TEMPLATES) if prompt.startswith(t.split("{}")[0]))
            name = prompt[len(TEMPLATES[template].split("{}")[0]) :].split(" ")[0].rstrip(".")
            rows.append(2.0 * centres[CLASS_NAMES.index(name)] + offsets[template])
        return torch.stack(rows)

    return encode_text, calls


def test_class_embeddings_average_normalised_prompts() -> None:
    centres = orthonormal_centres()
    encode_text, calls = text_encoder(centres)
    class_emb = build_class_embeddings(encode_text, CLASS_NAMES, TEMPLATES)
    assert class_emb.shape == (NUM_CLASSES, DIM)
    # Hand computation: normalise each prompt's embedding, average per class, normalise again.
    text = encode_text([t.format(c) for c in CLASS_NAMES for t in TEMPLATES])
    manual = torch.stack(
        [F.normalize(F.normalize(text[i * 3 : i * 3 + 3], dim=-1).mean(0), dim=0) for i in range(NUM_CLASSES)]
    )
    assert torch.allclose(class_emb, manual, atol=1e-6)
    assert len(calls[0]) == NUM_CLASSES * len(TEMPLATES)
    with pytest.raises(ValueError, match="placeholder"):
        build_class_embeddings(encode_text, CLASS_NAMES, ["no slot"])


def test_zero_shot_accuracy_on_clustered_embeddings() -> None:
    centres = orthonormal_centres()
    encode_text, _ = text_encoder(centres)
    gen = torch.Generator().manual_seed(2)
    images, labels = [], []
    for c in range(NUM_CLASSES):
        nxt, opposite = (c + 1) % NUM_CLASSES, (c + 2) % NUM_CLASSES
        for i in range(20):
            noise = 0.05 * torch.randn(DIM, generator=gen)
            if i < 15:  # clean: nearest centre is the label
                images.append(centres[c] + noise)
                labels.append(c)
            elif i < 18:  # between c and its neighbour, labelled the neighbour: top-1 miss, top-2 hit
                images.append(0.8 * centres[c] + 0.6 * centres[nxt] + noise)
                labels.append(nxt)
            else:  # pointing away from its label: that class ranks last, top-5 miss
                images.append(centres[c] - centres[opposite] + noise)
                labels.append(opposite)
    images_t, labels_t = torch.stack(images) * 3.0, torch.tensor(labels)  # scale: normalisation is inside

    zs = ZeroShotClassifier(encode_text, CLASS_NAMES, TEMPLATES, protocol={"dataset": "synthetic"})
    perm = torch.randperm(len(labels), generator=gen)
    for start in range(0, len(labels), 33):
        idx = perm[start : start + 33]
        zs.update(images_t[idx], labels_t[idx])
    result = zs.compute()
    assert result["top1"].value == pytest.approx(15 / 20)
    assert result["top5"].value == pytest.approx(18 / 20)
    assert result["top1"].protocol["num_images"] == 200
    assert result["top1"].protocol["num_templates"] == 3

    # Independent check of the top-1 figure: argmax of cosine computed with numpy.
    cos = (F.normalize(images_t, dim=-1) @ zs.class_embeddings.T).numpy()
    assert (cos.argmax(1) == labels_t.numpy()).mean() == pytest.approx(result["top1"].value)
    with pytest.raises(ValueError, match=r"\(B, 32\)"):
        zero_shot_logits(torch.zeros(2, 5), zs.class_embeddings)
    with pytest.raises(ValueError, match="labels must lie"):
        zs.update(images_t[:2], torch.tensor([0, 99]))


def test_linear_probe_separable_and_random_labels() -> None:
    rng = np.random.default_rng(0)
    n, dim, classes = 240, 20, 4
    y = rng.permutation(np.arange(n) % classes)
    x = rng.uniform(-1, 1, size=(n, dim))
    x[:, :classes] += 4.0 * np.eye(classes)[y]  # separable with a margin along the first 4 axes
    result = linear_probe(x[::2], y[::2], x[1::2], y[1::2])
    assert result["top1"].value == 1.0
    assert result["top1"].protocol["num_train"] == 120
    assert result["top1"].protocol["C"] in (0.01, 0.1, 1.0, 10.0)

    # Labels independent of the features: the probe cannot beat chance by much on held-out data.
    y_random = rng.integers(0, classes, size=n)
    chance = linear_probe(torch.from_numpy(x[::2]), torch.from_numpy(y_random[::2]), x[1::2], y_random[1::2])
    assert chance["top1"].value < 0.45
    assert chance["train_top1"].value > chance["top1"].value

    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x[:10], np.zeros(10), x[10:20], np.zeros(10))
    with pytest.raises(ValueError, match="train and test images"):
        linear_probe(x[:10], y[:10], x[:0], y[:0])
    with pytest.raises(ValueError, match="dims differ"):
        linear_probe(x[:10], y[:10], x[10:20, :5], y[10:20])
