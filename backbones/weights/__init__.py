"""Pretrained weights: sources, other libraries' formats, loading reports, saving.

* :mod:`.sources`: files, http(s) URLs (cached, sha256-checked) and ``hf-hub:`` ids.
* :mod:`.formats`: torchvision/timm, mmdet, Lightning and detectron2 key maps, as data.
* :mod:`.loading`: :func:`load_pretrained` and its :class:`LoadReport`.
* :mod:`.in_chans`: strategies for ``in_chans != 3`` (repeat, mean, zeros, channel maps).
* :mod:`.config`: :class:`PretrainedCfg`, the variants' published weights and pre-processing.
* :mod:`.convert`: one-time conversion (detectron2 ``.pkl``, detectors, ...) to our names.

Saving a whole backbone with its options is :mod:`backbones.saving` (it builds
backbones, so it sits above this package).

This package reads, maps and loads tensors; it never builds a network.
"""

from backbones.errors import WeightsError, WeightsLoadError
from backbones.weights.config import PretrainedCfg
from backbones.weights.convert import convert_checkpoint
from backbones.weights.formats import FORMATS, CheckpointFormat, detect_format
from backbones.weights.in_chans import (
    IN_CHANS_STRATEGIES,
    adapt_first_conv,
    register_in_chans_strategy,
)
from backbones.weights.loading import LoadReport, load_pretrained

__all__ = [
    "FORMATS",
    "IN_CHANS_STRATEGIES",
    "CheckpointFormat",
    "LoadReport",
    "PretrainedCfg",
    "WeightsError",
    "WeightsLoadError",
    "adapt_first_conv",
    "convert_checkpoint",
    "detect_format",
    "load_pretrained",
    "register_in_chans_strategy",
]
