"""The ResNet trunk: one stem, four stages of residual blocks, many variants as data.

A variant is a :class:`~backbones.variants.ResNetSpec` row in
:data:`~backbones.variants.RESNET_VARIANTS`; the trunk
:class:`ResNet` builds any of them as a feature extractor. Module names equal
torchvision's (and timm's), so a classification checkpoint minus ``fc.*`` loads
with ``strict=True``.

This module builds networks; naming them for users is the registry's job.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch.fx
import torch.utils.checkpoint
from torch import Tensor, nn

from backbones.blocks import BUILTIN_BLOCKS
from backbones.contract import BackboneEntry
from backbones.errors import UnknownNameError
from backbones.features import FeatureInfo, FeatureLevel
from backbones.layers import BlockLayer, BlockVariant, InsertedLayer
from backbones.norm import NormLayer, resolve_norm_layer
from backbones.options import BUILD, BackboneOptions, option_names
from backbones.registry import BUILTIN_PROVIDER, Registry
from backbones.variants import ResNetSpec

__all__ = [
    "FAMILY",
    "ResNet",
    "ResNetDict",
    "StageBlock",
    "resnet_entry",
    "resolve_block_layer",
    "resolve_stage_blocks",
]

FAMILY = "resnet"
SUPPORTS = frozenset(option_names(BUILD)) - {"pyramid"}
"""The ResNet trunk honours every build option but ``pyramid`` (for plain ViTs)."""
DEFAULT_OUT_INDICES = (1, 2, 3, 4)
"""The levels a ResNet returns when ``out_indices`` is None: layer1..layer4."""

NUM_STAGES = 4
STEM_CHANNELS = 64
STAGE_PLANES = (64, 128, 256, 512)
OUTPUT_STRIDES = (8, 16, 32)
MIN_INPUT_SIZE = 1
"""Smallest input height and width. Every conv and pool of the trunk pads (and the
"d" variants' average pools use ``ceil_mode``), so any non-empty image runs, in eval
mode, for every variant, ``output_stride`` and ``out_indices``: a 1x1 image gives 1x1
maps. (In train mode BatchNorm also needs more than one value per channel, so a
batch of one needs an image larger than the deepest stride.)"""
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class StageBlock:
    """The block of one stage, resolved: its class and the layers at its insertion points."""

    cls: type[nn.Module]
    layers: tuple[InsertedLayer, ...] = ()


@dataclass(frozen=True)
class _StagePlan:
    """Where one stage sits in the network: what the builder needs, derived once."""

    name: str
    block: type[nn.Module]
    layers: tuple[InsertedLayer, ...]
    planes: int
    num_blocks: int
    stride: int
    dilation: int
    prev_dilation: int
    reduction: int

    @property
    def out_channels(self) -> int:
        expansion: int = getattr(self.block, "expansion")  # noqa: B009  # checked at registration
        return self.planes * expansion


@torch.fx.wrap
def _check_input(x: Tensor, in_chans: int, min_size: int = MIN_INPUT_SIZE) -> None:
    """Refuse an input the trunk cannot take, naming the expected shape.

    Without it a wrong shape fails deep inside with torch's message (a padding size,
    a channel count, "expected 4D input"). ``torch.fx.wrap`` keeps it a single leaf
    call when torch.fx traces (a Python ``if`` on a proxy's shape would break tracing);
    TorchScript compiles it; torch.export runs it once on the example input. It reads
    four sizes, so the eager forward pays nothing measurable. (``min_size`` is an
    argument because TorchScript cannot read a module-level constant.)
    """
    if x.dim() != 4 or x.shape[1] != in_chans or min(x.shape[2], x.shape[3]) < min_size:
        shape = ", ".join([str(s) for s in x.shape])
        if x.dim() != 4:
            problem = f"is {x.dim()}-d"
        elif x.shape[1] != in_chans:
            problem = "has the wrong number of channels"
        else:
            problem = "is too small"
        raise ValueError(
            f"the input of shape ({shape}) {problem}; this backbone expects (N, {in_chans}, H, W) "
            f"(in_chans={in_chans}) with H and W at least {min_size}"
        )


class ResNet(nn.ModuleDict):
    """A ResNet as a multi-scale feature extractor.

    Children run in order: ``conv1``, ``bn1``, ``act1`` (level 0, stride 2),
    ``maxpool``, ``layer1`` .. ``layer4`` (levels 1..4). Only the children up to
    the deepest requested level are built. ``forward`` returns the requested
    levels as a list in network order; :class:`ResNetDict` returns a dict. Its input
    must be ``(N, in_chans, H, W)`` with ``H, W >= 1``; another shape raises ValueError
    naming it.

    Args:
        spec: the variant.
        options: the validated options (:class:`~backbones.options.BackboneOptions`,
            which documents each); defaults when None.
        blocks: the block of each stage, resolved (the factory resolves registered
            names); by default the spec's block names among the built-in blocks.

    Raises:
        ValueError: ``out_indices`` or ``frozen_stages`` out of range for this network.
        UnknownNameError: ``blocks`` is None and the spec names a block that is not built in.

    Example:
        >>> bb = ResNet(RESNET_VARIANTS["resnet18"], BackboneOptions(out_indices=(2, 4)))
        >>> [f.shape[1] for f in bb(torch.zeros(1, 3, 64, 64))]  # doctest: +SKIP
        [128, 512]
    """

    # Declared here rather than in __init__ so TorchScript sees their types.
    return_layers: list[str]
    _frozen: list[str]
    _checkpointed: list[str]
    in_chans: int

    def __init__(
        self,
        spec: ResNetSpec,
        options: BackboneOptions | None = None,
        *,
        blocks: Sequence[StageBlock] | None = None,
    ) -> None:
        super().__init__()
        options = options or BackboneOptions()
        if blocks is None:
            blocks = [StageBlock(_builtin_block(name)) for name in _stage_names(spec.block)]
        stage_kwargs = _stage_block_kwargs(options.block_kwargs)
        norm = resolve_norm_layer(options.norm_layer)
        plans = _plan_stages(spec, blocks, options.output_stride)

        levels = [FeatureLevel(0, STEM_CHANNELS, 2, "act1")]
        levels += [
            FeatureLevel(i + 1, p.out_channels, p.reduction, p.name) for i, p in enumerate(plans)
        ]
        self.feature_info = FeatureInfo(levels, options.out_indices or DEFAULT_OUT_INDICES)
        deepest = self.feature_info.out_indices[-1]
        frozen_stages = options.frozen_stages
        if not -1 <= frozen_stages <= deepest:
            raise ValueError(
                f"frozen_stages={frozen_stages} is out of range; accepted: -1 (nothing) .. "
                f"{deepest} (the deepest stage built for out_indices="
                f"{self.feature_info.out_indices})"
            )

        self.spec = spec
        self.output_stride = options.output_stride
        self.frozen_stages = frozen_stages
        self.norm_eval = options.norm_eval
        self.return_layers = self.feature_info.module_name()
        self.in_chans = options.in_chans

        self.conv1 = _make_stem_conv(spec, options.in_chans, norm)
        self.bn1 = norm(STEM_CHANNELS)
        self.act1 = nn.ReLU(inplace=True)
        total_blocks = sum(spec.layers)
        first_block = 0
        inplanes = STEM_CHANNELS
        for level, plan in enumerate(plans[:deepest], start=1):
            if level == 1:
                self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            rates = [
                options.drop_path_rate * i / max(total_blocks - 1, 1)
                for i in range(first_block, first_block + plan.num_blocks)
            ]
            self[plan.name] = _make_layer(
                plan, inplanes, spec, norm, rates, stage_kwargs[level - 1]
            )
            inplanes = plan.out_channels
            first_block += plan.num_blocks

        self._init_weights(options.zero_init_last)
        self._checkpointed: list[str] = []
        checkpointing = options.grad_checkpointing
        if not isinstance(checkpointing, bool):
            beyond = [k for k in checkpointing if k > deepest]
            if beyond:
                raise ValueError(
                    f"grad_checkpointing={checkpointing} names stages beyond the deepest one "
                    f"built for out_indices={self.feature_info.out_indices}; accepted: 1..{deepest}"
                )
        self.set_grad_checkpointing(checkpointing)
        self._frozen = (["conv1", "bn1"] if frozen_stages >= 0 else []) + [
            f"layer{k}" for k in range(1, frozen_stages + 1)
        ]
        for name in self._frozen:
            self[name].requires_grad_(False)
        self.train()

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Blocks with an init of their own (a plugin's zero-initialised offsets, say)
        # apply it after the generic pass, so it is not overwritten.
        hooks = ("init_weights", "zero_init_last") if zero_init_last else ("init_weights",)
        for hook in hooks:
            for m in self.modules():
                init = getattr(m, hook, None)
                if m is not self and callable(init):
                    init()

    def set_grad_checkpointing(self, enable: bool | Sequence[int] = True) -> None:
        """Recompute each block of the stages in the backward pass instead of keeping its
        activations (non-reentrant ``torch.utils.checkpoint``; random ops such as drop
        path replay the same draws). Only when training with gradients enabled.

        Args:
            enable: True for every stage built, False for none, or stage numbers
                (``(1, 2)``: layer1 and layer2). timm's spelling.
        """
        if isinstance(enable, bool):
            stages = [name for name in self.keys() if name.startswith("layer")] if enable else []
        else:
            stages = [f"layer{k}" for k in enable if f"layer{k}" in self.keys()]
        self._checkpointed = stages

    def stage_params(self) -> list[tuple[str, list[str]]]:
        """Each stage's parameter names, in network order: ``("stem", [conv1.*, bn1.*])``,
        then ``("layer1", [...])`` .. the deepest stage built. ``frozen_stages=k`` freezes
        the first ``k + 1`` of them; :func:`backbones.training.param_groups` decays the
        learning rate along them."""
        stages: dict[str, list[str]] = {"stem": []}
        for name, _ in self.named_parameters():
            child = name.partition(".")[0]
            stages.setdefault(child if child.startswith("layer") else "stem", []).append(name)
        return list(stages.items())

    def train(self, mode: bool = True) -> "ResNet":
        """Set the mode; frozen stages (and with ``norm_eval`` every BatchNorm) stay in eval."""
        super().train(mode)
        if mode:
            for name in self._frozen:
                self[name].eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, _BATCH_NORMS):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        _check_input(x, self.in_chans)
        features: list[Tensor] = []
        recompute = self.training and torch.is_grad_enabled() and not torch.jit.is_scripting()
        for name, module in self.items():
            if recompute and name in self._checkpointed:
                x = self._checkpointed_stage(name, x)
            else:
                x = module(x)
            if name in self.return_layers:
                features.append(x)
        return features

    @torch.jit.unused
    def _checkpointed_stage(self, name: str, x: Tensor) -> Tensor:
        for block in self[name].children():  # a stage is a Sequential of blocks
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x


class ResNetDict(ResNet):
    """A :class:`ResNet` whose forward returns ``{module_name: feature}`` in network order."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        _check_input(x, self.in_chans)
        features: dict[str, Tensor] = {}
        recompute = self.training and torch.is_grad_enabled() and not torch.jit.is_scripting()
        for name, module in self.items():
            if recompute and name in self._checkpointed:
                x = self._checkpointed_stage(name, x)
            else:
                x = module(x)
            if name in self.return_layers:
                features[name] = x
        return features


def resnet_entry(
    spec: ResNetSpec, *, provider: str, blocks: Registry[Any], layers: Registry[Any]
) -> BackboneEntry:
    """The registry entry of a variant: the ResNet family, honouring every build option.

    Args:
        spec: the variant.
        provider: the plugin that contributed it; the spec's block (and its layers')
            names resolve to that plugin's entries first, then to the built-in ones, so
            another plugin registering the same name cannot change the variant.
        blocks: the block registry, to resolve block names when a backbone is built.
        layers: the layer registry, to resolve layer names.
    """
    return BackboneEntry(
        partial(_build, spec, provider, blocks, layers),
        FAMILY,
        SUPPORTS,
        spec.weights,
        f"{FAMILY} trunk ({provider} variant)",
    )


def _build(
    spec: ResNetSpec,
    provider: str,
    blocks: Registry[Any],
    layers: Registry[Any],
    options: BackboneOptions,
) -> ResNet:
    cls = ResNetDict if options.return_dict else ResNet
    resolved = resolve_stage_blocks(spec, options, provider, blocks, layers)
    return cls(spec, options, blocks=resolved)


def resolve_stage_blocks(
    spec: ResNetSpec,
    options: BackboneOptions,
    provider: str,
    blocks: Registry[Any],
    layers: Registry[Any],
) -> list[StageBlock]:
    """Each stage's block class and inserted layers, from names to objects.

    The spec's own block names prefer its plugin's blocks; names the user gives resolve
    as written (a contested bare name raises, ``"<plugin>:<name>"`` picks one).

    Raises:
        UnknownNameError, NameConflictError: a block or layer name.
        ValueError: layers asked for a stage whose block has no insertion points.
    """
    prefer: tuple[str, ...] = ()
    if options.block is None:
        names, prefer = _stage_names(spec.block), (provider, BUILTIN_PROVIDER)
    else:
        names, prefer = _stage_names(options.block), ()
    out = []
    for stage, name in enumerate(names, start=1):
        entry = blocks.entry(name, prefer=prefer)
        obj, inserted = entry.obj, []
        if isinstance(obj, BlockVariant):
            inserted += [
                resolve_block_layer(bl, layers, (entry.provider, BUILTIN_PROVIDER))
                for bl in obj.layers
            ]
            obj = obj.base
        inserted += [
            resolve_block_layer(bl, layers) for bl in options.block_layers if stage in bl.stages
        ]
        if inserted and not getattr(obj, "positions", ()):
            raise ValueError(
                f"block {name!r} ({obj.__qualname__}) in layer{stage} has no insertion points, "
                f"so it cannot take {', '.join(repr(i.label) for i in inserted)}; use "
                f"block_layers with blocks that have them (basic, bottleneck), or leave "
                f"layer{stage} out of the layer's stages"
            )
        out.append(StageBlock(obj, tuple(inserted)))
    return out


def resolve_block_layer(
    layer: BlockLayer, registry: Registry[Any], prefer: tuple[str, ...] = ()
) -> InsertedLayer:
    """A :class:`BlockLayer` resolved for a block: its factory looked up and its kwargs bound.

    Raises:
        UnknownNameError, NameConflictError: the layer's name.
    """
    if isinstance(layer.layer, str):
        factory, label = registry.get(layer.layer, prefer=prefer), layer.layer
    else:
        factory, label = layer.layer, getattr(layer.layer, "__qualname__", repr(layer.layer))
    build = partial(factory, **layer.kwargs) if layer.kwargs else factory
    return InsertedLayer(layer.module_name, layer.position, build, label)


def _stage_names(block: str | Sequence[str]) -> tuple[str, ...]:
    return (block,) * NUM_STAGES if isinstance(block, str) else tuple(block)


def _builtin_block(name: str) -> type[nn.Module]:
    if name not in BUILTIN_BLOCKS:
        raise UnknownNameError("built-in block", name, list(BUILTIN_BLOCKS))
    return BUILTIN_BLOCKS[name]


def _plan_stages(
    spec: ResNetSpec, blocks: Sequence[StageBlock], output_stride: int
) -> list[_StagePlan]:
    plans = []
    net_stride, dilation = 4, 1  # the stem and max-pool reduce by 4
    for i, (block, planes, num_blocks) in enumerate(
        zip(blocks, STAGE_PLANES, spec.layers, strict=True)
    ):
        prev_dilation = dilation
        stride = 1 if i == 0 else 2
        if net_stride >= output_stride:  # trade this stage's stride for dilation
            dilation *= stride
            stride = 1
        else:
            net_stride *= stride
        plans.append(
            _StagePlan(
                f"layer{i + 1}",
                block.cls,
                block.layers,
                planes,
                num_blocks,
                stride,
                dilation,
                prev_dilation,
                net_stride,
            )
        )
    return plans


def _make_stem_conv(spec: ResNetSpec, in_chans: int, norm: NormLayer) -> nn.Module:
    if not spec.deep_stem:
        return nn.Conv2d(in_chans, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
    w = spec.stem_width
    return nn.Sequential(
        nn.Conv2d(in_chans, w, kernel_size=3, stride=2, padding=1, bias=False),
        norm(w),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, w, kernel_size=3, stride=1, padding=1, bias=False),
        norm(w),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False),
    )


