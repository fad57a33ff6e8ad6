"""Adapters to other libraries' backbone contracts, so users write no glue code.

- :func:`as_detectron2`: forward returns ``{name: tensor}``, ``output_shape()`` returns
  ``{name: ShapeSpec(channels, stride)}``; layer k is named ``res{k+1}`` as in detectron2.
- :func:`as_transformers`: a ``channels`` list and ``out_features`` names, forward returns
  an object with ``feature_maps`` (a tuple), like transformers' ``BackboneOutput``.
- :func:`as_mmdet`: forward returns a tuple of maps, as mmdet's necks expect.

Each wraps the backbone under ``.backbone`` and computes nothing extra; none of those
libraries is needed to use them.
"""

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from backbones.features import FeatureInfo

__all__ = [
    "BackboneOutput",
    "Detectron2Backbone",
    "MMDetBackbone",
    "ShapeSpec",
    "TransformersBackbone",
    "as_detectron2",
    "as_mmdet",
    "as_transformers",
]


class ShapeSpec(NamedTuple):
    """detectron2's ShapeSpec fields, in its order."""

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None


@dataclass
class BackboneOutput:
    """transformers' BackboneOutput fields that detection and segmentation models read."""

    feature_maps: tuple[Tensor, ...]


def _feature_info(backbone: nn.Module) -> FeatureInfo:
    info = getattr(backbone, "feature_info", None)
    if not isinstance(info, FeatureInfo):
        raise TypeError(
            f"expected a backbone with feature_info (from create_backbone), "
            f"got {type(backbone).__name__}"
        )
    return info


def _as_list(features: list[Tensor] | dict[str, Tensor]) -> list[Tensor]:
    return list(features.values()) if isinstance(features, dict) else list(features)


def detectron2_name(module: str) -> str:
    """detectron2's name for one of our feature modules: layer1..layer4 -> res2..res5."""
    if module.startswith("layer") and module[5:].isdigit():
        return f"res{int(module[5:]) + 1}"
    return module


class Detectron2Backbone(nn.Module):
    """A backbone with detectron2's ``Backbone`` contract. Build with :func:`as_detectron2`."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        info = _feature_info(backbone)
        self._out_features = [detectron2_name(m) for m in info.module_name()]
        self._shapes = {
            name: ShapeSpec(channels=c, stride=s)
            for name, c, s in zip(
                self._out_features, info.channels(), info.reduction(), strict=True
            )
        }

    @property
    def size_divisibility(self) -> int:
        """detectron2 pads inputs to a multiple of this; 0 means no constraint."""
        return 0

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``{name: ShapeSpec(channels, stride)}`` for each returned feature."""
        return dict(self._shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = _as_list(self.backbone(x))
        return dict(zip(self._out_features, features, strict=True))


class TransformersBackbone(nn.Module):
    """A backbone with transformers' backbone attributes. Build with :func:`as_transformers`."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        info = _feature_info(backbone)
        self.out_features: list[str] = info.module_name()
        self.channels: list[int] = info.channels()

    def forward(self, pixel_values: Tensor) -> BackboneOutput:
        return BackboneOutput(feature_maps=tuple(_as_list(self.backbone(pixel_values))))


class MMDetBackbone(nn.Module):
    """A backbone whose forward returns a tuple, as mmdet's. Build with :func:`as_mmdet`."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        _feature_info(backbone)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(_as_list(self.backbone(x)))


def as_detectron2(backbone: nn.Module) -> Detectron2Backbone:
    """Wrap a backbone in detectron2's contract.

    Raises:
        TypeError: ``backbone`` has no ``feature_info``.

    Example:
        >>> d2 = as_detectron2(create_backbone("resnet50"))  # doctest: +SKIP
        >>> d2.output_shape()["res5"]  # doctest: +SKIP
        ShapeSpec(channels=2048, height=None, width=None, stride=32)
    """
    return Detectron2Backbone(backbone)


def as_transformers(backbone: nn.Module) -> TransformersBackbone:
    """Wrap a backbone with transformers' ``channels`` / ``feature_maps`` contract.

    Raises:
        TypeError: ``backbone`` has no ``feature_info``.
    """
    return TransformersBackbone(backbone)


def as_mmdet(backbone: nn.Module) -> MMDetBackbone:
    """Wrap a backbone so its forward returns a tuple, as mmdet's backbones do.

    Raises:
        TypeError: ``backbone`` has no ``feature_info``.
    """
    return MMDetBackbone(backbone)
