"""Segmentation heads: torchvision parity, logits at input resolution, aux head, learning."""

import re

import pytest
import torch
import torchvision
from helpers import randomize_norm_stats
from torch import nn

from backbones import create_backbone, create_head, create_model


@pytest.mark.parametrize(
    ("head", "builder"),
    [
        ("deeplabv3", torchvision.models.segmentation.deeplabv3_resnet50),
        ("fcn", torchvision.models.segmentation.fcn_resnet50),
    ],
)
def test_segmentation_model_equals_torchvision_with_its_weights(head: str, builder):
    torch.manual_seed(0)
    reference = builder(weights=None, weights_backbone=None, num_classes=5, aux_loss=True)
    randomize_norm_stats(reference).eval()
    backbone = create_backbone("resnet50", output_stride=8, out_indices=(3, 4))
    model = create_model(backbone, head, num_classes=5, aux=True).eval()
    state = reference.state_dict()
    model.backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    )
    model.head.load_state_dict({k: v for k, v in state.items() if "classifier" in k})
    x = torch.randn(2, 3, 72, 56)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert list(ours) == ["out", "aux"]
    for key in ("out", "aux"):
        assert ours[key].shape == (2, 5, 72, 56)
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "semantic_fpn", "upernet"])
@pytest.mark.parametrize("size", [(64, 64), (97, 65), (33, 130)])
def test_logits_come_back_at_the_input_resolution(head: str, size: tuple[int, int]):
    out_indices = (1, 2, 3, 4) if head in ("semantic_fpn", "upernet") else (4,)
    backbone = create_backbone("resnet18", out_indices=out_indices, output_stride=16)
    model = create_model(backbone, head, num_classes=3).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 3, *size)


def test_deeplabv3_atrous_rates_reach_the_aspp():
    bb = create_backbone("resnet18", output_stride=8, out_indices=(4,))
    head = create_head(
        "deeplabv3", feature_info=bb.feature_info, num_classes=2, atrous_rates=(6, 12)
    )
    aspp = head.classifier[0]
    dilations = [branch[0].dilation for branch in aspp.convs[1:-1]]
    assert dilations == [(6, 6), (12, 12)]


def test_semantic_fpn_has_one_branch_per_level_upsampling_to_the_finest_stride():
    bb = create_backbone("resnet18")
    head = create_head("semantic_fpn", feature_info=bb.feature_info, num_classes=2)
    upsamples = [sum(isinstance(m, nn.Upsample) for m in b) for b in head.branches]
    assert upsamples == [0, 0, 1, 2]  # strides 4, 8, 16, 32: 0, 1, 2, 3 doublings, last exact
    features = bb(torch.randn(1, 3, 64, 64))
    assert head(features).shape == (1, 2, 16, 16)  # stride 4, before the model resizes


@pytest.mark.parametrize(
    ("head", "options", "message"),
    [
        ("fcn", {"num_classes": 0}, "num_classes must be a positive int, got 0"),
        ("deeplabv3", {"atrous_rates": (6, -1)}, "atrous_rates must be a non-empty list or"),
        ("deeplabv3", {"atrous_rates": ()}, "atrous_rates must be a non-empty list or tuple"),
        ("semantic_fpn", {"channels": 100}, "channels must be a positive multiple of 32"),
        ("fcn", {"aux": True}, "aux=True classifies the second-deepest feature"),
        ("upernet", {"pool_scales": (1, 0)}, "tuple of positive ints, got (1, 0)"),
        ("upernet", {"channels": -8}, "channels must be a positive int, got -8"),
        ("upernet", {"dropout": 1.5}, "dropout must be a probability in [0, 1), got 1.5"),
    ],
)
def test_segmentation_heads_reject_bad_options(head: str, options: dict, message: str):
    bb = create_backbone("resnet18", out_indices=(4,))
    with pytest.raises(ValueError, match=re.escape(message)):
        create_head(head, feature_info=bb.feature_info, **options)


# Wrong type -> TypeError naming the option, the value and what is accepted (these were
# raw Python errors, or, for aux="no", silently an aux head).
@pytest.mark.parametrize(
    ("head", "options", "message"),
    [
        ("deeplabv3", {"atrous_rates": 12}, "atrous_rates must be a non-empty list or tuple"),
        ("deeplabv3", {"atrous_rates": "12"}, "atrous_rates must be a non-empty list or tuple"),
        ("deeplabv3", {"atrous_rates": (6.0, 12)}, "tuple of positive ints, got (6.0, 12)"),
        ("upernet", {"pool_scales": 6}, "pool_scales must be a non-empty list or tuple"),
        ("upernet", {"dropout": "0.1"}, "dropout must be a probability in [0, 1), got '0.1'"),
        ("upernet", {"channels": 64.0}, "channels must be a positive int, got 64.0"),
        ("semantic_fpn", {"channels": "128"}, "channels must be a positive multiple of 32"),
        ("semantic_fpn", {"fpn_channels": None}, "fpn_channels must be a positive multiple"),
        ("fcn", {"num_classes": "5"}, "num_classes must be a positive int, got '5'"),
        ("fcn", {"aux": "no"}, "aux must be True or False, got 'no'"),
        ("deeplabv3", {"aux": 0}, "aux must be True or False, got 0"),
        ("upernet", {"aux": "no"}, "aux must be True or False, got 'no'"),
    ],
)
def test_segmentation_heads_reject_options_of_the_wrong_type(
    head: str, options: dict, message: str
):
    bb = create_backbone("resnet18", out_indices=(3, 4))
    with pytest.raises(TypeError) as err:
        create_head(head, feature_info=bb.feature_info, **options)
    assert type(err.value) is TypeError
    assert message in str(err.value)


def test_upernet_fuses_every_level_at_the_finest_stride_and_has_an_aux_head():
    bb = create_backbone("resnet18")
    head = create_head(
        "upernet", feature_info=bb.feature_info, num_classes=3, channels=64, aux=True
    )
    assert [b[0].output_size for b in head.ppm] == [1, 2, 3, 6]
    assert [c[0].in_channels for c in head.lateral_convs] == [64, 128, 256]  # levels 1..3
    assert head.ppm_bottleneck[0].in_channels == 512 + 4 * 64
    assert head.fuse[0].in_channels == 4 * 64
    out = head.eval()(bb(torch.randn(2, 3, 64, 64)))
    assert out["out"].shape == (2, 3, 16, 16)  # stride 4, before the model resizes
    assert out["aux"].shape == (2, 3, 4, 4)  # the second-deepest map, stride 16


def _boxes_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four dim noise images, each with one bright red box; the target is the box's mask."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g) * 0.3
    target = torch.zeros(4, 64, 64, dtype=torch.long)
    for i in range(4):
        y, x = torch.randint(0, 32, (2,), generator=g).tolist()
        h, w = torch.randint(16, 32, (2,), generator=g).tolist()
        images[i, 0, y : y + h, x : x + w] += 0.7
        target[i, y : y + h, x : x + w] = 1
    return images, target


@pytest.mark.parametrize("head", ["semantic_fpn", "upernet"])
def test_fpn_style_heads_learn_a_fixed_batch(head: str):
    torch.manual_seed(0)
    model = create_model("resnet18", head, num_classes=2).train()
    images, target = _boxes_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
