"""The create_backbone pipeline: families declare the options they honour, and what a
factory returns is checked against the backbone contract where it returns."""

import uuid

import pytest
import torch
from torch import nn

from backbones import (
    BackboneContractError,
    FeatureInfo,
    FeatureLevel,
    UnsupportedOptionError,
    create_backbone,
    register_backbone,
)
from backbones.catalog import BACKBONES


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class TwoLevels(nn.Module):
    """A tiny honest backbone: strides 2 and 4, channels 8 and 16."""

    def __init__(self, out_indices=(0, 1), channels=(8, 16), in_chans=3):
        super().__init__()
        self.a = nn.Conv2d(in_chans, 8, 3, 2, 1)
        self.b = nn.Conv2d(8, 16, 3, 2, 1)
        levels = [FeatureLevel(0, channels[0], 2, "a"), FeatureLevel(1, channels[1], 4, "b")]
        self.feature_info = FeatureInfo(levels, out_indices)

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)][self.feature_info.out_indices[0] :]


@pytest.fixture
def registered():
    names: list[str] = []

    def register(factory, **kwargs):
        name = _name("tiny")
        register_backbone(name, **kwargs)(factory)
        names.append(name)
        return name

    yield register
    for name in names:
        BACKBONES.remove(name)


def test_a_factory_gets_only_the_options_its_signature_names(registered):
    seen = {}

    def tiny(out_indices=(0, 1)):
        seen["out_indices"] = out_indices
        return TwoLevels(out_indices)

    name = registered(tiny)
    bb = create_backbone(name, out_indices=(1,))
    assert seen == {"out_indices": (1,)}
    assert bb.feature_info.channels() == [16]
    assert bb.backbone_config["out_indices"] == [1]


def test_an_option_the_family_does_not_honour_names_the_families_that_do(registered):
    name = registered(lambda out_indices=(0, 1): TwoLevels(out_indices), family="tiny")
    with pytest.raises(UnsupportedOptionError) as info:
        create_backbone(name, block="basic")
    message = str(info.value)
    assert message.startswith("block='basic' is not supported by the 'tiny' family")
    assert "families that have it: resnet" in message
    assert isinstance(info.value, ValueError)
    # its default value is fine: the factory simply is not asked
    assert (
        len(create_backbone(name, out_indices=(0, 1), block=None, frozen_stages=-1).feature_info)
        == 2
    )


def test_supports_may_be_declared_explicitly_and_is_checked(registered):
    with pytest.raises(ValueError, match=r"supports names \['out_indice'\]"):
        registered(lambda **kw: TwoLevels(), supports=("out_indice",))


def test_a_factory_returning_no_module_is_named(registered):
    name = registered(lambda **kw: "not a module")
    with pytest.raises(
        BackboneContractError, match=rf"backbone '{name}': its factory .*<lambda> returned str"
    ):
        create_backbone(name)


def test_a_feature_info_that_lies_about_channels_is_caught_at_the_factory(registered):
    name = registered(lambda: TwoLevels(channels=(8, 32)))
    with pytest.raises(BackboneContractError) as info:
        create_backbone(name)
    assert "'b' map is (1, 16, 2, 2) for a 8x8 input, but feature_info says 32 channels" in str(
        info.value
    )
    assert isinstance(info.value, TypeError)


def test_a_forward_returning_fewer_maps_than_described_is_caught(registered):
    class Short(TwoLevels):
        def forward(self, x):
            return [self.a(x)]

    name = registered(lambda **kw: Short())
    with pytest.raises(
        BackboneContractError, match="forward gives 1 maps, but its feature_info describes 2"
    ):
        create_backbone(name)


def test_a_forward_that_raises_is_reported_with_the_probe_shape(registered):
    class Broken(TwoLevels):
        def forward(self, x):
            raise RuntimeError("boom")

    name = registered(lambda **kw: Broken())
    with pytest.raises(
        BackboneContractError,
        match=r"forward fails on a zero image of shape \(1, 3, 8, 8\): RuntimeError: boom",
    ):
        create_backbone(name)


def test_the_contract_probe_leaves_training_modes_and_statistics_alone():
    bb = create_backbone("resnet18", frozen_stages=1)
    assert bb.training and not bb.layer1.training and bb.layer2.training
    assert float(bb.bn1.num_batches_tracked) == 0.0  # the probe ran in eval mode
    assert all(p.grad is None for p in bb.parameters())


def test_weights_are_a_field_of_the_entry():
    entry = BACKBONES.get("resnet50")
    assert [w.tag for w in entry.weights][:2] == ["tv2_in1k", "tv_in1k"]
    assert (entry.family, "block_layers" in entry.supports) == ("resnet", True)


def test_the_pipeline_checks_options_before_building(registered):
    built = []
    name = registered(lambda **kw: built.append(1) or TwoLevels())
    with pytest.raises(TypeError, match="in_chans must be a positive int"):
        create_backbone(name, in_chans="3")
    assert built == []
    x = torch.zeros(1, 3, 8, 8)
    assert [t.shape[1] for t in create_backbone(name)(x)] == [8, 16]
