"""Segmentation heads: ``fcn``, ``deeplabv3``, ``semantic_fpn`` and ``upernet``.

Each returns logits at its input feature's resolution and sets ``resize_to_input``;
the composed model (:class:`backbones.BackboneWithHead`) resizes them bilinearly to
the image size, as torchvision's segmentation models do, so a model gives
``(N, num_classes, H, W)`` for any ``H x W``. With ``aux=True`` (fcn, deeplabv3) the
head also classifies the second-deepest map, and returns ``{"out": ..., "aux": ...}``
like torchvision's models with ``aux_loss=True``.

The blocks are torchvision's (``FCNHead``, ``DeepLabHead`` with its ASPP,
``FeaturePyramidNetwork``, ``Conv2dNormActivation``); module names follow
torchvision's segmentation models (``classifier``, ``aux_classifier``).
"""

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones._checks import check_bool, check_int, check_int_sequence, check_probability
from backbones.features import FeatureInfo

__all__ = [
    "SegmentationHead",
    "SemanticFPNHead",
    "UperNetHead",
    "deeplabv3_head",
    "fcn_head",
    "semantic_fpn_head",
    "upernet_head",
]


def _numbered(features: list[Tensor]) -> dict[str, Tensor]:
    """``{"0": features[0], "1": ...}``, the input torchvision's FeaturePyramidNetwork takes."""
    named: dict[str, Tensor] = OrderedDict()
    for i, feature in enumerate(features):
        named[str(i)] = feature
    return named


def _with_aux(out: Tensor, aux: Tensor) -> dict[str, Tensor]:
    """``{"out": ..., "aux": ...}``, as torchvision's segmentation models with ``aux_loss``."""
    return OrderedDict([("out", out), ("aux", aux)])


class SegmentationHead(nn.Module):
    """A classifier on the deepest feature map, and optionally one on the second deepest.

    Args:
        classifier: maps the deepest feature to logits.
        aux_classifier: maps the second-deepest feature to logits, or ``None``.
    """

    resize_to_input = True

    def __init__(self, classifier: nn.Module, aux_classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, features: list[Tensor]):  # Tensor, or dict[str, Tensor] with aux
        # No return annotation: TorchScript resolves `is None` on a module attribute
        # when it compiles, and infers a tensor or a dict for this instance.
        out = self.classifier(features[-1])
        if self.aux_classifier is None:
            return out
        return _with_aux(out, self.aux_classifier(features[-2]))


