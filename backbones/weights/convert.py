"""One-time conversion of another library's checkpoint to a plain weights file.

detectron2's model-zoo ``.pkl`` files are Python pickles of numpy arrays. They are
read here with an unpickler that accepts only numpy arrays, dtypes and plain
containers; any other object in the file stops the conversion. The output has our key
names and only the backbone's tensors (a detector's FPN and heads are left out), so it
loads strictly anywhere with ``create_backbone(name, pretrained="out.safetensors")``.

The output format follows the destination's suffix: ``.safetensors`` writes safetensors
(recommended: nothing in it can run code), ``.pth`` / ``.pt`` / ``.bin`` a plain
``torch.save`` of the state dict; any other suffix is refused.

    python -m backbones convert model_final.pkl r50.safetensors
"""

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones.weights.formats import (
    FORMATS,
    check_format,
    detect_format,
    strip_outer_prefix,
    to_our_names,
)
from backbones.weights.sources import WeightsError, read_checkpoint, write_atomically

__all__ = ["OUTPUT_SUFFIXES", "convert_checkpoint"]

OUTPUT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
"""Suffixes :func:`convert_checkpoint` writes: safetensors, or ``torch.save`` for the others."""

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and plain "
                f"containers are read from .pkl files"
            )
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise WeightsError(f"{path}: cannot convert: {err}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a {type(data).__name__}, not a dict of weights")
    return data


def convert_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, format: str | None = None
) -> dict[str, int]:
    """Convert ``src`` (any known format, detectron2 ``.pkl`` included) to our key names.

    Keys are renamed to ours; keys the format marks as not the backbone's (classifier,
    FPN, heads) and, for a checkpoint of a whole model (a torchvision detector's
    ``backbone.body.``), everything outside the backbone are left out. Tensors keep
    their shapes (BatchNorm's 0-d ``num_batches_tracked`` included), so the output loads
    strictly and gives the source's features.

    Args:
        src: the checkpoint to read.
        dst: the file to write; its suffix picks the format (:data:`OUTPUT_SUFFIXES`):
            ``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` for ``torch.save`` of a
            plain state dict. Its folder must exist.
        format: a name from :data:`~backbones.weights.formats.FORMATS`; detected if None.

    Returns:
        ``{"kept": n, "dropped": m}``.

    Raises:
        WeightsError: ``src`` does not exist, cannot be read or holds no weights; the
            mapped weights are not a ResNet backbone (a stem conv, ``layer1`` and nothing
            outside conv1/bn1/layer1..4), e.g. because ``format`` does not fit the file;
            ``dst`` has another suffix or its folder does not exist. Nothing is written.
        UnknownNameError: an unknown ``format``.

    Example:
        >>> convert_checkpoint("model_final.pkl", "r50.safetensors")  # doctest: +SKIP
        {'kept': 320, 'dropped': 105}
    """
    check_format(format)
    source, target = Path(src), Path(dst)
    if target.suffix not in OUTPUT_SUFFIXES:
        raise WeightsError(
            f"cannot write {target}: unknown suffix {target.suffix or '(none)'!r}; use "
            f".safetensors (recommended) or .pth/.pt/.bin (torch.save of a state dict)"
        )
    if not source.is_file():
        why = "is a folder, not a file" if source.is_dir() else "no such file"
        raise WeightsError(f"cannot convert {source}: {why}")
    if source.suffix == ".pkl":
        checkpoint = _read_pickle(source)
    else:
        checkpoint, _ = read_checkpoint(source)
    state, fmt = to_our_names(checkpoint, format, source)
    state, outside = strip_outer_prefix(state)
    kept: dict[str, torch.Tensor] = {}
    dropped = sum(len(keys) for keys in outside.values())
    for key, value in state.items():
        if any(re.search(p, key) for p in fmt.drop) or not isinstance(
            value, torch.Tensor | np.ndarray
        ):
            dropped += 1
            continue
        kept[key] = _as_tensor(value)
    if not kept:
        raise WeightsError(f"{source}: no backbone weights found (format {fmt.name!r})")
    _check_backbone_keys(kept, source, fmt.name, format, checkpoint)
    write_atomically(target, lambda tmp: _write(kept, tmp, target.suffix, fmt.name))
    return {"kept": len(kept), "dropped": dropped}


# Top-level modules of a ResNet under our names; anything else left after mapping means
# the format did not fit the file.
_BACKBONE_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def _check_backbone_keys(
    kept: dict[str, torch.Tensor],
    source: Path,
    used: str,
    given: str | None,
    checkpoint: dict[str, Any],
) -> None:
    """Refuse to write a file that is not a ResNet backbone under our names.

    A wrong ``format=`` maps nothing (detectron2's ``res2.*`` read as torchvision) and
    would otherwise write the whole detector, FPN and heads included, as if it were a
    backbone.

    Raises:
        WeightsError: a stem conv or ``layer1`` is missing, or a key lies outside
            conv1/bn1/layer1..4; names the format, a few such keys and what to do.
    """
    outside = [k for k in kept if k.split(".", 1)[0] not in _BACKBONE_MODULES]
    has_stem = "conv1.weight" in kept or "conv1.0.weight" in kept
    has_layer1 = any(k.startswith("layer1.") for k in kept)
    if not outside and has_stem and has_layer1:
        return
    problems = []
    if outside:
        # One key per top-level module first: "backbone.", "roi_heads." says more than
        # four keys of one module.
        firsts = list({k.split(".", 1)[0]: k for k in reversed(outside)}.values())[::-1]
        sample = (firsts + [k for k in outside if k not in firsts])[:4]
        shown = ", ".join(repr(k) for k in sample)
        more = f" (+{len(outside) - 4} more)" if len(outside) > 4 else ""
        problems.append(f"{len(outside)} keys outside conv1/bn1/layer1..4, e.g. {shown}{more}")
    if not has_stem:
        problems.append("no stem convolution 'conv1.weight' or 'conv1.0.weight'")
    if not has_layer1:
        problems.append("no 'layer1.' keys")
    how = f"the given format {used!r}" if given else f"the detected format {used!r}"
    if given:
        detected = detect_format(checkpoint)
        fix = (
            f"Drop --format (format=) to detect the format, which gives {detected!r}"
            if detected != given
            else f"The file may not hold a ResNet, or it is in another of the formats "
            f"{', '.join(map(repr, FORMATS))}"
        )
    else:
        fix = (
            f"If it holds a ResNet in another format, give it with --format (format=), "
            f"one of {', '.join(map(repr, FORMATS))}"
        )
    raise WeightsError(
        f"{source}: read with {how}, the weights are not a ResNet backbone under our "
        f"names: {'; '.join(problems)}. Nothing was written. {fix}"
    )


def _as_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A contiguous tensor that owns its memory, with the value's shape (0-d stays 0-d).

    ``np.ascontiguousarray`` makes 0-d arrays 1-d, and safetensors refuses tensors that
    share memory (views of one storage), hence a copy.
    """
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    return value.detach().clone().contiguous()


def _write(state: dict[str, torch.Tensor], path: Path, suffix: str, origin: str) -> None:
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"converted_from": origin})
    else:
        torch.save(state, path)
