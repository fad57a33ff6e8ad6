"""Numerical parity with torchvision and timm: same weights in, same features out.

Every comparison randomizes the reference model's BatchNorm statistics first
(fresh BatchNorms are nearly identity in eval mode and would hide a wrong key
mapping), loads the reference's weights into ours with ``strict=True`` and
compares eval-mode features in fp32.

The big variants make this file the slowest of the suite, so every test builds
each model once, runs small inputs (64 px) under ``torch.no_grad`` and checks
state-dict key sets on the ``meta`` device, where building costs nothing.

Tolerance: features are compared at an absolute 1e-4, scaled by the reference
tensor's largest magnitude when that exceeds 1. Random BatchNorm statistics are
not calibrated to the activations, so deep variants (resnet152: ~1e10 at
layer4) grow far beyond unit scale, where a fixed absolute bound would only
measure fp32 rounding; stem and early-stage features stay near unit scale and
are held to the plain 1e-4.
"""

import pytest
import timm
import torch
import torchvision
from helpers import max_abs_diff, randomize_norm_stats
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from backbones import create_backbone

TORCHVISION_VARIANTS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]
TIMM_ONLY_VARIANTS = ["resnet50d", "resnet101d"]
ALL_VARIANTS = TORCHVISION_VARIANTS + TIMM_ONLY_VARIANTS
BIG_VARIANTS = {
    "resnet101",
    "resnet101d",
    "resnet152",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet101_2",
}

ALL_LEVELS = (0, 1, 2, 3, 4)
# torchvision calls the stem activation "relu"; ours (like timm) calls it "act1".
TV_RETURN_LAYERS = {"relu": "0", "layer1": "1", "layer2": "2", "layer3": "3", "layer4": "4"}
ATOL = 1e-4
SIZE = 64

# torchvision's replace_stride_with_dilation for layer2..layer4, per output stride.
TV_DILATION = {16: [False, False, True], 8: [False, True, True]}
EXPECTED_REDUCTIONS = {16: [4, 8, 16, 16], 8: [4, 8, 8, 8]}


def _image(batch: int = 2, size: int = SIZE, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen)


def _batch_for(name: str) -> int:
    return 1 if name in BIG_VARIANTS else 2


def _without_fc(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}


def _torchvision_features(tv_model: nn.Module, x: Tensor) -> list[Tensor]:
    getter = IntermediateLayerGetter(tv_model, return_layers=TV_RETURN_LAYERS).eval()
    return list(getter(x).values())


def _ours_loaded_from(name: str, state_dict: dict[str, Tensor], **options) -> nn.Module:
    """Our backbone holding ``state_dict``, loaded strictly, in eval mode.

    Built on the meta device and loaded with ``assign=True``: our random init
    would be overwritten anyway, and skipping it halves the cost of the big
    variants. Strict loading still checks every key and shape, and a tensor the
    checkpoint failed to provide would stay on meta and fail the forward.
    """
    with torch.device("meta"):
        ours = create_backbone(name, **options)
    ours.load_state_dict(state_dict, strict=True, assign=True)
    return ours.eval()


def _timm_features_model(name: str, **kwargs) -> nn.Module:
    model = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    return randomize_norm_stats(model).eval()


def _assert_features_close(got: list[Tensor], expected: list[Tensor]) -> None:
    assert len(got) == len(expected), f"{len(got)} features vs {len(expected)}"
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        scale = max(1.0, float(e.abs().max()))
        diff = max_abs_diff([g], [e])
        assert diff <= ATOL * scale, f"feature {level}: max |diff| {diff:.3g}, scale {scale:.3g}"


def _shapes(state_dict: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# -- torchvision ------------------------------------------------------------------


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
def test_state_dict_keys_and_shapes_equal_torchvision_minus_fc(name):
    with torch.device("meta"):
        tv_model = getattr(torchvision.models, name)()
        ours = create_backbone(name, out_indices=ALL_LEVELS)
    expected = _shapes(_without_fc(tv_model.state_dict()))
    assert set(ours.state_dict()) == set(expected)
    assert _shapes(ours.state_dict()) == expected


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
@torch.no_grad()
def test_features_equal_torchvision_with_its_weights(name):
    torch.manual_seed(0)
    tv_model = randomize_norm_stats(getattr(torchvision.models, name)()).eval()
    ours = _ours_loaded_from(name, _without_fc(tv_model.state_dict()), out_indices=ALL_LEVELS)
    x = _image(batch=_batch_for(name))

    expected = _torchvision_features(tv_model, x)
    got = ours(x)

    assert len(got) == 5
    assert [t.shape[1] for t in got] == ours.feature_info.channels()
    _assert_features_close(got, expected)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "wide_resnet50_2"])
