"""What each feature level of a backbone costs and sees, measured: ``backbones info``.

For every map a backbone returns, :func:`level_table` reports its shape and what the
network has spent to produce it, all read from real forwards at one input size (batch
1), never derived from the architecture's description. Only the backbone contract is
used (an ``nn.Module`` whose ``feature_info`` describes the maps its forward returns),
so the table works the same for this library's ResNets and for the zoo's wrappers.

The numbers, and the rules that define them:

- **produced at**: a level's map is produced by the last operation that wrote into the
  memory of the tensor the forward returns for it: the one that allocated it, or a later
  in-place one (a ReLU). Views write nothing: an NHWC map permuted to NCHW at the end of
  the forward was produced where its stage ended. "Up to a level" means every operation
  run until then, in execution order, whichever branch it belongs to.
- **params**: elements of the distinct parameters read by an operation up to the level
  (a parameter read twice, or shared by two modules, counts once). Parameters that no
  operation reads (an unused head) count only in the total.
- **FLOPs**: as ``torch.utils.flop_counter.FlopCounterMode`` counts them, read when the
  level's map is produced: 2 per multiply-add of convolutions, matrix products and
  attention; element-wise work (norms, activations, pooling, additions) counts 0.
  GFLOPs = FLOPs / 1e9.
- **activation bytes**: bytes of every new tensor the forward has allocated up to the
  level, in an inference forward at batch 1 (views and in-place results, such as an
  in-place ReLU, allocate nothing). That is the memory those maps would need if none
  were freed: an upper bound of inference memory, and close to what a training forward
  keeps for the backward.
- **receptive field**: measured at the full input size, by running the model's forward
  with other tensors (``torch.func.functional_call``; the model is not touched): every
  parameter a positive random value divided by its fan-in, ReLU-like activations
  (relu, relu6, hardtanh, hardswish, hardsigmoid) the identity and max pooling average
  pooling over the same windows, so that every path through the network is active and
  no sum cancels, whatever the real weights and input. The gradient of the sum over
  channels at the centre position ``(H // 2, W // 2)`` of the level's map is taken
  with respect to a random positive input, one backward per level; the receptive field
  is the height and width of the bounding box of its non-zero support. That is the
  theoretical receptive field, cut by the image: where the support reaches the image's
  border the true field is at least that large (``receptive_field_clipped``). The
  probe runs in float32 and again in float64 when a float32 gradient comes near
  underflow (very deep networks, whose field edges are reached by products of many
  small weights) or overflows.

This module measures; it builds no network and leaves the model as it found it
(training flags restored, parameters unchanged).
"""

import math
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from backbones._checks import check_int, is_int
from backbones.contract import feature_info_of
from backbones.features import FeatureInfo

__all__ = ["LevelStats", "LevelTable", "format_table", "level_table"]

_SEED = 0
"""Inputs and probe weights are drawn from a generator seeded with this: same table twice."""


@dataclass(frozen=True)
class LevelStats:
    """One returned feature level, measured; cumulative figures count everything run
    until the level's map is produced (see the module docstring for the rules).

    Attributes:
        level: the level number, as ``feature_info.out_indices`` gives it.
        module: the module name ``feature_info`` gives for it.
        channels: channels, as ``feature_info`` describes them.
        stride: stride, as ``feature_info`` describes it.
        shape: the shape of the map the forward returned (batch 1, NCHW).
        params: parameter elements read up to the level.
        flops: FLOPs up to the level, as torch's flop counter counts them (2 per
            multiply-add).
        activation_bytes: bytes of the tensors allocated up to the level.
        receptive_field: ``(height, width)`` of the measured receptive field of the map's
            centre position, in input pixels; None where it was not measured.
        receptive_field_clipped: ``(height, width)``: whether the field reached the
            image's border in that direction, so that the true field is at least as large.
    """

    level: int
    module: str
    channels: int
    stride: int
    shape: tuple[int, ...]
    params: int
    flops: int
    activation_bytes: int
    receptive_field: tuple[int, int] | None
    receptive_field_clipped: tuple[bool, bool] = (False, False)

    @property
    def gflops(self) -> float:
        """FLOPs / 1e9."""
        return self.flops / 1e9


