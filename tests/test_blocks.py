"""The built-in blocks' insertion points: where layers sit, in what order they run, and errors.

Each layer is hand-made (an ``InsertedLayer`` with a factory), so these tests need
no layer registry. Parity: a bottleneck with an SE layer named ``se`` at
``after_conv3`` is timm's ``Bottleneck(attn_layer="se")``, key for key.
"""

import copy

import pytest
import torch
from timm.layers import SEModule
from timm.models import resnet as timm_resnet
from torch import Tensor, nn

from backbones.blocks import BasicBlock, Bottleneck
from backbones.layers import InsertedLayer
from backbones.testing import assert_parity, randomize_batchnorm_stats


class Scale(nn.Module):
    """Multiplies by a per-channel weight: a layer whose channel count shows in its shape."""

    def __init__(self, channels: int, value: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, channels, 1, 1), value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


class AddOne(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + 1.0


def scale(name: str, position: str, value: float = 1.0) -> InsertedLayer:
    return InsertedLayer(name, position, lambda c: Scale(c, value), label="scale")


def se(position: str = "after_conv3") -> InsertedLayer:
    return InsertedLayer("se", position, SEModule, label="se")


def children(block: nn.Module) -> list[str]:
    return [name for name, _ in block.named_children()]


def projection(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(outplanes))


def reference_forward(block: nn.Module, x: Tensor, hooks: dict[str, nn.Module]) -> Tensor:
    """The block's function written out, with ``hooks[position]`` applied at each point."""

    def hook(position: str, t: Tensor) -> Tensor:
        return hooks[position](t) if position in hooks else t

    shortcut = block.downsample(x) if block.downsample is not None else x
    x = hook("after_conv1", block.act1(block.bn1(block.conv1(x))))
    if isinstance(block, BasicBlock):
        x = hook("after_conv2", block.bn2(block.conv2(x)))
        return block.act2(x + shortcut)
    x = hook("after_conv2", block.act2(block.bn2(block.conv2(x))))
    x = hook("after_conv3", block.bn3(block.conv3(x)))
    return block.act3(x + shortcut)


# -- without layers: the blocks of before ----------------------------------------------


def test_bottleneck_children_keep_their_order():
    block = Bottleneck(64, 32, downsample=projection(64, 128, 1))
    assert children(block) == [
        "conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3",
        "downsample", "drop_path", "act3",
    ]  # fmt: skip


def test_basic_block_children_keep_their_order_and_no_downsample_is_none():
    block = BasicBlock(64, 64)
    assert children(block) == ["conv1", "bn1", "act1", "conv2", "bn2", "drop_path", "act2"]
    assert block.downsample is None


def test_modules_a_subclass_registers_after_construction_are_not_run():
    class WithHelper(BasicBlock):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.helper = nn.Conv2d(1, 1, 1)  # not part of the forward, as before

    torch.manual_seed(0)
    block = WithHelper(64, 64).eval()
    plain = BasicBlock(64, 64).eval()
    plain.load_state_dict(block.state_dict(), strict=False)
    x = torch.randn(1, 64, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(x))


def test_blocks_list_their_insertion_points():
    assert BasicBlock.positions == ("after_conv1", "after_conv2")
    assert Bottleneck.positions == ("after_conv1", "after_conv2", "after_conv3")


# -- where each position puts its layer ------------------------------------------------

# block, position, the child the layer follows, its channels (inplanes 64, planes 32)
PLACES = [
    (Bottleneck, "after_conv1", "act1", 32),
    (Bottleneck, "after_conv2", "act2", 32),
    (Bottleneck, "after_conv3", "bn3", 128),
    (BasicBlock, "after_conv1", "act1", 32),
    (BasicBlock, "after_conv2", "bn2", 32),
]
PLACE_IDS = [f"{cls.__name__}-{position}" for cls, position, _, _ in PLACES]


def make_block(cls: type[nn.Module], **kwargs) -> nn.Module:
    """A block from 64 to ``32 * expansion`` channels at stride 2, with its projection."""
    outplanes = 32 * cls.expansion
    torch.manual_seed(0)
    block = cls(64, 32, stride=2, downsample=projection(64, outplanes, 2), **kwargs)
    return randomize_batchnorm_stats(block).eval()


@pytest.mark.parametrize(("cls", "position", "anchor", "channels"), PLACES, ids=PLACE_IDS)
def test_a_layer_sits_right_after_its_anchor_in_children_and_state_dict(
    cls, position, anchor, channels
):
    plain = make_block(cls)
    block = make_block(cls, layers=[scale("extra", position)])
    names = children(plain)
    names.insert(names.index(anchor) + 1, "extra")
    assert children(block) == names
    plain_keys = list(plain.state_dict())
    expected = [
        key
        for child in names
        for key in (["extra.weight"] if child == "extra" else plain_keys)
        if key.split(".")[0] == child
    ]
    assert list(block.state_dict()) == expected
    assert block.extra.weight.shape == (1, channels, 1, 1)


@pytest.mark.parametrize(("cls", "position", "anchor", "channels"), PLACES, ids=PLACE_IDS)
def test_a_layer_runs_at_its_place_in_the_main_path(cls, position, anchor, channels):
    block = make_block(cls, layers=[scale("extra", position)])
    with torch.no_grad():
        block.extra.weight.uniform_(-2.0, 2.0, generator=torch.Generator().manual_seed(1))
        x = torch.randn(2, 64, 10, 9)
        expected = reference_forward(block, x, {position: block.extra})
        torch.testing.assert_close(block(x), expected)
        assert not torch.allclose(block(x), reference_forward(block, x, {}))


@pytest.mark.parametrize(
    ("cls", "position"), [(Bottleneck, "after_conv3"), (BasicBlock, "after_conv2")]
)
def test_a_zero_layer_at_the_last_conv_leaves_the_activated_shortcut(cls, position):
    block = make_block(cls, layers=[scale("zero", position, value=0.0)])
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))


