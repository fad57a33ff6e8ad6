"""The ``timm/`` namespace under the backbone contract.

``create_backbone("timm/<name>")`` wraps timm's ``features_only`` model: these tests hold
it to what the contract promises for every backbone (NCHW maps that ``feature_info``
describes, levels numbered as timm numbers them, freezing that survives a training step,
``norm_eval``, ``return_dict``, options refused where a family cannot honour them), to
timm's weights machinery (offline, from a fake Hugging Face cache), to saving and loading,
and to the heads and torchvision detectors built on it. Parity with timm's own extractor,
family by family, is in ``test_zoo_parity.py``.

Models are the smallest of their family at 64 px, or at their own size where they take
only one.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import detection

import backbones.zoo.timm_models as timm_models
from backbones import create_backbone, create_model, list_backbones, load_backbone, save_backbone
from backbones.catalog import backbone_entry
from backbones.errors import (
    BackboneContractError,
    UnknownNameError,
    UnsupportedOptionError,
    WeightsError,
)
from backbones.testing import check_feature_contract, randomize_batchnorm_stats
from backbones.zoo.pyramid import SimpleFeaturePyramid

SIZE = 64
SWIN = "timm/swin_tiny_patch4_window7_224"  # the smallest Swin
VIT = "timm/vit_tiny_patch16_224"
PATCH14 = "timm/eva02_tiny_patch14_224"  # the smallest patch-14 ViT


def _inputs(height: int = SIZE, width: int | None = None, *, batch: int = 2, chans: int = 3):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, chans, height, width or height, generator=generator)


def _norms(model: nn.Module) -> list[nn.Module]:
    """Every normalization layer: BatchNorms (timm's BatchNormAct2d too), LayerNorms, GroupNorms."""
    kinds = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return [m for m in model.modules() if isinstance(m, kinds)]


# -- names -----------------------------------------------------------------------------------
def test_list_backbones_lists_timm_names_without_building_any(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("listing built a model")

    monkeypatch.setattr(timm, "create_model", refuse)
    names = list_backbones("timm/convnext*")
    assert "timm/convnext_atto" in names and "timm/convnextv2_atto" in names
    assert all(n.startswith("timm/convnext") for n in names)
    assert len(names) == len(set(names)) > 10


def test_the_family_is_the_timm_module():
    assert backbone_entry("timm/convnext_atto").family == "timm/convnext"
    assert backbone_entry(SWIN).family == "timm/swin_transformer"
    assert backbone_entry("timm/coatnet_pico_rw_224").family == "timm/maxxvit"
    assert backbone_entry("timm/convnext_atto.d2_in1k").family == "timm/convnext"


def test_an_unknown_name_suggests_close_timm_names_without_listing_them_all():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("timm/convnxt_atto")
    assert info.value.suggestions[0] == "timm/convnext_atto"
    message = str(info.value)
    assert "list_backbones('timm/*')" in message
    assert "timm/resnet50" not in message and len(message) < 400


def test_a_model_the_table_marks_without_features_is_refused_with_the_reason(monkeypatch):
    table = {"convnext_atto": {"status": "no_features", "reason": "its maps have no stride"}}
    monkeypatch.setattr(timm_models, "capabilities", lambda: table)
    with pytest.raises(ValueError, match=r"cannot return features.*its maps have no stride"):
        create_backbone("timm/convnext_atto")
    assert "timm/convnext_atto" not in list_backbones("timm/convnext_a*")


def test_a_model_whose_maps_have_no_stride_is_refused():
    # CrossViT resizes every input to its own size: its maps are 20x20 whatever the image.
    with pytest.raises(
        (BackboneContractError, ValueError), match=r"no single stride|cannot return features"
    ):
        create_backbone("timm/crossvit_tiny_240")


def test_a_model_whose_maps_have_no_stride_is_refused_naming_it():
    with pytest.raises((BackboneContractError, ValueError), match="crossvit_tiny_240"):
        create_backbone("timm/crossvit_tiny_240")


# -- levels ----------------------------------------------------------------------------------
def test_swin_maps_come_out_nchw():
    backbone = create_backbone(SWIN).eval()
    maps = check_feature_contract(backbone, _inputs(batch=1))
    assert [tuple(m.shape) for m in maps] == [
        (1, 96, 16, 16),
        (1, 192, 8, 8),
        (1, 384, 4, 4),
        (1, 768, 2, 2),
    ]


def test_nhwc_maps_with_as_many_channels_as_cells_a_side_come_out_nchw():
    # test_mambaout's first stage is 16 channels of 16x16 cells at 64 px: NHWC or NCHW
    # alike; the backbone tells them apart on a wider image
    ours = create_backbone("timm/test_mambaout").eval()
    theirs = timm.create_model("test_mambaout", features_only=True).eval()
    theirs.load_state_dict(ours.body.state_dict())
    x = _inputs(65, 95, batch=1)
    with torch.no_grad():
        maps = check_feature_contract(ours, x)
        for a, b in zip(maps, theirs(x), strict=True):
            torch.testing.assert_close(a, b.permute(0, 3, 1, 2), rtol=0, atol=0)
    assert tuple(maps[0].shape) == (1, 16, 17, 24)


def test_maxvit_maps_come_out_nchw():
    backbone = create_backbone("timm/maxvit_pico_rw_256", out_indices=(1, 4)).eval()
    maps = check_feature_contract(backbone, _inputs(256, batch=1))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 64, 64), (1, 256, 8, 8)]


