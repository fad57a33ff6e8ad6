"""A backbone and a head composed into one model."""

from typing import Any

from torch import Tensor, nn

from backbones.registry import create_backbone, create_head

__all__ = ["BackboneWithHead", "create_model"]


class BackboneWithHead(nn.Module):
    """``head(backbone(x))``, with both parts reachable as attributes.

    Assigning ``model.head = create_head(...)`` swaps the head; the backbone's
    weights are untouched.

    Args:
        backbone: a backbone with ``feature_info``.
        head: a module whose forward takes the backbone's list of features.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def feature_info(self) -> Any:
        """The backbone's feature description."""
        return self.backbone.feature_info

    @property
    def out_channels(self) -> int:
        """The head's ``out_channels`` (the FPN's), which torchvision's detectors read."""
        channels = getattr(self.head, "out_channels", None)
        if not isinstance(channels, int):
            raise AttributeError(f"head {type(self.head).__name__} has no int out_channels")
        return channels

    def forward(self, x: Tensor) -> Any:
        features = self.backbone(x)
        if isinstance(features, dict):  # a backbone built with return_dict=True
            features = list(features.values())
        return self.head(features)


def create_model(
    backbone: str | nn.Module,
    head: str | nn.Module,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    **head_kwargs: Any,
) -> BackboneWithHead:
    """Compose a backbone and a head.

    Args:
        backbone: a registered backbone name, or a backbone already built.
        head: a registered head name, or a head module already built.
        backbone_kwargs: options for :func:`~backbones.create_backbone` when
            ``backbone`` is a name.
        **head_kwargs: options for the head's factory when ``head`` is a name.

    Returns:
        A :class:`BackboneWithHead` with attributes ``.backbone`` and ``.head``.

    Raises:
        TypeError: ``backbone`` is neither a name nor a module with ``feature_info``,
            or options are given for a part that is already built.
        UnknownNameError: a name is not registered.

    Example:
        >>> model = create_model("resnet18", "classification", num_classes=10)
        >>> model.head.fc.out_features
        10
    """
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, **(backbone_kwargs or {}))
    elif not isinstance(backbone, nn.Module) or not hasattr(backbone, "feature_info"):
        raise TypeError(
            f"backbone must be a registered name or a module with feature_info, "
            f"got {type(backbone).__name__}"
        )
    elif backbone_kwargs:
        raise TypeError(
            "backbone_kwargs apply only when backbone is a name; this backbone is already built"
        )
    if isinstance(head, str):
        feature_info = getattr(backbone, "feature_info")  # noqa: B009  # checked above
        head = create_head(head, feature_info=feature_info, **head_kwargs)
    elif not isinstance(head, nn.Module):
        raise TypeError(f"head must be a registered name or a module, got {type(head).__name__}")
    elif head_kwargs:
        raise TypeError(
            f"head options {sorted(head_kwargs)} apply only when head is a name; "
            f"this head is already built"
        )
    return BackboneWithHead(backbone, head)
