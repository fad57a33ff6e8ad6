"""The DCNv2 bottleneck: an untrained one is the plain bottleneck, a trained one deforms.

Block-level tests build blocks directly; backbone-level tests go through the
registry (``dcnv2_bottleneck`` comes from the installed plugin).
"""

import copy
import functools
import math

import pytest
import torch
from backbones_dcn import DCNv2Bottleneck, ModulatedDeformConv2d, OffsetConv2d
from timm.layers import SEModule
from torch import Tensor, nn
from torch.nn import functional as F

from backbones import create_backbone
from backbones.blocks import Bottleneck
from backbones.layers import InsertedLayer
from backbones.testing import assert_features_close, randomize_batchnorm_stats

DCN_STAGES = ("bottleneck", "bottleneck", "dcnv2_bottleneck", "dcnv2_bottleneck")
ALL_LEVELS = (1, 2, 3, 4)
TAPS = 9


# -- helpers ---------------------------------------------------------------------------


# float32 rounding: the deformable and the plain conv sum in different orders, and
# resnet50's deep features reach about 800, where 1e-3 is a few units in the 6th digit
assert_close = functools.partial(assert_features_close, atol=5e-3, rtol=1e-4)


def max_rel_diff(a: list[Tensor], b: list[Tensor]) -> float:
    return max(
        float((x - y).abs().max()) / max(1.0, float(y.abs().max()))
        for x, y in zip(a, b, strict=True)
    )


def offset_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if ".conv2.conv_offset." in k]


def plain_and_dcn(variant: str, seed: int = 0, **options) -> tuple[nn.Module, nn.Module]:
    """A plain backbone with random BN stats, and the DCN-in-layer3/4 one loaded from it."""
    torch.manual_seed(seed)
    plain = randomize_batchnorm_stats(create_backbone(variant, **options), seed=seed).eval()
    dcn = create_backbone(variant, block=DCN_STAGES, **options).eval()
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert sorted(missing) == sorted(offset_keys(dcn))
    return plain, dcn


def run(model: nn.Module, x: Tensor) -> list[Tensor]:
    """A backbone's features, or a block's output as a one-element list."""
    with torch.no_grad():
        out = model(x)
    return [out] if isinstance(out, Tensor) else list(out)


# -- the block on its own --------------------------------------------------------------

BLOCK_CASES = {
    "plain": {},
    "stride_2": {"stride": 2},
    "dilation_2": {"dilation": 2},
    "first_dilation_1_dilation_2": {"dilation": 2, "first_dilation": 1},
    "groups_4": {"groups": 4, "base_width": 8},
    "stride_2_groups_4_dilation_2": {"stride": 2, "groups": 4, "base_width": 8, "dilation": 2},
}


def block_pair(case: str, **dcn_kwargs) -> tuple[nn.Module, nn.Module]:
    """A plain bottleneck (128 -> 128 channels) with random BN stats, and the DCN one loaded."""
    kwargs = BLOCK_CASES[case]
    stride = kwargs.get("stride", 1)
    downsample = None
    if stride != 1:
        downsample = nn.Sequential(nn.Conv2d(128, 128, 1, stride, bias=False), nn.BatchNorm2d(128))
    torch.manual_seed(0)
    plain = randomize_batchnorm_stats(Bottleneck(128, 32, downsample=downsample, **kwargs)).eval()
    dcn = DCNv2Bottleneck(128, 32, downsample=downsample, **kwargs, **dcn_kwargs).eval()
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)
    offset_params = ["conv2.conv_offset.bias", "conv2.conv_offset.weight"]
    assert (sorted(missing), unexpected) == (offset_params, [])
    return plain, dcn


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_conv2_is_deformable_with_the_plain_weight_shape_and_geometry(case):
    plain, dcn = block_pair(case)
    assert isinstance(dcn.conv2, ModulatedDeformConv2d)
    assert dcn.conv2.weight.shape == plain.conv2.weight.shape
    assert dcn.conv2.bias is None
    for attr in ("stride", "padding", "dilation", "groups"):
        assert getattr(dcn.conv2, attr) == getattr(plain.conv2, attr), attr
    offset = dcn.conv2.conv_offset
    assert isinstance(offset, OffsetConv2d)
    assert (offset.in_channels, offset.out_channels) == (plain.conv2.in_channels, 3 * TAPS)
    for attr in ("stride", "padding", "dilation"):
        assert getattr(offset, attr) == getattr(plain.conv2, attr), attr
    assert not offset.weight.any() and not offset.bias.any()


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_untrained_block_equals_the_plain_bottleneck(case):
    plain, dcn = block_pair(case)
    x = torch.randn(2, 128, 9, 10)
    assert_close(run(dcn, x), run(plain, x))


