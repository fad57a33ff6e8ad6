"""torchvision's detection checkpoints load strictly into the same detectors on our backbone.

torchvision's detectors hold the trunk as ``backbone.body.*`` and the FPN as
``backbone.fpn.*``; ours are ``backbone.backbone.*`` and ``backbone.head.fpn.*``. The
checkpoints here are written by torchvision's own builders (random weights, random
BatchNorm statistics, saved to a file and read back), and must give the same features
and the same detections.
"""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import randomize_norm_stats
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from backbones import create_backbone, create_head, create_model

SIZE = 128
# Keep every detection: random weights score below the builders' default thresholds.
RCNN = {"box_score_thresh": 0.0}
DENSE = {"score_thresh": 0.0}

# builder, detector class, options for both, our out_indices and extra_blocks, as in
# torchvision's builders (RetinaNet v1 and FCOS: returned_layers [2, 3, 4] and
# LastLevelP6P7(256, 256); the R-CNNs: all four layers and LastLevelMaxPool).
BUILDERS: dict[str, tuple[Callable[..., nn.Module], type, dict, tuple[int, ...], str]] = {
    "fasterrcnn_resnet50_fpn": (
        detection.fasterrcnn_resnet50_fpn,
        detection.FasterRCNN,
        {"num_classes": 91, **RCNN},
        (1, 2, 3, 4),
        "maxpool",
    ),
    "maskrcnn_resnet50_fpn": (
        detection.maskrcnn_resnet50_fpn,
        detection.MaskRCNN,
        {"num_classes": 91, **RCNN},
        (1, 2, 3, 4),
        "maxpool",
    ),
    "keypointrcnn_resnet50_fpn": (
        detection.keypointrcnn_resnet50_fpn,
        detection.KeypointRCNN,
        {"num_classes": 2, "num_keypoints": 17, **RCNN},
        (1, 2, 3, 4),
        "maxpool",
    ),
    "retinanet_resnet50_fpn": (
        detection.retinanet_resnet50_fpn,
        detection.RetinaNet,
        {"num_classes": 91, **DENSE},
        (2, 3, 4),
        "p6p7",
    ),
    "fcos_resnet50_fpn": (
        detection.fcos_resnet50_fpn,
        detection.FCOS,
        {"num_classes": 91, **DENSE},
        (2, 3, 4),
        "p6p7",
    ),
}


def _randomize_frozen_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random statistics for FrozenBatchNorm2d, which helpers.randomize_norm_stats skips."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def _saved_and_read_back(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    torch.save(model.state_dict(), path)
    return torch.load(path, weights_only=True)


def _ours(name: str, **backbone_kwargs) -> nn.Module:
    _, detector, options, out_indices, extra = BUILDERS[name]
    fpn = create_model(
        "resnet50",
        "fpn",
        backbone_kwargs={"out_indices": out_indices, **backbone_kwargs},
        extra_blocks=extra,
    )
    return detector(fpn, min_size=SIZE, max_size=SIZE, **options).eval()


def _run(detector: nn.Module, image: torch.Tensor) -> tuple[dict, dict]:
    with torch.no_grad():
        return detector.backbone(image[None]), detector([image])[0]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_torchvision_detection_checkpoint_loads_strictly_with_identical_outputs(
    name: str, tmp_path: Path
):
    torch.manual_seed(0)
    builder, _, options, _, _ = BUILDERS[name]
    reference = builder(
        weights=None, weights_backbone=None, min_size=SIZE, max_size=SIZE, **options
    )
    randomize_norm_stats(reference).eval()
    state = _saved_and_read_back(reference, tmp_path / f"{name}.pth")
    assert any(k.startswith("backbone.body.") for k in state)

    ours = _ours(name)
    result = ours.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ref_features, ref_detections = _run(reference, image)
    features, detections = _run(ours, image)
    assert list(features) == list(ref_features)
    for key in ref_features:
        assert torch.equal(features[key], ref_features[key]), key
    assert len(ref_detections["boxes"]) > 0
    assert set(detections) == set(ref_detections)
    for key in ref_detections:
        assert torch.equal(detections[key], ref_detections[key]), key