def test_out_indices_count_levels_as_timm_does_and_negative_ones_from_the_end():
    convnext = create_backbone("timm/convnext_atto", out_indices=(-2, -1))
    assert convnext.feature_info.module_name() == ["stages.2", "stages.3"]
    assert convnext.feature_info.reduction() == [16, 32]
    efficientnet = create_backbone("timm/efficientnet_b0", out_indices=(0, 4)).eval()
    assert efficientnet.feature_info.module_name() == ["blocks.0", "blocks.6"]
    maps = check_feature_contract(efficientnet, _inputs())
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 32, 32), (320, 2, 2)]


@pytest.mark.parametrize(
    ("name", "out_indices", "levels"),
    [
        ("timm/convnext_atto", (4,), r"levels 0\.\.3 \(or -4\.\.-1 counting from the end\)"),
        ("timm/convnext_atto", (-5, -1), r"levels 0\.\.3"),
        ("timm/efficientnet_b0", (2, 5), r"levels 0\.\.4"),
        (VIT, (11, 12), r"levels 0\.\.11"),
    ],
)
def test_an_out_of_range_level_is_refused_naming_the_levels(name, out_indices, levels):
    with pytest.raises(ValueError, match=levels):
        create_backbone(name, out_indices=out_indices)


@pytest.mark.parametrize(
    ("out_indices", "message"),
    [((1, 1), "repeats level 1"), ((3, 1), "must be in network order")],
)
def test_repeated_or_unordered_levels_are_refused_where_timm_would_drop_or_reorder(
    out_indices, message
):
    with torch.device("meta"):
        timms = timm.create_model("convnext_atto", features_only=True, out_indices=out_indices)
    assert tuple(timms.feature_info.out_indices) == out_indices  # timm takes them as given
    with pytest.raises(ValueError, match=message):
        create_backbone("timm/convnext_atto", out_indices=out_indices)


def test_without_a_pyramid_out_indices_pick_vit_blocks_at_stride_16():
    backbone = create_backbone(VIT, out_indices=(3, 7, 11)).eval()
    assert backbone.feature_info.module_name() == ["blocks.3", "blocks.7", "blocks.11"]
    assert backbone.feature_info.reduction() == [16, 16, 16]
    maps = check_feature_contract(backbone, _inputs(64, 96))
    assert [tuple(m.shape[1:]) for m in maps] == [(192, 4, 6)] * 3


def test_a_level_whose_map_rounds_up_keeps_timms_stride():
    backbone = create_backbone("timm/levit_128s")
    assert backbone.feature_info.reduction() == [16, 32, 64]
    assert backbone.metadata_fixes == []


# -- frozen_stages ---------------------------------------------------------------------------
def _sgd_step(backbone: nn.Module, x: Tensor) -> None:
    params = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss = sum(m.square().mean() for m in backbone(x))
    loss.backward()
    optimizer.step()


# model, frozen_stages, the parameters it freezes (prefixes of state-dict keys), and a
# module left to train, which the step must change
FREEZING = {
    "convnext_atto": (
        "timm/convnext_atto",
        2,
        ("body.stem_", "body.stages_0.", "body.stages_1."),
        "body.stages_2.",
    ),
    # blocks.0 is efficientnet's stride-2 level: it belongs to the stem
    "efficientnet_b0-stem": (
        "timm/efficientnet_b0",
        0,
        ("body.conv_stem.", "body.bn1.", "body.blocks.0."),
        "body.blocks.1.",
    ),
    "efficientnet_b0": (
        "timm/efficientnet_b0",
        2,
        ("body.conv_stem.", "body.bn1.", "body.blocks.0.", "body.blocks.1.", "body.blocks.2."),
        "body.blocks.3.",
    ),
    # a plain ViT's stages are its blocks; tokens and position embeddings go with the stem
    "vit_tiny": (
        VIT,
        2,
        (
            "body.model.cls_token",
            "body.model.pos_embed",
            "body.model.patch_embed.",
            "body.model.blocks.0.",
            "body.model.blocks.1.",
        ),
        "body.model.blocks.2.",
    ),
    "swin_tiny": (SWIN, 1, ("body.patch_embed.", "body.layers_0."), "body.layers_1."),
    # stages are ModuleLists, which never run themselves; the class tokens are the model's
    "coat_lite_mini": (
        "timm/coat_lite_mini",
        1,
        (
            "body.model.cls_token",
            "body.model.patch_embed1.",
            "body.model.cpe1.",
            "body.model.crpe1.",
            "body.model.serial_blocks1.",
        ),
        "body.model.serial_blocks2.",
    ),
    # timm's metadata says block.0 for blocks.0; the stage's patch embedding and
    # position block run before its blocks end, so they go with it
    "twins_svt_small": (
        "timm/twins_svt_small",
        1,
        ("body.model.patch_embeds.0.", "body.model.blocks.0.", "body.model.pos_block.0."),
        "body.model.blocks.1.",
    ),
}


