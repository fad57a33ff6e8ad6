"""backbones.testing: each check passes on the right thing and names what a broken one breaks.

The broken blocks and models below each break one point of a contract, so every
message the checks give is pinned here.
"""

import math
import re

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from backbones import create_backbone
from backbones.blocks import BasicBlock, Bottleneck, drop_path_module
from backbones.features import FeatureInfo, FeatureLevel
from backbones.layers import BlockLayer, BlockVariant, InsertedLayer
from backbones.testing import (
    assert_features_close,
    assert_parity,
    check_block,
    check_feature_contract,
    randomize_batchnorm_stats,
)

# -- randomize_batchnorm_stats ---------------------------------------------------------


def _norms() -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(4), nn.SyncBatchNorm(5), nn.BatchNorm1d(3), FrozenBatchNorm2d(6)
    )


def test_randomize_changes_every_batchnorm_kind_in_place():
    model = _norms()
    assert randomize_batchnorm_stats(model) is model
    for norm in model:
        assert not torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert bool((norm.running_var >= 0.5).all() and (norm.running_var <= 1.5).all())
        assert bool((norm.weight >= 0.5).all()) and not torch.equal(norm.weight, norm.bias)
    assert model[0].weight.requires_grad and model[0].weight.grad_fn is None


def test_randomize_is_deterministic_in_the_seed():
    a, b, c = (randomize_batchnorm_stats(_norms(), seed=s) for s in (3, 3, 4))
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0].running_mean, c[0].running_mean)


def test_randomize_skips_what_a_norm_does_not_have():
    model = nn.Sequential(nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4))
    randomize_batchnorm_stats(model)
    assert model[0].weight is None and not torch.equal(model[0].running_var, torch.ones(4))
    assert not torch.equal(model[1].weight.detach(), torch.ones(4))


# -- assert_features_close -------------------------------------------------------------


def _maps() -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 4, 4, generator=gen), torch.randn(1, 3, 2, 2, generator=gen)]


def test_features_close_passes_within_tolerance_for_lists_dicts_and_tensors():
    maps = _maps()
    nudged = [m + 1e-6 for m in maps]
    assert_features_close(nudged, maps)
    assert_features_close(tuple(nudged), maps)
    assert_features_close(dict(zip("ab", nudged, strict=True)), dict(zip("ab", maps, strict=True)))
    assert_features_close(nudged[0], maps[0])


def test_features_close_names_the_level_the_difference_and_the_tolerance():
    maps = _maps()
    actual = [maps[0], maps[1].clone()]
    actual[1][0, 2, 1, 0] += 0.5
    message = (
        r"level 1: values differ: max abs diff 0.5 at index \(0, 2, 1, 0\) "
        r"\(actual .*, expected .*\); 1 of 12 elements exceed atol=1e-05 \+ rtol=1e-05"
    )
    with pytest.raises(AssertionError, match=message):
        assert_features_close(actual, maps)
    with pytest.raises(AssertionError, match=r"level 1 \('layer2'\): values differ"):
        assert_features_close(actual, maps, names=["layer1", "layer2"])
    with pytest.raises(AssertionError, match=r"level 'b': values differ: max abs diff 0.5"):
        assert_features_close(
            dict(zip("ab", actual, strict=True)), dict(zip("ab", maps, strict=True))
        )
    assert_features_close(actual, maps, atol=0.6)


def test_features_close_reports_nan_as_a_difference():
    maps = _maps()
    actual = [maps[0].clone(), maps[1]]
    actual[0][0, 0, 0, 0] = math.nan
    with pytest.raises(AssertionError, match=r"level 0: values differ: max abs diff inf"):
        assert_features_close(actual, maps)


@pytest.mark.parametrize(
    ("actual", "expected", "message"),
    [
        (_maps()[:1], _maps(), r"1 feature maps \(actual\) != 2 \(expected\)"),
        (
            {"b": _maps()[1], "a": _maps()[0]},
            {"a": _maps()[0], "b": _maps()[1]},
            r"keys \['b', 'a'\] \(actual\) != \['a', 'b'\] \(expected\)",
        ),
        (
            [_maps()[0], _maps()[1][..., :1]],
            _maps(),
            r"level 1: shape \(1, 3, 2, 1\) \(actual\) != \(1, 3, 2, 2\) \(expected\)",
        ),
        (
            [_maps()[0].double(), _maps()[1]],
            _maps(),
            r"level 0: dtype torch.float64 \(actual\) != torch.float32 \(expected\)",
        ),
        ({"a": _maps()[0]}, _maps()[:1], "actual is a dict, expected is a sequence"),
    ],
    ids=["count", "key_order", "shape", "dtype", "kind"],
)
def test_features_close_names_what_differs_in_structure(actual, expected, message):
    with pytest.raises(AssertionError, match=message):
        assert_features_close(actual, expected)


