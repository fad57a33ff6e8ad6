"""The ResNet trunk: one stem, four stages of residual blocks, many variants as data.

A variant is a :class:`~backbones.variants.ResNetSpec` row in
:data:`~backbones.variants.RESNET_VARIANTS`; the trunk
:class:`ResNet` builds any of them as a feature extractor. Module names equal
torchvision's (and timm's), so a classification checkpoint minus ``fc.*`` loads
with ``strict=True``.

This module builds networks; naming them for users is the registry's job.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.fx
from torch import Tensor, nn

from backbones._checks import check_bool, check_int, is_int, is_number
from backbones.features import FeatureInfo, FeatureLevel
from backbones.norm import NormLayer, resolve_norm_layer
from backbones.registry import BLOCKS, BUILTIN_PROVIDER
from backbones.variants import ResNetSpec

__all__ = ["ResNet", "ResNetDict", "resnet_factory"]

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
class _StagePlan:
    """Where one stage sits in the network: what the builder needs, derived once."""

    name: str
    block: type[nn.Module]
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
        out_indices: levels to return (0 = stem, 1..4 = layer1..layer4, negative
            from the end).
        in_chans: input channels.
        output_stride: 8, 16 or 32; below 32, later stages dilate instead of striding.
        frozen_stages: -1 none, 0 the stem, k the stem and layer1..layer k.
        norm_eval: keep every BatchNorm in eval mode during training.
        norm_layer: a name from :data:`backbones.norm.NORM_LAYERS` or a callable.
        drop_path_rate: stochastic depth, rising linearly over all blocks.
        zero_init_last: zero each block's last norm gamma at init.
        block: ``None`` (the spec's block), a block name, or one name per stage.
        block_kwargs: extra keyword arguments for every block, or four dicts, one per stage.
        block_provider: the plugin that contributed ``spec``; the spec's block names
            resolve to its blocks first, then to the built-in ones.

    Raises:
        ValueError, TypeError: an option is invalid; the message names it.
        UnknownNameError: a block or norm name is not registered.

    Example:
        >>> bb = ResNet(RESNET_VARIANTS["resnet18"], out_indices=(2, 4))
        >>> [f.shape[1] for f in bb(torch.zeros(1, 3, 64, 64))]  # doctest: +SKIP
        [128, 512]
    """

    # Declared here rather than in __init__ so TorchScript sees their types.
    return_layers: list[str]
    _frozen: list[str]
    in_chans: int

    def __init__(
        self,
        spec: ResNetSpec,
        *,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        in_chans: int = 3,
        output_stride: int = 32,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        norm_layer: str | NormLayer = "batchnorm",
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
        block: str | Sequence[str] | None = None,
        block_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        block_provider: str = BUILTIN_PROVIDER,
    ) -> None:
        super().__init__()
        check_int("in_chans", in_chans)
        if not is_int(output_stride) or output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"output_stride={output_stride!r} is not supported; accepted: "
                f"{', '.join(map(str, OUTPUT_STRIDES))}"
            )
        check_bool("norm_eval", norm_eval)
        check_bool("zero_init_last", zero_init_last)
        if not is_number(drop_path_rate):
            raise TypeError(f"drop_path_rate must be a float in [0, 1), got {drop_path_rate!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate!r} is out of range; accepted: [0, 1)")
        stage_kwargs = _resolve_block_kwargs(block_kwargs)
        norm = resolve_norm_layer(norm_layer)
        plans = _plan_stages(spec, _resolve_blocks(spec, block, block_provider), output_stride)

        levels = [FeatureLevel(0, STEM_CHANNELS, 2, "act1")]
        levels += [
            FeatureLevel(i + 1, p.out_channels, p.reduction, p.name) for i, p in enumerate(plans)
        ]
        self.feature_info = FeatureInfo(levels, out_indices)
        deepest = self.feature_info.out_indices[-1]
        if not is_int(frozen_stages):
            raise TypeError(f"frozen_stages must be an int, got {frozen_stages!r}")
        if not -1 <= frozen_stages <= deepest:
            raise ValueError(
                f"frozen_stages={frozen_stages} is out of range; accepted: -1 (nothing) .. "
                f"{deepest} (the deepest stage built for out_indices="
                f"{self.feature_info.out_indices})"
            )

        self.spec = spec
        self.output_stride = output_stride
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.return_layers = self.feature_info.module_name()
        self.in_chans = in_chans

        self.conv1 = _make_stem_conv(spec, in_chans, norm)
        self.bn1 = norm(STEM_CHANNELS)
        self.act1 = nn.ReLU(inplace=True)
        total_blocks = sum(spec.layers)
        first_block = 0
        inplanes = STEM_CHANNELS
        for level, plan in enumerate(plans[:deepest], start=1):
            if level == 1:
                self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            rates = [
                drop_path_rate * i / max(total_blocks - 1, 1)
                for i in range(first_block, first_block + plan.num_blocks)
            ]
            self[plan.name] = _make_layer(
                plan, inplanes, spec, norm, rates, stage_kwargs[level - 1]
            )
            inplanes = plan.out_channels
            first_block += plan.num_blocks

        self._init_weights(zero_init_last)
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
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                features.append(x)
        return features


