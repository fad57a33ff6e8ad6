"""Checkpoint formats of other libraries, as data: where the weights sit and how keys map.

Each :class:`CheckpointFormat` says which nested entry holds the state dict, which
key prefixes to strip, which regex renames turn its names into ours (torchvision's
names, which timm's ResNets share), and which keys to drop knowingly (classifiers,
necks, heads). :func:`detect_format` recognises a checkpoint from its keys; an explicit
``format=`` overrides it.

Our names: ``conv1``, ``bn1``, ``layer1..4.<i>.conv1..3 / bn1..3 / downsample.0..1``
(deep stems: ``conv1.0 .. conv1.6``; avg-down shortcuts: ``downsample.1..2``).
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from backbones.errors import UnknownNameError, WeightsError

__all__ = [
    "FORMATS",
    "CheckpointFormat",
    "check_format",
    "detect_format",
    "extract_state_dict",
    "strip_outer_prefix",
    "to_our_names",
]


@dataclass(frozen=True)
class CheckpointFormat:
    """How one library stores a ResNet, as data.

    Attributes:
        name: the format's name, used by ``pretrained_format=``.
        description: what writes such checkpoints.
        nesting: entries that may hold the state dict, tried in order (e.g. "state_dict").
        prefixes: key prefixes to strip, tried in order; the first one that every
            backbone key carries is removed.
        renames: ``(regex, replacement)`` pairs applied in order to every key.
        drop: regexes of keys (after renaming) that are not the backbone's and are
            dropped knowingly: classifiers, necks, heads.
    """

    name: str
    description: str
    nesting: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = (r"^fc\.",)


_HEADS = r"^(fc|head|neck|rpn_head|roi_head|bbox_head|mask_head|decode_head|auxiliary_head)\."

# detectron2: stem.conv1(.norm), res2..res5.<i>.conv1..3(.norm), shortcut(.norm).
_DETECTRON2_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^stem\.conv1\.norm\.", "bn1."),
    (r"^stem\.conv1\.", "conv1."),
    (r"^res2\.", "layer1."),
    (r"^res3\.", "layer2."),
    (r"^res4\.", "layer3."),
    (r"^res5\.", "layer4."),
    (r"\.shortcut\.norm\.", ".downsample.1."),
    (r"\.shortcut\.", ".downsample.0."),
    (r"\.conv([123])\.norm\.", r".bn\1."),
)

# mmdet / mmpretrain ResNetV1d: a deep stem `stem.0..8` (conv, bn, relu) x 3.
_MMDET_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^stem\.0\.", "conv1.0."),
    (r"^stem\.1\.", "conv1.1."),
    (r"^stem\.3\.", "conv1.3."),
    (r"^stem\.4\.", "conv1.4."),
    (r"^stem\.6\.", "conv1.6."),
    (r"^stem\.7\.", "bn1."),
)

FORMATS: dict[str, CheckpointFormat] = {
    f.name: f
    for f in (
        CheckpointFormat(
            "torchvision",
            "torchvision's and timm's ResNets (the same names), bare or under 'state_dict'",
            nesting=("state_dict", "model"),
            prefixes=("module.",),
        ),
        CheckpointFormat(
            "timm",
            "timm's training checkpoints: 'state_dict' (or 'state_dict_ema')",
            nesting=("state_dict", "state_dict_ema", "model"),
            prefixes=("module.",),
        ),
        CheckpointFormat(
            "mmdet",
            "mmdet / mmpretrain / mmseg: {'meta', 'state_dict'} with 'backbone.' keys",
            nesting=("state_dict",),
            prefixes=("backbone.",),
            renames=_MMDET_RENAMES,
            drop=(_HEADS, r"^data_preprocessor\."),
        ),
        CheckpointFormat(
            "lightning",
            "PyTorch Lightning: {'state_dict', 'pytorch-lightning_version', ...}, "
            "keys under the LightningModule's attribute ('model.', 'backbone.', ...)",
            nesting=("state_dict",),
            prefixes=("model.backbone.", "model.", "backbone.", "net."),
            drop=(_HEADS,),
        ),
        CheckpointFormat(
            "detectron2",
            "detectron2: {'model': ...} with 'backbone.bottom_up.' res2..res5 / stem keys",
            nesting=("model",),
            prefixes=("backbone.bottom_up.", "backbone."),
            renames=_DETECTRON2_RENAMES,
            drop=(
                r"^(backbone\.)?fpn_",
                r"^(proposal_generator|roi_heads|sem_seg_head|pixel_)",
                r"^fc1000\.",
                _HEADS,
            ),
        ),
    )
}
"""Every known checkpoint format, by name."""


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) for k in value)
        and any(_is_array(v) for v in value.values())
    )


def _is_array(value: object) -> bool:
    return isinstance(value, torch.Tensor) or type(value).__name__ == "ndarray"


def _unwrap(checkpoint: Mapping[str, Any], nesting: tuple[str, ...]) -> Mapping[str, Any]:
    for key in nesting:
        if _is_state_dict(checkpoint.get(key)):
            return checkpoint[key]
    return checkpoint


def detect_format(checkpoint: Mapping[str, Any]) -> str:
    """The name of the format ``checkpoint`` (a loaded file) is in, from its keys.

    Lightning is recognised by its version entry, detectron2 by ``res2..res5`` /
    ``stem.conv1`` names, a torchvision detector (``backbone.body.`` keys, as
    ``fasterrcnn_resnet50_fpn`` writes) as torchvision, mmdet-style by other
    ``backbone.`` keys or a ``meta`` entry; anything else is read as torchvision/timm names.
    """
    if "pytorch-lightning_version" in checkpoint or "lightning_version" in checkpoint:
        return "lightning"
    keys = list(_unwrap(checkpoint, ("model", "state_dict")))
    if any(re.search(r"(^|\.)(res[2-5]\.\d+\.conv1|stem\.conv1)\.", k) for k in keys):
        return "detectron2"
    if "meta" not in checkpoint and any(k.startswith("backbone.body.") for k in keys):
        return "torchvision"  # its `backbone.body.` prefix is cut by strip_outer_prefix
    if "meta" in checkpoint or any(k.startswith("backbone.") for k in keys):
        return "mmdet"
    if "state_dict_ema" in checkpoint:
        return "timm"
    return "torchvision"


def extract_state_dict(checkpoint: Mapping[str, Any], fmt: CheckpointFormat) -> dict[str, Any]:
    """The checkpoint's weights under our names, with prefixes stripped and keys renamed.

    Keys outside the format's prefixes (another model part, e.g. a detector's neck) are
    kept unchanged, so the loading report can name them.
    """
    state = _unwrap(checkpoint, fmt.nesting)
    if not _is_state_dict(state):
        raise ValueError(
            f"found no weights: expected a dict of tensors, or one under "
            f"{' / '.join(repr(n) for n in fmt.nesting) or 'the top level'}; "
            f"the top-level keys are {sorted(checkpoint)[:8]}"
        )
    for prefix in fmt.prefixes:
        if any(k.startswith(prefix) for k in state):
            state = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
            break
    out: dict[str, Any] = {}
    for key, value in state.items():
        for pattern, replacement in fmt.renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def check_format(name: str | None, *, option: str = "format") -> None:
    """Raise UnknownNameError (with close matches) unless ``name`` is None or a known format.

    Args:
        name: the format asked for.
        option: how the caller spells the option, named in the message.
    """
    if name is not None and name not in FORMATS:
        raise UnknownNameError(
            "checkpoint format",
            name,
            list(FORMATS),
            note=f"{option}= takes one of these, or None to detect the format",
        )


def to_our_names(
    checkpoint: Mapping[str, Any], format: str | None, where: object
) -> tuple[dict[str, Any], CheckpointFormat]:
    """The checkpoint's weights under our names, and the format used (``format`` or detected).

    Raises:
        WeightsError: the checkpoint holds no weights where its format keeps them.
    """
    fmt = FORMATS[format or detect_format(checkpoint)]
    try:
        return extract_state_dict(checkpoint, fmt), fmt
    except ValueError as err:
        raise WeightsError(f"{where}: {err} (format {fmt.name!r})") from None


# Keys every ResNet here has, whatever its stem and block: where a checkpoint's backbone
# starts when no model is at hand to compare with (conversion).
RESNET_ANCHOR_KEYS = (
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
)


def strip_outer_prefix(
    state: Mapping[str, Any], ours: Iterable[str] = RESNET_ANCHOR_KEYS
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """If the backbone sits inside a bigger model (``body.``, ``model.encoder.``), cut it out.

    Args:
        state: the checkpoint's weights, after the format's prefixes and renames.
        ours: our key names: the model's state dict keys when loading, or
            :data:`RESNET_ANCHOR_KEYS` when converting without a model.

    Returns:
        The backbone's part, and the keys outside it (the rest of the model, e.g. a
        detector's FPN and heads) by reason, which are dropped knowingly.
    """
    ours = list(ours)
    anchor = next((k for k in ours if k.endswith("weight")), None)
    if anchor is None or any(k in state for k in ours):
        return dict(state), {}
    candidates = {k[: -len(anchor)] for k in state if k.endswith("." + anchor)}
    if not candidates:
        return dict(state), {}
    # "body.layer1.0.conv1.weight" also ends with "conv1.weight": take the prefix that
    # puts the most of our keys in place.
    prefix = max(sorted(candidates), key=lambda p: sum(p + k in state for k in ours))
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    outside = [k for k in state if not k.startswith(prefix)]
    return inside, ({f"outside {prefix!r}": outside} if outside else {})
