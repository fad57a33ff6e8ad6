"""Training helpers that read a model's stages: optimizer groups with layer-wise
learning-rate decay, norm conversion after creation, and a report of what trains.

A backbone says which parameters make each of its stages (``stage_params()``: the stem,
then each stage in network order; a plain ViT's stages are its blocks). These helpers
find every backbone inside a model (a ``create_model`` result, a torchvision detector
built on one) and call every other parameter the ``head``. Frozen parameters
(``requires_grad=False``, as ``frozen_stages`` leaves them) are left out of optimizer
groups, and converting norms keeps them frozen and in eval mode.
"""

import fnmatch
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from backbones.errors import UnknownNameError
from backbones.zoo.extractor import is_norm

__all__ = [
    "HEAD",
    "NORM_KINDS",
    "StageReport",
    "Trainability",
    "convert_norm",
    "model_stages",
    "param_groups",
    "trainability",
]

HEAD = "head"
"""The stage of every parameter outside a backbone (heads, necks of other libraries)."""
NECK = "neck"
"""A backbone's own neck (the simple pyramid): after its stages, at the full rate."""

NORM_KINDS = ("batchnorm", "syncbatchnorm", "frozen_batchnorm")
"""What :func:`convert_norm` converts to."""


# -- stages --------------------------------------------------------------------------------
def model_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Each stage's parameter names in ``model``, backbone stages first, then ``"head"``.

    Every submodule with a ``stage_params()`` method (the library's backbones) gives its
    stages, named as it names them (``"stem"``, ``"layer1"``...), prefixed with the
    backbone's path where the model holds more than one. A parameter in no backbone is
    in the ``"head"`` stage, last. Frozen parameters are included.

    Example:
        >>> [name for name, _ in model_stages(create_model("resnet18", "classification"))]
        ... # doctest: +SKIP
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
    """
    found = _backbones(model)
    stages: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for path, backbone in found:
        for name, params in backbone.stage_params():
            label = f"{path}/{name}" if len(found) > 1 else name
            names = [f"{path}.{p}" if path else p for p in params]
            stages.append((label, names))
            seen.update(names)
    head = [n for n, _ in model.named_parameters() if n not in seen]
    if head or not stages:
        stages.append((HEAD, head))
    return stages


def _backbones(model: nn.Module) -> list[tuple[str, Any]]:
    """The outermost submodules with ``stage_params``, by path."""
    found: list[tuple[str, Any]] = []
    for path, module in model.named_modules():
        if not callable(getattr(module, "stage_params", None)):
            continue
        if any(path == p or path.startswith(f"{p}.") for p, _ in found if p) or (
            found and found[0][0] == ""
        ):
            continue  # inside a backbone already found
        found.append((path, module))
    return found


# -- optimizer groups ----------------------------------------------------------------------
def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    no_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``model``: ``torch.optim.AdamW(param_groups(...))``.

    - Frozen parameters (``requires_grad=False``) are left out.
    - Parameters with one dimension or none (norm weights, biases, scales), those that
      a module's ``no_weight_decay()`` names (timm's position embeddings and class
      tokens) and those matching a ``no_decay`` pattern get no weight decay.
    - With ``layer_decay``, the learning rate falls by that factor per stage from the
      head towards the stem, as in BEiT's and MAE's fine-tuning (timm's
      ``param_groups_layer_decay``): a backbone with stages ``stem, s1 .. sK`` gives
      stage ``i`` the rate ``lr * layer_decay ** (K + 1 - i)``; its neck and the head
      get ``lr``. A plain ViT's stages are its blocks.

    Args:
        model: a backbone, a ``create_model`` result, or any module holding backbones
            (a torchvision detector built on one).
        lr: the head's learning rate.
        weight_decay: the decay of the parameters that have it.
        layer_decay: the per-stage factor, in (0, 1]; None for one rate.
        no_decay: fnmatch patterns of parameter names (``"*.pos_embed"``) without
            weight decay, beside the rules above.

    Returns:
        Groups (``params``, ``lr``, ``weight_decay``, and ``stage``, ``lr_scale`` for
        schedulers that rescale), without empty ones, in stage order.

    Raises:
        ValueError: a rate or decay out of range, or a pattern that is not a string;
            the message names the value and what is accepted.
    """
    _check_number("lr", lr, low=0.0, low_open=True)
    _check_number("weight_decay", weight_decay, low=0.0)
    if layer_decay is not None:
        _check_number("layer_decay", layer_decay, low=0.0, low_open=True, high=1.0)
    patterns = _patterns(no_decay)
    skip = _no_weight_decay_names(model)
    params = dict(model.named_parameters())
    stages = model_stages(model)
    scales = _lr_scales(stages, layer_decay)
    groups: list[dict[str, Any]] = []
    for (stage, names), scale in zip(stages, scales, strict=True):
        split: dict[bool, list[Any]] = {True: [], False: []}
        for name in names:
            param = params[name]
            if not param.requires_grad:
                continue
            decays = param.ndim > 1 and name not in skip
            decays = decays and not any(fnmatch.fnmatchcase(name, p) for p in patterns)
            split[decays].append(param)
        for decays in (True, False):
            if split[decays]:
                groups.append(
                    {
                        "params": split[decays],
                        "lr": lr * scale,
                        "weight_decay": weight_decay if decays else 0.0,
                        "stage": stage,
                        "lr_scale": scale,
                    }
                )
    return groups


def _lr_scales(stages: list[tuple[str, list[str]]], layer_decay: float | None) -> list[float]:
    """Per stage: ``layer_decay ** (K + 1 - i)`` along each backbone, 1 for necks and heads."""
    if layer_decay is None:
        return [1.0] * len(stages)
    # stages of one backbone are consecutive; a backbone's stages end at its neck or at
    # the next backbone's stem
    runs: list[list[int]] = []
    for i, (name, _) in enumerate(stages):
        leaf = name.rpartition("/")[2]
        if leaf in (HEAD, NECK):
            continue
        if leaf == "stem" or not runs:
            runs.append([])
        runs[-1].append(i)
    scales = [1.0] * len(stages)
    for run in runs:
        for position, i in enumerate(run):
            scales[i] = layer_decay ** (len(run) - position)
    return scales


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names a module's ``no_weight_decay()`` returns (timm's convention)."""
    names: set[str] = set()
    for path, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if not callable(method):
            continue
        try:
            listed = method()
        except Exception:  # another library's method: without its list, the 1-d rule stands
            continue
        names.update(f"{path}.{n}" if path else str(n) for n in listed)
    return names


def _patterns(no_decay: Iterable[str]) -> list[str]:
    if isinstance(no_decay, str):
        no_decay = [no_decay]
    patterns = list(no_decay)
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(
            f"no_decay must be parameter-name patterns (non-empty strings), got {bad!r}"
        )
    return patterns


def _check_number(
    label: str,
    value: Any,
    *,
    low: float,
    low_open: bool = False,
    high: float | None = None,
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (high is None or value <= high)
    if not ok:
        bound = (
            f"({low:g}, {high:g}]"
            if high is not None
            else (f"> {low:g}" if low_open else f">= {low:g}")
        )
        raise ValueError(f"{label} must be a finite number {bound}, got {value!r}")


_Classes = dict[str, dict[str, type[nn.Module] | None]]
"""Norm classes by family (``plain``, timm's ``act``) and kind."""


# -- norm conversion -----------------------------------------------------------------------
def convert_norm(model: nn.Module, kind: str, *, process_group: Any = None) -> nn.Module:
    """Convert every BatchNorm of ``model`` to ``kind``, keeping what trains and what not.

    ``"syncbatchnorm"`` (for DDP), ``"frozen_batchnorm"`` (torchvision's
    ``FrozenBatchNorm2d``: fixed statistics and affine, what detectron2 trains detectors
    with) or ``"batchnorm"``. timm's norm+activation layers become their timm
    counterparts (``SyncBatchNormAct``, ``FrozenBatchNormAct2d``, ``BatchNormAct2d``).
    Weights and statistics are kept (the same ``Parameter`` objects where both kinds
    have them, so an optimizer made before still holds them), and so are
    ``requires_grad`` and each module's mode: frozen stages and ``norm_eval`` norms stay
    in eval. Parameters made from a frozen norm's buffers train unless they are in a
    frozen stage. Unlike ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, this also
    converts back.

    Args:
        model: any module; converted in place.
        kind: one of :data:`NORM_KINDS`.
        process_group: for ``"syncbatchnorm"``, the group to synchronize over.

    Returns:
        ``model`` (a new module only where ``model`` itself is a norm).

    Raises:
        UnknownNameError: ``kind`` is not one of :data:`NORM_KINDS` (a ValueError).
        ValueError: ``process_group`` given for another kind.
    """
    if kind not in NORM_KINDS:
        raise UnknownNameError("norm kind", str(kind), NORM_KINDS)
    if process_group is not None and kind != "syncbatchnorm":
        raise ValueError(f"process_group is for kind='syncbatchnorm', not {kind!r}")
    frozen = _frozen_by_stage(model)
    return _convert(model, "", kind, process_group, frozen, _norm_classes())


def _frozen_by_stage(model: nn.Module) -> set[str]:
    """Names of the modules in the stages a backbone's ``frozen_stages`` freezes: each
    module is in the stage of its first parameter, or of its nearest ancestor's (a frozen
    norm has buffers only)."""
    found = _backbones(model)
    frozen_stages: set[str] = set()
    for path, backbone in found:
        count = max(int(getattr(backbone, "frozen_stages", -1)) + 1, 0)
        names = [name for name, _ in backbone.stage_params()][:count]
        frozen_stages.update(f"{path}/{n}" if len(found) > 1 else n for n in names)
    owner = {name: stage for stage, names in model_stages(model) for name in names}
    return {name for name, stage in _module_stages(model, owner).items() if stage in frozen_stages}


def _convert(
    module: nn.Module, path: str, kind: str, group: Any, frozen: set[str], classes: _Classes
) -> nn.Module:
    new = _converted_norm(module, path, kind, group, frozen, classes)
    if new is not None:
        return new
    for name, child in list(module.named_children()):
        child_path = f"{path}.{name}" if path else name
        converted = _convert(child, child_path, kind, group, frozen, classes)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _norm_classes() -> _Classes:
    """The classes per family (plain, timm's norm+act) and kind; timm's only once imported
    (a model holding timm's layers has imported timm)."""
    plain: dict[str, type[nn.Module] | None] = {
        "batchnorm": nn.BatchNorm2d,
        "syncbatchnorm": nn.SyncBatchNorm,
        "frozen_batchnorm": None,
    }
    misc = sys.modules.get("torchvision.ops.misc")
    plain["frozen_batchnorm"] = getattr(misc, "FrozenBatchNorm2d", None)
    act: dict[str, type[nn.Module] | None] = dict.fromkeys(NORM_KINDS)
    timm_layers = sys.modules.get("timm.layers")
    if timm_layers is not None:
        act = {
            "batchnorm": timm_layers.BatchNormAct2d,
            "syncbatchnorm": timm_layers.SyncBatchNormAct,
            "frozen_batchnorm": timm_layers.FrozenBatchNormAct2d,
        }
    return {"plain": plain, "act": act}


def _family_and_kind(module: nn.Module, classes: _Classes) -> tuple[str, str] | None:
    # timm's classes subclass torch's, and SyncBatchNorm is no BatchNorm2d: the order holds
    for family in ("act", "plain"):
        for kind in ("syncbatchnorm", "frozen_batchnorm", "batchnorm"):
            cls = classes[family][kind]
            if cls is not None and isinstance(module, cls):
                return family, kind
    return None


def _converted_norm(
    module: nn.Module, path: str, kind: str, group: Any, frozen: set[str], classes: _Classes
) -> nn.Module | None:
    found = _family_and_kind(module, classes)
    if found is None:
        return None
    family, source = found
    if source == kind:
        return module
    if kind == "frozen_batchnorm" and family == "plain":
        from torchvision.ops.misc import FrozenBatchNorm2d  # torchvision's, as detectors use

        target: type[nn.Module] = FrozenBatchNorm2d
    else:
        cls = classes[family][kind]
        if cls is None:  # pragma: no cover - a timm class exists once timm is imported
            raise TypeError(f"no {kind} counterpart for {type(module).__name__}")
        target = cls
    m: Any = module
    features, eps = int(m.running_mean.shape[0]), float(m.eps)
    if kind == "frozen_batchnorm":
        new: Any = target(features, eps=eps)
    else:
        momentum = getattr(m, "momentum", 0.1)
        extra = {"process_group": group} if kind == "syncbatchnorm" else {}
        new = target(features, eps=eps, momentum=momentum, **extra)
    if family == "act":
        new.act, new.drop = m.act, m.drop
    _move_state(m, new, path, kind, frozen)
    new.train(module.training)
    return new


def _move_state(old: Any, new: Any, path: str, kind: str, frozen: set[str]) -> None:
    for buffer in ("running_mean", "running_var"):
        getattr(new, buffer).data.copy_(getattr(old, buffer).data)
    if (
        hasattr(new, "num_batches_tracked")
        and getattr(old, "num_batches_tracked", None) is not None
    ):
        new.num_batches_tracked.data.copy_(old.num_batches_tracked.data)
    for name in ("weight", "bias"):
        value = getattr(old, name, None)
        target = getattr(new, name)
        if value is None:  # affine=False: the identity affine
            continue
        if kind == "frozen_batchnorm":
            target.data.copy_(value.data)
        elif isinstance(value, nn.Parameter):
            setattr(new, name, value)  # the same tensor: requires_grad and optimizers hold
        else:  # from a frozen norm's buffer: it trains unless its stage is frozen
            param = nn.Parameter(value.detach().clone(), requires_grad=path not in frozen)
            setattr(new, name, param)


# -- trainability --------------------------------------------------------------------------
@dataclass(frozen=True)
class StageReport:
    """One stage's line of :class:`Trainability`.

    Attributes:
        stage: its name (``"stem"``, ``"layer1"``, ``"head"``).
        trainable_tensors, frozen_tensors: parameters with and without ``requires_grad``.
        trainable_params, frozen_params: their element counts.
        norms_train, norms_eval: normalization layers in train and in eval mode.
    """

    stage: str
    trainable_tensors: int
    frozen_tensors: int
    trainable_params: int
    frozen_params: int
    norms_train: int
    norms_eval: int


@dataclass(frozen=True)
class Trainability:
    """What trains in a model, stage by stage (:func:`trainability`); ``str()`` is a table."""

    stages: tuple[StageReport, ...]

    def __getitem__(self, stage: str) -> StageReport:
        for report in self.stages:
            if report.stage == stage:
                return report
        raise KeyError(f"no stage {stage!r}; stages: {', '.join(r.stage for r in self.stages)}")

    def __str__(self) -> str:
        head = ("stage", "trainable", "frozen", "trainable params", "frozen params", "norms")
        rows = [
            (
                r.stage,
                str(r.trainable_tensors),
                str(r.frozen_tensors),
                f"{r.trainable_params:,}",
                f"{r.frozen_params:,}",
                f"{r.norms_train} train / {r.norms_eval} eval",
            )
            for r in self.stages
        ]
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]
        ]
        return "\n".join(line.rstrip() for line in lines)


