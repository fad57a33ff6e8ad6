"""in_chans strategies, save_backbone/load_backbone, pretrained_cfg and pretrained=True/tags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from helpers import randomize_norm_stats
from safetensors import safe_open
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

from backbones import UnknownNameError, create_backbone
from backbones.weights import (
    IN_CHANS_STRATEGIES,
    WeightsError,
    adapt_first_conv,
    load_backbone,
    register_in_chans_strategy,
    save_backbone,
)
from backbones.weights import pretrained as pretrained_module


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = randomize_norm_stats(torchvision.models.resnet18()).eval()
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(model.state_dict(), path)
    return path


def _conv1(bb: torch.nn.Module) -> torch.Tensor:
    return bb.state_dict()["conv1.weight"]


def test_repeat_equals_timms_adapt_input_conv_and_timms_in_chans_model(r18_file: Path):
    rgb = torch.load(r18_file, weights_only=True)["conv1.weight"]
    for in_chans in (1, 2, 4, 7):
        bb = create_backbone("resnet18", pretrained=r18_file, in_chans=in_chans, out_indices=(1,))
        expected = timm.models.adapt_input_conv(in_chans, rgb.clone())
        assert torch.equal(_conv1(bb), expected)
        note = bb.pretrained_report.adapted
        assert note == [f"conv1.weight: 3 -> {in_chans} input channels ('repeat')"]
    # timm's own loader adapts the same way: same features for a 4-channel image.
    theirs = timm.create_model(
        "resnet18",
        features_only=True,
        out_indices=(1,),
        in_chans=4,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(r18_file)},
    ).eval()
    ours = create_backbone("resnet18", pretrained=r18_file, in_chans=4, out_indices=(1,)).eval()
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_mean_zeros_and_channel_map(r18_file: Path):
    rgb = torch.load(r18_file, weights_only=True)["conv1.weight"]
    mean = _conv1(
        create_backbone(
            "resnet18", pretrained=r18_file, in_chans=2, in_chans_strategy="mean", out_indices=(1,)
        )
    )
    torch.testing.assert_close(mean, rgb.mean(1, keepdim=True).repeat(1, 2, 1, 1) * 1.5)

    zeros = create_backbone(
        "resnet18", pretrained=r18_file, in_chans=5, in_chans_strategy="zeros", out_indices=(1,)
    ).eval()
    assert torch.equal(_conv1(zeros)[:, :3], rgb) and not _conv1(zeros)[:, 3:].any()
    plain = create_backbone("resnet18", pretrained=r18_file, out_indices=(1,)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the extra channels start out ignored: the RGB model's features
        torch.testing.assert_close(zeros(torch.cat([x, torch.randn(1, 2, 32, 32)], 1)), plain(x))

    nir = create_backbone(
        "resnet18",
        pretrained=r18_file,
        in_chans=4,
        in_chans_strategy=(0, 1, 2, 0),
        out_indices=(1,),
    )
    assert torch.equal(_conv1(nir), torch.cat([rgb, rgb[:, :1]], 1))
    assert nir.pretrained_cfg["mean"] == (0.485, 0.456, 0.406, 0.485)
    assert nir.pretrained_cfg["input_size"] == (4, 224, 224)
    gap = create_backbone(
        "resnet18",
        pretrained=r18_file,
        in_chans=4,
        in_chans_strategy=(2, None, 0, 1),
        out_indices=(1,),
    )
    assert not _conv1(gap)[:, 1].any() and torch.equal(_conv1(gap)[:, 0], rgb[:, 2])


def test_custom_strategy_and_bad_strategies(r18_file: Path):
    @register_in_chans_strategy("test_first_only")
    def first_only(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
        return weight[:, :1].repeat(1, in_chans, 1, 1)

    try:
        bb = create_backbone(
            "resnet18",
            pretrained=r18_file,
            in_chans=2,
            in_chans_strategy="test_first_only",
            out_indices=(1,),
        )
        rgb = torch.load(r18_file, weights_only=True)["conv1.weight"]
        assert torch.equal(_conv1(bb), rgb[:, :1].repeat(1, 2, 1, 1))
    finally:
        IN_CHANS_STRATEGIES.remove("test_first_only")

    with pytest.raises(UnknownNameError, match=r"unknown in_chans strategy 'repaet'.*'repeat'"):
        create_backbone("resnet18", pretrained=r18_file, in_chans=4, in_chans_strategy="repaet")
    with pytest.raises(ValueError, match=r"channel map \(0, 1\) must have in_chans=4 entries"):
        create_backbone("resnet18", pretrained=r18_file, in_chans=4, in_chans_strategy=(0, 1))
    with pytest.raises(ValueError, match=r"channel map \(0, 1, 5\) must have in_chans=3"):
        adapt_first_conv(torch.zeros(8, 3, 3, 3), 3, (0, 1, 5))
    with pytest.raises(ValueError, match=r'"zeros" pads extra channels.*in_chans >= 3, got 1'):
        create_backbone("resnet18", pretrained=r18_file, in_chans=1, in_chans_strategy="zeros")


def test_save_and_load_backbone_round_trip(tmp_path: Path, r18_file: Path):
    bb = create_backbone(
        "resnet18",
        pretrained=r18_file,
        in_chans=4,
        out_indices=(2, 3),
        output_stride=16,
        frozen_stages=1,
    ).eval()
    path = save_backbone(bb, tmp_path / "bb.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["backbones.config"])
    assert config["name"] == "resnet18" and config["out_indices"] == [2, 3]
    assert config["in_chans"] == 4 and config["output_stride"] == 16
    requires = json.loads(metadata["backbones.requires"])
    assert requires == [
        {
            "kind": "backbone",
            "name": "resnet18",
            "plugin": "builtin",
            "distribution": None,
            "version": None,
        }
    ]

    loaded = load_backbone(path).eval()
    assert loaded.backbone_config == bb.backbone_config
    assert loaded.pretrained_cfg == bb.pretrained_cfg
    assert loaded.feature_info.reduction() == [8, 16]
    assert not any(p.requires_grad for p in loaded.layer1.parameters())  # frozen_stages=1
    x = torch.randn(2, 4, 48, 48)
    with torch.no_grad():
        for a, b in zip(loaded(x), bb(x), strict=True):
            assert torch.equal(a, b)


def test_save_backbone_records_plugin_blocks_and_names_a_missing_plugin(tmp_path: Path):
    bb = create_backbone("resnet18", block="se_basic", out_indices=(1,))
    path = save_backbone(bb, tmp_path / "se.safetensors")
    code = f"from backbones.weights import load_backbone\nload_backbone({str(path)!r})\n"
    env = {**os.environ, "BACKBONES_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert (
        "needs block 'se_basic', provided by the plugin distribution 'backbones-attention'"
        in result.stderr
    )
    assert "pip install backbones-attention" in result.stderr
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_backbone(path).eval()(x)[0], bb.eval()(x)[0])


def test_save_backbone_refuses_what_it_cannot_rebuild(tmp_path: Path):
    from backbones import create_model

    with pytest.raises(TypeError, match=r"for a BackboneWithHead, save model.backbone"):
        save_backbone(create_model("resnet18", "classification"), tmp_path / "m.safetensors")
    bb = create_backbone("resnet18", norm_layer=lambda c: torch.nn.GroupNorm(8, c))
    with pytest.raises(TypeError, match=r"cannot record norm_layer=<function"):
        save_backbone(bb, tmp_path / "gn.safetensors")
    assert not list(tmp_path.iterdir())
    save_file({"conv1.weight": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match=r"not written by save_backbone"):
        load_backbone(tmp_path / "plain.safetensors")


def test_pretrained_cfg_works_with_timms_data_config_and_transforms():
    bb = create_backbone("resnet50d")
    config = resolve_data_config(model=bb)
    assert config == {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.875,
        "crop_mode": "center",
    }
    transform = create_transform(**config)
    from PIL import Image

    assert transform(Image.new("RGB", (300, 260))).shape == (3, 224, 224)
    assert bb.pretrained_cfg["license"] == "apache-2.0"
    assert bb.pretrained_cfg["hf_hub_id"] == "timm/resnet50d.ra2_in1k"
    overlay = create_backbone("resnet18", pretrained_cfg_overlay={"input_size": (3, 160, 160)})
    assert resolve_data_config(model=overlay)["input_size"] == (3, 160, 160)
    with pytest.raises(ValueError, match=r"pretrained_cfg_overlay has unknown keys \['meen'\]"):
        create_backbone("resnet18", pretrained_cfg_overlay={"meen": (0.5,)})


def test_pretrained_true_and_tags_pick_rows_of_the_variant_table(monkeypatch):
    fetched = []

    def fake_load(model, source, **options):
        fetched.append((source, options["sha256"]))
        return "report"

    monkeypatch.setattr(pretrained_module, "load_pretrained", fake_load)
    bb = create_backbone("resnet50", pretrained=True)
    assert fetched[-1][0] == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert bb.pretrained_cfg["tag"] == "tv2_in1k" and bb.pretrained_report == "report"
    assert bb.pretrained_cfg["crop_pct"] == pytest.approx(224 / 232)
    create_backbone("resnet50", pretrained="tv_in1k")
    assert fetched[-1][0] == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    bb = create_backbone("resnet50", pretrained="a1_in1k")
    assert fetched[-1][0] == "hf-hub:timm/resnet50.a1_in1k"
    assert bb.pretrained_cfg["interpolation"] == "bicubic"
    with pytest.raises(
        WeightsError,
        match=r"'tv_in1' is neither a weights tag of 'resnet50'"
        r" nor a file; did you mean 'tv_in1k'",
    ):
        create_backbone("resnet50", pretrained="tv_in1")
    bb = create_backbone("seresnet50", pretrained=True)  # a plugin's row (backbones-attention)
    assert fetched[-1][0] == "hf-hub:timm/seresnet50.a1_in1k"
    assert bb.pretrained_cfg["crop_pct"] == 0.95
    with pytest.raises(TypeError, match=r"pretrained must be True/False, a weights tag"):
        create_backbone("resnet50", pretrained=3)


def test_importing_backbones_does_not_import_the_weight_libraries():
    code = (
        "import sys, backbones\n"
        "print(sorted(m for m in ('timm', 'safetensors', 'huggingface_hub') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
