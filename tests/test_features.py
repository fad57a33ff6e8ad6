"""The feature contract: what ``feature_info`` says, and that the outputs agree with it.

Levels are timm's: 0 = stem after ``act1`` (stride 2), 1..4 = ``layer1``..``layer4``.
Description-only tests build on the ``meta`` device, where construction is free.
"""

import math

import pytest
import timm
import torch
from torch import nn

from backbones import FeatureInfo, FeatureLevel, create_backbone

RESNET50_CHANNELS = [64, 256, 512, 1024, 2048]
RESNET18_CHANNELS = [64, 64, 128, 256, 512]
REDUCTIONS = [2, 4, 8, 16, 32]
MODULES = ["act1", "layer1", "layer2", "layer3", "layer4"]
ALL_LEVELS = (0, 1, 2, 3, 4)


def _meta_backbone(name: str = "resnet50", **options) -> nn.Module:
    with torch.device("meta"):
        return create_backbone(name, **options)


def _meta_timm(name: str = "resnet50", **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, features_only=True, **kwargs)


def _image(height: int = 64, width: int = 64, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def _toy_info(out_indices=(1, 3)) -> FeatureInfo:
    levels = [FeatureLevel(i, c, r, m) for i, (c, r, m) in enumerate(zip(*_TABLE, strict=True))]
    return FeatureInfo(levels, out_indices)


_TABLE = (RESNET50_CHANNELS, REDUCTIONS, MODULES)


# -- accessors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "out_indices",
    [(0, 1, 2, 3, 4), (1, 2, 3, 4), (1, 3), (0,), (4,), (0, 2, 4)],
)
def test_channels_reduction_module_name_follow_out_indices(out_indices):
    info = _meta_backbone(out_indices=out_indices).feature_info

    assert info.channels() == [RESNET50_CHANNELS[i] for i in out_indices]
    assert info.reduction() == [REDUCTIONS[i] for i in out_indices]
    assert info.module_name() == [MODULES[i] for i in out_indices]
    assert info.out_indices == out_indices


def test_int_idx_is_a_level_number_not_a_position():
    info = _meta_backbone(out_indices=(3, 4)).feature_info

    # Position 0 of the outputs is layer3, but idx=0 names level 0, the stem.
    assert info.channels(0) == 64
    assert info.reduction(0) == 2
    assert info.module_name(0) == "act1"
    assert info.channels(1) == 256
    assert info.channels(4) == 2048
    assert info.get("index", 3) == 3


@pytest.mark.parametrize("idx", [[0, 2], (0, 2)])
def test_sequence_idx_returns_values_for_those_levels(idx):
    info = _meta_backbone(out_indices=(4,)).feature_info

    assert info.channels(idx) == [64, 512]
    assert info.reduction(idx) == [2, 8]
    assert info.module_name(idx) == ["act1", "layer2"]
    assert info.get_dicts(idx=idx) == [
        {"index": 0, "num_chs": 64, "reduction": 2, "module": "act1"},
        {"index": 2, "num_chs": 512, "reduction": 8, "module": "layer2"},
    ]


def test_get_dicts_returns_all_fields_of_returned_features():
    info = _meta_backbone(out_indices=(1, 3)).feature_info

    assert info.get_dicts() == [
        {"index": 1, "num_chs": 256, "reduction": 4, "module": "layer1"},
        {"index": 3, "num_chs": 1024, "reduction": 16, "module": "layer3"},
    ]


def test_get_dicts_keys_selects_fields():
    info = _meta_backbone(out_indices=(1, 3)).feature_info

    assert info.get_dicts(keys=["num_chs", "reduction"]) == [
        {"num_chs": 256, "reduction": 4},
        {"num_chs": 1024, "reduction": 16},
    ]
    assert info.get_dicts(keys=["module"], idx=0) == {"module": "act1"}
    assert info.get_dicts(keys=["module"], idx=[2, 4]) == [
        {"module": "layer2"},
        {"module": "layer4"},
    ]


def test_unknown_field_raises_key_error_naming_the_accepted_fields():
    info = _toy_info()

    with pytest.raises(KeyError, match="num_chs"):
        info.get("channels")


@pytest.mark.parametrize(
    ("name", "out_indices"),
    [
        ("resnet18", (0, 1, 2, 3, 4)),
        ("resnet18", (2, 4)),
        ("resnet50d", (0, 3)),
        ("resnet18", (1,)),
    ],
)
@torch.no_grad()
def test_len_equals_number_of_returned_features(name, out_indices):
    backbone = create_backbone(name, out_indices=out_indices).eval()

    outputs = backbone(_image())

    assert len(backbone.feature_info) == len(outputs) == len(out_indices)


