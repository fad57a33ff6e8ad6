"""Load weights into a backbone: one readable report, a strictness option, all or nothing.

:func:`load_pretrained` resolves a source (:mod:`.sources`), reads it safely, finds
its format (:mod:`.formats`), maps its keys to ours, adapts the input conv for
``in_chans != 3`` (:mod:`.in_chans`), and loads. Keys it drops knowingly (the
classifier, other parts of a detector, stages the backbone does not build) are listed
separately from real problems (missing, unexpected, shape-mismatched keys).
"""

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from backbones.weights.formats import check_format, to_our_names
from backbones.weights.in_chans import adapt_first_conv
from backbones.weights.sources import WeightsError, read_checkpoint, resolve_source

__all__ = ["LoadReport", "WeightsLoadError", "load_pretrained", "load_state_dict_into"]

log = logging.getLogger("backbones.weights")

_STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass
class LoadReport:
    """What loading weights did.

    Attributes:
        source: where the weights came from.
        format: the checkpoint format used (detected or given).
        loaded: our keys that received a tensor.
        missing: our keys the checkpoint lacks.
        unexpected: checkpoint keys that fit nothing in the backbone.
        mismatched: ``(key, expected shape, checkpoint shape)`` for keys of the wrong shape.
        dropped: checkpoint keys skipped on purpose, with the reason.
        adapted: notes on tensors changed to fit (input-channel adaptation).
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every backbone weight was loaded and nothing unexplained was left."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source} (format: {self.format})"]
        for reason, keys in self.dropped.items():
            lines.append(f"  dropped {len(keys)} keys ({reason}): {_some(keys)}")
        lines += [f"  adapted {note}" for note in self.adapted]
        if self.missing:
            lines.append(f"  missing {len(self.missing)} keys: {_some(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected {len(self.unexpected)} keys: {_some(self.unexpected)}")
        for key, ours, theirs in self.mismatched:
            lines.append(f"  shape mismatch {key}: backbone {ours}, checkpoint {theirs}")
        return "\n".join(lines)


def _some(keys: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


class WeightsLoadError(WeightsError):
    """Strict loading found missing, unexpected or mismatched keys; nothing was changed.

    Attributes:
        report: the full :class:`LoadReport`.
    """

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        super().__init__(
            f"weights do not fit the backbone; nothing was loaded:\n{report}\n"
            f"Pass pretrained_strict=False to load what fits, or pretrained_format= "
            f"if the format was misdetected."
        )


def first_conv_name(model: nn.Module) -> str:
    """The module name of the model's first convolution (``conv1``, ``conv1.0``)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ValueError(f"{type(model).__name__} has no Conv2d")


def _built_stages(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_children() if name in _STAGES}


def load_state_dict_into(
    model: nn.Module,
    state: Mapping[str, Any],
    *,
    source: str = "state dict",
    format: str = "torchvision",
    strict: bool = True,
    in_chans_strategy: str | Sequence[int | None] = "repeat",
    first_conv: str = "conv1",
    drop: Sequence[str] = (),
    dropped: Mapping[str, list[str]] | None = None,
) -> LoadReport:
    """Load ``state`` (already under our names) into ``model``, all or nothing.

    ``drop`` holds regexes of keys to skip knowingly; ``dropped`` lists keys skipped
    earlier, by reason, for the report.

    Raises:
        WeightsLoadError: with ``strict``, any missing, unexpected or mismatched key;
            the model is unchanged.
    """
    ours = model.state_dict()
    report = LoadReport(source=source, format=format, dropped=dict(dropped or {}))
    stages = _built_stages(model)
    conv_key = f"{first_conv}.weight"
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(re.search(p, key) for p in drop):
            report.dropped.setdefault("classifier or another model part", []).append(key)
            continue
        top = key.split(".", 1)[0]
        if key not in ours and top in _STAGES and top not in stages:  # out_indices cut it
            report.dropped.setdefault("stage not built (see out_indices)", []).append(key)
            continue
        if key not in ours and key.endswith("num_batches_tracked"):
            report.dropped.setdefault("BatchNorm counter, no such buffer here", []).append(key)
            continue
        if key not in ours:
            report.unexpected.append(key)
            continue
        tensor = torch.as_tensor(value)
        target = ours[key]
        only_channels_differ = (
            tensor.ndim == 4
            and tensor.shape[1] != target.shape[1]
            and tensor.shape[0] == target.shape[0]
            and tensor.shape[2:] == target.shape[2:]
        )
        if key == conv_key and only_channels_differ:
            tensor = adapt_first_conv(tensor, target.shape[1], in_chans_strategy)
            report.adapted.append(
                f"{key}: {value.shape[1]} -> {target.shape[1]} input channels "
                f"({in_chans_strategy!r})"
            )
        if tensor.shape != target.shape:
            report.mismatched.append((key, tuple(target.shape), tuple(tensor.shape)))
            continue
        new[key] = tensor.to(dtype=target.dtype)
        report.loaded.append(key)
    # BatchNorm's counter is absent from old and foreign checkpoints; it is not a weight.
    mismatched = {key for key, _, _ in report.mismatched}
    report.missing = [
        k
        for k in ours
        if k not in new and k not in mismatched and not k.endswith("num_batches_tracked")
    ]
    if strict and not report.ok:
        raise WeightsLoadError(report)
    _load_atomically(model, new)
    if report.ok:
        log.info("%s", report)
    else:
        log.warning("%s", report)
    return report


