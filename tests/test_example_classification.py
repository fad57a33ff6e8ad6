"""examples/classification.py trains on an ImageFolder directory."""

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import classification


def test_classification_example_reads_an_image_folder(tmp_path: Path):
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (40, 40), tuple(max(0, c - 5 * i) for c in colour)).save(
                tmp_path / name / f"{i}.png"
            )
    result = classification.main(
        [
            "--data",
            str(tmp_path),
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--val-size",
            "4",
        ]
    )
    assert result["loss_last"] < result["loss_first"]
