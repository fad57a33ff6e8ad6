"""Numerical parity with timm: timm's weights load strictly and give timm's features.

For each case :func:`backbones.testing.assert_parity` gives a timm ``features_only``
model random BatchNorm statistics (fresh ones are near identity in eval mode and
would hide a wrong key mapping), loads its ``state_dict`` into our backbone with
``strict=True`` and compares eval-mode fp32 features of a 2x3x64x64 input.

The backbones, blocks and layers come from the installed plugin through the registry
(entry-point discovery); this file never imports ``backbones_attention``.
"""

from functools import partial
from typing import Any

import pytest
import timm
import torch
from timm.layers import get_attn
from torch import Tensor, nn

from backbones import BlockLayer, create_backbone, get_block, get_layer
from backbones.testing import assert_parity

ALL_LEVELS = (0, 1, 2, 3, 4)
SIZE = 64
# Random BatchNorm statistics are not calibrated to the activations, so deep maps
# grow well beyond unit scale: the tolerance is relative as well as absolute.
ATOL = 1e-4
RTOL = 1e-4

# (our backbone, our create_backbone kwargs, timm model name, timm create_model kwargs)
NAMED = [
    ("seresnet50", {}, "seresnet50", {}),
    ("seresnext50_32x4d", {}, "seresnext50_32x4d", {}),
    ("ecaresnet50d", {}, "ecaresnet50d", {}),
]
# Each block on the plain trunk against timm's ResNet with the same attn_layer.
BLOCKS = [
    ("resnet18", {"block": "se_basic"}, "seresnet18", {}),
    ("resnet18", {"block": "eca_basic"}, "resnet18", {"block_args": {"attn_layer": "eca"}}),
    ("resnet18", {"block": "cbam_basic"}, "resnet18", {"block_args": {"attn_layer": "cbam"}}),
    ("resnet50", {"block": "se_bottleneck"}, "resnet50", {"block_args": {"attn_layer": "se"}}),
    ("resnet50", {"block": "eca_bottleneck"}, "resnet50", {"block_args": {"attn_layer": "eca"}}),
    ("resnet50", {"block": "cbam_bottleneck"}, "resnet50", {"block_args": {"attn_layer": "cbam"}}),
]
# The global-context layer has no block of its own: block_layers puts it where timm does.
GC = {"block_args": {"attn_layer": "gc"}}
LAYERS = [
    (
        "resnet18",
        {"block_layers": [BlockLayer("gc", position="after_conv2", name="se")]},
        "resnet18",
        GC,
    ),
    ("resnet50", {"block_layers": [BlockLayer("gc", name="se")]}, "resnet50", GC),
]
CASES = NAMED + BLOCKS + LAYERS


def _case_id(case: tuple[str, dict[str, Any], str, dict[str, Any]]) -> str:
    name, options, _, _ = case
    if "block" in options:
        return f"{name}-{options['block']}"
    if "block_layers" in options:
        return f"{name}-" + "+".join(str(bl.layer) for bl in options["block_layers"])
    return name


def _image(batch: int = 2, size: int = SIZE, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _timm_features(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, features_only=True, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_weights_features_and_feature_info_equal_timm_features_only(case):
    name, options, timm_name, timm_kwargs = case
    timm_model = _timm_features(timm_name, out_indices=ALL_LEVELS, **timm_kwargs)
    ours = create_backbone(name, out_indices=ALL_LEVELS, **options)

    assert_parity(ours, timm_model, _image(), atol=ATOL, rtol=RTOL)

    # strict loading checked names and shapes; the order (state_dict order) is timm's too
    assert list(ours.state_dict()) == list(timm_model.state_dict())
    assert ours.feature_info.get_dicts() == timm_model.feature_info.get_dicts()
    assert ours.feature_info.channels() == timm_model.feature_info.channels()
    assert ours.feature_info.reduction() == timm_model.feature_info.reduction()
    assert ours.feature_info.module_name() == timm_model.feature_info.module_name()


@pytest.mark.parametrize(
    ("name", "output_stride"), [("seresnext50_32x4d", 8), ("ecaresnet50d", 16)]
)
def test_dilated_output_stride_equals_timm(name, output_stride):
    timm_model = _timm_features(name, out_indices=ALL_LEVELS, output_stride=output_stride)
    ours = create_backbone(name, out_indices=ALL_LEVELS, output_stride=output_stride)

    assert_parity(ours, timm_model, _image(batch=1), atol=ATOL, rtol=RTOL)

    assert ours.feature_info.get_dicts() == timm_model.feature_info.get_dicts()


def test_layer_kwargs_equal_timm_partial_attn_layer():
    # timm's "seresnet*t"-style SE with a 1/4 reduction, through block_layers
    timm_model = _timm_features(
        "resnet50",
        out_indices=(1, 2),
        block_args={"attn_layer": partial(get_attn("se"), rd_ratio=0.25)},
    )
    ours = create_backbone(
        "resnet50",
        out_indices=(1, 2),
        block_layers=[BlockLayer("se", name="se", kwargs={"rd_ratio": 0.25})],
    )
    assert ours.layer1[0].se.fc1.out_channels == 64  # 256 * 1/4 (the default 1/16 gives 16)

    assert_parity(ours, timm_model, _image(batch=1), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("attn_type", ["se", "eca", "cbam", "gc"])
def test_layer_is_the_class_timm_create_attn_builds(attn_type):
    # timm's create_attn(attn_type, channels) calls get_attn(attn_type)(channels)
    layer = get_layer(attn_type)
    assert layer.cls is get_attn(attn_type)
    assert type(layer(64)) is get_attn(attn_type)


@pytest.mark.parametrize(
    ("block", "attn_type"),
    [
        ("se_basic", "se"),
        ("se_bottleneck", "se"),
        ("eca_basic", "eca"),
        ("eca_bottleneck", "eca"),
        ("cbam_basic", "cbam"),
        ("cbam_bottleneck", "cbam"),
    ],
)
def test_block_uses_the_layer_timm_create_attn_builds(block, attn_type):
    (layer,) = get_block(block).layers
    assert (layer.layer, layer.name, dict(layer.kwargs)) == (attn_type, "se", {})
