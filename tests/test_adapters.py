"""Adapters to detectron2's, transformers' and mmdet's backbone contracts; head-only training."""

import pytest
import torch
from torch import nn

from backbones import create_backbone, create_model
from backbones.adapters import ShapeSpec, as_detectron2, as_mmdet, as_transformers


def test_detectron2_adapter_names_shapes_and_outputs():
    bb = create_backbone("resnet50", out_indices=(0, 2, 3, 4)).eval()
    d2 = as_detectron2(bb)
    assert d2.output_shape() == {
        "act1": ShapeSpec(channels=64, stride=2),
        "res3": ShapeSpec(channels=512, stride=8),
        "res4": ShapeSpec(channels=1024, stride=16),
        "res5": ShapeSpec(channels=2048, stride=32),
    }
    assert d2.size_divisibility == 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, plain = d2(x), bb(x)
    assert list(out) == ["act1", "res3", "res4", "res5"]
    for a, b in zip(out.values(), plain, strict=True):
        assert torch.equal(a, b)
    for name, spec in d2.output_shape().items():
        assert out[name].shape[1] == spec.channels
        assert out[name].shape[-1] == 64 // spec.stride


def test_transformers_adapter_channels_and_feature_maps():
    bb = create_backbone("resnet18", out_indices=(2, 4), return_dict=True)
    hf = as_transformers(bb)
    assert hf.channels == [128, 512]
    assert hf.out_features == ["layer2", "layer4"]
    out = hf(torch.randn(1, 3, 64, 64))
    assert isinstance(out.feature_maps, tuple)
    assert [f.shape[1] for f in out.feature_maps] == hf.channels


def test_mmdet_adapter_returns_a_tuple_in_network_order():
    bb = create_backbone("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = as_mmdet(bb)(x)
        plain = bb(x)
    assert isinstance(out, tuple) and len(out) == 4
    assert all(torch.equal(a, b) for a, b in zip(out, plain, strict=True))


@pytest.mark.parametrize("adapter", [as_detectron2, as_transformers, as_mmdet])
def test_adapters_refuse_a_module_without_feature_info(adapter):
    with pytest.raises(
        TypeError,
        match=r"the adapter needs a backbone: an nn.Module whose feature_info is a FeatureInfo",
    ):
        adapter(nn.Conv2d(3, 8, 1))


def test_freeze_backbone_trains_only_the_head():
    torch.manual_seed(0)
    model = create_model("resnet18", "classification", num_classes=3).freeze_backbone().train()
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training and model.head.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics too
    assert not torch.equal(head_before, model.head.fc.weight)


def test_unfreeze_backbone_restores_the_backbones_own_freezing():
    bb = create_backbone("resnet18", frozen_stages=1)
    model = create_model(bb, "classification", num_classes=2).freeze_backbone()
    model.unfreeze_backbone().train()
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert bb.layer2.training and not bb.layer1.training
