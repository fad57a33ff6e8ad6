"""Checkpoint formats: torchvision, timm, mmdet, Lightning, detectron2; detection and report.

Each test writes a checkpoint the way that library lays it out (random weights, random
BatchNorm statistics), loads it with ``create_backbone(..., pretrained=path)`` and
compares features with the source model, so a wrong key mapping cannot pass.
"""

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from helpers import max_abs_diff, randomize_norm_stats
from torchvision.models._utils import IntermediateLayerGetter

from backbones import UnknownNameError, create_backbone
from backbones.weights import FORMATS, WeightsLoadError, detect_format

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tv18() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norm_stats(torchvision.models.resnet18()).eval()


def _tv_features(model: torch.nn.Module) -> list[torch.Tensor]:
    layers = {f"layer{i}": str(i) for i in range(1, 5)}
    with torch.no_grad():
        return list(IntermediateLayerGetter(model, layers)(X).values())


def _ours(name: str, path: Path, **options) -> tuple[list[torch.Tensor], object]:
    bb = create_backbone(name, pretrained=path, **options).eval()
    with torch.no_grad():
        return bb(X), bb.pretrained_report


def test_torchvision_checkpoint_reproduces_torchvision_features(tmp_path: Path, tv18):
    torch.save(tv18.state_dict(), tmp_path / "resnet18.pth")
    features, report = _ours("resnet18", tmp_path / "resnet18.pth")
    assert max_abs_diff(features, _tv_features(tv18)) < 1e-5
    assert report.format == "torchvision" and report.ok
    assert report.dropped == {"classifier or another model part": ["fc.weight", "fc.bias"]}
    assert len(report.loaded) == len(tv18.state_dict()) - 2


def test_timm_deep_stem_checkpoint_reproduces_timm_features(tmp_path: Path):
    torch.manual_seed(0)
    reference = randomize_norm_stats(timm.create_model("resnet50d")).eval()
    torch.save({"state_dict_ema": reference.state_dict(), "epoch": 3}, tmp_path / "r50d.pth")
    features, report = _ours("resnet50d", tmp_path / "r50d.pth", out_indices=(0, 1, 2))
    expected = timm.create_model("resnet50d", features_only=True, out_indices=(0, 1, 2))
    expected.load_state_dict(reference.state_dict(), strict=False)
    with torch.no_grad():
        assert max_abs_diff(features, expected.eval()(X)) < 1e-4
    assert report.format == "timm"
    assert report.ok and "stage not built (see out_indices)" in report.dropped


def test_mmdet_checkpoint_with_deep_stem_maps_stem_keys(tmp_path: Path):
    torch.manual_seed(0)
    reference = randomize_norm_stats(timm.create_model("resnet50d")).eval()
    stem = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4"}
    stem |= {"conv1.6": "stem.6", "bn1": "stem.7"}
    state = {}
    for key, value in reference.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state["backbone." + stem.get(module, module) + "." + leaf] = value
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    state["rpn_head.rpn_cls.weight"] = torch.zeros(1)
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": state}, tmp_path / "mm.pth")
    features, report = _ours("resnet50d", tmp_path / "mm.pth", out_indices=(1,))
    with torch.no_grad():
        expected = reference.layer1(
            reference.maxpool(reference.act1(reference.bn1(reference.conv1(X))))
        )
    assert max_abs_diff(features, [expected]) < 1e-4
    assert report.format == "mmdet" and report.ok
    dropped = report.dropped["classifier or another model part"]
    assert {"neck.lateral_convs.0.conv.weight", "rpn_head.rpn_cls.weight"} <= set(dropped)


def test_lightning_checkpoint_strips_the_module_attribute(tmp_path: Path, tv18):
    state = {"model." + k: v for k, v in tv18.state_dict().items()}
    checkpoint = {"state_dict": state, "pytorch-lightning_version": "2.4.0", "global_step": 9}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    features, report = _ours("resnet18", tmp_path / "last.ckpt")
    assert max_abs_diff(features, _tv_features(tv18)) < 1e-5
    assert report.format == "lightning" and report.ok


