"""Messages for options ``create_backbone`` does not have, above all other libraries' spellings.

People arrive with torchvision's, timm's, mmdet's or detectron2's keywords
(``trainable_layers=3``, ``features_only=True``, ``norm_cfg=...``). Each of those
gets an error that gives this library's option, computed from the value where it
can be (``trainable_layers=3`` is ``frozen_stages=1`` with FrozenBatchNorm2d); any
other unknown keyword gets the closest option names and the full list.

This module only words errors; it validates nothing and builds nothing.
"""

import difflib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["OTHER_SPELLINGS", "unknown_options_error"]

_NUM_STAGES = 4
_MAX_TRAINABLE = _NUM_STAGES + 1  # torchvision counts the stem conv as a fifth layer


def _ints(value: Any) -> list[int] | None:
    """``value`` as a list of ints, or None when it is not a sequence of ints."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return list(value)


def _trainable_layers(value: Any) -> str:
    why = (
        "frozen_stages counts from the stem, and torchvision's resnet_fpn_backbone also "
        "puts FrozenBatchNorm2d everywhere"
    )
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TRAINABLE:
        frozen = _NUM_STAGES - value if value < _MAX_TRAINABLE else -1
        return f"use frozen_stages={frozen}, norm_layer='frozen_batchnorm' ({why})"
    return (
        f"use frozen_stages=4 - t (-1 for t={_MAX_TRAINABLE}) with "
        f"norm_layer='frozen_batchnorm' for t in 0..{_MAX_TRAINABLE} ({why})"
    )


def _features_only(value: Any) -> str:
    return (
        "create_backbone always returns the feature maps, as timm's features_only=True "
        "does: drop the option (a classifier is create_model(name, 'classification'))"
    )


# torchvision's weight enum names (``ResNet50_Weights.IMAGENET1K_V2``) and our tags.
_TORCHVISION_WEIGHTS = {"DEFAULT": True, "IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}


def _weights(value: Any) -> str:
    if value is None or value is False:
        return "use pretrained=False (the default)"
    enum_name = getattr(value, "name", value)  # a WeightsEnum member, or its name
    if isinstance(enum_name, str) and enum_name.rsplit(".", 1)[-1] in _TORCHVISION_WEIGHTS:
        return f"use pretrained={_TORCHVISION_WEIGHTS[enum_name.rsplit('.', 1)[-1]]!r}"
    return (
        "use pretrained=True for the variant's default weights, or a tag such as 'tv_in1k' "
        "(python -m backbones weights NAME lists them), a file, an http(s) URL or "
        "'hf-hub:<repo>'"
    )


def _replace_stride_with_dilation(value: Any) -> str:
    flags = list(value) if isinstance(value, list | tuple) else None
    strides = {(False, False, False): 32, (False, False, True): 16, (False, True, True): 8}
    if flags is not None and all(isinstance(f, bool) for f in flags) and tuple(flags) in strides:
        return f"use output_stride={strides[tuple(flags)]}"
    return (
        "use output_stride: 16 dilates layer4 ([False, False, True]), 8 dilates layer3 and "
        "layer4 ([False, True, True]); other patterns have no equivalent"
    )


def _returned_layers(value: Any) -> str:
    layers = _ints(value)
    if layers and all(1 <= k <= _NUM_STAGES for k in layers):
        return f"use out_indices={tuple(sorted(layers))!r} (layer k is level k here too)"
    return "use out_indices: layer1..layer4 are levels 1..4 here too"


_LEVEL_OF_MODULE = {"relu": 0, "act1": 0, **{f"layer{k}": k for k in range(1, 5)}}


def _return_layers(value: Any) -> str:
    names = list(value) if isinstance(value, dict | list | tuple) else None
    if names and all(isinstance(n, str) and n in _LEVEL_OF_MODULE for n in names):
        levels = tuple(sorted(_LEVEL_OF_MODULE[n] for n in names))
        return (
            f"use out_indices={levels!r} (level 0 is the stem after its ReLU, 'relu' in "
            f"torchvision; layer k is level k), and return_dict=True for a dict by module name"
        )
    return "use out_indices: 0 is the stem after its ReLU ('relu'), 1..4 are layer1..layer4"


_DETECTRON2_LEVELS = {f"res{k + 1}": k for k in range(1, 5)}


def _out_features(value: Any) -> str:
    names = list(value) if isinstance(value, list | tuple) else None
    if names and all(isinstance(n, str) and n in _DETECTRON2_LEVELS for n in names):
        levels = tuple(sorted(_DETECTRON2_LEVELS[n] for n in names))
        return f"use out_indices={levels!r} (detectron2's res2..res5 are levels 1..4)"
    return (
        "use out_indices: detectron2's res2..res5 are levels 1..4; its 'stem' (after the "
        "max-pool) has no equivalent, level 0 here is before the max-pool, at stride 2"
    )


_NORM_NAMES = {
    "BN": "batchnorm",
    "BN2d": "batchnorm",
    "SyncBN": "syncbatchnorm",
    "GN": "groupnorm",
    "FrozenBN": "frozen_batchnorm",
}


def _norm_cfg(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in _NORM_NAMES:
        advice = f"use norm_layer={_NORM_NAMES[kind]!r}"
        if isinstance(value, dict) and value.get("requires_grad") is False:
            advice = "use norm_layer='frozen_batchnorm' (fixed statistics and affine)"
        return advice + "; mmdet's norm_eval=True is norm_eval=True here"
    return (
        f"use norm_layer: one of {', '.join(repr(v) for v in sorted(set(_NORM_NAMES.values())))}"
        f" or a callable taking a channel count"
    )


def _norm(value: Any) -> str:
    if isinstance(value, str) and value in _NORM_NAMES:
        return f"use norm_layer={_NORM_NAMES[value]!r}"
    return _norm_cfg(None)


def _drop_path(value: Any) -> str:
    rate = repr(value) if isinstance(value, float | int) and not isinstance(value, bool) else "r"
    return (
        f"use drop_path_rate={rate} (the rate of the last block; it rises linearly "
        f"from 0 at the first)"
    )


def _freeze_at(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TRAINABLE:
        return f"use frozen_stages={value - 1}"
    return "use frozen_stages=FREEZE_AT - 1"


def _same_value(option: str) -> Callable[[Any], str]:
    def advice(value: Any) -> str:
        return f"use {option}={value!r}"

    return advice


def _head_option(value: Any) -> str:
    return (
        "it belongs to the classification head: create_model(name, 'classification', "
        "num_classes=..., drop_rate=..., pool_type=...)"
    )


def _depth(value: Any) -> str:
    return f"the depth is in the name: create_backbone('resnet{value}')"


OTHER_SPELLINGS: dict[str, tuple[str, Callable[[Any], str]]] = {
    # option: (library, advice for a value)
    "trainable_layers": ("torchvision", _trainable_layers),
    "trainable_backbone_layers": ("torchvision", _trainable_layers),
    "features_only": ("timm", _features_only),
    "weights": ("torchvision", _weights),
    "weights_backbone": ("torchvision", _weights),
    "pretrained_backbone": ("torchvision", _weights),
    "checkpoint_path": ("timm", _weights),
    "init_cfg": ("mmdet", _weights),
    "replace_stride_with_dilation": ("torchvision", _replace_stride_with_dilation),
    "returned_layers": ("torchvision", _returned_layers),
    "return_layers": ("torchvision", _return_layers),
    "out_features": ("detectron2", _out_features),
    "norm_cfg": ("mmdet", _norm_cfg),
    "norm": ("detectron2", _norm),
    "drop_path": ("timm", _drop_path),
    "freeze_at": ("detectron2", _freeze_at),
    "zero_init_residual": ("torchvision", _same_value("zero_init_last")),
    "in_channels": ("mmdet", _same_value("in_chans")),
    "block_args": ("timm", _same_value("block_kwargs")),
    "pretrained_cfg": ("timm", _same_value("pretrained_cfg_overlay")),
    "num_classes": ("timm", _head_option),
    "drop_rate": ("timm", _head_option),
    "global_pool": ("timm", _head_option),
    "depth": ("mmdet", _depth),
}
"""Other libraries' keywords for what ``create_backbone`` calls differently."""


def unknown_options_error(
    function: str, unknown: dict[str, Any], accepted: Sequence[str]
) -> TypeError:
    """The error for keywords ``function`` does not take, one sentence per keyword.

    Args:
        function: the function's name, for the message ("create_backbone").
        unknown: the keywords it was given and does not take, with their values.
        accepted: the keywords it takes.

    Returns:
        A TypeError naming each unknown keyword and what to use instead: this library's
        spelling for another library's keyword, else the close matches and the full list.

    Example:
        >>> str(unknown_options_error("f", {"out_indice": (1,)}, ["out_indices"]))
        "unknown option 'out_indice' for f; did you mean 'out_indices'? accepted: out_indices"
    """
    sentences = []
    for key, value in unknown.items():
        if key in OTHER_SPELLINGS:
            library, advice = OTHER_SPELLINGS[key]
            sentences.append(
                f"unknown option {key!r} for {function} ({library}'s spelling): {advice(value)}"
            )
            continue
        close = difflib.get_close_matches(key, list(accepted), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(map(repr, close))}? " if close else "; "
        sentences.append(
            f"unknown option {key!r} for {function}{hint}accepted: {', '.join(sorted(accepted))}"
        )
    return TypeError("; ".join(sentences))
