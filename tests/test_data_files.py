"""Image folders, webdataset shards, broken files, transforms, batching and the registry."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torchvision.transforms as T
from PIL import Image

from polytok.data import (
    ImageFolderDataset,
    ShapesDataset,
    ShardDataset,
    UnreadableImageError,
    build_dataloader,
    build_dataset,
    collate,
    decode_image,
    eval_transform,
    iter_folder_samples,
    list_datasets,
    write_shards,
)
from polytok.data.transforms import RandomResizedCropFlip, sample_crop_box, seeded_generator


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _broken_files() -> dict[str, bytes]:
    """Real broken files: truncated JPEG, truncated PNG, random bytes named .png, empty file."""
    jpeg = _jpeg_bytes(skimage.data.chelsea())
    png = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(png, format="PNG")
    rng = np.random.default_rng(0)
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "garbage.png": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "empty.jpg": b"",
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/cat: 2 good + 2 broken, root/coffee: 2 good + 2 broken, with one sidecar caption."""
    root = tmp_path / "images"
    photos = {"cat": skimage.data.chelsea(), "coffee": skimage.data.coffee()}
    broken = list(_broken_files().items())
    for c, (name, array) in enumerate(photos.items()):
        (root / name).mkdir(parents=True)
        Image.fromarray(array[:200, :240]).save(root / name / "a.jpg", quality=92)
        Image.fromarray(array[100:300, 100:340]).save(root / name / "b.png")
        for file_name, data in broken[2 * c : 2 * c + 2]:
            (root / name / file_name).write_bytes(data)
    (root / "cat" / "a.txt").write_text("a ginger cat on a wall\n")
    return root


# ---------------------------------------------------------------- decoding and transforms


def test_every_kind_of_broken_file_is_rejected(tmp_path):
    for name, data in _broken_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnreadableImageError, match=name):
            decode_image(path)
        with pytest.raises(UnreadableImageError):
            decode_image(data)


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    rgb = np.asarray(decode_image(buffer.getvalue()))
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[3, 3]) == (255, 255, 255)


def test_eval_transform_matches_torchvision():
    image = Image.fromarray(skimage.data.rocket())
    reference = T.Compose([T.Resize(48, T.InterpolationMode.BICUBIC), T.CenterCrop(48), T.PILToTensor()])
    expected = reference(image).float() / 255.0
    assert torch.allclose(eval_transform(48)(image), expected, atol=1e-6)


def test_crop_boxes_respect_scale_ratio_and_bounds():
    generator = seeded_generator(0)
    for _ in range(300):
        top, left, h, w = sample_crop_box(300, 451, (0.2, 0.6), (3 / 4, 4 / 3), generator)
        assert top >= 0 and top + h <= 300 and left >= 0 and left + w <= 451
        assert 0.19 <= h * w / (300 * 451) <= 0.61
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # impossible request (a very wide image): falls back to the widest allowed centre crop
    top, left, h, w = sample_crop_box(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), generator)
    assert (h, w) == (10, 13) and left == (1000 - 13) // 2


def test_train_transform_flips_and_is_reproducible():
    image = Image.fromarray(skimage.data.astronaut())
    whole = RandomResizedCropFlip(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = eval_transform(32)(image)
    outcomes = set()
    for seed in range(20):
        out = whole(image, generator=seeded_generator(seed))
        assert torch.equal(out, whole(image, generator=seeded_generator(seed)))
        if torch.allclose(out, plain, atol=1e-6):
            outcomes.add("kept")
        elif torch.allclose(out, plain.flip(-1), atol=1e-6):
            outcomes.add("flipped")
    assert outcomes == {"kept", "flipped"}
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCropFlip(32, scale=(0.5, 0.2))


# ---------------------------------------------------------------- folders


def test_folder_labels_captions_and_broken_files(folder):
    ds = build_dataset(folder, split="val", image_size=40)
    assert ds.class_names() == ["cat", "coffee"]
    good = {"cat/a", "cat/b", "coffee/a", "coffee/b"}
    items = [ds[i] for i in range(len(ds))]
    assert {item["key"] for item in items} == good  # broken files replaced, never returned
    by_key = {item["key"]: item for item in items}
    assert by_key["cat/a"]["caption"] == "a ginger cat on a wall"
    assert by_key["coffee/b"]["caption"] == "a photo of a coffee"
    assert [by_key[k]["label"] for k in sorted(good)] == [0, 0, 1, 1]
    for item in items:
        assert item["image"].shape == (3, 40, 40) and 0 <= item["image"].min() <= item["image"].max() <= 1
    # Each index is replaced by the next readable file; count the broken files walked over.
    bad = [f.stem not in ("a", "b") for f in ds.files]
    expected = 0
    for i in range(len(bad)):
        j = i
        while bad[j % len(bad)]:
            expected, j = expected + 1, j + 1
    assert ds.skipped == expected > 0
    # the substitution is deterministic
    assert all(torch.equal(ds[i]["image"], items[i]["image"]) for i in range(len(ds)))


def test_folder_counts_skips_made_in_worker_processes(folder, caplog):
    ds = build_dataset(folder, split="train", image_size=24)
    loader = build_dataloader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["caption"]) for b in batches) == len(ds)
    reference = ImageFolderDataset(folder, transform=eval_transform(24))
    for i in range(len(reference)):
        reference[i]
    assert ds.skipped == reference.skipped > 0  # workers' counts reach the main process
    assert any("unreadable samples skipped in this pass" in r.message for r in caplog.records)


