"""``create_backbone(..., pretrained=...)``: pick the weights, load them, describe them.

``pretrained`` may be ``True`` (the variant's default weights, the first row of its
``weights`` table), a tag from that table (``"tv_in1k"``), or any source that
:func:`~backbones.weights.loading.load_pretrained` accepts. The backbone always gets a
``pretrained_cfg`` (timm's keys), and after loading a ``pretrained_report``.
"""

import contextlib
import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from backbones.catalog import BACKBONES
from backbones.options import BackboneOptions
from backbones.weights.config import PretrainedCfg, set_attributes
from backbones.weights.loading import first_conv_name, load_pretrained
from backbones.weights.sources import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    WeightsError,
    hub_preprocessing,
)

__all__ = ["apply_pretrained"]

Pretrained = bool | str | os.PathLike[str] | None


def _pick(
    name: str, weights: Sequence[PretrainedCfg], pretrained: Pretrained
) -> PretrainedCfg | None:
    """The table row ``pretrained`` names, or None when it is a path/URL/hub id."""
    if pretrained is True:
        if not weights:
            raise WeightsError(
                f"backbone {name!r} has no default weights; pass pretrained= a file path, "
                f"an http(s) URL or 'hf-hub:<repo>'"
            )
        return weights[0]
    text = os.fspath(pretrained) if isinstance(pretrained, str | os.PathLike) else ""
    for cfg in weights:
        if text == cfg.tag:
            return cfg
    if not text or os.path.exists(text) or "/" in text or ":" in text or "\\" in text:
        return None  # a path, a URL or a hub id
    tags = [cfg.tag for cfg in weights]
    listing = (
        f"Tags of {name!r}: {', '.join(tags) or '(none)'}; or give a path, an http(s) URL "
        f"or 'hf-hub:<repo>'"
    )
    model, dot, tag = text.partition(".")
    if dot and _is_timm_spelling(name, model, tag):
        # timm's "<model>.<tag>": here the backbone is named once, the tag alone picks weights.
        if model == name:
            for cfg in weights:
                if tag == cfg.tag:
                    return cfg
            raise WeightsError(
                f"pretrained={text!r}: {name!r} has no weights tag {tag!r} (timm's "
                f"'<model>.<tag>' spelling is read as the tag alone). {listing}"
            )
        ours = f": pretrained={tag!r} for {name!r} with {tag!r} weights" if tag in tags else ""
        theirs = (
            f"; for the weights of {model!r}, create_backbone({model!r}, pretrained='<tag>')"
            if model in BACKBONES
            else ""
        )
        raise WeightsError(
            f"pretrained={text!r} names weights of {model!r} (timm's '<model>.<tag>' "
            f"spelling), not of {name!r}. Here the backbone is named once and a tag of its "
            f"own weights table picks the weights{ours}{theirs}. {listing}"
        )
    if dot:
        return None  # "model.pth" that does not exist: resolve_source says so
    if text in _TORCHVISION_ENUMS:
        tag = _TORCHVISION_ENUMS[text] or (tags[0] if tags else "")
        ours = "pretrained=True" if text == "DEFAULT" else f"pretrained={tag!r}"
        raise WeightsError(
            f"pretrained={text!r} is torchvision's weights enum name; "
            + (
                f"here those weights are the tag {tag!r}: {ours}"
                if tag in tags
                else f"{name!r} has no such weights"
            )
            + f". {listing}"
        )
    close = difflib.get_close_matches(text, tags, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
    raise WeightsError(
        f"pretrained={text!r} is neither a weights tag of {name!r} nor a file{hint} {listing}"
    )


# torchvision's `weights=ResNet50_Weights.IMAGENET1K_V2` names, and the tags of the same
# files ("" for DEFAULT: whatever the variant's first row is, as pretrained=True loads).
_TORCHVISION_ENUMS = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k", "DEFAULT": ""}


def _is_timm_spelling(name: str, model: str, tag: str) -> bool:
    """Whether ``"<model>.<tag>"`` is timm's weights name rather than a missing file's."""
    if f".{tag.lower()}" in (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, ".pkl"):
        return False
    return model == name or model in BACKBONES or bool(re.search(r"(^|_)in\d+k", tag))


def apply_pretrained(
    model: nn.Module, name: str, weights: Sequence[PretrainedCfg], options: BackboneOptions
) -> None:
    """Load ``options.pretrained`` into ``model`` and set ``model.pretrained_cfg`` (and report).

    The options were validated when ``options`` was made. ``pretrained_cfg["first_conv"]``
    is the built model's first convolution (``conv1.0`` for a deep stem), whatever the
    table row says, so no row can get it wrong.

    Raises:
        WeightsError: the weights cannot be found, read or fitted; the message says why.
    """
    pretrained = options.pretrained
    in_chans, in_chans_strategy = options.in_chans, options.in_chans_strategy
    sha256 = options.pretrained_sha256
    overlay = options.pretrained_cfg_overlay or {}  # checked and normalised already
    chosen = _pick(name, weights, pretrained) if pretrained else None
    cfg = chosen or (weights[0] if weights else PretrainedCfg(tag="", license=""))
    if pretrained and chosen is None:  # a file, URL or hub id: keep the variant's pre-processing
        source = os.fspath(pretrained)  # type: ignore[arg-type]
        cfg = replace(cfg, tag="", url="", hf_hub_id="", sha256=sha256, origin="", license="")
        if source.startswith("hf-hub:"):
            cfg = replace(cfg, hf_hub_id=source[len("hf-hub:") :])
        elif source.startswith(("http://", "https://")):
            cfg = replace(cfg, url=source)
        else:
            cfg = replace(cfg, file=source)
    with contextlib.suppress(ValueError):  # no Conv2d (a plugin's own trunk): keep the row's
        cfg = replace(cfg, first_conv=first_conv_name(model))
    sources = (
        None
        if isinstance(in_chans_strategy, str)
        else [c if c is not None else i % 3 for i, c in enumerate(in_chans_strategy)]
    )
    if pretrained:
        source = cfg.source if chosen is not None else os.fspath(pretrained)  # type: ignore[arg-type]
        report = load_pretrained(
            model,
            source,
            format=options.pretrained_format,
            strict=options.pretrained_strict,
            in_chans_strategy=in_chans_strategy,
            sha256=sha256 or (chosen.sha256 if chosen else ""),
        )
        set_attributes(model, pretrained_report=report)
    # After loading: the weights are there (or the error said why), so the hub's
    # config.json is in the cache or the hub is reachable.
    if pretrained and cfg.hf_hub_id:  # the hub's own config.json knows its pre-processing
        hub = hub_preprocessing(cfg.hf_hub_id)
        if hub:
            cfg = replace(cfg, **hub)
    cfg = cfg.for_in_chans(in_chans, sources)
    # Through the dataclass, so pool_size follows an overlaid input_size unless the
    # overlay gives pool_size too.
    cfg = replace(cfg, **{k: v for k, v in overlay.items() if k != "pool_size"})
    out = cfg.to_dict()
    if "pool_size" in overlay:
        out["pool_size"] = overlay["pool_size"]
    set_attributes(model, pretrained_cfg=out)
