"""The options of ``create_backbone``, defined once: :class:`BackboneOptions`.

Each option is one field of a frozen dataclass, with its default, a one-line doc and
its check. Everything else reads this table: ``create_backbone`` validates through it,
``backbone_config`` (and so ``save_backbone``/``load_backbone``) records its build
options, the ``info`` command makes its flags from it, and a test holds the README's
option table to it. Adding an option is adding a field here (and honouring it in the
families that support it).

Options come in two scopes. *Build* options go to the backbone's family, which
declares the ones it honours; asking a family for one it does not honour raises
(see :mod:`backbones.factory`). *Weights* options are applied by the pipeline for
every family.

This module checks values; it builds nothing and looks up no registry.
"""

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from backbones._checks import check_bool, check_int, is_int, is_number
from backbones.features import check_out_indices
from backbones.layers import NUM_STAGES, BlockLayer
from backbones.norm import NormLayer, resolve_norm_layer
from backbones.weights.config import check_cfg_overlay
from backbones.weights.in_chans import check_channel_map
from backbones.weights.loading import check_load_options
from backbones.zoo.pyramid import PYRAMIDS

__all__ = [
    "BUILD",
    "WEIGHTS",
    "BackboneOptions",
    "OptionSpec",
    "check_block",
    "check_block_kwargs",
    "option_specs",
    "options_table_markdown",
]

BUILD = "build"
WEIGHTS = "weights"
OUTPUT_STRIDES = (8, 16, 32)

Pretrained = bool | str | os.PathLike[str]


@dataclass(frozen=True)
class OptionSpec:
    """One row of the option table, as the table's readers see it.

    Attributes:
        name: the keyword.
        default: its default value.
        doc: one line saying what it does.
        scope: ``"build"`` (the family honours it) or ``"weights"`` (the pipeline does).
        cli: how the ``info`` command reads it: "int", "ints", "bool", "str", "float",
            or "" when it has no flag (callables, dicts).
    """

    name: str
    default: Any
    doc: str
    scope: str
    cli: str

    @property
    def default_text(self) -> str:
        """The default as the docs write it: ``"batchnorm"``, ``(1, 2, 3, 4)``, ``None``."""
        return f'"{self.default}"' if isinstance(self.default, str) else repr(self.default)


def _option(
    default: Any, doc: str, check: Callable[[str, Any], Any], *, scope: str = BUILD, cli: str = ""
) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check, "scope": scope, "cli": cli})


# -- checks, one per option: each returns the value to keep, or raises naming the option ---
def _out_indices(name: str, value: Any) -> tuple[int, ...] | None:
    return None if value is None else check_out_indices(value)


def _output_stride(name: str, value: Any) -> int:
    if not is_int(value) or value not in OUTPUT_STRIDES:
        raise ValueError(
            f"{name}={value!r} is not supported; accepted: {', '.join(map(str, OUTPUT_STRIDES))}"
        )
    return value


def _frozen_stages(name: str, value: Any) -> int:
    # The range depends on the network (its deepest level built): the family checks it,
    # so the message can give both ends.
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def _norm_layer(name: str, value: Any) -> str | NormLayer:
    resolve_norm_layer(value)  # raises for an unknown name or a built module
    return value  # type: ignore[no-any-return]


def _drop_path_rate(name: str, value: Any) -> float:
    if not is_number(value):
        raise TypeError(f"{name} must be a float in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is out of range; accepted: [0, 1)")
    return value


def check_block(name: str, value: Any) -> str | tuple[str, ...] | None:
    """``block``: None, one name, or one name per stage (as a tuple)."""
    if value is None or (isinstance(value, str) and value):
        return value  # type: ignore[no-any-return]
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == NUM_STAGES
        and all(isinstance(b, str) and b for b in value)
    ):
        return tuple(value)
    raise ValueError(
        f"{name}={value!r} is not accepted; give one registered block name, or "
        f"{NUM_STAGES} names (one per stage), e.g. ('bottleneck',) * {NUM_STAGES}"
    )


