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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from backbones.errors import WeightsLoadError
from backbones.weights.formats import FORMATS, check_format, strip_outer_prefix, to_our_names
from backbones.weights.in_chans import IN_CHANS_STRATEGIES, adapt_first_conv
from backbones.weights.sources import check_sha256, read_source

__all__ = [
    "LoadReport",
    "WeightsLoadError",
    "check_load_options",
    "load_pretrained",
    "load_state_dict_into",
]

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
        applied: whether the tensors were loaded; False when a strict load refused them
            (``loaded`` then lists the tensors that would have fitted).
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    applied: bool = True

    @property
    def ok(self) -> bool:
        """Whether every backbone weight was loaded and nothing unexplained was left."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        verb = "loaded" if self.applied else "would have loaded"
        lines = [f"{verb} {len(self.loaded)} tensors from {self.source} (format: {self.format})"]
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


def _load_error(report: LoadReport, expected: int, hint: str, advice: str) -> WeightsLoadError:
    """The strict-loading error: a headline, the report, and what to do."""
    report.applied = False  # before the report is written into the message
    advice = advice or (
        "Pass pretrained_strict=False to load what fits, or pretrained_format= "
        "if the format was misdetected."
    )
    return WeightsLoadError(
        report, f"{_headline(report, expected, hint)}; nothing was loaded:\n{report}\n{advice}"
    )


def _headline(report: LoadReport, expected: int, hint: str) -> str:
    """The first line: a different architecture when most tensors do not fit.

    ``hint`` is :func:`_stages_hint`'s text, non-empty when the checkpoint's blocks per
    stage differ from the backbone's: another depth (resnet18 into resnet34 misses under
    half of the tensors) is a different architecture whatever the fraction.
    """
    wrong = len(report.missing) + len(report.mismatched)
    if not expected or (2 * wrong <= expected and not hint):
        return "weights do not fit the backbone"
    example = ""
    if report.mismatched:
        key, ours, theirs = report.mismatched[0]
        example = f"; e.g. {key}: backbone {ours}, checkpoint {theirs}"
    elif report.missing:
        example = f"; e.g. {report.missing[0]} is not in the checkpoint"
    return (
        f"these weights are for a different architecture: {wrong} of the backbone's "
        f"{expected} tensors are missing from the checkpoint or have other shapes "
        f"({len(report.mismatched)} other shapes, {len(report.missing)} missing)"
        f"{hint}{example}"
    )


def _blocks_per_stage(keys: Iterable[str]) -> tuple[int, ...]:
    """Blocks in layer1..layer4 from ``layer<s>.<i>.`` key names (0 for a stage not there)."""
    counts = [0, 0, 0, 0]
    for key in keys:
        match = re.match(r"layer([1-4])\.(\d+)\.", key)
        if match:
            stage = int(match[1]) - 1
            counts[stage] = max(counts[stage], int(match[2]) + 1)
    return tuple(counts)


def _stages_hint(ours: Iterable[str], theirs: Iterable[str]) -> str:
    """ ", the checkpoint has 2, 2, 2, 2 blocks per stage, the backbone 3, 4, 6, 3" or ""."""
    mine, other = _blocks_per_stage(ours), _blocks_per_stage(theirs)
    built = [i for i, n in enumerate(mine) if n]  # stages cut by out_indices do not count
    # A stage the checkpoint lacks altogether (a truncated backbone's file) is missing
    # keys, not another depth.
    if not built or all(mine[i] == other[i] or not other[i] for i in built):
        return ""
    show = ", ".join
    return (
        f"; the checkpoint has {show(str(other[i]) for i in built)} blocks in "
        f"{show(f'layer{i + 1}' for i in built)}, the backbone "
        f"{show(str(mine[i]) for i in built)}"
    )


def check_load_options(
    *,
    strict: object,
    format: object,
    in_chans_strategy: object,
    sha256: object,
    prefix: str = "",
) -> None:
    """Raise TypeError unless the loading options have their documented types.

    Args:
        strict, format, in_chans_strategy, sha256: as :func:`load_pretrained` takes them.
        prefix: how the caller spells the options (``"pretrained_"`` for
            ``create_backbone``'s ``pretrained_strict``, ...), so messages name what the
            user wrote.

    Raises:
        TypeError: an option of the wrong type; the message names it, the value and
            what is accepted.
        UnknownNameError: ``format`` is not a known format.
        WeightsError: ``sha256`` is not '' or 8 to 64 hex digits.
    """
    if not isinstance(strict, bool):
        raise TypeError(
            f"{prefix}strict must be True or False, got {strict!r} ({type(strict).__name__})"
        )
    if format is not None and not isinstance(format, str):
        raise TypeError(
            f"{prefix}format must be None (detect the format) or one of "
            f"{', '.join(map(repr, FORMATS))}, got {format!r} ({type(format).__name__})"
        )
    if not isinstance(sha256, str):
        raise TypeError(
            f"{prefix}sha256 must be a string: the file's sha256 in hex (8 to 64 digits), "
            f"or '' for no check; got {sha256!r} ({type(sha256).__name__})"
        )
    check_format(format, option=f"{prefix}format")
    check_sha256(sha256, option=f"{prefix}sha256")
    if not isinstance(in_chans_strategy, str | list | tuple):
        names = ", ".join(map(repr, IN_CHANS_STRATEGIES))
        raise TypeError(
            f"in_chans_strategy must be a strategy name ({names}"
            f" or one registered with register_in_chans_strategy) or a channel map, a tuple "
            f"with one entry per input channel (a source channel 0..2, or None for zeros), "
            f"e.g. (0, 1, 2, 0); got {in_chans_strategy!r} ({type(in_chans_strategy).__name__})"
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
    adapt_in_chans: bool = True,
    advice: str = "",
) -> LoadReport:
    """Load ``state`` (already under our names) into ``model``, all or nothing.

    ``drop`` holds regexes of keys to skip knowingly; ``dropped`` lists keys skipped
    earlier, by reason, for the report. With ``adapt_in_chans=False`` a first conv with
    other input channels is a shape mismatch, not adapted (a saved backbone must load
    as it was saved). ``advice`` replaces the error's closing hint (which names
    ``create_backbone``'s options) for callers with other options.

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
        if adapt_in_chans and key == conv_key and only_channels_differ:
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
        expected = [k for k in ours if not k.endswith("num_batches_tracked")]
        raise _load_error(report, len(expected), _stages_hint(ours, state), advice)
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
    check_load_options(  # before any download
        strict=strict, format=format, in_chans_strategy=in_chans_strategy, sha256=sha256
    )
    checkpoint, _ = read_source(source, sha256=sha256, progress=progress)
    state, fmt = to_our_names(checkpoint, format, source)
    state, outside = strip_outer_prefix(state, model.state_dict())
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
