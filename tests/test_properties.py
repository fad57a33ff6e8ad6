"""Property tests: for any valid options and input size, outputs match feature_info.

Budget: about a minute on one CPU core. Model construction (~0.1 s for resnet18,
~0.3 s for the 50-layer variants) and a forward pass at up to 300 x 300 px dominate;
the example counts below are chosen for that.
"""

import functools
import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from backbones import create_backbone
from backbones.features import resolve_out_indices

NUM_LEVELS = 5  # stem + layer1..layer4
LEVEL_MODULES = ("act1", "layer1", "layer2", "layer3", "layer4")
VARIANTS = ("resnet18", "resnet34", "resnet50d", "resnext50_32x4d")
NORMS = ("batchnorm", "groupnorm", "frozen_batchnorm")


@st.composite
def valid_out_indices(draw) -> tuple[int, ...]:
    """A non-empty subset of levels 0..4 in network order, each maybe written negatively."""
    levels = draw(st.lists(st.integers(0, NUM_LEVELS - 1), min_size=1, unique=True).map(sorted))
    return tuple(lv - NUM_LEVELS if draw(st.booleans()) else lv for lv in levels)


option_sets = st.fixed_dictionaries(
    {
        "out_indices": valid_out_indices(),
        "output_stride": st.sampled_from((8, 16, 32)),
        "in_chans": st.integers(1, 5),
        "norm_layer": st.sampled_from(NORMS),
        "return_dict": st.booleans(),
    }
)


@functools.lru_cache(maxsize=8)
def cached_backbone(variant: str, options: tuple) -> torch.nn.Module:
    # Shrinking replays near-identical examples: reuse their models.
    return create_backbone(variant, **dict(options)).eval()


def expected_levels(out_indices) -> list[int]:
    """Reference semantics: a negative index counts back from the deepest level."""
    return [i + NUM_LEVELS if i < 0 else i for i in out_indices]


@settings(max_examples=150, deadline=None)
@given(
    variant=st.sampled_from(VARIANTS),
    options=option_sets,
    height=st.integers(1, 300),
    width=st.integers(1, 300),
)
def test_outputs_match_feature_info_for_any_options_and_size(variant, options, height, width):
    # GroupNorm with 32 groups over the 32-channel deep stem of resnet50d has one channel
    # per group; torch refuses to normalise a single value, i.e. a 1 x 1 stem map.
    assume(
        not (
            variant == "resnet50d"
            and options["norm_layer"] == "groupnorm"
            and math.ceil(height / 2) * math.ceil(width / 2) == 1
        )
    )
    model = cached_backbone(variant, tuple(sorted(options.items())))
    info = model.feature_info
    levels = expected_levels(options["out_indices"])
    assert list(info.out_indices) == levels
    assert info.module_name() == [LEVEL_MODULES[lv] for lv in levels]

    with torch.no_grad():
        out = model(torch.randn(1, options["in_chans"], height, width))

    if options["return_dict"]:
        assert isinstance(out, dict)
        assert list(out) == info.module_name()
        out = list(out.values())
    else:
        assert isinstance(out, list)
    assert len(out) == len(info)
    assert info.reduction() == [min(2 ** (lv + 1), options["output_stride"]) for lv in levels]
    for tensor, channels, reduction in zip(out, info.channels(), info.reduction(), strict=True):
        assert tuple(tensor.shape) == (
            1,
            channels,
            math.ceil(height / reduction),
            math.ceil(width / reduction),
        )


@settings(max_examples=60, deadline=None)
@given(
    variant=st.sampled_from(VARIANTS),
    output_stride=st.sampled_from((8, 16, 32)),
    out_indices=valid_out_indices(),
)
def test_feature_info_reductions_follow_output_stride(variant, output_stride, out_indices):
    # Without a forward pass: cheap enough to cover more option sets.
    model = create_backbone(variant, output_stride=output_stride, out_indices=out_indices)
    levels = expected_levels(out_indices)
    expected_reduction = [min(2 ** (lv + 1), output_stride) for lv in levels]
    assert model.feature_info.reduction() == expected_reduction
    expansion = 1 if variant in ("resnet18", "resnet34") else 4
    expected_channels = [64 if lv == 0 else 64 * 2 ** (lv - 1) * expansion for lv in levels]
    assert model.feature_info.channels() == expected_channels
    deepest = max(levels)
    built = [name for name in ("layer1", "layer2", "layer3", "layer4") if name in model]
    assert built == [f"layer{k}" for k in range(1, deepest + 1)]


