"""``create_backbone(..., pretrained=...)``: pick the weights, load them, describe them.

``pretrained`` may be ``True`` (the variant's default weights, the first row of its
``weights`` table), a tag from that table (``"tv_in1k"``), or any source that
:func:`~backbones.weights.loading.load_pretrained` accepts. The backbone always gets a
``pretrained_cfg`` (timm's keys), and after loading a ``pretrained_report``.
"""

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from backbones.weights.config import PretrainedCfg, set_attributes
from backbones.weights.in_chans import check_channel_map
from backbones.weights.loading import load_pretrained
from backbones.weights.sources import WeightsError, hub_preprocessing

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
    tags = [cfg.tag for cfg in weights]
    looks_like_tag = text and "/" not in text and "." not in text and ":" not in text
    if looks_like_tag and not os.path.exists(text):
        close = difflib.get_close_matches(text, tags, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise WeightsError(
            f"pretrained={text!r} is neither a weights tag of {name!r} nor a file{hint} "
            f"Tags: {', '.join(tags) or '(none)'}; or give a path, an http(s) URL or "
            f"'hf-hub:<repo>'"
        )
    return None


def apply_pretrained(
    model: nn.Module,
    name: str,
    weights: Sequence[PretrainedCfg],
    *,
    pretrained: Pretrained,
    in_chans: int,
    strict: bool = True,
    format: str | None = None,
    in_chans_strategy: str | Sequence[int | None] = "repeat",
    sha256: str = "",
    cfg_overlay: Mapping[str, Any] | None = None,
) -> None:
    """Load ``pretrained`` into ``model`` and set ``model.pretrained_cfg`` (and report).

    Raises:
        WeightsError: the weights cannot be found, read or fitted; the message says why.
        ValueError: a bad ``in_chans_strategy`` or ``cfg_overlay``.
    """
    if not isinstance(pretrained, bool | str | os.PathLike) and pretrained is not None:
        raise TypeError(
            f"pretrained must be True/False, a weights tag, a path, a URL or 'hf-hub:<repo>', "
            f"got {type(pretrained).__name__}"
        )
    if not isinstance(in_chans_strategy, str):
        check_channel_map(list(in_chans_strategy), in_chans)
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
    sources = (
        None
        if isinstance(in_chans_strategy, str)
        else [c if c is not None else i % 3 for i, c in enumerate(in_chans_strategy)]
    )
    if pretrained and cfg.hf_hub_id:  # the hub's own config.json knows its pre-processing
        hub = hub_preprocessing(cfg.hf_hub_id)
        if hub:
            cfg = replace(cfg, **hub)
    out = cfg.for_in_chans(in_chans, sources).to_dict()
    if cfg_overlay:
        unknown = sorted(set(cfg_overlay) - set(out))
        if unknown:
            raise ValueError(
                f"pretrained_cfg_overlay has unknown keys {unknown}; accepted: {sorted(out)}"
            )
        out.update(cfg_overlay)
    if pretrained:
        source = cfg.source if chosen is not None else os.fspath(pretrained)  # type: ignore[arg-type]
        report = load_pretrained(
            model,
            source,
            format=format,
            strict=strict,
            in_chans_strategy=in_chans_strategy,
            sha256=sha256 or (chosen.sha256 if chosen else ""),
        )
        set_attributes(model, pretrained_report=report)
    set_attributes(model, pretrained_cfg=out)
