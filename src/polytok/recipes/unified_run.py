"""Training the unified model from one config file, on the engine the tokenizers train on.

    polytok train configs/unified-evotok-tiny.yaml train.max_steps=200

A unified run config has a ``unified`` section instead of ``model``/``loss`` (``polytok train`` tells the
two apart by it); ``data`` and ``train`` are the tokenizer recipe's sections::

    unified:
      tokenizer: evotok-tiny          # the frozen image tokenizer: a shipped name or a save_pretrained folder
      text_tokenizer: null            # a tokenizer file or folder; null: BPE trained on the captions
      model: {backbone: {model_type: llama, hidden_size: 64, ...}, depth_layers: 2, caption_dropout: 0.1}
      heldout_samples: 64             # caption loss on the held-out split before and after training
    data:  {name: shapes, image_size: 32}
    train: {max_steps: 300, batch_size: 16, out_dir: runs/unified-evotok-tiny}

``data.name`` may also be a token set written by ``polytok encode MODEL DATA --out DIR`` (a directory
holding ``manifest.json``): its shards are streamed instead of encoding images (``data.options``:
``shuffle`` (default true: shard order by seed and epoch), ``shuffle_buffer`` (samples, default 0)). The
set must come from ``unified.tokenizer`` at ``data.image_size``; the held-out loss then reads
``unified.heldout_data`` (a dataset encoded on the fly, or a second token set).

Every batch holds both directions (text -> image and image -> text rows, see
:mod:`polytok.unified.data`). The run writes ``run.yaml``, ``text_tokenizer.json`` (so that a resumed run
reads the same vocabulary), the engine's checkpoints, ``heldout.json`` and, at the end,
``<out_dir>/model``: the unified model (``save_pretrained``) with its image tokenizer in
``model/image_tokenizer``, ready for ``polytok generate`` and ``polytok caption``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import Dataset

from polytok.config import REQUIRED, from_dict, load_yaml_with_overrides
from polytok.recipes.sections import DataSection, build_training_dataset, write_run_record
from polytok.recipes.unified_objective import UnifiedObjective
from polytok.tokensets.shards import holds_shards
from polytok.train import TrainConfig, Trainer
from polytok.train.distributed import DistInfo, cleanup_distributed, setup_distributed
from polytok.train.trainer import Callback
from polytok.unified.config import UnifiedConfig
from polytok.unified.data import EncodedCaptions, MixedTaskCollate, TokenShardCaptions, caption_batch
from polytok.unified.model import UnifiedModel
from polytok.unified.text_tokenizer import FILE_NAME as TEXT_FILE
from polytok.unified.text_tokenizer import TextTokenizer, train_text_tokenizer


@dataclass
class UnifiedSection:
    """The unified model, its frozen image tokenizer and its text tokenizer.

    ``tokenizer``: a shipped checkpoint name or a ``save_pretrained`` folder (``allow_untrained``: a fresh
    preset by name, for tests). ``text_tokenizer``: a tokenizer file or folder, or None to train a
    byte-level BPE of ``model.text_vocab_size`` on the captions of the first ``text_captions`` training
    samples. ``cache_codes``: keep each sample's codes after its first encoding (datasets that give the
    same image for an index every epoch). ``heldout_samples``: image -> text loss on that many samples
    of ``heldout_split`` of ``heldout_data`` (default: ``data.name``; a dataset or a token set, whose
    samples are then read in order) before and after training (0: skipped).
    """

    tokenizer: str = field(default="evotok-tiny", metadata=REQUIRED)
    allow_untrained: bool = False
    text_tokenizer: str | None = None
    text_captions: int = 4096
    model: UnifiedConfig = field(default_factory=UnifiedConfig)
    cache_codes: bool = True
    heldout_split: str = "val"
    heldout_samples: int = 0
    heldout_data: str | None = None

    def __post_init__(self) -> None:
        if self.text_captions < 1 or self.heldout_samples < 0:
            raise ValueError("text_captions must be >= 1 and heldout_samples >= 0")


@dataclass
class UnifiedRunConfig:
    unified: UnifiedSection = field(default_factory=UnifiedSection)
    data: DataSection = field(default_factory=lambda: DataSection(name="shapes", image_size=32))
    train: TrainConfig = field(default_factory=TrainConfig)
    export_dir: str | None = None  # save_pretrained here after training (default: <out_dir>/model)

    def __post_init__(self) -> None:
        if self.train.batch_size < 2:
            raise ValueError(
                "train.batch_size must be >= 2: every batch holds both directions (text -> image and "
                "image -> text), so that every parameter is trained at every step"
            )


def load_unified_run_config(
    path: str | os.PathLike | None, overrides: Sequence[str] = ()
) -> UnifiedRunConfig:
    return from_dict(UnifiedRunConfig, load_yaml_with_overrides(path, list(overrides)))


# -- building blocks ------------------------------------------------------------------------------------


def load_image_tokenizer(name_or_path: str, allow_untrained: bool = False):
    """The frozen image tokenizer (eval mode, no gradients)."""
    from polytok.hub import load_tokenizer

    tok = load_tokenizer(name_or_path, allow_untrained=allow_untrained).eval()
    tok.requires_grad_(False)
    return tok


def training_captions(dataset, count: int) -> Iterator[str]:
    """Captions of the first ``count`` samples of a dataset (map-style or a stream) of captioned items."""
    if hasattr(dataset, "captions"):  # a token set: read in dataset order, the same on every rank
        yield from dataset.captions(count)
        return
    if hasattr(dataset, "caption"):  # no need to encode the images
        yield from (dataset.caption(i) for i in range(min(count, len(dataset))))
        return
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        items: Iterable = (dataset[i] for i in range(min(count, len(dataset))))
    else:
        items = itertools.islice(dataset, count)
    for item in items:
        yield item["caption"]


def text_tokenizer_for_run(section: UnifiedSection, dataset, out_dir: Path, resume: bool) -> TextTokenizer:
    """The run's text tokenizer: loaded by path, the one a resumed run saved, or trained on captions."""
    if section.text_tokenizer is not None:
        return TextTokenizer.load(section.text_tokenizer)
    saved = out_dir / TEXT_FILE
    if resume and saved.is_file():
        return TextTokenizer.load(saved)
    return train_text_tokenizer(
        training_captions(dataset, section.text_captions), section.model.text_vocab_size
    )


