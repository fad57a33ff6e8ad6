"""The ``tv/`` namespace: torchvision's classifiers as backbones.

Parity is against torchvision itself: the same weights in torchvision's model, cut by
its own ``create_feature_extractor`` at the same nodes (and, where torchvision has one,
its detection backbone's body) give the same maps. Inputs are small (64 px); MaxViT
and ViT, which take one input size, are tested through tiny configurations of
torchvision's own classes.
"""

import os
import re
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models import MaxVit, VisionTransformer
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, mobilenet_backbone
from torchvision.models.feature_extraction import create_feature_extractor

from backbones import create_backbone, list_backbones, load_backbone, save_backbone
from backbones.catalog import backbone_entry
from backbones.errors import (
    UnknownNameError,
    UnsupportedOptionError,
    WeightsError,
    WeightsLoadError,
)
from backbones.testing import randomize_batchnorm_stats

SIZE = 64


def _inputs(size: int = SIZE, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _reference(name: str, backbone: nn.Module, **builder_kwargs) -> nn.Module:
    """torchvision's classifier holding every weight of the backbone (its head's its own)."""
    model = torchvision.models.get_model(name, **builder_kwargs)
    state = OrderedDict((k.removeprefix("body."), v) for k, v in backbone.state_dict().items())
    state._metadata = model.state_dict()._metadata  # module versions: MNASNet reads them
    assert model.load_state_dict(state, strict=False).unexpected_keys == []
    return model.eval()


def _as_nchw(maps: dict[str, torch.Tensor], nhwc: bool) -> list[torch.Tensor]:
    return [m.permute(0, 3, 1, 2) if nhwc else m for m in maps.values()]


def _tiny_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """``maxvit_t`` and ``vit_b_16`` become tiny configurations of the same classes."""
    real = torchvision.models.get_model

    def get_model(name: str, weights=None, **kwargs):
        if name == "maxvit_t":
            return MaxVit(
                input_size=kwargs.pop("input_size", (224, 224)),
                stem_channels=8,
                partition_size=7,
                block_channels=[8, 16, 16, 16],
                block_layers=[1, 1, 1, 1],
                head_dim=4,
                stochastic_depth_prob=0.2,
                **kwargs,
            )
        if name == "vit_b_16":
            return VisionTransformer(
                image_size=kwargs.pop("image_size", 32),
                patch_size=8,
                num_layers=3,
                num_heads=2,
                hidden_dim=16,
                mlp_dim=32,
                **kwargs,
            )
        return real(name, weights=weights, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", get_model)


# -- names -------------------------------------------------------------------------------
def test_list_backbones_lists_torchvision_names_without_building_any(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("listing built a model")

    monkeypatch.setattr(torchvision.models, "get_model", refuse)
    assert list_backbones("tv/mobilenet*") == [
        "tv/mobilenet_v2",
        "tv/mobilenet_v3_large",
        "tv/mobilenet_v3_small",
    ]
    names = list_backbones("tv/*")
    assert {"tv/resnet50", "tv/swin_t", "tv/vit_b_16", "tv/regnet_y_400mf"} <= set(names)
    assert not {"tv/alexnet", "tv/squeezenet1_0", "tv/inception_v3"} & set(names)


def test_the_family_is_the_torchvision_module():
    assert backbone_entry("tv/mobilenet_v3_large").family == "tv/mobilenetv3"
    assert backbone_entry("tv/resnext50_32x4d").family == "tv/resnet"
    assert backbone_entry("tv/swin_v2_t").family == "tv/swin_transformer"


def test_an_unknown_name_suggests_close_torchvision_names_without_listing_them_all():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("tv/resnet19")
    assert "tv/resnet18" in info.value.suggestions
    assert "list_backbones('tv/*')" in str(info.value)
    assert "tv/vgg11" not in str(info.value)


def test_a_model_with_unpadded_convolutions_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="cannot return features: its unpadded convolutions"):
        create_backbone("tv/squeezenet1_1")


# -- levels and parity with torchvision's own extractor --------------------------------------
FAMILIES = [
    ("resnet18", {}, ["relu", "layer1", "layer2", "layer3", "layer4"], [2, 4, 8, 16, 32]),
    (
        "mobilenet_v3_large",
        {},
        ["features.1", "features.3", "features.6", "features.12", "features.16"],
        [2, 4, 8, 16, 32],
    ),
    (
        "efficientnet_b0",
        {},
        ["features.1", "features.2", "features.3", "features.5", "features.8"],
        [2, 4, 8, 16, 32],
    ),
    ("convnext_tiny", {}, ["features.1", "features.3", "features.5", "features.7"], [4, 8, 16, 32]),
    ("swin_t", {}, ["features.1", "features.3", "features.5", "features.7"], [4, 8, 16, 32]),
    (
        "regnet_y_400mf",
        {},
        ["stem"] + [f"trunk_output.block{i}" for i in range(1, 5)],
        [2, 4, 8, 16, 32],
    ),
    (
        "shufflenet_v2_x0_5",
        {},
        ["conv1", "maxpool", "stage2", "stage3", "conv5"],
        [2, 4, 8, 16, 32],
    ),
    (
        "mnasnet0_5",
        {},
        ["layers.7", "layers.8", "layers.9", "layers.11", "layers.16"],
        [2, 4, 8, 16, 32],
    ),
    (
        "densenet121",
        {},
        ["features.relu0"] + [f"features.denseblock{i}" for i in (1, 2, 3)] + ["features.norm5"],
        [2, 4, 8, 16, 32],
    ),
    (
        "googlenet",
        {"aux_logits": False, "transform_input": False, "init_weights": True},
        ["conv1", "conv3", "inception3b", "inception4e", "inception5b"],
        [2, 4, 8, 16, 32],
    ),
]


@pytest.mark.parametrize(
    ("name", "builder_kwargs", "nodes", "strides"), FAMILIES, ids=[f[0] for f in FAMILIES]
)
def test_levels_are_the_last_module_of_each_stride_and_match_torchvision(
    name, builder_kwargs, nodes, strides
):
    torch.manual_seed(0)
    backbone = randomize_batchnorm_stats(create_backbone(f"tv/{name}")).eval()
    info = backbone.feature_info
    assert info.module_name() == nodes
    assert info.reduction() == strides

    x = _inputs()
    with torch.no_grad():
        ours = backbone(x)
        reference = create_feature_extractor(_reference(name, backbone, **builder_kwargs), nodes)
        theirs = _as_nchw(reference(x), nhwc=name.startswith("swin"))
    assert [tuple(m.shape) for m in ours] == [
        (2, c, SIZE // r, SIZE // r) for c, r in zip(info.channels(), strides, strict=True)
    ]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "nodes", "pad_to"),
    [
        ("resnet18", ["layer1", "layer4"], 1),  # its convolutions pad: ceil by itself
        ("convnext_tiny", ["features.3", "features.7"], 32),  # the 4x4 stem rounds down
        ("swin_t", ["features.3", "features.7"], 32),
    ],
)
def test_maps_have_ceil_size_over_stride_cells_at_sizes_the_strides_do_not_divide(
    name, nodes, pad_to
):
    torch.manual_seed(0)
    backbone = create_backbone(f"tv/{name}", out_indices=(1, -1)).eval()
    assert backbone.pad_to == pad_to
    strides = backbone.feature_info.reduction()
    x = torch.randn(1, 3, 65, 97, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone(x)
        # torchvision's network on the image padded to a multiple of 32 (96x128 when
        # padding), each map cut to ceil(size / stride) cells
        padded = F.pad(x, (0, 128 - 97, 0, 96 - 65)) if pad_to > 1 else x
        extractor = create_feature_extractor(_reference(name, backbone), nodes)
        theirs = _as_nchw(extractor(padded), nhwc=name.startswith("swin"))
    for a, b, stride in zip(ours, theirs, strides, strict=True):
        assert tuple(a.shape[2:]) == (-(-65 // stride), -(-97 // stride))
        torch.testing.assert_close(a, b[:, :, : a.shape[2], : a.shape[3]], rtol=0, atol=1e-6)


def test_swin_maps_come_out_nchw():
    backbone = create_backbone("tv/swin_t", out_indices=(0,))
    (fmap,) = backbone(_inputs(batch=1))
    assert tuple(fmap.shape) == (1, 96, 16, 16)


def test_resnet_matches_the_body_of_torchvisions_detection_backbone():
    torch.manual_seed(0)
    ours = randomize_batchnorm_stats(create_backbone("tv/resnet18", out_indices=(1, 2, 3, 4)))
    fpn = _resnet_fpn_extractor(_reference("resnet18", ours), 5, returned_layers=[1, 2, 3, 4])
    x = _inputs()
    with torch.no_grad():
        theirs = list(fpn.body.eval()(x).values())
        mine = ours.eval()(x)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mobilenet_matches_the_body_of_torchvisions_detection_backbone(tmp_path):
    # torchvision's body returns the blocks where the stride changes (features.13, the
    # first stride-32 block) and the last (features.16); ours are the last of each stride,
    # so they share features.16. Its weights alone (no classifier) load as a checkpoint.
    torch.manual_seed(0)
    detection = mobilenet_backbone(
        backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6
    )
    randomize_batchnorm_stats(detection)
    for module in detection.modules():  # FrozenBatchNorm2d's eps is 1e-5, the classifier's 1e-3
        if isinstance(module, torchvision.ops.FrozenBatchNorm2d):
            module.eps = 1e-3
    path = tmp_path / "mobilenet_body.pth"
    torch.save({f"features.{k}": v for k, v in detection.body.state_dict().items()}, path)
    ours = create_backbone("tv/mobilenet_v3_large", out_indices=(4,), pretrained=str(path))
    x = _inputs()
    with torch.no_grad():
        theirs = detection.body.eval()(x)
        (mine,) = ours.eval()(x)
    assert list(theirs) == ["0", "1"]
    torch.testing.assert_close(mine, theirs["1"], rtol=1e-5, atol=1e-5)
    assert ours.pretrained_report.ok
    assert ours.pretrained_report.missing == []


def test_vit_layers_become_maps_without_the_class_token(monkeypatch):
    _tiny_torchvision(monkeypatch)
    torch.manual_seed(0)
    backbone = create_backbone("tv/vit_b_16").eval()
    nodes = [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    assert backbone.feature_info.module_name() == nodes
    assert backbone.feature_info.reduction() == [8, 8, 8]
    reference = torchvision.models.get_model("vit_b_16")
    reference.load_state_dict(
        {k.removeprefix("body.extractor."): v for k, v in backbone.state_dict().items()},
        strict=False,
    )
    x = _inputs(32)
    with torch.no_grad():
        mine = backbone(x)
        tokens = create_feature_extractor(reference.eval(), nodes)(x)
    for fmap, seq in zip(mine, tokens.values(), strict=True):
        assert tuple(fmap.shape) == (2, 16, 4, 4)
        # channel c of patch (row i, column j) is token 1 + 4 i + j
        torch.testing.assert_close(fmap[:, :, 1, 2], seq[:, 1 + 4 * 1 + 2])
        torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), seq[:, 1:])


def test_maxvit_levels_are_the_stem_and_its_blocks(monkeypatch):
    _tiny_torchvision(monkeypatch)
    backbone = create_backbone("tv/maxvit_t")
    assert backbone.feature_info.module_name() == [
        "stem",
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "blocks.3",
    ]
    assert backbone.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert backbone.probe_input_size == (224, 224)


# -- options -------------------------------------------------------------------------------
def test_out_indices_pick_levels_and_an_error_names_the_levels():
    backbone = create_backbone("tv/resnet18", out_indices=(1, -1))
    assert backbone.feature_info.module_name() == ["layer1", "layer4"]
    assert len(backbone(_inputs())) == 2
    with pytest.raises(ValueError, match=r"0\.\.4") as info:
        create_backbone("tv/resnet18", out_indices=(5,))
    assert "0 relu (stride 2, 64 channels)" in str(info.value)
    assert "4 layer4 (stride 32, 512 channels)" in str(info.value)


def test_only_the_layers_up_to_the_deepest_level_returned_are_kept():
    backbone = create_backbone("tv/resnet18", out_indices=(0, 1, 2))
    names = {k.split(".")[1] for k in backbone.state_dict()}
    assert "layer2" in names
    assert not {"layer3", "layer4", "fc"} & names


def test_return_dict_keys_are_the_node_names():
    out = create_backbone("tv/mobilenet_v3_small", return_dict=True)(_inputs())
    assert list(out) == ["features.0", "features.1", "features.3", "features.8", "features.12"]


def _sgd_step(backbone: nn.Module) -> None:
    opt = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    loss = sum(m.square().mean() for m in backbone(_inputs()))
    loss.backward()
    opt.step()


def test_frozen_stages_freezes_the_stem_and_first_stages():
    backbone = create_backbone("tv/resnet18", frozen_stages=2).train()
    body = backbone.body
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    _sgd_step(backbone)
    after = backbone.state_dict()
    for prefix in ("body.conv1.", "body.bn1.", "body.layer1.", "body.layer2."):
        keys = [k for k in before if k.startswith(prefix)]
        assert keys
        assert all(torch.equal(before[k], after[k]) for k in keys), prefix  # running stats too
    assert not torch.equal(
        before["body.layer3.0.conv1.weight"], after["body.layer3.0.conv1.weight"]
    )
    assert not body.bn1.training and not body.layer2.get_submodule("1.bn2").training
    assert body.layer3.get_submodule("0.bn1").training
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())


def test_frozen_stages_of_a_sequence_family_follow_the_run_order():
    backbone = create_backbone("tv/mobilenet_v3_large", frozen_stages=1)
    features = backbone.body.features
    frozen = [
        i
        for i in range(17)
        if not any(p.requires_grad for p in features.get_submodule(str(i)).parameters())
    ]
    assert frozen == [0, 1, 2, 3]  # the stride-2 stem, then the stride-4 blocks


def test_frozen_stages_0_of_a_vit_freezes_the_patch_embedding_and_tokens(monkeypatch):
    _tiny_torchvision(monkeypatch)
    backbone = create_backbone("tv/vit_b_16", frozen_stages=0)
    grads = {k: p.requires_grad for k, p in backbone.named_parameters()}
    assert not grads["body.extractor.conv_proj.weight"]
    assert not grads["body.extractor.class_token"]
    assert not grads["body.extractor.encoder.pos_embedding"]
    assert all(v for k, v in grads.items() if ".encoder_layer_" in k)


def test_frozen_stages_out_of_range_names_the_stages():
    with pytest.raises(ValueError, match=r"accepted: -1 \(nothing\) \.\. 2 .*layer1, layer2"):
        create_backbone("tv/resnet18", out_indices=(1, 2), frozen_stages=3)


def test_norm_eval_keeps_every_batchnorm_in_eval():
    backbone = create_backbone("tv/regnet_y_400mf", norm_eval=True).train()
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert backbone.body.stem.get_submodule("0").training


def test_in_chans_replaces_the_first_convolution():
    backbone = create_backbone("tv/efficientnet_b0", in_chans=1)
    assert backbone.body.get_submodule("features.0.0").in_channels == 1
    assert [
        m.shape[1] for m in backbone(torch.randn(1, 1, SIZE, SIZE))
    ] == backbone.feature_info.channels()
    assert backbone.pretrained_cfg["input_size"] == (1, 224, 224)


def test_output_stride_dilates_bottleneck_resnets_as_torchvision_does():
    torch.manual_seed(0)
    backbone = create_backbone("tv/resnet50", output_stride=16, out_indices=(3, 4)).eval()
    assert backbone.feature_info.reduction() == [16, 16]
    reference = _reference("resnet50", backbone, replace_stride_with_dilation=[False, False, True])
    x = _inputs(batch=1)
    with torch.no_grad():
        theirs = list(create_feature_extractor(reference, ["layer3", "layer4"])(x).values())
        mine = backbone(x)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_output_stride_is_refused_where_torchvision_cannot_dilate():
    with pytest.raises(ValueError, match=r"cannot dilate its basic blocks.*tv/resnet50"):
        create_backbone("tv/resnet18", output_stride=8)
    with pytest.raises(UnsupportedOptionError) as info:
        create_backbone("tv/mobilenet_v2", output_stride=16)
    assert "tv/resnet" in info.value.families and "tv/mobilenetv2" not in info.value.families


def _stochastic_depth_probs(model: nn.Module) -> dict[str, float]:
    """Each StochasticDepth's ``p``, by its name in torchvision's classifier."""
    return {
        n.removeprefix("body."): m.p
        for n, m in model.named_modules()
        if isinstance(m, torchvision.ops.StochasticDepth)
    }


def test_drop_path_rate_is_torchvisions_stochastic_depth_and_zero_by_default():
    # Blocks without a residual never call their StochasticDepth: the extractor drops it.
    assert set(_stochastic_depth_probs(create_backbone("tv/efficientnet_b0")).values()) == {0.0}
    probs = _stochastic_depth_probs(create_backbone("tv/efficientnet_b0", drop_path_rate=0.3))
    reference = _stochastic_depth_probs(
        torchvision.models.efficientnet_b0(stochastic_depth_prob=0.3)
    )
    assert len(probs) == 9 and probs == {k: reference[k] for k in probs}


def test_drop_path_rate_rescales_a_schedule_the_builder_fixes():
    probs = _stochastic_depth_probs(create_backbone("tv/swin_t", drop_path_rate=0.1))
    # swin_t's builder fixes stochastic_depth_prob=0.2; the probability rises linearly
    # from 0 at the first of its 12 blocks to the rate at the last, as torchvision's does.
    assert sorted(probs.values()) == pytest.approx([0.1 * i / 11 for i in range(12)])
    with pytest.raises(UnsupportedOptionError) as info:
        create_backbone("tv/resnet18", drop_path_rate=0.1)
    tv_families = [f for f in info.value.families if f.startswith("tv/")]
    assert tv_families == ["tv/convnext", "tv/efficientnet", "tv/maxvit", "tv/swin_transformer"]


# -- weights -------------------------------------------------------------------------------
def _hub_file(monkeypatch: pytest.MonkeyPatch, tmp_path, weights, state) -> None:
    """Put ``state`` where torch hub caches ``weights``, under a fresh TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # TORCH_HOME decides, not a set_dir
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / os.path.basename(weights.url))


def test_pretrained_true_loads_the_default_weights_from_torch_hubs_cache(monkeypatch, tmp_path):
    torch.manual_seed(1)
    source = randomize_batchnorm_stats(torchvision.models.resnet18())
    _hub_file(
        monkeypatch, tmp_path, torchvision.models.ResNet18_Weights.DEFAULT, source.state_dict()
    )
    backbone = create_backbone("tv/resnet18", pretrained=True)
    ours = backbone.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours[f"body.{key}"], value), key
    report = backbone.pretrained_report
    assert report.ok and report.source.endswith("resnet18-f37072fd.pth")
    assert sorted(next(iter(report.dropped.values()))) == ["fc.bias", "fc.weight"]
    cfg = backbone.pretrained_cfg
    assert (cfg["tag"], cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == (
        "IMAGENET1K_V1",
        (3, 224, 224),
        0.875,
        "bilinear",
    )
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["first_conv"] == "conv1"


def test_pretrained_names_a_member_of_the_weights_enum(monkeypatch, tmp_path):
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(2)
    source = torchvision.models.mobilenet_v3_small()
    _hub_file(monkeypatch, tmp_path, weights, source.state_dict())
    backbone = create_backbone("tv/mobilenet_v3_small", pretrained="IMAGENET1K_V1")
    assert torch.equal(
        backbone.state_dict()["body.features.0.0.weight"], source.features[0][0].weight
    )
    assert backbone.pretrained_cfg["tag"] == "IMAGENET1K_V1"


def test_an_unknown_weights_name_lists_the_enum_members():
    with pytest.raises(WeightsError, match="did you mean 'IMAGENET1K_V2', 'IMAGENET1K_V1'") as info:
        create_backbone("tv/resnet50", pretrained="IMAGENET1K_V3")
    assert "Accepted: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT" in str(info.value)


def test_weights_missing_offline_say_where_torch_hub_looks(monkeypatch, tmp_path):
    def offline(url, dst, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # TORCH_HOME decides, not a set_dir
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match=r"Offline, put the file at .*mnasnet0\.5_top1_67\.823"):
        create_backbone("tv/mnasnet0_5", pretrained=True)


def test_weights_that_do_not_fit_name_the_keys_unless_not_strict(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with pytest.raises(WeightsLoadError, match=r"layer2\.0\.conv1\.weight") as info:
        create_backbone("tv/resnet18", pretrained=str(path))
    assert info.value.report.unexpected == ["extra.weight"]
    backbone = create_backbone("tv/resnet18", pretrained=str(path), pretrained_strict=False)
    assert torch.equal(
        backbone.state_dict()["body.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"]
    )
    assert not backbone.pretrained_report.ok


def test_googlenet_drops_the_auxiliary_classifiers_and_expects_inputs_in_minus_one_to_one(tmp_path):
    path = tmp_path / "googlenet.pth"
    source = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    torch.save(source.state_dict(), path)
    backbone = create_backbone("tv/googlenet", out_indices=(0,), pretrained=str(path))
    dropped = backbone.pretrained_report.dropped
    assert any(k.startswith("aux1.") for keys in dropped.values() for k in keys)
    assert backbone.pretrained_cfg["mean"] == backbone.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    assert backbone.pretrained_cfg["file"] == str(path)


def test_pretrained_in_chans_adapts_the_first_convolution(tmp_path):
    source = torchvision.models.shufflenet_v2_x0_5()
    path = tmp_path / "shufflenet.pth"
    torch.save(source.state_dict(), path)
    backbone = create_backbone(
        "tv/shufflenet_v2_x0_5", pretrained=str(path), in_chans=4, in_chans_strategy=(0, 1, 2, 0)
    )
    weight = backbone.body.get_submodule("conv1.0").weight
    original = source.conv1[0].weight
    assert torch.equal(weight[:, :3], original) and torch.equal(weight[:, 3], original[:, 0])
    assert backbone.pretrained_cfg["mean"] == (0.485, 0.456, 0.406, 0.485)
    assert backbone.pretrained_report.adapted


def test_save_and_load_give_the_same_backbone(tmp_path):
    torch.manual_seed(0)
    backbone = randomize_batchnorm_stats(
        create_backbone("tv/mobilenet_v3_small", out_indices=(1, 2, 3), frozen_stages=1)
    ).eval()
    path = save_backbone(backbone, tmp_path / "mobilenet.safetensors")
    loaded = load_backbone(path).eval()
    assert loaded.feature_info.module_name() == backbone.feature_info.module_name()
    assert loaded.frozen_stages == 1
    x = _inputs()
    with torch.no_grad():
        for a, b in zip(backbone(x), loaded(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_densenet_checkpoints_with_torchvisions_old_key_names_load(tmp_path):
    # torchvision's published DenseNet weights (older than BatchNorm's num_batches_tracked)
    # name "norm.1" what the network calls "norm1"; its loader renames them, as this one.
    source = torchvision.models.densenet121()
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)\.", r"\1.\2.", k): v
        for k, v in source.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = tmp_path / "densenet121.pth"
    torch.save(old, path)
    backbone = create_backbone("tv/densenet121", out_indices=(0, 1), pretrained=str(path))
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(backbone.state_dict()[f"body.{key}"], source.state_dict()[key])
    assert backbone.pretrained_report.ok
