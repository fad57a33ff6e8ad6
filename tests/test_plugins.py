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

DISTRIBUTIONS = {
    # distribution: (package, entry-point name, plugin module source)
    "bb-good-plugin": ("bb_good_plugin", "good", GOOD_PLUGIN),
    "bb-broken-import": ("bb_broken_import", "broken_import", BROKEN_IMPORT_PLUGIN),
    "bb-raising-hook": ("bb_raising_hook", "raising_hook", RAISING_HOOK_PLUGIN),
    "bb-clash": ("bb_clash", "clash", CLASH_PLUGIN),
}


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
    """Two install locations: "main" (good, broken-import, raising-hook) and "clash"."""
    root = tmp_path_factory.mktemp("plugin-dists")
    projects = {
        dist: _write_distribution(root, dist, package, ep_name, source)
        for dist, (package, ep_name, source) in DISTRIBUTIONS.items()
    }
    main, clash = root / "site-main", root / "site-clash"
    _pip_install([p for d, p in projects.items() if d != "bb-clash"], main)
    _pip_install([projects["bb-clash"]], clash)
    assert sorted(p.name for p in main.glob("*.dist-info")) == [
        "bb_broken_import-1.2.3.dist-info",
        "bb_good_plugin-1.2.3.dist-info",
        "bb_raising_hook-1.2.3.dist-info",
    ]
    return {"main": main, "clash": clash}


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
        "plugin 'clash' (bb_clash.plugin from bb-clash 1.2.3); neither is used. Uninstall one "
        "of them, or set BACKBONES_DISABLE_PLUGIN_AUTOLOAD=1 to skip installed plugins"
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
    assert "good [loaded] bb-good-plugin 1.2.3: bb_good_plugin.plugin\n" in text
    assert "  backbones: toy_resnet, toy_factory\n" in text
    assert "  heads: toy_head\n" in text
    assert "raising_hook [loaded, with errors] bb-raising-hook 1.2.3" in text
    assert (
        "conflict: backbone 'resnet50' from backbones (built-in) and "
        "plugin 'clash' (bb_clash.plugin from bb-clash 1.2.3)\n"
    ) in text
    assert "conflict: block 'toy_bottleneck' from " in text
