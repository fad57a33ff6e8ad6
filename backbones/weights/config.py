"""Where a variant's published weights live, and how their inputs were pre-processed.

A :class:`PretrainedCfg` is one row of a variant's ``weights`` table
(:class:`~backbones.variants.ResNetSpec`); the first row is what ``pretrained=True``
loads. ``bb.pretrained_cfg`` is its :meth:`PretrainedCfg.to_dict`, the same keys as
timm's, so ``timm.data.resolve_data_config(model=bb)`` and ``create_transform`` work.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from backbones._checks import is_int, is_number

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedCfg",
    "channel_stats",
    "check_cfg_overlay",
    "set_attributes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of published weights for a variant, and its pre-processing.

    Attributes:
        tag: short name of the weights, unique within the variant ("tv_in1k", "a1_in1k").
        url: an http(s) URL of the file; a hash prefix in its name is checked.
        file: a local file the weights were loaded from (timm's ``file`` key).
        hf_hub_id: a Hugging Face hub repository holding the file, used when ``url`` is empty.
        sha256: the file's full sha256, when known.
        origin: the library that published the weights ("torchvision", "timm").
        license: the weights' licence, as an SPDX-like id.
        input_size: (channels, height, width) the weights were trained at.
        interpolation: resize interpolation of the pre-processing.
        crop_pct: centre-crop fraction at evaluation.
        crop_mode: how timm crops at evaluation ("center", "squash", "border").
        mean: per-channel mean subtracted from [0, 1] images.
        std: per-channel standard deviation they are divided by.
        num_classes: classes of the checkpoint's classifier (dropped when loading).
        first_conv: the input convolution's module name, for ``in_chans`` adaptation;
            ``create_backbone`` sets it from the built model (``conv1``, or ``conv1.0``
            for a deep stem), so a row need not give it.
        classifier: the classifier's module name; its keys are dropped knowingly.
    """

    tag: str
    url: str = ""
    file: str = ""
    hf_hub_id: str = ""
    sha256: str = ""
    origin: str = "torchvision"
    license: str = "bsd-3-clause"
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    first_conv: str = "conv1"
    classifier: str = "fc"

    @property
    def source(self) -> str:
        """What ``pretrained=True`` fetches: the URL, else ``hf-hub:<id>``."""
        return self.url or (f"hf-hub:{self.hf_hub_id}" if self.hf_hub_id else "")

    @property
    def pool_size(self) -> tuple[int, int]:
        """The last feature map's size at ``input_size`` (stride 32): (7, 7) at 224."""
        _, height, width = self.input_size
        return (-(-height // 32), -(-width // 32))

    def to_dict(self) -> dict[str, Any]:
        """timm-style keys (``input_size``, ``pool_size``, ``mean``, ``std``, ``crop_pct``, ...)."""
        return {**asdict(self), "pool_size": self.pool_size}

    def for_in_chans(self, in_chans: int, sources: Sequence[int] | None = None) -> "PretrainedCfg":
        """This cfg for an ``in_chans``-channel model; see :func:`channel_stats`."""
        if in_chans == len(self.mean):
            return self
        mean, std = channel_stats(self.mean, self.std, in_chans, sources)
        return replace(self, input_size=(in_chans, *self.input_size[1:]), mean=mean, std=std)


def channel_stats(
    mean: Sequence[float], std: Sequence[float], in_chans: int, sources: Sequence[int] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std for ``in_chans`` channels: channel i takes those of ``sources[i]``.

    Without ``sources`` the channels cycle through the original ones (R, G, B, R, ...),
    as the "repeat" strategy tiles the filters.
    """
    picks = list(sources) if sources is not None else [i % len(mean) for i in range(in_chans)]
    return tuple(mean[i] for i in picks), tuple(std[i] for i in picks)


def _positive_ints(key: str, value: object, n: int, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of ``n`` positive ints, or TypeError/ValueError naming ``key``."""
    shown = f"got {value!r} ({type(value).__name__})"
    if not isinstance(value, list | tuple) or not all(is_int(v) for v in value):
        raise TypeError(f"pretrained_cfg_overlay[{key!r}] must be {n} ints ({what}), {shown}")
    if len(value) != n or not all(v > 0 for v in value):
        raise ValueError(
            f"pretrained_cfg_overlay[{key!r}] must be {n} positive ints ({what}), {shown}"
        )
    return tuple(value)


def _channel_values(key: str, value: object, in_chans: int) -> tuple[float, ...]:
    """Per-channel ``mean`` / ``std``: ``in_chans`` finite numbers (std: positive)."""
    shown = f"got {value!r} ({type(value).__name__})"
    what = f"{in_chans} numbers, one per input channel (in_chans={in_chans})"
    if not isinstance(value, list | tuple) or not all(is_number(v) for v in value):
        raise TypeError(f"pretrained_cfg_overlay[{key!r}] must be a sequence of {what}; {shown}")
    if len(value) != in_chans or not all(math.isfinite(v) for v in value):
        raise ValueError(f"pretrained_cfg_overlay[{key!r}] must be {what}; {shown}")
    if key == "std" and not all(v > 0 for v in value):  # images are divided by it
        raise ValueError(f"pretrained_cfg_overlay['std'] must be positive numbers; {shown}")
    return tuple(float(v) for v in value)


def check_cfg_overlay(overlay: Mapping[str, Any], *, in_chans: int) -> dict[str, Any]:
    """``pretrained_cfg_overlay``'s values, checked against :class:`PretrainedCfg`'s fields.

    Lists become tuples (timm's transforms expect tuples); ``pool_size``, which is not a
    field but a result of ``input_size``, is accepted too.

    Args:
        overlay: keys of ``pretrained_cfg`` to new values.
        in_chans: the model's input channels: ``input_size[0]`` and the length of
            ``mean`` / ``std`` must equal it.

    Returns:
        The overlay with normalised values.

    Raises:
        ValueError: an unknown key, or a value out of range (``crop_pct`` outside
            (0, 1], a non-positive size, ``mean`` of another length than ``in_chans``);
            the message names the key.
        TypeError: a value of the wrong type; the message names the key.

    Example:
        >>> check_cfg_overlay({"mean": [0.5, 0.5, 0.5]}, in_chans=3)
        {'mean': (0.5, 0.5, 0.5)}
    """
    types = {f.name: f.type for f in fields(PretrainedCfg)}
    accepted = sorted([*types, "pool_size"])
    unknown = sorted(set(overlay) - set(accepted))
    if unknown:
        raise ValueError(f"pretrained_cfg_overlay has unknown keys {unknown}; accepted: {accepted}")
    out: dict[str, Any] = {}
    for key, value in overlay.items():
        shown = f"got {value!r} ({type(value).__name__})"
        if key in ("mean", "std"):
            out[key] = _channel_values(key, value, in_chans)
        elif key == "input_size":
            size = _positive_ints(key, value, 3, "channels, height, width")
            if size[0] != in_chans:
                raise ValueError(
                    f"pretrained_cfg_overlay['input_size'] must start with in_chans="
                    f"{in_chans} (channels, height, width), {shown}"
                )
            out[key] = size
        elif key == "pool_size":
            out[key] = _positive_ints(key, value, 2, "height, width of the last map")
        elif key == "crop_pct":
            if not is_number(value):
                raise TypeError(f"pretrained_cfg_overlay['crop_pct'] must be a number, {shown}")
            if not 0 < value <= 1:
                raise ValueError(
                    f"pretrained_cfg_overlay['crop_pct'] must be in (0, 1] (the centre "
                    f"crop's fraction of the resized image), {shown}"
                )
            out[key] = float(value)
        elif types[key] is int:  # num_classes
            if not is_int(value):
                raise TypeError(f"pretrained_cfg_overlay[{key!r}] must be an int, {shown}")
            if value < 0:
                raise ValueError(f"pretrained_cfg_overlay[{key!r}] must be >= 0, {shown}")
            out[key] = value
        else:  # the str fields: names, sources, licence, interpolation, crop_mode
            kind = types[key]
            if isinstance(kind, type) and not isinstance(value, kind):
                raise TypeError(
                    f"pretrained_cfg_overlay[{key!r}] must be a {kind.__name__}, {shown}"
                )
            out[key] = value
    return out


def set_attributes(model: Any, **values: Any) -> None:
    """Attach plain attributes (``pretrained_cfg``, ``pretrained_report``, ...) to a model."""
    for name, value in values.items():
        setattr(model, name, value)  # nn.Module's typed __setattr__ only admits tensors/modules
