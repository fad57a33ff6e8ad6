"""examples/classification.py and examples/swap_heads.py learn: held-out accuracy and loss."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from backbones import load_backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import classification
import swap_heads


def test_classification_example_reads_an_image_folder(tmp_path: Path):
    rng = np.random.default_rng(0)
    for name, colour in {"reddish": (200, 60, 60), "bluish": (60, 60, 200)}.items():
        (tmp_path / name).mkdir()
        for i in range(24):
            pixels = rng.normal(colour, 40.0, size=(40, 40, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    args = ["--data", str(tmp_path), "--epochs", "4", "--batch-size", "8", "--val-size", "8"]
    result = classification.main([*args, "--image-size", "32"])
    assert result["loss_last"] < 0.5 * result["loss_first"]
    assert result["accuracy_after"] >= 0.75


def test_shapes_classifier_learns_then_a_new_head_learns_on_its_frozen_backbone(tmp_path: Path):
    weights = tmp_path / "backbone.safetensors"
    small = ["--image-size", "48", "--batch-size", "8"]
    run = ["--steps", "300", "--lr", "3e-3", "--save", str(weights)]
    result = classification.main([*small, *run])
    # Three classes: chance is 1/3 and the loss of a uniform guess is ln 3 = 1.10.
    assert result["accuracy_after"] >= 0.7 > 0.4 > result["accuracy_before"]
    assert result["loss_last"] < 0.5 * result["loss_first"]
    saved = load_backbone(weights)  # save_backbone's file rebuilds the backbone alone
    assert saved.backbone_config["name"] == "resnet18"
    assert "layer4.1.conv2.weight" in saved.state_dict()

    swapped = swap_heads.main([*small, "--steps", "40", "--backbone-weights", str(weights)])
    assert swapped["shared"] and swapped["backbone_unchanged"]
    assert swapped["loss_last"] < 0.8 * swapped["loss_first"]