def test_offsets_are_dy_dx_pairs_in_input_pixels():
    block = DCNv2Bottleneck(64, 16).eval()  # a 16-channel 3x3 conv
    x = torch.randn(1, 16, 7, 8)
    w = block.conv2.weight
    with torch.no_grad():
        block.conv2.conv_offset.bias[1 : 2 * TAPS : 2] = 1.0  # dx = +1 at every tap
        got = block.conv2(x)
        # sampling one pixel to the right = the plain conv over a left-shifted input
        expected = F.conv2d(F.pad(x, (0, 2, 1, 1)), w)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        block.conv2.conv_offset.bias.zero_()
        block.conv2.conv_offset.bias[0 : 2 * TAPS : 2] = -1.0  # dy = -1 at every tap
        expected = F.conv2d(F.pad(x, (1, 1, 2, 0)), w)
        torch.testing.assert_close(block.conv2(x), expected, atol=1e-5, rtol=1e-5)


def test_mask_is_two_sigmoid_of_the_logits():
    block = DCNv2Bottleneck(64, 16).eval()
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        offset, mask = block.offset_and_mask(x)
        assert offset.shape == (1, 2 * TAPS, 6, 6) and not offset.any()
        assert mask.shape == (1, TAPS, 6, 6) and bool((mask == 1.0).all())  # exactly 1
        plain = F.conv2d(x, block.conv2.weight, padding=1)
        block.conv2.conv_offset.bias[2 * TAPS :] = math.log(1 / 3)  # 2 * sigmoid = 0.5
        torch.testing.assert_close(block.conv2(x), 0.5 * plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("deform_groups", [2, 4])
def test_deform_groups_sizes_the_offset_conv(deform_groups):
    plain, dcn = block_pair("groups_4", deform_groups=deform_groups)
    assert dcn.deform_groups == deform_groups
    assert dcn.conv2.conv_offset.out_channels == 3 * deform_groups * TAPS
    x = torch.randn(1, 128, 8, 8)
    assert_close(run(dcn, x), run(plain, x))
    offset, mask = dcn.offset_and_mask(dcn.act1(dcn.bn1(dcn.conv1(x))))
    assert offset.shape[1] == 2 * deform_groups * TAPS and mask.shape[1] == deform_groups * TAPS


def test_deform_groups_offsets_act_per_channel_group():
    block = DCNv2Bottleneck(16, 4, deform_groups=2).eval()  # width 4: 2 channels a group
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        block.conv2.conv_offset.bias[1 : 2 * TAPS : 2] = 3.0  # shift group 0 only, far right
        got = block.conv2(x)
        w = block.conv2.weight
        shifted = F.conv2d(F.pad(x[:, :2], (-2, 4, 1, 1)), w[:, :2])  # x + 3 in group 0
        expected = shifted + F.conv2d(x[:, 2:], w[:, 2:], padding=1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (3, ValueError), (-1, ValueError), (True, TypeError)]
)
def test_bad_deform_groups_are_refused_with_the_name(value, error):
    with pytest.raises(error, match="deform_groups"):
        DCNv2Bottleneck(64, 16, deform_groups=value)  # width 16


def test_zero_init_last_is_inherited():
    block = DCNv2Bottleneck(64, 16)
    block.zero_init_last()
    assert not block.bn3.weight.any()


def test_only_conv2_differs_from_the_plain_bottleneck():
    plain, dcn = Bottleneck(64, 16), DCNv2Bottleneck(64, 16)
    assert type(dcn).forward is Bottleneck.forward  # one forward, the plain block's
    assert [n for n, _ in dcn.named_children()] == [n for n, _ in plain.named_children()]
    for name, child in dcn.named_children():
        if name != "conv2":
            assert type(child) is type(plain.get_submodule(name)), name
    assert [n for n, _ in dcn.conv2.named_children()] == ["conv_offset"]


def test_insertion_point_layers_sit_where_they_do_in_the_plain_bottleneck():
    se = InsertedLayer("se", "after_conv3", SEModule)
    torch.manual_seed(0)
    plain = randomize_batchnorm_stats(Bottleneck(64, 16, layers=[se])).eval()
    dcn = DCNv2Bottleneck(64, 16, layers=[se], deform_groups=2).eval()
    keys = [k for k in dcn.state_dict() if ".conv_offset." not in k]
    assert keys == list(plain.state_dict())
    assert keys.index("se.fc1.weight") == keys.index("bn3.num_batches_tracked") + 1
    dcn.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 64, 7, 7)
    assert_close(run(dcn, x), run(plain, x))


# -- in a backbone ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_pair() -> tuple[nn.Module, nn.Module]:
    """resnet50 (random BN stats) and its DCN-in-layer3/4 twin loaded from it; copy to mutate."""
    return plain_and_dcn("resnet50", out_indices=ALL_LEVELS)


@pytest.fixture(scope="module")
def image() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_untrained_dcn_stages_equal_plain_ones(resnet50_pair, image):
    plain, dcn = resnet50_pair
    assert_close(run(dcn, image), run(plain, image))


@pytest.mark.parametrize(
    ("variant", "options"),
    [("resnet50", {"output_stride": 16}), ("resnext50_32x4d", {})],
    ids=["resnet50_output_stride_16", "resnext50_32x4d"],
)
def test_untrained_dcn_stages_equal_plain_ones_dilated_and_grouped(variant, options, image):
    plain, dcn = plain_and_dcn(variant, out_indices=ALL_LEVELS, **options)
    if "output_stride" in options:  # layer4 dilates instead of striding
        assert dcn.get_submodule("layer4.1.conv2").dilation == (2, 2)
    else:
        assert dcn.get_submodule("layer3.0.conv2").groups == 32
    assert_close(run(dcn, image), run(plain, image))