class SemanticFPNHead(nn.Module):
    """The semantic branch of Panoptic FPN: an FPN, per-level upsampling, a sum, a classifier.

    Each pyramid level goes through 3x3 conv + GroupNorm + ReLU stages, with a 2x
    bilinear upsampling between stages, until it reaches the finest level's stride;
    the levels are summed and a 1x1 conv gives the logits (at the finest stride).

    Args:
        in_channels: channels of each backbone feature, shallow to deep.
        strides: stride of each backbone feature.
        num_classes: output classes.
        fpn_channels: channels of the FPN levels.
        channels: channels of the upsampling branches.
    """

    resize_to_input = True

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        fpn_channels: int = 256,
        channels: int = 128,
    ) -> None:
        super().__init__()
        # torchvision's ops are imported on first use: their import costs seconds
        from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork

        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels)
        norm = partial(nn.GroupNorm, 32)
        finest = min(strides)
        self.branches = nn.ModuleList()
        # Whether a branch's output still needs its last upsampling to the finest level:
        # decided here from the strides, so forward has no shape test, which torch.fx
        # cannot trace.
        self.upsample_last: list[bool] = []
        for stride in strides:
            steps = max(int(stride // finest).bit_length() - 1, 0)  # log2(stride / finest)
            self.upsample_last.append(steps > 0)
            layers: list[nn.Module] = []
            for i in range(max(steps, 1)):
                width = fpn_channels if i == 0 else channels
                layers.append(Conv2dNormActivation(width, channels, 3, norm_layer=norm))
                if i < steps - 1:  # the last upsampling goes to the exact finest size
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        pyramid = list(self.fpn(_numbered(features)).values())
        size = pyramid[0].shape[-2:]
        fused = pyramid[0].new_zeros(())
        # Indexing, not zip: TorchScript iterates a ModuleList only with enumerate.
        for i, branch in enumerate(self.branches):
            x = branch(pyramid[i])
            if self.upsample_last[i]:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused = fused + x
        return self.classifier(fused)


class UperNetHead(nn.Module):
    """UperNet's decoder: a pyramid pooling module on the deepest map, a top-down FPN, fusion.

    The deepest map goes through the pyramid pooling module (PPM: average pooling to each
    of ``pool_scales``, 1x1 conv, upsampling, concatenation, 3x3 conv). The other maps get
    1x1 lateral convs and are merged top-down, then 3x3 convs. All levels are upsampled to
    the finest one, concatenated, fused by a 3x3 conv and classified by a 1x1 conv. Every
    conv is conv + BatchNorm + ReLU, as in UperNet.

    Args:
        in_channels: channels of each backbone feature, shallow to deep.
        num_classes: output classes.
        channels: width of the decoder.
        pool_scales: output sizes of the PPM's pooling branches.
        dropout: dropout before the classifier.
        aux_classifier: a classifier of the second-deepest map, or ``None``; with one the
            head returns ``{"out": ..., "aux": ...}``.
    """

    resize_to_input = True

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        from torchvision.ops import Conv2dNormActivation  # on first use: a costly import

        *shallow, deepest = in_channels
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), Conv2dNormActivation(deepest, channels, 1))
            for scale in pool_scales
        )
        self.ppm_bottleneck = Conv2dNormActivation(
            deepest + len(pool_scales) * channels, channels, 3
        )
        self.lateral_convs = nn.ModuleList(Conv2dNormActivation(c, channels, 1) for c in shallow)
        self.fpn_convs = nn.ModuleList(Conv2dNormActivation(channels, channels, 3) for _ in shallow)
        self.fuse = Conv2dNormActivation(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.aux_classifier = aux_classifier

    # Loops over ModuleLists use enumerate and indexing, and lists are concatenated
    # with +, the forms TorchScript compiles.
    def _pyramid_pooling(self, x: Tensor) -> Tensor:
        pooled = [x]
        for branch in self.ppm:
            pooled.append(
                F.interpolate(branch(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
            )
        return self.ppm_bottleneck(torch.cat(pooled, dim=1))

    def forward(self, features: list[Tensor]):  # Tensor, or dict[str, Tensor] with aux
        # No return annotation, as in SegmentationHead.forward.
        levels: list[Tensor] = []
        for i, conv in enumerate(self.lateral_convs):
            levels.append(conv(features[i]))
        levels.append(self._pyramid_pooling(features[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: add each level into the finer one
            levels[i - 1] = levels[i - 1] + F.interpolate(
                levels[i], size=levels[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs: list[Tensor] = []
        for i, conv in enumerate(self.fpn_convs):
            outs.append(conv(levels[i]))
        outs.append(levels[-1])
        size = outs[0].shape[-2:]
        # Every level after the first is resized to it without a shape test, which
        # torch.fx cannot trace; one already at that size is copied unchanged.
        for i in range(1, len(outs)):
            outs[i] = F.interpolate(outs[i], size=size, mode="bilinear", align_corners=False)
        out = self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))
        if self.aux_classifier is None:
            return out
        return _with_aux(out, self.aux_classifier(features[-2]))


def _aux(feature_info: FeatureInfo, aux: bool, num_classes: int) -> nn.Module | None:
    from torchvision.models.segmentation.fcn import FCNHead

    if not check_bool("aux", aux):
        return None
    if len(feature_info) < 2:
        raise ValueError(
            f"aux=True classifies the second-deepest feature, but the backbone returns only "
            f"{feature_info.module_name()}; ask for two levels, e.g. out_indices=(3, 4)"
        )
    return FCNHead(feature_info.channels()[-2], num_classes)


def fcn_head(
    *, feature_info: FeatureInfo, num_classes: int = 21, aux: bool = False
) -> SegmentationHead:
    """Build the ``fcn`` head (torchvision's FCNHead on the deepest map).

    Args:
        feature_info: the backbone's feature description.
        num_classes: output classes.
        aux: add an auxiliary FCN head on the second-deepest map.

    Raises:
        TypeError: an option has the wrong type (``aux`` must be a bool).
        ValueError: ``num_classes`` is not positive, or ``aux`` without two maps.

    Example:
        >>> model = create_model(create_backbone("resnet50", output_stride=8), "fcn",
        ...                      num_classes=5)  # doctest: +SKIP
    """
    from torchvision.models.segmentation.fcn import FCNHead

    check_int("num_classes", num_classes)
    return SegmentationHead(
        FCNHead(feature_info.channels()[-1], num_classes), _aux(feature_info, aux, num_classes)
    )


def deeplabv3_head(
    *,
    feature_info: FeatureInfo,
    num_classes: int = 21,
    atrous_rates: Sequence[int] = (12, 24, 36),
    aux: bool = False,
) -> SegmentationHead:
    """Build the ``deeplabv3`` head (torchvision's DeepLabHead: ASPP, 3x3 conv, classifier).

    Args:
        feature_info: the backbone's feature description (use ``output_stride=8`` or 16).
        num_classes: output classes.
        atrous_rates: dilation rates of the ASPP branches.
        aux: add an auxiliary FCN head on the second-deepest map.

    Raises:
        TypeError: an option has the wrong type; the message names it.
        ValueError: an option is out of range; the message names it.

    Example:
        >>> seg = create_model(create_backbone("resnet50", output_stride=8), "deeplabv3",
        ...                    num_classes=21)  # doctest: +SKIP
    """
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    check_int("num_classes", num_classes)
    rates = check_int_sequence("atrous_rates", atrous_rates)
    return SegmentationHead(
        DeepLabHead(feature_info.channels()[-1], num_classes, rates),
        _aux(feature_info, aux, num_classes),
    )


def semantic_fpn_head(
    *,
    feature_info: FeatureInfo,
    num_classes: int = 21,
    fpn_channels: int = 256,
    channels: int = 128,
) -> SemanticFPNHead:
    """Build the ``semantic_fpn`` head (Panoptic FPN's semantic branch) over every returned map.

    Args:
        feature_info: the backbone's feature description (typically levels 1..4).
        num_classes: output classes.
        fpn_channels: FPN channels.
        channels: channels of the upsampling branches (a multiple of 32, for GroupNorm).

    Raises:
        TypeError: an option has the wrong type; the message names it.
        ValueError: an option is out of range; the message names it.
    """
    check_int("num_classes", num_classes)
    # GroupNorm's 32 groups need multiples of 32.
    check_int("fpn_channels", fpn_channels, minimum=32, multiple_of=32)
    check_int("channels", channels, minimum=32, multiple_of=32)
    return SemanticFPNHead(
        feature_info.channels(), feature_info.reduction(), num_classes, fpn_channels, channels
    )


def upernet_head(
    *,
    feature_info: FeatureInfo,
    num_classes: int = 21,
    channels: int = 512,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    aux: bool = False,
) -> UperNetHead:
    """Build the ``upernet`` head (pyramid pooling + FPN + fusion) over every returned map.

    Args:
        feature_info: the backbone's feature description (typically levels 1..4).
        num_classes: output classes.
        channels: width of the decoder (512 in UperNet).
        pool_scales: output sizes of the pyramid pooling branches.
        dropout: dropout probability before the classifier, in [0, 1).
        aux: add an auxiliary FCN head on the second-deepest map.

    Raises:
        TypeError: an option has the wrong type; the message names it.
        ValueError: an option is out of range; the message names it.

    Example:
        >>> seg = create_model("resnet50", "upernet", num_classes=150)  # doctest: +SKIP
    """
    check_int("num_classes", num_classes)
    check_int("channels", channels)
    scales = check_int_sequence("pool_scales", pool_scales)
    rate = check_probability("dropout", dropout)
    return UperNetHead(
        feature_info.channels(),
        num_classes,
        channels,
        scales,
        rate,
        _aux(feature_info, aux, num_classes),
    )
