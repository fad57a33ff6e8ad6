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

from backbones.weights.formats import check_format, strip_outer_prefix, to_our_names
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
        WeightsError: ``src`` does not exist, cannot be read or holds no weights;
            ``dst`` has another suffix or its folder does not exist.
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
    write_atomically(target, lambda tmp: _write(kept, tmp, target.suffix, fmt.name))
    return {"kept": len(kept), "dropped": dropped}


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
