"""The engine on streaming data: real webdataset shards, epochs, exact resume, and torchrun with uneven
shards; plus per-epoch ``set_epoch`` on map-style datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from polytok.data import build_dataset, collate, write_shards
from polytok.train import TrainConfig, Trainer
from polytok.train.checkpoint import load_pickled, load_safetensors
from process_kill import kill_when_file_appears
from test_train_distributed import _command, _env, assert_close_dicts, final_weights, run_worker
from test_train_engine import make_config as engine_config
from train_worker_toy import ToyConfig, ToyObjective, build_model, build_shard_dataset

SAMPLES = 20  # written as shards of 8, 8 and 4 samples
IMAGE_SIZE = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    samples = [
        {
            "image": rng.integers(0, 256, (10, 10, 3), dtype=np.uint8),
            "caption": f"picture {i}",
            "label": i % 3,
        }
        for i in range(SAMPLES)
    ]
    root = tmp_path_factory.mktemp("shards")
    written = write_shards(samples, root / "shard-%06d.tar", maxcount=8, image_format="png")
    assert len(written) == 3
    return str(root / "shard-{000000..000002}.tar")


def stream_keys(pattern: str, epoch: int, seed: int, **kw) -> list[str]:
    """The sample keys one rank reads in ``epoch``, straight from the dataset (no trainer)."""
    dataset = build_dataset(pattern, split="train", image_size=IMAGE_SIZE, shuffle_buffer=8, seed=seed, **kw)
    dataset.set_epoch(epoch)
    return [sample["key"] for sample in dataset]


def batches_of(keys: list[str], size: int) -> list[list[str]]:
    return [keys[i : i + size] for i in range(0, len(keys) - size + 1, size)]


def make_config(tmp_path, **kw) -> TrainConfig:
    """The engine tests' toy config with this file's smaller batch and no TensorBoard."""
    return engine_config(tmp_path, **{"batch_size": 4, "tensorboard": False, **kw})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# single process, in-process


@pytest.mark.parametrize(("resampled", "epoch_length", "batches_per_epoch"), [(False, 0, 5), (True, 12, 3)])
def test_stream_is_trained_in_order_across_epochs(
    tmp_path, shards, resampled, epoch_length, batches_per_epoch
):
    toy = ToyConfig(shards=shards, image_size=IMAGE_SIZE, dim=3 * IMAGE_SIZE**2, resampled=resampled)
    toy.epoch_length = epoch_length
    objective = ToyObjective(toy, 0)
    seen: list[tuple[int, list[str]]] = []

    def keep(trainer, record):
        seen.append((record["epoch"], list(objective.keys)))
        objective.keys.clear()

    dataset = build_shard_dataset(toy, seed=3)
    model = build_model(toy)
    init = weights(model)
    steps = 2 * batches_per_epoch + 2
    trainer = Trainer(
        model,
        objective,
        dataset,
        make_config(tmp_path, max_steps=steps, seed=3),
        collate_fn=collate,
        callbacks=[keep],
    )
    assert trainer.sampler is None
    trainer.fit()

    extra = {"resampled": True, "epoch_length": epoch_length} if resampled else {}
    expected = []
    for epoch in range(3):
        keys = stream_keys(shards, epoch, seed=3, **extra)
        expected += [(epoch, batch) for batch in batches_of(keys, 4)]
    assert seen == expected[:steps]
    assert [e for e, _ in seen] == [s // batches_per_epoch for s in range(steps)]
    first, second = ([key for e, batch in seen if e == k for key in batch] for k in (0, 1))
    assert first != second  # set_epoch reached the dataset: another shard / sample order
    if not resampled:  # one pass over every sample per epoch
        assert sorted(first) == sorted(second) == sorted(f"{i:09d}" for i in range(SAMPLES))
    assert trainer.epoch == dataset.epoch == 2
    assert trainer.samples_in_epoch == 8
    state = load_pickled(tmp_path / "checkpoints" / f"step_{steps:08d}" / "trainer_state.pt")
    assert (state["epoch"], state["batches_in_epoch"], state["samples_in_epoch"]) == (2, 2, 8)
    final = weights(model)
    assert all(torch.isfinite(v).all() for v in final.values())
    assert any(not torch.equal(final[k], init[k]) for k in init)


def test_stream_without_a_full_batch_is_an_error(tmp_path, shards):
    toy = ToyConfig(shards=shards, image_size=IMAGE_SIZE, dim=3 * IMAGE_SIZE**2)
    trainer = Trainer(
        build_model(toy),
        ToyObjective(toy, 0),
        build_shard_dataset(toy, seed=0),
        make_config(tmp_path, batch_size=SAMPLES + 1),
        collate_fn=collate,
    )
    with pytest.raises(RuntimeError, match=r"no full batch of 21 samples .* epoch 0"):
        trainer.fit()


# ---------------------------------------------------------------------------------------------------------
# map-style datasets with set_epoch


class EpochTagged(Dataset):
    """Regression pairs whose inputs change with the epoch (like per-epoch random crops); items carry the
    epoch they were made in."""

    def __init__(self, size: int = 16, dim: int = 16) -> None:
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(size, dim, generator=g)
        self.y = torch.sin(self.x)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * self.epoch, self.y[i], torch.tensor(self.epoch)


class TagObjective(ToyObjective):
    def __init__(self) -> None:
        super().__init__(ToyConfig(), 0)
        self.tags: list[int] = []

    def generator_loss(self, model, batch, ctx):
        x, y, tag = batch
        assert len(set(tag.tolist())) == 1
        self.tags.append(int(tag[0]))
        return super().generator_loss(model, (x, y), ctx)


def _tagged_run(out_dir: Path, steps: int, resume: bool = False) -> tuple[Trainer, TagObjective]:
    objective = TagObjective()
    config = make_config(out_dir, max_steps=steps, save_every=5, keep_last=0, resume=resume)
    trainer = Trainer(build_model(ToyConfig()), objective, EpochTagged(), config)
    trainer.fit()
    return trainer, objective


def test_map_style_set_epoch_each_epoch_and_on_resume(tmp_path):
    full, full_objective = _tagged_run(tmp_path / "full", 10)
    assert full_objective.tags == [s // 4 for s in range(10)]  # 16 samples / batch 4: 4 steps per epoch
    # continue from step 5 (epoch 1): the dataset must be told epoch 1 again, with the sampler position
    shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000010")
    resumed, resumed_objective = _tagged_run(tmp_path / "resumed", 10, resume=True)
    assert resumed.resumed_from.name == "step_00000005"
    assert resumed_objective.tags == full_objective.tags[5:]
    for key, value in weights(full.raw_model).items():
        assert torch.equal(weights(resumed.raw_model)[key], value), key


# ---------------------------------------------------------------------------------------------------------
# subprocesses: SIGKILL + resume, torchrun


def _stream_overrides(pattern: str, num_workers: int) -> list[str]:
    return [
        "train.max_steps=12",
        "train.save_every=4",
        "train.batch_size=4",
        "train.precision=fp32",
        "train.ema_decay=0.9",
        "train.optim.warmup_steps=2",
        "train.seed=5",
        "train.tensorboard=false",
        f"train.num_workers={num_workers}",
        "toy.dropout=0.1",
        "toy.noise=0.05",  # model-side draws from the same process RNG as the crops (without workers)
        f"toy.shards={pattern}",
        "toy.record_keys=true",
    ]


def _steps(out_dir: Path, rank: int = 0) -> list[dict]:
    return json.loads((out_dir / f"keys_rank{rank}.json").read_text())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_sigkill_then_resume_is_bit_identical(tmp_path, shards, num_workers):
    """Step 8 lies inside epoch 1 (5 batches per epoch): the resumed run re-reads epoch 1, drops its first
    3 batches and must then see the same samples, crops and noise as the uninterrupted run."""
    overrides = _stream_overrides(shards, num_workers)
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    run_worker(1, full_dir, overrides)

    cmd = _command(1, [f"train.out_dir={killed_dir}", *overrides, "toy.sleep_after_step=8", "toy.sleep_s=60"])
    marker = killed_dir / "checkpoints" / "step_00000008" / "manifest.json"
    kill_when_file_appears(cmd, marker, env=_env(), timeout_s=60)
    assert not (killed_dir / "result.json").exists()

    resumed = run_worker(1, killed_dir, [*overrides, "train.resume=true"])
    assert resumed["resumed_from"].endswith("step_00000008") and resumed["step"] == 12
    full_steps = _steps(full_dir)
    assert [s["epoch"] for s in full_steps] == [0] * 5 + [1] * 5 + [2] * 2
    assert _steps(killed_dir) == full_steps[8:]  # the same samples after the resume
    for name in ("model.safetensors", "ema.safetensors"):
        assert_close_dicts(final_weights(killed_dir, 12, name), final_weights(full_dir, 12, name), exact=True)
    saved = load_pickled(full_dir / "checkpoints" / "step_00000008" / "trainer_state.pt")
    assert (saved["epoch"], saved["batches_in_epoch"]) == (1, 3)


def test_torchrun_two_ranks_on_uneven_shards(tmp_path, shards, monkeypatch):
    """3 shards over 2 ranks: one rank holds 2 shards, the other 1, so their streams end at different
    times. Both ranks must leave each epoch together (no hang, same epoch on both), read exactly their
    own part of the stream, and end with identical weights."""
    steps = 10
    overrides = [
        f"train.max_steps={steps}",
        "train.batch_size=2",
        "train.precision=fp32",
        "train.seed=5",
        "train.save_every=0",
        "train.tensorboard=false",
        f"toy.shards={shards}",
        "toy.record_keys=true",
        "toy.save_rank_weights=true",
    ]
    result = run_worker(2, tmp_path, overrides, timeout=90)
    assert result["world_size"] == 2 and result["step"] == steps
    per_rank = [_steps(tmp_path, rank) for rank in (0, 1)]
    assert [s["epoch"] for s in per_rank[0]] == [s["epoch"] for s in per_rank[1]]

    # independent reference: each rank's own stream per epoch, cut to the batch count of the shorter one
    expected: list[list[tuple[int, list[str]]]] = [[], []]
    epoch = 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    while len(expected[0]) < steps:
        streams = []
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            streams.append(batches_of(stream_keys(shards, epoch, seed=5), 2))
        agreed = min(len(s) for s in streams)
        assert agreed > 0
        for rank in (0, 1):
            expected[rank] += [(epoch, b) for b in streams[rank][:agreed]]
        epoch += 1
    for rank in (0, 1):
        assert [(s["epoch"], s["keys"]) for s in per_rank[rank]] == expected[rank][:steps]
    assert per_rank[0][-1]["epoch"] >= 2  # several epoch ends were crossed
    for s0, s1 in zip(*per_rank):
        assert not set(s0["keys"]) & set(s1["keys"])  # the ranks read disjoint shards

    w0, w1 = (load_safetensors(tmp_path / f"weights_rank{rank}.safetensors") for rank in (0, 1))
    assert_close_dicts(w0, w1, exact=True)
    assert_close_dicts(w0, final_weights(tmp_path, steps), exact=True)
