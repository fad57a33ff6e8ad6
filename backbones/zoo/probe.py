"""The probe: build every backbone a pattern names and table what works.

``python -m backbones probe 'timm/*'`` (or :func:`probe_backbones`) builds each matching
backbone at a small input and records, per model: whether it builds (``ok``, ``fail``,
``skipped``, ``no_features``) and why not; its levels, and the strides and channels of
the default ``out_indices``; whether ``feature_info`` matched the forward's outputs;
where the library's own metadata was wrong (``metadata_fixes``); whether NHWC maps
were converted; and whether each option works: ``output_stride=16``,
``frozen_stages=1``, ``in_chans=1``, ``drop_path_rate=0.1``, ``torch.jit.script``,
``torch.export``.

Each model runs in a process of its own under a time limit, so one that hangs or
crashes the interpreter is a ``fail`` row, not the end of the run. A model whose
parameter count, estimated on the meta device (nothing allocated), exceeds a limit is
``skipped`` with the count as its reason. The table is rewritten after every model
(CSV, read back by the namespaces, e.g. :func:`backbones.zoo.timm_models.capabilities`),
so an interrupted run keeps what it found and ``resume=True`` goes on from there; the
Markdown table, with a summary on top, and a JSON sidecar with the versions and
commands of the runs are written beside it.

This module measures and writes tables; it registers nothing.
"""

import contextlib
import csv
import fnmatch
import json
import math
import multiprocessing
import os
import platform
import signal
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib import metadata
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from backbones._checks import check_int
from backbones.catalog import backbone_entry, list_backbones
from backbones.contract import feature_info_of
from backbones.errors import BackboneContractError
from backbones.factory import create_backbone
from backbones.namespace import SEPARATOR
from backbones.options import BackboneOptions

__all__ = [
    "ANSWERS",
    "CHECKS",
    "COLUMNS",
    "STATUSES",
    "ProbeRow",
    "ProbeRun",
    "estimate_params",
    "format_summary",
    "probe_backbone",
    "probe_backbones",
    "read_table",
]

OK, FAIL, TIMEOUT, SKIPPED, NO_FEATURES = "ok", "fail", "timeout", "skipped", "no_features"
STATUSES = (OK, FAIL, TIMEOUT, SKIPPED, NO_FEATURES)
"""A row's ``status``: built and checked; failed (``reason`` says why); still running
at the time limit (what it had measured is kept, ``reason`` names the check it was in);
not built (too large); the model exists but cannot return features."""

YES, NO, NOT_APPLICABLE, NOT_RUN = "yes", "no", "n/a", "not run"
ANSWERS = (YES, NO, NOT_APPLICABLE, NOT_RUN)
"""A check's answer. ``n/a``: the model was not built, or the check means nothing for
it (``output_stride=16`` on a network whose deepest stride is already 16 or less)."""

CHECKS = (
    "contract",
    "sizes",
    "output_stride",
    "frozen_stages",
    "in_chans",
    "drop_path_rate",
    "script",
    "export",
)
"""What can be checked on a built model, each a column of the table:

- ``contract``: the forward at the probe input returns one NCHW map per level of
  ``feature_info``, of its channels and stride;
- ``sizes``: the same at a size the strides do not divide (one pixel more in height,
  one less than a multiple of the strides in width: 65x95 after 64x64), every map
  ``ceil(size / stride)`` cells; ``no`` for a network that takes only some sizes;
- ``output_stride``: ``output_stride=16`` builds and the deepest stride is 16;
- ``frozen_stages``: ``frozen_stages=1`` freezes some parameters (not all), and a
  training step changes neither them nor the statistics of their norms;
- ``in_chans``: ``in_chans=1`` builds and runs on a one-channel image;
- ``drop_path_rate``: ``drop_path_rate=0.1`` builds and runs in training mode;
- ``script``: ``torch.jit.script`` compiles the backbone and the result runs;
- ``export``: ``torch.export.export(..., strict=False)`` exports it and the exported
  program gives the eager outputs.
"""

OPTION_VALUES = {"output_stride": 16, "frozen_stages": 1, "in_chans": 1, "drop_path_rate": 0.1}
"""The value each option check builds with."""

DEFAULT_MAX_PARAMS_M = 350.0
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_IMG_SIZE = 64
TABLES = Path(__file__).with_name("tables")
"""Where the library keeps its committed tables (``timm.csv``), read at run time."""

_CHECKOUT = Path(__file__).resolve().parents[2]
_MARKDOWN_EVERY_S = 30.0
_REASON_CHARS = 300
_NO_FEATURES_TEXT = "cannot return features"
"""How a namespace says a model cannot return features (see :class:`~backbones.namespace.
Namespace`); the probe files such a model as ``no_features``."""


