"""Another library's feature extractor under the backbone contract: :class:`ZooBackbone`.

The wrapped extractor (timm's ``features_only`` model, a torchvision FX extractor) is run
once when the backbone is made, on a small image, with a hook on every module. From that
run, not from the library's metadata:

- each returned map's layout: NHWC maps (Swin, MaxViT stages in timm) are permuted to
  NCHW, a free view whose strides are channels_last;
- each returned level's channels and stride, so ``feature_info`` is what the forward
  gives (timm's claims are kept in ``metadata_fixes`` where they differ);
- whether each level has ``ceil(size / stride)`` cells at sizes the strides do not
  divide, as a ResNet's do (one more run, at such a size). Where it has not (ConvNeXt's
  and Swin's unpadded patch stems round down; HRNet's branches then disagree), the
  input is padded on the right and bottom to a multiple of the strides, as detectors
  pad their batches, and each map is cut to ``ceil(size / stride)`` cells;
- the order in which modules run, which defines the stages for ``frozen_stages``: the
  stem is everything that runs before the first level of stride 4 or more begins, and
  stage k everything that runs from there until the k-th such level has finished (a
  plain ViT: its blocks). Parameters owned directly by a container of those levels
  (position embeddings, class tokens) belong to the stem.

This module builds no network of its own beyond the optional pyramid it is given.
"""

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones.errors import BackboneContractError
from backbones.features import FeatureInfo, FeatureLevel

__all__ = [
    "Measured",
    "ZooBackbone",
    "check_frozen_stages",
    "checkpointing_switches",
    "find_module",
    "find_stage",
    "is_norm",
    "measure",
    "pad_multiple",
    "span_of",
    "stage_partition",
]

