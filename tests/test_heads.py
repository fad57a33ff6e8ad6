"""Heads, the head registry and create_model."""

import pytest
import torch
from timm.layers import ClassifierHead
from torch import nn

from backbones import (
    BackboneWithHead,
    UnknownNameError,
    create_backbone,
    create_head,
    create_model,
    list_heads,
)


def test_classification_is_a_registered_head():
    assert "classification" in list_heads()
    assert list_heads("class*") == ["classification"]


def test_classification_head_reads_channels_from_feature_info():
    bb = create_backbone("resnet18", out_indices=(2, 3))  # deepest returned map: 256 channels
    head = create_head("classification", feature_info=bb.feature_info, num_classes=7)
    assert head.fc.in_features == 256
    logits = head(bb(torch.randn(2, 3, 64, 64)))
    assert logits.shape == (2, 7)


def test_classification_head_is_timms_classifier_head_on_the_last_map():
    torch.manual_seed(0)
    bb = create_backbone("resnet18").eval()
    head = create_head("classification", feature_info=bb.feature_info, num_classes=5).eval()
    reference = ClassifierHead(512, 5, pool_type="avg").eval()
    reference.load_state_dict(head.state_dict())
    feats = bb(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(head(feats), reference(feats[-1]))


@pytest.mark.parametrize(("pool_type", "width"), [("avg", 512), ("max", 512), ("catavgmax", 1024)])
def test_num_classes_zero_gives_pooled_features(pool_type: str, width: int):
    bb = create_backbone("resnet18")
    head = create_head(
        "classification", feature_info=bb.feature_info, num_classes=0, pool_type=pool_type
    )
    assert head(bb(torch.randn(1, 3, 64, 64))).shape == (1, width)


def test_classification_head_matches_torchvision_fc_with_its_weights():
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    model = create_model("resnet18", "classification", num_classes=10).eval()
    state = tv.state_dict()
    model.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    model.head.load_state_dict({k: v for k, v in state.items() if k.startswith("fc.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": -1}, "num_classes must be an int >= 0, got -1"),
        ({"pool_type": "mean"}, "pool_type='mean' is not supported; accepted: 'avg', 'max'"),
        ({"drop_rate": 1.0}, "drop_rate must be a probability in [0, 1), got 1.0"),
    ],
)
def test_classification_head_rejects_bad_options(options: dict, message: str):
    bb = create_backbone("resnet18", out_indices=(1,))
    with pytest.raises(ValueError) as err:
        create_head("classification", feature_info=bb.feature_info, **options)
    assert message in str(err.value)


# Wrong type -> TypeError, right type out of range -> ValueError; the message names the
# option, the value and what is accepted.
@pytest.mark.parametrize(
    ("head", "options", "error", "message"),
    [
        ("classification", {"drop_rate": "0.1"}, TypeError, "drop_rate must be a probability"),
        ("classification", {"drop_rate": True}, TypeError, "drop_rate must be a probability"),
        ("classification", {"num_classes": "10"}, TypeError, "num_classes must be an int >= 0"),
        ("classification", {"num_classes": 2.0}, TypeError, "num_classes must be an int >= 0"),
        ("classification", {"pool_type": None}, TypeError, "pool_type must be one of 'avg'"),
        ("classification", {"pool_type": 1}, TypeError, "pool_type must be one of 'avg'"),
        ("fpn", {"out_channels": "256"}, TypeError, "out_channels must be a positive int"),
        ("fpn", {"out_channels": 0}, ValueError, "out_channels must be a positive int, got 0"),
        ("fpn", {"extra_blocks": True}, TypeError, "extra_blocks must be one of 'maxpool'"),
        ("fpn", {"extra_blocks": "p6"}, ValueError, "extra_blocks='p6' is not supported"),
    ],
)
def test_head_options_of_the_wrong_type_raise_type_errors(
    head: str, options: dict, error: type, message: str
):
    bb = create_backbone("resnet18", out_indices=(3, 4))
    with pytest.raises(error) as err:
        create_head(head, feature_info=bb.feature_info, **options)
    assert type(err.value) is error
    assert message in str(err.value)
    assert repr(next(iter(options.values()))) in str(err.value)


@pytest.mark.parametrize("value", ["x", ["in_chans", 1], 3])
def test_create_model_rejects_backbone_kwargs_that_are_not_a_dict(value):
    with pytest.raises(TypeError, match=r"backbone_kwargs must be a dict of create_backbone"):
        create_model("resnet18", "classification", backbone_kwargs=value)


def test_create_head_needs_a_feature_info():
    with pytest.raises(TypeError, match="feature_info must be a backbone's FeatureInfo"):
        create_head("classification", feature_info=[64, 128])


def test_unknown_head_suggests_close_names():
    bb = create_backbone("resnet18", out_indices=(1,))
    with pytest.raises(UnknownNameError, match="did you mean 'classification'"):
        create_head("clasification", feature_info=bb.feature_info)


def test_create_model_from_names_exposes_backbone_and_head():
    model = create_model(
        "resnet18", "classification", backbone_kwargs={"in_chans": 1}, num_classes=4
    )
    assert isinstance(model, BackboneWithHead)
    assert model.backbone.conv1.in_channels == 1
    assert model.feature_info is model.backbone.feature_info
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)


def test_create_model_accepts_a_built_backbone_with_dict_output():
    bb = create_backbone("resnet18", out_indices=(3, 4), return_dict=True)
    model = create_model(bb, "classification", num_classes=3)
    assert model.backbone is bb
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_swapping_the_head_keeps_the_backbone_weights():
    model = create_model("resnet18", "classification", num_classes=10).eval()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.head = create_head(
        "classification", feature_info=model.backbone.feature_info, num_classes=3
    )
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_create_model_rejects_options_for_parts_already_built():
    bb = create_backbone("resnet18", out_indices=(1,))
    with pytest.raises(TypeError, match="backbone_kwargs apply only when backbone is a name"):
        create_model(bb, "classification", backbone_kwargs={"in_chans": 1})
    with pytest.raises(TypeError, match=r"head options \['num_classes'\] apply only"):
        create_model(bb, nn.Identity(), num_classes=3)


def test_create_model_rejects_a_module_without_feature_info():
    with pytest.raises(TypeError, match=r"create_model.s backbone= needs a backbone: .*Conv2d"):
        create_model(nn.Conv2d(3, 3, 1), "classification")
