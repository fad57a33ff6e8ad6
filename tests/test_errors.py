"""Every bad input fails early with a clear error naming the bad value and what is accepted.

The checks must not rely on ``assert`` (which ``python -O`` strips): one test re-runs
this file under ``-O``, another scans the package source for assert statements.
"""

import ast
import copy
import os
import pickle
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

import backbones
from backbones import (
    UnknownNameError,
    create_backbone,
    get_block,
    list_backbones,
    list_blocks,
    list_heads,
    register_backbone,
    register_block,
    register_head,
)
from backbones.blocks import BasicBlock
from backbones.options import option_names

PACKAGE_DIR = Path(backbones.__file__).resolve().parent
OPTIMIZED_ENV = "BACKBONES_TEST_EXPECT_PYTHON_O"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- unknown names -------------------------------------------------------------------


def test_unknown_backbone_suggests_the_close_match():
    with pytest.raises(
        UnknownNameError, match=r"unknown backbone 'resnt50'; did you mean 'resnet50'"
    ):
        create_backbone("resnt50")


def test_unknown_backbone_error_is_a_key_error_and_a_value_error():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnt50")
    err = info.value
    assert isinstance(err, KeyError)
    assert isinstance(err, ValueError)
    assert err.kind == "backbone"
    assert err.name == "resnt50"
    assert err.suggestions[0] == "resnet50"
    # Callers catching either builtin type see it.
    for catch in (KeyError, ValueError):
        with pytest.raises(catch):
            create_backbone("resnt50")


def test_unknown_backbone_message_has_no_quotes_around_it():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnt50")
    text = str(info.value)
    assert text.startswith("unknown backbone 'resnt50'")
    assert not text.startswith(("'", '"'))
    assert not text.endswith(("'", '"'))
    assert "did you mean 'resnet50'" in text


def test_unknown_backbone_message_lists_the_accepted_names():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnt50")
    accepted = str(info.value).split("Accepted: ", 1)[1]
    names = accepted.split(", ")
    assert {"resnet18", "resnet50", "resnext50_32x4d", "wide_resnet101_2"} <= set(names)
    assert names == sorted(names)


def test_unknown_backbone_without_close_match_makes_no_suggestion():
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'vit_base'\. Accepted: ") as info:
        create_backbone("vit_base")
    assert info.value.suggestions == []
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("name", [None, 50, ["resnet50"], b"resnet50"])
def test_non_string_backbone_name_is_a_type_error_naming_name(name):
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"name must be a registered backbone name (a str, see list_backbones()), "
            f"got {type(name).__name__} {name!r}"
        ),
    ):
        create_backbone(name)


def test_unknown_block_name_in_get_block():
    with pytest.raises(
        UnknownNameError, match=r"unknown block 'bottlenek'; did you mean 'bottleneck'"
    ):
        get_block("bottlenek")


def test_unknown_block_name_in_block_option():
    with pytest.raises(UnknownNameError, match=r"unknown block 'basik'; did you mean 'basic'"):
        create_backbone("resnet18", block="basik")


def test_unknown_block_name_in_per_stage_list():
    blocks = ("basic", "basic", "bottlenck", "basic")
    with pytest.raises(
        UnknownNameError, match=r"unknown block 'bottlenck'; did you mean 'bottleneck'"
    ):
        create_backbone("resnet18", block=blocks)


def test_unknown_norm_layer_suggests_the_close_match():
    with pytest.raises(
        UnknownNameError, match=r"unknown norm_layer 'batchnom'; did you mean 'batchnorm'"
    ) as info:
        create_backbone("resnet18", norm_layer="batchnom")
    assert isinstance(info.value, ValueError)
    assert info.value.suggestions[0] == "batchnorm"
    assert str(info.value).endswith(
        "Accepted: batchnorm, frozen_batchnorm, groupnorm, syncbatchnorm"
    )


def test_norm_layer_of_wrong_type():
    with pytest.raises(
        TypeError, match=r"norm_layer must be a name \(batchnorm, .*\) or a callable, got 3"
    ):
        create_backbone("resnet18", norm_layer=3)


