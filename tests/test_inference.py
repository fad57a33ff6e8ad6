"""optimize_for_inference: the same function, BatchNorms folded, channels_last weights."""

import pytest
import torch
from helpers import randomize_norm_stats
from torch import nn

from backbones import create_backbone
from backbones.inference import optimize_for_inference


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", ["resnet18", "resnet50d", "resnext50_32x4d"])
def test_optimized_backbone_computes_the_same_features(name: str):
    torch.manual_seed(0)
    model = randomize_norm_stats(create_backbone(name, out_indices=(0, 1, 2, 3, 4))).eval()
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert len(got) == 5
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        assert _relative_error(a, b) < 1e-4


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_avg_down_variants_trace_and_optimize(output_stride: int):
    # the "d" variants pool with "same" padding in dilated stages; that pool must trace
    torch.manual_seed(0)
    model = randomize_norm_stats(create_backbone("resnet50d", output_stride=output_stride))
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    fast = optimize_for_inference(model)
    x = torch.randn(1, 3, 61, 75)  # odd sizes: the padding is one-sided
    with torch.no_grad():
        expected = model(x)
        for got in (traced(x), fast(x)):
            for a, b in zip(got, expected, strict=True):
                assert a.shape == b.shape
                assert _relative_error(a, b) < 1e-4


def test_optimized_backbone_has_no_batchnorm_left_and_keeps_feature_info():
    model = create_backbone("resnet50", out_indices=(2, 4))
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert fast.feature_info == model.feature_info
    assert fast.training is False


def test_optimizing_leaves_the_original_untouched():
    model = create_backbone("resnet18").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimize_for_inference(model)
    assert model.training is True
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 4 * 2 * 2 + 3
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_channels_last_is_the_output_layout_unless_turned_off():
    model = create_backbone("resnet18", out_indices=(1,)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        nhwc = optimize_for_inference(model)(x)[0]
        nchw = optimize_for_inference(model, channels_last=False)(x)[0]
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    assert nchw.is_contiguous()


def test_dict_output_survives_optimization():
    model = create_backbone("resnet18", out_indices=(2, 3), return_dict=True).eval()
    with torch.no_grad():
        out = optimize_for_inference(model)(torch.randn(1, 3, 64, 64))
    assert list(out) == ["layer2", "layer3"]


def test_a_module_without_feature_info_is_refused():
    with pytest.raises(TypeError, match=r"optimize_for_inference needs a backbone: .*, got Conv2d"):
        optimize_for_inference(nn.Conv2d(3, 3, 1))