@torch.no_grad()
def test_item_i_describes_output_i():
    backbone = create_backbone("resnet18", out_indices=(0, 2, 3)).eval()
    info = backbone.feature_info

    outputs = backbone(_image(64, 64))

    for i, feature in enumerate(outputs):
        assert info[i]["num_chs"] == feature.shape[1]
        assert info[i]["reduction"] == 64 // feature.shape[-1]
        assert info[i]["module"] == info.module_name()[i]
    assert info[-1] == {"index": 3, "num_chs": 256, "reduction": 16, "module": "layer3"}
    with pytest.raises(IndexError):
        info[3]


def test_slice_returns_the_dicts_of_those_outputs():
    info = _meta_backbone(out_indices=(1, 2, 3)).feature_info

    assert info[0:2] == info.get_dicts()[0:2]


def test_iteration_yields_returned_features_in_order():
    info = _meta_backbone(out_indices=(0, 2, 4)).feature_info

    items = list(info)

    assert items == info.get_dicts()
    assert [d["module"] for d in items] == ["act1", "layer2", "layer4"]


def test_from_other_describes_other_out_indices_and_leaves_original_alone():
    info = _meta_backbone(out_indices=(1, 2, 3, 4)).feature_info

    other = info.from_other((0, -1))

    assert other.out_indices == (0, 4)
    assert other.channels() == [64, 2048]
    assert other == _meta_backbone(out_indices=(0, 4)).feature_info
    assert info.out_indices == (1, 2, 3, 4)
    assert info.channels() == [256, 512, 1024, 2048]


def test_equality_compares_levels_and_out_indices():
    info = _meta_backbone("resnet50", out_indices=(1, 2)).feature_info

    assert info == _meta_backbone("resnet50", out_indices=(1, 2)).feature_info
    assert info == _meta_backbone("resnet50", out_indices=(-4, -3)).feature_info
    assert info != _meta_backbone("resnet50", out_indices=(1, 3)).feature_info
    assert info != _meta_backbone("resnet18", out_indices=(1, 2)).feature_info
    assert info != _meta_backbone("resnet50", out_indices=(1, 2), output_stride=8).feature_info
    assert info != info.get_dicts()
    with pytest.raises(TypeError):
        hash(info)


def test_repr_names_the_returned_modules_with_channels_and_strides():
    info = _meta_backbone(out_indices=(0, 3)).feature_info

    text = repr(info)

    assert text.startswith("FeatureInfo(")
    assert "act1" in text
    assert "layer3" in text
    assert "num_chs=1024" in text
    assert "reduction=16" in text
    assert "layer2" not in text


def test_feature_info_built_by_hand_uses_the_same_accessors():
    info = _toy_info((1, 3))

    assert info.channels() == [256, 1024]
    assert info.module_name(0) == "act1"
    assert len(info) == 2
    assert info == _meta_backbone("resnet50", out_indices=(1, 3)).feature_info


# -- timm compatibility --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "out_indices"),
    [
        ("resnet50", (0, 1, 2, 3, 4)),
        ("resnet50", (1, 2, 3, 4)),
        ("resnet50", (1, 3)),
        ("resnet50", (0,)),
        ("resnet50", (4,)),
        ("resnet50", (-2, -1)),
        ("resnet18", (0, 2, 4)),
        ("resnet50d", (2, 3)),
        ("wide_resnet50_2", (1, 4)),
    ],
)
def test_accessors_equal_timm_features_only(name, out_indices):
    ours = _meta_backbone(name, out_indices=out_indices).feature_info
    theirs = _meta_timm(name, out_indices=out_indices).feature_info

    assert ours.channels() == theirs.channels()
    assert ours.reduction() == theirs.reduction()
    assert ours.module_name() == theirs.module_name()
    assert ours.get_dicts() == theirs.get_dicts()
    keys = ["num_chs", "module"]
    assert ours.get_dicts(keys=keys) == theirs.get_dicts(keys=keys)
    for level in ALL_LEVELS:
        assert ours.channels(level) == theirs.channels(level)
        assert ours.reduction(level) == theirs.reduction(level)
        assert ours.module_name(level) == theirs.module_name(level)
    assert ours.channels([0, 4]) == theirs.channels([0, 4])


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_reductions_equal_timm(output_stride):
    ours = _meta_backbone(out_indices=ALL_LEVELS, output_stride=output_stride).feature_info
    theirs = _meta_timm(out_indices=ALL_LEVELS, output_stride=output_stride).feature_info

    assert ours.get_dicts() == theirs.get_dicts()