def _frozen_batchnorm_faster_rcnn() -> nn.Module:
    """What fasterrcnn_resnet50_fpn builds when given weights: FrozenBatchNorm2d throughout."""
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    model = detection.FasterRCNN(backbone, min_size=SIZE, max_size=SIZE, num_classes=91, **RCNN)
    return _randomize_frozen_norms(model).eval()


def test_frozen_batchnorm_checkpoint_loads_into_either_norm_layer(tmp_path: Path):
    # torchvision's pretrained detectors (the COCO checkpoints) use FrozenBatchNorm2d,
    # whose state has no num_batches_tracked; a BatchNorm2d model still loads it strictly.
    torch.manual_seed(0)
    reference = _frozen_batchnorm_faster_rcnn()
    state = _saved_and_read_back(reference, tmp_path / "frozen.pth")
    assert not any(k.endswith("num_batches_tracked") for k in state)
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ref_features, ref_detections = _run(reference, image)

    frozen = _ours("fasterrcnn_resnet50_fpn", norm_layer="frozen_batchnorm")
    frozen.load_state_dict(state, strict=True)
    features, detections = _run(frozen, image)
    assert all(torch.equal(features[k], ref_features[k]) for k in ref_features)
    assert all(torch.equal(detections[k], ref_detections[k]) for k in ref_detections)

    plain = _ours("fasterrcnn_resnet50_fpn")  # BatchNorm2d: same numbers up to rounding
    plain.load_state_dict(state, strict=True)
    features, _ = _run(plain, image)
    for key in ref_features:
        torch.testing.assert_close(features[key], ref_features[key], rtol=1e-4, atol=1e-3)


def test_batchnorm_checkpoint_loads_into_a_frozen_batchnorm_model():
    torch.manual_seed(0)
    reference = randomize_norm_stats(
        detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    )
    frozen = _ours("fasterrcnn_resnet50_fpn", norm_layer="frozen_batchnorm")
    result = frozen.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_our_own_state_dict_still_loads_and_the_parts_stay_swappable():
    torch.manual_seed(0)
    model = create_model("resnet18", "fpn")
    copy = create_model("resnet18", "fpn")
    copy.load_state_dict(model.state_dict(), strict=True)
    assert all(k.startswith(("backbone.", "head.")) for k in model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value)
    # the same renaming applies after a head swap: a torchvision classifier's fc goes to it
    copy.head = create_head("classification", feature_info=copy.feature_info, num_classes=10)
    classifier = torchvision.models.resnet18(num_classes=10)
    copy.load_state_dict(classifier.state_dict(), strict=True)
    assert torch.equal(copy.head.fc.weight, classifier.fc.weight)
    assert torch.equal(copy.backbone.conv1.weight, classifier.conv1.weight)


def test_torchvision_classification_and_segmentation_checkpoints_load_strictly():
    torch.manual_seed(0)
    classifier = randomize_norm_stats(torchvision.models.resnet18(num_classes=7)).eval()
    ours = create_model("resnet18", "classification", num_classes=7).eval()
    ours.load_state_dict(classifier.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), classifier(x))

    segmenter = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    )
    randomize_norm_stats(segmenter).eval()
    backbone = create_backbone("resnet50", output_stride=8, out_indices=(3, 4))
    ours = create_model(backbone, "fcn", num_classes=3, aux=True).eval()
    ours.load_state_dict(segmenter.state_dict(), strict=True)
    with torch.no_grad():
        got, expected = ours(x), segmenter(x)
    for key in ("out", "aux"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4)


def test_keys_that_match_nothing_are_still_reported():
    detector = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = create_model("resnet50", "classification")  # no fpn to take backbone.fpn.*
    state = {k[len("backbone.") :]: v for k, v in detector.state_dict().items()}
    state = {k: v for k, v in state.items() if k.startswith(("body.", "fpn."))}
    result = ours.load_state_dict(state, strict=False)
    assert result.unexpected_keys and all(k.startswith("fpn.") for k in result.unexpected_keys)
    assert result.missing_keys == ["head.fc.weight", "head.fc.bias"]
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"fpn\."):
        ours.load_state_dict(state, strict=True)