def _make_downsample(
    plan: _StagePlan, inplanes: int, spec: ResNetSpec, norm: NormLayer
) -> nn.Module | None:
    if plan.stride == 1 and inplanes == plan.out_channels:
        return None
    if not spec.avg_down:
        conv = nn.Conv2d(inplanes, plan.out_channels, kernel_size=1, stride=plan.stride, bias=False)
        return nn.Sequential(conv, norm(plan.out_channels))
    # "d" variants: pool, then a stride-1 projection. In dilated stages timm pools
    # with stride 1 and "same" padding (its AvgPool2dSame). For a 2x2 window at stride
    # 1 that padding is always one zero row and column after the image, so a fixed pad
    # gives the same numbers, and torch.fx, TorchScript and torch.export see plain
    # torch modules (AvgPool2dSame computes the padding from the input size in Python).
    if plan.stride == 1 and plan.dilation == 1:
        pool: nn.Module = nn.Identity()
    elif plan.stride == 1:
        pool = nn.Sequential(
            nn.ZeroPad2d((0, 1, 0, 1)),
            nn.AvgPool2d(2, 1, ceil_mode=True, count_include_pad=False),
        )
    else:
        pool = nn.AvgPool2d(2, plan.stride, ceil_mode=True, count_include_pad=False)
    conv = nn.Conv2d(inplanes, plan.out_channels, kernel_size=1, stride=1, bias=False)
    return nn.Sequential(pool, conv, norm(plan.out_channels))


