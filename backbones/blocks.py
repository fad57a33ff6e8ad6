"""The built-in residual blocks, ``basic`` and ``bottleneck``, with insertion points.

Parameter names equal torchvision's and timm's (``conv1``, ``bn1``, ...,
``downsample``), so their checkpoints load unchanged.

The block contract, which third-party blocks follow too: a block is an
``nn.Module`` class with an int class attribute ``expansion`` (output channels
= ``planes * expansion``), built by the trunk as::

    Block(inplanes, planes, stride=..., downsample=..., groups=..., base_width=...,
          dilation=..., first_dilation=..., norm_layer=..., drop_path=..., **block_kwargs)

``downsample`` is the shortcut projection the trunk built (or ``None``),
``dilation`` the stage's dilation, ``first_dilation`` the dilation for the
block's first spatial conv (the previous stage's dilation in a stage's first
block, as in torchvision and timm), ``norm_layer`` a callable taking a channel
count, and ``drop_path`` the stochastic-depth rate of this block. A block that
cannot honour an argument raises ValueError naming it.

:class:`ResidualBlock` implements the contract once; the built-in blocks subclass
it and only build their main path. A block with insertion points also takes
``layers``, a sequence of :class:`backbones.layers.InsertedLayer`, and lists its
points in the class attribute ``positions``. The trunk passes ``layers`` only
when there are some, so blocks without insertion points need not accept it. The
built-in blocks have mmdet's points; each layer is built for the channel count
there and sits, as a child of the block, right after:

* ``after_conv1``: ``act1`` (the block's width);
* ``after_conv2``: in the bottleneck ``act2`` (its width); in the basic block,
  whose last conv this is, ``bn2`` (``planes``), before the residual add;
* ``after_conv3`` (bottleneck only): ``bn3`` (``planes * 4``), before the
  residual add, where timm's ``attn_layer`` sits (an SE layer named ``se`` gives
  timm's ``layer1.0.se.*`` keys, in timm's order).

``"last"`` names a block's last point (``after_conv3`` in the bottleneck,
``after_conv2`` in the basic block). Several layers at one point run in the order
given. Stochastic depth applies after the layers at the last point, as in timm.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from torch import Tensor, nn

from backbones.layers import LAST, InsertedLayer
from backbones.norm import NormLayer

__all__ = [
    "BUILTIN_BLOCKS",
    "BasicBlock",
    "BlockArgs",
    "Bottleneck",
    "ResidualBlock",
    "drop_path_module",
]

# The names the built-in blocks give their own modules (torchvision's and timm's).
# A layer may not take one, even in a block without it: an early layer named
# "conv3" would otherwise be silently replaced by the conv registered after it.
_OWN_NAMES = frozenset(
    [f"{kind}{i}" for kind in ("conv", "bn", "act") for i in "123"] + ["downsample", "drop_path"]
)


def drop_path_module(rate: float) -> nn.Module:
    """Stochastic depth at ``rate`` (timm's DropPath), or an identity when it is 0."""
    if rate <= 0.0:
        return nn.Identity()
    from timm.layers import DropPath  # timm's import costs seconds; only when it is used

    return DropPath(rate)


def _zero_gamma(norm: nn.Module) -> None:
    weight = getattr(norm, "weight", None)
    if isinstance(weight, Tensor):  # a norm without affine weight has nothing to zero
        nn.init.zeros_(weight)


def _conv3x3(inplanes: int, planes: int, stride: int, groups: int, dilation: int) -> nn.Conv2d:
    return nn.Conv2d(
        inplanes,
        planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        dilation=dilation,
        bias=False,
    )


def _describe(block: str, layer: InsertedLayer) -> str:
    return f"{block} layer {layer.name!r} ({layer.label or repr(layer.build)})"


@dataclass(frozen=True)
class BlockArgs:
    """What a block builds its main path from: the contract's arguments, resolved.

    Attributes:
        inplanes, planes, stride, groups, base_width, dilation, norm_layer: as given
            to the block.
        first_dilation: the dilation of the first spatial conv (``first_dilation``,
            or ``dilation`` when that was None).
        layers: the layers to insert, checked, with ``"last"`` resolved to the last
            of the block's ``positions`` (see :meth:`ResidualBlock.add_layers`).
    """

    inplanes: int
    planes: int
    stride: int
    groups: int
    base_width: int
    dilation: int
    first_dilation: int
    norm_layer: NormLayer
    layers: tuple[InsertedLayer, ...]


class ResidualBlock(nn.ModuleDict):
    """A residual block whose forward is its children, run in registration order.

    The constructor is the block contract (see the module docstring): it checks
    ``layers``, calls :meth:`build_main_path`, then registers the shortcut
    projection ``downsample`` (when there is one), ``drop_path`` and the final
    activation named by ``out_act``. The forward runs every child before that
    activation on the main path, except ``downsample``, which maps the shortcut;
    the activation adds the shortcut to the main path in place, then activates, and
    its output is the block's. So a subclass defines its block by the order in
    which :meth:`build_main_path` registers modules, and the layers it adds at its
    insertion points (:meth:`add_layers`) need no forward of their own. Modules a
    subclass registers after construction (helpers, not layers) are not run.

    Subclasses set ``expansion``, ``positions`` and ``out_act`` and implement
    :meth:`build_main_path`.

    Args:
        inplanes: input channels.
        planes: the stage's base channels; the output has ``planes * expansion``.
        stride: the block's stride.
        downsample: the shortcut projection, or ``None`` for identity.
        groups: groups of the spatial conv (ResNeXt cardinality).
        base_width: width per group.
        dilation: the stage's dilation.
        first_dilation: dilation of the first spatial conv (default ``dilation``).
        norm_layer: callable taking a channel count.
        drop_path: stochastic-depth rate.
        layers: layers to insert at the block's ``positions``; ``"last"`` is the
            last of them (after the last conv and norm, before the residual add).

    Raises:
        TypeError: ``layers`` is not a sequence of ``InsertedLayer``, or a layer's
            factory does not return an ``nn.Module``.
        ValueError: a layer's position is not one of the block's ``positions``, or
            its name is not an identifier, is taken by the block, or is given twice;
            or the block cannot honour an argument (the message names it).
    """

    __constants__: ClassVar[list[str]] = ["out_act"]  # TorchScript: a constant in forward

    expansion: ClassVar[int]
    positions: ClassVar[tuple[str, ...]] = ()
    """The block's insertion points, in network order."""
    out_act: ClassVar[str]
    """The name of the final activation, which closes the residual."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        drop_path: float = 0.0,
        *,
        layers: Sequence[InsertedLayer] = (),
    ) -> None:
        super().__init__()
        self.build_main_path(
            BlockArgs(
                inplanes,
                planes,
                stride,
                groups,
                base_width,
                dilation,
                first_dilation or dilation,
                norm_layer,
                self._checked(layers),
            )
        )
        self.downsample = downsample  # None stays a plain attribute, as in torchvision
        self.drop_path = drop_path_module(drop_path)
        self.add_module(self.out_act, nn.ReLU(inplace=True))

    def build_main_path(self, args: BlockArgs) -> None:
        """Register the main path's modules in order, with :meth:`add_layers` at each point."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_main_path")

    def _checked(self, layers: Sequence[InsertedLayer]) -> tuple[InsertedLayer, ...]:
        block = type(self).__name__
        if isinstance(layers, (str, InsertedLayer)) or not isinstance(layers, Sequence):
            raise TypeError(f"{block} layers must be a sequence of InsertedLayer, got {layers!r}")
        seen: set[str] = set()
        checked = []
        for layer in layers:
            if not isinstance(layer, InsertedLayer):
                raise TypeError(f"{block} layers must be InsertedLayer entries, got {layer!r}")
            what = _describe(block, layer)
            if layer.position == LAST and self.positions:
                layer = replace(layer, position=self.positions[-1])
            if layer.position not in self.positions:
                accepted = ", ".join((*self.positions, LAST)) if self.positions else "none"
                raise ValueError(
                    f"{what}: {block} has no insertion point {layer.position!r}; "
                    f"accepted: {accepted}"
                )
            if not isinstance(layer.name, str) or not layer.name.isidentifier():
                raise ValueError(f"{what}: the module name must be a Python identifier")
            if layer.name in seen:
                raise ValueError(
                    f"{what}: another layer has the module name {layer.name!r}; "
                    f"give each layer its own name"
                )
            if layer.name in _OWN_NAMES or layer.name == self.out_act or hasattr(self, layer.name):
                raise ValueError(
                    f"{what}: the name {layer.name!r} is taken by the block; accepted: "
                    f"any other identifier (the block's own modules are "
                    f"{', '.join(sorted(_OWN_NAMES))})"
                )
            seen.add(layer.name)
            checked.append(layer)
        return tuple(checked)

    def add_layers(self, layers: Sequence[InsertedLayer], position: str, channels: int) -> None:
        """Build the layers at ``position`` for ``channels`` and register them, in order.

        Called by :meth:`build_main_path` right after the modules of each insertion point.

        Args:
            layers: every layer of the block (``args.layers``); those at other
                positions are skipped.
            position: the insertion point whose modules were registered just now.
            channels: the channel count at that point.

        Raises:
            TypeError: a layer's factory did not return an ``nn.Module``.
            ValueError: a layer's name is taken by a module or attribute of the block.
        """
        for layer in layers:
            if layer.position != position:
                continue
            what = _describe(type(self).__name__, layer)
            if hasattr(self, layer.name):  # a module or attribute the subclass added
                taken = type(getattr(self, layer.name)).__name__
                raise ValueError(
                    f"{what}: the name {layer.name!r} is taken by the block's {taken}; "
                    f"accepted: a name the block does not use"
                )
            try:
                module = layer.build(channels)
            except TypeError as err:  # most often a keyword the layer does not take
                raise TypeError(
                    f"{what} at {position} cannot be built as factory({channels}, **kwargs): "
                    f"{err}; check the keyword arguments (BlockLayer(..., kwargs=...))"
                ) from err
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"{what} at {position}: its factory returned {type(module).__name__} "
                    f"{module!r}, not an nn.Module; a layer factory is called as "
                    f"factory({channels}) and returns a module that keeps its input's shape"
                )
            self.add_module(layer.name, module)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        for name, module in self.items():
            if name == "downsample":  # after the main path: a lower memory peak
                shortcut = module(shortcut)
            elif name == self.out_act:
                x += shortcut  # in place: one activation-sized allocation fewer per block
                return module(x)
            else:
                x = module(x)
        raise RuntimeError("a residual block needs its final activation, named by out_act")