# The arguments the trunk passes to every block itself, and where each comes from:
# block_kwargs naming one would otherwise fail with Python's "got multiple values".
_TRUNK_BLOCK_ARGS: dict[str, str] = {
    "inplanes": "the trunk (the previous stage's output channels)",
    "planes": "the trunk (the stage widths 64, 128, 256, 512); a block's 'expansion' scales them",
    "stride": "the trunk (the stage's place in the network) and the output_stride option",
    "downsample": "the trunk, which builds each stage's shortcut (ResNetSpec.avg_down picks "
    "the pooled shortcut of the 'd' variants)",
    "groups": "the variant (ResNetSpec.groups): pick a variant with it, such as "
    "resnext50_32x4d, or register a ResNetSpec of your own",
    "base_width": "the variant (ResNetSpec.width_per_group): pick a variant with it, such as "
    "wide_resnet50_2, or register a ResNetSpec of your own",
    "dilation": "the output_stride option (8 or 16 dilates the last stages)",
    "first_dilation": "the output_stride option (8 or 16 dilates the last stages)",
    "norm_layer": "the norm_layer option",
    "drop_path": "the drop_path_rate option (a rate rising linearly over the blocks)",
    "layers": "the block_layers option (layers at the blocks' insertion points)",
}


def _check_block_kwargs_dict(where: str, kwargs: dict[Any, Any]) -> None:
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(
                f"{where} keys must be str (keyword argument names of the block), "
                f"got {key!r} in {kwargs!r}"
            )
    taken = [key for key in kwargs if key in _TRUNK_BLOCK_ARGS]
    if taken:
        reasons = "; ".join(f"{key!r} comes from {_TRUNK_BLOCK_ARGS[key]}" for key in taken)
        raise TypeError(
            f"{where} cannot set {', '.join(map(repr, taken))}: the trunk passes "
            f"{'it' if len(taken) == 1 else 'them'} to every block itself; {reasons}"
        )


def check_block_kwargs(name: str, value: Any) -> dict[str, Any] | tuple[dict[str, Any], ...] | None:
    """``block_kwargs``: None, one dict for every stage, or one dict per stage."""
    if value is None:
        return None
    if isinstance(value, dict):
        _check_block_kwargs_dict(name, value)
        return value
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == NUM_STAGES
        and all(isinstance(k, dict) for k in value)
    ):
        for stage, kwargs in enumerate(value):
            _check_block_kwargs_dict(f"{name}[{stage}]", kwargs)
        return tuple(value)
    raise TypeError(
        f"{name} must be a dict, {NUM_STAGES} dicts (one per stage) or None, got {value!r}"
    )


def _block_layers(name: str, value: Any) -> tuple[BlockLayer, ...]:
    if isinstance(value, BlockLayer | str | Mapping):
        value = (value,)
    if not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a list of BlockLayer(...) (or dicts of its fields, or layer "
            f"names), got {value!r}"
        )
    return tuple(BlockLayer.coerce(v, name) for v in value)


def _grad_checkpointing(name: str, value: Any) -> bool | tuple[int, ...]:
    if isinstance(value, bool):
        return value
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and value
        and all(is_int(v) and 1 <= v <= NUM_STAGES for v in value)
    ):
        return tuple(sorted(set(value)))
    raise ValueError(
        f"{name}={value!r} is not accepted; give True (every stage), False, or stage "
        f"numbers 1..{NUM_STAGES} (ResNets: layer1..layer{NUM_STAGES}), e.g. (1, 2)"
    )


def _pyramid(name: str, value: Any) -> str | None:
    if value is None or value in PYRAMIDS:
        return value  # type: ignore[no-any-return]
    raise ValueError(f"{name}={value!r} is not supported; accepted: None, {', '.join(PYRAMIDS)}")


def _pretrained(name: str, value: Any) -> Pretrained:
    if not isinstance(value, bool | str | os.PathLike):
        raise TypeError(
            f"{name} must be True/False, a weights tag, a path, a URL or 'hf-hub:<repo>', "
            f"got {type(value).__name__}"
        )
    return value


def _as_is(name: str, value: Any) -> Any:
    return value  # checked with the other weights options, in _check_weights_options