def _load_atomically(model: nn.Module, new: Mapping[str, torch.Tensor]) -> None:
    backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in new}
    try:
        model.load_state_dict(new, strict=False)
    except BaseException:
        model.load_state_dict(backup, strict=False)
        raise


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike[str],
    *,
    format: str | None = None,
    strict: bool = True,
    in_chans_strategy: str | Sequence[int | None] = "repeat",
    sha256: str = "",
    progress: bool = True,
) -> LoadReport:
    """Load weights from a file, URL or hub repository into a built backbone.

    Args:
        model: the backbone (e.g. from :func:`~backbones.create_backbone`).
        source: a path, an http(s) URL or ``hf-hub:<repo>``; see :mod:`.sources`.
        format: a name from :data:`~backbones.weights.formats.FORMATS`; detected if None.
        strict: raise if any backbone weight is missing or any key is unexplained.
        in_chans_strategy: how 3-channel input weights become ``in_chans`` channels.
        sha256: the expected sha256 of the file (full or prefix).
        progress: show a download progress bar.

    Returns:
        The :class:`LoadReport` (also logged to the ``backbones.weights`` logger).

    Raises:
        WeightsError: the source cannot be found, fetched, verified or read.
        WeightsLoadError: ``strict`` and the weights do not fit; the model is unchanged.
        UnknownNameError: an unknown ``format``.
    """
    check_format(format)  # before any download
    checkpoint, _ = read_checkpoint(resolve_source(source, sha256=sha256, progress=progress))
    state, fmt = to_our_names(checkpoint, format, source)
    state, outside = _strip_outer_prefix(state, model.state_dict())
    return load_state_dict_into(
        model,
        state,
        source=os.fspath(source),
        format=fmt.name + ("" if format is None else " (given)"),
        strict=strict,
        in_chans_strategy=in_chans_strategy,
        first_conv=first_conv_name(model),
        drop=fmt.drop,
        dropped=outside,
    )


def _strip_outer_prefix(
    state: dict[str, Any], ours: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """If the backbone sits inside a bigger model (``body.``, ``model.encoder.``), cut it out.

    The prefix is found from where our first weight's key occurs in the checkpoint.
    Returns the backbone's part, and the keys outside it (the rest of the model),
    which are dropped knowingly.
    """
    anchor = next((k for k in ours if k.endswith("weight")), None)
    if anchor is None or any(k in ours for k in state):
        return state, {}
    candidates = {k[: -len(anchor)] for k in state if k.endswith("." + anchor)}
    if not candidates:
        return state, {}
    # "body.layer1.0.conv1.weight" also ends with "conv1.weight": take the prefix that
    # puts the most of our keys in place.
    prefix = max(sorted(candidates), key=lambda p: sum(p + k in state for k in ours))
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    outside = [k for k in state if not k.startswith(prefix)]
    return inside, ({f"outside {prefix!r}": outside} if outside else {})
