"""in_chans strategies, save_backbone/load_backbone, pretrained_cfg and pretrained=True/tags."""

import json
import os
import re
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

from backbones import UnknownNameError, create_backbone, load_backbone, save_backbone
from backbones.weights import (
    IN_CHANS_STRATEGIES,
    WeightsError,
    WeightsLoadError,
    adapt_first_conv,
    register_in_chans_strategy,
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
    code = f"from backbones import load_backbone\nload_backbone({str(path)!r})\n"
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


# --- options of the wrong type name the option --------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("pretrained_format", 5),
        ("in_chans_strategy", 5),
        ("in_chans_strategy", {"a": 1}),
        ("pretrained_cfg_overlay", "x"),
        ("pretrained_cfg_overlay", [1]),
        ("pretrained_sha256", 5),
        ("pretrained_sha256", None),
        ("pretrained_strict", "no"),
        ("pretrained_strict", 0),
    ],
)
def test_weights_option_of_the_wrong_type_names_it(r18_file: Path, option: str, value: object):
    with pytest.raises(TypeError, match=rf"^{option} must be .*got {re.escape(repr(value))}"):
        create_backbone("resnet18", pretrained=r18_file, out_indices=(1,), **{option: value})


def test_load_pretrained_checks_its_own_option_names(r18_file: Path):
    from backbones.weights import load_pretrained

    bb = create_backbone("resnet18", out_indices=(1,))
    with pytest.raises(TypeError, match=r"^strict must be True or False, got 'no'"):
        load_pretrained(bb, r18_file, strict="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^sha256 must be a string"):
        load_pretrained(bb, r18_file, sha256=None)  # type: ignore[arg-type]


# --- pretrained= in other libraries' spellings --------------------------------------------


@pytest.fixture
def fetched(monkeypatch) -> list[str]:
    """The sources ``create_backbone`` would load, without loading them."""
    sources: list[str] = []

    def fake_load(model, source, **options):
        sources.append(source)
        return "report"

    monkeypatch.setattr(pretrained_module, "load_pretrained", fake_load)
    monkeypatch.setattr(pretrained_module, "hub_preprocessing", lambda spec: {})
    return sources


def test_timm_model_dot_tag_is_accepted_for_this_backbone(fetched: list[str]):
    bb = create_backbone("resnet50", pretrained="resnet50.a1_in1k")
    assert fetched == ["hf-hub:timm/resnet50.a1_in1k"]
    assert bb.pretrained_cfg["tag"] == "a1_in1k"


@pytest.mark.parametrize(
    ("pretrained", "expected"),
    [
        (
            "resnet101.a1_in1k",
            r"names weights of 'resnet101' \(timm's '<model>.<tag>' spelling\), not of "
            r"'resnet50'.*: pretrained='a1_in1k' for 'resnet50' with 'a1_in1k' weights; for "
            r"the weights of 'resnet101', create_backbone\('resnet101', pretrained='<tag>'\)",
        ),
        ("resnet50.a2_in1k", r"^pretrained='resnet50.a2_in1k': 'resnet50' has no weights tag"),
        ("resnet26d.ra2_in1k", r"names weights of 'resnet26d'.*picks the weights\. Tags"),
        (
            "IMAGENET1K_V2",
            r"torchvision's weights enum name; here those weights are the tag "
            r"'tv2_in1k': pretrained='tv2_in1k'",
        ),
        ("IMAGENET1K_V1", r"the tag 'tv_in1k': pretrained='tv_in1k'"),
        ("DEFAULT", r"the tag 'tv2_in1k': pretrained=True"),
    ],
)
def test_other_libraries_weight_names_get_an_error_naming_our_form(
    fetched: list[str], pretrained: str, expected: str
):
    with pytest.raises(WeightsError, match=expected) as info:
        create_backbone("resnet50", pretrained=pretrained)
    assert "Tags of 'resnet50': tv2_in1k, tv_in1k, a1_in1k" in str(info.value)
    assert fetched == []


def test_a_missing_file_with_a_weights_suffix_is_still_a_missing_file(fetched: list[str]):
    create_backbone("resnet50", pretrained="resnet50.pth")  # resolve_source says "no such file"
    assert fetched == ["resnet50.pth"]


# --- load_backbone: damaged metadata, shape-changing overrides ---------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    bb = create_backbone("resnet18", out_indices=(1,))
    return save_backbone(bb, tmp_path_factory.mktemp("saved") / "bb.safetensors")