@dataclass(frozen=True)
class BackboneOptions:
    """Every option of :func:`~backbones.create_backbone`, with its default; validated.

    Building one checks every value (TypeError for a wrong type, ValueError for a value
    out of range, UnknownNameError for an unknown norm name); the message names the
    option, the value and what is accepted. Checks that need the network (an
    ``out_indices`` entry beyond its levels, a block name) are its family's.

    Example:
        >>> BackboneOptions(out_indices=[2, 4]).out_indices
        (2, 4)
        >>> BackboneOptions().changed()
        {}
    """

    out_indices: tuple[int, ...] | None = _option(
        None,
        "levels to return, numbered as timm numbers them for the network (ResNets: 0 stem, "
        "1..4 layer1..layer4); negative counts from the end; `None` for the network's "
        "default (ResNets: `(1, 2, 3, 4)`; zoo models: timm's `features_only` default). "
        "Out of range, repeated, or out of network order raises, naming the levels.",
        _out_indices,
        cli="ints",
    )
    in_chans: int = _option(3, "input channels, any positive int", check_int, cli="int")
    output_stride: int = _option(
        32,
        "8, 16 or 32: later stages dilate instead of striding (torchvision's "
        "`replace_stride_with_dilation`)",
        _output_stride,
        cli="int",
    )
    frozen_stages: int = _option(
        -1, "-1 nothing, 0 the stem, k the stem and layer1..layer k", _frozen_stages, cli="int"
    )
    norm_eval: bool = _option(
        False, "keep every BatchNorm in eval mode while training (as mmdet)", check_bool, cli="bool"
    )
    norm_layer: str | NormLayer = _option(
        "batchnorm",
        '`"batchnorm"`, `"frozen_batchnorm"`, `"syncbatchnorm"`, `"groupnorm"` (32 groups) '
        "or a callable taking a channel count",
        _norm_layer,
        cli="str",
    )
    drop_path_rate: float = _option(
        0.0,
        "stochastic depth, rising linearly from 0 at the first block to this rate at the last",
        _drop_path_rate,
        cli="float",
    )
    zero_init_last: bool = _option(
        False,
        "zero gamma in each block's last norm, so each block starts as its shortcut",
        check_bool,
        cli="bool",
    )
    block: str | tuple[str, ...] | None = _option(
        None,
        "a registered block name for all stages, or four names, one per stage",
        check_block,
        cli="strs",
    )
    block_kwargs: dict[str, Any] | tuple[dict[str, Any], ...] | None = _option(
        None,
        "extra keyword arguments for every block, or four dicts, one per stage",
        check_block_kwargs,
    )
    block_layers: tuple[BlockLayer, ...] = _option(
        (),
        "layers to insert into blocks (at `after_conv1/2/3`, by default the last, before the "
        "residual add), per stage: `BlockLayer(...)`, dicts of its fields or layer names",
        _block_layers,
        cli="strs",
    )
    grad_checkpointing: bool | tuple[int, ...] = _option(
        False,
        "recompute activations in the backward pass instead of keeping them (non-reentrant "
        "`torch.utils.checkpoint`, block by block): `True` for every stage, or stage numbers "
        "(ResNets: `(1, 2)` for layer1 and layer2); also `bb.set_grad_checkpointing()`",
        _grad_checkpointing,
    )
    pyramid: str | None = _option(
        None,
        '`"simple"` turns a plain ViT (ViT, DeiT, EVA, DINOv2) into strides 4, 8, 16, 32 from '
        "its last block, as ViTDet does; `out_indices` then picks among those four levels",
        _pyramid,
        cli="str",
    )
    return_dict: bool = _option(
        False, "return `{module_name: tensor}` instead of a list", check_bool, cli="bool"
    )
    pretrained: Pretrained = _option(
        False,
        "`True` for the default weights, a weights tag, a file, an http(s) URL or "
        '`"hf-hub:<repo>"`',
        _pretrained,
        scope=WEIGHTS,
    )
    pretrained_strict: bool = _option(
        True,
        "refuse weights that leave a tensor missing or a checkpoint key unexplained",
        _as_is,
        scope=WEIGHTS,
    )
    pretrained_format: str | None = _option(
        None,
        "the checkpoint's format (`torchvision`, `timm`, `mmdet`, `lightning`, "
        "`detectron2`); detected when `None`",
        _as_is,
        scope=WEIGHTS,
    )
    pretrained_sha256: str = _option(
        "",
        "expected sha256 (or a prefix of 8+ hex digits) of the weights file",
        _as_is,
        scope=WEIGHTS,
    )
    in_chans_strategy: str | tuple[int | None, ...] = _option(
        "repeat",
        'how 3-channel input-conv weights become `in_chans`: `"repeat"`, `"mean"`, '
        '`"zeros"` or a channel map such as `(0, 1, 2, 0)`',
        _as_is,
        scope=WEIGHTS,
    )
    pretrained_cfg_overlay: Mapping[str, Any] | None = _option(
        None, "values replacing those of `pretrained_cfg`", _as_is, scope=WEIGHTS
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = f.metadata["check"](f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self._check_weights_options()

    def _check_weights_options(self) -> None:
        check_load_options(
            strict=self.pretrained_strict,
            format=self.pretrained_format,
            in_chans_strategy=self.in_chans_strategy,
            sha256=self.pretrained_sha256,
            prefix="pretrained_",
        )
        overlay = self.pretrained_cfg_overlay
        if overlay is not None and not isinstance(overlay, Mapping):
            raise TypeError(
                f"pretrained_cfg_overlay must be a dict of pretrained_cfg keys to new values, "
                f"e.g. {{'input_size': (3, 160, 160)}}, or None; got {overlay!r} "
                f"({type(overlay).__name__})"
            )
        if not isinstance(self.in_chans_strategy, str):
            check_channel_map(list(self.in_chans_strategy), self.in_chans)
        # Before any download: a typo or a wrong type fails at once. Kept normalised
        # (lists as tuples), so loading the weights reads it as it is.
        if overlay is not None:
            object.__setattr__(
                self, "pretrained_cfg_overlay", check_cfg_overlay(overlay, in_chans=self.in_chans)
            )

    def changed(self, scope: str | None = None) -> dict[str, Any]:
        """The options that differ from their defaults (of one scope, if given)."""
        return {
            s.name: getattr(self, s.name)
            for s in option_specs(scope)
            if not _same(getattr(self, s.name), s.default)
        }

    def build_options(self) -> dict[str, Any]:
        """Every build option, by name: what a family is asked to honour."""
        return {s.name: getattr(self, s.name) for s in option_specs(BUILD)}

    def to_config(self) -> dict[str, Any]:
        """The build options as JSON data: what ``backbone_config`` records.

        Raises:
            TypeError: an option holds something that is not JSON data (a callable
                ``norm_layer``); the message names it.
        """
        return {name: _jsonable(value) for name, value in self.build_options().items()}


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, bool) is not isinstance(default, bool):
        return False  # 0 == False, but 0 is not the default False
    return bool(value == default)


def _jsonable(value: Any) -> Any:
    """Tuples as lists, BlockLayers as dicts, recursively."""
    if isinstance(value, BlockLayer):
        return _jsonable(value.to_config())
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def option_specs(scope: str | None = None) -> list[OptionSpec]:
    """The option table's rows, in order (of one scope, if given)."""
    rows = []
    for f in fields(BackboneOptions):
        if scope is not None and f.metadata["scope"] != scope:
            continue
        default = f.default if f.default is not MISSING else None
        rows.append(
            OptionSpec(f.name, default, f.metadata["doc"], f.metadata["scope"], f.metadata["cli"])
        )
    return rows


def option_names(scope: str | None = None) -> list[str]:
    """The option names, in table order (of one scope, if given)."""
    return [s.name for s in option_specs(scope)]


def options_table_markdown(scope: str = BUILD) -> str:
    """The README's option table, made from the table (a test compares the two)."""
    lines = ["| option | default | what it does |", "| --- | --- | --- |"]
    for s in option_specs(scope):
        lines.append(f"| `{s.name}` | `{s.default_text}` | {s.doc} |")
    return "\n".join(lines)
