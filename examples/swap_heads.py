"""One backbone, three heads sharing its weights, and the freeze-backbone recipe.

1. Builds one resnet18 backbone and puts a classification, an FPN (detection neck) and a
   semantic_fpn head on it: the three models share the backbone's parameters.
2. Swaps a model's head in place (``model.head = create_head(...)``).
3. Freezes the backbone and trains only a new classification head on synthetic shapes,
   checking that the backbone's weights and BatchNorm statistics did not move.

The frozen backbone needs useful weights: pass ``--backbone-weights`` (for example a file
written by ``examples/classification.py --save``), or the example first trains the whole
classifier for ``--pretrain-steps`` as a stand-in for pretrained weights.

    python examples/swap_heads.py
    python examples/classification.py --save backbone.safetensors
    python examples/swap_heads.py --backbone-weights backbone.safetensors
"""

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classification import SingleShapes

from backbones import create_backbone, create_head, create_model


def _train(
    model: nn.Module,
    parameters: Iterator[nn.Parameter],
    data: SingleShapes,
    batch_size: int,
    lr: float,
    desc: str,
) -> list[float]:
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    losses: list[float] = []
    model.train()
    for images, labels in tqdm(DataLoader(data, batch_size=batch_size), desc=desc):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet18", help="a registered backbone name")
    parser.add_argument(
        "--backbone-weights", type=Path, default=None, help="weights file; none pretrains first"
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=300, help="backbone pretraining steps"
    )
    parser.add_argument("--steps", type=int, default=60, help="head-only training steps")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--image-size", type=int, default=64, help="square image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data and init)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    # Any weights file works here: save_backbone's, torchvision's, timm's, mmdet's, ...
    backbone = create_backbone(args.backbone, pretrained=args.backbone_weights or False)
    info = backbone.feature_info
    classifier = create_model(backbone, "classification", num_classes=10)
    detector_neck = create_model(backbone, "fpn")
    segmenter = create_model(backbone, "semantic_fpn", num_classes=4)
    shared = all(m.backbone is backbone for m in (classifier, detector_neck, segmenter))
    x = torch.randn(2, 3, args.image_size, args.image_size)
    with torch.no_grad():
        print(f"one backbone, shared by three models: {shared}")
        print(f"  classification -> {tuple(classifier.eval()(x).shape)}")
        print(f"  fpn            -> {[tuple(v.shape) for v in detector_neck.eval()(x).values()]}")
        print(f"  semantic_fpn   -> {tuple(segmenter.eval()(x).shape)}")

    if args.backbone_weights is None:  # stand-in for pretrained weights: train it on the shapes
        data = SingleShapes(args.pretrain_steps * args.batch_size, args.image_size, args.seed)
        classifier.head = create_head("classification", feature_info=info, num_classes=3)
        _train(classifier, classifier.parameters(), data, args.batch_size, 2e-3, "pretrain")

    # Swap in a fresh head, freeze the backbone, and train the head alone.
    classifier.head = create_head("classification", feature_info=info, num_classes=3)
    classifier.freeze_backbone().train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    data = SingleShapes(args.steps * args.batch_size, args.image_size, args.seed + 1)
    head_parameters = classifier.head.parameters()
    losses = _train(classifier, head_parameters, data, args.batch_size, 1e-2, "head only")
    after = backbone.state_dict()
    backbone_unchanged = all(torch.equal(before[k], after[k]) for k in before)
    window = max(1, min(10, len(losses) // 3))
    result = {
        "shared": shared,
        "backbone_unchanged": backbone_unchanged,
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
    }
    print(
        f"head-only training: loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}; "
        f"backbone weights and BN statistics unchanged: {backbone_unchanged}"
    )
    return result


if __name__ == "__main__":
    main()