STEM_STRIDE = 4
"""Levels of a smaller stride (timm's stride-2 level 0) belong to the stem."""


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (``norm_eval`` keeps it in eval)."""
    return isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm) or type(
        module
    ).__name__.lower().endswith(("norm", "norm2d", "normact2d", "norm1d"))


def find_module(root: nn.Module, path: str) -> str | None:
    """The name in ``root`` of the module a library calls ``path``, or None.

    timm's feature wrappers rename modules: ``stages.0`` becomes ``stages_0`` when they
    flatten sequentials, and ``model.stages.0`` when they wrap the whole network. A path
    that only one module's name ends with is that module.
    """
    names = dict(root.named_modules())
    parts = path.split(".")
    for prefix in ("", "model."):
        for cut in range(1, len(parts) + 1):
            candidate = prefix + "_".join(parts[:cut]) + ("." if cut < len(parts) else "")
            candidate += ".".join(parts[cut:])
            if candidate in names:
                return candidate
    # a path relative to an inner module (timm's gemma4: blocks.13 is encoder.blocks.13)
    inner = [n for n in names if n.endswith("." + path)]
    return inner[0] if len(inner) == 1 else None


def find_stage(root: nn.Module, path: str, levels: int) -> str | None:
    """The module of a network with ``levels`` levels that a library calls ``path``.

    As :func:`find_module`, and where that finds nothing and ``path`` ends in a stage
    number (timm names ``block.0`` for Twins' ``blocks.0`` and MViTv2's ``stages.0``):
    that child of the container holding one numbered child per level, the container
    whose name starts like ``path`` where there are several.
    """
    found = find_module(root, path)
    head, _, number = path.rpartition(".")
    if found is not None or not number.isdigit():
        return found
    containers = []
    for name, module in root.named_modules():
        children = [n for n, _ in module.named_children()]
        if len(children) == levels and all(n.isdigit() for n in children):
            containers.append(name)
    alike = [n for n in containers if n.rpartition(".")[2].startswith(head.rstrip("s"))]
    chosen = alike or containers
    return f"{chosen[0]}.{number}" if len(chosen) == 1 else None


@dataclass(frozen=True)
class Measured:
    """What one run of an extractor showed.

    Attributes:
        size: the (height, width) it ran at.
        shapes: each returned map's shape, as returned.
        nhwc: which returned maps are channels-last (B, H, W, C).
        spans: module name -> (first entry, last exit) in the run's order of events.
    """

    size: tuple[int, int]
    shapes: tuple[tuple[int, ...], ...]
    nhwc: tuple[bool, ...]
    spans: dict[str, tuple[int, int]]


def _outputs(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, list | tuple):
        return list(out)
    return [out]


def measure(
    body: nn.Module, sizes: Sequence[tuple[int, int]], in_chans: int, claimed: Sequence[int]
) -> Measured:
    """Run ``body`` once (eval, no gradients) at the first size it takes, with hooks.

    Args:
        body: the extractor; returns a list, tuple or dict of maps.
        sizes: (height, width) candidates, tried in order until one runs.
        in_chans: input channels.
        claimed: the channels the library says each returned map has, to tell NHWC
            from NCHW.

    Raises:
        BackboneContractError: it runs at none of the sizes, or returns something
            other than 4-d maps; the message says what it returned.
    """
    counter = itertools.count()
    spans: dict[str, list[int]] = {}
    handles = []
    for name, module in body.named_modules():

        def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
            spans.setdefault(name, [next(counter), -1])

        def post(_m: nn.Module, _a: Any, _o: Any, name: str = name) -> None:
            spans[name][1] = next(counter)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    failures = []
    try:
        with _evaluating(body):
            for height, width in sizes:
                spans.clear()
                try:
                    out = _outputs(body(torch.zeros(1, in_chans, height, width)))
                except Exception as err:  # another library's network: try the next size
                    failures.append(f"{height}x{width}: {type(err).__name__}: {err}")
                    continue
                break
            else:
                raise BackboneContractError(
                    f"the network runs at none of the sizes tried ({'; '.join(failures)})"
                )
    finally:
        for handle in handles:
            handle.remove()
    nhwc = []
    for i, (fmap, chs) in enumerate(zip(out, claimed, strict=False)):
        if not isinstance(fmap, Tensor) or fmap.dim() != 4:
            got = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise BackboneContractError(
                f"output {i} is {got}, not a (batch, channels, height, width) feature map"
            )
        nhwc.append(fmap.shape[1] != chs and fmap.shape[3] == chs)
    if any(o.shape[1] == o.shape[3] for o in out):
        # a square map with as many cells a side as channels reads both ways: run a
        # rectangle twice as wide, where only the width of NCHW or NHWC doubles
        try:
            with _evaluating(body):
                wide = _outputs(body(torch.zeros(1, in_chans, height, 2 * width)))
        except Exception:  # a fixed-size network: the channel count decided above stands
            wide = out
        nhwc = [
            bool(w.shape[2] == 2 * o.shape[2]) if o.shape[1] == o.shape[3] else n
            for o, w, n in zip(out, wide, nhwc, strict=True)
        ]
    return Measured(
        (height, width),
        tuple(tuple(o.shape) for o in out),
        tuple(nhwc),
        {name: (span[0], span[1]) for name, span in spans.items()},
    )


@contextlib.contextmanager
def _evaluating(body: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a measuring run; every module's mode is restored."""
    modes = [(m, m.training) for m in body.modules()]
    try:
        body.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def pad_multiple(body: nn.Module, run: Measured, strides: Sequence[int], in_chans: int) -> int:
    """What the input must be padded to a multiple of, so that each returned map has
    ``ceil(size / stride)`` cells; 1 where the network already gives that.

    ``body`` runs once more, at a size just below a multiple of the strides in height and
    just above one in width (63x33 for strides up to 32, after 64x64), the sizes at which
    a stem that rounds down, or branches that disagree, show. Where it gives other shapes
    or does not run there, the answer is the strides' least common multiple: the padded
    image is then the measured one (at which the strides are exact) or one like it.
    A measured size the strides do not divide (a fixed-size network) gives 1.
    """
    multiple = math.lcm(*strides)
    height, width = run.size
    if multiple == 1 or height % multiple or width % multiple or height < 2 * multiple:
        return 1
    size = (height - 1, width - multiple + 1)
    try:
        with _evaluating(body):
            out = _outputs(body(torch.zeros(1, in_chans, *size)))
        cells = [
            (o.shape[1], o.shape[2]) if nhwc else (o.shape[2], o.shape[3])
            for o, nhwc in zip(out, run.nhwc, strict=True)
        ]
    except Exception:  # another library's network refuses the size: padding gives it one
        return multiple
    wanted = [(-(-size[0] // s), -(-size[1] // s)) for s in strides]
    return 1 if cells == wanted else multiple


def measured_levels(
    levels: Sequence[FeatureLevel], out_indices: Sequence[int], run: Measured
) -> tuple[list[FeatureLevel], list[str]]:
    """``levels`` with the returned ones' channels and strides as measured, and the fixes.

    Returns:
        The levels, and one line per claim that differed from the run.
    """
    height, width = run.size
    fixed = list(levels)
    fixes = []
    for index, shape, nhwc in zip(out_indices, run.shapes, run.nhwc, strict=True):
        chs, h, w = (shape[3], shape[1], shape[2]) if nhwc else (shape[1], shape[2], shape[3])
        claim = levels[index]
        stride = _stride(height, h, claim.reduction)
        if stride != _stride(width, w, claim.reduction) or stride == 0:
            raise BackboneContractError(
                f"level {index} ({claim.module}) is {h}x{w} on the {height}x{width} image the "
                f"network is measured with when it is built: no single stride gives that"
            )
        if (chs, stride) != (claim.num_chs, claim.reduction):
            fixes.append(
                f"level {index} ({claim.module}): the library says {claim.num_chs} channels "
                f"at stride {claim.reduction}, the network gives {chs} at stride {stride}"
            )
            fixed[index] = FeatureLevel(index, chs, stride, claim.module)
    return fixed, fixes


def _stride(size: int, out: int, claim: int) -> int:
    """The stride that maps ``size`` to ``out`` (ceil or floor rounding), or 0.

    The library's ``claim`` comes first: LeViT's stride-64 level is 4 cells of a 224 px
    image (ceil), which stride 56 explains as well, but 64 is the true one.
    """
    for stride in (claim, round(size / out), math.ceil(size / out), size // out):
        if stride > 0 and out in (math.ceil(size / stride), size // stride):
            return stride
    return 0


def span_of(name: str, spans: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    """When module ``name`` ran: its own span, or (a ModuleList, a container a wrapper
    never calls itself) from the first of its modules to run to the last; None if none ran.
    """
    if name in spans:
        return spans[name]
    inside = [s for n, s in spans.items() if n.startswith(name + ".")]
    if not inside:
        return None
    return min(s[0] for s in inside), max(s[1] for s in inside)


def check_frozen_stages(
    frozen_stages: int, built: int, stages: Sequence[str], returned: Sequence[int]
) -> None:
    """Refuse ``frozen_stages`` beyond the ``built`` stages (``stages``: their module names).

    Raises:
        ValueError: out of range; the message names both ends and the stages.
    """
    if not -1 <= frozen_stages <= built:
        raise ValueError(
            f"frozen_stages={frozen_stages} is out of range; accepted: -1 (nothing) .. "
            f"{built} (the stem and every stage built for out_indices={tuple(returned)}: "
            f"{', '.join(stages[:built]) or 'none'})"
        )


def frozen_module_names(
    body: nn.Module, spans: dict[str, tuple[int, int]], stages: Sequence[str], frozen_stages: int
) -> tuple[list[str], list[str]]:
    """The modules ``frozen_stages`` freezes, and the containers whose own parameters go too.

    Args:
        body: the extractor.
        spans: the run's module spans (see :func:`measure`).
        stages: the module names of the stage levels (stride 4 or more), in order.
        frozen_stages: -1 nothing, 0 the stem, k the stem and the first k stages.

    Returns:
        (modules entirely frozen, ancestors whose direct parameters are frozen).
    """
    if frozen_stages < 0 or not stages:
        return [], []
    first = stages[0]
    if frozen_stages == 0:
        boundary, target = spans[first][0], first
    else:
        target = stages[frozen_stages - 1]
        boundary = spans[target][1]
    # Containers of the target run before it and after it: they are not frozen whole.
    # (A wrapper may call its network's method, not the network: read names, not spans.)
    names = [n for n, _ in body.named_modules()]
    ancestors = {n for n in names if n == "" or target.startswith(n + ".")}
    frozen = [n for n, (start, _) in spans.items() if start < boundary and n not in ancestors]
    owners = [n for n in names if n == "" or first.startswith(n + ".")]
    return frozen, owners


def checkpointing_switches(body: nn.Module) -> list[nn.Module]:
    """The modules whose ``grad_checkpointing`` flag (timm's convention) turns gradient
    checkpointing on: the network's own (its stages', which checkpoint block by block)
    where it has them, else the feature wrapper's (stage by stage); [] when none."""
    switches = [
        m for m in body.modules() if isinstance(getattr(m, "grad_checkpointing", None), bool)
    ]
    inner = [m for m in switches if m is not body]
    return inner or switches


def stage_partition(
    body: nn.Module, spans: dict[str, tuple[int, int]], stages: Sequence[str]
) -> list[list[str]]:
    """Each stage's parameter names in ``body``: the stem's, then each stage's in order.

    A parameter is in the first stage that ``frozen_stages`` would freeze it with (see
    :func:`frozen_module_names`); what runs after the last stage (a final norm) is in
    the last stage.
    """
    assigned: dict[str, int] = {}
    modules = dict(body.named_modules())

    def claim(module: str, stage: int, recurse: bool = True) -> None:
        for param, _ in modules[module].named_parameters(recurse=recurse):
            assigned.setdefault(f"{module}.{param}" if module else param, stage)

    for k in range(len(stages) + 1):
        frozen, owners = frozen_module_names(body, spans, stages, k)
        for name in owners if k == 0 else ():
            claim(name, 0, recurse=False)
        for name in frozen:
            claim(name, k)
    partition: list[list[str]] = [[] for _ in range(len(stages) + 1)]
    for param, _ in body.named_parameters():
        partition[assigned.get(param, len(stages))].append(param)
    return partition


class ZooBackbone(nn.Module):
    """A feature extractor of another library, under the backbone contract.

    Build one with the namespace's factory (``create_backbone("timm/...")``); the
    arguments are what that factory measured.

    Args:
        body: the extractor; its forward returns the maps of ``out_indices`` (list or
            dict), in order.
        levels: every level of the network, with the returned ones measured.
        out_indices: the returned level numbers, resolved.
        nhwc: per returned map, whether it comes channels-last.
        in_chans: input channels.
        probe_input_size: a (height, width) the network takes, for the contract check.
        frozen: module names of ``body`` to freeze; owners: modules whose direct
            parameters to freeze.
        frozen_stages: the option's value, kept for ``backbone_config`` readers.
        norm_eval: keep every norm of ``body`` in eval mode.
        return_dict: return ``{module: map}``.
        neck: optional module taking the NCHW maps and returning the final list
            (the simple pyramid); its levels are then ``levels``.
        metadata_fixes: where the library's metadata differed from the run.
        stages: each stage's name and parameter names in ``body`` (stem first; see
            :func:`stage_partition`), for :meth:`stage_params`.
        pad_to: pad the input on the right and bottom to a multiple of this, and cut
            each map of ``body`` to ``ceil(size / stride)`` cells (``body_strides``);
            1 (the default) runs the input as it is (see :func:`pad_multiple`).
        body_strides: the stride of each map ``body`` returns; needed with ``pad_to``.

    Attributes:
        feature_info_measured: True without a neck: every level of ``feature_info`` is
            what the build-time run returned, so the factory's contract check does not
            run the network a second time.
    """

    def __init__(
        self,
        body: nn.Module,
        levels: Sequence[FeatureLevel],
        out_indices: Sequence[int],
        *,
        nhwc: Sequence[bool],
        in_chans: int,
        probe_input_size: tuple[int, int],
        frozen: Sequence[str] = (),
        owners: Sequence[str] = (),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        return_dict: bool = False,
        neck: nn.Module | None = None,
        metadata_fixes: Sequence[str] = (),
        pad_to: int = 1,
        body_strides: Sequence[int] = (),
        stages: Sequence[tuple[str, Sequence[str]]] = (),
    ) -> None:
        super().__init__()
        if pad_to > 1 and len(body_strides) != len(nhwc):
            raise ValueError(
                f"pad_to={pad_to} needs the stride of each of the {len(nhwc)} maps, "
                f"got body_strides={tuple(body_strides)}"
            )
        self.pad_to = pad_to
        self._body_strides = [int(s) for s in body_strides]
        self.body = body
        self.neck = neck
        self.feature_info = FeatureInfo(levels, out_indices)
        self.in_chans = in_chans
        self.probe_input_size = probe_input_size
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.return_dict = return_dict
        self.metadata_fixes = list(metadata_fixes)
        self._nhwc = [bool(v) for v in nhwc]
        # feature_info was read off the extractor's forward; a neck's levels were not
        self.feature_info_measured = neck is None
        self._names = self.feature_info.module_name()
        self._stages = [(name, [f"body.{p}" for p in params]) for name, params in stages]
        modules = dict(body.named_modules())
        self._frozen = list(frozen)  # names: a norm conversion may replace the modules
        for name in self._frozen:
            modules[name].requires_grad_(False)
        for name in owners:
            for param in modules[name].parameters(recurse=False):
                param.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "ZooBackbone":
        """Set the mode; frozen stages (and with ``norm_eval`` every norm) stay in eval."""
        super().train(mode)
        if mode:
            modules = dict(self.body.named_modules())
            for name in self._frozen:
                modules[name].eval()
            if self.norm_eval:
                for module in self.body.modules():
                    if is_norm(module):
                        module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of keeping them, with the
        wrapped network's own checkpointing (timm's: block by block where its stages
        have it, non-reentrant unless ``TIMM_REENTRANT_CKPT`` says otherwise).

        Raises:
            ValueError: the network has no checkpointing (torchvision's models).
        """
        switches = checkpointing_switches(self.body)
        if not switches and enable:
            raise ValueError(
                "this network has no gradient checkpointing (no module with timm's "
                "grad_checkpointing switch)"
            )
        for module in switches:
            module.grad_checkpointing = bool(enable)  # type: ignore[assignment]

    def stage_params(self) -> list[tuple[str, list[str]]]:
        """Each stage's parameter names, in network order: ``("stem", [...])``, then one
        entry per stage (a plain ViT: per block), named as the library names the level,
        and ``("neck", [...])`` for a pyramid. ``frozen_stages=k`` freezes the first
        ``k + 1``; :func:`backbones.training.param_groups` decays the learning rate
        along them."""
        # as built; a norm conversion may have turned some parameters into buffers
        # (frozen BatchNorm) or back, so the names are read against the current ones
        current = [n for n, _ in self.named_parameters() if not n.startswith("neck.")]
        present = set(current)
        listed = {p for _, params in self._stages for p in params}
        stages = [(name, [p for p in params if p in present]) for name, params in self._stages]
        if stages:
            stages[-1][1].extend(p for p in current if p not in listed)
        if self.neck is not None:
            stages.append(("neck", [f"neck.{p}" for p, _ in self.neck.named_parameters()]))
        return stages

    def forward(self, x: Tensor) -> list[Tensor] | dict[str, Tensor]:
        # Written so TorchScript compiles it: whether the wrapped network does is its own.
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected an input of shape (batch, {self.in_chans}, height, width), got "
                f"{list(x.shape)}"
            )
        maps = self._maps(x) if torch.jit.is_scripting() else self._maps_explained(x)
        if self.return_dict:
            named: dict[str, Tensor] = {}
            for i, name in enumerate(self._names):
                named[name] = maps[i]
            return named
        return maps

    @torch.jit.unused
    def _maps_explained(self, x: Tensor) -> list[Tensor]:
        """:meth:`_maps`, with a failure of the wrapped network (a size it does not take)
        explained: which input, and the size it ran at when the backbone was made."""
        try:
            return self._maps(x)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError, ValueError, IndexError) as err:
            name = dict(getattr(self, "backbone_config", None) or {}).get("name", "the network")
            height, width = self.probe_input_size
            raise ValueError(
                f"{name} failed on an input of shape {list(x.shape)} ({x.dtype}): "
                f"{type(err).__name__}: {err}. It ran on {height}x{width} images when it was "
                f"made; some networks take only some sizes (see the 'sizes' column of "
                f"the probe tables, docs/zoo/)"
            ) from err

    def _maps(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[2], x.shape[3]
        padded = self.pad_to > 1 and (height % self.pad_to != 0 or width % self.pad_to != 0)
        if padded:
            x = F.pad(x, (0, -width % self.pad_to, 0, -height % self.pad_to))
        out = self.body(x)
        maps: list[Tensor] = []
        if torch.jit.isinstance(out, dict[str, Tensor]):
            for fmap in out.values():
                maps.append(fmap)
        elif torch.jit.isinstance(out, list[Tensor]):
            for fmap in out:
                maps.append(fmap)
        elif not torch.jit.is_scripting():  # a tuple
            maps = list(out)
        for i, nhwc in enumerate(self._nhwc):
            if nhwc:
                maps[i] = maps[i].permute(0, 3, 1, 2)
            if padded:
                stride = self._body_strides[i]
                maps[i] = maps[i][:, :, : -(-height // stride), : -(-width // stride)]
        if self.neck is not None:
            maps = self.neck(maps, (height, width))
        return maps


def sizes_to_try(strides: Sequence[int], default: tuple[int, int] | None) -> list[tuple[int, int]]:
    """Probe sizes: the first multiple of the deepest stride that is at least twice it and
    32 px (64 for stride 32, 42 for a patch-14 ViT), then the library's default."""
    deepest = max(strides, default=32)
    side = deepest * max(2, math.ceil(32 / deepest))
    sizes = [(side, side)]
    if default is not None and default not in sizes:
        sizes.append(default)
    return sizes
