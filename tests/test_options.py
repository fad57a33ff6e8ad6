"""One option table: validation, the recorded config, save/load, the CLI flags, the
docstring and the README all come from ``BackboneOptions`` (or are held to it here)."""

import dataclasses

import pytest

from backbones import BackboneOptions, create_backbone
from backbones.cli import _parser
from backbones.factory import create_backbone as factory_create_backbone
from backbones.options import BUILD, WEIGHTS, option_names, option_specs


def test_every_option_has_a_default_a_doc_a_scope_and_a_check():
    for spec in option_specs():
        assert spec.doc and spec.scope in (BUILD, WEIGHTS), spec.name
    assert BackboneOptions().changed() == {}


def test_the_recorded_config_holds_every_build_option_and_nothing_else():
    config = create_backbone("resnet18").backbone_config
    assert list(config) == ["name", *option_names(BUILD)]


def test_the_info_command_has_a_flag_for_every_build_option_with_a_command_line_form():
    info = next(
        a for a in _parser()._subparsers._group_actions[0].choices.items() if a[0] == "info"
    )[1]
    own = {"help", "img_size", "markdown", "no_receptive_field"}  # the command's own flags
    flags = {a.dest for a in info._actions if a.option_strings} - own
    assert flags == {s.name for s in option_specs(BUILD) if s.cli}


def test_the_docstring_of_create_backbone_lists_every_option_once():
    doc = factory_create_backbone.__doc__ or ""
    for name in option_names():
        assert doc.count(f"``{name}=") == 1, name


def test_options_are_frozen_and_normalised():
    options = BackboneOptions(out_indices=[2, 4], block=["basic"] * 4)
    assert (options.out_indices, options.block) == ((2, 4), ("basic",) * 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.in_chans = 4  # type: ignore[misc]


def test_changed_counts_a_falsy_non_default_as_changed():
    assert BackboneOptions(drop_path_rate=0).changed() == {}
    assert BackboneOptions(frozen_stages=0).changed() == {"frozen_stages": 0}
