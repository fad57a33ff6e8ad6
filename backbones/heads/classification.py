"""The ``classification`` head: global pooling, dropout and a linear layer on the deepest map.

It is timm's ``ClassifierHead`` (pool types avg, max, avgmax, catavgmax) taking the
backbone's list of features. Its linear layer is called ``fc``, as in torchvision's
and timm's ResNets, so their classifier weights load into it.
"""

from torch import Tensor, nn

from backbones._checks import check_choice, check_int, check_probability
from backbones.features import FeatureInfo

__all__ = ["POOL_TYPES", "ClassificationHead", "classification_head"]

POOL_TYPES = ("avg", "max", "avgmax", "catavgmax")


class ClassificationHead(nn.Module):
    """Classifies from the last feature map a backbone returns.

    The modules are timm's ``ClassifierHead``'s own (``global_pool``, ``drop``, ``fc``,
    ``flatten``), made by it; timm is imported when a head is made, not when the
    library lists its heads.

    Args:
        in_features: channels of that map.
        num_classes: outputs; 0 returns the pooled features.
        pool_type: one of ``POOL_TYPES``.
        drop_rate: dropout before the linear layer.
    """

    def __init__(
        self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        from timm.layers import ClassifierHead

        timm_head = ClassifierHead(
            in_features, num_classes, pool_type=pool_type, drop_rate=drop_rate
        )
        self.in_features, self.num_classes = in_features, num_classes
        self.global_pool = timm_head.global_pool
        self.drop = timm_head.drop
        self.fc = timm_head.fc
        self.flatten = timm_head.flatten

    def forward(self, features: list[Tensor]) -> Tensor:  # type: ignore[override]
        # timm's forward, step by step: TorchScript cannot compile super().forward.
        x = self.global_pool(features[-1])
        x = self.drop(x)
        x = self.fc(x)
        return self.flatten(x)


def classification_head(
    *,
    feature_info: FeatureInfo,
    num_classes: int = 1000,
    pool_type: str = "avg",
    drop_rate: float = 0.0,
) -> ClassificationHead:
    """Build the ``classification`` head for a backbone.

    Args:
        feature_info: the backbone's feature description; the last map is classified.
        num_classes: number of classes; 0 gives the pooled features.
        pool_type: "avg", "max", "avgmax" or "catavgmax".
        drop_rate: dropout rate before the linear layer, in [0, 1).

    Returns:
        A :class:`ClassificationHead`.

    Raises:
        TypeError: an option has the wrong type; the message names it.
        ValueError: an option is out of range; the message names it.

    Example:
        >>> from backbones import create_backbone
        >>> bb = create_backbone("resnet18")
        >>> head = classification_head(feature_info=bb.feature_info, num_classes=10)
    """
    check_int("num_classes", num_classes, minimum=0)
    check_choice("pool_type", pool_type, POOL_TYPES)
    rate = check_probability("drop_rate", drop_rate)
    return ClassificationHead(
        feature_info.channels()[-1], num_classes, pool_type=pool_type, drop_rate=rate
    )
