"""Entry-point plugins, end to end: real distributions, installed by pip, found by metadata.

The fixture writes four throwaway third-party distributions, written only from the
README's contract, and pip-installs them into a temporary directory. Each test then
runs a fresh interpreter with that directory on its path, as a user's program would.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GOOD_PLUGIN = """
import pluggy
import torch
from torch import nn

from backbones import ResNetSpec, create_backbone

hookimpl = pluggy.HookimplMarker("backbones")


class ToyBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, first_dilation=None, norm_layer=nn.BatchNorm2d, drop_path=0.0,
                 scale=1.0):
        super().__init__()
        if groups != 1:
            raise ValueError(f"toy_bottleneck supports only groups=1, got groups={groups}")
        out = planes * self.expansion
        self.conv = nn.Conv2d(inplanes, out, 3, stride, padding=first_dilation or dilation,
                              dilation=first_dilation or dilation, bias=False)
        self.bn = norm_layer(out)
        self.shortcut = downsample if downsample is not None else nn.Identity()
        self.scale = scale

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) * self.scale + self.shortcut(x))


class ToyHead(nn.Module):
    def __init__(self, channels, num_outputs):
        super().__init__()
        self.proj = nn.Linear(channels, num_outputs)

    def forward(self, features):
        return self.proj(features[-1].mean((2, 3)))


def toy_head(*, feature_info, num_outputs=2):
    return ToyHead(feature_info.channels()[-1], num_outputs)


def toy_factory(**options):
    return create_backbone("resnet18", **options)


@hookimpl
def backbones_register_blocks():
    return {"toy_bottleneck": ToyBottleneck}


@hookimpl
def backbones_register_heads():
    return {"toy_head": toy_head}


@hookimpl
def backbones_register_backbones():
    return {
        "toy_resnet": ResNetSpec("toy_bottleneck", (1, 1, 1, 1)),
        "toy_factory": toy_factory,
    }
"""

BROKEN_IMPORT_PLUGIN = """
raise ImportError("this plugin needs a library that is not installed")
"""

RAISING_HOOK_PLUGIN = """
import pluggy

hookimpl = pluggy.HookimplMarker("backbones")


@hookimpl
def backbones_register_blocks():
    raise RuntimeError("boom in the blocks hook")


@hookimpl
def backbones_register_heads():
    return {"raising_plugin_head": lambda *, feature_info: None}
"""

CLASH_PLUGIN = """
import pluggy
from torch import nn

from backbones import ResNetSpec

hookimpl = pluggy.HookimplMarker("backbones")


class OtherBlock(nn.Module):
    expansion = 1


@hookimpl
def backbones_register_blocks():
    return {"toy_bottleneck": OtherBlock}


@hookimpl
def backbones_register_backbones():
    return {"resnet50": ResNetSpec("basic", (1, 1, 1, 1))}
"""

# Registers names the library and the attention plugin already use, with other blocks.
SHADOW_PLUGIN = """
import pluggy
from torch import nn

from backbones import ResNetSpec

hookimpl = pluggy.HookimplMarker("backbones")


class ShadowBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, first_dilation=None, norm_layer=nn.BatchNorm2d, drop_path=0.0):
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes * self.expansion, 3, stride, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x)


class ShadowBottleneck(ShadowBlock):
    expansion = 4


@hookimpl
def backbones_register_blocks():
    return {"basic": ShadowBlock, "se_bottleneck": ShadowBottleneck}


@hookimpl
def backbones_register_backbones():
    return {"shadow_resnet": ResNetSpec("basic", (1, 1, 1, 1))}
"""

DISTRIBUTIONS = {
    # distribution: (package, entry-point name, plugin module source)
    "bb-good-plugin": ("bb_good_plugin", "good", GOOD_PLUGIN),
    "bb-broken-import": ("bb_broken_import", "broken_import", BROKEN_IMPORT_PLUGIN),
    "bb-raising-hook": ("bb_raising_hook", "raising_hook", RAISING_HOOK_PLUGIN),
    "bb-clash": ("bb_clash", "clash", CLASH_PLUGIN),
    "bb-shadow": ("bb_shadow", "shadow", SHADOW_PLUGIN),
}
SEPARATE_SITES = ("bb-clash", "bb-shadow")


def _write_distribution(root: Path, dist: str, package: str, ep_name: str, source: str) -> Path:
    project = root / dist
    (project / package).mkdir(parents=True)
    (project / package / "__init__.py").write_text("")
    (project / package / "plugin.py").write_text(source)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "1.2.3"

            [project.entry-points.backbones]
            {ep_name} = "{package}.plugin"

            [tool.setuptools]
            packages = ["{package}"]
            """
        )
    )
    return project