# -- out_indices ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out_indices", "message"),
    [
        (
            (5,),
            r"out_indices entry 5 is out of range: this network has levels 0\.\.4 \(or -5\.\.-1",
        ),
        ((-6,), r"out_indices entry -6 is out of range: this network has levels 0\.\.4"),
        ((1, 2, 3, 4, 5), r"out_indices entry 5 is out of range"),
        ((1, 1), r"out_indices entry 1 repeats level 1 in \(1, 1\)"),
        ((-1, 4), r"out_indices entry 4 repeats level 4 in \(-1, 4\)"),
        ((0, -5), r"out_indices entry -5 repeats level 0 in \(0, -5\)"),
        ((), r"out_indices is empty; give at least one level"),
        ([], r"out_indices is empty"),
        ((3, 1), r"out_indices \(3, 1\) must be in network order .*e\.g\. \(1, 3\)"),
        ((-1, 2), r"out_indices \(-1, 2\) must be in network order .*e\.g\. \(2, 4\)"),
    ],
)
def test_out_indices_bad_value(out_indices, message):
    with pytest.raises(ValueError, match=message):
        create_backbone("resnet18", out_indices=out_indices)


@pytest.mark.parametrize(
    ("out_indices", "message"),
    [
        ((1.0, 2), r"out_indices must hold ints, got 1\.0 in \(1\.0, 2\)"),
        ((1, "2"), r"out_indices must hold ints, got '2' in \(1, '2'\)"),
        ((True, 2), r"out_indices must hold ints, got True"),
        ((1, None), r"out_indices must hold ints, got None"),
        ("1234", r"out_indices must be a sequence of ints such as \(1, 2, 3, 4\), got '1234'"),
        (b"\x01", r"out_indices must be a sequence of ints"),
        (3, r"out_indices must be a sequence of ints .*got 3"),
        ({1, 2}, r"out_indices must be a sequence of ints"),
    ],
)
def test_out_indices_bad_type(out_indices, message):
    with pytest.raises(TypeError, match=message):
        create_backbone("resnet18", out_indices=out_indices)


# -- output_stride, frozen_stages, in_chans, drop_path_rate --------------------------


@pytest.mark.parametrize("output_stride", [4, 64, 12, 0, -32, "16", None, True, 16.0])
def test_output_stride_unsupported(output_stride):
    with pytest.raises(
        ValueError,
        match=re.escape(f"output_stride={output_stride!r} is not supported; accepted: 8, 16, 32"),
    ):
        create_backbone("resnet18", output_stride=output_stride)


@pytest.mark.parametrize("frozen_stages", [-2, 5, 100])
def test_frozen_stages_out_of_range(frozen_stages):
    with pytest.raises(
        ValueError,
        match=rf"frozen_stages={frozen_stages} is out of range; accepted: -1 \(nothing\) \.\. 4",
    ):
        create_backbone("resnet18", frozen_stages=frozen_stages)


def test_frozen_stages_deeper_than_the_built_network():
    with pytest.raises(
        ValueError,
        match=r"frozen_stages=4 is out of range; accepted: -1 \(nothing\) \.\. 2 "
        r"\(the deepest stage built for out_indices=\(1, 2\)\)",
    ):
        create_backbone("resnet18", out_indices=(1, 2), frozen_stages=4)


def test_frozen_stages_limit_follows_negative_out_indices():
    with pytest.raises(ValueError, match=r"accepted: -1 \(nothing\) \.\. 3 .*out_indices=\(3,\)"):
        create_backbone("resnet18", out_indices=(-2,), frozen_stages=4)


@pytest.mark.parametrize("frozen_stages", [1.0, "1", True, None])
def test_frozen_stages_wrong_type(frozen_stages):
    with pytest.raises(
        TypeError, match=re.escape(f"frozen_stages must be an int, got {frozen_stages!r}")
    ):
        create_backbone("resnet18", frozen_stages=frozen_stages)


@pytest.mark.parametrize("in_chans", [0, -1])
def test_in_chans_not_positive(in_chans):
    with pytest.raises(
        ValueError, match=re.escape(f"in_chans must be a positive int, got {in_chans!r}")
    ):
        create_backbone("resnet18", in_chans=in_chans)