def test_features_close_refuses_a_wrong_number_of_names():
    with pytest.raises(ValueError, match=r"one name per expected feature map \(2\), got 1"):
        assert_features_close(_maps(), _maps(), names=["layer1"])


# -- assert_parity ---------------------------------------------------------------------

ALL_LEVELS = (0, 1, 2, 3, 4)


@pytest.fixture
def image() -> Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_parity_with_timm_features_only(image):
    reference = timm.create_model("resnet18", features_only=True)
    model = create_backbone("resnet18", out_indices=ALL_LEVELS)
    assert model.feature_info.module_name() == reference.feature_info.module_name()
    ours, theirs = assert_parity(model, reference, image)
    assert [f.shape[1] for f in ours] == [64, 64, 128, 256, 512]
    assert len(theirs) == 5
    assert not model.training and not reference.training
    # the reference's statistics were randomized, then loaded into the model
    assert not torch.equal(reference.bn1.running_var, torch.ones(64))
    assert torch.equal(model.bn1.running_var, reference.bn1.running_var)


def test_parity_with_torchvision_and_dict_outputs(image):
    getter = torchvision.models._utils.IntermediateLayerGetter
    layers = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
    reference = getter(torchvision.models.resnet18(), return_layers=layers)
    model = create_backbone("resnet18", return_dict=True)
    ours, _ = assert_parity(model, reference, image)
    assert list(ours) == list(layers)


def test_parity_fails_on_a_perturbed_weight_at_the_level_it_reaches(image):
    def perturb(state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**state, "layer4.1.conv2.weight": state["layer4.1.conv2.weight"] + 0.1}

    model = create_backbone("resnet18", out_indices=ALL_LEVELS)
    reference = timm.create_model("resnet18", features_only=True)
    with pytest.raises(AssertionError, match=r"^level 4: values differ: max abs diff"):
        assert_parity(model, reference, image, key_map=perturb)


def test_parity_fails_when_the_models_already_differ_and_nothing_is_loaded(image):
    reference = randomize_batchnorm_stats(create_backbone("resnet18"))
    model = create_backbone("resnet18")
    model.load_state_dict(reference.state_dict())
    assert_parity(model, reference, image, load=False)
    with torch.no_grad():
        reference.layer2[0].bn1.bias += 1.0
    with pytest.raises(AssertionError, match=r"^level 1: values differ"):
        assert_parity(model, reference, image, load=False)


def test_parity_lists_the_keys_that_do_not_load_strictly():
    model = create_backbone("resnet18", out_indices=ALL_LEVELS)
    classifier = torchvision.models.resnet18()
    message = (
        r"does not load strictly into the model: missing keys \(in the model, not given\) "
        r"\[\]; unexpected keys \(given, not in the model\) \[fc.weight, fc.bias\]; "
        "pass key_map="
    )
    with pytest.raises(AssertionError, match=message):
        assert_parity(model, classifier, torch.randn(1, 3, 32, 32))


def test_parity_names_weights_of_the_wrong_shape():
    model = create_backbone("resnet18", in_chans=1)
    reference = timm.create_model("resnet18", features_only=True)
    message = r"conv1.weight: \(64, 3, 7, 7\) \(reference\) vs \(64, 1, 7, 7\) \(model\)"
    with pytest.raises(AssertionError, match=message):
        assert_parity(model, reference, torch.randn(1, 3, 32, 32))


# -- check_block -----------------------------------------------------------------------


def _conv3x3(inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)


