"""The attention layers through ``block_layers``: per stage, at any point, several at one.

``create_backbone(..., block_layers=[BlockLayer(...)])`` inserts this plugin's layers
(``se``, ``eca``, ``cbam``, ``gc``) into the blocks of the stages it names. The
numeric checks compose a block's own modules by hand in the documented order
(random BatchNorm statistics, eval mode), so a layer at the wrong place shows.
"""

import pytest
import timm
import torch
from timm.layers import GlobalContext, SEModule, get_attn
from torch import Tensor, nn

from backbones import BlockLayer, UnknownNameError, create_backbone
from backbones.testing import assert_features_close, randomize_batchnorm_stats

STAGE_CHANNELS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}


def _input(channels: int, size: int = 8, seed: int = 0) -> Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _eval_block(bb: nn.Module, path: str) -> nn.Module:
    return randomize_batchnorm_stats(bb.get_submodule(path), seed=1).eval()


def _main_path(blk: nn.Module, x: Tensor) -> Tensor:
    """A bottleneck's main path up to and including bn3: what after_conv3 layers receive."""
    y = blk.act1(blk.bn1(blk.conv1(x)))
    y = blk.act2(blk.bn2(blk.conv2(y)))
    return blk.bn3(blk.conv3(y))


def _shortcut(blk: nn.Module, x: Tensor) -> Tensor:
    return x if blk.downsample is None else blk.downsample(x)


def test_context_block_in_stages_2_to_4_only():
    bb = create_backbone("resnet50", block_layers=[BlockLayer("gc", stages=(2, 3, 4))])

    assert not any(hasattr(blk, "gc") for blk in bb.layer1)
    for stage in ("layer2", "layer3", "layer4"):
        for blk in bb.get_submodule(stage):
            assert isinstance(blk.gc, GlobalContext)
            assert blk.gc.conv_attn.in_channels == STAGE_CHANNELS[stage]  # built for bn3's output
            names = [n for n, _ in blk.named_children()]
            assert names[names.index("bn3") + 1] == "gc"


@pytest.mark.parametrize("path", ["layer2.0", "layer3.1"])  # with and without a downsample
@torch.no_grad()
def test_context_block_runs_after_bn3_before_the_residual_add(path):
    bb = create_backbone("resnet50", block_layers=[BlockLayer("gc", stages=(2, 3, 4))])
    blk = _eval_block(bb, path)
    x = _input(blk.conv1.in_channels)

    expected = blk.act3(blk.gc(_main_path(blk, x)) + _shortcut(blk, x))

    assert_features_close(blk(x), expected)


@torch.no_grad()
def test_two_layers_at_one_position_run_in_the_given_order():
    bb = create_backbone(
        "resnet50",
        out_indices=(2,),
        block_layers=[BlockLayer("se", name="se"), BlockLayer("gc", name="gc")],
    )
    blk = _eval_block(bb, "layer2.0")
    x = _input(256)
    names = [n for n, _ in blk.named_children()]
    assert names[names.index("bn3") + 1 : names.index("bn3") + 3] == ["se", "gc"]

    given_order = blk.act3(blk.gc(blk.se(_main_path(blk, x))) + _shortcut(blk, x))
    reversed_order = blk.act3(blk.se(blk.gc(_main_path(blk, x))) + _shortcut(blk, x))
    out = blk(x)

    assert_features_close(out, given_order)
    assert not torch.allclose(out, reversed_order, atol=1e-4)  # the order is observable


def test_user_layer_joins_a_variants_layer_in_the_stages_asked():
    bb = create_backbone(
        "seresnet50", block_layers=[BlockLayer("gc", stages=(2, 3, 4))], out_indices=(1, 2, 3, 4)
    )
    assert all(isinstance(blk.se, SEModule) and not hasattr(blk, "gc") for blk in bb.layer1)
    for blk in [*bb.layer2, *bb.layer3, *bb.layer4]:
        names = [n for n, _ in blk.named_children()]
        assert names[names.index("bn3") + 1 : names.index("bn3") + 3] == ["se", "gc"]

    # timm's SE-ResNet-50 weights still load: only the new context blocks are missing
    torch.manual_seed(0)
    timm_model = timm.create_model("seresnet50", features_only=True, out_indices=(1, 2, 3, 4))
    result = bb.load_state_dict(timm_model.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys
    assert all(".gc." in key and not key.startswith("layer1.") for key in result.missing_keys)


def test_layer_kwargs_reach_the_timm_module():
    bb = create_backbone(
        "resnet50", out_indices=(1,), block_layers=[BlockLayer("gc", kwargs={"rd_ratio": 0.25})]
    )
    assert bb.layer1[0].gc.mlp_scale.fc1.out_channels == 64  # 256 * 1/4; timm's default is 1/8


def test_a_layer_argument_timm_does_not_take_fails_when_built():
    with pytest.raises(TypeError, match="nope"):
        create_backbone("resnet50", block_layers=[BlockLayer("se", kwargs={"nope": 1})])


def test_unknown_layer_name_suggests_the_close_ones():
    with pytest.raises(UnknownNameError, match="'se'"):
        create_backbone("resnet50", block_layers=["sse"])


def test_basic_block_takes_a_layer_after_conv2_not_conv3():
    # conv2 is the basic block's last conv: timm's place for attention there is after_conv2,
    # which the default position, "last", picks
    with pytest.raises(ValueError, match=r"no insertion point 'after_conv3'.*after_conv2"):
        create_backbone("resnet18", block_layers=[BlockLayer("eca", position="after_conv3")])
    for position in ("after_conv2", "last"):
        bb = create_backbone(
            "resnet18", out_indices=(1,), block_layers=[BlockLayer("eca", position=position)]
        )
        names = [n for n, _ in bb.layer1[0].named_children()]
        assert names[names.index("bn2") + 1] == "eca"


def test_any_timm_attention_class_can_be_given_as_a_factory():
    # what the README suggests for a timm layer this plugin does not register
    ese = get_attn("ese")
    bb = create_backbone("resnet50", out_indices=(1,), block_layers=[BlockLayer(ese, name="se")])
    assert all(type(blk.se) is ese for blk in bb.layer1)