@pytest.mark.parametrize(
    ("name", "frozen_stages", "frozen", "trained"), FREEZING.values(), ids=list(FREEZING)
)
def test_frozen_stages_hold_weights_and_statistics_through_a_training_step(
    name, frozen_stages, frozen, trained
):
    torch.manual_seed(0)
    backbone = create_backbone(name, frozen_stages=frozen_stages).train()
    assert backbone.frozen_stages == frozen_stages
    grads = {k: p.requires_grad for k, p in backbone.named_parameters()}
    assert sorted(k for k, g in grads.items() if not g) == sorted(
        k for k in grads if k.startswith(frozen)
    )
    for prefix in frozen:  # each prefix names something, and it stays in eval mode
        assert any(k.startswith(prefix) for k in grads), prefix
    modules = dict(backbone.named_modules())
    assert all(not m.training for n, m in modules.items() if f"{n}.".startswith(frozen))
    assert all(m.training for n, m in modules.items() if f"{n}.".startswith(trained))

    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    _sgd_step(backbone, _inputs(*backbone.probe_input_size))  # CoaT takes 224 px only
    after = backbone.state_dict()
    still = [k for k in before if k.startswith(frozen)]  # running statistics included
    assert still and all(torch.equal(before[k], after[k]) for k in still)
    moved = [k for k in before if k.startswith(trained) and not torch.equal(before[k], after[k])]
    assert any(k.endswith("weight") for k in moved)
    if any(k.endswith("running_mean") for k in before):  # unfrozen BatchNorms keep counting
        assert any(k.endswith("running_mean") for k in moved)


@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        ({"frozen_stages": 5}, r"frozen_stages=5 is out of range; accepted: -1 \(nothing\) \.\. 4"),
        (
            {"frozen_stages": 3, "out_indices": (0, 1)},
            r"accepted: -1 \(nothing\) \.\. 2 .*stages\.0, stages\.1\)",
        ),
    ],
)
def test_frozen_stages_out_of_range_names_the_range(options, accepted):
    with pytest.raises(ValueError, match=accepted):
        create_backbone("timm/convnext_atto", **options)


def test_frozen_stages_below_minus_one_is_refused_naming_the_range():
    with pytest.raises(ValueError, match=r"frozen_stages=-2 is out of range; accepted: -1"):
        create_backbone("timm/convnext_atto", frozen_stages=-2)


def test_find_module_reads_timms_module_paths_in_its_wrappers():
    from backbones.zoo.extractor import find_module

    stages = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sequential(nn.Conv2d(1, 1, 1)))
    flat = nn.Module()
    flat.stages_1 = stages[1]  # timm's flattened sequential: stages.1 -> stages_1
    wrapped = nn.Module()
    wrapped.model = nn.Module()
    wrapped.model.encoder = nn.Module()
    wrapped.model.encoder.stages = stages  # relative to an inner module (timm's gemma4)
    assert find_module(flat, "stages.1.0") == "stages_1.0"
    assert find_module(wrapped, "stages.1") == "model.encoder.stages.1"
    assert find_module(wrapped, "block.1") is None  # timm's mvitv2 names a module it lacks


def test_find_stage_falls_back_to_the_container_with_one_child_per_level():
    from backbones.zoo.extractor import find_stage

    def numbered(count: int) -> nn.ModuleList:
        return nn.ModuleList(nn.Identity() for _ in range(count))

    twins = nn.Module()  # timm: block.0 for blocks.0, next to other per-stage lists
    twins.patch_embeds, twins.blocks, twins.pos_block = numbered(3), numbered(3), numbered(3)
    mvit = nn.Module()  # timm: block.0 for stages.0, the only such container
    mvit.stages, mvit.norms = numbered(3), numbered(2)
    assert find_stage(twins, "block.2", 3) == "blocks.2"
    assert find_stage(mvit, "block.0", 3) == "stages.0"
    assert find_stage(mvit, "block.0", 4) is None  # no container has one child per level
    ambiguous = nn.Module()
    ambiguous.first, ambiguous.second = numbered(3), numbered(3)
    assert find_stage(ambiguous, "layer.1", 3) is None


