"""Numerical parity with timm: timm's weights load strictly and give timm's features.

For each case a timm ``features_only`` model gets random BatchNorm statistics
(fresh ones are near identity in eval mode and would hide a wrong key mapping),
its ``state_dict`` loads into our backbone with ``strict=True``, and eval-mode
fp32 features of a 2x3x64x64 input are compared at an absolute 1e-4, scaled by
the reference's largest magnitude where that exceeds 1 (random statistics are
not calibrated to the activations, so deep maps can grow far beyond unit scale).

The backbones and blocks come from the installed plugin through the registry
(entry-point discovery); this file never imports ``backbones_attention``.
"""

from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import timm
import torch
from timm.layers import get_attn
from torch import Tensor, nn

from backbones import create_backbone, get_block

ALL_LEVELS = (0, 1, 2, 3, 4)
ATOL = 1e-4
SIZE = 64

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
CASES = NAMED + BLOCKS


def _case_id(case: tuple[str, dict[str, Any], str, dict[str, Any]]) -> str:
    name, options, _, _ = case
    return f"{name}-{options['block']}" if "block" in options else name


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # Inputs are tiny: one intra-op thread is as fast and leaves cores to parallel runners.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running mean/var, weight and bias for every BatchNorm (CBAM's 1-channel one too)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def _image(batch: int = 2, size: int = SIZE, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _timm_features(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    return _randomize_batchnorms(model).eval()


def _ours_loaded_from(name: str, state_dict: dict[str, Tensor], **options: Any) -> nn.Module:
    """Our backbone holding ``state_dict``, loaded strictly, in eval mode.

    Built on the meta device (our random init would be overwritten anyway) and
    loaded with ``assign=True``; strict loading still checks every key and shape,
    and a tensor the checkpoint failed to provide would stay on meta and fail the forward.
    """
    with torch.device("meta"):
        ours = create_backbone(name, **options)
    ours.load_state_dict(state_dict, strict=True, assign=True)
    return ours.eval()


def _assert_features_close(got: list[Tensor], expected: list[Tensor]) -> None:
    assert len(got) == len(expected), f"{len(got)} features vs {len(expected)}"
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == e.shape, f"feature {level}: shape {tuple(g.shape)} vs {tuple(e.shape)}"
        scale = max(1.0, float(e.abs().max()))
        diff = float((g - e).abs().max())
        assert diff <= ATOL * scale, f"feature {level}: max |diff| {diff:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@torch.no_grad()
def test_weights_features_and_feature_info_equal_timm_features_only(case):
    name, options, timm_name, timm_kwargs = case
    timm_model = _timm_features(timm_name, out_indices=ALL_LEVELS, **timm_kwargs)
    ours = _ours_loaded_from(name, timm_model.state_dict(), out_indices=ALL_LEVELS, **options)
    # strict loading checked names and shapes; the order (state_dict order) is timm's too
    assert list(ours.state_dict()) == list(timm_model.state_dict())
    x = _image()

    expected = timm_model(x)
    got = ours(x)

    _assert_features_close(got, expected)
    assert ours.feature_info.get_dicts() == timm_model.feature_info.get_dicts()
    assert ours.feature_info.channels() == timm_model.feature_info.channels()
    assert ours.feature_info.reduction() == timm_model.feature_info.reduction()
    assert ours.feature_info.module_name() == timm_model.feature_info.module_name()


@pytest.mark.parametrize(
    ("name", "output_stride"), [("seresnext50_32x4d", 8), ("ecaresnet50d", 16)]
)
@torch.no_grad()
def test_dilated_output_stride_equals_timm(name, output_stride):
    timm_model = _timm_features(name, out_indices=ALL_LEVELS, output_stride=output_stride)
    ours = _ours_loaded_from(
        name, timm_model.state_dict(), out_indices=ALL_LEVELS, output_stride=output_stride
    )
    x = _image(batch=1)

    _assert_features_close(ours(x), timm_model(x))
    assert ours.feature_info.get_dicts() == timm_model.feature_info.get_dicts()


@torch.no_grad()
def test_attn_kwargs_equal_timm_partial_attn_layer():
    # timm's "seresnet*t"-style SE with a 1/4 reduction, through block_kwargs
    timm_model = _timm_features(
        "resnet50",
        out_indices=(1, 2),
        block_args={"attn_layer": partial(get_attn("se"), rd_ratio=0.25)},
    )
    ours = _ours_loaded_from(
        "resnet50",
        timm_model.state_dict(),
        out_indices=(1, 2),
        block="se_bottleneck",
        block_kwargs={"attn_kwargs": {"rd_ratio": 0.25}},
    )
    x = _image(batch=1)
    _assert_features_close(ours(x), timm_model(x))


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
def test_attention_module_is_the_one_timm_create_attn_builds(block, attn_type):
    # timm's create_attn(attn_type, channels) calls get_attn(attn_type)(channels)
    assert get_block(block).attn_layer is get_attn(attn_type)
