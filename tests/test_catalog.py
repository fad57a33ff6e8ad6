"""The backbone and block registries: listing, patterns, registration and lazy loading."""

import fnmatch
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import backbones
from backbones import (
    create_backbone,
    get_block,
    list_backbones,
    list_blocks,
    register_backbone,
    register_block,
)
from backbones.blocks import BasicBlock, Bottleneck
from backbones.catalog import BACKBONES, BLOCKS
from backbones.features import FeatureInfo, FeatureLevel
from backbones.options import BUILD, option_names
from backbones.registry import Registry

BUILTIN_BACKBONES = [
    "resnet101",
    "resnet101d",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet50d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext50_32x4d",
    "wide_resnet101_2",
    "wide_resnet50_2",
]
BUILTIN_SOURCE = "backbones (built-in)"


ALL_OPTIONS = set(option_names(BUILD))  # a factory taking **kwargs gets every build option


def unique(prefix: str) -> str:
    """A registry name no other test uses (the registries are process-global)."""
    return f"{prefix}_{uuid.uuid4().hex}"


def builtin(names: list[str]) -> list[str]:
    """The built-in entries among ``names``; other tests may have registered more."""
    return [n for n in names if BACKBONES.source(n) == BUILTIN_SOURCE]


# -- listing -------------------------------------------------------------------------


def test_list_backbones_lists_the_twelve_builtins_sorted():
    names = list_backbones()
    assert names == sorted(names)
    assert builtin(names) == BUILTIN_BACKBONES


def test_list_backbones_resnext_pattern():
    assert builtin(list_backbones("resnext*")) == [
        "resnext101_32x8d",
        "resnext101_64x4d",
        "resnext50_32x4d",
    ]


def test_list_backbones_star_50_star_pattern():
    assert builtin(list_backbones("*50*")) == [
        "resnet50",
        "resnet50d",
        "resnext50_32x4d",
        "wide_resnet50_2",
    ]


def test_list_backbones_character_class_and_question_mark_patterns():
    assert builtin(list_backbones("resnet1[08]*")) == ["resnet101", "resnet101d", "resnet18"]
    assert builtin(list_backbones("resnet?0")) == ["resnet50"]


def test_list_backbones_pattern_is_case_sensitive():
    assert list_backbones("RESNET*") == []


def test_list_backbones_pattern_matching_nothing_gives_empty_list():
    assert list_backbones("vit_*") == []


def test_every_listed_name_matches_its_pattern():
    for pattern in ("resnet*", "*d", "*_2", "wide*", "*"):
        names = list_backbones(pattern)
        assert names, pattern
        assert all(fnmatch.fnmatchcase(n, pattern) for n in names)


def test_list_blocks_holds_basic_and_bottleneck():
    names = list_blocks()
    assert names == sorted(names)
    assert {"basic", "bottleneck"} <= set(names)
    assert list_blocks("b*") == [n for n in names if n.startswith("b")]
    assert BLOCKS.source("basic") == BUILTIN_SOURCE
    assert BLOCKS.source("bottleneck") == BUILTIN_SOURCE


def test_get_block_returns_builtin_classes_and_expansions():
    assert get_block("basic") is BasicBlock
    assert get_block("bottleneck") is Bottleneck
    assert get_block("basic").expansion == 1
    assert get_block("bottleneck").expansion == 4


def test_every_builtin_backbone_is_created_by_name():
    # Only the stem is built (out_indices=(0,)), so even resnet152 is cheap here.
    x = torch.randn(1, 3, 32, 32)
    for name in BUILTIN_BACKBONES:
        model = create_backbone(name, out_indices=(0,)).eval()
        (feature,) = model(x)
        assert feature.shape == (1, 64, 16, 16), name
        assert model.feature_info.channels() == [64]


# -- registering backbones -----------------------------------------------------------


def test_register_backbone_factory_receives_every_option_as_keyword():
    name = unique("test_recording_backbone")
    calls: list[tuple[tuple, dict]] = []

    def factory(*args, **kwargs):
        calls.append((args, kwargs))
        return create_backbone("resnet18", **kwargs)

    returned = register_backbone(name)(factory)
    assert returned is factory  # the decorator hands the factory back unchanged

    model = create_backbone(name, out_indices=(2, 3), frozen_stages=1, return_dict=True)

    assert len(calls) == 1
    args, kwargs = calls[0]
    assert args == ()
    assert set(kwargs) == ALL_OPTIONS
    assert kwargs == {
        "out_indices": (2, 3),
        "in_chans": 3,
        "output_stride": 32,
        "frozen_stages": 1,
        "norm_eval": False,
        "norm_layer": "batchnorm",
        "drop_path_rate": 0.0,
        "zero_init_last": False,
        "block": None,
        "block_kwargs": None,
        "block_layers": (),
        "grad_checkpointing": False,
        "pyramid": None,
        "return_dict": True,
    }
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert list(out) == ["layer2", "layer3"]
    assert [t.shape[1] for t in out.values()] == [128, 256]


