"""Discovery: the installed distribution's entry point brings the plugin in, and only it does.

The checks that matter run in a fresh interpreter, where nothing has imported
``backbones_attention`` yet: listing the registry must import it through the
``backbones`` entry point and register its layers, blocks and backbones.
"""

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from typing import Any

from timm.layers import get_attn

from backbones import BlockLayer, BlockVariant, ResNetSpec, list_backbones, list_blocks, list_layers
from backbones.blocks import BasicBlock, Bottleneck

LAYER_NAMES = {"se", "eca", "cbam", "gc"}
BLOCK_NAMES = {
    "se_basic",
    "se_bottleneck",
    "eca_basic",
    "eca_bottleneck",
    "cbam_basic",
    "cbam_bottleneck",
}
BACKBONE_NAMES = {"seresnet50", "seresnext50_32x4d", "ecaresnet50d"}
DISABLE_AUTOLOAD_ENV = "BACKBONES_DISABLE_PLUGIN_AUTOLOAD"


def _run_fresh(code: str) -> dict[str, Any]:
    """Run ``code`` in a new interpreter, with plugin autoload on; return its last JSON line."""
    env = {k: v for k, v in os.environ.items() if k != DISABLE_AUTOLOAD_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# Also shows that importing the plugin registers nothing by itself: a module that
# registered on import would clash with what its hooks contribute, which the plugin
# manager reports as a conflict (a warning naming the plugin, and get_block raising).
DISCOVER = """
    import json, sys, warnings
    import backbones
    before = sorted(m for m in sys.modules if m.startswith("backbones_attention"))
    with warnings.catch_warnings(record=True) as caught:  # what went wrong while loading
        warnings.simplefilter("always")
        blocks = {p: backbones.list_blocks(p) for p in ("*se*", "*eca*", "cbam*", "*")}
    (plugin,) = [p for p in backbones.list_plugins() if p.name == "attention"]
    variant = backbones.get_block("se_bottleneck")
    layer = backbones.get_layer("se")
    timm_on_discovery = "timm" in sys.modules
    print(json.dumps({
        "timm_on_discovery": timm_on_discovery,
        "before": before,
        "warnings": [str(w.message) for w in caught if "attention" in str(w.message)],
        "after": "backbones_attention.plugin" in sys.modules,
        "blocks": blocks,
        "layers": backbones.list_layers(),
        "backbones": backbones.list_backbones(),
        "registered": plugin.registered,
        "conflicts": plugin.conflicts,
        "se_bottleneck": [
            type(variant).__name__,
            f"{variant.base.__module__}.{variant.base.__qualname__}",
            [[bl.layer, bl.position, bl.name] for bl in variant.layers],
        ],
        "se": f"{layer.cls.__module__}.{layer.cls.__qualname__}",
        "channels": backbones.create_backbone("ecaresnet50d").feature_info.channels(),
    }))
"""


def test_entry_point_is_declared_by_the_installed_distribution():
    (ep,) = [e for e in importlib.metadata.entry_points(group="backbones") if e.name == "attention"]
    assert ep.value == "backbones_attention.plugin"
    assert ep.dist is not None
    assert ep.dist.metadata["Name"] == "backbones-attention"
    assert ep.dist.version == "0.1.0"


def test_fresh_interpreter_discovers_the_plugin_through_its_entry_point():
    result = _run_fresh(DISCOVER)
    assert result["before"] == []
    assert result["warnings"] == []  # only this plugin's: others installed beside it may warn
    assert result["after"]
    assert {"se_basic", "se_bottleneck"} <= set(result["blocks"]["*se*"])
    assert {"eca_basic", "eca_bottleneck"} <= set(result["blocks"]["*eca*"])
    assert {"cbam_basic", "cbam_bottleneck"} <= set(result["blocks"]["cbam*"])
    assert BLOCK_NAMES | {"basic", "bottleneck"} <= set(result["blocks"]["*"])
    assert set(result["layers"]) >= LAYER_NAMES
    assert set(result["backbones"]) >= BACKBONE_NAMES | {"resnet50"}
    assert {k: set(v) for k, v in result["registered"].items()} == {
        "layer": LAYER_NAMES,
        "block": BLOCK_NAMES,
        "backbone": BACKBONE_NAMES,
    }
    assert result["conflicts"] == []
    assert result["se_bottleneck"] == [
        "BlockVariant",
        "backbones.blocks.Bottleneck",
        [["se", "after_conv3", "se"]],
    ]
    assert result["se"] == "timm.layers.squeeze_excite.SEModule"
    assert result["timm_on_discovery"] is False  # imported when a layer is first built
    assert result["channels"] == [256, 512, 1024, 2048]


def test_registry_lists_the_plugin_in_process():
    assert set(list_layers()) >= LAYER_NAMES
    assert {"se_basic", "se_bottleneck"} <= set(list_blocks("*se*"))
    assert {"eca_basic", "eca_bottleneck"} <= set(list_blocks("*eca*"))
    assert {"cbam_basic", "cbam_bottleneck"} <= set(list_blocks("cbam*"))
    assert set(list_backbones()) >= BACKBONE_NAMES


def test_hooks_return_fresh_dicts_and_leave_the_registries_alone():
    plugin = importlib.import_module("backbones_attention.plugin")
    before = (list_layers(), list_blocks(), list_backbones())

    layers = plugin.backbones_register_layers()
    blocks = plugin.backbones_register_blocks()
    specs = plugin.backbones_register_backbones()

    assert {name: layer.cls for name, layer in layers.items()} == {
        name: get_attn(name) for name in LAYER_NAMES
    }
    assert set(blocks) == BLOCK_NAMES
    for name, variant in blocks.items():
        attn, kind = name.split("_")
        base, position = (
            (BasicBlock, "after_conv2") if kind == "basic" else (Bottleneck, "after_conv3")
        )
        assert variant == BlockVariant(base, (BlockLayer(attn, position=position, name="se"),))
    assert set(specs) == BACKBONE_NAMES
    assert all(isinstance(s, ResNetSpec) and s.origin == "timm" for s in specs.values())
    assert all(s.block in BLOCK_NAMES for s in specs.values())
    hub_ids = {name: [w.hf_hub_id for w in s.weights] for name, s in specs.items()}
    assert hub_ids == {
        "seresnet50": ["timm/seresnet50.a1_in1k"],
        "seresnext50_32x4d": ["timm/seresnext50_32x4d.racm_in1k"],
        "ecaresnet50d": ["timm/ecaresnet50d.miil_in1k"],
    }
    specs = {name: replace(s, weights=()) for name, s in specs.items()}
    assert specs["seresnet50"] == ResNetSpec("se_bottleneck", (3, 4, 6, 3), origin="timm")
    assert specs["seresnext50_32x4d"] == ResNetSpec(
        "se_bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4, origin="timm"
    )
    assert specs["ecaresnet50d"] == ResNetSpec(
        "eca_bottleneck",
        (3, 4, 6, 3),
        deep_stem=True,
        stem_width=32,
        avg_down=True,
        origin="timm",
    )
    layers.clear()  # a caller mutating one answer does not change the next
    blocks.clear()
    assert set(plugin.backbones_register_layers()) == LAYER_NAMES
    assert set(plugin.backbones_register_blocks()) == BLOCK_NAMES
    assert (list_layers(), list_blocks(), list_backbones()) == before