class ResNetDict(ResNet):
    """A :class:`ResNet` whose forward returns ``{module_name: feature}`` in network order."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        _check_input(x, self.in_chans)
        features: dict[str, Tensor] = {}
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                features[name] = x
        return features


def resnet_factory(spec: ResNetSpec, *, provider: str = BUILTIN_PROVIDER) -> Callable[..., ResNet]:
    """The registry factory for a variant: accepts every :func:`create_backbone` option.

    ``provider`` is the plugin that contributed ``spec``: the block names in the spec
    resolve to that plugin's blocks first, then to the built-in ones, so another
    plugin registering the same block name cannot change the variant.
    """

    def factory(*, return_dict: bool = False, **options: Any) -> ResNet:
        check_bool("return_dict", return_dict)
        cls = ResNetDict if return_dict else ResNet
        return cls(spec, block_provider=provider, **options)

    factory.weights = spec.weights  # type: ignore[attr-defined]  # read by create_backbone
    return factory


def _resolve_blocks(
    spec: ResNetSpec, block: str | Sequence[str] | None, provider: str
) -> list[type[nn.Module]]:
    # The spec's own names prefer its plugin's blocks; names the user gives resolve as
    # written (a contested bare name raises, "<plugin>:<name>" picks one).
    prefer: tuple[str, ...] = ()
    if block is None:
        block = spec.block
        prefer = (provider, BUILTIN_PROVIDER)
    if isinstance(block, str):
        names: Sequence[str] = (block,) * NUM_STAGES
    elif (
        isinstance(block, Sequence)
        and len(block) == NUM_STAGES
        and all(isinstance(b, str) for b in block)
    ):
        names = block
    else:
        raise ValueError(
            f"block={block!r} is not accepted; give one registered block name, or "
            f"{NUM_STAGES} names (one per stage), e.g. ('bottleneck',) * {NUM_STAGES}"
        )
    return [BLOCKS.get(name, prefer=prefer) for name in names]


def _plan_stages(
    spec: ResNetSpec, blocks: Sequence[type[nn.Module]], output_stride: int
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
                block,
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
                **block_kwargs,
            )
        except TypeError as err:
            if block_kwargs and "unexpected keyword argument" in str(err):
                raise TypeError(
                    f"block {plan.block.__name__} in {plan.name} does not accept block_kwargs "
                    f"{sorted(block_kwargs)} ({err}); give one dict per stage to pass them "
                    f"to some stages only"
                ) from err
            raise
        blocks.append(block)
    return nn.Sequential(*blocks)


def _resolve_block_kwargs(
    block_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    if block_kwargs is None:
        return [{} for _ in range(NUM_STAGES)]
    if isinstance(block_kwargs, dict):
        _check_block_kwargs("block_kwargs", block_kwargs)
        return [dict(block_kwargs) for _ in range(NUM_STAGES)]
    if (
        isinstance(block_kwargs, Sequence)
        and not isinstance(block_kwargs, str)
        and len(block_kwargs) == NUM_STAGES
        and all(isinstance(k, dict) for k in block_kwargs)
    ):
        for stage, kwargs in enumerate(block_kwargs):
            _check_block_kwargs(f"block_kwargs[{stage}]", kwargs)
        return [dict(k) for k in block_kwargs]
    raise TypeError(
        f"block_kwargs must be a dict, {NUM_STAGES} dicts (one per stage) or None, "
        f"got {block_kwargs!r}"
    )


# The arguments the trunk passes to every block itself, and where each comes from:
# block_kwargs naming one would otherwise fail with Python's "got multiple values".
_TRUNK_BLOCK_ARGS: dict[str, str] = {
    "inplanes": "the trunk (the previous stage's output channels)",
    "planes": "the trunk (the stage widths 64, 128, 256, 512); a block's 'expansion' scales them",
    "stride": "the trunk (the stage's place in the network) and the output_stride option",
    "downsample": "the trunk, which builds each stage's shortcut (ResNetSpec.avg_down picks "
    "the pooled shortcut of the 'd' variants)",
    "groups": "the variant (ResNetSpec.groups): pick a variant with it, such as "
    "resnext50_32x4d, or register a ResNetSpec of your own",
    "base_width": "the variant (ResNetSpec.width_per_group): pick a variant with it, such as "
    "wide_resnet50_2, or register a ResNetSpec of your own",
    "dilation": "the output_stride option (8 or 16 dilates the last stages)",
    "first_dilation": "the output_stride option (8 or 16 dilates the last stages)",
    "norm_layer": "the norm_layer option",
    "drop_path": "the drop_path_rate option (a rate rising linearly over the blocks)",
}


def _check_block_kwargs(where: str, kwargs: dict[Any, Any]) -> None:
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(
                f"{where} keys must be str (keyword argument names of the block), "
                f"got {key!r} in {kwargs!r}"
            )
    taken = [key for key in kwargs if key in _TRUNK_BLOCK_ARGS]
    if taken:
        reasons = "; ".join(f"{key!r} comes from {_TRUNK_BLOCK_ARGS[key]}" for key in taken)
        raise TypeError(
            f"{where} cannot set {', '.join(map(repr, taken))}: the trunk passes "
            f"{'it' if len(taken) == 1 else 'them'} to every block itself; {reasons}"
        )