class _Tiny(nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


def tiny_backbone() -> nn.Module:
    """The smallest backbone create_backbone accepts from a factory: its input, at stride 1."""
    module = _Tiny()
    module.feature_info = FeatureInfo([FeatureLevel(0, 3, 1, "")], (0,))
    return module


def test_registered_backbone_is_listed_and_returned_object_is_passed_through():
    name = unique("test_listed_backbone")
    sentinel = tiny_backbone()

    @register_backbone(name)
    def factory(**options):
        return sentinel

    assert name in list_backbones()
    assert list_backbones(name) == [name]
    assert create_backbone(name) is sentinel
    assert BACKBONES.source(name).endswith("factory")
    assert __name__ in BACKBONES.source(name)


def test_failed_duplicate_registration_keeps_the_first_factory():
    name = unique("test_dup_backbone")
    first = tiny_backbone()

    @register_backbone(name)
    def make_first(**options):
        return first

    def make_second(**options):
        return nn.ReLU()

    with pytest.raises(ValueError, match="make_first"):
        register_backbone(name)(make_second)
    assert create_backbone(name) is first
    assert list_backbones(name) == [name]


# -- registering blocks --------------------------------------------------------------


def test_register_block_makes_the_block_usable_by_name():
    name = unique("test_block")

    @register_block(name)
    class CountingBlock(BasicBlock):
        built = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            type(self).built += 1

    assert get_block(name) is CountingBlock
    assert name in list_blocks()
    model = create_backbone("resnet18", block=name).eval()
    assert CountingBlock.built == 8  # resnet18 has 2 + 2 + 2 + 2 blocks
    assert all(isinstance(model[f"layer{i}"][0], CountingBlock) for i in range(1, 5))
    out = model(torch.randn(1, 3, 64, 64))
    assert [t.shape for t in out] == [
        (1, 64, 16, 16),
        (1, 128, 8, 8),
        (1, 256, 4, 4),
        (1, 512, 2, 2),
    ]


def test_register_block_returns_the_class_unchanged():
    class Block(BasicBlock):
        pass

    assert register_block(unique("test_block_identity"))(Block) is Block


# -- the Registry class itself -------------------------------------------------------


def test_registry_loader_runs_once_on_first_use():
    calls = []
    reg: Registry[int] = Registry(
        "number", lambda: (calls.append(1), reg.add("one", 1, source="t"))
    )
    assert calls == []  # constructing the registry does not load it
    assert reg.names() == ["one"]
    assert reg.get("one") == 1
    assert len(reg) == 1
    assert "one" in reg
    assert list(reg) == ["one"]
    assert calls == [1]


def test_registry_add_before_first_lookup_still_loads_builtins_first():
    reg: Registry[int] = Registry("number", lambda: reg.add("one", 1, source="builtin"))
    with pytest.raises(ValueError, match="'one' is already registered by builtin"):
        reg.add("one", 2, source="late")
    assert reg.get("one") == 1
    assert reg.source("one") == "builtin"


# -- lazy loading (one fresh interpreter) --------------------------------------------

FIRST_USES = {
    "list_backbones": "backbones.list_backbones()",
    "list_blocks": "backbones.list_blocks()",
    "get_block": "backbones.get_block('basic')",
    "create_backbone": "backbones.create_backbone('resnet18', out_indices=(0,))",
    "register_backbone": "backbones.register_backbone('resnet50')(lambda **kw: None)",
}

LAZY_LOADING_PROBE = """
import json, sys

TRUNK = ("backbones.resnet", "backbones.blocks", "backbones._builtins")

def fresh_backbones():
    # Forget every backbones module so the next import starts from an empty registry;
    # torch and friends stay imported, which keeps this one interpreter cheap.
    for name in [m for m in sys.modules if m == "backbones" or m.startswith("backbones.")]:
        del sys.modules[name]
    import backbones
    return backbones

report = {}
import backbones  # the very first import in this interpreter
report["import"] = {m: m in sys.modules for m in TRUNK}

for case, call in json.loads(sys.argv[1]).items():
    backbones = fresh_backbones()
    before = {m: m in sys.modules for m in TRUNK}
    try:
        eval(call)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    report[case] = {
        "before": before,
        "after": "backbones.resnet" in sys.modules,
        "error": error,
        "backbones": backbones.list_backbones(),
        "blocks": backbones.list_blocks(),
    }
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def lazy_loading_report() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", LAZY_LOADING_PROBE, json.dumps(FIRST_USES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # built-ins only: installed plugin distributions would add names
        env={**os.environ, "BACKBONES_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_backbones_does_not_import_the_trunk(lazy_loading_report):
    assert lazy_loading_report["import"] == {
        "backbones.resnet": False,
        "backbones.blocks": False,
        "backbones._builtins": False,
    }


@pytest.mark.parametrize("case", ["list_backbones", "list_blocks", "get_block", "create_backbone"])
def test_registry_fills_on_first_use(lazy_loading_report, case):
    result = lazy_loading_report[case]
    assert result["error"] is None
    assert not any(result["before"].values())
    assert result["after"] is True
    assert result["backbones"] == BUILTIN_BACKBONES  # exact: nothing else registered there
    assert result["blocks"] == ["basic", "bottleneck"]


def test_registering_a_builtin_name_before_any_lookup_is_refused(lazy_loading_report):
    # The first use is a registration: the built-ins must load first, so the clash shows.
    result = lazy_loading_report["register_backbone"]
    assert not any(result["before"].values())
    assert result["error"].startswith("ValueError: backbone 'resnet50' is already registered")
    assert "by backbones (built-in)" in result["error"]
    assert result["backbones"] == BUILTIN_BACKBONES


def test_package_exports():
    assert set(backbones.__all__) >= {
        "FeatureInfo",
        "FeatureLevel",
        "UnknownNameError",
        "create_backbone",
        "get_block",
        "list_backbones",
        "list_blocks",
        "register_backbone",
        "register_block",
    }
    for name in backbones.__all__:
        assert hasattr(backbones, name), name


# -- threads -----------------------------------------------------------------------------

CONCURRENT_FIRST_USE = """
import json, threading
import backbones

N = 8
barrier = threading.Barrier(N)
results = [None] * N

def first_use(i):
    barrier.wait()  # every thread asks at once, in a process that has discovered nothing
    try:
        if i % 2:
            bb = backbones.create_backbone("resnet18", out_indices=(1,))
            results[i] = bb.feature_info.channels()
        else:
            results[i] = len(backbones.list_backbones())
    except Exception as exc:
        results[i] = f"{type(exc).__name__}: {exc}"

threads = [threading.Thread(target=first_use, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def test_threads_using_the_registry_at_once_all_see_it_complete():
    proc = subprocess.run(
        [sys.executable, "-c", CONCURRENT_FIRST_USE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BACKBONES_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results[1::2] == [[64]] * 4
    assert results[0::2] == [len(BUILTIN_BACKBONES)] * 4


def test_a_loader_runs_once_and_other_threads_wait_for_all_of_it():
    calls = []

    def slow_loader() -> None:
        calls.append(1)
        for i in range(20):
            reg.add(f"n{i:02d}", i, source="slow")
            time.sleep(0.005)  # other threads arrive while it is half done

    reg: Registry[int] = Registry("number", slow_loader)
    barrier = threading.Barrier(8)

    def lookup() -> list[str]:
        barrier.wait()
        return reg.names()

    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda _: lookup(), range(8)))
    assert calls == [1]
    assert seen == [[f"n{i:02d}" for i in range(20)]] * 8


def test_runtime_registration_is_thread_safe():
    reg: Registry[int] = Registry("number")
    barrier = threading.Barrier(8)

    def register(t: int) -> int:
        barrier.wait()
        refused = 0
        for i in range(200):
            reg.add(f"t{t}_{i}", i, source=f"thread {t}")
            reg.names()  # reading while others write must not fail
            try:
                reg.add("shared", t, source=f"thread {t}")
            except ValueError:
                refused += 1
        return refused

    with ThreadPoolExecutor(8) as pool:
        refused = list(pool.map(register, range(8)))
    assert len(reg) == 8 * 200 + 1
    assert sum(refused) == 8 * 200 - 1  # "shared" was taken exactly once


# -- contested names ---------------------------------------------------------------------


def test_a_contested_name_raises_bare_and_resolves_qualified_or_preferred():
    reg: Registry[int] = Registry("number")
    reg.add("one", 1, source="first plugin", provider="first")
    reg.add("one", 11, source="second plugin", provider="second", contested_ok=True)
    with pytest.raises(backbones.NameConflictError) as info:
        reg.get("one")
    assert info.value.qualified == ("first:one", "second:one")
    assert "first plugin and second plugin" in str(info.value)
    assert reg.get("second:one") == 11
    assert reg.get("one", prefer=("second", "builtin")) == 11
    assert reg.get("one", prefer=("nobody", "first")) == 1
    assert reg.names() == ["first:one", "second:one"]
    assert reg.conflicts() == {"one": ("first plugin", "second plugin")}
    assert "one" not in reg and "first:one" in reg
    with pytest.raises(ValueError, match="'one' is already registered by second plugin"):
        reg.add("one", 3, source="second plugin again", provider="second", contested_ok=True)


def test_names_with_the_qualifier_are_refused():
    reg: Registry[int] = Registry("number")
    with pytest.raises(ValueError, match=r"'a:b' contains ':'"):
        reg.add("a:b", 1, source="t")


def test_remove_forgets_a_name_or_one_providers_entry():
    reg: Registry[int] = Registry("number")
    reg.add("x", 1, source="a", provider="a")
    reg.add("x", 2, source="b", provider="b", contested_ok=True)
    reg.remove("a:x")
    assert reg.get("x") == 2
    reg.remove("x")
    assert reg.names() == []