@pytest.mark.parametrize("in_chans", [2.5, True, "3", None])
def test_in_chans_not_an_int(in_chans):
    with pytest.raises(
        TypeError, match=re.escape(f"in_chans must be a positive int, got {in_chans!r}")
    ):
        create_backbone("resnet18", in_chans=in_chans)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_drop_path_rate_out_of_range(rate):
    with pytest.raises(
        ValueError, match=re.escape(f"drop_path_rate={rate!r} is out of range; accepted: [0, 1)")
    ):
        create_backbone("resnet18", drop_path_rate=rate)


@pytest.mark.parametrize("rate", ["0.1", None, True])
def test_drop_path_rate_wrong_type(rate):
    with pytest.raises(
        TypeError, match=re.escape(f"drop_path_rate must be a float in [0, 1), got {rate!r}")
    ):
        create_backbone("resnet18", drop_path_rate=rate)


# -- block, block_kwargs -------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        ("basic", "basic", "basic"),
        ["basic"] * 5,
        (),
        ("basic", "basic", "basic", 1),
        ("basic", None, "basic", "basic"),
        3,
    ],
)
def test_block_sequence_of_wrong_shape(block):
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"block={block!r} is not accepted; give one registered block name, or 4 names"
        ),
    ):
        create_backbone("resnet18", block=block)


def test_basic_block_refuses_groups():
    with pytest.raises(ValueError, match=r"basic block supports only groups=1, got groups=32"):
        create_backbone("resnext50_32x4d", block="basic")


def test_basic_block_refuses_wide_base_width():
    with pytest.raises(
        ValueError, match=r"basic block supports only base_width=64, got base_width=128"
    ):
        create_backbone("wide_resnet50_2", block="basic")


@pytest.mark.parametrize("block_kwargs", [[("x", 1)], "x=1", 1, [{}, {}, {}]])
def test_block_kwargs_not_a_dict(block_kwargs):
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"block_kwargs must be a dict, 4 dicts (one per stage) or None, got {block_kwargs!r}"
        ),
    ):
        create_backbone("resnet18", block_kwargs=block_kwargs)


def test_block_kwargs_unknown_to_the_block():
    with pytest.raises(
        TypeError,
        match=r"block BasicBlock in layer1 does not accept block_kwargs \['no_such_option'\] "
        r"\(.*unexpected keyword argument 'no_such_option'\); give one dict per stage",
    ):
        create_backbone("resnet18", block_kwargs={"no_such_option": 1})


def test_block_kwargs_cannot_override_trunk_arguments():
    with pytest.raises(
        TypeError,
        match=r"block_kwargs cannot set 'stride': the trunk passes it to every block itself; "
        r"'stride' comes from the trunk \(the stage's place in the network\) and the "
        r"output_stride option",
    ):
        create_backbone("resnet18", block_kwargs={"stride": 2})


@pytest.mark.parametrize(
    ("key", "source"),
    [
        ("inplanes", "the trunk"),
        ("planes", "the trunk"),
        ("downsample", "the trunk"),
        ("groups", "the variant (ResNetSpec.groups)"),
        ("base_width", "the variant (ResNetSpec.width_per_group)"),
        ("dilation", "the output_stride option"),
        ("first_dilation", "the output_stride option"),
        ("norm_layer", "the norm_layer option"),
        ("drop_path", "the drop_path_rate option"),
    ],
)
def test_block_kwargs_naming_a_trunk_argument_names_the_option_that_sets_it(key, source):
    # Before: Python's "got multiple values for keyword argument", from inside the trunk.
    with pytest.raises(
        TypeError,
        match=re.escape(f"block_kwargs cannot set {key!r}: the trunk passes it to every block")
        + r".*"
        + re.escape(f"{key!r} comes from {source}"),
    ):
        create_backbone("resnet18", block="basic", block_kwargs={key: 2})


def test_block_kwargs_groups_points_to_a_variant_that_sets_it():
    with pytest.raises(TypeError, match=r"such as resnext50_32x4d, or register a ResNetSpec"):
        create_backbone("resnet18", block="basic", block_kwargs={"groups": 2})


def test_per_stage_block_kwargs_name_the_stage_and_every_trunk_argument():
    per_stage = [{}, {}, {"stride": 2, "drop_path": 0.1, "ok": 1}, {}]
    with pytest.raises(
        TypeError,
        match=r"block_kwargs\[2\] cannot set 'stride', 'drop_path': the trunk passes them",
    ):
        create_backbone("resnet18", block_kwargs=per_stage)