@dataclass(frozen=True)
class LevelTable:
    """The measured levels of a backbone and the totals of its whole forward.

    Attributes:
        levels: one row per returned map, in the order the forward returns them.
        input_shape: the input the forward ran on, ``(1, in_chans, height, width)``.
        params: elements of all the model's distinct parameters (used or not).
        flops: FLOPs of the whole forward, as torch's flop counter counts them.
        activation_bytes: bytes of the tensors the whole forward allocated.
    """

    levels: tuple[LevelStats, ...]
    input_shape: tuple[int, int, int, int]
    params: int
    flops: int
    activation_bytes: int

    @property
    def gflops(self) -> float:
        """FLOPs of the whole forward / 1e9."""
        return self.flops / 1e9


def level_table(
    model: nn.Module,
    *,
    img_size: int | tuple[int, int] = 224,
    in_chans: int | None = None,
    receptive_field: bool = True,
) -> LevelTable:
    """Measure each level a backbone returns: shape, params, FLOPs, memory, receptive field.

    Two passes over a random image of batch 1: one inference forward in eval mode and
    the model's own dtype, counting FLOPs and watching each operation; then, for the
    receptive fields, the forward run with probe tensors in place of the parameters,
    with gradients, and one backward per level (see the module docstring for every
    rule). The model's training flags are restored and its parameters never change.

    Args:
        model: a backbone (an ``nn.Module`` whose ``feature_info`` describes the maps
            its forward returns), e.g. from :func:`backbones.create_backbone`.
        img_size: the input's side, or ``(height, width)``.
        in_chans: input channels; None reads them from the model (``backbone_config``,
            else the first module with ``in_channels``, else 3).
        receptive_field: measure the receptive fields (one backward per level); with
            False, ``LevelStats.receptive_field`` is None.

    Returns:
        A :class:`LevelTable`: one :class:`LevelStats` per returned map, and the totals.

    Raises:
        TypeError: ``model`` is not a backbone, or a size is not an int.
        ValueError: a size is not positive, the input does not go through the model (the
            message names the size and the model's deepest stride), or the forward
            returns something other than the maps ``feature_info`` describes.

    Example:
        >>> table = level_table(create_backbone("resnet18"), img_size=64)  # doctest: +SKIP
        >>> [(row.stride, row.shape, row.receptive_field) for row in table.levels][0]
        (4, (1, 64, 16, 16), (43, 43))
        >>> print(format_table(table))  # doctest: +SKIP
    """
    info = feature_info_of(model, "level_table")
    height, width = _size_pair(img_size)
    chans = _in_chans(model) if in_chans is None else check_int("in_chans", in_chans)
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(_SEED)
    x = torch.randn(1, chans, height, width, generator=generator).to(device, dtype)

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        maps, produced, totals = _measure(model, info, x)
        fields = _receptive_fields(model, info, x, generator) if receptive_field else None
    finally:
        for m, mode in modes:
            m.training = mode

    rows = []
    for i, (level, module, chs, red, out) in enumerate(
        zip(
            info.out_indices,
            info.module_name(),
            info.channels(),
            info.reduction(),
            maps,
            strict=True,
        )
    ):
        measured = fields[i] if fields is not None else None
        field, clipped = measured if measured is not None else (None, (False, False))
        params, flops, act = produced[i]
        rows.append(
            LevelStats(
                level, module, chs, red, tuple(out.shape), params, flops, act, field, clipped
            )
        )
    total_params = sum(p.numel() for p in model.parameters())
    return LevelTable(tuple(rows), (1, chans, height, width), total_params, totals[1], totals[2])