# -- rows ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeRow:
    """One model's line of the table.

    Attributes:
        name: the backbone's name (``"timm/convnext_atto"``).
        family: its family without the namespace (``"convnext"``); empty when the name
            could not be resolved.
        status: one of :data:`STATUSES`.
        reason: why it is not ``ok``, on one line.
        params_m: parameters, in millions (estimated on the meta device when skipped).
        input_size: the ``"HxW"`` image the checks ran at.
        levels: how many levels the network has.
        out_indices, strides, channels: the default returned levels, their strides and
            channels.
        nhwc: ``"yes"`` when some returned map came channels-last and is permuted.
        metadata_fixes: where the library's metadata (channels, strides) was wrong.
        contract, sizes, output_stride, frozen_stages, in_chans, drop_path_rate,
            script, export: one of :data:`ANSWERS` per check of :data:`CHECKS`.
        notes: for each check that answered ``no``, why.
        seconds: wall-clock time the model took, building and checks.
    """

    name: str
    family: str = ""
    status: str = FAIL
    reason: str = ""
    params_m: float | None = None
    input_size: str = ""
    levels: int | None = None
    out_indices: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    nhwc: str = ""
    metadata_fixes: tuple[str, ...] = ()
    contract: str = NOT_APPLICABLE
    sizes: str = NOT_APPLICABLE
    output_stride: str = NOT_APPLICABLE
    frozen_stages: str = NOT_APPLICABLE
    in_chans: str = NOT_APPLICABLE
    drop_path_rate: str = NOT_APPLICABLE
    script: str = NOT_APPLICABLE
    export: str = NOT_APPLICABLE
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_csv(self) -> dict[str, str]:
        """The row as the CSV writes it: every value a string (lists space-separated,
        texts ``" | "``-separated, absent numbers empty)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _TEXT_LISTS:
                out[f.name] = " | ".join(v.replace("|", "/") for v in value)
            elif f.name in _INT_LISTS:
                out[f.name] = " ".join(str(v) for v in value)
            elif value is None:
                out[f.name] = ""
            elif f.name == "params_m":
                out[f.name] = f"{value:.3f}"
            elif f.name == "seconds":
                out[f.name] = f"{value:.1f}"
            else:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> "ProbeRow":
        """A row read back from the CSV (:meth:`to_csv`); unknown columns are ignored.
        A check the CSV has no column for (a table older than the check) answers
        ``not run`` on an ``ok`` row, so a fill pass runs it.

        Raises:
            ValueError: a column holds what :meth:`to_csv` would not have written.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = row.get(f.name)
            if text is None:
                if f.name in CHECKS and row.get("status") == OK:
                    values[f.name] = NOT_RUN
                continue
            if f.name in _TEXT_LISTS:
                values[f.name] = tuple(t for t in text.split(" | ") if t)
            elif f.name in _INT_LISTS:
                values[f.name] = tuple(int(t) for t in text.split())
            elif f.name == "levels":
                values[f.name] = int(text) if text else None
            elif f.name == "params_m":
                values[f.name] = float(text) if text else None
            elif f.name == "seconds":
                values[f.name] = float(text or 0)
            else:
                values[f.name] = text
        if "name" not in values or not values["name"]:
            raise ValueError(f"a probe table row needs a name, got {row!r}")
        return cls(**values)


_TEXT_LISTS = frozenset({"metadata_fixes", "notes"})
_INT_LISTS = frozenset({"out_indices", "strides", "channels"})
COLUMNS = tuple(f.name for f in fields(ProbeRow))
"""The CSV's columns, in order: the fields of :class:`ProbeRow`."""


# -- one model -----------------------------------------------------------------------------
def probe_backbone(
    name: str,
    *,
    img_size: int = DEFAULT_IMG_SIZE,
    max_params_m: float = DEFAULT_MAX_PARAMS_M,
    checks: Iterable[str] = CHECKS,
) -> ProbeRow:
    """Build one backbone and run the checks on it, in this process.

    Nothing it raises escapes: every failure is in the row. :func:`probe_backbones` runs
    this in a child process per model, under a time limit.

    Args:
        name: a backbone name (``"timm/resnet18"``, ``"resnet50"``).
        img_size: the side of the square image the checks run at; a network that
            takes only some sizes runs at the size it declares (``probe_input_size``).
        max_params_m: skip a model with more parameters than this, in millions.
        checks: which of :data:`CHECKS` to run; the others answer ``"not run"``.

    Returns:
        The model's row.

    Raises:
        ValueError: ``checks`` names something that is not a check; ``img_size`` is
            not positive.

    Example:
        >>> row = probe_backbone("timm/resnet18", checks=["contract"])  # doctest: +SKIP
        >>> row.status, row.strides, row.contract  # doctest: +SKIP
        ('ok', (2, 4, 8, 16, 32), 'yes')
    """
    wanted = _check_checks(checks)
    check_int("img_size", img_size)
    start = time.perf_counter()
    row = _probe(name, img_size, max_params_m, wanted, lambda row, check: None)
    return replace(row, seconds=round(time.perf_counter() - start, 1))


