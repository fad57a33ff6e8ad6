"""ResNet variants as data: one frozen row per variant, no code.

The trunk in :mod:`backbones.resnet` builds any row. Plugins may contribute
rows of their own (with their own blocks) through ``backbones_register_backbones``.
"""

from dataclasses import dataclass

from backbones.weights.config import PretrainedCfg

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
        weights: published weights, default first: what ``pretrained=True`` (or a tag,
            ``pretrained="tv_in1k"``) loads, with pre-processing and licence.
    """

    block: str | tuple[str, str, str, str]
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    deep_stem: bool = False
    stem_width: int = 64
    avg_down: bool = False
    origin: str = "torchvision"
    weights: tuple[PretrainedCfg, ...] = ()


_TV = "https://download.pytorch.org/models/"
_V2_CROP = 224 / 232  # torchvision's V2 recipes resize to 232, then crop 224


def _tv(file: str, v2: str = "", *, v1_crop: float = 0.875) -> tuple[PretrainedCfg, ...]:
    """torchvision's ImageNet weights: V2 first when published (as weights="DEFAULT"), then V1."""
    v1 = PretrainedCfg("tv_in1k", url=_TV + file, crop_pct=v1_crop)
    if not v2:
        return (v1,)
    return (PretrainedCfg("tv2_in1k", url=_TV + v2, crop_pct=_V2_CROP), v1)


def _timm(hub_id: str, *, size: int = 224, crop_pct: float = 0.875) -> PretrainedCfg:
    """timm's weights on the Hugging Face hub."""
    return PretrainedCfg(
        hub_id.split(".", 1)[1],
        hf_hub_id="timm/" + hub_id,
        origin="timm",
        license="apache-2.0",
        input_size=(3, size, size),
        interpolation="bicubic",
        crop_pct=crop_pct,
    )


RESNET_VARIANTS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2), weights=_tv("resnet18-f37072fd.pth")),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3), weights=_tv("resnet34-b627a593.pth")),
    "resnet50": ResNetSpec(
        "bottleneck",
        (3, 4, 6, 3),
        weights=(
            *_tv("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
            _timm("resnet50.a1_in1k", crop_pct=0.95),
        ),
    ),
    "resnet101": ResNetSpec(
        "bottleneck",
        (3, 4, 23, 3),
        weights=_tv("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
    ),
    "resnet152": ResNetSpec(
        "bottleneck",
        (3, 8, 36, 3),
        weights=_tv("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
    ),
    "resnext50_32x4d": ResNetSpec(
        "bottleneck",
        (3, 4, 6, 3),
        groups=32,
        width_per_group=4,
        weights=_tv("resnext50_32x4d-7cdf4587.pth", "resnext50_32x4d-1a0047aa.pth"),
    ),
    "resnext101_32x8d": ResNetSpec(
        "bottleneck",
        (3, 4, 23, 3),
        groups=32,
        width_per_group=8,
        weights=_tv("resnext101_32x8d-8ba56ff5.pth", "resnext101_32x8d-110c445d.pth"),
    ),
    "resnext101_64x4d": ResNetSpec(
        "bottleneck",
        (3, 4, 23, 3),
        groups=64,
        width_per_group=4,
        weights=_tv("resnext101_64x4d-173b62eb.pth", v1_crop=_V2_CROP),
    ),
    "wide_resnet50_2": ResNetSpec(
        "bottleneck",
        (3, 4, 6, 3),
        width_per_group=128,
        weights=_tv("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
    ),
    "wide_resnet101_2": ResNetSpec(
        "bottleneck",
        (3, 4, 23, 3),
        width_per_group=128,
        weights=_tv("wide_resnet101_2-32ee1156.pth", "wide_resnet101_2-d733dc28.pth"),
    ),
    "resnet50d": ResNetSpec(
        "bottleneck",
        (3, 4, 6, 3),
        deep_stem=True,
        stem_width=32,
        avg_down=True,
        origin="timm",
        weights=(_timm("resnet50d.ra2_in1k"),),
    ),
    "resnet101d": ResNetSpec(
        "bottleneck",
        (3, 4, 23, 3),
        deep_stem=True,
        stem_width=32,
        avg_down=True,
        origin="timm",
        weights=(_timm("resnet101d.ra2_in1k", size=256, crop_pct=0.95),),
    ),
}
"""Every built-in ResNet variant: torchvision's definitions, plus timm's "d" variants."""