def _pip_install(projects: list[Path], target: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            *map(str, projects),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Install locations: "main" (good, broken-import, raising-hook), "clash" and "shadow"."""
    root = tmp_path_factory.mktemp("plugin-dists")
    projects = {
        dist: _write_distribution(root, dist, package, ep_name, source)
        for dist, (package, ep_name, source) in DISTRIBUTIONS.items()
    }
    main, clash, shadow = root / "site-main", root / "site-clash", root / "site-shadow"
    _pip_install([p for d, p in projects.items() if d not in SEPARATE_SITES], main)
    _pip_install([projects["bb-clash"]], clash)
    _pip_install([projects["bb-shadow"]], shadow)
    assert sorted(p.name for p in main.glob("*.dist-info")) == [
        "bb_broken_import-1.2.3.dist-info",
        "bb_good_plugin-1.2.3.dist-info",
        "bb_raising_hook-1.2.3.dist-info",
    ]
    return {"main": main, "clash": clash, "shadow": shadow}


@pytest.fixture()
def site(sites: dict[str, Path]) -> list[Path]:
    return [sites["main"]]


@pytest.fixture()
def site_with_clash(sites: dict[str, Path]) -> list[Path]:
    return [sites["main"], sites["clash"]]


def _run(site: list[Path], script: str, *, disable: bool = False) -> dict:
    """Run ``script`` in a fresh interpreter that sees the installed distributions.

    The script's last line of output is JSON; warnings are recorded into the
    ``warnings`` key by the prologue.
    """
    prologue = textwrap.dedent(
        """
        import json, sys, warnings
        warnings.simplefilter("always")
        _caught = warnings.catch_warnings(record=True)
        _w = _caught.__enter__()
        out = {}
        """
    )
    epilogue = textwrap.dedent(
        """
        out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in _w]
        print(json.dumps(out))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*map(str, site), os.environ.get("PYTHONPATH", "")]),
    }
    env["BACKBONES_DISABLE_PLUGIN_AUTOLOAD"] = "1" if disable else ""
    result = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(script) + epilogue],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_block_from_an_installed_plugin_works_without_importing_it(site: list[Path]):
    out = _run(
        site,
        """
        import torch
        import backbones
        out["imported_before_use"] = "bb_good_plugin.plugin" in sys.modules
        bb = backbones.create_backbone("resnet50", block="toy_bottleneck",
                                       block_kwargs={"scale": 0.5}).eval()
        feats = bb(torch.randn(1, 3, 64, 64))
        out["shapes"] = [list(f.shape) for f in feats]
        out["channels"] = bb.feature_info.channels()
        out["scale"] = bb.layer1[0].scale
        out["blocks"] = backbones.list_blocks("toy*")
        """,
    )
    assert out["imported_before_use"] is False
    assert out["shapes"] == [[1, 256, 16, 16], [1, 512, 8, 8], [1, 1024, 4, 4], [1, 2048, 2, 2]]
    assert out["channels"] == [256, 512, 1024, 2048]
    assert out["scale"] == 0.5
    assert out["blocks"] == ["toy_bottleneck"]


def test_plugin_backbones_heads_and_specs_are_registered(site: list[Path]):
    out = _run(
        site,
        """
        import torch
        import backbones
        out["backbones"] = backbones.list_backbones("toy*")
        out["heads"] = backbones.list_heads("toy*")
        model = backbones.create_model("toy_factory", "toy_head", num_outputs=3,
                                       backbone_kwargs={"out_indices": (2, 3)})
        out["logits"] = list(model(torch.randn(2, 3, 64, 64)).shape)
        toy = backbones.create_backbone("toy_resnet", out_indices=(1, 4))
        out["toy_channels"] = toy.feature_info.channels()
        out["toy_block"] = type(toy.layer1[0]).__name__
        """,
    )
    assert out["backbones"] == ["toy_factory", "toy_resnet"]
    assert out["heads"] == ["toy_head"]
    assert out["logits"] == [2, 3]
    assert out["toy_channels"] == [256, 2048]
    assert out["toy_block"] == "ToyBottleneck"