def _probe(
    name: str,
    img_size: int,
    max_params_m: float,
    checks: tuple[str, ...],
    report: Callable[[ProbeRow, str], None],
) -> ProbeRow:
    """The row of ``name``; ``report`` gets the row so far and the check it starts, after
    the build and each check (what a time limit leaves of a slow model)."""
    try:
        entry = backbone_entry(name)
    except Exception as err:  # unknown, or a namespace saying "cannot return features"
        return ProbeRow(name, status=_failure_status(err), reason=_one_line(err))
    row = ProbeRow(name, family=_family(name, entry.family))
    estimate = estimate_params(name)
    if estimate is not None and estimate / 1e6 > max_params_m:
        return replace(
            row,
            status=SKIPPED,
            params_m=round(estimate / 1e6, 3),
            reason=f"{estimate / 1e6:.0f} M params > {max_params_m:g} M limit",
        )
    torch.manual_seed(0)
    try:
        model = create_backbone(name)
    except Exception as err:  # another library's network: whatever it raises is data
        contract = NO if isinstance(err, BackboneContractError) else NOT_APPLICABLE
        return replace(row, status=_failure_status(err), reason=_one_line(err), contract=contract)
    info = feature_info_of(model, "the probe")
    size = _input_size(model, img_size)
    not_run: dict[str, Any] = {c: NOT_RUN for c in CHECKS}
    row = replace(
        row,
        status=OK,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        input_size=f"{size[0]}x{size[1]}",
        levels=len(info.levels),
        out_indices=tuple(info.out_indices),
        strides=tuple(info.reduction()),
        channels=tuple(info.channels()),
        nhwc=YES if any(getattr(model, "_nhwc", ())) else NO,
        metadata_fixes=tuple(getattr(model, "metadata_fixes", ())),
        **not_run,
    )
    for check in checks:
        report(row, check)
        answer: dict[str, Any] = {}
        answer[check], note = _CHECK_FUNCTIONS[check](name, model, size)
        notes = (*row.notes, f"{check}: {note}") if note else row.notes
        row = replace(row, notes=notes, **answer)
    return row


def _failure_status(err: BaseException) -> str:
    return NO_FEATURES if isinstance(err, ValueError) and _NO_FEATURES_TEXT in str(err) else FAIL


def _family(name: str, family: str) -> str:
    """The family without the namespace: ``"convnext"`` for ``"timm/convnext"``."""
    prefix, sep, _ = name.partition(SEPARATOR)
    return family.removeprefix(f"{prefix}{SEPARATOR}") if sep else family


def _one_line(err: BaseException) -> str:
    """``"<Type>: <message>"`` on one line, cut to a readable length."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {'; '.join(lines)}" if lines else type(err).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


# -- parameters, without allocating --------------------------------------------------------
def _timm_on_meta(model: str) -> nn.Module:
    import timm

    # timm's classifier, not our backbone: ours runs a forward to measure itself.
    return timm.create_model(model.partition(".")[0])


_META_BUILDERS: dict[str, Callable[[str], nn.Module]] = {"timm": _timm_on_meta}
"""Per namespace, a cheaper way to build a model for counting than the backbone's own
build (which measures with a forward); others are built by their entry."""


def estimate_params(name: str) -> int | None:
    """The parameter count of backbone ``name``, built on the meta device (no memory).

    timm's models are built by timm (its classifier, which counts close to the backbone)
    rather than by the backbone's own build, which runs a forward to measure itself.

    Args:
        name: a backbone name.

    Returns:
        The count, or None when it cannot be built on the meta device.

    Example:
        >>> estimate_params("timm/resnet50")  # doctest: +SKIP
        25557032
    """
    prefix, sep, model = name.partition(SEPARATOR)
    builder = _META_BUILDERS.get(prefix) if sep else None
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if builder is not None:
                network = builder(model)
            else:
                network = backbone_entry(name).build(BackboneOptions())
    except Exception:  # an estimate only: the real build reports the real failure
        return None
    return sum(p.numel() for p in network.parameters())


# -- the checks ----------------------------------------------------------------------------
Answer = tuple[str, str]
"""A check's answer and, for ``no``, why."""


def _maps(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, list | tuple) else [out]


def _forward(model: nn.Module, x: Tensor) -> list[Any]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return _maps(model(x))
    finally:
        for m, mode in modes:
            m.training = mode


def _input_size(model: nn.Module, img_size: int) -> tuple[int, int]:
    """``img_size`` square if the network takes it, else the size it declares."""
    try:
        _forward(model, torch.zeros(1, _in_chans(model), img_size, img_size))
    except Exception:  # a fixed-size network: it names a size it takes
        declared = getattr(model, "probe_input_size", None)
        if declared:
            return int(declared[0]), int(declared[1])
    return img_size, img_size


def _in_chans(model: nn.Module) -> int:
    return int(getattr(model, "in_chans", 3))


def _shape_problem(maps: Sequence[Any], model: nn.Module, size: tuple[int, int]) -> str:
    """What differs between the maps and ``feature_info``; empty when they agree."""
    info = feature_info_of(model, "the probe")
    if len(maps) != len(info):
        return f"the forward gives {len(maps)} maps, feature_info describes {len(info)}"
    height, width = size
    for i, (fmap, chs, stride) in enumerate(
        zip(maps, info.channels(), info.reduction(), strict=True)
    ):
        expected = (chs, math.ceil(height / stride), math.ceil(width / stride))
        got = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
        if not isinstance(fmap, Tensor) or fmap.dim() != 4 or tuple(fmap.shape[1:]) != expected:
            return (
                f"map {i} is {got} at {height}x{width}, feature_info says {chs} channels "
                f"at stride {stride}"
            )
    return ""


