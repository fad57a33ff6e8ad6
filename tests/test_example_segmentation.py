"""examples/segmentation.py learns: the loss falls and the picture is written."""

import sys
from pathlib import Path

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
    with Image.open(out) as image:
        assert image.size == (3 * 64 + 4 * 2, 4 * 64 + 5 * 2)  # 3 columns x 4 rows, 2 px padding
