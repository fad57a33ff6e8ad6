"""Semantic segmentation of synthetic shapes with a swappable head.

Trains ``create_model(<backbone>, "semantic_fpn" | "deeplabv3" | "upernet")`` to label every pixel
as background, rectangle, ellipse or triangle, reports mIoU (torchmetrics'
MulticlassJaccardIndex) on held-out images before and after training, and saves a PNG
of images, true masks and predicted masks, under column titles and a colour key.

    python examples/segmentation.py                      # semantic_fpn on resnet18
    python examples/segmentation.py --head deeplabv3     # ASPP on a dilated backbone
    python examples/segmentation.py --grad-checkpointing --amp bf16 --layer-decay 0.8
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassJaccardIndex
from torchvision.utils import make_grid
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import CLASSES, ShapesDataset, masks_to_semantic

from backbones import create_backbone, create_model, param_groups

DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "segmentation.png"
PALETTE = torch.tensor([[0, 0, 0], [230, 60, 60], [60, 200, 60], [60, 90, 230]]) / 255.0
COLUMNS = ("image", "truth", "prediction")
PADDING = 2  # px between the pictures of the grid
LINE = 14  # px per line of text above the grid


def _semantic_batch(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, Tensor]:
    images = torch.stack([image for image, _ in batch])
    labels = torch.stack([masks_to_semantic(t["masks"], t["labels"]) for _, t in batch])
    return images, labels


def build_model(backbone: str, head: str, grad_checkpointing: bool = False) -> nn.Module:
    """The segmentation model: deeplabv3 gets a stride-8 backbone, semantic_fpn levels 1..4."""
    if head == "deeplabv3":
        bb = create_backbone(
            backbone, output_stride=8, out_indices=(4,), grad_checkpointing=grad_checkpointing
        )
        return create_model(bb, head, num_classes=len(CLASSES), atrous_rates=(6, 12, 18))
    kwargs = {"grad_checkpointing": grad_checkpointing}
    return create_model(backbone, head, backbone_kwargs=kwargs, num_classes=len(CLASSES))


@torch.no_grad()
def mean_iou(model: nn.Module, loader: DataLoader) -> float:
    """mIoU over all classes, background included, on ``loader``."""
    model.eval()
    metric = MulticlassJaccardIndex(num_classes=len(CLASSES), average="macro")
    for images, labels in loader:
        metric.update(model(images).argmax(1), labels)
    return float(metric.compute())


def _header(width: int, tile: int) -> Image.Image:
    """Column titles over each column, then a key of the mask colours (wrapped to fit)."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    key: list[list[tuple[int, float]]] = [[]]  # per line: (class, x)
    x = float(PADDING)
    for label, name in enumerate(CLASSES):
        item = 12 + measure.textlength(name, font=font) + 8
        if key[-1] and x + item > width:
            key.append([])
            x = PADDING
        key[-1].append((label, x))
        x += item
    header = Image.new("RGB", (width, LINE * (1 + len(key)) + PADDING), "white")
    draw = ImageDraw.Draw(header)
    for column, title in enumerate(COLUMNS):
        start = PADDING + column * (tile + PADDING)
        draw.text((start + (tile - draw.textlength(title, font=font)) / 2, 1), title,
                  fill="black", font=font)  # fmt: skip
    for row, line in enumerate(key, start=1):
        y = row * LINE + 1
        for label, left in line:
            colour = tuple(int(c) for c in (PALETTE[label] * 255).round().tolist())
            draw.rectangle((left, y + 2, left + 9, y + 10), fill=colour, outline="grey")
            draw.text((left + 12, y), CLASSES[label], fill="black", font=font)
    return header


def save_predictions(model: nn.Module, images: Tensor, labels: Tensor, path: Path) -> int:
    """Rows of image, true mask, predicted mask, under column titles and a colour key.

    Returns the height of the header above the pictures, in pixels.
    """
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    rows = []
    for image, truth, guess in zip(images, labels, predicted, strict=True):
        rows += [image, PALETTE[truth].permute(2, 0, 1), PALETTE[guess].permute(2, 0, 1)]
    # White gaps: the masks' background is black.
    grid = make_grid(torch.stack(rows), nrow=len(COLUMNS), padding=PADDING, pad_value=1.0)
    pictures = Image.fromarray(
        (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    )
    header = _header(pictures.width, images.shape[-1])
    canvas = Image.new("RGB", (pictures.width, header.height + pictures.height), "white")
    canvas.paste(header, (0, 0))
    canvas.paste(pictures, (0, header.height))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return header.height


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet18", help="a registered backbone name")
    heads = ["semantic_fpn", "deeplabv3", "upernet"]
    parser.add_argument("--head", default="semantic_fpn", choices=heads, help="segmentation head")
    parser.add_argument("--steps", type=int, default=150, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--image-size", type=int, default=96, help="square image side in pixels")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--val-size", type=int, default=16, help="held-out images for mIoU")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG of predictions")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data and init)")
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="recompute the backbone's blocks"
    )
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="CPU autocast")
    parser.add_argument("--layer-decay", type=float, default=None, help="per-stage lr factor")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train = ShapesDataset(
        length=args.steps * args.batch_size, image_size=args.image_size, seed=args.seed
    )
    val = ShapesDataset(length=args.val_size, image_size=args.image_size, seed=args.seed + 1)
    train_loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, collate_fn=_semantic_batch
    )
    val_loader = DataLoader(val, batch_size=8, collate_fn=_semantic_batch)

    model = build_model(args.backbone, args.head, args.grad_checkpointing)
    miou_before = mean_iou(model, val_loader)
    groups = param_groups(model, lr=args.lr, weight_decay=1e-4, layer_decay=args.layer_decay)
    optimizer = torch.optim.AdamW(groups)
    peaks = [g["lr"] for g in groups]  # OneCycle keeps each group's layer-decayed rate
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, peaks, total_steps=args.steps)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16")
    losses: list[float] = []
    model.train()
    for images, labels in tqdm(train_loader, total=args.steps, desc="segmentation"):
        with amp:
            logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    miou_after = mean_iou(model, val_loader)

    images, labels = next(iter(val_loader))
    header_height = save_predictions(model, images[:4], labels[:4], args.out)
    window = max(1, min(10, len(losses) // 3))
    result = {
        "miou_before": miou_before,
        "miou_after": miou_after,
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "png": str(args.out),
        "header_height": header_height,
        "seconds": time.perf_counter() - started,
    }
    print(f"mIoU before training: {miou_before:.3f}, after {args.steps} steps: {miou_after:.3f}")
    print(
        f"mean loss, first {window} steps {result['loss_first']:.3f}, "
        f"last {window} steps {result['loss_last']:.3f}; predictions saved to {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