def _with_metadata(saved: Path, path: Path, **changes: str | None) -> Path:
    with safe_open(str(saved), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key, value in changes.items():
        key = "backbones." + key
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"config": "{not json"}, r"metadata entry 'backbones.config' is not valid JSON"),
        ({"config": '{"out_indices": [1]}'}, r"entry 'backbones.config' has no backbone 'name'"),
        ({"config": '["resnet18"]'}, r"entry 'backbones.config' must hold a JSON object, got list"),
        ({"config": '{"name": 5}'}, r"entry 'backbones.config' has no backbone 'name'"),
        ({"requires": "nope"}, r"metadata entry 'backbones.requires' is not valid JSON"),
        ({"requires": '{"a": 1}'}, r"entry 'backbones.requires' must hold a JSON array, got dict"),
        ({"requires": "[1, 2]"}, r"entry 'backbones.requires' must be a list of"),
        ({"pretrained_cfg": "[]"}, r"entry 'backbones.pretrained_cfg' must hold a JSON object"),
        (
            {"config": '{"name": "resnet18", "out_indices": "x"}'},
            r"the options in metadata entry 'backbones.config' do not build a backbone",
        ),
    ],
)
def test_load_backbone_names_the_file_and_the_damaged_entry(
    tmp_path: Path, saved: Path, changes: dict, expected: str
):
    path = _with_metadata(saved, tmp_path / "edited.safetensors", **changes)
    with pytest.raises(WeightsError, match=expected) as info:
        load_backbone(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_backbone_refuses_an_override_that_changes_the_input_conv(saved: Path):
    with pytest.raises(WeightsLoadError) as info:
        load_backbone(saved, in_chans=4)
    assert info.value.report.mismatched == [("conv1.weight", (64, 4, 7, 7), (64, 3, 7, 7))]
    assert info.value.report.adapted == []
    assert info.value.report.applied is False
    message = str(info.value)
    assert "\nwould have loaded " in message  # nothing was loaded, so the report says so
    assert "load_backbone loads a saved backbone only as it was saved" in message
    assert "pretrained_strict=False to load what fits, or pretrained_format=" not in message
    assert load_backbone(saved, frozen_stages=1).pretrained_report.ok  # shapes unchanged


# --- save_backbone: missing folder, interrupted and concurrent saves -------------------


def test_save_backbone_into_a_missing_folder_names_it(tmp_path: Path):
    bb = create_backbone("resnet18", out_indices=(1,))
    with pytest.raises(WeightsError, match=rf"the folder {re.escape(str(tmp_path / 'no'))} does"):
        save_backbone(bb, tmp_path / "no" / "bb.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_save_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    import safetensors.torch

    def fail_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", fail_midway)
    bb = create_backbone("resnet18", out_indices=(1,))
    with pytest.raises(KeyboardInterrupt):
        save_backbone(bb, tmp_path / "bb.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_saves_to_one_path_each_write_a_whole_file(tmp_path: Path):
    import threading

    models = [create_backbone("resnet18", out_indices=(1,)) for _ in range(2)]
    target = tmp_path / "bb.safetensors"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def save(i: int) -> None:
        start.wait()
        try:
            save_backbone(models[i % 2], target)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["bb.safetensors"]
    loaded = load_backbone(target).state_dict()
    assert any(all(torch.equal(v, m.state_dict()[k]) for k, v in loaded.items()) for m in models)


# --- pretrained_cfg: first_conv from the model, timm's pool_size ------------------------


@pytest.mark.parametrize("name", ["ecaresnet50d", "resnet50d", "resnet50", "resnet101d"])
def test_pretrained_cfg_first_conv_and_pool_size_match_timm(name: str):
    ours = create_backbone(name).pretrained_cfg
    theirs = timm.create_model(name, pretrained=False).pretrained_cfg
    assert ours["first_conv"] == theirs["first_conv"]
    assert ours["pool_size"] == theirs["pool_size"]
    assert ours["input_size"] == theirs["input_size"]
    if name == "ecaresnet50d":
        assert ours["first_conv"] == "conv1.0"
    if name == "resnet101d":
        assert ours["pool_size"] == (8, 8)


def test_pool_size_follows_the_input_size_and_timm_still_resolves_the_data_config():
    bb = create_backbone("resnet18", pretrained_cfg_overlay={"input_size": (3, 160, 160)})
    assert bb.pretrained_cfg["pool_size"] == (5, 5)  # recomputed for the overlaid size
    assert bb(torch.randn(1, 3, 160, 160))[-1].shape[-2:] == (5, 5)
    assert resolve_data_config(model=bb)["input_size"] == (3, 160, 160)
    overlay = {"input_size": [3, 256, 192], "pool_size": (1, 1)}
    given = create_backbone("resnet18", pretrained_cfg_overlay=overlay).pretrained_cfg
    assert given["pool_size"] == (1, 1)  # given with it: kept as given
    assert given["input_size"] == (3, 256, 192)  # a list becomes timm's tuple
    assert create_backbone("resnet18", in_chans=1).pretrained_cfg["pool_size"] == (7, 7)
    assert create_backbone("resnet50d").pretrained_cfg["pool_size"] == (7, 7)


# --- save_backbone writes only .safetensors names ---------------------------------------


@pytest.mark.parametrize("name", ["bb.pth", "bb.txt", "bb", "bb.safetensors.bak"])
def test_save_backbone_refuses_a_name_that_is_not_safetensors(tmp_path: Path, name: str):
    bb = create_backbone("resnet18", out_indices=(1,))
    target = tmp_path / name
    with pytest.raises(WeightsError, match=r"must end in \.safetensors") as info:
        save_backbone(bb, target)
    message = str(info.value)
    assert f"cannot save to {target}: save_backbone writes a safetensors file" in message
    assert ("torch.save(bb.state_dict(), path)" in message) == name.endswith(".pth")
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


# --- every weights option is checked, with or without pretrained= ------------------------


def test_weights_options_are_checked_without_pretrained():
    with pytest.raises(UnknownNameError, match=r"unknown checkpoint format 'bogus'.*pretrained_"):
        create_backbone("resnet18", pretrained_format="bogus")
    with pytest.raises(WeightsError, match=r"^pretrained_sha256='zz' is not a hex digest"):
        create_backbone("resnet18", pretrained_sha256="zz")
    with pytest.raises(WeightsError, match=r"^sha256='zz' is not a hex digest"):
        from backbones.weights import load_pretrained

        load_pretrained(create_backbone("resnet18"), "unused.pth", sha256="zz")


@pytest.mark.parametrize(
    ("overlay", "error", "fragment"),
    [
        ({"mean": 3}, TypeError, "['mean'] must be a sequence of 3 numbers"),
        ({"mean": ("a", 0.5, 0.5)}, TypeError, "['mean'] must be a sequence of 3 numbers"),
        ({"mean": (0.5, 0.5)}, ValueError, "['mean'] must be 3 numbers, one per input channel"),
        ({"std": (0.2, 0.0, 0.2)}, ValueError, "['std'] must be positive"),
        ({"input_size": 224}, TypeError, "['input_size'] must be 3 ints"),
        ({"input_size": (3, 224)}, ValueError, "['input_size'] must be 3 positive ints"),
        ({"input_size": (3, 0, 224)}, ValueError, "['input_size'] must be 3 positive ints"),
        ({"input_size": (1, 224, 224)}, ValueError, "['input_size'] must start with in_chans=3"),
        ({"crop_pct": "0.9"}, TypeError, "['crop_pct'] must be a number"),
        ({"crop_pct": 1.5}, ValueError, "['crop_pct'] must be in (0, 1]"),
        ({"crop_pct": 0}, ValueError, "['crop_pct'] must be in (0, 1]"),
        ({"interpolation": 3}, TypeError, "['interpolation'] must be a str"),
        ({"crop_mode": None}, TypeError, "['crop_mode'] must be a str"),
        ({"pool_size": (7,)}, ValueError, "['pool_size'] must be 2 positive ints"),
        ({"pool_size": (7.0, 7.0)}, TypeError, "['pool_size'] must be 2 ints"),
        ({"num_classes": True}, TypeError, "['num_classes'] must be an int"),
        ({"license": 1}, TypeError, "['license'] must be a str"),
    ],
)
def test_cfg_overlay_values_are_checked_by_key(overlay: dict, error: type, fragment: str):
    with pytest.raises(error, match=r"^pretrained_cfg_overlay" + re.escape(fragment)) as info:
        create_backbone("resnet18", pretrained_cfg_overlay=overlay)
    assert repr(next(iter(overlay.values()))) in str(info.value)  # the bad value, echoed


def test_cfg_overlay_values_become_tuples_and_follow_in_chans():
    overlay = {"mean": [0.5, 0.5, 0.5, 0.5], "std": [1, 1, 1, 1], "input_size": [4, 64, 64]}
    cfg = create_backbone("resnet18", in_chans=4, pretrained_cfg_overlay=overlay).pretrained_cfg
    assert cfg["mean"] == (0.5, 0.5, 0.5, 0.5) and cfg["std"] == (1.0, 1.0, 1.0, 1.0)
    assert cfg["input_size"] == (4, 64, 64) and cfg["pool_size"] == (2, 2)
    with pytest.raises(ValueError, match=r"\['mean'\] must be 4 numbers.*in_chans=4"):
        create_backbone("resnet18", in_chans=4, pretrained_cfg_overlay={"mean": (0.5,) * 3})
