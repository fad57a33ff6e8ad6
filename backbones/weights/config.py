"""Where a variant's published weights live, and how their inputs were pre-processed.

A :class:`PretrainedCfg` is one row of a variant's ``weights`` table
(:class:`~backbones.variants.ResNetSpec`); the first row is what ``pretrained=True``
loads. ``bb.pretrained_cfg`` is its :meth:`PretrainedCfg.to_dict`, the same keys as
timm's, so ``timm.data.resolve_data_config(model=bb)`` and ``create_transform`` work.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PretrainedCfg", "channel_stats", "set_attributes"]

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


def set_attributes(model: Any, **values: Any) -> None:
    """Attach plain attributes (``pretrained_cfg``, ``pretrained_report``, ...) to a model."""
    for name, value in values.items():
        setattr(model, name, value)  # nn.Module's typed __setattr__ only admits tensors/modules