@pytest.mark.parametrize(
    ("block_kwargs", "where", "key"),
    [
        ({1: 2}, "block_kwargs", "1"),
        ({"ok": 1, None: 2}, "block_kwargs", "None"),
        ([{}, {}, {}, {(1,): 2}], "block_kwargs[3]", "(1,)"),
    ],
)
def test_block_kwargs_keys_must_be_strings(block_kwargs, where, key):
    # Before: Python's "keywords must be strings", without naming the option.
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"{where} keys must be str (keyword argument names of the block), got {key}"
        ),
    ):
        create_backbone("resnet18", block_kwargs=block_kwargs)


# -- bool options --------------------------------------------------------------------


@pytest.mark.parametrize("option", ["norm_eval", "zero_init_last", "return_dict"])
@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_bool_option_given_non_bool(option, value):
    with pytest.raises(
        TypeError, match=re.escape(f"{option} must be True or False, got {value!r}")
    ):
        create_backbone("resnet18", **{option: value})


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="pretrainde"):
        create_backbone("resnet18", pretrainde=True)


def test_unknown_option_suggests_close_options_and_lists_every_option():
    with pytest.raises(TypeError) as info:
        create_backbone("resnet18", pretrainde=True)
    text = str(info.value)
    assert text.startswith(
        "unknown option 'pretrainde' for create_backbone; did you mean 'pretrained'"
    )
    accepted = text.split("accepted: ", 1)[1].split(", ")
    assert accepted == sorted(accepted)
    assert accepted == sorted(option_names())  # the option table, every entry


def test_unknown_option_without_a_close_match_lists_the_options():
    with pytest.raises(
        TypeError, match=r"^unknown option 'xyz' for create_backbone; accepted: block, "
    ):
        create_backbone("resnet18", xyz=1)


@pytest.mark.parametrize(
    ("option", "value", "advice"),
    [
        (
            "trainable_layers",
            3,
            "(torchvision's spelling): use frozen_stages=1, norm_layer='frozen_batchnorm'",
        ),
        ("trainable_layers", 5, "use frozen_stages=-1, norm_layer='frozen_batchnorm'"),
        ("trainable_layers", 0, "use frozen_stages=4, norm_layer='frozen_batchnorm'"),
        ("trainable_backbone_layers", "x", "use frozen_stages=4 - t (-1 for t=5)"),
        ("features_only", True, "(timm's spelling): create_backbone always returns the feature"),
        ("weights", "IMAGENET1K_V2", "use pretrained='tv2_in1k'"),
        ("weights", "DEFAULT", "use pretrained=True"),
        ("weights", None, "use pretrained=False"),
        ("pretrained_backbone", True, "use pretrained=True for the variant's default weights"),
        ("replace_stride_with_dilation", [False, False, True], "use output_stride=16"),
        ("replace_stride_with_dilation", [False, True, True], "use output_stride=8"),
        ("replace_stride_with_dilation", [True, True, True], "other patterns have no equivalent"),
        ("returned_layers", [2, 3, 4], "use out_indices=(2, 3, 4)"),
        ("return_layers", {"relu": "0", "layer3": "1"}, "use out_indices=(0, 3)"),
        (
            "out_features",
            ["res2", "res3", "res5"],
            "(detectron2's spelling): use out_indices=(1, 2, 4)",
        ),
        ("out_features", ["stem"], "its 'stem' (after the max-pool) has no equivalent"),
        ("norm_cfg", {"type": "SyncBN"}, "(mmdet's spelling): use norm_layer='syncbatchnorm'"),
        ("norm_cfg", {"type": "BN", "requires_grad": False}, "norm_layer='frozen_batchnorm'"),
        ("norm", "FrozenBN", "(detectron2's spelling): use norm_layer='frozen_batchnorm'"),
        ("drop_path", 0.1, "use drop_path_rate=0.1"),
        ("freeze_at", 2, "use frozen_stages=1"),
        ("zero_init_residual", True, "use zero_init_last=True"),
        ("in_channels", 4, "use in_chans=4"),
        ("num_classes", 10, "create_model(name, 'classification', num_classes=..."),
        ("depth", 50, "create_backbone('resnet50')"),
    ],
)
def test_other_libraries_spellings_name_our_option(option, value, advice):
    with pytest.raises(TypeError) as info:
        create_backbone("resnet18", **{option: value})
    text = str(info.value)
    assert text.startswith(f"unknown option {option!r} for create_backbone (")
    assert advice in text


