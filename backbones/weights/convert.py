"""One-time conversion of another library's checkpoint to a plain safetensors file.

detectron2's model-zoo ``.pkl`` files are Python pickles of numpy arrays. They are
read here with an unpickler that accepts only numpy arrays, dtypes and plain
containers; any other object in the file stops the conversion. The output has our key
names, so it loads anywhere with ``create_backbone(name, pretrained="out.safetensors")``.

    python -m backbones convert model_final.pkl r50.safetensors
"""

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones.weights.formats import check_format, to_our_names
from backbones.weights.sources import WeightsError, read_checkpoint

__all__ = ["convert_checkpoint"]

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
    """Convert ``src`` (any known format, detectron2 ``.pkl`` included) to safetensors.

    Keys are renamed to ours; keys the format marks as not the backbone's (classifier,
    FPN, heads) are left out.

    Returns:
        ``{"kept": n, "dropped": m}``.

    Raises:
        WeightsError: the file cannot be read or holds no weights.
        UnknownNameError: an unknown ``format``.
    """
    from safetensors.torch import save_file

    check_format(format)
    source = Path(src)
    if source.suffix == ".pkl":
        checkpoint = _read_pickle(source)
    else:
        checkpoint, _ = read_checkpoint(source)
    state, fmt = to_our_names(checkpoint, format, source)
    kept: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in state.items():
        if any(re.search(p, key) for p in fmt.drop) or not isinstance(
            value, torch.Tensor | np.ndarray
        ):
            dropped += 1
            continue
        kept[key] = torch.as_tensor(np.ascontiguousarray(value)).contiguous()
    if not kept:
        raise WeightsError(f"{source}: no backbone weights found (format {fmt.name!r})")
    save_file(kept, os.fspath(dst), metadata={"converted_from": fmt.name})
    return {"kept": len(kept), "dropped": dropped}
