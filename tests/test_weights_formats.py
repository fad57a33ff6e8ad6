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
from backbones.weights import (
    FORMATS,
    WeightsError,
    WeightsLoadError,
    convert_checkpoint,
    detect_format,
)
from backbones.weights.sources import read_checkpoint

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
        [sys.executable, "-m", "backbones", "convert", str(pkl), str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "refusing to unpickle builtins.print" in result.stderr
    assert "this must never run" not in result.stdout + result.stderr
    assert not (tmp_path / "o.safetensors").exists()


@pytest.fixture(scope="module")
def frcnn() -> torch.nn.Module:
    """torchvision's Faster R-CNN (random weights, random BatchNorm statistics)."""
    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None
    )
    return randomize_norm_stats(detector).eval()


def test_torchvision_detector_checkpoint_is_torchvision_format_and_loads_its_backbone(
    tmp_path: Path, frcnn: torch.nn.Module
):
    torch.save(frcnn.state_dict(), tmp_path / "frcnn.pth")
    bb = create_backbone("resnet50", pretrained=tmp_path / "frcnn.pth")
    report = bb.pretrained_report
    assert report.ok
    assert report.format == "torchvision"
    body = frcnn.backbone.body.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in bb.state_dict().items())
    # the detector's other parts are reported as dropped, under the prefix that was cut
    assert list(report.dropped) == ["outside 'backbone.body.'"]
    dropped = report.dropped["outside 'backbone.body.'"]
    expected = {k for k in frcnn.state_dict() if not k.startswith("backbone.body.")}
    assert set(dropped) == expected
    assert {k.split(".")[0] for k in dropped} == {"backbone", "rpn", "roi_heads"}
    assert all(k.startswith("backbone.fpn.") for k in dropped if k.startswith("backbone."))
    assert detect_format(frcnn.state_dict()) == "torchvision"


def test_detection_picks_each_format():
    tensor = torch.zeros(1)
    assert detect_format({"conv1.weight": tensor}) == "torchvision"
    assert detect_format({"state_dict": {"x": tensor}, "state_dict_ema": {"x": tensor}}) == "timm"
    assert detect_format({"meta": {}, "state_dict": {"backbone.conv1.weight": tensor}}) == "mmdet"
    assert detect_format({"state_dict": {}, "pytorch-lightning_version": "2.0"}) == "lightning"
    assert detect_format({"model": {"backbone.bottom_up.res2.0.conv1.weight": tensor}}) == (
        "detectron2"
    )
    assert detect_format({"backbone.body.conv1.weight": tensor}) == "torchvision"
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


# --- conversion: every format, written by suffix, loads strictly -------------------------


@pytest.fixture(scope="module")
def r50d() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norm_stats(timm.create_model("resnet50d")).eval()


@pytest.fixture(scope="module")
def r50d_features(r50d: torch.nn.Module) -> list[torch.Tensor]:
    expected = timm.create_model("resnet50d", features_only=True, out_indices=(1, 2, 3, 4))
    expected.load_state_dict(r50d.state_dict(), strict=False)
    with torch.no_grad():
        return expected.eval()(X)


def _mmdet_checkpoint(model: torch.nn.Module) -> dict:
    """A deep-stem ResNet as mmdet saves it: stem.0..7, 'backbone.', a neck and heads."""
    stem = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4"}
    stem |= {"conv1.6": "stem.6", "bn1": "stem.7"}
    state = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state["backbone." + stem.get(module, module) + "." + leaf] = value
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    state["rpn_head.rpn_cls.weight"] = torch.zeros(1)
    return {"meta": {"mmdet_version": "3.3.0"}, "state_dict": state}


CONVERTIBLE = [
    "torchvision",
    "timm",
    "mmdet",
    "lightning",
    "detectron2-pkl",
    "detectron2-pth",
    "torchvision-detector",
]