def format_table(table: LevelTable, *, markdown: bool = False) -> str:
    """The table as aligned text (or a Markdown table), with a total line.

    Columns: level, module, channels, stride, shape (measured, NCHW), params, GFLOPs and
    activation memory (MiB) up to the level, and the receptive field (height x width;
    ``>=`` where it reached the image's border; ``-`` where not measured).

    Args:
        table: from :func:`level_table`.
        markdown: a GitHub-flavoured Markdown table instead of aligned text.

    Returns:
        The table, lines joined by newlines, without a trailing newline.

    Example:
        >>> print(format_table(level_table(create_backbone("resnet18"))))  # doctest: +SKIP
    """
    header = [
        "level",
        "module",
        "channels",
        "stride",
        "shape",
        "params",
        "GFLOPs",
        "act. MiB",
        "RF (HxW)",
    ]
    body = [
        [
            str(row.level),
            row.module,
            str(row.channels),
            str(row.stride),
            "x".join(str(s) for s in row.shape),
            _count(row.params),
            _number(row.gflops),
            _number(row.activation_bytes / 2**20),
            _field(row),
        ]
        for row in table.levels
    ]
    total = [
        "total",
        "",
        "",
        "",
        "",
        _count(table.params),
        _number(table.gflops),
        _number(table.activation_bytes / 2**20),
        "",
    ]
    left = {0, 1, 4}  # text columns; numbers align right
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "| " + " | ".join(":---" if i in left else "---:" for i in range(len(header))) + " |",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in [*body, total]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body, total]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return ("  " + "  ".join(padded)).rstrip()

    return "\n".join(line(cells) for cells in [header, *body, total])


# -- input ------------------------------------------------------------------------------
def _size_pair(img_size: object) -> tuple[int, int]:
    if isinstance(img_size, tuple | list) and len(img_size) == 2:
        return check_int("img_size", img_size[0]), check_int("img_size", img_size[1])
    if is_int(img_size):
        side = check_int("img_size", img_size)
        return side, side
    raise TypeError(f"img_size must be a positive int or (height, width), got {img_size!r}")


def _in_chans(model: nn.Module) -> int:
    config = getattr(model, "backbone_config", None)
    if isinstance(config, Mapping) and is_int(config.get("in_chans")):
        return int(config["in_chans"])
    for module in model.modules():
        chans = getattr(module, "in_channels", None)
        if is_int(chans) and chans > 0:
            return chans
    return 3


def _level_maps(out: object, info: FeatureInfo) -> list[Tensor]:
    """The forward's maps in ``feature_info`` order (a list, or a dict by module name)."""
    names = info.module_name()
    if isinstance(out, Mapping):
        maps = [out.get(name) for name in names]
    elif isinstance(out, list | tuple):
        maps = list(out)
    else:
        maps = [out]
    tensors = [m for m in maps if isinstance(m, Tensor) and m.dim() == 4]
    if len(maps) != len(names) or len(tensors) != len(maps):
        got = (
            f"{type(out).__name__} of {len(out)}" if isinstance(out, Sized) else type(out).__name__
        )
        raise ValueError(
            f"the forward returned {got}, not the {len(names)} NCHW maps its feature_info "
            f"describes ({', '.join(names)})"
        )
    return tensors


