"""A judge that reads the attributes of built-in ``shapes`` images: shape, colour, count, size, position.

It measures what a reconstruction (or a generated image) still shows of what the original was made of,
which PSNR hides: the background holds most pixels, so a small triangle turned into a blob barely moves
PSNR. The judge is two small trained classifiers that see disjoint evidence, so that neither can read an
attribute through another one:

* geometry (shape, count, size, position): a CNN on the *silhouette*, the saturation map
  ``max(rgb) - min(rgb)`` divided by its peak. Every ``shapes`` background is grey (saturation 0) and
  every shape colour is saturated, so this map is the objects' silhouette whatever their colour: the
  geometry heads are colour-blind by construction, and a (shape, colour) pair never seen in training is
  read as well as a seen one.
* colour: a small MLP on the saturation-weighted mean colour of the image, blind to geometry.

Both are trained by :func:`train_shapes_judge` on the ``train`` split only (fixed seed), with a mild blur
and noise so that the slightly soft originals a good tokenizer returns are still read as drawn. The
weights ship with the package (``shapes-judge.safetensors`` beside this module, with the recipe that made
them in its metadata); :func:`load_shapes_judge` loads them.

    judge = load_shapes_judge()
    images = torch.rand(8, 3, 64, 64)                  # (B, 3, H, W) in [0, 1]; resized to 64 px
    readings = judge.read(images)                      # {"shape": (B,) int64, "colour": ..., ...}
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from polytok.data.shapes import TASK_CLASSES, ShapesDataset

JUDGED_ATTRIBUTES = ("shape", "colour", "count", "size", "position")
GEOMETRY_ATTRIBUTES = ("shape", "count", "size", "position")
JUDGE_SIZE = 64  # the judge reads images at this side; other sizes are resized (antialiased) to it
WEIGHTS_PATH = Path(__file__).resolve().parent / "shapes-judge.safetensors"


def saturation(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W): ``max - min`` over the channels (0 on grey pixels)."""
    return images.amax(dim=1, keepdim=True) - images.amin(dim=1, keepdim=True)


def silhouette(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W): saturation divided by the image's peak saturation (at least 0.25).

    Every ``shapes`` colour has a peak saturation of 0.55 or more, so objects read about 1 whatever
    their hue or saturation: what the geometry CNN sees carries no colour at all."""
    sat = saturation(images)
    return sat / sat.amax(dim=(1, 2, 3), keepdim=True).clamp_min(0.25)


def weighted_colour(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 4): mean RGB weighted by saturation squared, and the mean saturation.

    Squaring favours the objects' saturated interiors over their anti-aliased edges and over any faint
    tint a reconstruction leaves on the grey background."""
    weight = saturation(images).pow(2)
    total = weight.sum(dim=(2, 3)).clamp_min(1e-8)
    mean_rgb = (images * weight).sum(dim=(2, 3)) / total
    return torch.cat([mean_rgb, saturation(images).mean(dim=(2, 3))], dim=1)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesJudge(nn.Module):
    """Attribute classifiers for ``shapes`` images; ``forward`` gives logits, :meth:`read` class indices.

    Args:
        width: channels of the geometry CNN's first stage (doubled at each of its three downsamplings).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        w = width
        # Silhouette + two coordinate channels (position is absolute, so the CNN is told where it looks).
        self.geometry = nn.Sequential(
            _conv(3, w),
            _conv(w, w),
            _conv(w, 2 * w, stride=2),  # 32 px
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, stride=2),  # 16 px
            _conv(4 * w, 4 * w),
            _conv(4 * w, 4 * w, stride=2),  # 8 px
        )
        self.geometry_fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 64, 128), nn.ReLU(inplace=True))
        self.geometry_heads = nn.ModuleDict(
            {name: nn.Linear(128, len(TASK_CLASSES[name])) for name in GEOMETRY_ATTRIBUTES}
        )
        self.colour = nn.Sequential(
            nn.Linear(4, 64), nn.ReLU(inplace=True), nn.Linear(64, len(TASK_CLASSES["colour"]))
        )

    @staticmethod
    def prepare(images: Tensor) -> Tensor:
        """Check and resize images to (B, 3, 64, 64) float32 in [0, 1]."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"the shapes judge expects images (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"the shapes judge expects float images in [0, 1], got {images.dtype}")
        images = images.float()
        if images.shape[-2:] != (JUDGE_SIZE, JUDGE_SIZE):
            images = F.interpolate(
                images, size=(JUDGE_SIZE, JUDGE_SIZE), mode="bilinear", antialias=True, align_corners=False
            )
        return images.clamp(0.0, 1.0)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) in [0, 1] -> {attribute: logits (B, classes)}."""
        images = self.prepare(images)
        b = images.shape[0]
        ys = torch.linspace(-1.0, 1.0, JUDGE_SIZE, device=images.device)
        grid_y, grid_x = torch.meshgrid(ys, ys, indexing="ij")
        coords = torch.stack([grid_x, grid_y]).expand(b, 2, JUDGE_SIZE, JUDGE_SIZE)
        hidden = self.geometry_fc(self.geometry(torch.cat([silhouette(images), coords], dim=1)))
        logits = {name: head(hidden) for name, head in self.geometry_heads.items()}
        logits["colour"] = self.colour(weighted_colour(images))
        return {name: logits[name] for name in JUDGED_ATTRIBUTES}

    @torch.no_grad()
    def read(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """images (B, 3, H, W) in [0, 1] -> {attribute: (B,) int64 class index} (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            parts: dict[str, list[Tensor]] = {name: [] for name in JUDGED_ATTRIBUTES}
            for start in range(0, images.shape[0], batch_size):
                for name, logit in self(images[start : start + batch_size]).items():
                    parts[name].append(logit.argmax(dim=1).cpu())
            return {
                name: torch.cat(p) if p else torch.empty(0, dtype=torch.long) for name, p in parts.items()
            }
        finally:
            self.train(was_training)


# ---------------------------------------------------------------------------------------------------------
# training


@dataclass
class JudgeRecipe:
    """How the shipped judge was trained (stored in its weights file)."""

    width: int = 16
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    train_images: int = 20_000  # the ``train``-split samples 0..N-1, rendered once, drawn from at random
    max_blur_sigma: float = 0.8  # Gaussian blur of a random half of the batch, sigma in [0, max]
    max_noise_std: float = 0.02
    seed: int = 0


def _gaussian_blur(images: Tensor, sigmas: Tensor) -> Tensor:
    """Blur each image with its own sigma (B,) (0 leaves it unchanged); separable, reflect padding."""
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    safe = sigmas.clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None, :] / safe) ** 2)
    kernel = torch.where(sigmas[:, None] > 1e-3, kernel, (offsets == 0).float()[None, :].expand_as(kernel))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, 7)
    b, c, h, w = images.shape
    x = images.reshape(1, b * c, h, w)
    k = kernel.repeat_interleave(c, dim=0)  # (B*C, 7)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def render_batch(dataset: ShapesDataset, indices: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """Images (B, 3, S, S) and {attribute: (B,) labels} of the dataset samples ``indices``."""
    items = [dataset[i] for i in indices]
    images = torch.stack([item["image"] for item in items])
    labels = {
        name: torch.tensor([item["attributes"][name] for item in items], dtype=torch.long)
        for name in JUDGED_ATTRIBUTES
    }
    return images, labels