class BasicBlock(ResidualBlock):
    """Two 3x3 convs and a shortcut (ResNet-18/34). Registered as ``basic``.

    Built with the arguments of :class:`ResidualBlock`; the stride sits on the
    first conv, ``first_dilation`` dilates the first conv and ``dilation`` the second.

    Insertion points: ``after_conv1`` (after ``act1``) and ``after_conv2`` (after
    ``bn2``, before the residual add), both at ``planes`` channels.

    Raises:
        ValueError: ``groups`` or ``base_width`` is not the only value a basic block
            has (1, 64), or a layer is not accepted (see :class:`ResidualBlock`).

    Example:
        >>> scale = InsertedLayer("scale", "after_conv1", lambda c: nn.BatchNorm2d(c))
        >>> [name for name, _ in BasicBlock(64, 64, layers=[scale]).named_children()][:4]
        ['conv1', 'bn1', 'act1', 'scale']
    """

    expansion = 1
    positions = ("after_conv1", "after_conv2")
    out_act = "act2"

    def build_main_path(self, args: BlockArgs) -> None:
        """conv1, bn1, act1, after_conv1, conv2, bn2, after_conv2."""
        if args.groups != 1:
            raise ValueError(f"the basic block supports only groups=1, got groups={args.groups}")
        if args.base_width != 64:
            raise ValueError(
                f"the basic block supports only base_width=64, got base_width={args.base_width}"
            )
        planes = args.planes
        self.conv1 = _conv3x3(args.inplanes, planes, args.stride, 1, args.first_dilation)
        self.bn1 = args.norm_layer(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.add_layers(args.layers, "after_conv1", planes)
        self.conv2 = _conv3x3(planes, planes, 1, 1, args.dilation)
        self.bn2 = args.norm_layer(planes)
        self.add_layers(args.layers, "after_conv2", planes)

    def zero_init_last(self) -> None:
        """Zero the last norm's gamma so the block starts as its shortcut."""
        _zero_gamma(self.bn2)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped) conv, 1x1 expand, and a shortcut. Registered as ``bottleneck``.

    Built with the arguments of :class:`ResidualBlock`. The stride sits on the 3x3
    conv (ResNet v1.5, as in torchvision and timm), and so does ``first_dilation``.
    Its width is ``int(planes * base_width / 64) * groups``, which gives ResNeXt
    (``groups`` > 1) and Wide ResNet (``base_width`` = 128). A subclass that
    changes only the 3x3 conv (a deformable one, say) overrides :meth:`make_conv2`.

    Insertion points: ``after_conv1`` (after ``act1``) and ``after_conv2`` (after
    ``act2``) at the width, ``after_conv3`` (after ``bn3``, before the residual
    add) at ``planes * 4``.

    Raises:
        ValueError: a layer is not accepted (see :class:`ResidualBlock`).

    Example:
        >>> from timm.layers import SEModule
        >>> se = InsertedLayer("se", "after_conv3", SEModule)
        >>> Bottleneck(256, 64, layers=[se]).se.fc1.in_channels
        256
    """

    expansion = 4
    positions = ("after_conv1", "after_conv2", "after_conv3")
    out_act = "act3"

    def build_main_path(self, args: BlockArgs) -> None:
        """conv1, bn1, act1, after_conv1, conv2, bn2, act2, after_conv2, conv3, bn3, after_conv3."""
        width = int(args.planes * (args.base_width / 64.0)) * args.groups
        outplanes = args.planes * self.expansion
        self.conv1 = nn.Conv2d(args.inplanes, width, kernel_size=1, bias=False)
        self.bn1 = args.norm_layer(width)
        self.act1 = nn.ReLU(inplace=True)
        self.add_layers(args.layers, "after_conv1", width)
        self.conv2 = self.make_conv2(
            width, stride=args.stride, dilation=args.first_dilation, groups=args.groups
        )
        self.bn2 = args.norm_layer(width)
        self.act2 = nn.ReLU(inplace=True)
        self.add_layers(args.layers, "after_conv2", width)
        self.conv3 = nn.Conv2d(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = args.norm_layer(outplanes)
        self.add_layers(args.layers, "after_conv3", outplanes)

    def make_conv2(self, width: int, *, stride: int, dilation: int, groups: int) -> nn.Module:
        """The 3x3 conv, ``width`` to ``width`` channels, padded to keep the size at stride 1.

        Called once by :meth:`build_main_path`; a subclass returns another module
        here, with the same input and output channels, to replace only this conv.
        """
        return _conv3x3(width, width, stride, groups, dilation)

    def zero_init_last(self) -> None:
        """Zero the last norm's gamma so the block starts as its shortcut."""
        _zero_gamma(self.bn3)


BUILTIN_BLOCKS: dict[str, type[ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
"""The library's own blocks by registry name: what the built-in plugin registers, and
what a ResNet built without the registry can use."""