@pytest.mark.parametrize("output_stride", [16, 8])
@torch.no_grad()
def test_output_stride_equals_torchvision_replace_stride_with_dilation(name, output_stride):
    torch.manual_seed(0)
    tv_model = getattr(torchvision.models, name)(
        replace_stride_with_dilation=TV_DILATION[output_stride]
    )
    tv_model = randomize_norm_stats(tv_model).eval()
    ours = _ours_loaded_from(
        name,
        _without_fc(tv_model.state_dict()),
        out_indices=ALL_LEVELS,
        output_stride=output_stride,
    )
    x = _image(batch=1)

    expected = _torchvision_features(tv_model, x)
    got = ours(x)

    assert ours.feature_info.reduction([1, 2, 3, 4]) == EXPECTED_REDUCTIONS[output_stride]
    assert [tuple(t.shape[-2:]) for t in got] == [
        (SIZE // r, SIZE // r) for r in ours.feature_info.reduction()
    ]
    _assert_features_close(got, expected)


# -- timm -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_state_dict_keys_and_shapes_equal_timm_features_only(name):
    with torch.device("meta"):
        timm_model = timm.create_model(name, features_only=True, out_indices=ALL_LEVELS)
        ours = create_backbone(name, out_indices=ALL_LEVELS)
    assert _shapes(ours.state_dict()) == _shapes(timm_model.state_dict())


@pytest.mark.parametrize("name", ALL_VARIANTS)
@torch.no_grad()
def test_features_and_feature_info_equal_timm_features_only(name):
    torch.manual_seed(0)
    timm_model = _timm_features_model(name, out_indices=ALL_LEVELS)
    ours = _ours_loaded_from(name, timm_model.state_dict(), out_indices=ALL_LEVELS)
    x = _image(batch=_batch_for(name))

    expected = timm_model(x)
    got = ours(x)

    _assert_features_close(got, expected)
    ours_info, timm_info = ours.feature_info, timm_model.feature_info
    assert ours_info.get_dicts() == timm_info.get_dicts()
    assert ours_info.channels() == timm_info.channels()
    assert ours_info.reduction() == timm_info.reduction()
    assert ours_info.module_name() == timm_info.module_name()


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50d"])
@pytest.mark.parametrize("output_stride", [16, 8])
@torch.no_grad()
def test_output_stride_equals_timm_output_stride(name, output_stride):
    torch.manual_seed(0)
    timm_model = _timm_features_model(name, out_indices=ALL_LEVELS, output_stride=output_stride)
    ours = _ours_loaded_from(
        name, timm_model.state_dict(), out_indices=ALL_LEVELS, output_stride=output_stride
    )
    x = _image(batch=1)

    expected = timm_model(x)
    got = ours(x)

    assert ours.feature_info.reduction([1, 2, 3, 4]) == EXPECTED_REDUCTIONS[output_stride]
    assert ours.feature_info.reduction() == timm_model.feature_info.reduction()
    assert [tuple(t.shape[-2:]) for t in got] == [tuple(t.shape[-2:]) for t in expected]
    assert [tuple(t.shape[-2:]) for t in got] == [
        (SIZE // r, SIZE // r) for r in ours.feature_info.reduction()
    ]
    _assert_features_close(got, expected)


@pytest.mark.parametrize(
    ("name", "out_indices"),
    [
        ("resnet50", (1, 2)),
        ("resnet50d", (1, 2)),
        ("resnet18", (0,)),
        ("resnext50_32x4d", (0, 3)),
        ("resnet34", (2,)),
    ],
)
@torch.no_grad()
def test_partial_out_indices_load_timm_checkpoint_strictly(name, out_indices):
    torch.manual_seed(0)
    timm_model = _timm_features_model(name, out_indices=out_indices)
    ours = create_backbone(name, out_indices=out_indices)  # built for real, loaded by copy
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    ours.eval()
    deepest = max(out_indices)
    x = _image(batch=2)

    expected = timm_model(x)
    got = ours(x)

    unbuilt = {f"layer{k}" for k in range(deepest + 1, 5)} | (set() if deepest else {"maxpool"})
    assert not any(key.split(".")[0] in unbuilt for key in ours.state_dict())
    assert all(not hasattr(ours, module) for module in unbuilt)
    assert len(got) == len(out_indices)
    _assert_features_close(got, expected)


@pytest.mark.parametrize(
    ("name", "output_stride"), [("resnet50d", 16), ("resnet50d", 8), ("resnet18", 32)]
)
@torch.no_grad()
def test_odd_input_size_features_equal_timm(name, output_stride):
    # 65x97 makes every stride-2 layer pad unevenly; in dilated "d" stages timm's
    # shortcut pools with "same" padding, which only an odd size tells apart.
    torch.manual_seed(0)
    timm_model = _timm_features_model(name, out_indices=ALL_LEVELS, output_stride=output_stride)
    ours = _ours_loaded_from(
        name, timm_model.state_dict(), out_indices=ALL_LEVELS, output_stride=output_stride
    )
    x = torch.randn(1, 3, 65, 97, generator=torch.Generator().manual_seed(0))

    expected = timm_model(x)
    got = ours(x)

    assert [tuple(t.shape[-2:]) for t in got] == [
        (-(-65 // r), -(-97 // r)) for r in ours.feature_info.reduction()
    ]
    _assert_features_close(got, expected)
