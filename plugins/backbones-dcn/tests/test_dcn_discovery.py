"""backbones-dcn is found through its installed entry point, with nothing imported by hand.

These tests need the distribution installed (``pip install -e plugins/backbones-dcn``)
and the backbones plugin manager, which loads the ``backbones`` entry-point group.
"""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch

import backbones
from backbones import ResNetSpec, create_backbone, get_block, list_backbones, list_blocks

DCN_BACKBONES = {"resnet50_dcnv2": (3, 4, 6, 3), "resnet101_dcnv2": (3, 4, 23, 3)}
DCN_STAGES = ("bottleneck", "bottleneck", "dcnv2_bottleneck", "dcnv2_bottleneck")


def _dcn_entry_points() -> list[importlib.metadata.EntryPoint]:
    return [ep for ep in importlib.metadata.entry_points(group="backbones") if ep.name == "dcn"]


def test_entry_point_is_declared_by_the_installed_distribution():
    eps = _dcn_entry_points()
    assert len(eps) == 1, eps
    ep = eps[0]
    assert ep.value == "backbones_dcn.plugin"
    assert ep.dist is not None
    assert ep.dist.metadata["Name"] == "backbones-dcn"
    assert ep.dist.version == "0.1.0"
    requires = ep.dist.requires or []
    assert {r.split(";")[0].strip() for r in requires} >= {"backbones", "torch", "torchvision"}


def test_hooks_return_dicts_of_contributions():
    plugin = _dcn_entry_points()[0].load()
    from backbones_dcn.blocks import DCNv2Bottleneck

    assert plugin.backbones_register_blocks() == {"dcnv2_bottleneck": DCNv2Bottleneck}
    rows = plugin.backbones_register_backbones()
    assert set(rows) == set(DCN_BACKBONES)
    for name, layers in DCN_BACKBONES.items():
        spec = rows[name]
        assert isinstance(spec, ResNetSpec)
        assert spec.block == DCN_STAGES
        assert spec.layers == layers
        assert spec.origin == "backbones-dcn"
        assert (spec.groups, spec.width_per_group, spec.deep_stem) == (1, 64, False)


FRESH_PROCESS = """
import json, sys
import backbones
imported_before = sorted(m for m in sys.modules if m.startswith("backbones_dcn"))
blocks = backbones.list_blocks()
dcn_backbones = backbones.list_backbones("*dcn*")
block = backbones.get_block("dcnv2_bottleneck")
plugins = []
if hasattr(backbones, "list_plugins"):
    plugins = [
        {"name": p.name, "distribution": p.distribution, "errors": p.errors,
         "registered": p.registered}
        for p in backbones.list_plugins() if p.name == "dcn"
    ]
print(json.dumps({
    "imported_before": imported_before,
    "blocks": blocks,
    "dcn_backbones": dcn_backbones,
    "block": f"{block.__module__}.{block.__qualname__}",
    "plugins": plugins,
}))
"""


def test_a_fresh_process_discovers_the_plugin_without_importing_it():
    env = {k: v for k, v in os.environ.items() if k != "BACKBONES_DISABLE_PLUGIN_AUTOLOAD"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["imported_before"] == []  # `import backbones` alone does not load plugins
    assert "dcnv2_bottleneck" in found["blocks"]
    assert set(DCN_BACKBONES) <= set(found["dcn_backbones"])
    assert found["block"] == "backbones_dcn.blocks.DCNv2Bottleneck"
    if not hasattr(backbones, "list_plugins"):
        pytest.skip("this backbones has no list_plugins(); discovery itself was checked above")
    assert len(found["plugins"]) == 1, found["plugins"]
    info = found["plugins"][0]
    assert info["distribution"] == "backbones-dcn"
    assert info["errors"] == []
    assert info["registered"]["block"] == ["dcnv2_bottleneck"]
    assert sorted(info["registered"]["backbone"]) == sorted(DCN_BACKBONES)


def test_registered_names_in_this_process():
    assert "dcnv2_bottleneck" in list_blocks()
    assert set(DCN_BACKBONES) <= set(list_backbones("*dcn*"))
    from backbones_dcn.blocks import DCNv2Bottleneck

    assert get_block("dcnv2_bottleneck") is DCNv2Bottleneck


def test_resnet50_dcnv2_puts_dcn_in_layer3_and_layer4():
    # resnet101_dcnv2 differs only in its layers row, checked above; not built, to save time
    from backbones_dcn.blocks import DCNv2Bottleneck

    name = "resnet50_dcnv2"
    model = create_backbone(name)
    plain = create_backbone("resnet50")
    for stage, layers in enumerate(DCN_BACKBONES[name], start=1):
        blocks = list(model.get_submodule(f"layer{stage}"))
        assert len(blocks) == layers
        want_dcn = stage >= 3
        assert all(isinstance(b, DCNv2Bottleneck) == want_dcn for b in blocks), stage
    assert model.feature_info.get_dicts() == plain.feature_info.get_dicts()


def test_a_torchvision_resnet50_checkpoint_loads_all_but_the_offset_convs():
    import torchvision

    state = torchvision.models.resnet50().state_dict()  # weights=None: no download
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model = create_backbone("resnet50_dcnv2")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == []
    assert missing == [k for k in model.state_dict() if ".conv2.conv_offset." in k]
    assert len(missing) == 2 * (6 + 3)
    assert torch.equal(model.get_submodule("layer4.2.conv2").weight, state["layer4.2.conv2.weight"])
