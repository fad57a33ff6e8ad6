"""The attention blocks inside the trunk: shapes, feature_info, options, refusals, export.

Each block is a variant, the built-in block with a timm attention layer named ``se``
after its last norm; these tests build them through the registry, as users do.
"""

import math
from functools import partial

import pytest
import torch
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule
from torch import Tensor, nn

from backbones import (
    BlockLayer,
    BlockVariant,
    create_backbone,
    get_block,
    get_layer,
    optimize_for_inference,
)
from backbones.blocks import BasicBlock, Bottleneck
from backbones.layers import InsertedLayer
from backbones.testing import check_block, check_feature_contract

ALL_LEVELS = (0, 1, 2, 3, 4)
SIZE = 64
BASIC = {"se_basic": SEModule, "eca_basic": EcaModule, "cbam_basic": CbamModule}
BOTTLENECK = {"se_bottleneck": SEModule, "eca_bottleneck": EcaModule, "cbam_bottleneck": CbamModule}
ATTENTION = {**BASIC, **BOTTLENECK}


def _image(batch: int = 1, size: int = SIZE, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _blocks(model: nn.Module, layer: str) -> list[nn.Module]:
    return list(model.get_submodule(layer).children())


def _base_and_last_norm(block: str) -> tuple[type[nn.Module], str]:
    return (BasicBlock, "bn2") if block in BASIC else (Bottleneck, "bn3")


def _inserted(variant: BlockVariant) -> tuple[InsertedLayer, ...]:
    """A variant's layers as its base block's constructor takes them (what the trunk passes)."""
    return tuple(
        InsertedLayer(bl.module_name, bl.position, partial(get_layer(bl.layer), **bl.kwargs))
        for bl in variant.layers
    )


@pytest.mark.parametrize(
    ("name", "block", "channels"),
    [
        *[("resnet18", b, [64, 64, 128, 256, 512]) for b in BASIC],
        *[("resnet50", b, [64, 256, 512, 1024, 2048]) for b in BOTTLENECK],
        ("resnet50", "cbam_basic", [64, 64, 128, 256, 512]),  # basic blocks in a 50-layer trunk
        ("resnet18", "eca_bottleneck", [64, 256, 512, 1024, 2048]),
    ],
)
def test_shapes_and_feature_info(name, block, channels):
    bb = create_backbone(name, block=block, out_indices=ALL_LEVELS).eval()
    feats = check_feature_contract(bb, _image(batch=2))

    info = bb.feature_info
    assert info.channels() == channels
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.module_name() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [tuple(f.shape) for f in feats] == [
        (2, c, math.ceil(SIZE / r), math.ceil(SIZE / r))
        for c, r in zip(channels, info.reduction(), strict=True)
    ]
    base, _ = _base_and_last_norm(block)
    for layer in ("layer1", "layer4"):
        for blk in _blocks(bb, layer):
            assert type(blk) is base
            assert isinstance(blk.se, ATTENTION[block])


@pytest.mark.parametrize("block", list(ATTENTION))
def test_variant_is_the_builtin_block_with_se_after_the_last_norm(block):
    variant = get_block(block)
    base, last_norm = _base_and_last_norm(block)
    assert isinstance(variant, BlockVariant)
    assert variant.base is base
    assert variant.expansion == base.expansion

    bb = create_backbone("resnet50", block=block, out_indices=(2,))
    names = [n for n, _ in bb.layer2[0].named_children()]  # a block with a downsample
    assert names[names.index(last_norm) + 1] == "se"
    # before the shortcut, stochastic depth and the activation that adds the two
    assert names[names.index("se") + 1 :] == ["downsample", "drop_path", f"act{last_norm[-1]}"]


def test_blocks_per_stage_put_attention_only_where_asked():
    bb = create_backbone(
        "resnet50", block=("bottleneck", "bottleneck", "cbam_bottleneck", "se_bottleneck")
    )
    assert not any(hasattr(b, "se") for b in _blocks(bb, "layer1") + _blocks(bb, "layer2"))
    assert all(isinstance(b.se, CbamModule) for b in _blocks(bb, "layer3"))
    assert all(isinstance(b.se, SEModule) for b in _blocks(bb, "layer4"))
    assert [tuple(f.shape[1:]) for f in bb.eval()(_image())] == [
        (256, 16, 16),
        (512, 8, 8),
        (1024, 4, 4),
        (2048, 2, 2),
    ]


@pytest.mark.parametrize("block", list(BASIC))
def test_basic_attention_blocks_refuse_groups(block):
    with pytest.raises(ValueError, match="groups=32"):
        create_backbone("resnext50_32x4d", block=block)


def test_basic_attention_block_refuses_base_width():
    with pytest.raises(ValueError, match="base_width=128"):
        create_backbone("wide_resnet50_2", block="se_basic")


def test_cbam_default_reduction_is_timms():
    bb = create_backbone("resnet18", out_indices=(1,), block="cbam_basic")
    assert bb.layer1[0].se.channel.fc1.out_channels == 4  # timm's CBAM default: 64 / 16


@torch.no_grad()
def test_zero_init_last_starts_each_block_as_its_shortcut():
    bb = create_backbone("resnet50", out_indices=(1,), block="se_bottleneck", zero_init_last=True)
    blk = bb.layer1[1].eval()  # no downsample: the shortcut is the input
    assert float(blk.bn3.weight.abs().max()) == 0.0
    x = torch.randn(1, 256, 8, 8).relu()
    torch.testing.assert_close(blk(x), x)


@pytest.mark.parametrize("block", ["cbam_basic", "eca_basic"])
def test_trains_with_drop_path_and_gradients_reach_the_attention(block):
    bb = create_backbone("resnet18", out_indices=(2,), block=block, drop_path_rate=0.2)
    assert bb.layer2[1].drop_path.drop_prob > 0  # timm's DropPath, from the core block
    bb.train()
    (feat,) = bb(_image(batch=2))
    feat.sum().backward()
    grads = [p.grad for n, p in bb.named_parameters() if ".se." in n]
    assert grads
    assert all(g is not None for g in grads)


@torch.no_grad()
def test_groupnorm_trunk_keeps_timm_cbam_spatial_norm():
    bb = create_backbone("resnet18", out_indices=(4,), block="cbam_basic", norm_layer="groupnorm")
    assert isinstance(bb.layer1[0].bn2, nn.GroupNorm)
    assert isinstance(bb.layer1[0].se.spatial.conv.bn, nn.BatchNorm2d)  # timm's own, as in timm
    assert bb.eval()(_image())[0].shape == (1, 512, 2, 2)


@pytest.mark.parametrize("block", [b for b in ATTENTION if not b.startswith("cbam")])
def test_variant_follows_the_block_contract(block):
    variant = get_block(block)
    check_block(variant.base, block_kwargs={"layers": _inserted(variant)})


@pytest.mark.parametrize("block", ["cbam_basic", "cbam_bottleneck"])
def test_block_contract_check_reports_cbams_own_batchnorm(block):
    # timm's CbamModule builds its spatial BatchNorm2d(1) itself, not with norm_layer
    variant = get_block(block)
    with pytest.raises(AssertionError, match=r"BatchNorms not built by norm_layer: se\.spatial"):
        check_block(variant.base, block_kwargs={"layers": _inserted(variant)})


MIXED_BASIC = ("se_basic", "eca_basic", "cbam_basic", "basic")
MIXED_BOTTLENECK = ("se_bottleneck", "eca_bottleneck", "cbam_bottleneck", "bottleneck")


@pytest.mark.parametrize("blocks", [MIXED_BASIC, MIXED_BOTTLENECK], ids=["basic", "bottleneck"])
@torch.no_grad()
def test_script_export_and_optimize_for_inference(blocks):
    # resnet18's two blocks per stage keep this quick; bottlenecks work in any trunk.
    # A global-context layer after conv1 in two stages adds a user layer to the variants'.
    bb = create_backbone(
        "resnet18",
        block=blocks,
        block_layers=[BlockLayer("gc", position="after_conv1", stages=(2, 3))],
        out_indices=(1, 2, 3),
    ).eval()
    x = _image()
    expected = bb(x)

    scripted = torch.jit.script(bb)
    exported = torch.export.export(bb, (x,)).module()
    fast = optimize_for_inference(bb)
    for got in (scripted(x), exported(x)):
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)
    for g, e in zip(fast(x), expected, strict=True):
        scale = max(1.0, float(e.abs().max()))
        assert float((g - e).abs().max()) <= 1e-4 * scale