def test_every_unknown_option_is_reported_at_once():
    with pytest.raises(TypeError) as info:
        create_backbone("resnet18", features_only=True, out_indice=(1,))
    text = str(info.value)
    assert "unknown option 'features_only'" in text
    assert "unknown option 'out_indice' for create_backbone; did you mean 'out_indices'" in text


def test_create_model_backbone_kwargs_go_through_the_same_check():
    from backbones import create_model

    with pytest.raises(TypeError, match=r"unknown option 'trainable_layers' .*frozen_stages=2"):
        create_model("resnet18", "classification", backbone_kwargs={"trainable_layers": 2})


def test_norm_layer_returning_no_module_names_the_option_and_the_value():
    # Before: "int is not a Module subclass", from nn.Module.__setattr__.
    with pytest.raises(
        TypeError,
        match=r"norm_layer=.*<lambda> must return an nn\.Module for a channel count; "
        r"norm_layer\(64\) returned int 5",
    ):
        create_backbone("resnet18", norm_layer=lambda c: 5)


def test_norm_layer_given_a_built_module_says_to_pass_the_class():
    # Before: AttributeError: 'int' object has no attribute 'dim', from BatchNorm's forward.
    with pytest.raises(
        TypeError,
        match=r"norm_layer must build one norm per layer from a channel count, e\.g\. "
        r"nn\.BatchNorm2d .*not a module already built \(BatchNorm2d\(3,",
    ):
        create_backbone("resnet18", norm_layer=nn.BatchNorm2d(3))


def test_norm_layer_that_cannot_take_a_channel_count_names_the_option():
    with pytest.raises(
        TypeError,
        match=r"norm_layer=GroupNorm must be callable as norm_layer\(num_channels\); "
        r"norm_layer\(64\) raised TypeError: .*num_channels",
    ):
        create_backbone("resnet18", norm_layer=nn.GroupNorm)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        create_backbone("resnet18", (1, 2, 3, 4))


# -- registration --------------------------------------------------------------------


def test_register_backbone_with_a_taken_name_names_the_existing_source():
    def my_factory(**options):
        return nn.Identity()

    with pytest.raises(
        ValueError,
        match=r"backbone 'resnet50' is already registered by backbones \(built-in\); "
        r"refusing to replace it with one from .*my_factory",
    ):
        register_backbone("resnet50")(my_factory)
    assert create_backbone("resnet50", out_indices=(0,)).feature_info.channels() == [64]


def test_register_backbone_twice_names_the_first_registration():
    name = unique("test_twice")

    @register_backbone(name)
    def first_factory(**options):
        return nn.Identity()

    with pytest.raises(
        ValueError, match=rf"already registered by {re.escape(__name__)}\..*first_factory"
    ):
        register_backbone(name)(lambda **options: nn.Identity())


@pytest.mark.parametrize("name", ["", None, 7])
def test_register_backbone_name_must_be_a_non_empty_string(name):
    with pytest.raises(
        TypeError, match=re.escape(f"a backbone name must be a non-empty string, got {name!r}")
    ):
        register_backbone(name)(lambda **options: nn.Identity())


def test_register_block_with_a_taken_name():
    class Block(BasicBlock):
        pass

    with pytest.raises(
        ValueError, match=r"block 'basic' is already registered by backbones \(built-in\)"
    ):
        register_block("basic")(Block)
    assert get_block("basic") is BasicBlock


@pytest.mark.parametrize("expansion", [None, 0, -1, 1.0, "4", True])
def test_register_block_without_a_positive_int_expansion(expansion):
    name = unique("test_bad_expansion")
    attrs = {} if expansion is None else {"expansion": expansion}
    cls = type("NoExpansion", (nn.Module,), attrs)
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"block {name!r} (NoExpansion) needs a positive int class attribute "
            f"'expansion', got {expansion!r}"
        ),
    ):
        register_block(name)(cls)
    assert name not in list_blocks()


@pytest.mark.parametrize("obj", [BasicBlock(64, 64), object, lambda: None])
def test_register_block_needs_an_nn_module_subclass(obj):
    name = unique("test_not_a_block")
    with pytest.raises(
        TypeError, match=re.escape(f"block {name!r} must be an nn.Module subclass, got")
    ):
        register_block(name)(obj)
    assert name not in list_blocks()


