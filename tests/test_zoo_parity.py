"""Parity of ``timm/`` backbones with timm's own ``features_only`` models, family by family.

For one small model of each timm family, the backbone made by
``create_backbone("timm/<name>")`` and timm's ``create_model(name, features_only=True)``
(built as the namespace builds it: with ``dynamic_img_size=True`` where the model takes
it) hold the same weights: the reference's BatchNorm statistics are randomized, then its
state dict is loaded strictly into the backbone's body. In eval mode both must give the
same maps (timm's NHWC maps permuted to NCHW), and the backbone's ``feature_info`` must
be timm's for the returned levels and describe the maps it really returns.

Inputs are 64 px (56 for the patch-14 EVA, 32 for VGG), or the model's own size where it
takes only one.
"""

import math

import pytest
import timm
import torch
from torch import Tensor, nn

from backbones import create_backbone
from backbones.testing import randomize_batchnorm_stats

# family (timm's module, or the architecture within it), one of its smallest released
# models (timm's test_* models aside), input size
FAMILIES = [
    ("convnext", "convnext_atto", 64),
    ("efficientnet", "efficientnet_b0", 64),
    ("regnet", "regnetx_002", 64),
    ("mobilenetv3", "mobilenetv3_small_050", 64),
    ("swin_transformer", "swin_tiny_patch4_window7_224", 64),
    ("maxvit", "maxvit_pico_rw_256", 256),
    ("coatnet", "coatnet_pico_rw_224", 224),
    ("vision_transformer", "vit_tiny_patch16_224", 64),
    ("deit", "deit_tiny_patch16_224", 64),
    ("eva", "eva02_tiny_patch14_224", 56),
    ("dla", "dla46x_c", 64),
    ("hrnet", "hrnet_w18_small", 64),
    ("densenet", "densenet121", 64),
    ("resnest", "resnest14d", 64),
    ("res2net", "res2net50_14w_8s", 64),
    ("cspnet", "cs3darknet_s", 64),
    ("ghostnet", "ghostnet_050", 64),
    ("rexnet", "rexnet_100", 64),
    ("edgenext", "edgenext_xx_small", 64),
    ("fastvit", "fastvit_t8", 64),
    ("efficientvit_mit", "efficientvit_b0", 64),
    ("efficientvit_msra", "efficientvit_m0", 224),
    ("metaformer", "poolformerv2_s12", 64),
    ("hgnet", "hgnetv2_b0", 64),
    ("repvit", "repvit_m0_9", 64),
    ("mobilevit", "mobilevit_xxs", 64),
    ("nfnet", "nf_regnet_b0", 64),
    ("tresnet", "tresnet_m", 64),
    ("vgg", "vgg11", 32),
    ("resnet", "resnet18", 64),
    ("vovnet", "ese_vovnet19b_slim_dw", 64),
    ("pvt_v2", "pvt_v2_b0", 64),
    ("mambaout", "mambaout_femto", 64),
    ("inception_next", "inception_next_atto", 64),
    ("starnet", "starnet_s050", 64),
    ("repghost", "repghostnet_050", 64),
    ("efficientformer_v2", "efficientformerv2_s0", 224),
]
NHWC_FAMILIES = {"swin_transformer", "mambaout"}
"""timm returns these families' maps channels-last (B, H, W, C); ours are NCHW."""


def _timm_reference(name: str) -> nn.Module:
    """timm's own extractor, with the arguments the ``timm/`` namespace gives it."""
    try:
        return timm.create_model(name, features_only=True, dynamic_img_size=True)
    except TypeError:  # the model has no dynamic_img_size: the namespace drops it too
        return timm.create_model(name, features_only=True)


def _layout(reference: nn.Module) -> str:
    """timm's layout of an extractor's maps; extractors written per family have none: NCHW."""
    fmt = getattr(reference, "output_fmt", None)
    return "NCHW" if fmt is None else str(fmt.value)


def _inputs(size: int) -> Tensor:
    batch = 1 if size >= 224 else 2
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _levels(info: object) -> list[tuple[int, int, str]]:
    """(channels, stride, module) of each returned level, from ours or timm's FeatureInfo."""
    return list(zip(info.channels(), info.reduction(), info.module_name(), strict=True))


@pytest.mark.parametrize(("family", "name", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_features_and_feature_info_equal_timms_own_extractor(family, name, size):
    torch.manual_seed(0)
    backbone = create_backbone(f"timm/{name}").eval()
    reference = randomize_batchnorm_stats(_timm_reference(name)).eval()
    backbone.body.load_state_dict(reference.state_dict(), strict=True)
    info = backbone.feature_info

    # Levels numbered and described as timm does; out_indices default to timm's default.
    assert info.out_indices == tuple(reference.feature_info.out_indices)
    assert _levels(info) == _levels(reference.feature_info)
    assert backbone.metadata_fixes == []

    x = _inputs(size)
    with torch.no_grad():
        ours = backbone(x)
        theirs = reference(x)
    # feature_info describes the maps as they come out: NCHW, ceil(size / stride) a side.
    assert [tuple(m.shape) for m in ours] == [
        (x.shape[0], c, math.ceil(size / r), math.ceil(size / r))
        for c, r in zip(info.channels(), info.reduction(), strict=True)
    ]
    nhwc = _layout(reference) == "NHWC"
    assert nhwc == (family in NHWC_FAMILIES)
    for level, (mine, timms) in enumerate(zip(ours, theirs, strict=True)):
        expected = timms.permute(0, 3, 1, 2) if nhwc else timms
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5, msg=f"level {level}")