def test_several_layers_at_one_position_run_in_the_order_given():
    twice = scale("twice", "after_conv3", value=2.0)
    add_one = InsertedLayer("add_one", "after_conv3", lambda c: AddOne())
    block = make_block(Bottleneck, layers=[twice, add_one])
    swapped = make_block(Bottleneck, layers=[add_one, twice])
    assert children(block)[7:10] == ["bn3", "twice", "add_one"]
    assert children(swapped)[7:10] == ["bn3", "add_one", "twice"]
    x = torch.randn(1, 64, 6, 6)
    with torch.no_grad():
        twice_plus_one = lambda t: t * 2.0 + 1.0  # noqa: E731
        plus_one_twice = lambda t: (t + 1.0) * 2.0  # noqa: E731
        torch.testing.assert_close(
            block(x), reference_forward(block, x, {"after_conv3": twice_plus_one})
        )
        torch.testing.assert_close(
            swapped(x), reference_forward(swapped, x, {"after_conv3": plus_one_twice})
        )


@pytest.mark.parametrize(("cls", "anchor"), [(Bottleneck, "bn3"), (BasicBlock, "bn2")])
def test_last_is_the_blocks_last_insertion_point(cls, anchor):
    block = cls(64, 64, layers=[se("last")])
    assert children(block).index("se") == children(block).index(anchor) + 1


def test_layers_at_every_position_each_get_their_channels():
    layers = [scale(f"at_{p}", p) for p in Bottleneck.positions]
    block = Bottleneck(64, 16, layers=layers)  # width 16, 64 out
    got = [getattr(block, f"at_{p}").weight.shape[1] for p in Bottleneck.positions]
    assert got == [16, 16, 64]
    assert children(block).index("at_after_conv3") == children(block).index("bn3") + 1


# -- compilers -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("cls", [Bottleneck, BasicBlock])
def test_blocks_with_layers_script_and_fx_trace(cls):
    last = cls.positions[-1]
    block = make_block(cls, layers=[scale("first", "after_conv1", 0.5), se(last)])
    x = torch.randn(2, 64, 9, 7)
    with torch.no_grad():
        expected = block(x)
        torch.testing.assert_close(torch.jit.script(block)(x), expected)
        traced = torch.fx.symbolic_trace(block)
        torch.testing.assert_close(traced(x), expected)
    modules = ("call_module", "get_attr")
    order = [str(n.target).split(".")[0] for n in traced.graph.nodes if n.op in modules]
    assert order.index("first") == order.index("act1") + 1  # its weight, read right after
    assert order.index("se") == order.index("bn2" if cls is BasicBlock else "bn3") + 1


# -- parity with timm's attention blocks -----------------------------------------------

