"""DCN backbones compile and optimize: torch.jit.script, torch.export, optimize_for_inference.

Both compilers handle torchvision's deformable conv (torchvision registers
``torchvision::deform_conv2d`` with a fake kernel for torch.export, and
``torchvision.ops.deform_conv2d`` is scriptable), so both are tested; neither is
skipped. ``optimize_for_inference`` traces with torch.fx, which cannot trace into
``deform_conv2d``; ``conv2`` calls it through an ``fx.wrap``-ed function, tested here.
"""

import pytest
import torch
from torch import Tensor, nn

from backbones import create_backbone, optimize_for_inference

TAPS = 9


def deforming_backbone(**options) -> nn.Module:
    """layer1..layer2 of resnet50, every block deformable, with non-zero offsets and masks.

    Zero offsets would make the deformable conv a plain one; random ones make
    the compiled graphs prove they run the deformation.
    """
    torch.manual_seed(0)
    model = create_backbone(
        "resnet50", out_indices=(1, 2), block="dcnv2_bottleneck", **options
    ).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".conv2.conv_offset." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def as_list(out: list[Tensor] | dict[str, Tensor]) -> list[Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(out)


def assert_close(got, ref, rtol: float = 1e-4) -> None:
    got, ref = as_list(got), as_list(ref)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        scale = max(1.0, float(r.abs().max()))
        assert float((g - r).abs().max()) <= rtol * scale


@pytest.fixture(scope="module")
def image() -> Tensor:
    return torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))


def test_offsets_are_really_non_zero(image):
    model = deforming_backbone()
    plain = create_backbone("resnet50", out_indices=(1, 2)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert float((model(image)[1] - plain(image)[1]).abs().max()) > 1e-2


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("return_dict", [False, True], ids=["list", "dict"])
def test_torchscript_matches_eager(return_dict, image):
    model = deforming_backbone(return_dict=return_dict)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert_close(scripted(image), model(image))
        other = torch.randn(1, 3, 33, 57)
        assert_close(scripted(other), model(other))


def test_torch_export_matches_eager(image):
    model = deforming_backbone()
    exported = torch.export.export(model, (image,))
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "torchvision.deform_conv2d.default" in ops
    with torch.no_grad():
        assert_close(exported.module()(image), model(image))


def test_optimize_for_inference_matches_eager(image):
    model = deforming_backbone()
    fast = optimize_for_inference(model)
    assert fast.feature_info.channels() == model.feature_info.channels()
    with torch.no_grad():
        assert_close(fast(image), model(image))