def test_state_dict_is_the_plain_one_plus_the_offset_convs(resnet50_pair):
    plain, dcn = resnet50_pair
    plain_sd, dcn_sd = plain.state_dict(), dcn.state_dict()
    extra = offset_keys(dcn)
    assert [k for k in dcn_sd if k not in extra] == list(plain_sd)  # same keys, same order
    assert all(dcn_sd[k].shape == v.shape for k, v in plain_sd.items())
    expected = [
        f"layer{stage}.{i}.conv2.conv_offset.{p}"
        for stage, n in ((3, 6), (4, 3))
        for i in range(n)
        for p in ("weight", "bias")
    ]
    assert sorted(extra) == sorted(expected)
    assert dcn_sd["layer3.0.conv2.conv_offset.weight"].shape == (3 * TAPS, 256, 3, 3)
    assert dcn_sd["layer4.2.conv2.conv_offset.bias"].shape == (3 * TAPS,)
    # a plain checkpoint's conv2 weights go to the deformable conv2
    assert isinstance(dcn.get_submodule("layer3.0.conv2"), ModulatedDeformConv2d)
    assert isinstance(dcn.get_submodule("layer2.0.conv2"), nn.Conv2d)


@pytest.mark.parametrize("options", [{}, {"output_stride": 16, "out_indices": (0, 2, 4)}])
def test_feature_info_equals_plain(options):
    plain = create_backbone("resnet50", **options)
    dcn = create_backbone("resnet50", block=DCN_STAGES, **options)
    for attr in ("channels", "reduction", "module_name"):
        assert getattr(dcn.feature_info, attr)() == getattr(plain.feature_info, attr)()
    assert dcn.feature_info.get_dicts() == plain.feature_info.get_dicts()
    assert list(dcn.feature_info.out_indices) == list(plain.feature_info.out_indices)


def test_non_zero_offsets_change_the_output(resnet50_pair, image):
    plain, dcn = resnet50_pair
    dcn = copy.deepcopy(dcn)
    ref = run(plain, image)
    with torch.no_grad():
        dcn.get_submodule("layer3.1.conv2.conv_offset").bias[: 2 * TAPS] = 0.5  # offsets only
    got = run(dcn, image)
    assert_close(got[:2], ref[:2])  # layer1, layer2 are plain
    assert max_rel_diff(got[2:], ref[2:]) > 1e-2
    with torch.no_grad():
        dcn.get_submodule("layer3.1.conv2.conv_offset").bias.zero_()
        dcn.get_submodule("layer4.0.conv2.conv_offset").bias[2 * TAPS :] = -1.0  # mask only
    got = run(dcn, image)
    assert_close(got[:3], ref[:3])
    assert max_rel_diff(got[3:], ref[3:]) > 1e-2


def test_a_train_step_reaches_every_offset_conv(resnet50_pair, image):
    dcn = copy.deepcopy(resnet50_pair[1]).train()
    optimizer = torch.optim.SGD(dcn.parameters(), lr=0.1)
    feats = dcn(image)
    sum(f.square().mean() for f in feats).backward()
    offsets = {n: p for n, p in dcn.named_parameters() if ".conv2.conv_offset." in n}
    assert len(offsets) == 18
    for name, p in offsets.items():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    assert dcn.get_submodule("layer3.0.conv2").weight.grad.abs().max() > 0
    optimizer.step()
    assert all(p.abs().max() > 0 for p in offsets.values())  # they left zero


def test_block_kwargs_deform_groups_reach_every_dcn_block():
    model = create_backbone(
        "resnet50", out_indices=(1, 2), block="dcnv2_bottleneck", block_kwargs={"deform_groups": 2}
    )
    blocks = [m for m in model.modules() if isinstance(m, DCNv2Bottleneck)]
    assert len(blocks) == 7
    for block in blocks:
        assert block.deform_groups == 2
        assert block.conv2.conv_offset.out_channels == 3 * 2 * TAPS
    feats = run(model.eval(), torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [256, 512]


def test_deform_groups_with_dcn_in_some_stages_only():
    model = create_backbone(
        "resnet50",
        out_indices=ALL_LEVELS,
        block=DCN_STAGES,
        block_kwargs=[{}, {}, {"deform_groups": 2}, {"deform_groups": 2}],
    )
    assert model.get_submodule("layer3.0.conv2.conv_offset").out_channels == 3 * 2 * TAPS
    assert model.get_submodule("layer4.0.conv2.conv_offset").out_channels == 3 * 2 * TAPS


def test_one_dict_of_dcn_kwargs_for_mixed_stages_names_the_option_and_stage():
    with pytest.raises(TypeError, match=r"block Bottleneck in layer1 does not accept block_kwargs"):
        create_backbone("resnet50", block=DCN_STAGES, block_kwargs={"deform_groups": 2})
