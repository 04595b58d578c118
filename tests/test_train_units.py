"""Unit tests of the engine's parts: config, schedule, parameter groups, sampler, EMA, checkpoints."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from polytok.config import ConfigError, from_dict
from polytok.train import checkpoint as ckpt
from polytok.train.ema import ModelEMA
from polytok.train.optim import build_adamw, split_decay_groups
from polytok.train.precision import native_bf16, resolve_precision
from polytok.train.sampler import ResumableDistributedSampler
from polytok.train.schedule import build_scheduler, lr_multiplier
from polytok.train.train_config import OptimConfig, TrainConfig

# --------------------------------------------------------------------------------------------------------
# config (the parsing layer itself: tests/test_config.py)


def test_train_config_validation_names_the_key():
    cfg = from_dict(TrainConfig, {"max_steps": 5, "optim": {"lr": 1e-4, "warmup_steps": 2}})
    assert cfg.optim.lr == 1e-4 and cfg.disc_optim.lr == OptimConfig().lr
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        from_dict(TrainConfig, {"optim": {"lrr": 1e-4}})
    with pytest.raises(ConfigError, match="strategy"):
        from_dict(TrainConfig, {"strategy": "zero"})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        from_dict(TrainConfig, {"batch_size": 0})


def test_train_config_defaults_fit_any_machine():
    assert TrainConfig().precision == "auto"
    assert from_dict(TrainConfig, {"precision": "fp32"}).precision == "fp32"
    with pytest.raises(ConfigError, match=r"train\.precision: 'fp16' is not one of"):
        from_dict(TrainConfig, {"precision": "fp16"}, path="train")


@pytest.mark.parametrize(
    ("requested", "device", "native", "expected"),
    [
        ("auto", "cpu", True, "bf16"),
        ("auto", "cpu", False, "fp32"),
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp32"),
        ("fp32", "cuda", True, "fp32"),
        ("bf16", "cpu", False, "bf16"),  # asked for explicitly: autocast runs, only slower
        ("bf16", "cpu", True, "bf16"),
    ],
)
def test_precision_resolution(requested, device, native, expected):
    assert resolve_precision(requested, device, hardware_bf16=native) == expected


def test_bf16_on_a_gpu_without_it_falls_back_with_a_warning():
    with pytest.warns(RuntimeWarning, match="bf16"):
        assert resolve_precision("bf16", "cuda", hardware_bf16=False) == "fp32"


def _cpu_flags() -> set[str]:
    """CPU feature flags as the kernel reports them (an independent reading from torch's cpuinfo)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags: set[str] = set()
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def test_native_bf16_query_agrees_with_the_kernel_flags():
    flags = _cpu_flags()
    expected = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert native_bf16("cpu") == expected


# --------------------------------------------------------------------------------------------------------
# schedule


def test_schedule_matches_hand_computation():
    total, warm, floor, peak = 20, 4, 0.1, 5e-4
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=peak)
    sched = build_scheduler(opt, OptimConfig(lr=peak, warmup_steps=warm, min_lr_ratio=floor), total)
    seen = []
    for _ in range(total + 3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # by hand: warm-up 1/4, 2/4, 3/4, 4/4 of the peak ...
    assert seen[:4] == pytest.approx([peak * 0.25, peak * 0.5, peak * 0.75, peak])
    # ... then cosine from the peak (step 4) to 0.1x at step 20 and flat after it
    for s in range(4, total + 3):
        t = min(1.0, (s - 4) / 16)
        assert seen[s] == pytest.approx(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))), rel=1e-12)
    assert seen[12] == pytest.approx(peak * 0.55)  # half-way: exactly between peak and floor
    assert seen[total] == pytest.approx(peak * 0.1)
    assert lr_multiplier(7, 10, 0, 0.0, "linear") == pytest.approx(0.3)
    assert lr_multiplier(3, 10, 2, 0.5, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(3, 10, 2, 0.5, "step")


def test_scheduler_state_round_trip_is_weights_only_loadable(tmp_path):
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=3), 10)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    sched2 = build_scheduler(opt2, OptimConfig(lr=1.0, warmup_steps=3), 10)
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# --------------------------------------------------------------------------------------------------------
# parameter groups


class Clipish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.conv = nn.Conv2d(3, 4, 3)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def test_param_groups_skip_decay_on_norms_biases_and_scalars():
    model = Clipish()
    decay, skip, _ = split_decay_groups(model.named_parameters(), ["logit_scale", "pos_embed"])
    assert sorted(decay) == ["conv.weight", "proj.weight"]
    assert sorted(skip) == ["conv.bias", "logit_scale", "norm.bias", "norm.weight", "pos_embed", "proj.bias"]
    opt = build_adamw(model.named_parameters(), OptimConfig(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95)))
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = {
        g["group"]: (g["weight_decay"], sorted(by_id[id(p)] for p in g["params"])) for g in opt.param_groups
    }
    assert groups["decay"] == (0.05, ["conv.weight", "proj.weight"])
    assert groups["no_decay"][0] == 0.0 and "logit_scale" in groups["no_decay"][1]
    assert "frozen" not in groups["decay"][1] + groups["no_decay"][1]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    # the effect itself: with zero gradients only decayed tensors shrink
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["proj.weight"], before["proj.weight"] * (1 - 1e-3 * 0.05))
    assert torch.equal(after["logit_scale"], before["logit_scale"])
    assert torch.equal(after["norm.weight"], before["norm.weight"])