@pytest.fixture(scope="module")
def convertible(tv18, r50d, r50d_features, frcnn):
    """kind -> write(folder) -> (source file, backbone name, the source's features)."""
    with torch.no_grad():
        frcnn_features = list(frcnn.backbone.body(X).values())
    tv_features = _tv_features(tv18)

    def torchvision_(folder: Path):
        torch.save(tv18.state_dict(), folder / "r18.pth")
        return folder / "r18.pth", "resnet18", tv_features

    def timm_(folder: Path):
        torch.save({"state_dict_ema": r50d.state_dict(), "epoch": 3}, folder / "r50d.pth")
        return folder / "r50d.pth", "resnet50d", r50d_features

    def mmdet(folder: Path):
        torch.save(_mmdet_checkpoint(r50d), folder / "mm.pth")
        return folder / "mm.pth", "resnet50d", r50d_features

    def lightning(folder: Path):
        state = {"model." + k: v for k, v in tv18.state_dict().items()}
        checkpoint = {"state_dict": state, "pytorch-lightning_version": "2.4.0"}
        torch.save(checkpoint, folder / "last.ckpt")
        return folder / "last.ckpt", "resnet18", tv_features

    def detectron2_pkl(folder: Path):
        with open(folder / "model_final.pkl", "wb") as f:
            pickle.dump({"model": _detectron2_state(tv18), "__author__": "Detectron2"}, f)
        return folder / "model_final.pkl", "resnet18", tv_features

    def detectron2_pth(folder: Path):
        state = {k: torch.from_numpy(v) for k, v in _detectron2_state(tv18).items()}
        torch.save({"model": state, "iteration": 9}, folder / "model_final.pth")
        return folder / "model_final.pth", "resnet18", tv_features

    def detector(folder: Path):
        torch.save(frcnn.state_dict(), folder / "frcnn.pth")
        return folder / "frcnn.pth", "resnet50", frcnn_features

    writers = [torchvision_, timm_, mmdet, lightning, detectron2_pkl, detectron2_pth, detector]
    return dict(zip(CONVERTIBLE, writers, strict=True))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("kind", CONVERTIBLE)
def test_converted_file_loads_strictly_and_reproduces_the_source(
    tmp_path: Path, convertible, kind: str, suffix: str
):
    src, name, expected = convertible[kind](tmp_path)
    out = tmp_path / f"converted{suffix}"
    counts = convert_checkpoint(src, out)

    bb = create_backbone(name, pretrained=out).eval()  # strict
    with torch.no_grad():
        assert max_abs_diff(bb(X), expected) < 1e-4
    report = bb.pretrained_report
    assert report.ok and report.format == "torchvision"
    assert report.dropped == {}, "the converted file holds only the backbone's tensors"

    checkpoint, _ = read_checkpoint(out)
    assert counts["kept"] == len(checkpoint)
    ours = bb.state_dict()
    assert set(checkpoint) <= set(ours)
    assert all(k.endswith("num_batches_tracked") for k in set(ours) - set(checkpoint))
    # every tensor keeps its shape: BatchNorm's 0-d counter stays 0-d
    assert {k: tuple(v.shape) for k, v in checkpoint.items()} == {
        k: tuple(ours[k].shape) for k in checkpoint
    }
    if "detectron2" not in kind:
        assert checkpoint["layer1.0.bn1.num_batches_tracked"].shape == ()
    # the suffix picks the format: safetensors, or torch.save of a plain state dict
    with open(out, "rb") as f:
        head = f.read(4)
    assert (head == b"PK\x03\x04") is (suffix == ".pth")
    if suffix == ".pth":
        assert set(torch.load(out, weights_only=True)) == set(checkpoint)


def test_converting_a_detector_keeps_only_its_backbone(tmp_path: Path, frcnn):
    torch.save(frcnn.state_dict(), tmp_path / "frcnn.pth")
    counts = convert_checkpoint(tmp_path / "frcnn.pth", tmp_path / "r50.safetensors")
    checkpoint, metadata = read_checkpoint(tmp_path / "r50.safetensors")
    assert set(checkpoint) == set(frcnn.backbone.body.state_dict())
    assert counts == {
        "kept": len(frcnn.backbone.body.state_dict()),
        "dropped": len(frcnn.state_dict()) - len(frcnn.backbone.body.state_dict()),
    }
    assert metadata == {"converted_from": "torchvision"}