def test_flat_folder_has_no_labels_and_split_subfolder_is_used(tmp_path):
    (tmp_path / "val").mkdir()
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "val" / "x.jpg")
    Image.fromarray(skimage.data.rocket()).save(tmp_path / "val" / "y.png")
    ds = build_dataset(tmp_path, split="val", image_size=16)
    assert ds.root == tmp_path / "val"
    assert [ds[i]["label"] for i in range(2)] == [-1, -1] and ds[0]["caption"] == ""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty", transform=eval_transform(16))


@pytest.mark.parametrize("peak", [200, 255, 256, 4000, 65535])
def test_16_bit_png_is_scaled_by_its_bit_depth_not_its_content(tmp_path, peak):
    """A dark 16-bit image (peak <= 255) is 16-bit all the same: value v reads as v / 65535."""
    rng = np.random.default_rng(peak)
    values = rng.integers(0, peak + 1, (20, 24), dtype=np.uint16)
    values[0, 0] = peak
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:  # the file really holds 16-bit samples
        assert raw.mode.startswith("I") and np.array_equal(np.asarray(raw).astype(np.uint16), values)
    rgb = np.asarray(decode_image(path))
    expected = np.round(values.astype(np.float64) / 65535 * 255).astype(np.uint8)
    assert rgb.shape == (20, 24, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))


# ---------------------------------------------------------------- shards


def _shape_samples(n: int, size: int = 32):
    ds = ShapesDataset("train", image_size=size, length=n)
    for i in range(n):
        item = ds[i]
        yield {"key": f"s{i:04d}", "image": item["image"], "caption": item["caption"], "label": item["label"]}