# -- the counting pass --------------------------------------------------------------------
def _storage(t: Tensor) -> int | None:
    """An id of the memory ``t`` lives in, unique among live tensors; None if it has none."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, nested, meta without storage
        return None
    return ptr or None


class _Recorder(TorchDispatchMode):
    """Watches every operation below autograd; after each, snapshots the running totals.

    ``snapshots[k]`` is ``(params, flops, bytes)`` after the k-th operation (0: before
    any); ``written`` maps the memory of each live tensor to the last operation that
    wrote into it: the one that allocated it or, later, one that changed it in place.
    A view writes nothing, so an NHWC map permuted at the end of a forward was still
    produced where its values were.
    """

    def __init__(self, params: Mapping[int, int], flops: FlopCounterMode, x: Tensor) -> None:
        super().__init__()
        self.params = params
        self.flops = flops
        self.read: set[int] = set()
        self.param_total = 0
        self.bytes_total = 0
        self.snapshots: list[tuple[int, int, int]] = [(0, 0, 0)]
        self.written: dict[int, int] = {}
        if (ptr := _storage(x)) is not None:
            self.written[ptr] = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = set()
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, Tensor) and (ptr := _storage(t)) is not None:
                inputs.add(ptr)
                if ptr in self.params and ptr not in self.read:
                    self.read.add(ptr)
                    self.param_total += self.params[ptr]
        step = len(self.snapshots)
        schema = getattr(func, "_schema", None)  # higher-order operators have none
        mutates = bool(getattr(schema, "is_mutable", False))  # in place, or into out=
        for t in tree_leaves(out):
            if not isinstance(t, Tensor) or (ptr := _storage(t)) is None:
                continue
            fresh = ptr not in inputs  # a view or an in-place result allocates nothing
            if fresh:
                self.bytes_total += t.numel() * t.element_size()
            if fresh or mutates:
                self.written[ptr] = step
        self.snapshots.append((self.param_total, self.flops.get_total_flops(), self.bytes_total))
        return out


def _measure(
    model: nn.Module, info: FeatureInfo, x: Tensor
) -> tuple[list[Tensor], list[tuple[int, int, int]], tuple[int, int, int]]:
    """The maps, each level's ``(params, flops, bytes)`` when produced, and the totals."""
    params: dict[int, int] = {}
    for p in model.parameters():  # distinct parameters; shared ones are listed once
        if (ptr := _storage(p)) is not None:
            params[ptr] = params.get(ptr, 0) + p.numel()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter, _Recorder(params, counter, x) as recorder:
            out = model(x)
    except Exception as err:  # the network's own code: any error means "not this size"
        raise ValueError(_size_problem(x, info, err)) from err
    maps = _level_maps(out, info)
    produced = []
    for m in maps:  # a map no operation wrote (made outside the forward) counts at the end
        ptr = _storage(m)
        step = recorder.written.get(ptr, -1) if ptr is not None else -1
        produced.append(recorder.snapshots[step])
    return maps, produced, recorder.snapshots[-1]