def train_shapes_judge(
    recipe: JudgeRecipe | None = None, *, log: Callable[[str], None] | None = None
) -> ShapesJudge:
    """Train a judge on the ``train`` split of ``shapes`` (64 px) from scratch, deterministically."""
    recipe = recipe or JudgeRecipe()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    data = ShapesDataset("train", image_size=JUDGE_SIZE, length=recipe.train_images, seed=recipe.seed)
    pool, pool_labels = render_batch(data, list(range(recipe.train_images)))
    pool = (pool * 255).round().to(torch.uint8)  # a quarter of the memory; the drawing is 8-bit anyway
    judge = ShapesJudge(recipe.width)
    optimiser = torch.optim.AdamW(judge.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    judge.train()
    started = time.time()
    for step in range(recipe.steps):
        lr = recipe.lr * 0.5 * (1.0 + math.cos(math.pi * step / recipe.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        indices = torch.randint(0, recipe.train_images, (recipe.batch_size,), generator=generator)
        images = pool[indices].float() / 255.0
        labels = {name: pool_labels[name][indices] for name in JUDGED_ATTRIBUTES}
        blurred = torch.rand(recipe.batch_size, generator=generator) < 0.5
        sigmas = torch.rand(recipe.batch_size, generator=generator) * recipe.max_blur_sigma * blurred
        images = _gaussian_blur(images, sigmas)
        noise = torch.rand(recipe.batch_size, 1, 1, 1, generator=generator) * recipe.max_noise_std
        images = (images + noise * torch.randn(images.shape, generator=generator)).clamp(0.0, 1.0)
        logits = judge(images)
        loss = sum(F.cross_entropy(logits[name], labels[name]) for name in JUDGED_ATTRIBUTES)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if log is not None and (step % 100 == 0 or step == recipe.steps - 1):
            log(f"step {step}: loss {loss.item():.4f}, lr {lr:.2e}, {time.time() - started:.0f} s")
    return judge.eval()


def save_shapes_judge(judge: ShapesJudge, recipe: JudgeRecipe, path: str | Path = WEIGHTS_PATH) -> None:
    """Write the judge's weights with its recipe in the safetensors metadata (atomically)."""
    from safetensors.torch import save

    from polytok.storage import atomic_write_bytes

    state = {k: v.detach().contiguous() for k, v in judge.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"recipe": json.dumps(asdict(recipe))}))


def load_shapes_judge(path: str | Path = WEIGHTS_PATH) -> ShapesJudge:
    """The trained judge (the weights shipped with the package by default), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"shapes judge weights {path} are missing: train them with "
            "`python scripts/shipped/train_shapes_judge.py` (a few minutes on a CPU)"
        )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        recipe = JudgeRecipe(**json.loads((handle.metadata() or {}).get("recipe", "{}")))
    judge = ShapesJudge(recipe.width)
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()