TIMM_CASES = {
    "stride_2": {"stride": 2},
    "resnext_groups_4": {"groups": 4, "base_width": 16},  # timm's cardinality
    "dilated": {"dilation": 2, "first_dilation": 1},
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_se_bottleneck_is_timms_attn_layer_se_bottleneck(case):
    kwargs = TIMM_CASES[case]
    downsample = projection(64, 128, kwargs.get("stride", 1))
    torch.manual_seed(0)
    ours = Bottleneck(64, 32, downsample=copy.deepcopy(downsample), layers=[se()], **kwargs)
    timm_kwargs = {("cardinality" if k == "groups" else k): v for k, v in kwargs.items()}
    timm_block = timm_resnet.Bottleneck(
        64, 32, downsample=copy.deepcopy(downsample), attn_layer="se", **timm_kwargs
    )
    assert list(ours.state_dict()) == list(timm_block.state_dict())  # names and order
    assert_parity(ours, timm_block, torch.randn(2, 64, 11, 12))


def test_se_basic_block_is_timms_attn_layer_se_basic_block():
    torch.manual_seed(0)
    ours = BasicBlock(64, 64, layers=[se("after_conv2")])
    timm_block = timm_resnet.BasicBlock(64, 64, attn_layer="se")
    assert list(ours.state_dict()) == list(timm_block.state_dict())
    assert_parity(ours, timm_block, torch.randn(2, 64, 9, 9))


# -- the 3x3 conv can be replaced alone ------------------------------------------------


class SeparableBottleneck(Bottleneck):
    def make_conv2(self, width: int, *, stride: int, dilation: int, groups: int) -> nn.Module:
        return nn.Conv2d(
            width, width, 3, stride=stride, padding=dilation, dilation=dilation, groups=width
        )


def test_make_conv2_replaces_only_the_3x3_conv():
    block = SeparableBottleneck(64, 16, stride=2, dilation=2, downsample=projection(64, 64, 2))
    assert block.conv2.groups == 16 and block.conv2.stride == (2, 2)
    assert children(block) == children(Bottleneck(64, 16, downsample=projection(64, 64, 2)))
    assert block(torch.randn(1, 64, 8, 8)).shape == (1, 64, 4, 4)


# -- errors ----------------------------------------------------------------------------


def test_a_position_the_block_lacks_is_refused_with_the_accepted_ones():
    with pytest.raises(
        ValueError,
        match=r"BasicBlock layer 'se' \(se\): BasicBlock has no insertion point 'after_conv3'; "
        r"accepted: after_conv1, after_conv2, last",
    ):
        BasicBlock(64, 64, layers=[se("after_conv3")])


@pytest.mark.parametrize(
    "name", ["bn1", "conv3", "downsample", "act3", "forward", "expansion", "double", "items"]
)
def test_a_name_the_block_uses_is_refused(name):
    with pytest.raises(ValueError, match=rf"Bottleneck layer '{name}' \(scale\).*taken by"):
        Bottleneck(64, 16, layers=[scale(name, "after_conv1")])


def test_a_name_a_subclass_registered_is_refused():
    class WithGate(Bottleneck):
        def make_conv2(self, width: int, *, stride: int, dilation: int, groups: int):
            self.gate = nn.Identity()
            return super().make_conv2(width, stride=stride, dilation=dilation, groups=groups)

    with pytest.raises(ValueError, match=r"'gate'.*taken by the block's Identity"):
        WithGate(64, 16, layers=[scale("gate", "after_conv2")])


def test_two_layers_with_one_name_are_refused():
    with pytest.raises(ValueError, match=r"another layer has the module name 'se'"):
        Bottleneck(64, 16, layers=[se("after_conv1"), se("after_conv3")])


def test_a_name_that_is_no_identifier_is_refused():
    with pytest.raises(ValueError, match=r"'se\.1'.*must be a Python identifier"):
        Bottleneck(64, 16, layers=[InsertedLayer("se.1", "after_conv3", SEModule)])


def test_a_factory_that_returns_no_module_is_refused():
    bad = InsertedLayer("gate", "after_conv3", lambda c: torch.sigmoid, label="bad_gate")
    with pytest.raises(
        TypeError,
        match=r"Bottleneck layer 'gate' \(bad_gate\) at after_conv3: its factory returned "
        r"builtin_function_or_method .*not an nn.Module.*factory\(64\)",
    ):
        Bottleneck(64, 16, layers=[bad])


@pytest.mark.parametrize("layers", [se(), "se", [SEModule]], ids=["bare", "str", "factory"])
def test_layers_must_be_a_sequence_of_inserted_layers(layers):
    with pytest.raises(TypeError, match=r"Bottleneck layers must be"):
        Bottleneck(64, 16, layers=layers)