def test_len_counts_returned_features_unlike_timm_which_counts_all_levels():
    """A deliberate difference: ``len(ours.feature_info) == len(outputs)``.

    timm's ``FeatureInfo.__len__`` counts every level of the network whatever
    ``out_indices`` says; ours counts the features ``forward`` returns, so that
    ``zip(feature_info, outputs)`` pairs each output with its description.
    """
    out_indices = (1, 3)
    backbone = create_backbone("resnet18", out_indices=out_indices).eval()
    theirs = _meta_timm("resnet18", out_indices=out_indices).feature_info

    with torch.no_grad():
        outputs = backbone(_image())

    assert len(backbone.feature_info) == len(outputs) == 2
    assert len(theirs) == 5
    assert list(backbone.feature_info) == theirs.get_dicts()


# -- negative indices, dict outputs, shapes ---------------------------------------------


@torch.no_grad()
def test_negative_out_indices_select_the_deepest_levels():
    torch.manual_seed(0)
    negative = create_backbone("resnet18", out_indices=(-2, -1)).eval()
    positive = create_backbone("resnet18", out_indices=(3, 4)).eval()
    positive.load_state_dict(negative.state_dict(), strict=True)
    x = _image()

    got, expected = negative(x), positive(x)

    assert negative.feature_info.out_indices == (3, 4)
    assert negative.feature_info.module_name() == ["layer3", "layer4"]
    assert [t.shape[1] for t in got] == [256, 512]
    assert len(got) == 2
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 3), (4,)])
@torch.no_grad()
def test_return_dict_keys_are_module_names_and_tensors_equal_list_output(out_indices):
    torch.manual_seed(0)
    as_dict = create_backbone("resnet18", out_indices=out_indices, return_dict=True).eval()
    as_list = create_backbone("resnet18", out_indices=out_indices).eval()
    as_list.load_state_dict(as_dict.state_dict(), strict=True)
    x = _image()

    got, expected = as_dict(x), as_list(x)

    assert isinstance(got, dict)
    assert list(got) == as_dict.feature_info.module_name()
    assert as_dict.feature_info == as_list.feature_info
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got.values(), expected, strict=True))


@pytest.mark.parametrize("name", ["resnet18", "resnet50d"])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize(("height", "width"), [(65, 97), (33, 47)])
@torch.no_grad()
def test_output_shapes_match_feature_info_for_odd_sizes(name, output_stride, height, width):
    backbone = create_backbone(name, out_indices=ALL_LEVELS, output_stride=output_stride).eval()

    outputs = backbone(_image(height, width, batch=2))

    info = backbone.feature_info
    assert [tuple(t.shape) for t in outputs] == [
        (2, c, math.ceil(height / r), math.ceil(width / r))
        for c, r in zip(info.channels(), info.reduction(), strict=True)
    ]


def test_resnet18_channels_differ_from_bottleneck_variants():
    assert _meta_backbone("resnet18", out_indices=ALL_LEVELS).feature_info.channels() == (
        RESNET18_CHANNELS
    )
    assert _meta_backbone("resnext50_32x4d", out_indices=ALL_LEVELS).feature_info.channels() == (
        RESNET50_CHANNELS
    )


# -- stages deeper than the deepest index are not built --------------------------------


def _top_level_keys(module: nn.Module) -> set[str]:
    return {key.split(".")[0] for key in module.state_dict()}


@pytest.mark.parametrize(
    ("out_indices", "built", "absent"),
    [
        ((1,), {"conv1", "bn1", "layer1"}, {"layer2", "layer3", "layer4"}),
        ((0,), {"conv1", "bn1"}, {"maxpool", "layer1", "layer2", "layer3", "layer4"}),
        ((0, 2), {"conv1", "bn1", "layer1", "layer2"}, {"layer3", "layer4"}),
        ((-2,), {"conv1", "bn1", "layer1", "layer2", "layer3"}, {"layer4"}),
    ],
)
def test_stages_deeper_than_deepest_index_are_not_built(out_indices, built, absent):
    backbone = _meta_backbone("resnet50", out_indices=out_indices)

    assert _top_level_keys(backbone) == built
    for name in absent:
        assert not hasattr(backbone, name)
        assert name not in backbone


def test_stem_only_backbone_has_no_maxpool_and_returns_the_stem():
    backbone = create_backbone("resnet50", out_indices=(0,)).eval()

    with torch.no_grad():
        (stem,) = backbone(_image(64, 64, batch=2))

    assert not hasattr(backbone, "maxpool")
    assert list(backbone.keys()) == ["conv1", "bn1", "act1"]
    assert tuple(stem.shape) == (2, 64, 32, 32)


def test_truncated_backbone_has_fewer_parameters_than_the_full_one():
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    full = _meta_backbone("resnet50", out_indices=ALL_LEVELS)
    truncated = _meta_backbone("resnet50", out_indices=(1,))
    layers_2_to_4 = sum(count(full[f"layer{k}"]) for k in (2, 3, 4))

    assert count(full) - count(truncated) == layers_2_to_4