# -- norm_eval and return_dict ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["timm/efficientnet_b0", VIT])
def test_norm_eval_keeps_every_norm_in_eval_after_train(name):
    backbone = create_backbone(name, norm_eval=True).train()
    norms = _norms(backbone)
    assert norms and not any(m.training for m in norms)
    assert backbone.training and any(
        m.training for m in backbone.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    )
    stats = {k: v.clone() for k, v in backbone.state_dict().items() if "running_" in k}
    backbone(_inputs())  # a training-mode forward
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in stats.items())


@pytest.mark.parametrize(
    ("name", "options", "keys"),
    [
        ("timm/convnext_atto", {}, ["stages.0", "stages.1", "stages.2", "stages.3"]),
        (VIT, {"out_indices": (5, 11)}, ["blocks.5", "blocks.11"]),
        (
            VIT,
            {"pyramid": "simple", "out_indices": (0, 3)},
            ["neck.levels.stride4", "neck.levels.stride32"],
        ),
    ],
)
def test_return_dict_keys_are_the_module_names(name, options, keys):
    backbone = create_backbone(name, return_dict=True, **options).eval()
    out = check_feature_contract(backbone, _inputs())
    assert list(out) == keys == backbone.feature_info.module_name()


# -- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "first_conv"), [("timm/resnet18", "conv1"), ("timm/convnext_atto", "stem_0")]
)
def test_in_chans_builds_a_first_convolution_of_that_many_channels(name, first_conv):
    backbone = create_backbone(name, in_chans=1).eval()
    assert backbone.body.get_submodule(first_conv).in_channels == 1
    check_feature_contract(backbone, _inputs(chans=1))
    with pytest.raises(ValueError, match=r"expected an input of shape \(batch, 1, height, width\)"):
        backbone(_inputs(chans=3))


def test_in_chans_is_in_the_pretrained_cfg():
    backbone = create_backbone("timm/convnext_atto", in_chans=1)
    assert backbone.pretrained_cfg["input_size"] == (1, 224, 224)
    assert len(backbone.pretrained_cfg["mean"]) == len(backbone.pretrained_cfg["std"]) == 1


def _drop_probs(model: nn.Module) -> list[float]:
    return [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]


def test_drop_path_rate_is_timms_stochastic_depth_schedule():
    probs = _drop_probs(create_backbone("timm/convnext_atto", drop_path_rate=0.2))
    with torch.device("meta"):
        reference = timm.create_model("convnext_atto", features_only=True, drop_path_rate=0.2)
    assert probs == _drop_probs(reference)
    assert max(probs) == pytest.approx(0.2) and probs == sorted(probs)
    assert _drop_probs(create_backbone("timm/convnext_atto")) == []


@pytest.mark.parametrize(
    ("name", "strides"),
    [("timm/resnet18", [2, 4, 8, 16, 16]), ("timm/convnext_atto", [4, 8, 16, 16])],
)
def test_output_stride_16_dilates_the_last_stage_as_timm_does(name, strides):
    torch.manual_seed(0)
    backbone = create_backbone(name, output_stride=16).eval()
    assert backbone.feature_info.reduction() == strides
    reference = timm.create_model(name.removeprefix("timm/"), features_only=True, output_stride=16)
    backbone.body.load_state_dict(randomize_batchnorm_stats(reference).state_dict())
    x = _inputs()
    maps = check_feature_contract(backbone, x)
    assert tuple(maps[-1].shape[-2:]) == (4, 4)
    with torch.no_grad():
        for ours, theirs in zip(maps, reference.eval()(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "options", "family"),
    [
        (VIT, {"output_stride": 16}, "timm/vision_transformer"),
        (SWIN, {"output_stride": 8}, "timm/swin_transformer"),
        ("timm/densenet121", {"drop_path_rate": 0.1}, "timm/densenet"),
        ("timm/convnext_atto", {"block": "basic"}, "timm/convnext"),
        ("timm/convnext_atto", {"zero_init_last": True}, "timm/convnext"),
        ("timm/convnext_atto", {"pyramid": "simple"}, "timm/convnext"),
    ],
    ids=[
        "output_stride-vit",
        "output_stride-swin",
        "drop_path_rate",
        "block",
        "zero_init_last",
        "pyramid",
    ],
)
def test_an_option_the_family_cannot_honour_is_refused_naming_it(name, options, family):
    with pytest.raises(UnsupportedOptionError) as info:
        create_backbone(name, **options)
    ((option, value),) = options.items()
    assert (info.value.family, info.value.option, info.value.value) == (family, option, value)
    assert f"{option}={value!r} is not supported by the {family!r} family" in str(info.value)