class ToyBlock(nn.Module):
    """The smallest block that follows the contract, with one option of its own (gain)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        norm_layer=nn.BatchNorm2d,
        drop_path: float = 0.0,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _conv3x3(inplanes, planes, stride, first_dilation or dilation)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, out, dilation=dilation)
        self.bn2 = norm_layer(out)
        self.downsample = downsample
        self.drop_path = drop_path_module(drop_path)
        self.gain = gain

    def main(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) * self.gain

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.drop_path(self.main(x)) + shortcut)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class IgnoresNormLayer(ToyBlock):
    def __init__(self, inplanes, planes, norm_layer=None, **kwargs) -> None:
        super().__init__(inplanes, planes, norm_layer=nn.BatchNorm2d, **kwargs)


class OwnBatchNorm(ToyBlock):
    def __init__(self, inplanes, planes, **kwargs) -> None:
        super().__init__(inplanes, planes, **kwargs)
        self.bn2 = nn.BatchNorm2d(planes)


class IgnoresStrideWithShortcut(ToyBlock):
    def __init__(self, inplanes, planes, stride=1, **kwargs) -> None:
        super().__init__(inplanes, planes, stride=1, **kwargs)


class NoShortcut(ToyBlock):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.main(x))


class NoShortcutIgnoresStride(NoShortcut):
    def __init__(self, inplanes, planes, stride=1, **kwargs) -> None:
        super().__init__(inplanes, planes, stride=1, **kwargs)


class WrongExpansion(NoShortcut):
    expansion = 2

    def __init__(self, inplanes, planes, norm_layer=nn.BatchNorm2d, **kwargs) -> None:
        super().__init__(inplanes, planes, norm_layer=norm_layer, **kwargs)
        self.conv2 = _conv3x3(planes, planes)  # planes, not planes * expansion
        self.bn2 = norm_layer(planes)


class ZeroExpansion(ToyBlock):
    expansion = 0


class BoolExpansion(ToyBlock):
    expansion = True


class IgnoresDilation(ToyBlock):
    def __init__(self, inplanes, planes, dilation=1, first_dilation=None, **kwargs) -> None:
        super().__init__(inplanes, planes, **kwargs)


class RefusesDilation(ToyBlock):
    def __init__(self, inplanes, planes, dilation=1, **kwargs) -> None:
        if dilation != 1:
            raise ValueError(f"RefusesDilation supports only dilation=1, got dilation={dilation}")
        super().__init__(inplanes, planes, **kwargs)


class IgnoresDropPath(ToyBlock):
    def __init__(self, inplanes, planes, drop_path=0.0, **kwargs) -> None:
        super().__init__(inplanes, planes, **kwargs)


class _AlwaysDrop(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.5)


class DropsInEval(ToyBlock):
    def __init__(self, inplanes, planes, drop_path=0.0, **kwargs) -> None:
        super().__init__(inplanes, planes, **kwargs)
        if drop_path > 0:
            self.drop_path = _AlwaysDrop()


class ZeroInitLastDoesNothing(ToyBlock):
    def zero_init_last(self) -> None:
        pass


class UnusedParameter(ToyBlock):
    def __init__(self, inplanes, planes, **kwargs) -> None:
        super().__init__(inplanes, planes, **kwargs)
        self.extra = nn.Conv2d(planes, planes, 1)


class BrokenInitWeights(ToyBlock):
    def init_weights(self) -> None:
        raise RuntimeError("no weights today")


@pytest.mark.parametrize(
    "block", [BasicBlock, Bottleneck, ToyBlock, RefusesDilation, "basic", "bottleneck"]
)
def test_check_block_passes_a_block_that_follows_the_contract(block):
    check_block(block)


def test_check_block_passes_block_kwargs_through():
    check_block(ToyBlock, block_kwargs={"gain": 2.0}, inplanes=8, planes=4, size=9)
    with pytest.raises(
        AssertionError, match=r"ToyBlock\(8, 4, stride=2, .*\) raised TypeError: .*'nope'"
    ):
        check_block(ToyBlock, block_kwargs={"nope": 1}, inplanes=8, planes=4)


BROKEN_BLOCKS = {
    IgnoresNormLayer: "norm_layer: the norm_layer passed in was never called",
    OwnBatchNorm: "norm_layer: BatchNorms not built by norm_layer: bn2",
    IgnoresStrideWithShortcut: (
        r"stride=2 with a downsample: forward of a \(2, 32, 16, 16\) input raised RuntimeError"
    ),
    NoShortcutIgnoresStride: (
        r"stride=2 with a downsample: output is 16x16 for a 16x16 input at stride 2, "
        r"expected ceil\(16 / 2\) = 8 \(output shape \(2, 16, 16, 16\), expected \(2, 16, 8, 8\)\)"
    ),
    NoShortcut: "stride=2 with a downsample: the downsample module passed in was never called",
    WrongExpansion: (
        "stride=2 with a downsample: output has 16 channels, "
        r"expected planes \* expansion = 16 \* 2 = 32"
    ),
    ZeroExpansion: "expansion: needs a positive int class attribute expansion, got 0",
    BoolExpansion: "expansion: needs a positive int class attribute expansion, got True",
    IgnoresDilation: (
        "dilation=2, first_dilation=2: gives the dilation=1 output with the same weights"
    ),
    IgnoresDropPath: "drop_path=0.5: in train mode, forwards with seeds 1 and 2 are equal",
    DropsInEval: "drop_path=0.5: two forwards in eval mode differ",
    ZeroInitLastDoesNothing: r"zero_init_last\(\): after it the block .* should return act\(x\)",
    UnusedParameter: "gradients: no gradient reaches extra.weight, extra.bias",
    BrokenInitWeights: r"init_weights\(\): raised RuntimeError: no weights today",
}


@pytest.mark.parametrize(
    ("block", "message"), BROKEN_BLOCKS.items(), ids=[b.__name__ for b in BROKEN_BLOCKS]
)
def test_check_block_names_the_block_and_the_broken_point(block, message):
    prefix = f"block {block.__name__} breaks the block contract: "
    with pytest.raises(AssertionError, match="^" + re.escape(prefix) + message):
        check_block(block)


def test_check_block_takes_classes_variants_and_names():
    with pytest.raises(TypeError, match="a BlockVariant or a registered block name, got 3"):
        check_block(3)
    # a variant is checked as its base block with its layers built in
    halve = InsertedLayer("scale", "after_conv3", lambda c: _Scale(0.5))
    check_block(BlockVariant(Bottleneck, (BlockLayer(lambda c: _Scale(0.5), name="scale"),)))
    check_block(Bottleneck, block_kwargs={"layers": (halve,)})


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_check_block_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_block(ToyBlock, inplanes=8, planes=4, size=8)
    assert torch.equal(torch.rand(3), expected)


# -- check_feature_contract ------------------------------------------------------------


class TwoLevels(nn.Module):
    """A tiny backbone whose feature_info says what the constructor is told."""

    def __init__(self, channels=(8, 16), reductions=(2, 4), keys=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.keys = keys
        self.feature_info = FeatureInfo(
            [
                FeatureLevel(0, channels[0], reductions[0], "conv1"),
                FeatureLevel(1, channels[1], reductions[1], "conv2"),
            ],
            (0, 1),
        )

    def forward(self, x: Tensor):
        a = self.conv1(x)
        b = self.conv2(a)
        return [a, b] if self.keys is None else dict(zip(self.keys, (a, b), strict=True))


@pytest.mark.parametrize("return_dict", [False, True])
def test_feature_contract_holds_for_our_backbone_at_odd_sizes(return_dict):
    model = create_backbone("resnet18", out_indices=ALL_LEVELS, return_dict=return_dict).eval()
    out = check_feature_contract(model, torch.randn(1, 3, 33, 47))
    maps = list(out.values()) if return_dict else out
    assert [tuple(f.shape[-2:]) for f in maps] == [(17, 24), (9, 12), (5, 6), (3, 3), (2, 2)]


def test_feature_contract_holds_for_timm_features_only():
    model = timm.create_model("resnet18", features_only=True, out_indices=(2, 4)).eval()
    check_feature_contract(model, torch.randn(1, 3, 33, 47))


def test_feature_contract_holds_for_a_tiny_backbone():
    check_feature_contract(TwoLevels(), torch.randn(2, 3, 9, 9))
    check_feature_contract(TwoLevels(keys=("conv1", "conv2")), torch.randn(2, 3, 9, 9))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            TwoLevels(channels=(8, 32)),
            r"level 1 \('conv2'\): shape \(2, 16, 3, 3\) != \(2, 32, 3, 3\) from feature_info "
            r"\(num_chs=32, reduction=4, input 9x9\)",
        ),
        (
            TwoLevels(reductions=(2, 8)),
            r"level 1 \('conv2'\): shape \(2, 16, 3, 3\) != \(2, 16, 2, 2\) from feature_info",
        ),
        (
            TwoLevels(keys=("a", "b")),
            r"output dict keys \['a', 'b'\] != feature_info.module_name\(\) \['conv1', 'conv2'\]",
        ),
        (nn.Conv2d(3, 8, 1), "Conv2d has no feature_info attribute"),
    ],
    ids=["channels", "reduction", "keys", "no_feature_info"],
)
def test_feature_contract_names_what_feature_info_gets_wrong(model, message):
    with pytest.raises(AssertionError, match=message):
        check_feature_contract(model, torch.randn(2, 3, 9, 9))


def test_feature_contract_counts_the_maps():
    model = TwoLevels()
    model.forward = lambda x: [model.conv1(x)]
    with pytest.raises(AssertionError, match=r"1 feature maps returned, feature_info describes 2"):
        check_feature_contract(model, torch.randn(1, 3, 9, 9))
    model.forward = lambda x: model.conv1(x)
    with pytest.raises(AssertionError, match="returns a list or dict of feature maps, got Tensor"):
        check_feature_contract(model, torch.randn(1, 3, 9, 9))
