"""A backbone and a head composed into one model."""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

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
        self._frozen_backbone: dict[str, bool] | None = None

    def freeze_backbone(self) -> "BackboneWithHead":
        """Train only the head: the backbone gets no gradients and stays in eval mode.

        Returns:
            ``self``; give ``model.head.parameters()`` to the optimizer.
        """
        if self._frozen_backbone is None:
            self._frozen_backbone = {
                n: p.requires_grad for n, p in self.backbone.named_parameters()
            }
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        return self

    def unfreeze_backbone(self) -> "BackboneWithHead":
        """Undo :meth:`freeze_backbone`; stages the backbone froze itself stay frozen."""
        if self._frozen_backbone is not None:
            for name, param in self.backbone.named_parameters():
                param.requires_grad_(self._frozen_backbone[name])
            self._frozen_backbone = None
            self.backbone.train(self.training)
        return self

    def train(self, mode: bool = True) -> "BackboneWithHead":
        """Set the mode; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self._frozen_backbone is not None:
            self.backbone.eval()
        return self

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
        out = self.head(features)
        if getattr(self.head, "resize_to_input", False):  # dense heads: logits at image size
            out = resize_logits(out, x.shape[-2:])
        return out


def resize_logits(logits: Any, size: Sequence[int]) -> Any:
    """Bilinearly resize logits, or each value of a dict of logits, to ``size``."""
    if isinstance(logits, dict):
        return OrderedDict((k, resize_logits(v, size)) for k, v in logits.items())
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


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