def _size_problem(x: Tensor, info: FeatureInfo, err: Exception) -> str:
    stride = max(info.reduction())
    height, width = x.shape[-2:]
    fit = "x".join(str(-(-s // stride) * stride) for s in (height, width))
    return (
        f"an input of {height}x{width} does not go through this backbone (its deepest "
        f"stride is {stride}; sizes that are multiples of it, e.g. {fit}, usually do): "
        f"{type(err).__name__}: {err}"
    )


# -- the receptive-field pass ----------------------------------------------------------------
def _identity(x: Tensor, *args: Any, inplace: bool = False, **kwargs: Any) -> Tensor:
    return x if inplace else x.clone()


def _identity_inplace(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return x


def _avg_pool2d(
    x: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    kernel = tuple(kernel_size) if isinstance(kernel_size, Sequence) else (kernel_size,) * 2
    steps = kernel if stride is None or stride == [] or stride == () else stride
    if dilation not in (1, (1, 1), [1, 1]):  # avg_pool2d has no dilation: ones, dilated
        ones = torch.ones(x.shape[1], 1, *kernel, dtype=x.dtype, device=x.device)
        return F.conv2d(x, ones, None, steps, padding, dilation, groups=x.shape[1])
    return F.avg_pool2d(x, kernel, steps, padding, ceil_mode)


def _adaptive_avg_pool2d(x: Tensor, output_size: Any, return_indices: bool = False) -> Tensor:
    return F.adaptive_avg_pool2d(x, output_size)


_ALL_PATHS: dict[Callable[..., Any], Callable[..., Any]] = {
    F.relu: _identity,
    torch.relu: _identity,
    Tensor.relu: _identity,
    F.relu_: _identity_inplace,
    torch.relu_: _identity_inplace,
    Tensor.relu_: _identity_inplace,
    F.relu6: _identity,
    F.hardtanh: _identity,
    F.hardtanh_: _identity_inplace,
    F.hardswish: _identity,
    F.hardsigmoid: _identity,
    F.max_pool2d: _avg_pool2d,
    torch.max_pool2d: _avg_pool2d,
    F.adaptive_max_pool2d: _adaptive_avg_pool2d,
}
"""Operations whose gradient is zero somewhere, and stand-ins whose gradient never is."""


class _AllPathsActive(TorchFunctionMode):
    """Runs every function of ``_ALL_PATHS`` as its stand-in (not those returning indices)."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        stand_in = _ALL_PATHS.get(func)
        if stand_in is None or kwargs.get("return_indices"):
            return func(*args, **kwargs)
        return stand_in(*args, **kwargs)


def _probe_tensors(
    model: nn.Module, dtype: torch.dtype, generator: torch.Generator
) -> dict[str, Tensor]:
    """Positive random parameters scaled by fan-in (no sum cancels, no value explodes),
    and the floating-point buffers in ``dtype``."""
    tensors: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        fan_in = math.prod(p.shape[1:]) if p.dim() >= 2 else 1
        value = (torch.rand(p.shape, generator=generator) + 0.5) / fan_in
        tensors[name] = value.to(p.device, dtype)
    for name, b in model.named_buffers():
        if b.is_floating_point():
            tensors[name] = b.to(dtype)
    return tensors


Field = tuple[tuple[int, int], tuple[bool, bool]] | None

_TINY = 1e-30
"""A float32 gradient this small may have lost neighbours to underflow: redo in float64."""


def _receptive_fields(
    model: nn.Module, info: FeatureInfo, x: Tensor, generator: torch.Generator
) -> list[Field]:
    """Each level's field: in float32 (fast), or in float64 where float32 cannot tell."""
    for dtype in (torch.float32, torch.float64):
        fields = _probe(model, info, x, generator, dtype)
        if fields is not None:
            return fields
    return [None] * len(info)


def _probe(
    model: nn.Module,
    info: FeatureInfo,
    x: Tensor,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> list[Field] | None:
    """The fields measured in ``dtype``; None when the probe forward fails in it (a model
    holding float32 constants cannot run in float64), or, in float32, when a gradient
    comes near underflow or overflows."""
    tensors = _probe_tensors(model, dtype, generator)
    probe = (torch.rand(x.shape, generator=generator) + 0.5).to(x.device, dtype)
    probe.requires_grad_(True)
    try:
        with torch.enable_grad(), _AllPathsActive():
            maps = _level_maps(functional_call(model, tensors, (probe,)), info)
    except Exception:  # the network's own code, run with other tensors: try the next dtype
        return None
    fields: list[Field] = []
    for i, out in enumerate(maps):
        grad = None
        if out.requires_grad:
            centre = out[0, :, out.shape[-2] // 2, out.shape[-1] // 2].sum()
            (grad,) = torch.autograd.grad(
                centre, probe, retain_graph=i < len(maps) - 1, allow_unused=True
            )
        if grad is None:  # the map does not depend on the input
            fields.append(None)
            continue
        magnitude = grad[0].abs()
        if dtype != torch.float64:
            nonzero = magnitude[magnitude != 0]
            if not bool(nonzero.isfinite().all()) or (
                nonzero.numel() and float(nonzero.min()) < _TINY
            ):
                return None
        fields.append(_bounding_box((magnitude != 0).any(dim=0)))
    return fields


def _bounding_box(support: Tensor) -> Field:
    """``(height, width)`` of the box around the true entries of a 2-D mask, and whether
    it touches the mask's border in each direction; None for an empty mask."""
    rows = support.any(dim=1).nonzero().flatten().tolist()
    cols = support.any(dim=0).nonzero().flatten().tolist()
    if not rows:
        return None
    height, width = support.shape
    return (
        (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1),
        (rows[0] == 0 or rows[-1] == height - 1, cols[0] == 0 or cols[-1] == width - 1),
    )


# -- formatting ---------------------------------------------------------------------------
def _count(n: int) -> str:
    if n >= 10**6:
        return f"{n / 1e6:.2f} M"
    if n >= 10**3:
        return f"{n / 1e3:.2f} K"
    return str(n)


def _number(x: float) -> str:
    return f"{x:.2f}" if x >= 1 or x == 0 else f"{x:.3g}"


def _field(row: LevelStats) -> str:
    if row.receptive_field is None:
        return "-"
    return "x".join(
        f">={side}" if clipped else str(side)
        for side, clipped in zip(row.receptive_field, row.receptive_field_clipped, strict=True)
    )