def _make_layer(
    plan: _StagePlan,
    inplanes: int,
    spec: ResNetSpec,
    norm: NormLayer,
    drop_path_rates: Sequence[float],
    block_kwargs: dict[str, Any],
) -> nn.Sequential:
    blocks = []
    for i, rate in enumerate(drop_path_rates):
        first = i == 0
        try:
            block = plan.block(
                inplanes if first else plan.out_channels,
                plan.planes,
                stride=plan.stride if first else 1,
                downsample=_make_downsample(plan, inplanes, spec, norm) if first else None,
                groups=spec.groups,
                base_width=spec.width_per_group,
                dilation=plan.dilation,
                first_dilation=plan.prev_dilation if first else plan.dilation,
                norm_layer=norm,
                drop_path=rate,
                **({"layers": plan.layers} if plan.layers else {}),
                **block_kwargs,
            )
        except TypeError as err:
            if block_kwargs and "unexpected keyword argument" in str(err):
                hint = (
                    "; arguments of an attention layer are its BlockLayer's kwargs now: "
                    "block_layers=[BlockLayer('se', name='se', kwargs={...})]"
                    if "attn_kwargs" in block_kwargs
                    else "; give one dict per stage to pass them to some stages only"
                )
                raise TypeError(
                    f"block {plan.block.__name__} in {plan.name} does not accept block_kwargs "
                    f"{sorted(block_kwargs)} ({err}){hint}"
                ) from err
            raise
        blocks.append(block)
    return nn.Sequential(*blocks)


def _stage_block_kwargs(
    block_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """One dict per stage (``block_kwargs`` is validated by the option table)."""
    if block_kwargs is None:
        return [{} for _ in range(NUM_STAGES)]
    if isinstance(block_kwargs, dict):
        return [dict(block_kwargs) for _ in range(NUM_STAGES)]
    return [dict(k) for k in block_kwargs]
