"""``level_table`` and ``backbones info``: per-level shape, params, FLOPs, memory and
receptive field, measured from real forwards; exact where the numbers can be counted
by hand."""

import re

import pytest
import torch
from torch import Tensor, nn

from backbones.cli import main
from backbones.factory import create_backbone
from backbones.features import FeatureInfo, FeatureLevel
from backbones.info import LevelTable, format_table, level_table

F32 = 4  # bytes


class TwoConvs(nn.Module):
    """A 3x3 convolution of stride 1, then one of stride 2; returns both maps.

    Hand counts at an n x n input: level 0 has 3*4*9 + 4 = 112 parameters, 2*3*4*9*n*n
    FLOPs and a 3x3 field; level 1 adds 4*6*9 + 6 = 222 parameters and 2*4*6*9*(n/2)^2
    FLOPs, and its field is 3 + (3 - 1) * 1 = 5. ``unused`` is read by nothing.
    """

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.unused = nn.Linear(2, 2)
        levels = [FeatureLevel(0, 4, 1, "conv1"), FeatureLevel(1, 6, 2, "conv2")]
        self.feature_info = FeatureInfo(levels, (0, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        a = self.conv1(x)
        return [a, self.conv2(a)]


class DeadReLUAndMaxPool(nn.Module):
    """conv 3x3, ReLU, 2x2 max-pool of stride 2, conv 3x3: field 3 + 1 + 2 * 2 = 8.

    Its weights are zero and its first bias negative, so in the real model every ReLU
    is dead and every max-pool gradient goes to one corner of its window.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        for p in self.parameters():
            nn.init.zeros_(p)
        bias = self.conv1.bias
        assert bias is not None
        nn.init.constant_(bias, -1.0)
        self.feature_info = FeatureInfo([FeatureLevel(0, 4, 2, "conv2")], (0,))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.conv2(self.pool(self.act(self.conv1(x))))]


class DeepChain(nn.Module):
    """100 one-channel 3x3 convolutions: field 1 + 2 * 100 = 201. The gradient at the
    field's edge is a product of 100 small weights (about 3**-100), below what float32
    can hold."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(nn.Conv2d(1, 1, 3, padding=1) for _ in range(100)))
        self.feature_info = FeatureInfo([FeatureLevel(0, 1, 1, "convs")], (0,))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.convs(x)]


class Patchify(nn.Module):
    """A 4x4 convolution of stride 4 without padding: no output below 4 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.feature_info = FeatureInfo([FeatureLevel(0, 8, 4, "proj")], (0,))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.proj(x)]


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return create_backbone("resnet18")


@pytest.fixture(scope="module")
def resnet18_table(resnet18: nn.Module) -> LevelTable:
    return level_table(resnet18, img_size=128)


# -- hand-counted numbers -------------------------------------------------------------------
def test_params_up_to_a_level_are_those_read_before_its_map_and_unused_ones_count_in_the_total():
    table = level_table(TwoConvs(), img_size=16)
    assert [row.params for row in table.levels] == [112, 112 + 222]
    assert table.params == 112 + 222 + 6  # the unused Linear: in the total only


def test_flops_of_a_convolution_are_two_per_multiply_add_of_its_output():
    table = level_table(TwoConvs(), img_size=16)
    first = 2 * 3 * 4 * 3 * 3 * 16 * 16
    second = 2 * 4 * 6 * 3 * 3 * 8 * 8
    assert [row.flops for row in table.levels] == [first, first + second]
    assert table.flops == first + second
    assert table.levels[0].gflops == first / 1e9


def test_activation_bytes_are_the_tensors_allocated_so_far():
    table = level_table(TwoConvs(), img_size=16)
    first, second = 4 * 16 * 16 * F32, 6 * 8 * 8 * F32
    assert [row.activation_bytes for row in table.levels] == [first, first + second]


def test_shapes_are_those_the_forward_returns_and_the_description_is_feature_info():
    table = level_table(TwoConvs(), img_size=(16, 12))
    assert [row.shape for row in table.levels] == [(1, 4, 16, 12), (1, 6, 8, 6)]
    assert [(r.level, r.module, r.channels, r.stride) for r in table.levels] == [
        (0, "conv1", 4, 1),
        (1, "conv2", 6, 2),
    ]
    assert table.input_shape == (1, 3, 16, 12)


def test_in_chans_are_read_from_the_first_convolution():
    table = level_table(TwoConvs(in_chans=2), img_size=16)
    assert table.input_shape == (1, 2, 16, 16)
    assert table.levels[0].params == 2 * 4 * 9 + 4


def test_receptive_field_of_stacked_convolutions():
    table = level_table(TwoConvs(), img_size=16)
    assert [row.receptive_field for row in table.levels] == [(3, 3), (5, 5)]
    assert [row.receptive_field_clipped for row in table.levels] == [(False, False)] * 2


def test_receptive_field_is_theoretical_despite_dead_relus_and_max_pooling():
    table = level_table(DeadReLUAndMaxPool(), img_size=16)
    assert table.levels[0].receptive_field == (8, 8)


def test_receptive_field_is_measured_in_float64_where_float32_underflows():
    table = level_table(DeepChain(), img_size=256)
    assert table.levels[0].receptive_field == (201, 201)
    assert table.levels[0].receptive_field_clipped == (False, False)


def test_receptive_field_larger_than_the_image_is_reported_as_clipped():
    table = level_table(TwoConvs(), img_size=4)
    assert table.levels[1].receptive_field == (4, 4)
    assert table.levels[1].receptive_field_clipped == (True, True)
    assert "  >=4x>=4" in format_table(table)


def test_receptive_field_can_be_skipped():
    table = level_table(TwoConvs(), img_size=16, receptive_field=False)
    assert [row.receptive_field for row in table.levels] == [None, None]
    assert format_table(table).splitlines()[1].endswith(" -")


# -- resnet18 --------------------------------------------------------------------------------
def test_resnet18_receptive_fields_of_layer1_and_layer2(resnet18_table: LevelTable):
    # conv1 7x7/2: 7 (jump 2); maxpool 3x3/2: 7 + 2*2 = 11 (jump 4); layer1, four 3x3
    # convs at jump 4: 11 + 4*8 = 43. layer2: a 3x3/2 conv at jump 4 (+8, jump 8), then
    # three 3x3 convs at jump 8 (+16 each): 43 + 8 + 48 = 99.
    layer1, layer2, *_ = resnet18_table.levels
    assert layer1.receptive_field == (43, 43) and layer1.receptive_field_clipped == (False,) * 2
    assert layer2.receptive_field == (99, 99) and layer2.receptive_field_clipped == (False,) * 2
    assert resnet18_table.levels[-1].receptive_field_clipped == (True, True)


def test_resnet18_params_and_flops_up_to_layer1_are_its_stem_and_first_stage(
    resnet18_table: LevelTable,
):
    stem = 3 * 64 * 7 * 7 + 2 * 64  # conv1 and bn1
    stage = 2 * (2 * 64 * 64 * 3 * 3 + 2 * 2 * 64)  # two blocks of two convs and two BNs
    assert resnet18_table.levels[0].params == stem + stage
    conv1 = 2 * 3 * 64 * 7 * 7 * 64 * 64  # output 64x64 at 128 pixels
    layer1 = 4 * 2 * 64 * 64 * 3 * 3 * 32 * 32  # max-pool and BN count no FLOPs
    assert resnet18_table.levels[0].flops == conv1 + layer1


def test_resnet18_figures_grow_with_depth_and_end_at_the_totals(
    resnet18: nn.Module, resnet18_table: LevelTable
):
    rows = resnet18_table.levels
    for field in ("params", "flops", "activation_bytes"):
        values = [getattr(row, field) for row in rows]
        assert values == sorted(values) and len(set(values)) == len(values), field
        assert values[-1] == getattr(resnet18_table, field), field
    assert resnet18_table.params == sum(p.numel() for p in resnet18.parameters())


def test_resnet18_shapes_equal_a_real_forward(resnet18: nn.Module, resnet18_table: LevelTable):
    with torch.no_grad():
        maps = resnet18.eval()(torch.zeros(1, 3, 128, 128))
    assert [row.shape for row in resnet18_table.levels] == [tuple(m.shape) for m in maps]


def test_level_table_leaves_the_model_as_it_found_it():
    model = create_backbone("resnet18").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    level_table(model, img_size=32)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dict_outputs_are_read_in_feature_info_order():
    table = level_table(create_backbone("resnet18", return_dict=True), img_size=32)
    assert [row.shape[1] for row in table.levels] == [64, 128, 256, 512]


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -8, (16, 0)])
def test_a_size_that_is_not_positive_is_refused(size: object):
    with pytest.raises(ValueError, match=r"img_size must be a positive int, got (0|-8)"):
        level_table(TwoConvs(), img_size=size)  # type: ignore[arg-type]


def test_a_size_the_model_cannot_take_names_the_size_and_the_stride():
    with pytest.raises(ValueError, match=r"an input of 2x2 does not go through .*stride is 4"):
        level_table(Patchify(), img_size=2)


def test_a_module_without_feature_info_is_refused():
    with pytest.raises(TypeError, match="level_table needs a backbone"):
        level_table(nn.Conv2d(3, 3, 1), img_size=8)


# -- formatting and the command line --------------------------------------------------------
def test_format_table_aligns_columns_and_ends_with_the_total():
    lines = format_table(level_table(TwoConvs(), img_size=16)).splitlines()
    assert lines[0].split() == [
        "level", "module", "channels", "stride", "shape", "params", "GFLOPs", "act.", "MiB",
        "RF", "(HxW)",
    ]  # fmt: skip
    assert lines[1].split() == ["0", "conv1", "4", "1", "1x4x16x16", "112", "5.53e-05",
                                "0.00391", "3x3"]  # fmt: skip
    assert lines[3].split() == ["total", "340", "8.29e-05", "0.00537"]
    assert len({len(line) for line in lines[:3]}) == 1  # right-aligned to one width


def test_format_table_as_markdown():
    lines = format_table(level_table(TwoConvs(), img_size=16), markdown=True).splitlines()
    assert lines[0] == (
        "| level | module | channels | stride | shape | params | GFLOPs | act. MiB | RF (HxW) |"
    )
    assert lines[1].startswith("| :--- | :--- | ---: |")
    assert lines[3] == "| 1 | conv2 | 6 | 2 | 1x6x8x8 | 334 | 8.29e-05 | 0.00537 | 5x5 |"


def test_cli_info_prints_one_measured_row_per_level(capsys: pytest.CaptureFixture[str]):
    assert main(["info", "resnet18", "--img-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "resnet18: 11.18 M parameters, input 64x64"
    assert "2 per multiply-add" in "\n".join(lines[1:4])
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["level", "module"])
    rows = [line.split() for line in lines[header + 1 :]]
    assert [row[:5] for row in rows[:4]] == [
        ["1", "layer1", "64", "4", "1x64x16x16"],
        ["2", "layer2", "128", "8", "1x128x8x8"],
        ["3", "layer3", "256", "16", "1x256x4x4"],
        ["4", "layer4", "512", "32", "1x512x2x2"],
    ]
    assert rows[0][5:7] == ["157.50", "K"] and rows[0][-1] == "43x43"
    assert rows[3][-1] == ">=64x>=64"
    assert rows[4][0] == "total" and rows[4][1:3] == ["11.18", "M"]
    assert re.fullmatch(r"0\.0948", rows[0][7])  # (2*3*64*49*32*32 + 4*2*64*64*9*16*16) / 1e9


def test_cli_info_markdown(capsys: pytest.CaptureFixture[str]):
    assert main(["info", "resnet18", "--img-size", "32", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "\n| level | module | channels | stride | shape |" in out
    assert "\n| 1 | layer1 | 64 | 4 | 1x64x8x8 | 157.50 K |" in out


def test_cli_info_refuses_a_size_that_is_not_positive(capsys: pytest.CaptureFixture[str]):
    assert main(["info", "resnet18", "--img-size", "0"]) == 2
    assert capsys.readouterr().err == (
        "backbones: error: --img-size must be a positive int, got 0\n"
    )