def _detectron2_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A torchvision ResNet's weights under detectron2's names, as numpy arrays."""
    renames = [
        (r"^conv1\.", "stem.conv1."),
        (r"^bn1\.", "stem.conv1.norm."),
        (r"^layer(\d)\.", lambda m: f"res{int(m[1]) + 1}."),
        (r"\.bn(\d)\.", r".conv\1.norm."),
        (r"\.downsample\.0\.", ".shortcut."),
        (r"\.downsample\.1\.", ".shortcut.norm."),
    ]
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out["backbone.bottom_up." + key] = value.numpy()
    out["backbone.fpn_lateral2.weight"] = np.zeros((4, 4, 1, 1), dtype=np.float32)
    out["roi_heads.box_predictor.cls_score.weight"] = np.zeros((2, 4), dtype=np.float32)
    return out


def test_detectron2_pkl_is_refused_then_converted_and_loaded(tmp_path: Path, tv18):
    pkl = tmp_path / "model_final.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": _detectron2_state(tv18), "__author__": "Detectron2"}, f)
    with pytest.raises(ValueError, match=r"python -m backbones convert"):
        create_backbone("resnet18", pretrained=pkl)

    out = tmp_path / "r18.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "backbones", "convert", str(pkl), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "100 backbone tensors (2 other entries left out)" in result.stdout
    features, report = _ours("resnet18", out)
    assert max_abs_diff(features, _tv_features(tv18)) < 1e-5
    assert report.ok


def test_detectron2_torch_checkpoint_is_detected_and_loaded(tmp_path: Path, tv18):
    state = {k: torch.from_numpy(v) for k, v in _detectron2_state(tv18).items()}
    torch.save({"model": state, "iteration": 90000}, tmp_path / "model_final.pth")
    features, report = _ours("resnet18", tmp_path / "model_final.pth")
    assert max_abs_diff(features, _tv_features(tv18)) < 1e-5
    assert report.format == "detectron2" and report.ok


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_conversion_refuses_pickles_with_other_objects(tmp_path: Path):
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"model": {"conv1.weight": _Evil()}}))
    result = subprocess.run(
        [sys.executable, "-m", "backbones", "convert", str(pkl), str(tmp_path / "o.st")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "refusing to unpickle builtins.print" in result.stderr
    assert "this must never run" not in result.stdout + result.stderr


def test_torchvision_detector_checkpoint_loads_its_backbone(tmp_path: Path):
    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None
    )
    torch.save(detector.state_dict(), tmp_path / "frcnn.pth")
    bb = create_backbone("resnet50", pretrained=tmp_path / "frcnn.pth")
    report = bb.pretrained_report
    assert report.ok
    body = detector.backbone.body.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in bb.state_dict().items())
    assert any(k.startswith("fpn.") for k in report.dropped["outside 'body.'"])


def test_detection_picks_each_format():
    tensor = torch.zeros(1)
    assert detect_format({"conv1.weight": tensor}) == "torchvision"
    assert detect_format({"state_dict": {"x": tensor}, "state_dict_ema": {"x": tensor}}) == "timm"
    assert detect_format({"meta": {}, "state_dict": {"backbone.conv1.weight": tensor}}) == "mmdet"
    assert detect_format({"state_dict": {}, "pytorch-lightning_version": "2.0"}) == "lightning"
    assert detect_format({"model": {"backbone.bottom_up.res2.0.conv1.weight": tensor}}) == (
        "detectron2"
    )
    assert set(FORMATS) == {"torchvision", "timm", "mmdet", "lightning", "detectron2"}


def test_format_override_and_unknown_format(tmp_path: Path, tv18):
    state = {"backbone." + k: v for k, v in tv18.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")  # would be detected as mmdet
    bb = create_backbone(
        "resnet18", pretrained=tmp_path / "ckpt.pth", pretrained_format="lightning"
    )
    assert bb.pretrained_report.format == "lightning (given)" and bb.pretrained_report.ok
    with pytest.raises(UnknownNameError, match=r"unknown checkpoint format 'mmdett'.*'mmdet'"):
        create_backbone("resnet18", pretrained=tmp_path / "ckpt.pth", pretrained_format="mmdett")


def test_strict_failure_changes_nothing_and_reports_every_problem(tmp_path: Path, tv18):
    state = dict(tv18.state_dict())
    del state["layer4.1.conv2.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsLoadError) as info:
        create_backbone("resnet18", pretrained=tmp_path / "bad.pth")
    message = str(info.value)
    assert "nothing was loaded" in message
    assert "missing 1 keys: layer4.1.conv2.weight" in message
    assert "unexpected 1 keys: extra.weight" in message
    assert (
        "shape mismatch layer1.0.conv1.weight: backbone (64, 64, 3, 3), "
        "checkpoint (64, 64, 1, 1)" in message
    )
    assert "pretrained_strict=False" in message


def test_non_strict_loads_what_fits_and_logs_the_rest(tmp_path: Path, tv18, caplog):
    state = dict(tv18.state_dict())
    del state["layer4.1.conv2.weight"]
    torch.save(state, tmp_path / "partial.pth")
    fresh = create_backbone("resnet18")
    with caplog.at_level("WARNING", logger="backbones.weights"):
        bb = create_backbone(
            "resnet18", pretrained=tmp_path / "partial.pth", pretrained_strict=False
        )
    assert bb.pretrained_report.missing == ["layer4.1.conv2.weight"]
    assert torch.equal(bb.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert bb.state_dict()["layer4.1.conv2.weight"].shape == fresh.layer4[1].conv2.weight.shape
    assert "missing 1 keys: layer4.1.conv2.weight" in caplog.text


def test_loading_into_a_built_model_is_atomic(tmp_path: Path, tv18):
    from backbones.weights import load_pretrained

    state = dict(tv18.state_dict())
    state["layer4.1.bn2.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    bb = create_backbone("resnet18")
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with pytest.raises(WeightsLoadError):
        load_pretrained(bb, tmp_path / "bad.pth")
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
