"""examples/segmentation.py learns: the loss falls and the picture is written."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import segmentation


@pytest.mark.parametrize("head", ["semantic_fpn", "deeplabv3"])
def test_segmentation_example_learns(tmp_path: Path, head: str):
    out = tmp_path / "seg.png"
    result = segmentation.main(
        [
            "--head",
            head,
            "--steps",
            "30",
            "--batch-size",
            "4",
            "--image-size",
            "64",
            "--val-size",
            "8",
            "--out",
            str(out),
        ]
    )
    # stated margin: the last steps' mean loss is at least 30% below the first steps'
    assert result["loss_last"] < 0.7 * result["loss_first"]
    assert 0.0 <= result["miou_before"] <= 1.0 and 0.0 <= result["miou_after"] <= 1.0
    header = result["header_height"]
    assert 2 * segmentation.LINE <= header <= 5 * segmentation.LINE
    with Image.open(out) as image:
        # column titles and a colour key, then 3 columns x 4 rows with 2 px padding
        assert image.size == (3 * 64 + 4 * 2, header + 4 * 64 + 5 * 2)
        titles = np.asarray(image.convert("L"))[: segmentation.LINE]
    assert segmentation.COLUMNS == ("image", "truth", "prediction")
    for column in range(3):  # each column has its title (dark text) above it
        left = 2 + column * (64 + 2)
        assert (titles[:, left : left + 64] < 128).sum() > 20, column


def test_segmentation_example_learns_with_checkpointing_bf16_and_layer_decay(tmp_path: Path):
    result = segmentation.main(
        [
            "--grad-checkpointing", "--amp", "bf16", "--layer-decay", "0.8",
            "--steps", "30", "--batch-size", "4", "--image-size", "64", "--val-size", "8",
            "--out", str(tmp_path / "seg.png"),
        ]
    )  # fmt: skip
    assert result["loss_last"] < 0.7 * result["loss_first"]
