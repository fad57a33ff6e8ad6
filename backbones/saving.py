"""``save_backbone`` / ``load_backbone``: a safetensors file that rebuilds its model alone.

The file holds the backbone's tensors and, in the safetensors metadata, the options
it was created with (name, out_indices, block, ...), its ``pretrained_cfg``, and the
distributions that provided the backbone and its blocks. :func:`load_backbone` calls
:func:`~backbones.create_backbone` with those options and loads the tensors strictly.
"""

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from backbones.catalog import BACKBONES, BLOCKS, LAYERS, NAMESPACES, list_plugins
from backbones.errors import NameConflictError, UnknownNameError, WeightsError
from backbones.factory import create_backbone
from backbones.namespace import SEPARATOR
from backbones.plugin_manager import PluginInfo, get_plugin_manager
from backbones.registry import Registry
from backbones.weights.config import set_attributes
from backbones.weights.loading import load_state_dict_into
from backbones.weights.sources import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    read_checkpoint,
    write_atomically,
)

__all__ = ["load_backbone", "save_backbone"]

FORMAT_KEY = "backbones.format"
FORMAT_VERSION = "1"
CONFIG_KEY = "backbones.config"
PRETRAINED_CFG_KEY = "backbones.pretrained_cfg"
REQUIRES_KEY = "backbones.requires"


def _provider(kind: str, name: str) -> dict[str, str | None]:
    """Which plugin (and distribution) registered ``name`` (maybe ``"<plugin>:<name>"``)."""
    registry = _REGISTRIES[kind]
    try:
        plugin: str | None = registry.provider(name)
    except (UnknownNameError, NameConflictError):
        plugin = None
    for info in list_plugins():
        if info.name == plugin:
            return {
                "kind": kind,
                "name": name,
                "plugin": info.name,
                "distribution": info.distribution,
                "version": info.version,
            }
    return {"kind": kind, "name": name, "plugin": plugin, "distribution": None, "version": None}


_REGISTRIES: dict[str, Registry[Any]] = {
    "backbone": BACKBONES,
    "block": BLOCKS,
    "layer": LAYERS,
    "namespace": NAMESPACES,
}


def _block_names(config: dict[str, Any]) -> list[str]:
    block = config.get("block")
    if block is None:
        return []
    names = [block] if isinstance(block, str) else list(block)
    return sorted(set(names))


def _layer_names(config: dict[str, Any]) -> list[str]:
    layers = config.get("block_layers") or []
    return sorted({str(bl["layer"]) for bl in layers if isinstance(bl.get("layer"), str)})


