"""Registers the built-in blocks and ResNet variants; the registries call this on first use."""

from backbones.blocks import BasicBlock, Bottleneck
from backbones.registry import BACKBONES, BLOCKS
from backbones.resnet import resnet_factory
from backbones.variants import RESNET_VARIANTS

SOURCE = "backbones (built-in)"


def register_all() -> None:
    """Add the built-in entries to the block and backbone registries."""
    BLOCKS.add("basic", BasicBlock, source=SOURCE)
    BLOCKS.add("bottleneck", Bottleneck, source=SOURCE)
    for name, spec in RESNET_VARIANTS.items():
        BACKBONES.add(name, resnet_factory(spec), source=SOURCE)
