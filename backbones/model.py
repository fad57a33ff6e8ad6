"""A backbone and a head composed into one model."""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones.contract import feature_info_of
from backbones.factory import create_backbone, create_head

__all__ = ["BackboneWithHead", "create_model"]


class BackboneWithHead(nn.Module):
    """``head(backbone(x))``, with both parts reachable as attributes.

    Assigning ``model.head = create_head(...)`` swaps the head; the backbone's
    weights are untouched.

    Its state_dict keys are ``backbone.*`` and ``head.*``. ``load_state_dict`` also
    accepts torchvision's names for the same modules, so torchvision's checkpoints
    load with ``strict=True``: ``body.*`` (``BackboneWithFPN``'s trunk, inside every
    torchvision detector) goes to ``backbone.*``, and a name that is a child of the
    backbone or of the head (``conv1``, ``layer1``; ``fpn``, ``fc``, ``classifier``,
    ``aux_classifier``) goes under it.

    Args:
        backbone: a backbone with ``feature_info``.
        head: a module whose forward takes the backbone's list of features.
    """

    # TorchScript compiles properties; these are read in Python only (torchvision
    # reads out_channels once, when it builds a detector).
    __jit_unused_properties__ = ["feature_info", "out_channels"]  # noqa: RUF012  # torch reads a list
    _resize_output: bool

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self._frozen_backbone: dict[str, bool] | None = None
        self.register_load_state_dict_pre_hook(_accept_torchvision_names)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "head":
            # Read once per head, not per forward: TorchScript, FX and torch.export
            # then see a plain bool, whatever way the head declares it.
            resize = bool(getattr(value, "resize_to_input", False))
            object.__setattr__(self, "_resize_output", resize)

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

    # No return annotation: TorchScript infers the head's own output type (a dict for
    # fpn, a tensor for classification), which torchvision's scripted detectors need.
    def forward(self, x: Tensor):
        features = self.backbone(x)
        # Both branches call the head; TorchScript compiles only the one matching the
        # backbone's output type (a backbone built with return_dict=True gives a dict).
        if isinstance(features, list):
            out = self.head(features)
        else:
            out = self.head(list(features.values()))
        if self._resize_output:  # dense heads: logits at the image size
            size = x.shape[-2:]
            if not torch.jit.is_scripting():
                out = resize_logits(out, size)
            # TorchScript types `out` statically, so it compiles one of these two.
            elif isinstance(out, Tensor):
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            else:  # {"out": ..., "aux": ...}
                resized: dict[str, Tensor] = OrderedDict()
                for key, value in out.items():
                    resized[key] = F.interpolate(
                        value, size=size, mode="bilinear", align_corners=False
                    )
                out = resized
        return out


def resize_logits(logits: Any, size: Sequence[int]) -> Any:
    """Bilinearly resize logits, or each value of a dict of logits, to ``size``."""
    if isinstance(logits, dict):
        return OrderedDict((k, resize_logits(v, size)) for k, v in logits.items())
    # size goes to interpolate as given: x.shape[-2:] under torch.fx is a proxy,
    # which tuple() cannot iterate.
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _accept_torchvision_names(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    *args: Any,
) -> None:
    """Before loading, rename torchvision's keys for our modules to our keys.

    torchvision's detectors hold their trunk as ``body`` and the FPN as ``fpn``
    (``BackboneWithFPN``); its classifiers and segmentation models put ``fc``,
    ``classifier`` and ``aux_classifier`` next to the trunk. Only keys whose first
    name is not ours (``backbone``, ``head``) are renamed, so our own state_dicts load
    as they are; a key that still matches nothing stays and is reported as unexpected.
    """
    backbone = cast(nn.Module, module.backbone)
    head = cast(nn.Module, module.head)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        first, _, rest = key[len(prefix) :].partition(".")
        if first in ("backbone", "head") or not rest:
            continue
        if first == "body":
            new = f"backbone.{rest}"
        elif first in backbone._modules:
            new = f"backbone.{first}.{rest}"
        elif first in head._modules:
            new = f"head.{first}.{rest}"
        else:
            continue
        if prefix + new not in state_dict:  # never overwrite one of our own keys
            state_dict[prefix + new] = state_dict.pop(key)


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
            ``backbone_kwargs`` is not a dict, or options are given for a part that is
            already built.
        UnknownNameError: a name is not registered.

    Example:
        >>> model = create_model("resnet18", "classification", num_classes=10)
        >>> model.head.fc.out_features
        10
    """
    if backbone_kwargs is not None and not isinstance(backbone_kwargs, dict):
        raise TypeError(
            f"backbone_kwargs must be a dict of create_backbone options, e.g. "
            f"{{'out_indices': (2, 3, 4)}}, or None; got {backbone_kwargs!r}"
        )
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, **(backbone_kwargs or {}))
    elif backbone_kwargs:
        raise TypeError(
            "backbone_kwargs apply only when backbone is a name; this backbone is already built"
        )
    feature_info = feature_info_of(backbone, "create_model's backbone=")
    if isinstance(head, str):
        head = create_head(head, feature_info=feature_info, **head_kwargs)
    elif not isinstance(head, nn.Module):
        raise TypeError(f"head must be a registered name or a module, got {type(head).__name__}")
    elif head_kwargs:
        raise TypeError(
            f"head options {sorted(head_kwargs)} apply only when head is a name; "
            f"this head is already built"
        )
    return BackboneWithHead(backbone, head)
