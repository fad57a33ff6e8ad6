"""The shapes dataset and the Faster R-CNN example of examples/detection.py."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytest.importorskip("torchmetrics", reason="the detection example needs torchmetrics")
pytest.importorskip("pycocotools", reason="torchmetrics' mAP needs pycocotools")
pytest.importorskip("tqdm", reason="the detection example needs tqdm")


def _load(name: str) -> ModuleType:
    """Import examples/<name>.py (examples/ is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shapes() -> ModuleType:
    return _load("shapes")


def test_shapes_dataset_is_deterministic(shapes: ModuleType) -> None:
    first = shapes.ShapesDataset(length=8, image_size=96, seed=3)
    second = shapes.ShapesDataset(length=8, image_size=96, seed=3)
    other_seed = shapes.ShapesDataset(length=8, image_size=96, seed=4)
    for index in (0, 5, 7, 5):  # any order gives the same items
        image_a, target_a = first[index]
        image_b, target_b = second[index]
        assert torch.equal(image_a, image_b)
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(target_a[key], target_b[key])
    assert not torch.equal(first[0][0], other_seed[0][0])


def test_shapes_targets_are_consistent(shapes: ModuleType) -> None:
    size = 96
    dataset = shapes.ShapesDataset(length=40, image_size=size, seed=0)
    seen_labels: set[int] = set()
    for index in range(len(dataset)):
        image, target = dataset[index]
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        n = len(labels)
        assert 1 <= n <= 3
        assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {1, 2, 3}
        assert masks.shape == (n, size, size) and masks.dtype == torch.uint8
        assert set(masks.unique().tolist()) <= {0, 1}
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        for box, mask in zip(boxes, masks, strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            mask_box = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
            assert torch.allclose(box, mask_box, atol=1.0), (index, box, mask_box)
        # Visible parts of shapes do not overlap, and the semantic map agrees with them.
        assert masks.sum(0).max() <= 1
        semantic = shapes.masks_to_semantic(masks, labels)
        assert semantic.shape == (size, size) and semantic.dtype == torch.int64
        expected = (masks.long() * labels[:, None, None]).sum(0)
        assert torch.equal(semantic, expected)
        seen_labels.update(labels.tolist())
    assert seen_labels == {1, 2, 3}


def test_detection_example_learns(tmp_path: Path, shapes: ModuleType) -> None:
    from PIL import Image

    detection = _load("detection")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "det.png"
        result = detection.main(
            [
                "--steps", "40",
                "--batch-size", "4",
                "--image-size", "96",
                "--val-images", "8",
                "--out", str(out),
                "--quiet",
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    losses = result["losses"]
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    # Learning happened: the last 10 steps' mean loss is at least 20% below the first 10's.
    assert result["loss_last"] <= 0.8 * result["loss_first"], result
    assert 0.0 <= result["map50_before"] <= 1.0 and 0.0 <= result["map50_after"] <= 1.0

    assert result["png"] == out and out.is_file()
    with Image.open(out) as png:
        png.verify()
    legend = result["drawn"]["legend_height"]
    assert 10 <= legend <= 60
    with Image.open(out) as png:
        # A legend, then 8 images of 96 px in a grid of 4 columns, 4 px of padding around each.
        assert png.format == "PNG" and png.mode == "RGB"
        assert png.size == (4 * (96 + 4) + 4, legend + 2 * (96 + 4) + 4)
        pixels = torch.from_numpy(np.asarray(png.convert("RGB")).copy())

    # The picture shows every ground-truth box, and the top 3 predictions of every image
    # even though a 40-step detector scores them all low.
    shown = shapes.ShapesDataset(length=8, image_size=96, seed=10_000)  # the example's val set
    targets = [shown[i][1] for i in range(8)]
    assert result["drawn"]["ground_truth"] == sum(len(t["boxes"]) for t in targets)
    assert 8 <= result["drawn"]["predictions"] <= 3 * 8
    # Ground-truth boxes are dashed white and black: image 0's top edges are pure white or
    # pure black pixels, which its noisy background never is.
    top, left = legend + 4, 4
    for x1, y1, x2, _ in targets[0]["boxes"].tolist():
        best = 0.0
        for y in {math.floor(y1), round(y1), math.ceil(y1)}:
            row = pixels[top + y, left + math.ceil(x1) + 1 : left + math.floor(x2)]
            dashes = ((row == 0).all(1) | (row == 255).all(1)).float().mean().item()
            best = max(best, dashes)
        assert best > 0.9, (x1, y1, x2, best)


def test_detection_example_runs_on_a_zoo_backbone(tmp_path: Path) -> None:
    detection = _load("detection")
    result = detection.main(
        [
            "--backbone", "timm/convnext_atto",
            "--steps", "2",
            "--batch-size", "2",
            "--image-size", "64",
            "--val-images", "2",
            "--out", str(tmp_path / "det.png"),
            "--quiet",
        ]
    )  # fmt: skip
    assert len(result["losses"]) == 2 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert 0.0 <= result["map50_after"] <= 1.0
    assert (tmp_path / "det.png").is_file()


def test_detection_example_trains_with_checkpointing_bf16_and_layer_decay(tmp_path: Path) -> None:
    detection = _load("detection")
    result = detection.main(
        [
            "--backbone", "resnet18",
            "--grad-checkpointing", "--amp", "bf16", "--layer-decay", "0.8",
            "--steps", "3",
            "--batch-size", "2",
            "--image-size", "64",
            "--val-images", "2",
            "--out", str(tmp_path / "det.png"),
            "--quiet",
        ]
    )  # fmt: skip
    assert len(result["losses"]) == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
