"""Adapters to other libraries' backbone contracts, so users write no glue code.

- :func:`as_detectron2`: forward returns ``{name: tensor}``, ``output_shape()`` returns
  ``{name: ShapeSpec(channels, stride)}``; layer k is named ``res{k+1}`` as in detectron2.
- :func:`as_transformers`: a ``channels`` list and ``out_features`` names, forward returns
  an object with ``feature_maps`` (a tuple), like transformers' ``BackboneOutput``.
- :func:`as_mmdet`: forward returns a tuple of maps, as mmdet's necks expect.

Each wraps the backbone under ``.backbone`` and computes nothing extra; none of those
libraries is needed to use them. Each compiles with ``torch.jit.script``, traces with
``torch.fx.symbolic_trace`` and exports with ``torch.export``. TorchScript has no tuple
of a length known only at run time, so scripted, ``as_mmdet`` returns a list and
``as_transformers`` a :class:`ScriptedBackboneOutput` whose ``feature_maps`` is a list.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn

from backbones.contract import feature_info_of
from backbones.features import FeatureInfo

__all__ = [
    "BackboneOutput",
    "Detectron2Backbone",
    "MMDetBackbone",
    "ScriptedBackboneOutput",
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


class BackboneOutput(NamedTuple):
    """transformers' BackboneOutput field that detection and segmentation models read.

    A NamedTuple, which torch.fx and torch.export carry through as they do tuples.
    """

    feature_maps: tuple[Tensor, ...]


class ScriptedBackboneOutput(NamedTuple):
    """:class:`BackboneOutput` under TorchScript, which has no variable-length tuples."""

    feature_maps: list[Tensor]


def _feature_info(backbone: nn.Module) -> FeatureInfo:
    return feature_info_of(backbone, "the adapter")


def _as_list(features: list[Tensor] | dict[str, Tensor]) -> list[Tensor]:
    # isinstance(x, list), not dict: TorchScript resolves only the former.
    if isinstance(features, list):
        return features
    return list(features.values())


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
        out: dict[str, Tensor] = {}  # a loop: TorchScript has no dict(zip(...))
        for i, name in enumerate(self._out_features):
            out[name] = features[i]
        return out


class TransformersBackbone(nn.Module):
    """A backbone with transformers' backbone attributes. Build with :func:`as_transformers`."""

    # Annotated here, not in __init__, where TorchScript does not read them.
    out_features: list[str]
    channels: list[int]

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        info = _feature_info(backbone)
        self.out_features = info.module_name()
        self.channels = info.channels()

    # No return annotation: the type differs under TorchScript (see the module docstring).
    def forward(self, pixel_values: Tensor):  # BackboneOutput
        features = _as_list(self.backbone(pixel_values))
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            return ScriptedBackboneOutput(features)
        return BackboneOutput(feature_maps=tuple(features))


class MMDetBackbone(nn.Module):
    """A backbone whose forward returns a tuple, as mmdet's. Build with :func:`as_mmdet`."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        _feature_info(backbone)

    # No return annotation: the type differs under TorchScript (see the module docstring).
    def forward(self, x: Tensor):  # tuple[Tensor, ...]
        features = _as_list(self.backbone(x))
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            return features
        return tuple(features)


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
