"""Segmentation heads: torchvision parity, logits at input resolution, aux head, learning."""

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


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "semantic_fpn"])
@pytest.mark.parametrize("size", [(64, 64), (97, 65), (33, 130)])
def test_logits_come_back_at_the_input_resolution(head: str, size: tuple[int, int]):
    out_indices = (1, 2, 3, 4) if head == "semantic_fpn" else (4,)
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
        ("deeplabv3", {"atrous_rates": (6, -1)}, "atrous_rates must be positive ints"),
        ("semantic_fpn", {"channels": 100}, "channels must be a positive multiple of 32"),
        ("fcn", {"aux": True}, "aux=True classifies the second-deepest feature"),
    ],
)
def test_segmentation_heads_reject_bad_options(head: str, options: dict, message: str):
    bb = create_backbone("resnet18", out_indices=(4,))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        create_head(head, feature_info=bb.feature_info, **options)


def test_semantic_fpn_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = create_model("resnet18", "semantic_fpn", num_classes=2).train()
    images = torch.rand(4, 3, 64, 64)
    target = (images[:, 0] > 0.5).long()  # class = whether the red channel is bright
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