def test_shards_round_trip_pixels_captions_labels(tmp_path):
    originals = {s["key"]: s for s in _shape_samples(12)}
    paths = write_shards(originals.values(), tmp_path / "shard-%06d.tar", maxcount=5, image_format="png")
    assert [Path(p).name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    ds = build_dataset(str(tmp_path / "shard-{000000..000002}.tar"), split="val", image_size=32)
    assert isinstance(ds, ShardDataset)
    seen = list(ds)
    assert sorted(s["key"] for s in seen) == sorted(originals)
    for sample in seen:
        original = originals[sample["key"]]
        expected = (original["image"] * 255).round() / 255  # PNG stores 8 bits
        assert torch.allclose(sample["image"], expected, atol=1e-6)
        assert sample["caption"] == original["caption"] and sample["label"] == original["label"]
    assert ds.skipped == 0


def test_folder_to_shards_keeps_broken_files_and_reader_skips_them(folder, tmp_path):
    paths = write_shards(iter_folder_samples(folder), tmp_path / "out" / "f-%03d.tar", maxcount=3)
    ds = build_dataset(paths, split="train", image_size=24, shuffle_buffer=4)
    seen = list(ds)
    assert len(seen) == 4 and ds.skipped == 4
    assert sorted(s["caption"] for s in seen) == sorted(
        ["a ginger cat on a wall", "a photo of a cat", "a photo of a coffee", "a photo of a coffee"]
    )
    assert sorted(s["label"] for s in seen) == [0, 0, 1, 1]


def test_shards_with_workers_broken_samples_and_truncated_shard(tmp_path):
    samples = list(_shape_samples(16))
    broken = _broken_files()
    for i, data in enumerate(broken.values()):
        samples[3 * i + 1] = {"key": f"bad{i}", "image": data, "caption": "broken"}
    paths = write_shards(samples, tmp_path / "w-%02d.tar", maxcount=4)
    good = {s["key"] for s in samples if not s["key"].startswith("bad")}
    ds = ShardDataset(paths, transform=eval_transform(32), shuffle=True, seed=5)
    loader = build_dataloader(ds, batch_size=3, num_workers=2)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == sorted(good)  # each good sample exactly once over the two workers
    assert ds.skipped == len(broken)
    # A shard cut in half mid-stream: the epoch still ends, the damage is counted.
    data = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(data[: len(data) // 2 + 100])
    again = ShardDataset(paths, transform=eval_transform(32), shuffle=False)
    keys = [s["key"] for s in again]
    assert set(keys) <= good and len(keys) >= len(good) - 4 and again.skipped >= 1


def test_shard_order_changes_with_epoch_but_not_the_set(tmp_path):
    paths = write_shards(_shape_samples(16), tmp_path / "e-%02d.tar", maxcount=2, image_format="png")
    ds = ShardDataset(paths, transform=eval_transform(32), shuffle=True, shuffle_buffer=0)
    first = [s["key"] for s in ds]
    ds.set_epoch(1)
    second = [s["key"] for s in ds]
    assert first != second and sorted(first) == sorted(second)
    ds.set_epoch(0)
    assert [s["key"] for s in ds] == first


def test_resampled_shards_stop_at_epoch_length(tmp_path):
    paths = write_shards(_shape_samples(6), tmp_path / "r-%02d.tar", maxcount=2)
    ds = ShardDataset(paths, transform=eval_transform(32), resampled=True, epoch_length=20)
    batches = list(build_dataloader(ds, batch_size=4, num_workers=2))
    assert sum(len(b["key"]) for b in batches) == 20
    with pytest.raises(ValueError, match="epoch_length"):
        ShardDataset(paths, transform=eval_transform(32), resampled=True)


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from polytok.data import ShardDataset, ShapesDataset, build_dataloader, eval_transform

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    shards = ShardDataset(sys.argv[1:5], transform=eval_transform(32), seed=3)
    loader = build_dataloader(shards, batch_size=2, num_workers=2)
    shard_keys = [k for batch in loader for k in batch["key"]]
    shapes = ShapesDataset("val", image_size=16, length=10)
    labels = [batch["attributes"]["colour"].tolist() for batch in build_dataloader(shapes, 5, shuffle=False)]
    captions = [c for batch in build_dataloader(shapes, 5, shuffle=True) for c in batch["caption"]]
    with open(f"{sys.argv[5]}/rank{rank}.json", "w") as f:
        json.dump({"shards": shard_keys, "captions": captions}, f)
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_ddp_ranks_split_shards_and_map_style_data(tmp_path):
    paths = write_shards(_shape_samples(16), tmp_path / "d-%02d.tar", maxcount=4, image_format="png")
    script = tmp_path / "ddp_data.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(
        [*command, *paths, str(tmp_path)], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    a, b = (set(r["shards"]) for r in ranks)
    assert a and b and a.isdisjoint(b) and a | b == {f"s{i:04d}" for i in range(16)}
    # map-style: DistributedSampler gives each rank half of the 10 items, together all of them
    captions = ShapesDataset("val", image_size=16, length=10)
    expected = sorted(captions[i]["caption"] for i in range(10))
    assert len(ranks[0]["captions"]) == len(ranks[1]["captions"]) == 5
    assert sorted(ranks[0]["captions"] + ranks[1]["captions"]) == expected


# ---------------------------------------------------------------- batching and registry


def test_collate_builds_the_batch_dict():
    ds = ShapesDataset("val", image_size=16, length=4)
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].dtype == torch.long
    assert batch["caption"] == [ds[i]["caption"] for i in range(4)]
    assert batch["attributes"]["count"].tolist() == [ds[i]["attributes"]["count"] for i in range(4)]
    unlabeled = collate([{"image": torch.zeros(3, 2, 2)}])
    assert unlabeled["label"].tolist() == [-1] and unlabeled["caption"] == [""]
    with pytest.raises(ValueError, match="one shape"):
        collate([{"image": torch.zeros(3, 2, 2)}, {"image": torch.zeros(3, 4, 4)}])


def test_dataloader_takes_a_sampler_hook():
    ds = ShapesDataset("val", image_size=16, length=6)
    seen = []

    def hook(dataset):
        seen.append(dataset)
        return [5, 4, 3, 2, 1, 0]

    batch = next(iter(build_dataloader(ds, batch_size=6, sampler=hook)))
    assert seen == [ds] and batch["caption"] == [ds[i]["caption"] for i in range(5, -1, -1)]


def test_registry_errors_name_the_problem(tmp_path):
    assert list_datasets() == ["photos", "shapes"]
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*'photos', 'shapes'"):
        build_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_dataset(str(tmp_path / "missing-{000..003}.tar"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="%d"):
        write_shards(_shape_samples(1), tmp_path / "no-pattern.tar")