@pytest.mark.parametrize("dst", ["out.st", "out", "out.ckpt", "out.pkl"])
def test_convert_refuses_an_output_suffix_it_does_not_write(tmp_path: Path, tv18, dst: str):
    torch.save(tv18.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"\.safetensors \(recommended\) or \.pth/\.pt/\.bin"):
        convert_checkpoint(tmp_path / "r18.pth", tmp_path / dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pth"]


def test_convert_of_a_missing_file_is_a_weights_error_naming_it(tmp_path: Path):
    missing = tmp_path / "nowhere" / "model_final.pkl"
    with pytest.raises(WeightsError, match=re.escape(f"cannot convert {missing}: no such file")):
        convert_checkpoint(missing, tmp_path / "out.safetensors")
    with pytest.raises(WeightsError, match=r"is a folder, not a file"):
        convert_checkpoint(tmp_path, tmp_path / "out.safetensors")


def test_convert_into_a_missing_folder_names_it_and_leaves_nothing(tmp_path: Path, tv18):
    torch.save(tv18.state_dict(), tmp_path / "r18.pth")
    target = tmp_path / "no" / "such" / "r18.safetensors"
    with pytest.raises(WeightsError, match=re.escape(f"folder {tmp_path / 'no' / 'such'}")):
        convert_checkpoint(tmp_path / "r18.pth", target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pth"]


# --- a different architecture is named as such --------------------------------------------


def test_weights_of_another_architecture_say_so_in_the_first_line(tmp_path: Path, tv18):
    torch.save(tv18.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(WeightsLoadError) as info:
        create_backbone("resnet50", pretrained=tmp_path / "resnet18.pth")
    first, *rest = str(info.value).splitlines()
    assert first.startswith("these weights are for a different architecture: ")
    n_ours = len([k for k in create_backbone("resnet50").state_dict() if "num_batches" not in k])
    wrong = len(info.value.report.missing) + len(info.value.report.mismatched)
    assert f"{wrong} of the backbone's {n_ours} tensors" in first
    assert "the checkpoint has 2, 2, 2, 2 blocks in layer1, layer2, layer3, layer4" in first
    assert "the backbone 3, 4, 6, 3" in first
    assert "e.g. layer1.0.conv1.weight: backbone (64, 64, 1, 1), checkpoint (64, 64, 3, 3)" in first
    assert first.endswith("nothing was loaded:")
    # the full report follows
    assert rest[0].startswith("would have loaded ") and str(tmp_path / "resnet18.pth") in rest[0]
    assert any(line.startswith("  missing ") for line in rest)


def test_a_few_bad_keys_keep_the_plain_headline(tmp_path: Path, tv18):
    state = dict(tv18.state_dict())
    del state["layer4.1.conv2.weight"]
    torch.save(state, tmp_path / "almost.pth")
    with pytest.raises(WeightsLoadError, match=r"^weights do not fit the backbone; nothing"):
        create_backbone("resnet18", pretrained=tmp_path / "almost.pth")


def test_weights_of_another_depth_are_another_architecture_whatever_the_fraction(
    tmp_path: Path, tv18
):
    torch.save(tv18.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(WeightsLoadError) as info:
        create_backbone("resnet34", pretrained=tmp_path / "resnet18.pth")
    first = str(info.value).splitlines()[0]
    report = info.value.report
    n_ours = len([k for k in create_backbone("resnet34").state_dict() if "num_batches" not in k])
    assert 2 * len(report.missing) < n_ours  # under half missing: the fraction alone says no
    assert first.startswith("these weights are for a different architecture: ")
    assert f"{len(report.missing)} of the backbone's {n_ours} tensors" in first
    assert "the checkpoint has 2, 2, 2, 2 blocks in layer1, layer2, layer3, layer4" in first
    assert "the backbone 3, 4, 6, 3" in first


def test_a_checkpoint_without_some_stages_is_not_another_architecture(tmp_path: Path, tv18):
    state = {k: v for k, v in tv18.state_dict().items() if not k.startswith("layer4.")}
    torch.save(state, tmp_path / "no_layer4.pth")
    with pytest.raises(WeightsLoadError, match=r"^weights do not fit the backbone; nothing"):
        create_backbone("resnet18", pretrained=tmp_path / "no_layer4.pth")


# --- convert refuses a forced format that does not fit -----------------------------------


def test_convert_with_a_format_that_does_not_fit_writes_nothing_and_says_so(tmp_path: Path, tv18):
    pkl = tmp_path / "d2_r18.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": _detectron2_state(tv18)}, f)
    out = tmp_path / "o2.safetensors"
    with pytest.raises(WeightsError, match=r"read with the given format 'torchvision'") as info:
        convert_checkpoint(pkl, out, format="torchvision")
    message = str(info.value)
    assert "not a ResNet backbone under our names" in message
    assert "keys outside conv1/bn1/layer1..4, e.g. 'backbone.bottom_up.stem.conv1.weight'" in (
        message
    )
    assert "'roi_heads.box_predictor.cls_score.weight'" in message
    assert "Drop --format (format=) to detect the format, which gives 'detectron2'" in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [pkl.name]
    # the CLI says the same, and no "wrote ..." line
    result = subprocess.run(
        [sys.executable, "-m", "backbones", "convert", str(pkl), str(out), "--format", "timm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "wrote" not in result.stdout
    assert "read with the given format 'timm'" in result.stderr
    assert not out.exists()


def test_convert_refuses_a_checkpoint_that_is_not_a_resnet(tmp_path: Path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"read with the detected format 'torchvision'") as info:
        convert_checkpoint(tmp_path / "other.pth", tmp_path / "o.safetensors")
    message = str(info.value)
    assert "no stem convolution 'conv1.weight' or 'conv1.0.weight'; no 'layer1.' keys" in message
    assert "give it with --format (format=)" in message
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_of_a_pickle_with_objects_quotes_torch_without_terminal_codes(tmp_path: Path, tv18):
    import argparse

    src = tmp_path / "train.pth"
    torch.save({"state_dict": tv18.state_dict(), "args": argparse.Namespace(lr=0.1)}, src)
    with pytest.raises(WeightsError, match=r"holds objects other than tensors") as info:
        convert_checkpoint(src, tmp_path / "o.safetensors")
    message = str(info.value)
    assert "\x1b" not in message
    assert "torch said: WeightsUnpickler error: Unsupported global: GLOBAL argparse." in message
