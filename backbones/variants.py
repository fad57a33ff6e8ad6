"""ResNet variants as data: one frozen row per variant, no code.

The trunk in :mod:`backbones.resnet` builds any row. Plugins may contribute
rows of their own (with their own blocks) through ``backbones_register_backbones``.
"""

from dataclasses import dataclass

__all__ = ["RESNET_VARIANTS", "ResNetSpec"]


@dataclass(frozen=True)
class ResNetSpec:
    """One ResNet variant, as data.

    Attributes:
        block: registered name of the block used in every stage, or four names,
            one per stage (e.g. deformable blocks in stages 3 and 4 only).
        layers: number of blocks in each of the four stages.
        groups: groups of the bottleneck's 3x3 conv (ResNeXt cardinality).
        width_per_group: bottleneck width per group (64 plain, 128 wide).
        deep_stem: three 3x3 convs instead of one 7x7 (timm's "deep" stem, the "d" variants).
        stem_width: channels inside the deep stem.
        avg_down: shortcut projections average-pool before a stride-1 1x1 conv ("d" variants).
        origin: the library whose definition and weight names this variant follows.
    """

    block: str | tuple[str, str, str, str]
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    deep_stem: bool = False
    stem_width: int = 64
    avg_down: bool = False
    origin: str = "torchvision"


RESNET_VARIANTS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetSpec("bottleneck", (3, 8, 36, 3)),
    "resnext50_32x4d": ResNetSpec("bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetSpec("bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": ResNetSpec("bottleneck", (3, 4, 23, 3), groups=64, width_per_group=4),
    "wide_resnet50_2": ResNetSpec("bottleneck", (3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": ResNetSpec("bottleneck", (3, 4, 23, 3), width_per_group=128),
    "resnet50d": ResNetSpec(
        "bottleneck", (3, 4, 6, 3), deep_stem=True, stem_width=32, avg_down=True, origin="timm"
    ),
    "resnet101d": ResNetSpec(
        "bottleneck", (3, 4, 23, 3), deep_stem=True, stem_width=32, avg_down=True, origin="timm"
    ),
}
"""Every built-in ResNet variant: torchvision's definitions, plus timm's "d" variants."""
