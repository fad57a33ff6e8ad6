"""A synthetic "shapes" dataset for detection and segmentation examples.

Each image is an RGB picture on a noisy background with 1 to 3 filled shapes:
rectangles (class 1), ellipses (class 2) and triangles (class 3), with random colours,
sizes and positions. Images are generated on the fly and are deterministic per index:
item ``i`` of ``ShapesDataset(seed=s)`` is always the same picture.

Targets follow torchvision's detection models: ``boxes`` (float32, N x 4, xyxy in
pixels, the tight box of the visible mask), ``labels`` (int64, N) and ``masks``
(uint8, N x H x W, one binary mask per shape). Later shapes are drawn over earlier ones,
so each mask holds only the visible part of its shape; shapes mostly hidden by others are
dropped. :func:`masks_to_semantic` turns the masks into a semantic label map.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

CLASSES: tuple[str, ...] = ("background", "rectangle", "ellipse", "triangle")
"""Class names by label; 0 is the background."""

Target = dict[str, torch.Tensor]


class ShapesDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Synthetic images of rectangles, ellipses and triangles.

    Args:
        length: number of images.
        image_size: side of the square images in pixels.
        seed: base seed; item ``i`` is drawn from a generator seeded with ``(seed, i)``.
        max_shapes: each image holds 1 to ``max_shapes`` shapes.
        min_size: smallest shape side, as a fraction of ``image_size``.
        max_size: largest shape side, as a fraction of ``image_size``.
        noise: standard deviation of the background noise, in 0..255 units.

    Each item is ``(image, target)``: ``image`` a float32 tensor 3 x H x W in [0, 1],
    ``target`` a dict with ``boxes``, ``labels`` and ``masks`` (see the module docstring).

    Example:
        >>> ds = ShapesDataset(length=4, image_size=64)
        >>> image, target = ds[0]
        >>> image.shape, target["masks"].shape[1:]
        (torch.Size([3, 64, 64]), torch.Size([64, 64]))
    """

    def __init__(
        self,
        length: int = 1000,
        image_size: int = 128,
        seed: int = 0,
        max_shapes: int = 3,
        min_size: float = 0.15,
        max_size: float = 0.45,
        noise: float = 20.0,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        if not 0.0 < min_size <= max_size <= 1.0:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
        self.length = length
        self.image_size = image_size
        self.seed = seed
        self.max_shapes = max_shapes
        self.min_size = min_size
        self.max_size = max_size
        self.noise = noise

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        rng = np.random.default_rng([self.seed, index])
        size = self.image_size

        # Background: a random flat colour plus Gaussian noise.
        base = rng.integers(0, 256, size=3)
        background = base + rng.normal(0.0, self.noise, size=(size, size, 3))
        canvas = np.clip(background, 0, 255).astype(np.uint8)

        labels: list[int] = []
        masks: list[np.ndarray] = []
        for _ in range(int(rng.integers(1, self.max_shapes + 1))):
            label = int(rng.integers(1, len(CLASSES)))
            mask = self._draw_mask(rng, label)
            colour = self._contrasting_colour(rng, base)
            canvas[mask] = colour
            # The new shape hides whatever it covers in the earlier masks.
            for earlier in masks:
                earlier &= ~mask
            labels.append(label)
            masks.append(mask)

        # Keep shapes still visible enough to be detected.
        min_pixels = (self.min_size * size) ** 2 / 4
        keep = [i for i, m in enumerate(masks) if m.sum() >= min_pixels]
        masks = [masks[i] for i in keep]
        labels = [labels[i] for i in keep]

        image = torch.from_numpy(canvas).permute(2, 0, 1).float().div_(255.0)
        if masks:
            mask_tensor = torch.from_numpy(np.stack(masks)).to(torch.uint8)
        else:
            mask_tensor = torch.zeros((0, size, size), dtype=torch.uint8)
        target: Target = {
            "boxes": masks_to_boxes(mask_tensor),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": mask_tensor,
        }
        return image, target

    def _draw_mask(self, rng: np.random.Generator, label: int) -> np.ndarray:
        """A boolean H x W mask of one random shape of class ``label``."""
        size = self.image_size
        w, h = (rng.uniform(self.min_size, self.max_size, size=2) * size).astype(int)
        x0 = int(rng.integers(0, size - w + 1))
        y0 = int(rng.integers(0, size - h + 1))
        x1, y1 = x0 + w - 1, y0 + h - 1
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        if label == 1:
            draw.rectangle((x0, y0, x1, y1), fill=1)
        elif label == 2:
            draw.ellipse((x0, y0, x1, y1), fill=1)
        else:
            # A triangle spanning the box: a base on one side, an apex on the other.
            apex = x0 + int(rng.integers(0, w))
            if rng.random() < 0.5:
                points = [(x0, y1), (x1, y1), (apex, y0)]
            else:
                points = [(x0, y0), (x1, y0), (apex, y1)]
            draw.polygon(points, fill=1)
        return np.asarray(layer, dtype=bool).copy()

    @staticmethod
    def _contrasting_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
        """A random RGB colour far enough from the background colour to be seen."""
        colour = rng.integers(0, 256, size=3)
        for _ in range(20):
            if np.abs(colour - base).sum() >= 150:
                break
            colour = rng.integers(0, 256, size=3)
        return colour.astype(np.uint8)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (float32, N x 4) of binary masks N x H x W.

    ``x2`` and ``y2`` are one past the last mask pixel, so a box's width and height
    are the mask's extent in pixels. An empty mask gives a zero box.
    """
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if ys.numel():
            boxes[i] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return boxes


def masks_to_semantic(masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A semantic label map (int64, H x W) from instance masks and their labels.

    Pixel values are class labels, 0 for the background. Where masks overlap, the later
    mask wins, as in the picture (the dataset's masks do not overlap anyway).
    """
    if masks.ndim != 3 or labels.shape != masks.shape[:1]:
        raise ValueError(
            f"need masks N x H x W and labels N, got {tuple(masks.shape)}, {tuple(labels.shape)}"
        )
    semantic = torch.zeros(masks.shape[1:], dtype=torch.int64)
    for mask, label in zip(masks, labels, strict=True):
        semantic[mask.bool()] = label
    return semantic


def collate(
    batch: list[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """Collate for torchvision detectors: a list of images and a list of targets."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