def test_lr_scales_give_prefixed_parameters_their_own_rate_through_the_schedule():
    model = Clipish()
    config = OptimConfig(
        lr=1e-3, weight_decay=0.0, warmup_steps=2, lr_scales={"proj.": 0.1, "proj.bias": 0.5}
    )
    opt = build_adamw(model.named_parameters(), config)
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = {g["group"]: sorted(by_id[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert names["decay:proj."] == ["proj.weight"]
    assert names["no_decay:proj.bias"] == ["proj.bias"]  # the longest prefix wins
    assert "proj.weight" not in names["decay"] and "conv.weight" in names["decay"]
    peak = {g["group"]: g["lr"] for g in opt.param_groups}
    assert peak["decay"] == 1e-3 and math.isclose(peak["decay:proj."], 1e-4)
    assert math.isclose(peak["no_decay:proj.bias"], 5e-4)
    sched = build_scheduler(opt, config, total_steps=10)
    for g in opt.param_groups:  # warm-up step 0: every group at half of its own peak
        assert math.isclose(g["lr"], peak[g["group"]] * lr_multiplier(0, 10, 2, config.min_lr_ratio))
    # the effect: Adam's first update moves each weight by about its group's lr
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    sched.step()
    after = dict(model.named_parameters())
    moved = {n: float((before[n] - after[n].detach()).abs().mean()) for n in ("proj.weight", "conv.weight")}
    assert math.isclose(moved["conv.weight"], 0.5e-3, rel_tol=1e-3)
    assert math.isclose(moved["proj.weight"], 0.5e-4, rel_tol=1e-3)
    for g in opt.param_groups:
        assert math.isclose(g["lr"], peak[g["group"]] * lr_multiplier(1, 10, 2, config.min_lr_ratio))


def test_lr_scales_typos_and_bad_values_are_clear_errors():
    with pytest.raises(ValueError, match=r"\['text_tower\.'\] match no trainable parameter"):
        build_adamw(Clipish().named_parameters(), OptimConfig(lr_scales={"text_tower.": 0.1}))
    with pytest.raises(ConfigError, match="lr_scales must be > 0"):
        from_dict(OptimConfig, {"lr_scales": {"proj.": 0.0}})


# --------------------------------------------------------------------------------------------------------
# sampler


def test_sampler_shards_cover_the_epoch_and_match_one_process():
    n, world = 23, 2
    parts = [ResumableDistributedSampler(n, world, r, shuffle=True, seed=5) for r in range(world)]
    lists = [list(p) for p in parts]
    assert len(lists[0]) == len(lists[1]) == 12  # padded by wrapping
    assert set(lists[0]) | set(lists[1]) == set(range(n))
    g = torch.Generator().manual_seed(5)  # independent reference: the epoch's permutation
    perm = torch.randperm(n, generator=g).tolist()
    perm = perm + perm[: 24 - n]
    assert lists[0] == perm[0::2] and lists[1] == perm[1::2]
    # the first k samples of each rank == the first 2k of the single-process order
    single = list(ResumableDistributedSampler(n, 1, 0, shuffle=True, seed=5))
    assert sorted(lists[0][:4] + lists[1][:4]) == sorted(single[:8])
    # new epoch, new order; same epoch, same order
    parts[0].set_epoch(1)
    assert list(parts[0]) != lists[0]
    parts[0].set_epoch(0, start=5)
    assert list(parts[0]) == lists[0][5:] and len(parts[0]) == 7
    with pytest.raises(ValueError, match="invalid position"):
        parts[0].set_epoch(0, start=13)
    assert list(ResumableDistributedSampler(4, 1, 0, shuffle=False)) == [0, 1, 2, 3]
    assert len(ResumableDistributedSampler(5, 2, 1, drop_last=True)) == 2


# --------------------------------------------------------------------------------------------------------
# EMA


def test_ema_matches_hand_computation():
    model = nn.Linear(3, 2)
    model.register_buffer("count", torch.tensor(0, dtype=torch.long))
    w0 = model.weight.detach().clone()
    ema = ModelEMA(model, decay=0.9)
    expected = w0.clone()
    for i in range(3):
        with torch.no_grad():
            model.weight.add_(1.0 + i)
            model.count += 1
        ema.update(model)
        expected = 0.9 * expected + 0.1 * model.weight.detach()
    state = ema.state_dict()
    assert torch.allclose(state["weight"], expected, atol=1e-6)
    assert state["count"].item() == 3
    clone = nn.Linear(3, 2)
    clone.register_buffer("count", torch.tensor(0, dtype=torch.long))
    ema2 = ModelEMA(clone, decay=0.9)
    ema2.load_state_dict(state)
    ema2.copy_to(clone)
    assert torch.allclose(clone.weight, expected, atol=1e-6)
    with pytest.raises(KeyError, match="missing"):
        ema2.load_state_dict({"weight": state["weight"]})
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)


def test_ema_skips_excluded_prefixes_and_constants_and_names_a_module_added_later():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model.register_buffer("mean", torch.ones(3), persistent=False)  # a constant, not in state_dict()
    model.add_module("frozen", nn.Linear(2, 2))
    ema = ModelEMA(model, decay=0.5, exclude=("frozen.",))
    assert set(ema.state_dict()) == {k for k in model.state_dict() if not k.startswith("frozen.")}
    with torch.no_grad():
        model.frozen.weight.add_(1.0)  # never averaged, never written back
        model[0].weight.add_(1.0)
    ema.update(model)
    before = model.frozen.weight.detach().clone()
    ema.copy_to(model)
    assert torch.equal(model.frozen.weight, before)
    model.add_module("late", nn.Linear(2, 2))  # e.g. a teacher built at the first forward
    with pytest.raises(ValueError, match=r"'late\.weight'.*before the Trainer"):
        ema.update(model)


# --------------------------------------------------------------------------------------------------------
# checkpoints


def _write_ckpt(root, step, value):
    ckpt.begin_checkpoint(root, step)
    staging = ckpt.partial_dir(root, step)
    ckpt.atomic_save_safetensors({"w": torch.full((64,), float(value))}, staging / "model.safetensors")
    ckpt.atomic_torch_save({"step": step}, staging / ckpt.STATE_FILE)
    return ckpt.finalize_checkpoint(root, step)


def test_truncated_checkpoint_is_detected_and_previous_one_used(tmp_path):
    root = tmp_path / "ckpts"
    first = _write_ckpt(root, 10, 1.0)
    second = _write_ckpt(root, 20, 2.0)
    assert ckpt.find_latest_checkpoint(root) == second
    manifest = json.loads((second / ckpt.MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", ckpt.STATE_FILE}
    assert not list(root.glob(".*"))  # no staging directories or temp files left behind

    model_file = second / "model.safetensors"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])  # a torn write
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors has \d+ bytes.*truncated"):
        ckpt.verify_checkpoint(second)
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint file"):
        ckpt.load_safetensors(model_file)  # the reader itself refuses it too
    with pytest.warns(RuntimeWarning, match="skipping checkpoint of step 20"):
        assert ckpt.find_latest_checkpoint(root) == first
    assert ckpt.load_safetensors(first / "model.safetensors")["w"][0].item() == 1.0

    # same size, flipped byte: the checksum catches it
    data = bytearray((first / ckpt.STATE_FILE).read_bytes())
    data[-10] ^= 0xFF
    (first / ckpt.STATE_FILE).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.verify_checkpoint(first)
    with pytest.warns(RuntimeWarning):
        assert ckpt.find_latest_checkpoint(root) is None


def test_interrupted_save_is_never_picked_up(tmp_path):
    root = tmp_path / "ckpts"
    good = _write_ckpt(root, 5, 1.0)
    staging = ckpt.begin_checkpoint(root, 6)  # a save killed before the manifest
    ckpt.atomic_torch_save({"step": 6}, staging / ckpt.STATE_FILE)
    assert ckpt.find_latest_checkpoint(root) == good
    # a finalised directory whose manifest vanished is reported as incomplete
    bad = _write_ckpt(root, 7, 3.0)
    (bad / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"manifest\.json is missing"):
        ckpt.verify_checkpoint(bad)
    with pytest.warns(RuntimeWarning, match="step 7"):
        assert ckpt.find_latest_checkpoint(root) == good
    # pruning counts complete checkpoints only, so the incomplete step 7 never pushes out step 5
    ckpt.prune_checkpoints(root, keep_last=1)
    assert good.exists()
    _write_ckpt(root, 8, 4.0)
    _write_ckpt(root, 9, 5.0)
    ckpt.prune_checkpoints(root, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [7, 8, 9]


def test_rng_state_round_trip_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.atomic_torch_save(ckpt.capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng_state(ckpt.load_pickled(tmp_path / "rng.pt"))  # weights_only=True inside
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_sampler_blocks_make_the_global_batch_the_rank_order_concatenation() -> None:
    from polytok.train import ResumableDistributedSampler

    size, world, batch = 50, 3, 4
    single = list(ResumableDistributedSampler(size, 1, 0, seed=7, block_size=batch * world))
    ranks = [
        list(ResumableDistributedSampler(size, world, r, seed=7, block_size=batch)) for r in range(world)
    ]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) % batch == 0
    for step in range(len(ranks[0]) // batch):
        global_batch = [i for r in ranks for i in r[step * batch : (step + 1) * batch]]
        assert global_batch == single[step * batch * world : (step + 1) * batch * world]
    assert set().union(*map(set, ranks)) == set(range(size))  # every sample is visited