def trainability(model: nn.Module) -> Trainability:
    """Per stage (see :func:`model_stages`) and for the head: trainable and frozen
    parameter tensors and counts, and how many norms are in train and in eval mode.

    Example:
        >>> print(trainability(create_backbone("resnet18", frozen_stages=1)))  # doctest: +SKIP
        stage   trainable  frozen  trainable params  frozen params  norms
        stem    0          2       0                 9,536          0 train / 1 eval
        layer1  0          12      0                 147,968        0 train / 4 eval
        ...
    """
    params = dict(model.named_parameters())
    stages = model_stages(model)
    owner = {name: stage for stage, names in stages for name in names}
    norms: dict[str, list[bool]] = {stage: [] for stage, _ in stages}
    module_stage = _module_stages(model, owner)
    for name, module in model.named_modules():
        if is_norm(module):
            norms.setdefault(module_stage[name], []).append(module.training)
    reports = []
    for stage, names in stages:
        live = [params[n] for n in names if params[n].requires_grad]
        dead = [params[n] for n in names if not params[n].requires_grad]
        reports.append(
            StageReport(
                stage,
                len(live),
                len(dead),
                sum(p.numel() for p in live),
                sum(p.numel() for p in dead),
                sum(norms.get(stage, [])),
                len(norms.get(stage, [])) - sum(norms.get(stage, [])),
            )
        )
    return Trainability(tuple(reports))


def _module_stages(model: nn.Module, owner: dict[str, str]) -> dict[str, str]:
    """Each module's stage: that of the first parameter under it, or under its nearest
    ancestor that has one (a frozen norm has buffers only); one pass over the parameters."""
    first: dict[str, str] = {}
    for param, _ in model.named_parameters():
        parts = param.split(".")[:-1]
        for depth in range(len(parts) + 1):
            first.setdefault(".".join(parts[:depth]), owner.get(param, HEAD))
    stages = {}
    for name, _ in model.named_modules():
        path = name
        while path not in first and path:
            path = path.rpartition(".")[0]
        stages[name] = first.get(path, HEAD)
    return stages