def test_failed_registration_leaves_no_trace():
    name = unique("test_no_trace")
    with pytest.raises(TypeError):
        register_block(name)(nn.Module)  # no expansion
    with pytest.raises(UnknownNameError):
        get_block(name)
    assert name not in list_backbones("*") + list_blocks("*")


@pytest.mark.parametrize("obj", [5, "resnet18", None, nn.Identity])
def test_register_backbone_refuses_a_non_callable(obj):
    name = unique("test_not_a_factory")
    if callable(obj):  # a class is a callable factory: accepted
        register_backbone(name)(obj)
        assert name in list_backbones()
        return
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"backbone {name!r} must be registered with a factory (a callable returning an "
            f"nn.Module with feature_info), got {type(obj).__name__} {obj!r}"
        ),
    ):
        register_backbone(name)(obj)
    assert name not in list_backbones()


@pytest.mark.parametrize("obj", [5, "fpn", None])
def test_register_head_refuses_a_non_callable(obj):
    name = unique("test_not_a_head")
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"head {name!r} must be registered with a factory (a callable returning a head "
            f"nn.Module), got {type(obj).__name__} {obj!r}"
        ),
    ):
        register_head(name)(obj)
    assert name not in list_heads()


@pytest.mark.parametrize(
    ("decorator", "kind"),
    [(register_backbone, "backbone"), (register_head, "head"), (register_block, "block")],
)
def test_register_without_a_name_says_to_give_the_name_first(decorator, kind):
    # A bare `@register_backbone` used to replace the function with the inner decorator.
    def my_factory(**options):
        return nn.Identity()

    with pytest.raises(
        TypeError,
        match=rf"a {kind} name must be a non-empty string, got <function .*my_factory.*>; "
        rf"give the name first: @{decorator.__name__}\('my_name'\)",
    ):
        decorator(my_factory)


def _register_returning(obj: object) -> str:
    name = unique("test_bad_factory")

    def bad_factory(**options):
        return obj

    register_backbone(name)(bad_factory)
    return name


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        (nn.Identity(), "returned a Identity without a feature_info attribute"),
        (5, "returned int 5, not an nn.Module"),
        (None, "returned NoneType None, not an nn.Module"),
    ],
)
def test_factory_result_is_checked_where_the_factory_returns(returned, problem):
    name = _register_returning(returned)
    with pytest.raises(
        TypeError,
        match=re.escape(f"backbone {name!r}: its factory {__name__}.")
        + r".*bad_factory "
        + re.escape(problem)
        + r"; a factory must return an nn\.Module whose feature_info",
    ):
        create_backbone(name)


def test_factory_result_with_a_feature_info_of_the_wrong_type():
    module = nn.Identity()
    module.feature_info = [{"num_chs": 64, "reduction": 4}]  # timm's list form
    name = _register_returning(module)
    with pytest.raises(
        TypeError, match=r"returned a Identity whose feature_info is a list, not a FeatureInfo"
    ):
        create_backbone(name)


# -- forward input ---------------------------------------------------------------------

INPUT_CONFIGS = [
    ("resnet18", {}),  # basic blocks, 7x7 stem
    ("resnet50", {"out_indices": (0,)}),  # the stem alone
    ("resnet50d", {}),  # deep stem, average-pooled shortcuts
    ("resnet50d", {"output_stride": 8, "out_indices": (2, 3, 4)}),  # dilated, "same" pools
    ("resnet18", {"output_stride": 16, "return_dict": True}),
]


@pytest.mark.parametrize(("variant", "options"), INPUT_CONFIGS)
@pytest.mark.parametrize("shape", [(1, 3, 0, 0), (2, 3, 0, 32), (1, 3, 32, 0)])
def test_empty_image_names_the_shape_and_the_minimum_size(variant, options, shape):
    # Before: torch's "Calculated padded input size per channel: (6 x 6). Kernel size ...".
    model = create_backbone(variant, **options).eval()
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"the input of shape {shape} is too small; this backbone expects (N, 3, H, W) "
            f"(in_chans=3) with H and W at least 1"
        ),
    ):
        model(torch.zeros(shape))