def _check_contract(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    x = torch.randn(1, _in_chans(model), *size)
    try:
        problem = _shape_problem(_forward(model, x), model, size)
    except Exception as err:
        return NO, _one_line(err)
    return (NO, problem) if problem else (YES, "")


def _check_sizes(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    multiple = math.lcm(*feature_info_of(model, "the probe").reduction())
    odd = (size[0] + 1, size[1] + multiple - 1)
    x = torch.randn(1, _in_chans(model), *odd)
    try:
        problem = _shape_problem(_forward(model, x), model, odd)
    except Exception as err:
        # ours says which input and the size it was made at; the network's own is shorter
        return NO, f"refuses {odd[0]}x{odd[1]}: {_one_line(err.__cause__ or err)}"
    return (NO, problem) if problem else (YES, "")


def _built_and_run(name: str, options: dict[str, Any], size: tuple[int, int]) -> nn.Module:
    """The backbone built with ``options``; raises if it fails to or its forward disagrees
    with its ``feature_info``."""
    torch.manual_seed(0)
    model = create_backbone(name, **options)
    x = torch.randn(1, _in_chans(model), *size)
    problem = _shape_problem(_forward(model, x), model, size)
    if problem:
        raise ValueError(problem)
    return model


def _check_output_stride(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    value = OPTION_VALUES["output_stride"]
    if max(feature_info_of(model, "the probe").reduction()) <= value:
        return NOT_APPLICABLE, ""
    try:
        built = _built_and_run(name, {"output_stride": value}, size)
    except Exception as err:
        return NO, _one_line(err)
    deepest = max(feature_info_of(built, "the probe").reduction())
    return (YES, "") if deepest == value else (NO, f"the deepest stride is {deepest}")


def _check_frozen_stages(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    try:
        built = _built_and_run(name, {"frozen_stages": OPTION_VALUES["frozen_stages"]}, size)
        problem = _frozen_problem(built, size)
    except Exception as err:
        return NO, _one_line(err)
    return (NO, problem) if problem else (YES, "")


def _frozen_problem(model: nn.Module, size: tuple[int, int]) -> str:
    """Whether freezing holds through one training step; empty when it does."""
    params = dict(model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if not frozen:
        return "no parameter has requires_grad=False"
    if len(frozen) == len(params):
        return "every parameter is frozen"
    # The norms of frozen modules must keep their statistics too (they stay in eval).
    stats = {
        f"{owner}.{buffer}": value
        for owner, module in model.named_modules()
        if (own := list(module.parameters(recurse=False))) and not any(p.requires_grad for p in own)
        for buffer, value in module.named_buffers(recurse=False)
        if value.is_floating_point()
    }
    before = {n: params[n].detach().clone() for n in frozen}
    before.update({n: v.detach().clone() for n, v in stats.items()})
    model.train()
    loss = sum(
        m.float().square().mean() for m in _maps(model(torch.randn(2, _in_chans(model), *size)))
    )
    if not isinstance(loss, Tensor):
        return "the forward returned no tensor"
    loss.backward()
    torch.optim.SGD([p for p in params.values() if p.requires_grad], lr=0.1).step()
    current = {**{n: params[n] for n in frozen}, **stats}
    changed = [n for n, v in before.items() if not torch.equal(v, current[n])]
    if changed:
        return f"a training step changed frozen {', '.join(changed[:3])}"
    with_grad = [n for n in frozen if params[n].grad is not None]
    if with_grad:
        return f"frozen {', '.join(with_grad[:3])} received a gradient"
    return ""


def _check_in_chans(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    return _check_builds(name, {"in_chans": OPTION_VALUES["in_chans"]}, size)


def _check_drop_path_rate(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    try:
        built = _built_and_run(name, {"drop_path_rate": OPTION_VALUES["drop_path_rate"]}, size)
        built.train()
        with torch.no_grad():
            problem = _shape_problem(
                _maps(built(torch.randn(2, _in_chans(built), *size))), built, size
            )
    except Exception as err:
        return NO, _one_line(err)
    return (NO, problem) if problem else (YES, "")


def _check_builds(name: str, options: dict[str, Any], size: tuple[int, int]) -> Answer:
    try:
        _built_and_run(name, options, size)
    except Exception as err:
        return NO, _one_line(err)
    return YES, ""


def _check_script(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    x = torch.randn(1, _in_chans(model), *size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script is deprecated in new torch
            scripted = torch.jit.script(model.eval())
        return _same_outputs(_forward(model, x), _forward(scripted, x))
    except Exception as err:
        return NO, _one_line(err)


def _check_export(name: str, model: nn.Module, size: tuple[int, int]) -> Answer:
    x = torch.randn(1, _in_chans(model), *size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model.eval(), (x,), strict=False)
        with torch.no_grad():
            exported = _maps(program.module()(x))
        return _same_outputs(_forward(model, x), exported)
    except Exception as err:
        return NO, _one_line(err)


def _same_outputs(eager: Sequence[Any], other: Sequence[Any]) -> Answer:
    if len(eager) != len(other):
        return NO, f"{len(other)} outputs, eager gives {len(eager)}"
    for i, (a, b) in enumerate(zip(eager, other, strict=True)):
        if not isinstance(b, Tensor) or a.shape != b.shape:
            return NO, f"output {i} differs in shape"
        if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
            return NO, f"output {i} differs by {(a - b).abs().max().item():.2g}"
    return YES, ""


_CHECK_FUNCTIONS: dict[str, Callable[[str, nn.Module, tuple[int, int]], Answer]] = {
    "contract": _check_contract,
    "sizes": _check_sizes,
    "output_stride": _check_output_stride,
    "frozen_stages": _check_frozen_stages,
    "in_chans": _check_in_chans,
    "drop_path_rate": _check_drop_path_rate,
    "script": _check_script,
    "export": _check_export,
}


def _check_checks(checks: Iterable[str]) -> tuple[str, ...]:
    if isinstance(checks, str):
        checks = [c.strip() for c in checks.split(",") if c.strip()]
    wanted = tuple(checks)
    unknown = [c for c in wanted if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; accepted: {', '.join(CHECKS)}")
    return tuple(c for c in CHECKS if c in wanted)


# -- many models, each in a child process --------------------------------------------------
@dataclass(frozen=True)
class ProbeRun:
    """What :func:`probe_backbones` wrote.

    Attributes:
        rows: every row of the table (resumed ones included), by name.
        probed: the names this run probed (not those resumed or carried over).
        csv, markdown, meta: the files written.
        settings: the run's settings (image size, limits, checks, jobs, threads).
    """

    rows: tuple[ProbeRow, ...]
    probed: tuple[str, ...]
    csv: Path
    markdown: Path
    meta: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """Counts per status and per check, as plain text."""
        return format_summary(self.rows)


def probe_backbones(
    patterns: str | Sequence[str],
    *,
    out: str | os.PathLike[str] | None = None,
    table: str | None = None,
    img_size: int = DEFAULT_IMG_SIZE,
    max_params_m: float = DEFAULT_MAX_PARAMS_M,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    checks: Iterable[str] = CHECKS,
    jobs: int = 1,
    threads: int = 1,
    resume: bool = False,
    fill: bool = False,
    command: str = "",
    progress: Callable[[int, int, ProbeRow], None] | None = None,
) -> ProbeRun:
    """Probe every backbone the patterns name, each in a child process, and write tables.

    Args:
        patterns: fnmatch patterns as :func:`~backbones.list_backbones` takes them
            (``"timm/*"``), or plain names, which are probed even when no listing shows
            them (a model the committed table marks ``no_features``).
        out: the folder for ``<table>.csv``, ``<table>.md`` and ``<table>.meta.json``.
            By default, for a whole namespace (``"timm/*"``), the library's tables
            (``backbones/zoo/tables``) and, in a source checkout, ``docs/zoo`` for the
            Markdown; for other patterns, the current folder.
        table: the files' name; by default the namespace for ``"<namespace>/*"``, else
            made from the patterns.
        img_size: the side of the square image the checks run at.
        max_params_m: models with more parameters (millions, estimated without
            allocating) are skipped, with the count as the reason.
        timeout_s: a model still running after this many seconds is killed; its row
            says ``fail``, ``timeout``.
        checks: which of :data:`CHECKS` to run; the others answer ``"not run"``.
        jobs: models probed at once.
        threads: torch threads in each child.
        resume: keep the rows of an existing CSV and probe only the names it lacks.
            Without it the table is made anew, except for the rows of models the
            namespace no longer lists because that table marks them ``no_features``.
        fill: as ``resume``, and also run the ``checks`` that a kept ``ok`` row answered
            ``not run`` (a first pass with the cheap checks, then ``script,export``);
            only those checks run again, and the row keeps its other answers.
        command: how the run was started, for the tables' header.
        progress: called after each model with (number done, number to do, row).

    Returns:
        A :class:`ProbeRun`: the rows and the paths written.

    Raises:
        ValueError: an argument is out of range, a check is unknown, or the patterns
            name no backbone.

    Example:
        >>> run = probe_backbones("timm/resnet1*", out="probe")  # doctest: +SKIP
        >>> print(run.summary())  # doctest: +SKIP
    """
    wanted = _check_checks(checks)
    check_int("img_size", img_size)
    check_int("jobs", jobs)
    check_int("threads", threads)
    for label, value in (("max_params_m", max_params_m), ("timeout_s", timeout_s)):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{label} must be a positive number, got {value!r}")
    pattern_list = [patterns] if isinstance(patterns, str) else list(patterns)
    names = _select(pattern_list)
    name = table or _table_name(pattern_list)
    csv_path, md_path, meta_path = _paths(out, name, pattern_list)
    settings = {
        "img_size": img_size,
        "max_params_m": max_params_m,
        "timeout_s": timeout_s,
        "checks": list(wanted),
        "jobs": jobs,
        "threads": threads,
    }
    existing = {r.name: r for r in read_table(csv_path)} if csv_path.is_file() else {}
    filling: dict[str, ProbeRow] = {}
    if fill:
        filling = {
            n: r
            for n, r in existing.items()
            if n in names and r.status == OK and any(getattr(r, c) == NOT_RUN for c in wanted)
        }
    if resume or fill:  # a row being filled stays as it was until its new one comes
        rows = dict(existing)
    else:  # the namespace may hide the models its table marks no_features: keep those rows
        rows = {
            n: r
            for n, r in existing.items()
            if r.status == NO_FEATURES
            and n not in names
            and any(fnmatch.fnmatchcase(n, p) for p in pattern_list)
        }
    todo = [n for n in names if n not in rows or n in filling]
    checks_for = {
        n: tuple(c for c in wanted if getattr(r, c) == NOT_RUN) for n, r in filling.items()
    }
    run_meta = {
        "started": _now(),
        "command": command or f"probe_backbones({pattern_list!r})",
        "versions": _versions(),
        "platform": platform.platform(),
        "settings": settings,
        "to_probe": len(todo),
    }
    history = _read_meta(meta_path).get("runs", []) if resume or fill else []
    writer = _Writer(csv_path, md_path, meta_path, name, pattern_list, [*history, run_meta])
    writer.write(rows, final=True)

    finished: set[str] = set()

    def on_row(row: ProbeRow) -> None:
        finished.add(row.name)
        if row.name in filling:
            row = _merged(filling[row.name], row)
        rows[row.name] = row
        writer.write(rows)
        if progress is not None:
            progress(len(finished), len(todo), row)

    try:
        _run_children(
            todo,
            on_row,
            img_size=img_size,
            max_params_m=max_params_m,
            timeout_s=timeout_s,
            checks=wanted,
            checks_for=checks_for,
            jobs=jobs,
            threads=threads,
        )
    finally:
        run_meta["finished"] = _now()
        run_meta["probed"] = len(finished)
        writer.write(rows, final=True)
    return ProbeRun(
        tuple(rows[n] for n in sorted(rows)),
        tuple(n for n in todo if n in finished),
        csv_path,
        md_path,
        meta_path,
        settings,
    )


def _merged(old: ProbeRow, new: ProbeRow) -> ProbeRow:
    """``new`` (a fill pass's row) with the answers and notes of ``old`` for the checks
    the pass did not run, and both passes' time.

    A fill pass that did not finish (time limit, crash) leaves the row ``ok`` as it was:
    the checks it finished are answered, the one it was in stays ``not run`` with a note.
    """
    kept = {c: getattr(old, c) for c in CHECKS if getattr(new, c) == NOT_RUN}
    notes = tuple(n for n in old.notes if n.partition(":")[0] in kept)
    seconds = round(old.seconds + new.seconds, 1)
    if new.status == OK:
        return replace(new, **kept, notes=(*notes, *new.notes), seconds=seconds)
    answered = {c: getattr(new, c) for c in CHECKS if getattr(new, c) not in (NOT_RUN, "")}
    answered = {c: a for c, a in answered.items() if getattr(old, c) == NOT_RUN}
    unfinished = f"fill: {new.reason}"
    return replace(
        old,
        **answered,
        notes=(*old.notes, *(n for n in new.notes if n not in old.notes), unfinished),
        seconds=seconds,
    )


def _select(patterns: Sequence[str]) -> list[str]:
    """The names the patterns match (a plain name stands for itself), without repeats."""
    names: dict[str, None] = {}  # ordered, without repeats
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"a pattern must be a non-empty string, got {pattern!r}")
        matched = list_backbones(pattern) if any(c in pattern for c in "*?[") else [pattern]
        names.update(dict.fromkeys(matched))
    if not names:
        raise ValueError(
            f"the patterns {list(patterns)} match no backbone; a namespace is listed with "
            f"'<namespace>/*' (see 'python -m backbones list')"
        )
    return list(names)


def _whole_namespace(patterns: Sequence[str]) -> str:
    """The namespace when the patterns are exactly ``["<namespace>/*"]``, else ``""``."""
    if len(patterns) != 1:
        return ""
    prefix, sep, rest = patterns[0].partition(SEPARATOR)
    plain = prefix and not any(c in prefix for c in "*?[")
    return prefix if sep and rest == "*" and plain else ""


def _table_name(patterns: Sequence[str]) -> str:
    namespace = _whole_namespace(patterns)
    if namespace:
        return namespace
    if len(patterns) == 1:
        slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in patterns[0])
        return slug.strip("_.") or "probe"
    return "probe"


def _paths(
    out: str | os.PathLike[str] | None, table: str, patterns: Sequence[str]
) -> tuple[Path, Path, Path]:
    if out is not None:
        folder = Path(out)
        markdown_folder = folder
    elif _whole_namespace(patterns):
        folder = TABLES
        docs = _CHECKOUT / "docs" / "zoo"
        markdown_folder = docs if (_CHECKOUT / "pyproject.toml").is_file() else folder
    else:
        folder = markdown_folder = Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    markdown_folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{table}.csv", markdown_folder / f"{table}.md", folder / f"{table}.meta.json"


def _run_children(
    names: Sequence[str],
    on_row: Callable[[ProbeRow], None],
    *,
    img_size: int,
    max_params_m: float,
    timeout_s: float,
    checks: tuple[str, ...],
    jobs: int,
    threads: int,
    checks_for: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Probe each name in a child process, ``jobs`` at a time, ``timeout_s`` each, running
    ``checks`` (or the name's own in ``checks_for``)."""
    if not names:
        return
    # Resolve a name of each namespace here, so the library it imports (timm) is
    # imported once by the server the children fork from, not by every child.
    for prefix in sorted({n.partition(SEPARATOR)[0] for n in names if SEPARATOR in n}):
        first = next(n for n in names if n.startswith(f"{prefix}{SEPARATOR}"))
        with contextlib.suppress(Exception):  # the child reports it
            backbone_entry(first)
    context = _context()
    settings = {
        "img_size": img_size,
        "max_params_m": max_params_m,
        "checks": checks,
        "threads": threads,
    }
    todo = deque(names)
    running: dict[Connection, _Child] = {}
    try:
        while todo or running:
            while todo and len(running) < jobs:
                name = todo.popleft()
                receiver, sender = context.Pipe(duplex=False)
                own = {**settings, "checks": (checks_for or {}).get(name, checks)}
                process = context.Process(  # type: ignore[attr-defined]
                    target=_child, args=(name, own, sender), daemon=True
                )
                process.start()
                sender.close()  # the child holds it: its death shows as end of file
                running[receiver] = _Child(name, process, time.monotonic())
            first_deadline = min(c.start for c in running.values()) + timeout_s
            ready = wait(list(running), timeout=max(0.0, first_deadline - time.monotonic()))
            for conn, child in list(running.items()):
                seconds = time.monotonic() - child.start
                row = _receive(conn, child, seconds) if conn in ready else None
                if row is None and seconds >= timeout_s:
                    child.process.kill()
                    row = child.lost(
                        f"timeout: still running after {timeout_s:g} s", seconds, TIMEOUT
                    )
                if row is None:
                    continue
                _end(child.process)
                conn.close()
                del running[conn]
                on_row(row)
    finally:
        for conn, child in running.items():  # interrupted: leave no child behind
            child.process.kill()
            _end(child.process)
            conn.close()


@dataclass
class _Child:
    """A model's process, and the last row it reported."""

    name: str
    process: BaseProcess
    start: float
    partial: ProbeRow | None = None
    running_check: str = ""

    def lost(self, reason: str, seconds: float, status: str = FAIL) -> ProbeRow:
        """The row of a child that gave no final one: what it reported, with ``status``."""
        if self.partial is None:
            return _lost(self.name, reason, seconds, status)
        where = f" (in the {self.running_check} check)" if self.running_check else ""
        return replace(
            self.partial, status=status, reason=f"{reason}{where}", seconds=round(seconds, 1)
        )


def _receive(conn: Connection, child: _Child, seconds: float) -> ProbeRow | None:
    """The child's final row, or None while it reports progress."""
    try:
        while conn.poll():
            final, row, check = conn.recv()
            if final:
                return row  # type: ignore[no-any-return]
            child.partial, child.running_check = row, check
    except (EOFError, OSError):  # the child died without a word: a crash of the network
        child.process.join(5)
        return child.lost(f"crashed: {_exit_text(child.process.exitcode)}", seconds)
    return None


def _exit_text(code: int | None) -> str:
    if code is None or code >= 0:
        return f"the process exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = " (out of memory?)" if name == "SIGKILL" else ""
    return f"the process was killed by {name}{hint}"


def _lost(name: str, reason: str, seconds: float, status: str = FAIL) -> ProbeRow:
    """The row of a model whose child gave none: its family looked up here, cheaply."""
    try:
        family = _family(name, backbone_entry(name).family)
    except Exception:
        family = ""
    return ProbeRow(name, family=family, status=status, reason=reason, seconds=round(seconds, 1))


def _end(process: BaseProcess) -> None:
    process.join(10)
    if process.is_alive():  # sent its row but hangs on the way out
        process.kill()
        process.join()


def _context() -> BaseContext:
    """forkserver where there is one: each child forks from a server that imported torch
    (and the zoos' libraries) once, and not from this process and its threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    preload = [__name__] + [m for m in ("timm", "torchvision") if m in sys.modules]
    context.set_forkserver_preload(preload)
    return context


def _child(name: str, settings: dict[str, Any], conn: Connection) -> None:
    """A child's work: (False, row so far, check it starts) before each check, then
    (True, the row, "")."""
    torch.set_num_threads(settings["threads"])
    warnings.simplefilter("ignore")  # a thousand models' deprecation notes: not the table's
    start = time.perf_counter()

    def report(row: ProbeRow, check: str) -> None:
        conn.send((False, row, check))

    try:
        row = _probe(
            name, settings["img_size"], settings["max_params_m"], settings["checks"], report
        )
    except BaseException as err:  # _probe keeps failures in the row; a last guard
        row = ProbeRow(name, status=FAIL, reason=_one_line(err))
    conn.send((True, replace(row, seconds=round(time.perf_counter() - start, 1)), ""))
    conn.close()


# -- the tables ----------------------------------------------------------------------------
def read_table(path: str | os.PathLike[str]) -> list[ProbeRow]:
    """The rows of a probe CSV.

    Raises:
        OSError: the file cannot be read.
        ValueError: a row is not one :meth:`ProbeRow.to_csv` writes.
    """
    with Path(path).open(newline="") as f:
        return [ProbeRow.from_csv(row) for row in csv.DictReader(f)]


def _counts(rows: Iterable[ProbeRow]) -> tuple[Counter[str], dict[str, Counter[str]]]:
    rows = list(rows)
    statuses = Counter(r.status for r in rows)
    answers = {check: Counter(getattr(r, check) for r in rows) for check in CHECKS}
    return statuses, answers


def format_summary(rows: Iterable[ProbeRow]) -> str:
    """Counts per status and per check, as aligned text.

    Example:
        >>> print(format_summary([ProbeRow("a", status="ok", contract="yes")]))
        1 models: ok 1, fail 0, timeout 0, skipped 0, no_features 0
        check              yes     no    n/a  not run
        contract             1      0      0        0
        sizes                0      0      1        0
        output_stride        0      0      1        0
        frozen_stages        0      0      1        0
        in_chans             0      0      1        0
        drop_path_rate       0      0      1        0
        script               0      0      1        0
        export               0      0      1        0
    """
    statuses, answers = _counts(rows)
    total = sum(statuses.values())
    lines = [f"{total} models: " + ", ".join(f"{s} {statuses[s]}" for s in STATUSES)]
    lines.append(
        f"{'check':<15}" + "".join(f"{a:>7}" if a != NOT_RUN else f"{a:>9}" for a in ANSWERS)
    )
    for check in CHECKS:
        counts = answers[check]
        lines.append(
            f"{check:<15}"
            + "".join(f"{counts[a]:>7}" if a != NOT_RUN else f"{counts[a]:>9}" for a in ANSWERS)
        )
    return "\n".join(lines)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, runs: Sequence[dict[str, Any]], rows: Sequence[ProbeRow]) -> str:
    statuses, answers = _counts(rows)
    last = runs[-1] if runs else {}
    versions = ", ".join(f"{k} {v}" for k, v in last.get("versions", {}).items())
    settings = last.get("settings", {})
    lines = [
        f"# Probe of `{title}`",
        "",
        f"Generated by `{last.get('command', '')}` on {last.get('started', '')} with "
        f"{versions} ({last.get('platform', '')}); input {settings.get('img_size', '')}px, "
        f"limit {settings.get('max_params_m', '')} M params, "
        f"timeout {settings.get('timeout_s', '')} s.",
    ]
    if len(runs) > 1:
        lines += ["", "Resumed; earlier runs:"]
        for run in runs[:-1]:
            lines.append(
                f"- {run.get('started', '')}: "
                + ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items())
                + f", {run.get('probed', '?')} models"
            )
    lines += [
        "",
        "Columns: `status` ok / fail / timeout (still running at the time limit; what it "
        "had measured is kept) / skipped (too large to build here) / no_features (the "
        "model cannot return features); `contract`: `feature_info` matches the forward; "
        "`sizes`: it does at a size the strides do not divide too (each map "
        "ceil(size / stride) cells; no: the network takes only some sizes, or rounds "
        "otherwise); "
        "`fixes`: claims of the library's metadata the forward contradicted; `NHWC`: maps "
        "permuted from channels-last; one column per check: `output_stride=16`, "
        "`frozen_stages=1` (and a training step leaves the frozen part unchanged), "
        "`in_chans=1`, `drop_path_rate=0.1`, `torch.jit.script`, `torch.export` "
        "(yes / no / n/a / not run).",
        "",
        "## Summary",
        "",
        "| status | models |",
        "| --- | ---: |",
        *(f"| {s} | {statuses[s]} |" for s in STATUSES),
        f"| all | {sum(statuses.values())} |",
        "",
        "| check | " + " | ".join(ANSWERS) + " |",
        "| --- |" + " ---: |" * len(ANSWERS),
        *(f"| {c} | " + " | ".join(str(answers[c][a]) for a in ANSWERS) + " |" for c in CHECKS),
        "",
        "## Models",
        "",
        "| name | family | status | params (M) | levels | strides | channels | "
        + " | ".join(CHECKS)
        + " | fixes | NHWC | s | reason, notes |",
        "| --- | --- | --- | ---: | ---: | --- | --- |"
        + " --- |" * len(CHECKS)
        + " ---: | --- | ---: | --- |",
    ]
    for r in rows:
        params = "" if r.params_m is None else f"{r.params_m:.1f}"
        text = "; ".join([*([r.reason] if r.reason else []), *r.notes, *r.metadata_fixes])
        cells = [
            r.name,
            r.family,
            r.status,
            params,
            "" if r.levels is None else str(r.levels),
            " ".join(map(str, r.strides)),
            " ".join(map(str, r.channels)),
            *(getattr(r, c) for c in CHECKS),
            str(len(r.metadata_fixes)),
            r.nhwc,
            f"{r.seconds:.1f}",
            text,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


class _Writer:
    """Rewrites the tables, each atomically: the CSV after every row, the Markdown and
    the JSON at most every half minute and at the end."""

    def __init__(
        self,
        csv_path: Path,
        md_path: Path,
        meta_path: Path,
        table: str,
        patterns: Sequence[str],
        runs: list[dict[str, Any]],
    ) -> None:
        self.csv_path, self.md_path, self.meta_path = csv_path, md_path, meta_path
        self.table, self.patterns, self.runs = table, list(patterns), runs
        self.last_markdown = 0.0

    def write(self, rows: dict[str, ProbeRow], *, final: bool = False) -> None:
        ordered = [rows[n] for n in sorted(rows)]
        _atomic_write(self.csv_path, _csv_text(ordered))
        if final or time.monotonic() - self.last_markdown > _MARKDOWN_EVERY_S:
            title = " ".join(self.patterns)
            _atomic_write(self.md_path, _markdown(title, self.runs, ordered))
            meta = {"table": self.table, "patterns": self.patterns, "runs": self.runs}
            _atomic_write(self.meta_path, json.dumps(meta, indent=2) + "\n")
            self.last_markdown = time.monotonic()


def _csv_text(rows: Sequence[ProbeRow]) -> str:
    lines: list[str] = []

    class _Lines:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

    writer = csv.DictWriter(_Lines(), fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.to_csv() for r in rows)
    return "".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a reader never sees half a table)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "timm", "torchvision"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