# -- out_indices alone ---------------------------------------------------------------


def reasons_invalid(out_indices: list[int]) -> set[str]:
    """Why ``out_indices`` is invalid for a 5-level network (empty set: it is valid)."""
    if not out_indices:
        return {"empty"}
    reasons = set()
    if any(not -NUM_LEVELS <= i < NUM_LEVELS for i in out_indices):
        reasons.add("out of range")
    levels = [i % NUM_LEVELS for i in out_indices if -NUM_LEVELS <= i < NUM_LEVELS]
    if len(set(levels)) != len(levels):
        reasons.add("repeats")
    if any(a > b for a, b in itertools.pairwise(levels)):
        reasons.add("network order")
    return reasons


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(-8, 8), max_size=7))
def test_resolve_out_indices_accepts_exactly_the_valid_lists(out_indices):
    reasons = reasons_invalid(out_indices)
    if reasons:
        with pytest.raises(ValueError) as info:
            resolve_out_indices(out_indices, NUM_LEVELS)
        assert any(reason in str(info.value) for reason in reasons), (reasons, str(info.value))
    else:
        resolved = resolve_out_indices(out_indices, NUM_LEVELS)
        assert resolved == tuple(expected_levels(out_indices))
        assert list(resolved) == sorted(set(resolved))  # strictly increasing levels
        # Resolution is idempotent: resolved indices resolve to themselves.
        assert resolve_out_indices(resolved, NUM_LEVELS) == resolved


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-8, 8), max_size=6), st.integers(1, 8))
def test_resolve_out_indices_for_any_network_depth(out_indices, num_levels):
    in_range = all(-num_levels <= i < num_levels for i in out_indices)
    levels = [i % num_levels for i in out_indices]
    valid = bool(out_indices) and in_range and all(a < b for a, b in itertools.pairwise(levels))
    if valid:
        assert resolve_out_indices(out_indices, num_levels) == tuple(levels)
    else:
        with pytest.raises(ValueError):
            resolve_out_indices(out_indices, num_levels)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-6, 5), min_size=1, max_size=4))
def test_backbone_out_indices_follow_resolution(out_indices):
    if reasons_invalid(out_indices):
        with pytest.raises(ValueError, match="out_indices"):
            create_backbone("resnet18", out_indices=out_indices)
        return
    levels = expected_levels(out_indices)
    model = create_backbone("resnet18", out_indices=out_indices, return_dict=True).eval()
    assert list(model.feature_info.out_indices) == levels
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert list(out) == [LEVEL_MODULES[lv] for lv in levels]


@settings(max_examples=30, deadline=None)
@given(out_indices=valid_out_indices(), frozen_stages=st.integers(-3, 6))
def test_frozen_stages_accepted_exactly_up_to_the_deepest_built_level(out_indices, frozen_stages):
    deepest = max(expected_levels(out_indices))
    if not -1 <= frozen_stages <= deepest:
        with pytest.raises(ValueError, match=f"frozen_stages={frozen_stages} is out of range"):
            create_backbone("resnet18", out_indices=out_indices, frozen_stages=frozen_stages)
        return
    model = create_backbone("resnet18", out_indices=out_indices, frozen_stages=frozen_stages)
    frozen = {"conv1", "bn1"} if frozen_stages >= 0 else set()
    frozen |= {f"layer{k}" for k in range(1, frozen_stages + 1)}
    for name, param in model.named_parameters():
        assert param.requires_grad is (name.split(".")[0] not in frozen), name