def test_the_families_that_have_pyramid_are_the_plain_vits():
    with pytest.raises(UnsupportedOptionError) as info:
        create_backbone("timm/convnext_atto", pyramid="simple")
    assert "timm/vision_transformer" in info.value.families
    assert "timm/convnext" not in info.value.families


def test_an_unsupported_option_names_every_family_that_has_it():
    with pytest.raises(UnsupportedOptionError) as info:
        create_backbone(VIT, output_stride=16)
    assert "resnet" in info.value.families


@pytest.mark.filterwarnings("ignore:CSATv2 is designed for 3-channel:UserWarning")
def test_in_chans_a_network_takes_but_cannot_run_is_an_unsupported_option():
    with pytest.raises(UnsupportedOptionError, match="in_chans=1 is not supported by the "
                       "'timm/csatv2' family") as info:  # fmt: skip
        create_backbone("timm/csatv2", in_chans=1)
    assert "resnet" in info.value.families and "timm/csatv2" not in info.value.families


def test_output_stride_refused_by_an_assertion_in_timm_is_an_unsupported_option():
    with pytest.raises(UnsupportedOptionError, match="output_stride=16"):
        create_backbone("timm/dla46x_c", output_stride=16)


@pytest.mark.parametrize("name", [VIT, PATCH14])
def test_a_vit_gives_ceil_size_over_stride_cells_at_sizes_its_patch_does_not_divide(name):
    # timm pads the image to a multiple of the patch (dynamic_img_pad), as ViTDet does
    backbone = create_backbone(name, out_indices=(-1,)).eval()
    check_feature_contract(backbone, _inputs(100, 72, batch=1))
    patch = backbone.feature_info.reduction()[-1]
    assert tuple(backbone(_inputs(100, 72, batch=1))[0].shape[2:]) == (
        -(-100 // patch),
        -(-72 // patch),
    )


# -- sizes the strides do not divide ---------------------------------------------------------
ODD = (65, 97)  # one pixel over a multiple of 32 in height, one under in width


def _ceil_cells(backbone: nn.Module, height: int, width: int) -> list[tuple[int, int]]:
    return [(-(-height // s), -(-width // s)) for s in backbone.feature_info.reduction()]


@pytest.mark.parametrize(
    ("name", "pad_to"),
    [
        ("timm/resnet18", 1),  # its convolutions pad: ceil by itself
        ("timm/efficientnet_b0", 1),
        ("timm/convnext_atto", 32),  # an unpadded 4x4 stem rounds down
        ("timm/poolformer_s12", 32),  # rounds down at 65, not at 63
        (SWIN, 32),  # refuses sizes its patch does not divide
        ("timm/hrnet_w18_small", 32),  # its branches disagree on the cells
        ("timm/sequencer2d_s", 14),  # strides 7, 14, 14
        ("timm/convmixer_768_32", 7),
    ],
)
def test_every_map_has_ceil_size_over_stride_cells_at_any_size(name, pad_to):
    backbone = create_backbone(name).eval()
    assert backbone.pad_to == pad_to
    for height, width in (ODD, (pad_to * 3, pad_to * 2 + 1), (33, 33)):
        maps = check_feature_contract(backbone, _inputs(height, width, batch=1))
        assert [tuple(m.shape[2:]) for m in maps] == _ceil_cells(backbone, height, width)


def test_a_network_that_rounds_down_sees_the_image_padded_as_a_detector_pads_its_batch():
    ours = create_backbone("timm/convnext_atto").eval()
    theirs = timm.create_model("convnext_atto", features_only=True).eval()
    theirs.load_state_dict(ours.body.state_dict())
    x = _inputs(*ODD, batch=1)
    with torch.no_grad():
        got = ours(x)
        # zeros on the right and bottom up to 96x128, then each map cut to ceil cells
        padded = theirs(F.pad(x, (0, 128 - ODD[1], 0, 96 - ODD[0])))
    cells = _ceil_cells(ours, *ODD)
    for a, b, (h, w) in zip(got, padded, cells, strict=True):
        torch.testing.assert_close(a, b[:, :, :h, :w], rtol=0, atol=0)
    with torch.no_grad():  # at a multiple of the strides nothing is padded
        x = _inputs(64, 96, batch=1)
        for a, b in zip(ours(x), theirs(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_network_that_rounds_up_by_itself_sees_the_image_as_it_is():
    ours = create_backbone("timm/resnet18").eval()
    theirs = timm.create_model("resnet18", features_only=True).eval()
    theirs.load_state_dict(ours.body.state_dict())
    x = _inputs(*ODD, batch=1)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_size_the_network_does_not_take_is_refused_naming_the_input_and_the_size_it_took():
    backbone = create_backbone("timm/levit_128s").eval()  # attention biases fixed at 224
    with pytest.raises(
        ValueError,
        match=r"timm/levit_128s failed on an input of shape \[1, 3, 65, 97\] \(torch.float32\): "
        r"RuntimeError: .*It ran on 224x224 images when it was made",
    ) as caught:
        backbone(_inputs(*ODD, batch=1))
    assert isinstance(caught.value.__cause__, RuntimeError)  # the network's own error


# -- the simple pyramid ----------------------------------------------------------------------
def test_simple_pyramid_turns_a_vit_into_strides_4_to_32():
    backbone = create_backbone(VIT, pyramid="simple").eval()
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert backbone.feature_info.channels() == [48, 96, 192, 192]
    maps = check_feature_contract(backbone, _inputs(96, 160, batch=1))
    assert [tuple(m.shape[-2:]) for m in maps] == [(24, 40), (12, 20), (6, 10), (3, 5)]


def test_simple_pyramid_takes_a_detector_sized_image():
    backbone = create_backbone(VIT, pyramid="simple", out_indices=(1, 2, 3)).eval()
    maps = check_feature_contract(backbone, _inputs(224, 320, batch=1))
    assert [tuple(m.shape[-2:]) for m in maps] == [(28, 40), (14, 20), (7, 10)]


def test_pyramid_out_indices_pick_among_the_four_levels_and_build_only_those():
    backbone = create_backbone(VIT, pyramid="simple", out_indices=(1, 2))
    assert backbone.feature_info.reduction() == [8, 16]
    assert list(backbone.neck.levels) == ["stride8", "stride16"]
    with pytest.raises(ValueError, match=r"levels 0\.\.3"):
        create_backbone(VIT, pyramid="simple", out_indices=(4,))


def test_simple_pyramid_of_a_patch_14_vit_is_at_strides_4_to_32():
    backbone = create_backbone(PATCH14, pyramid="simple").eval()
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    maps = check_feature_contract(backbone, _inputs(112, 224, batch=1))
    assert [tuple(m.shape[-2:]) for m in maps] == [(28, 56), (14, 28), (7, 14), (4, 7)]


def test_simple_pyramid_of_a_patch_14_vit_takes_any_size_the_patch_divides():
    backbone = create_backbone(PATCH14, pyramid="simple").eval()
    check_feature_contract(backbone, _inputs(112, 168, batch=1))


def test_a_patch_14_vit_is_measured_at_a_small_size():
    assert max(create_backbone(PATCH14).probe_input_size) <= 64


# -- weights ---------------------------------------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Tensor]:
    """convnext_atto's weights (random) as timm/convnext_atto.d2_in1k in an offline HF cache.

    huggingface_hub reads its environment at import: its constants are patched as well.
    """
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--timm--convnext_atto.d2_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    torch.manual_seed(3)
    state = timm.create_model("convnext_atto").state_dict()
    save_file(state, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return state


def _timm_key(key: str) -> str:
    """The classifier's key of a backbone key: timm's extractor flattens stem.0 to stem_0."""
    return re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", key.removeprefix("body."))


def _assert_holds(backbone: nn.Module, state: dict[str, Tensor]) -> None:
    ours = backbone.state_dict()
    assert {_timm_key(k) for k in ours} == {k for k in state if not k.startswith("head.")}
    for key, value in ours.items():
        assert torch.equal(value, state[_timm_key(key)]), key


@pytest.mark.parametrize("pretrained", [True, "d2_in1k"])
def test_pretrained_loads_timms_weights_from_the_hugging_face_cache(hub_weights, pretrained):
    backbone = create_backbone("timm/convnext_atto", pretrained=pretrained)
    _assert_holds(backbone, hub_weights)
    report = backbone.pretrained_report
    assert report.source == "timm:convnext_atto.d2_in1k" and report.ok
    assert len(report.loaded) == len(backbone.state_dict())
    assert backbone.pretrained_cfg["tag"] == "d2_in1k"


def test_pretrained_cfg_has_timms_keys_and_timm_resolves_it(hub_weights):
    backbone = create_backbone("timm/convnext_atto", pretrained=True)
    cfg = backbone.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/convnext_atto.d2_in1k"
    assert (cfg["input_size"], cfg["mean"], cfg["std"]) == (
        (3, 224, 224),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    data = timm.data.resolve_data_config(model=backbone)
    assert data["input_size"] == (3, 224, 224)
    assert (data["mean"], data["interpolation"], data["crop_pct"]) == (
        cfg["mean"],
        "bicubic",
        0.875,
    )


def test_pretrained_with_in_chans_1_sums_the_rgb_filters_as_timm_does(hub_weights):
    backbone = create_backbone("timm/convnext_atto", pretrained=True, in_chans=1)
    stem = backbone.body.stem_0.weight
    torch.testing.assert_close(stem, hub_weights["stem.0.weight"].sum(1, keepdim=True))


def test_an_unknown_weights_tag_lists_the_tags(hub_weights):
    with pytest.raises(
        WeightsError, match=r"pretrained='in22k' is neither a weights tag.*Tags: d2_in1k"
    ):
        create_backbone("timm/convnext_atto", pretrained="in22k")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_of_a_timm_state_dict_loads(tmp_path, suffix):
    torch.manual_seed(4)
    state = timm.create_model("convnext_atto").state_dict()
    path = tmp_path / f"convnext_atto{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    backbone = create_backbone("timm/convnext_atto", pretrained=str(path))
    _assert_holds(backbone, state)
    assert backbone.pretrained_report.source == str(path)
    assert backbone.pretrained_cfg["file"] == str(path)


# -- saving ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("timm/convnext_atto", {"out_indices": (1, 3), "frozen_stages": 1}),
        (VIT, {"pyramid": "simple", "out_indices": (1, 2, 3)}),
    ],
    ids=["convnext_atto", "vit_tiny-pyramid"],
)
def test_save_and_load_give_the_same_backbone(tmp_path, name, options):
    torch.manual_seed(0)
    backbone = randomize_batchnorm_stats(create_backbone(name, **options)).eval()
    for param in backbone.parameters():  # not left at their initial values (LayerNorm's 1s)
        param.data.add_(torch.randn_like(param) * 0.01)
    loaded = load_backbone(save_backbone(backbone, tmp_path / "zoo.safetensors")).eval()
    assert loaded.backbone_config == backbone.backbone_config
    assert loaded.feature_info == backbone.feature_info
    frozen = sorted(k for k, p in backbone.named_parameters() if not p.requires_grad)
    assert sorted(k for k, p in loaded.named_parameters() if not p.requires_grad) == frozen
    x = _inputs()
    with torch.no_grad():
        for a, b in zip(backbone(x), loaded(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- TorchScript and torch.export -----------------------------------------------------------
COMPILED = {
    "convnext_atto": ("timm/convnext_atto", {}),
    "convnext_atto-dict": ("timm/convnext_atto", {"return_dict": True, "out_indices": (1, 3)}),
    "swin-nhwc": (SWIN, {}),
    "levit-typed-union": ("timm/levit_128s", {}),  # timm types its forward as a Union
    "tv-resnet18": ("tv/resnet18", {"frozen_stages": 1}),
}


def _as_list(out: object) -> list[Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(out)  # type: ignore[union-attr]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("backbone", list(COMPILED))
def test_torchscript_of_a_zoo_backbone_gives_the_eager_maps(backbone):
    name, options = COMPILED[backbone]
    model = create_backbone(name, **options).eval()
    scripted = torch.jit.script(model)
    x = _inputs(*model.probe_input_size, batch=1)
    with torch.no_grad():
        eager, got = model(x), scripted(x)
    assert type(got) is type(eager)
    if isinstance(eager, dict):
        assert list(got) == list(eager) == model.feature_info.module_name()
    for a, b in zip(_as_list(eager), _as_list(got), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with pytest.raises(
        torch.jit.Error,
        match=r"expected an input of shape \(batch, 3, height, width\), got \[1, 1, 64, 64\]",
    ):
        scripted(torch.zeros(1, 1, 64, 64))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_padded_backbone_scripts_and_exports_with_its_padding():
    model = create_backbone("timm/convnext_atto").eval()
    x = _inputs(*ODD, batch=1)
    with torch.no_grad():
        eager = model(x)
        compiled = [torch.jit.script(model), torch.export.export(model, (x,)).module()]
        for other in compiled:
            for a, b in zip(eager, other(x), strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert [tuple(m.shape[2:]) for m in eager] == _ceil_cells(model, *ODD)


@pytest.mark.parametrize("backbone", ["convnext_atto", "swin-nhwc"])
def test_torch_export_of_a_zoo_backbone_gives_the_eager_maps(backbone):
    name, options = COMPILED[backbone]
    model = create_backbone(name, **options).eval()
    x = _inputs(*model.probe_input_size, batch=1)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        for a, b in zip(model(x), program.module()(x), strict=True):
            assert b.shape == a.shape and b.dim() == 4
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_the_simple_pyramid_neck_is_scriptable_at_a_patch_14_size():
    neck = SimpleFeaturePyramid(64, stride=14).eval()
    maps = [torch.randn(1, 64, 8, 12, generator=torch.Generator().manual_seed(0))]
    eager = neck(maps, (112, 168))
    scripted = torch.jit.script(neck)(maps, (112, 168))
    assert [tuple(m.shape[2:]) for m in eager] == [(28, 42), (14, 21), (7, 11), (4, 6)]
    for a, b in zip(eager, scripted, strict=True):
        torch.testing.assert_close(b, a)


# -- heads and detectors on the zoo ----------------------------------------------------------
DETECTOR_BACKBONES = {
    "convnext_atto": ("timm/convnext_atto", {}),
    # strides 4..32 (its stride-2 level left out): the R-CNNs' default anchors take 5 maps
    "tv-mobilenet_v3_large": ("tv/mobilenet_v3_large", {"out_indices": (-4, -3, -2, -1)}),
    "swin_tiny": (SWIN, {}),
    "vit_tiny-pyramid": (VIT, {"pyramid": "simple"}),
}
DETECTORS = {
    # the R-CNNs take every level and a max-pooled one; RetinaNet strides 8, 16, 32 and P6, P7
    "fasterrcnn": (detection.FasterRCNN, None, "maxpool"),
    "retinanet": (detection.RetinaNet, (-3, -2, -1), "p6p7"),
}


def _targets(count: int, size: int) -> list[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    targets = []
    for _ in range(count):
        corner = torch.rand(2, 2, generator=generator) * size / 2
        extent = torch.rand(2, 2, generator=generator) * size * 0.4 + 8
        targets.append(
            {"boxes": torch.cat([corner, corner + extent], 1), "labels": torch.tensor([1, 2])}
        )
    return targets


@pytest.mark.parametrize("detector", list(DETECTORS))
@pytest.mark.parametrize("backbone", list(DETECTOR_BACKBONES))
def test_torchvision_detectors_train_and_predict_on_zoo_backbones(backbone, detector):
    name, options = DETECTOR_BACKBONES[backbone]
    detector_cls, out_indices, extra_blocks = DETECTORS[detector]
    if out_indices is not None:
        options = {**options, "out_indices": out_indices}
    torch.manual_seed(0)
    fpn = create_model(
        name, "fpn", backbone_kwargs=options, extra_blocks=extra_blocks, out_channels=64
    )
    model = detector_cls(fpn, num_classes=3, min_size=96, max_size=96).train()
    images = list(_inputs(96, batch=2).sigmoid())

    losses = model(images, _targets(2, 96))
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in fpn.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    with torch.no_grad():
        predictions = model.eval()(images)
    assert len(predictions) == 2
    assert all(set(p) == {"boxes", "labels", "scores"} for p in predictions)


@pytest.mark.parametrize(
    ("head", "widths"),
    [("semantic_fpn", {"fpn_channels": 64, "channels": 32}), ("upernet", {"channels": 64})],
)
def test_segmentation_heads_train_a_step_on_a_zoo_backbone(head, widths):
    torch.manual_seed(0)
    model = create_model("timm/convnext_atto", head, num_classes=3, **widths).train()
    x = _inputs(64, 96)
    logits = model(x)
    assert logits.shape == (2, 3, 64, 96)
    target = torch.randint(0, 3, (2, 64, 96), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(logits, target)
    assert torch.isfinite(loss)
    loss.backward()
    stem = model.backbone.body.stem_0.weight.grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0


# -- import hygiene --------------------------------------------------------------------------
IMPORT_PROBE = """
import json, sys
import backbones
report = {"import": sorted(m for m in ("timm", "torchvision") if m in sys.modules)}
backbones.list_backbones(), backbones.list_blocks(), backbones.list_layers()
report["list"] = sorted(m for m in ("timm", "torchvision") if m in sys.modules)
report["plugins"] = sorted(p.name for p in backbones.list_plugins())
backbones.create_backbone("resnet18")
report["resnet18"] = sorted(m for m in ("timm", "torchvision") if m in sys.modules)
print(json.dumps(report))
"""


@pytest.mark.parametrize("autoload", ["", "1"], ids=["with-plugins", "built-ins-only"])
def test_importing_backbones_or_building_a_resnet_imports_neither_timm_nor_torchvision(autoload):
    # The repository's plugins (attention: timm's layers; dcn: torchvision's
    # deform_conv2d) import those when they first build a layer, not when discovered.
    # Listing and building timm/ names without building more than asked is tested
    # above, in this process.
    env = {k: v for k, v in os.environ.items() if k != "BACKBONES_DISABLE_PLUGIN_AUTOLOAD"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**env, "BACKBONES_DISABLE_PLUGIN_AUTOLOAD": autoload},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["import"] == []  # import backbones imports neither timm nor torchvision
    assert report["list"] == []  # nor does discovery, listing every registry
    if not autoload:
        assert {"attention", "dcn"} <= set(report["plugins"])
    assert report["resnet18"] == []  # nor does building a registered ResNet