def test_a_plugin_that_fails_to_import_costs_a_warning_not_the_library(site: list[Path]):
    out = _run(
        site,
        """
        import backbones
        bb = backbones.create_backbone("resnet18")
        out["works"] = bb.feature_info.channels()
        out["plugins"] = {p.name: [p.loaded, p.errors, p.distribution, p.version]
                          for p in backbones.list_plugins()}
        """,
    )
    assert out["works"] == [64, 128, 256, 512]
    loaded, errors, dist, version = out["plugins"]["broken_import"]
    assert (loaded, dist, version) == (False, "bb-broken-import", "1.2.3")
    assert errors == [
        "failed to import: ImportError: this plugin needs a library that is not installed"
    ]
    assert (
        "PluginWarning: backbones plugin 'broken_import' (distribution bb-broken-import 1.2.3) "
        "failed to import: ImportError: this plugin needs a library that is not installed; "
        "skipped"
    ) in out["warnings"]


def test_a_hook_that_raises_is_recorded_and_the_plugins_other_hooks_still_count(site: list[Path]):
    out = _run(
        site,
        """
        import backbones
        info = {p.name: p for p in backbones.list_plugins()}["raising_hook"]
        out["loaded"], out["errors"], out["registered"] = info.loaded, info.errors, info.registered
        out["heads"] = backbones.list_heads("raising*")
        """,
    )
    assert out["loaded"] is True
    assert out["errors"] == [
        "hook backbones_register_blocks raised RuntimeError: boom in the blocks hook"
    ]
    assert out["registered"] == {"head": ["raising_plugin_head"]}
    assert out["heads"] == ["raising_plugin_head"]
    assert any(
        "backbones plugin 'raising_hook' (distribution bb-raising-hook 1.2.3) hook "
        "backbones_register_blocks raised RuntimeError" in w
        for w in out["warnings"]
    )


def test_a_name_claimed_twice_raises_an_error_naming_both_sources(site_with_clash: list[Path]):
    out = _run(
        site_with_clash,
        """
        import backbones
        calls = ("backbones.create_backbone('resnet50')", "backbones.get_block('toy_bottleneck')")
        for call in calls:
            try:
                eval(call)
            except backbones.NameConflictError as err:
                out[call] = str(err)
        out["others_work"] = backbones.create_backbone("resnet34").feature_info.channels()
        """,
    )
    assert out["backbones.create_backbone('resnet50')"] == (
        "backbone 'resnet50' is registered by more than one source: backbones (built-in) and "
        "plugin 'clash' (bb_clash.plugin from bb-clash 1.2.3); the bare name is not used. "
        "Pick one explicitly ('builtin:resnet50' or 'clash:resnet50'), uninstall one of them, "
        "or set BACKBONES_DISABLE_PLUGIN_AUTOLOAD=1 to skip installed plugins"
    )
    message = out["backbones.get_block('toy_bottleneck')"]
    assert "plugin 'clash' (bb_clash.plugin from bb-clash 1.2.3)" in message
    assert "plugin 'good' (bb_good_plugin.plugin from bb-good-plugin 1.2.3)" in message
    assert out["others_work"] == [64, 128, 256, 512]
    assert any(
        w.startswith("PluginWarning: backbone 'resnet50' is registered by") for w in out["warnings"]
    )


def test_the_disable_switch_skips_every_entry_point(site: list[Path]):
    out = _run(
        site,
        """
        import backbones
        out["plugins"] = [p.name for p in backbones.list_plugins()]
        out["toy"] = backbones.list_backbones("toy*")
        out["resnet50"] = backbones.create_backbone("resnet50").feature_info.channels()
        """,
        disable=True,
    )
    assert out["plugins"] == ["builtin"]
    assert out["toy"] == []
    assert out["resnet50"] == [256, 512, 1024, 2048]
    assert out["warnings"] == []


def test_cli_plugins_lists_distributions_registrations_failures_and_conflicts(
    site_with_clash: list[Path],
):
    out = _run(
        site_with_clash,
        """
        import contextlib, io
        from backbones.cli import main
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            out["status"] = main(["plugins"])
        out["text"] = buffer.getvalue()
        """,
    )
    text = out["text"]
    assert out["status"] == 0
    assert "broken_import [FAILED] bb-broken-import 1.2.3: bb_broken_import.plugin\n" in text
    assert "  error: failed to import: ImportError: this plugin needs a library" in text
    # its toy_bottleneck is contested by the clash plugin
    assert "good [loaded, with conflicts] bb-good-plugin 1.2.3: bb_good_plugin.plugin\n" in text
    assert "  backbones: toy_resnet, toy_factory\n" in text
    assert "  heads: toy_head\n" in text
    assert "raising_hook [loaded, with errors] bb-raising-hook 1.2.3" in text
    assert (
        "conflict: backbone 'resnet50' from backbones (built-in) and "
        "plugin 'clash' (bb_clash.plugin from bb-clash 1.2.3)\n"
    ) in text
    assert "conflict: block 'toy_bottleneck' from " in text


