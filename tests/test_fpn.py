"""The fpn head: torchvision's BackboneWithFPN contract, and its detectors training on it."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import randomize_norm_stats
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from backbones import create_backbone, create_head, create_model

SIZE = 128


def _torchvision_fpn(extra: str, returned: tuple[int, ...]) -> BackboneWithFPN:
    resnet = randomize_norm_stats(torchvision.models.resnet18())
    extra_block = LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(256, 256)
    return BackboneWithFPN(
        resnet,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned)},
        in_channels_list=[64 * 2 ** (k - 1) for k in returned],
        out_channels=256,
        extra_blocks=extra_block,
    )


@pytest.mark.parametrize(("extra", "returned"), [("maxpool", (1, 2, 3, 4)), ("p6p7", (2, 3, 4))])
def test_fpn_model_equals_torchvision_backbone_with_fpn(extra: str, returned: tuple[int, ...]):
    torch.manual_seed(0)
    reference = _torchvision_fpn(extra, returned).eval()
    model = create_model(
        "resnet18", "fpn", backbone_kwargs={"out_indices": returned}, extra_blocks=extra
    ).eval()
    body = {
        k[len("body.") :]: v for k, v in reference.state_dict().items() if k.startswith("body.")
    }
    model.backbone.load_state_dict(body, strict=True)
    fpn = {k: v for k, v in reference.state_dict().items() if k.startswith("fpn.")}
    model.head.load_state_dict(fpn, strict=True)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert list(ours) == list(theirs)
    assert model.out_channels == reference.out_channels == 256
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-4)


def test_fpn_keys_follow_the_returned_levels():
    model = create_model("resnet18", "fpn", extra_blocks=None, out_channels=64)
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3"]
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 64, 16, 16),
        (1, 64, 8, 8),
        (1, 64, 4, 4),
        (1, 64, 2, 2),
    ]


def test_fpn_rejects_unknown_extra_blocks():
    bb = create_backbone("resnet18", out_indices=(1,))
    with pytest.raises(ValueError, match=r"extra_blocks='p6' is not supported; accepted"):
        create_head("fpn", feature_info=bb.feature_info, extra_blocks="p6")


def test_a_head_without_out_channels_has_none_to_expose():
    model = create_model("resnet18", "classification", num_classes=2)
    with pytest.raises(AttributeError, match="out_channels"):
        _ = model.out_channels


# -- torchvision's detectors take create_model(..., "fpn") as their backbone ----------------


def _targets(with_masks: bool = False, keypoints: int = 0) -> list[dict[str, torch.Tensor]]:
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 40.0, 120.0, 100.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    if with_masks:
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        masks[0, 12:70, 10:60] = 1
        masks[1, 40:100, 70:120] = 1
        target["masks"] = masks
    if keypoints:
        points = torch.rand(2, keypoints, 2) * 40 + boxes[:, None, :2]
        target["keypoints"] = torch.cat([points, torch.ones(2, keypoints, 1)], dim=2)
    return [target, {k: v.clone() for k, v in target.items()}]


def _fpn(out_indices: tuple[int, ...] = (1, 2, 3, 4), extra: str = "maxpool") -> nn.Module:
    return create_model(
        "resnet18", "fpn", backbone_kwargs={"out_indices": out_indices}, extra_blocks=extra
    )


DETECTORS: dict[str, tuple[Callable[[], nn.Module], dict]] = {
    "faster_rcnn": (lambda: FasterRCNN(_fpn(), num_classes=3), {}),
    "mask_rcnn": (lambda: MaskRCNN(_fpn(), num_classes=3), {"with_masks": True}),
    "keypoint_rcnn": (
        lambda: KeypointRCNN(_fpn(), num_classes=3, num_keypoints=4),
        {"keypoints": 4},
    ),
    "retinanet": (lambda: RetinaNet(_fpn((2, 3, 4), "p6p7"), num_classes=3), {}),
    "fcos": (lambda: FCOS(_fpn((2, 3, 4), "p6p7"), num_classes=3), {}),
}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_torchvision_detector_trains_and_predicts_on_our_fpn(name: str):
    torch.manual_seed(0)
    build, target_options = DETECTORS[name]
    detector = build()
    detector.transform.min_size, detector.transform.max_size = (SIZE,), SIZE
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)]
    conv1 = detector.backbone.backbone.conv1.weight

    detector.train()
    losses = detector(images, _targets(**target_options))
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = conv1.detach().clone()
    total.backward()
    assert conv1.grad is not None and conv1.grad.abs().sum() > 0
    torch.optim.SGD(detector.parameters(), lr=0.01).step()
    assert not torch.equal(before, conv1.detach())

    detector.eval()
    with torch.no_grad():
        predictions = detector(images)
    assert len(predictions) == 2
    assert {"boxes", "labels", "scores"} <= set(predictions[0])
    assert predictions[0]["boxes"].shape[-1] == 4


# -- freezing as torchvision's resnet_fpn_backbone(trainable_layers=t) ---------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_equivalent_of_trainable_layers(t: int) -> dict:
    """The create_backbone options the README gives for torchvision's trainable_layers=t."""
    text = " ".join(README.read_text().split())
    match = re.search(
        r"`([^`]*frozen_stages=4 - t)` for `t` in 0\.\.4, and `([^`]*frozen_stages=-1)` for `t=5`",
        text,
    )
    assert match, "README no longer states the equivalent of trainable_layers"
    options = match.group(1) if t < 5 else match.group(2)
    return eval(f"dict({options})", {"__builtins__": {}, "dict": dict, "t": t})


def _norms(model: nn.Module, rename: Callable[[str], str]) -> dict[str, tuple[str, bool]]:
    """{name: (type, updates statistics in train mode)} for every norm module."""
    return {
        rename(name): (type(m).__name__, isinstance(m, _BatchNorm) and m.training)
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm | FrozenBatchNorm2d)
    }


def _trainable(model: nn.Module, rename: Callable[[str], str]) -> set[str]:
    return {rename(name) for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("t", range(6))
def test_readme_equivalent_of_trainable_layers_trains_what_torchvision_trains(t: int):
    options = _readme_equivalent_of_trainable_layers(t)
    reference = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=t
    ).train()
    model = create_model("resnet50", "fpn", backbone_kwargs=options).train()
    backbone = create_backbone("resnet50", **options).train()

    def as_model(name: str) -> str:  # torchvision's BackboneWithFPN names -> ours
        return re.sub(r"^body\.", "backbone.", re.sub(r"^fpn\.", "head.fpn.", name))

    def as_backbone(name: str) -> str:
        return name.removeprefix("body.")

    assert _trainable(model, str) == _trainable(reference, as_model)
    body = {n for n in _trainable(reference, str) if n.startswith("body.")}
    assert _trainable(backbone, str) == {as_backbone(n) for n in body}
    reference_norms = _norms(reference, as_model)
    assert _norms(model, str) == reference_norms
    assert not any(updates for _, updates in reference_norms.values())
    assert _norms(backbone, lambda n: f"backbone.{n}") == {
        k: v for k, v in reference_norms.items() if k.startswith("backbone.")
    }

    # Same weights, train mode: the same features (no statistics move on either side).
    model.load_state_dict(reference.state_dict(), strict=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    ours, theirs = model(x), reference(x)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