def image_grid(tokenizer: Any, image_size: int) -> tuple[int, int]:
    if image_size % tokenizer.stride:
        raise ValueError(
            f"data.image_size {image_size} is not a multiple of the tokenizer's stride {tokenizer.stride}"
        )
    return (image_size // tokenizer.stride, image_size // tokenizer.stride)


@torch.no_grad()
def heldout_caption_loss(model: UnifiedModel, dataset, batch_size: int) -> float:
    """Mean image -> text cross-entropy (per caption token) over ``dataset``'s ``{"codes", "caption"}``."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = caption_batch(model.format, model.text_tokenizer, items)
        out = model(_sequence_batch(batch, model.device))
        total += float(out.text_loss) * out.text_targets
        tokens += out.text_targets
    model.train(was_training)
    return total / max(tokens, 1)


def _sequence_batch(fields: dict, device: torch.device):
    from polytok.unified.sequence import SequenceBatch

    return SequenceBatch(**fields).to(device)


def check_token_set(path: str, tokenizer: Any, tokenizer_name: str, grid: tuple[int, int]) -> dict:
    """The manifest of the token set at ``path``; refused unless ``tokenizer`` made it at ``grid``."""
    from polytok.models.identity import identity_difference, tokenizer_identity
    from polytok.tokensets.shards import TokenSetMismatchError, load_token_shards, read_manifest

    manifest = read_manifest(path)
    recorded = manifest.get("identity", {})
    difference = identity_difference(recorded, tokenizer_identity(tokenizer))
    if difference is not None:
        made_by = (recorded.get("config") or {}).get("name", "an unnamed tokenizer")
        raise TokenSetMismatchError(
            f"token set {path} was encoded by {made_by!r}, not by unified.tokenizer {tokenizer_name!r} "
            f"(they differ in {difference}): encode the data with {tokenizer_name!r} or train on that one"
        )
    first = load_token_shards(path, limit=1)["codes"]
    if len(first) and tuple(first.shape[1:3]) != grid:
        raise ValueError(
            f"token set {path} holds a {first.shape[1]} x {first.shape[2]} grid of codes, data.image_size "
            f"gives {grid[0]} x {grid[1]}: set data.image_size to the --image-size it was encoded at"
        )
    return manifest


def token_set_dataset(path: str, options: dict[str, Any], seed: int) -> TokenShardCaptions:
    """The training stream of a (checked) token set; ``options``: shuffle (default true), shuffle_buffer."""
    from polytok.tokensets.shards import TokenShardDataset

    unknown = set(options) - {"shuffle", "shuffle_buffer"}
    if unknown:
        raise ValueError(
            f"data.options of a token set takes shuffle and shuffle_buffer, not {', '.join(sorted(unknown))}"
        )
    shards = TokenShardDataset(
        path,
        shuffle=bool(options.get("shuffle", True)),
        shuffle_buffer=int(options.get("shuffle_buffer", 0)),
        seed=seed,
    )
    return TokenShardCaptions(shards)


def _heldout_dataset(config: UnifiedRunConfig, tokenizer: Any, grid: tuple[int, int]):
    from polytok.data import build_dataset
    from polytok.tokensets.shards import load_token_shards

    section = config.unified
    if not section.heldout_samples:
        return None
    data = config.data
    source = section.heldout_data or data.name.split("+")[0]
    if holds_shards(source):
        if section.heldout_data is None:
            raise ValueError(
                f"data.name {source} is a token set: name the held-out data with unified.heldout_data "
                "(a dataset such as shapes, or a second token set) or set unified.heldout_samples=0"
            )
        check_token_set(source, tokenizer, section.tokenizer, grid)
        rows = load_token_shards(source, limit=section.heldout_samples)
        return [{"codes": c, "caption": t} for c, t in zip(rows["codes"], rows["captions"])]
    options = data.options if section.heldout_data is None else {}  # data.options belong to data.name
    images = build_dataset(source, split=section.heldout_split, image_size=data.image_size, **options)
    count = min(config.unified.heldout_samples, len(images))
    return EncodedCaptions(torch.utils.data.Subset(images, range(count)), tokenizer)


# -- the run --------------------------------------------------------------------------------------------


def train_unified(
    config: UnifiedRunConfig, callbacks: Iterable[Callback] = (), dataset: Dataset | None = None
) -> UnifiedModel:
    """Train the unified model described by ``config``; returns it (the exported model on rank 0).

    Works as a single process or under torchrun (DDP/FSDP) unchanged; ``train.resume`` continues exactly.
    ``callbacks`` go to the :class:`Trainer` (called after every step). ``dataset``: ``{"codes",
    "caption"}`` items of the configured tokenizer at ``data.image_size`` (token shards; map-style or a
    stream that splits itself over ranks); by default the ``data`` section's images, encoded on the fly.
    """
    section, out_dir = config.unified, Path(config.train.out_dir)
    check_resumed_config(config, out_dir)  # before anything in out_dir is rewritten
    info = setup_distributed(config.train)  # joined first: rank 0 trains the text tokenizer for all
    trainer = None
    try:
        tokenizer = load_image_tokenizer(section.tokenizer, section.allow_untrained)
        grid = image_grid(tokenizer, config.data.image_size)
        if dataset is None and holds_shards(config.data.name):
            check_token_set(config.data.name, tokenizer, section.tokenizer, grid)
            dataset = token_set_dataset(config.data.name, config.data.options, config.train.seed)
        elif dataset is None:
            images = build_training_dataset(config.data)
            dataset = EncodedCaptions(images, tokenizer, cache=section.cache_codes)
        heldout = _heldout_dataset(config, tokenizer, grid) if info.is_main else None  # refused early
        text = _shared_text_tokenizer(section, dataset, out_dir, config.train.resume, info)

        def build() -> UnifiedModel:
            torch.manual_seed(config.train.seed)  # identical initial weights on every rank
            return UnifiedModel.from_tokenizer(tokenizer, text, section.model, grid=grid)

        model = build().to(info.device)  # the held-out loss before training runs where training will
        record: dict[str, Any] = {}
        if heldout is not None:  # the untrained model's loss; a resumed run keeps the one it recorded
            recorded = _recorded_heldout(out_dir) if config.train.resume else {}
            same = recorded.get("samples") == len(heldout) and recorded.get("split") == section.heldout_split
            if same and "loss_before" in recorded:
                record["loss_before"] = recorded["loss_before"]
            else:
                record["loss_before"] = heldout_caption_loss(model, heldout, config.train.batch_size)
            record.update(samples=len(heldout), split=section.heldout_split)
        collate = MixedTaskCollate(model.format, text, section.model.caption_dropout, config.train.seed)
        trainer = Trainer(
            model, UnifiedObjective(), dataset, config.train, collate_fn=collate, callbacks=callbacks
        )
        if info.is_main:
            write_run_record(config, trainer.precision, out_dir / "run.yaml")
            text.save(out_dir)
            if record:  # written now: a run killed before its end keeps the loss before training
                _write_json(out_dir / "heldout.json", record)
        trainer.fit()
        if trainer.ema is not None:
            trainer.ema.copy_to(trainer.raw_model)
        final = _plain_model(trainer, build)  # collective under FSDP
        if final is not None:
            if heldout is not None:
                record.update(step=trainer.step)
                record["loss_after"] = heldout_caption_loss(final, heldout, config.train.batch_size)
                _write_json(out_dir / "heldout.json", record)
            export = Path(config.export_dir or out_dir / "model")
            final.save_pretrained(export, image_tokenizer=tokenizer)
            model = final
    finally:
        if trainer is not None:
            trainer.close()
        cleanup_distributed(info)
    return model


RESUME_KEYS = (
    ("unified", "tokenizer"),
    ("unified", "text_tokenizer"),
    ("unified", "model"),
    ("data", "image_size"),
)


def check_resumed_config(config: UnifiedRunConfig, out_dir: Path) -> None:
    """Refuse to resume the run in ``out_dir`` with another model (the image or text tokenizer, the
    model config, the image size) than its ``run.yaml`` records: its checkpoints hold that model."""
    import yaml

    from polytok.config import to_dict

    record = out_dir / "run.yaml"
    if not config.train.resume or not record.is_file():
        return
    saved = yaml.safe_load(record.read_text()) or {}
    now = yaml.safe_load(yaml.safe_dump(to_dict(config), sort_keys=False))  # as run.yaml reads back
    differences = []
    for section, key in RESUME_KEYS:
        then, new = (saved.get(section) or {}).get(key), now[section][key]
        if isinstance(then, dict) and isinstance(new, dict):
            for name in sorted(set(then) | set(new)):
                if then.get(name) != new.get(name):
                    differences.append(
                        f"{section}.{key}.{name} ({then.get(name)!r} in the run, {new.get(name)!r} now)"
                    )
        elif then != new:
            differences.append(f"{section}.{key} ({then!r} in the run, {new!r} now)")
    if differences:
        raise ValueError(
            f"cannot resume the run in {out_dir} with another model: {'; '.join(differences)}; resume with "
            f"the settings of {record}, or start a new run in another train.out_dir"
        )


def _recorded_heldout(out_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((out_dir / "heldout.json").read_text())
    except (OSError, ValueError):
        return {}


def _shared_text_tokenizer(
    section: UnifiedSection, dataset, out_dir: Path, resume: bool, info: DistInfo
) -> TextTokenizer:
    """The run's text tokenizer, made on rank 0 and sent to the others (one vocabulary, whatever the
    training library's ordering of equal merges)."""
    from tokenizers import Tokenizer as Backend

    if section.text_tokenizer is not None:
        return TextTokenizer.load(section.text_tokenizer)
    payload = (
        [text_tokenizer_for_run(section, dataset, out_dir, resume).backend.to_str()]
        if info.is_main
        else [None]
    )
    if info.distributed:
        dist.broadcast_object_list(payload, src=0)
    return TextTokenizer(Backend.from_str(payload[0]))


def _plain_model(trainer: Trainer, build) -> UnifiedModel | None:
    """The trained model as a plain module on rank 0 (None elsewhere): FSDP's shards gathered into a
    fresh copy; otherwise the model itself."""
    if trainer.strategy != "fsdp":
        return trainer.raw_model if trainer.dist.is_main else None
    full = get_model_state_dict(
        trainer.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not trainer.dist.is_main:
        return None
    model = build()
    model.load_state_dict(full)
    return model


def _write_json(path: Path, data: dict) -> None:
    from polytok.storage import atomic_write_json

    atomic_write_json(path, data, indent=1)
