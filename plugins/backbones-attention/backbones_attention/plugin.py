"""The ``attention`` plugin: hook implementations, found through the ``backbones`` entry point.

The hooks only describe contributions and return fresh dicts; the plugin
manager of ``backbones`` registers them.
"""

from backbones import BlockVariant, PretrainedCfg, ResNetSpec, hookimpl
from backbones.layers import LayerFactory
from backbones_attention.blocks import BLOCKS
from backbones_attention.layers import LAYERS

__all__ = [
    "backbones_register_backbones",
    "backbones_register_blocks",
    "backbones_register_layers",
]

_LAYERS_50 = (3, 4, 6, 3)


@hookimpl
def backbones_register_layers() -> dict[str, LayerFactory]:
    """timm's SE, ECA, CBAM and global-context (GCNet) attention layers."""
    return dict(LAYERS)


@hookimpl
def backbones_register_blocks() -> dict[str, BlockVariant]:
    """SE, ECA and CBAM versions of the basic and bottleneck blocks."""
    return dict(BLOCKS)


def _timm_hub(hub_id: str, crop_pct: float = 0.875) -> tuple[PretrainedCfg, ...]:
    """timm's published weights for a variant, on the Hugging Face hub."""
    return (
        PretrainedCfg(
            hub_id.split(".", 1)[1],
            hf_hub_id=f"timm/{hub_id}",
            origin="timm",
            license="apache-2.0",
            interpolation="bicubic",
            crop_pct=crop_pct,
        ),
    )


@hookimpl
def backbones_register_backbones() -> dict[str, ResNetSpec]:
    """timm's SE-ResNet-50, SE-ResNeXt-50 (32x4d) and ECA-ResNet-50-D, as trunk variants."""
    return {
        "seresnet50": ResNetSpec(
            "se_bottleneck",
            _LAYERS_50,
            origin="timm",
            weights=_timm_hub("seresnet50.a1_in1k", crop_pct=0.95),
        ),
        "seresnext50_32x4d": ResNetSpec(
            "se_bottleneck",
            _LAYERS_50,
            groups=32,
            width_per_group=4,
            origin="timm",
            weights=_timm_hub("seresnext50_32x4d.racm_in1k"),
        ),
        "ecaresnet50d": ResNetSpec(
            "eca_bottleneck",
            _LAYERS_50,
            deep_stem=True,
            stem_width=32,
            avg_down=True,
            origin="timm",
            weights=_timm_hub("ecaresnet50d.miil_in1k"),
        ),
    }
