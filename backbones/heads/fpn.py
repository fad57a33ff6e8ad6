"""The ``fpn`` head: torchvision's FeaturePyramidNetwork as a detection neck.

Composed with a backbone by :func:`backbones.create_model`, it gives exactly what
torchvision's detectors expect of a backbone: an ``OrderedDict`` of feature maps
keyed "0", "1", ... (plus "pool", or "p6" and "p7") and an ``out_channels``
attribute, with the same keys and shapes as torchvision's ``BackboneWithFPN``.
"""

from collections import OrderedDict
from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from backbones._checks import check_choice, check_int
from backbones.features import FeatureInfo

__all__ = ["EXTRA_BLOCKS", "FPNHead", "fpn_head"]

EXTRA_BLOCKS = ("maxpool", "p6p7", None)


class FPNHead(nn.Module):
    """A feature pyramid over a backbone's list of features.

    Args:
        in_channels: channels of each backbone feature, shallow to deep.
        out_channels: channels of every pyramid level.
        extra_blocks: torchvision's extra block (``LastLevelMaxPool``,
            ``LastLevelP6P7``) or ``None``.
    """

    def __init__(
        self, in_channels: list[int], out_channels: int, extra_blocks: "ExtraFPNBlock | None"
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        from torchvision.ops import FeaturePyramidNetwork  # on first use: a costly import

        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra_blocks)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        # torchvision's detectors look levels up by these names ("0", "1", ...). A loop
        # and a dict annotation, as TorchScript compiles them; the FPN returns an
        # OrderedDict in eager mode.
        named: dict[str, Tensor] = OrderedDict()
        for i, feature in enumerate(features):
            named[str(i)] = feature
        return self.fpn(named)


def fpn_head(
    *,
    feature_info: FeatureInfo,
    out_channels: int = 256,
    extra_blocks: str | None = "maxpool",
) -> FPNHead:
    """Build the ``fpn`` head for a backbone.

    Args:
        feature_info: the backbone's feature description; every returned map feeds the FPN.
        out_channels: channels of each pyramid level (256 in torchvision's detectors).
        extra_blocks: "maxpool" (torchvision's "pool" level, for Faster/Mask/Keypoint R-CNN),
            "p6p7" (levels "p6" and "p7" from P5, for RetinaNet and FCOS), or None.

    Returns:
        An :class:`FPNHead`; the composed model exposes its ``out_channels``.

    Raises:
        TypeError: an option has the wrong type; the message names it.
        ValueError: an option is out of range; the message names it.

    Example:
        >>> from backbones import create_model
        >>> model = create_model("resnet18", "fpn", backbone_kwargs={"out_indices": (2, 3, 4)},
        ...                      extra_blocks="p6p7")
        >>> model.out_channels
        256
    """
    check_int("out_channels", out_channels)
    check_choice("extra_blocks", extra_blocks, EXTRA_BLOCKS)
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    extra: ExtraFPNBlock | None = None
    if extra_blocks == "maxpool":
        extra = LastLevelMaxPool()
    elif extra_blocks == "p6p7":
        extra = LastLevelP6P7(out_channels, out_channels)
    return FPNHead(feature_info.channels(), out_channels, extra)