@pytest.mark.parametrize(("variant", "options"), INPUT_CONFIGS)
def test_the_minimum_size_runs_for_every_variant_and_option(variant, options):
    # Every conv and pool pads, so 1x1 is the true minimum: it must not be refused.
    model = create_backbone(variant, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 1, 1))
    feats = list(out.values()) if isinstance(out, dict) else out
    assert [tuple(t.shape[-2:]) for t in feats] == [(1, 1)] * len(model.feature_info)


@pytest.mark.parametrize(
    ("in_chans", "shape"), [(3, (1, 1, 32, 32)), (4, (2, 3, 32, 32)), (1, (1, 3, 16, 16))]
)
def test_input_with_the_wrong_channel_count_names_the_expected_shape(in_chans, shape):
    model = create_backbone("resnet18", in_chans=in_chans, out_indices=(1,)).eval()
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"the input of shape {shape} has the wrong number of channels; this backbone "
            f"expects (N, {in_chans}, H, W) (in_chans={in_chans})"
        ),
    ):
        model(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 3, 32, 32), (32,)])
def test_input_that_is_not_4d_names_the_expected_shape(shape):
    model = create_backbone("resnet18", out_indices=(1,)).eval()
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"the input of shape ({', '.join(map(str, shape))}) is {len(shape)}-d; this "
            f"backbone expects (N, 3, H, W)"
        ),
    ):
        model(torch.zeros(shape))


def test_input_check_survives_torchscript_and_torch_fx():
    import torch.fx

    model = create_backbone("resnet18", out_indices=(1, 2)).eval()
    traced = torch.fx.symbolic_trace(model)
    # one leaf call, no branch on a proxy's shape: the graph traces and still checks
    checks = [n for n in traced.graph.nodes if "_check_input" in str(n.target)]
    assert len(checks) == 1
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for compiled in (traced, scripted):
            assert [t.shape for t in compiled(x)] == [t.shape for t in model(x)]
    message = "the input of shape (1, 3, 0, 0) is too small"
    with pytest.raises(ValueError, match=re.escape(message)):
        traced(torch.zeros(1, 3, 0, 0))
    with pytest.raises(torch.jit.Error, match=re.escape(message)):
        scripted(torch.zeros(1, 3, 0, 0))


def test_optimized_copy_keeps_the_input_check():
    from backbones import optimize_for_inference

    fast = optimize_for_inference(create_backbone("resnet18", out_indices=(1,)))
    with pytest.raises(ValueError, match=r"has the wrong number of channels"):
        fast(torch.zeros(1, 1, 32, 32))


# -- the exception type itself -------------------------------------------------------


def test_unknown_name_error_survives_pickling():
    err = UnknownNameError("backbone", "resnt50", ["resnet50"])
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err)
    assert (clone.kind, clone.name, clone.suggestions) == ("backbone", "resnt50", ["resnet50"])


def test_unknown_name_error_survives_copy():
    err = UnknownNameError("backbone", "resnt50", ["resnet50"])
    assert str(copy.copy(err)) == str(err)


# -- no reliance on assert -----------------------------------------------------------


def test_package_source_has_no_assert_statements():
    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert {f.name for f in files} >= {
        "registry.py",
        "resnet.py",
        "features.py",
        "blocks.py",
        "norm.py",
    }
    found = [
        f"{path.name}:{node.lineno}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Assert)
    ]
    assert found == []


def test_interpreter_flag_matches_the_subprocess_request():
    # Runs in both passes; only the -O pass sets the variable, and then -O must be in effect.
    if os.environ.get(OPTIMIZED_ENV) == "1":
        assert sys.flags.optimize >= 1
    else:
        assert OPTIMIZED_ENV not in os.environ


def test_errors_hold_under_python_optimized():
    """Re-run this file under ``python -O``: assert statements vanish, validation must not.

    pytest rewrites the asserts of test modules into explicit raises, so the tests
    themselves still check under -O; only the library's own asserts would disappear.
    """
    env = {**os.environ, OPTIMIZED_ENV: "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-O",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not optimized",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=PACKAGE_DIR.parent,
        timeout=600,
        check=False,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-5000:]
    summary = report.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert not re.search(r"\d+ (failed|errors?)\b", summary), summary
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed > 100, summary