def save_backbone(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights and creation options to a ``.safetensors`` file.

    Args:
        model: a backbone made by :func:`~backbones.create_backbone` (or
            :func:`load_backbone`).
        path: where to write; it must end in ``.safetensors``: the file is always
            safetensors (its options live in the safetensors metadata), so another
            suffix would name it wrongly.

    Returns:
        The path written.

    Raises:
        TypeError: ``model`` was not made by ``create_backbone`` (it has no
            ``backbone_config``), or an option cannot be written as JSON (a callable
            ``norm_layer``, say); the message names it.
        WeightsError: ``path`` does not end in ``.safetensors``, or its folder does not
            exist (it is not created, as with ``torch.save``). Nothing is written.

    The file is written under a temporary name unique to the call, then renamed: an
    interrupted save leaves nothing behind, and concurrent saves to one path each write
    a whole file (the last rename wins).
    """
    from safetensors.torch import save_file

    target = Path(path)
    _check_suffix(target)
    config = getattr(model, "backbone_config", None)
    if not isinstance(config, dict):
        hint = " (for a BackboneWithHead, save model.backbone)" if hasattr(model, "head") else ""
        raise TypeError(
            f"save_backbone needs a backbone made by create_backbone; "
            f"{type(model).__name__} has no backbone_config{hint}"
        )
    for key, value in config.items():
        try:
            json.dumps(value)
        except TypeError:
            raise TypeError(
                f"save_backbone cannot record {key}={value!r}: it is not JSON data. Use a "
                f"registered name instead (e.g. norm_layer='frozen_batchnorm')"
            ) from None
    prefix, sep, _ = str(config["name"]).partition(SEPARATOR)
    is_zoo = bool(sep) and prefix in NAMESPACES
    requires = [_provider("namespace", prefix) if is_zoo else _provider("backbone", config["name"])]
    requires += [_provider("block", b) for b in _block_names(config)]
    requires += [_provider("layer", layer) for layer in _layer_names(config)]
    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        CONFIG_KEY: json.dumps(config),
        PRETRAINED_CFG_KEY: json.dumps(getattr(model, "pretrained_cfg", {})),
        REQUIRES_KEY: json.dumps(requires),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomically(target, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return target


def _check_suffix(target: Path) -> None:
    """Refuse a name that would call the safetensors file something else.

    A ``.pth`` name, say, makes ``torch.load`` fail on it with an IndexError that says
    nothing about the file being safetensors.
    """
    if target.suffix == SAFETENSORS_SUFFIX:
        return
    plain = (
        "; for a plain state dict that torch.load reads, use "
        "torch.save(bb.state_dict(), path) instead"
        if target.suffix in PICKLE_SUFFIXES
        else ""
    )
    raise WeightsError(
        f"cannot save to {target}: save_backbone writes a safetensors file (the options "
        f"live in its metadata), so the name must end in {SAFETENSORS_SUFFIX}, not "
        f"{target.suffix or '(no suffix)'!r}{plain}"
    )


def _check_requirements(requires: list[dict[str, Any]], path: Path) -> None:
    for req in requires:
        registry = _REGISTRIES.get(str(req.get("kind", "")))
        if registry is None or str(req.get("name")) in registry:
            continue
        dist = req.get("distribution")
        broken = _broken_plugin(str(req.get("plugin")), dist)
        if broken is not None:
            where = (
                f"the plugin distribution {broken.distribution!r}, which is installed but its "
                f"plugin failed to load ({'; '.join(broken.errors)}); fix or reinstall it"
            )
        elif dist:
            where = (
                f"the plugin distribution {dist!r} (version {req.get('version')} when saved); "
                f"install it, e.g. pip install {dist}"
            )
        else:
            where = (
                f"code registered at runtime ({req.get('plugin') or 'not a plugin'}); "
                f"import or register it before loading"
            )
        raise WeightsError(f"{path}: needs {req['kind']} {req['name']!r}, provided by {where}")


def _broken_plugin(plugin: str, distribution: object) -> PluginInfo | None:
    """The installed plugin that failed to load and would provide a requirement, if any."""
    for info in get_plugin_manager().failed():
        if info.name == plugin or (distribution and info.distribution == distribution):
            return info
    return None


def _metadata_entry(
    metadata: dict[str, str], key: str, file: Path, kind: type, *, default: str | None = None
) -> Any:
    """The JSON value of metadata entry ``key``, which must be a ``kind``.

    Raises:
        WeightsError: the entry is missing (and has no default), is not JSON, or holds
            another type; the message names the file and the entry.
    """
    text = metadata.get(key, default)
    if text is None:
        raise WeightsError(f"{file}: metadata entry {key!r} is missing")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise WeightsError(
            f"{file}: metadata entry {key!r} is not valid JSON ({err}): {text[:80]!r}"
        ) from None
    if not isinstance(value, kind):
        raise WeightsError(
            f"{file}: metadata entry {key!r} must hold a JSON "
            f"{'object' if kind is dict else 'array'}, got {type(value).__name__}: "
            f"{str(value)[:80]}"
        )
    return value


def load_backbone(path: str | os.PathLike[str], **overrides: Any) -> nn.Module:
    """Rebuild the backbone saved by :func:`save_backbone`, from the file alone.

    Args:
        path: the ``.safetensors`` file.
        **overrides: creation options to change, e.g. ``frozen_stages=1``. Options
            that change the weights' shapes make the strict load fail.

    Raises:
        WeightsError: the file was not written by ``save_backbone``, its metadata is
            missing or damaged (the message names the entry), or a plugin it needs is not
            installed (the message names the distribution).
        WeightsLoadError: the tensors do not fit the backbone the options build (an
            override that changes a shape, such as ``in_chans``).
    """
    file = Path(path)
    state, metadata = read_checkpoint(file)
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION or CONFIG_KEY not in metadata:
        raise WeightsError(
            f"{file}: has no backbones metadata (not written by save_backbone); load its "
            f"weights with create_backbone(name, pretrained={str(file)!r}) instead"
        )
    config = _metadata_entry(metadata, CONFIG_KEY, file, dict)
    if not isinstance(config.get("name"), str):
        raise WeightsError(
            f"{file}: metadata entry {CONFIG_KEY!r} has no backbone 'name' (a string); "
            f"it holds the keys {sorted(config)}. The file was edited or damaged: save it "
            f"again with save_backbone"
        )
    requires = _metadata_entry(metadata, REQUIRES_KEY, file, list, default="[]")
    if not all(isinstance(r, dict) and "kind" in r and "name" in r for r in requires):
        raise WeightsError(
            f"{file}: metadata entry {REQUIRES_KEY!r} must be a list of "
            f"{{'kind', 'name', ...}} entries, got {requires!r}"
        )
    saved_cfg = _metadata_entry(metadata, PRETRAINED_CFG_KEY, file, dict, default="{}")
    _check_requirements(requires, file)
    options = {**config, **overrides}
    name = options.pop("name")
    try:
        model = create_backbone(name, **options)
    except (TypeError, ValueError) as err:
        if overrides or isinstance(err, UnknownNameError):  # says what it is already
            raise
        raise WeightsError(
            f"{file}: the options in metadata entry {CONFIG_KEY!r} do not build a backbone "
            f"({type(err).__name__}: {err})"
        ) from err
    # The saved tensors must fit as they are: an override that changes a shape (in_chans,
    # say) fails here instead of being adapted into different weights.
    report = load_state_dict_into(
        model,
        state,
        source=str(file),
        format="backbones",
        adapt_in_chans=False,
        advice=(
            "load_backbone loads a saved backbone only as it was saved: drop the override "
            "that changes a shape, or build the new backbone with create_backbone(..., "
            "pretrained=<this file>, pretrained_strict=False) to load what fits."
        ),
    )
    set_attributes(model, pretrained_report=report)
    if saved_cfg:  # JSON has no tuples; timm's transforms expect them
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in saved_cfg.items()}
        set_attributes(model, pretrained_cfg=cfg)
    return model