@pytest.fixture()
def site_with_shadow(sites: dict[str, Path]) -> list[Path]:
    return [sites["shadow"]]


def _run_plain(site: list[Path], script: str, *python_args: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (with ``python_args``), no warnings set-up."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*map(str, site), os.environ.get("PYTHONPATH", "")]),
        "BACKBONES_DISABLE_PLUGIN_AUTOLOAD": "",
    }
    return subprocess.run(
        [sys.executable, *python_args, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# -- a plugin re-using names: variants keep their own blocks ----------------------------


def test_variants_keep_their_providers_blocks_when_a_plugin_reuses_the_names(
    site_with_shadow: list[Path],
):
    out = _run(
        site_with_shadow,
        """
        import torch
        import backbones
        r18 = backbones.create_backbone("resnet18").eval()
        out["r18_block"] = type(r18.layer1[0]).__module__ + "." + type(r18.layer1[0]).__name__
        out["r18_shapes"] = [list(f.shape) for f in r18(torch.randn(1, 3, 64, 64))]
        se = backbones.create_backbone("seresnet50", out_indices=(1,))
        out["se_block"] = type(se.layer1[0]).__name__, type(se.layer1[0].se).__name__
        shadow = backbones.create_backbone("shadow_resnet", out_indices=(1,))
        out["shadow_block"] = type(shadow.layer1[0]).__name__
        """,
    )
    assert out["r18_block"] == "backbones.blocks.BasicBlock"
    assert out["r18_shapes"] == [[1, 64, 16, 16], [1, 128, 8, 8], [1, 256, 4, 4], [1, 512, 2, 2]]
    # the attention plugin's variant: the bottleneck with timm's SE layer, not the shadow block
    assert out["se_block"] == ["Bottleneck", "SEModule"]
    assert out["shadow_block"] == "ShadowBlock"  # the shadow plugin's own variant: its block


def test_a_contested_block_name_is_picked_with_its_plugin_name(site_with_shadow: list[Path]):
    out = _run(
        site_with_shadow,
        """
        import backbones
        try:
            backbones.create_backbone("resnet18", block="basic")
        except backbones.NameConflictError as err:
            out["bare"] = str(err)
        out["builtin"] = type(backbones.create_backbone(
            "resnet18", block="builtin:basic").layer1[0]).__name__
        out["shadow"] = type(backbones.create_backbone(
            "resnet18", block="shadow:basic").layer1[0]).__name__
        out["listed"] = backbones.list_blocks("basic")
        out["se_listed"] = backbones.list_blocks("se_bottleneck")
        variant = backbones.get_block("attention:se_bottleneck")
        out["get"] = variant.base.__name__, [layer.layer for layer in variant.layers]
        try:
            backbones.get_block("nobody:basic")
        except backbones.UnknownNameError as err:
            out["unknown_provider"] = str(err)
        """,
    )
    assert out["bare"].startswith(
        "block 'basic' is registered by more than one source: backbones (built-in) and "
        "plugin 'shadow' (bb_shadow.plugin from bb-shadow 1.2.3); the bare name is not used. "
        "Pick one explicitly ('builtin:basic' or 'shadow:basic')"
    )
    assert out["builtin"] == "BasicBlock"
    assert out["shadow"] == "ShadowBlock"
    assert out["listed"] == ["builtin:basic", "shadow:basic"]
    assert out["se_listed"] == ["attention:se_bottleneck", "shadow:se_bottleneck"]
    assert out["get"] == ["Bottleneck", ["se"]]
    assert out["unknown_provider"].startswith("unknown block 'nobody:basic'")
    assert out["unknown_provider"].endswith(
        "No plugin 'nobody' provides 'basic'; it is provided as 'builtin:basic', 'shadow:basic'"
    )


def test_conflicts_show_in_list_plugins_and_the_cli(site_with_shadow: list[Path]):
    out = _run(
        site_with_shadow,
        """
        import contextlib, io
        import backbones
        from backbones.cli import main
        out["conflicts"] = {p.name: p.conflicts for p in backbones.list_plugins()}
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            out["status"] = main(["plugins"])
        out["text"] = buffer.getvalue()
        """,
    )
    assert out["conflicts"]["shadow"] == [
        "block 'basic' is also registered by backbones (built-in); the bare name is not used, "
        "pick one with 'builtin:basic' or 'shadow:basic'",
        "block 'se_bottleneck' is also registered by plugin 'attention' "
        "(backbones_attention.plugin from backbones-attention 0.1.0); the bare name is not "
        "used, pick one with 'attention:se_bottleneck' or 'shadow:se_bottleneck'",
    ]
    assert out["conflicts"]["builtin"] == [
        "block 'basic' is also registered by plugin 'shadow' (bb_shadow.plugin from bb-shadow "
        "1.2.3); the bare name is not used, pick one with 'builtin:basic' or 'shadow:basic'"
    ]
    assert out["conflicts"]["dcn"] == []
    assert out["status"] == 0
    assert "shadow [loaded, with conflicts] bb-shadow 1.2.3: bb_shadow.plugin\n" in out["text"]
    assert "  conflict: block 'basic' is also registered by backbones (built-in)" in out["text"]
    assert any(
        "block 'basic' is registered by backbones (built-in) and" in w for w in out["warnings"]
    )


# -- a broken plugin is named where its names are asked for ------------------------------


def test_an_unknown_name_names_the_plugin_that_failed_to_import(site: list[Path]):
    out = _run(
        site,
        """
        import backbones
        try:
            backbones.create_backbone("resnet50", block="gc_bottleneck")
        except backbones.UnknownNameError as err:
            out["block"] = str(err)
        try:
            backbones.create_backbone("gcresnet50")
        except backbones.UnknownNameError as err:
            out["backbone"] = str(err)
        """,
    )
    for message in (out["block"], out["backbone"]):
        assert (
            "Note: 1 installed plugin failed to load and may provide it: plugin "
            "'broken_import' (bb_broken_import.plugin from bb-broken-import 1.2.3): failed to "
            "import: ImportError: this plugin needs a library that is not installed"
        ) in message
    assert out["block"].startswith("unknown block 'gc_bottleneck'")


def test_load_backbone_says_the_needed_distribution_is_installed_but_broken(
    site: list[Path], tmp_path: Path
):
    path = tmp_path / "gc.safetensors"
    out = _run(
        site,
        f"""
        import json
        from safetensors.torch import load_file, save_file
        from safetensors import safe_open
        import backbones
        from backbones import save_backbone, load_backbone
        path = {str(path)!r}
        save_backbone(backbones.create_backbone("resnet18", out_indices=(1,)), path)
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        # as if saved where the plugin worked: the file needs its block
        config = json.loads(meta["backbones.config"])
        config["block"] = "gc_basic"
        meta["backbones.config"] = json.dumps(config)
        meta["backbones.requires"] = json.dumps([
            {{"kind": "backbone", "name": "resnet18", "plugin": "builtin",
              "distribution": None, "version": None}},
            {{"kind": "block", "name": "gc_basic", "plugin": "broken_import",
              "distribution": "bb-broken-import", "version": "1.2.3"}},
        ])
        save_file(load_file(path), path, metadata=meta)
        try:
            load_backbone(path)
        except backbones.WeightsError as err:
            out["error"] = str(err)
        """,
    )
    assert "needs block 'gc_basic'" in out["error"]
    assert "bb-broken-import" in out["error"]
    assert "is installed but its plugin failed to load" in out["error"]
    assert "ImportError: this plugin needs a library that is not installed" in out["error"]
    assert "pip install" not in out["error"]


# -- warnings as errors ------------------------------------------------------------------


def test_discovery_completes_under_warnings_as_errors(site: list[Path]):
    result = _run_plain(
        site,
        """
        import json
        import backbones
        from backbones.plugin_manager import PluginWarning
        out = {}
        try:
            backbones.create_backbone("resnet18", out_indices=(1,))
        except PluginWarning as err:
            out["first_call"] = str(err)
        out["second_call"] = backbones.create_backbone("resnet18").feature_info.channels()
        out["toy"] = backbones.list_backbones("toy*")
        out["heads"] = backbones.list_heads("raising*")
        out["failed"] = {p.name: p.errors for p in backbones.list_plugins() if p.failed}
        print(json.dumps(out))
        """,
        "-W",
        "error",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # the filter did its job (the first call reports the broken plugin as an error) ...
    assert out["first_call"].startswith("backbones plugin 'broken_import' (distribution ")
    # ... and the registries are complete all the same
    assert out["second_call"] == [64, 128, 256, 512]
    assert out["toy"] == ["toy_factory", "toy_resnet"]
    assert out["heads"] == ["raising_plugin_head"]
    assert sorted(out["failed"]) == ["broken_import", "raising_hook"]
