"""The ``timm/`` namespace: every timm model that returns features, under the contract.

``create_backbone("timm/convnext_tiny", ...)`` builds timm's ``features_only`` model
(timm's own code, weights and checkpoint filters) and wraps it in a
:class:`~backbones.zoo.extractor.ZooBackbone`, which measures what it returns and adds
what the contract promises. Levels are numbered as timm numbers them for the model; a
name's family is its timm module (``timm/convnext``).

Weights go through timm's loader (its per-model checkpoint filters, position-embedding
resampling and classifier removal): ``pretrained=True`` is the model's default tag,
``pretrained="<tag>"`` another, and a file, URL or ``hf-hub:`` id is fetched by this
library (hash checked) and handed to timm as its ``file``.

timm itself is imported only when a ``timm/`` name is used.
"""

import csv
import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from backbones.contract import BackboneEntry
from backbones.errors import (
    BackboneContractError,
    UnknownNameError,
    UnsupportedOptionError,
    WeightsError,
)
from backbones.features import FeatureLevel, resolve_out_indices
from backbones.namespace import SEPARATOR, Namespace, close_matches
from backbones.options import BackboneOptions, option_specs
from backbones.weights.config import channel_stats, set_attributes
from backbones.weights.loading import LoadReport
from backbones.weights.sources import resolve_source
from backbones.zoo.extractor import (
    STEM_STRIDE,
    ZooBackbone,
    check_frozen_stages,
    checkpointing_switches,
    find_stage,
    frozen_module_names,
    measure,
    measured_levels,
    pad_multiple,
    sizes_to_try,
    span_of,
    stage_partition,
)
from backbones.zoo.pyramid import SimpleFeaturePyramid

__all__ = ["NAMESPACE", "SIZING_ATTEMPTS", "TIMM", "ZOO_OPTIONS", "capabilities"]

NAMESPACE = "timm"
ZOO_OPTIONS = frozenset(
    {
        "out_indices",
        "in_chans",
        "output_stride",
        "frozen_stages",
        "norm_eval",
        "drop_path_rate",
        "return_dict",
        "pyramid",
        "grad_checkpointing",
    }
)
"""The build options a zoo model may honour; each is checked on the built model."""

SIZING_ATTEMPTS: tuple[dict[str, Any], ...] = (
    {"dynamic_img_size": True, "dynamic_img_pad": True},
    {"dynamic_img_size": True},
    {},
)
"""The size arguments tried in turn when building a timm model, first what the model takes:
any input size, and maps of ceil(size / stride) cells as the contract says (a patch
embedding pads the image to a multiple of its patch, as ViTDet pads its input; at sizes
the patch divides nothing changes)."""

TABLE = Path(__file__).with_name("tables") / "timm.csv"
"""The probe's table for timm's models (``python -m backbones probe 'timm/*'``)."""

_OPTION_COLUMNS = ("output_stride", "frozen_stages", "in_chans", "drop_path_rate")


@functools.lru_cache(maxsize=1)
def capabilities() -> dict[str, dict[str, str]]:
    """The committed probe table, by model name: its columns as strings ({} if absent)."""
    if not TABLE.is_file():
        return {}
    with TABLE.open(newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def _names() -> list[str]:
    import timm

    table = capabilities()
    return [n for n in timm.list_models() if table.get(n, {}).get("status") != "no_features"]


_PLAIN_VITS = ["timm/deit", "timm/eva", "timm/vision_transformer"]
"""Families whose models are plain ViTs, which ``pyramid`` turns into pyramids."""


def _families_supporting(option: str) -> list[str]:
    if option == "pyramid":
        return list(_PLAIN_VITS)
    if option not in _OPTION_COLUMNS:
        return []
    rows = capabilities().values()
    return sorted({f"timm/{r['family']}" for r in rows if r.get(option) == "yes"})


def _family(arch: str) -> str:
    import timm

    return str(timm.models.model_entrypoint(arch).__module__).rsplit(".", 1)[-1]


def _resolve(name: str) -> BackboneEntry:
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise UnknownNameError(
            "backbone",
            f"{NAMESPACE}{SEPARATOR}{name}",
            [f"{NAMESPACE}{SEPARATOR}{n}" for n in close_matches(arch, timm.list_models())],
            accepted=f"a timm model name; list them with list_backbones('{NAMESPACE}/*')",
        )
    if capabilities().get(arch, {}).get("status") == "no_features":
        raise ValueError(
            f"backbone {NAMESPACE}/{arch!r} cannot return features: timm's "
            f"create_model({arch!r}, features_only=True) is not implemented for it; "
            f"{capabilities()[arch].get('reason', '')}".rstrip("; ")
        )

    def build(options: BackboneOptions) -> nn.Module:
        return _build(arch, tag, options)

    return BackboneEntry(
        build,
        f"{NAMESPACE}/{_family(arch)}",
        ZOO_OPTIONS,
        source=f"timm.create_model({arch!r}, features_only=True)",
        loads_weights=True,
    )


TIMM = Namespace(
    names=_names,
    resolve=_resolve,
    doc="timm's models that return features (timm.create_model(..., features_only=True))",
    families_supporting=_families_supporting,
)


# -- building ------------------------------------------------------------------------------
def _build(arch: str, tag: str, options: BackboneOptions) -> nn.Module:
    family = f"{NAMESPACE}/{_family(arch)}"
    kwargs: dict[str, Any] = {}
    if options.in_chans != 3:
        kwargs["in_chans"] = options.in_chans
    if options.output_stride != 32:
        kwargs["output_stride"] = options.output_stride
    if options.drop_path_rate:
        kwargs["drop_path_rate"] = options.drop_path_rate
    if options.pyramid:
        kwargs["out_indices"] = (-1,)
    elif options.out_indices is not None:
        kwargs["out_indices"] = tuple(options.out_indices)
    model_name, weights_kwargs, source = _weights_kwargs(arch, tag, options)
    body = _create(arch, family, model_name, {**kwargs, **weights_kwargs}, options)

    info: Any = body.feature_info  # timm's FeatureInfo: every level, and the returned ones
    levels = [
        FeatureLevel(i, int(d["num_chs"]), int(d["reduction"]), str(d["module"]))
        for i, d in enumerate(info.info)
    ]
    returned = resolve_out_indices(list(info.out_indices), len(levels))
    if options.out_indices is not None and not options.pyramid:
        # timm keeps some indices it cannot honour (#2242); ours are checked here.
        wanted = resolve_out_indices(options.out_indices, len(levels))
        if wanted != returned:
            raise ValueError(
                f"timm returned levels {returned} for out_indices={options.out_indices}"
            )
    _check_honoured(body, levels, family, options)

    cfg = dict(getattr(body, "pretrained_cfg", {}) or {})
    default = cfg.get("input_size")
    sizes = sizes_to_try(
        [levels[i].reduction for i in returned],
        (int(default[1]), int(default[2])) if default else None,
    )
    claimed = [levels[i].num_chs for i in returned]
    try:
        run = measure(body, sizes, options.in_chans, claimed)
    except BackboneContractError:
        if options.in_chans != 3 and _runs_with_3_channels(arch, kwargs, sizes, claimed):
            raise _unsupported(family, "in_chans", options.in_chans) from None
        raise
    levels, fixes = measured_levels(levels, returned, run)
    stages = [lv for lv in levels if lv.reduction >= STEM_STRIDE]
    frozen, owners, partition = _frozen(
        body, run.spans, stages, options.frozen_stages, returned, len(levels)
    )

    body_strides = [levels[i].reduction for i in returned]
    pad_to = pad_multiple(body, run, body_strides, options.in_chans)

    neck = None
    out_indices: tuple[int, ...] = returned
    deepest = levels[returned[-1]].reduction
    if options.pyramid:
        neck, levels, out_indices = _pyramid(arch, levels, returned, options)
    model = ZooBackbone(
        body,
        levels,
        out_indices,
        nhwc=run.nhwc,
        in_chans=options.in_chans,
        probe_input_size=_probe_size(run.size, options.pyramid, deepest),
        frozen=frozen,
        owners=owners,
        frozen_stages=options.frozen_stages,
        norm_eval=options.norm_eval,
        return_dict=options.return_dict,
        neck=neck,
        metadata_fixes=fixes,
        pad_to=pad_to,
        body_strides=body_strides,
        stages=partition,
    )
    if options.grad_checkpointing is not False:
        if not isinstance(options.grad_checkpointing, bool):
            raise ValueError(
                f"grad_checkpointing={options.grad_checkpointing}: a {NAMESPACE}/ backbone takes "
                f"True or False (timm checkpoints every stage)"
            )
        if not checkpointing_switches(body):
            raise _unsupported(family, "grad_checkpointing", True)
        model.set_grad_checkpointing(True)
    if options.in_chans != 3:
        cfg.update(_cfg_for_in_chans(cfg, options.in_chans))
    cfg.update(options.pretrained_cfg_overlay or {})
    set_attributes(model, pretrained_cfg=cfg)
    if source:
        report = LoadReport(source, "timm", loaded=sorted(body.state_dict()))
        set_attributes(model, pretrained_report=report)
    return model


def _runs_with_3_channels(
    arch: str, kwargs: dict[str, Any], sizes: list[tuple[int, int]], claimed: list[int]
) -> bool:
    """Whether the network runs when built for 3 channels (timm's CSATv2 takes in_chans
    and then fails on anything else): the failure is then the option's."""
    import timm

    plain = {k: v for k, v in kwargs.items() if k != "in_chans"}
    try:
        measure(timm.create_model(arch, features_only=True, **plain), sizes, 3, claimed)
    except Exception:  # it fails anyway: not the option's doing
        return False
    return True


def _cfg_for_in_chans(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """timm's cfg describes 3-channel input; the transforms must make ``in_chans``."""
    out: dict[str, Any] = {}
    if cfg.get("input_size"):
        out["input_size"] = (in_chans, *tuple(cfg["input_size"])[1:])
    if cfg.get("mean") and cfg.get("std"):
        out["mean"], out["std"] = channel_stats(cfg["mean"], cfg["std"], in_chans, None)
    return out


def _probe_size(size: tuple[int, int], pyramid: str | None, stride: int) -> tuple[int, int]:
    """The measured size, or for a pyramid the first multiple of the patch from 64 px on
    (its stride-32 level then has two cells or more)."""
    if not pyramid:
        return size
    return (_at_least(size[0], 64, stride), _at_least(size[1], 64, stride))


def _at_least(side: int, minimum: int, stride: int) -> int:
    return side if side >= minimum else stride * -(-minimum // stride)


def _create(
    arch: str, family: str, model_name: str, kwargs: dict[str, Any], options: BackboneOptions
) -> nn.Module:
    import timm

    attempts = [{**kwargs, **sizing} for sizing in SIZING_ATTEMPTS]
    for i, attempt in enumerate(attempts):
        try:
            return timm.create_model(model_name, features_only=True, **attempt)
        except TypeError as err:
            text = str(err)
            if "dynamic_img_" in text and i < len(attempts) - 1:
                continue
            for option in ("output_stride", "drop_path_rate", "in_chans"):
                if option in text and option in kwargs:
                    raise _unsupported(family, option, kwargs[option]) from None
            raise
        except RuntimeError as err:
            if "features_only" in str(err):
                raise ValueError(
                    f"backbone {NAMESPACE}/{arch!r} cannot return features: {err}"
                ) from None
            if "pretrained" in model_name or _is_weights_error(err):
                raise WeightsError(
                    f"timm could not load the weights of {model_name!r}: {err}"
                ) from None
            raise
        except (IndexError, AssertionError, ValueError) as err:
            _raise_for_refused_option(arch, family, kwargs)
            if "out_indices" in kwargs and not options.pyramid:
                _raise_for_out_indices(model_name, options)
            raise ValueError(f"timm.create_model({model_name!r}) failed: {err!r}") from err
        except OSError as err:  # a hub file that is neither cached nor reachable
            raise WeightsError(
                f"timm could not fetch the weights of {model_name!r}: {type(err).__name__}: "
                f"{err}. Offline, put them in the Hugging Face cache (HF_HUB_CACHE) or pass "
                f"pretrained=<file>"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _is_weights_error(err: Exception) -> bool:
    return bool(re.search(r"state_dict|Missing key|Unexpected key|size mismatch", str(err)))


def _raise_for_refused_option(arch: str, family: str, kwargs: dict[str, Any]) -> None:
    """Raise UnsupportedOptionError if timm builds the model without an option it refused
    (DLA, HRNet, VGG... ``assert output_stride == 32``); return if not."""
    import timm

    plain = {k: v for k, v in kwargs.items() if k in ("in_chans", "out_indices")}
    for option in ("output_stride", "drop_path_rate", "in_chans"):
        if option not in kwargs:
            continue
        without = {k: v for k, v in plain.items() if k != option}
        try:
            with torch.device("meta"):
                timm.create_model(arch, features_only=True, **without)
        except Exception:  # not this option: try the next
            continue
        raise _unsupported(family, option, kwargs[option]) from None


def _raise_for_out_indices(model_name: str, options: BackboneOptions) -> None:
    import timm

    with torch.device("meta"):
        meta = timm.create_model(model_name.partition(".")[0], features_only=True)
    levels = len(cast(Any, meta.feature_info))
    resolve_out_indices(options.out_indices or (), levels)  # raises, naming the levels
    raise ValueError(f"timm refused out_indices={options.out_indices} for {model_name!r}")


def _unsupported(family: str, option: str, value: object) -> UnsupportedOptionError:
    return UnsupportedOptionError(family, option, value, _families_supporting(option))


def _check_honoured(
    body: nn.Module, levels: list[FeatureLevel], family: str, options: BackboneOptions
) -> None:
    """Refuse an option timm took but silently ignored for this model."""
    if options.output_stride != 32 and max(lv.reduction for lv in levels) != options.output_stride:
        raise _unsupported(family, "output_stride", options.output_stride)
    if options.drop_path_rate and not any(
        getattr(m, "drop_prob", 0) or getattr(m, "drop_path_rate", 0) for m in body.modules()
    ):
        raise _unsupported(family, "drop_path_rate", options.drop_path_rate)
    if options.pyramid and len({lv.reduction for lv in levels}) != 1:
        raise _unsupported(family, "pyramid", options.pyramid)


def _frozen(
    body: nn.Module,
    spans: dict[str, tuple[int, int]],
    stages: list[FeatureLevel],
    frozen_stages: int,
    returned: tuple[int, ...],
    count: int,
) -> tuple[list[str], list[str], list[tuple[str, list[str]]]]:
    """The modules ``frozen_stages`` freezes (see ``frozen_module_names``), and each
    stage's parameters (``stage_partition``; one stem-only stage where none is found)."""
    spans = dict(spans)
    built, labels = [], []
    for level in stages:
        name = find_stage(body, level.module, count)
        span = span_of(name, spans) if name is not None else None
        if name is not None and span is not None:
            spans[name] = span
            built.append(name)
            labels.append(level.module)
    check_frozen_stages(frozen_stages, len(built), [lv.module for lv in stages], returned)
    if not built:
        if frozen_stages >= 0:
            raise ValueError("frozen_stages: no stage module of this network could be found")
        return [], [], [("stem", [n for n, _ in body.named_parameters()])]
    partition = list(zip(["stem", *labels], stage_partition(body, spans, built), strict=True))
    if frozen_stages < 0:
        return [], [], partition
    return (*frozen_module_names(body, spans, built, frozen_stages), partition)


def _pyramid(
    arch: str, levels: list[FeatureLevel], returned: tuple[int, ...], options: BackboneOptions
) -> tuple[nn.Module, list[FeatureLevel], tuple[int, ...]]:
    last = levels[returned[-1]]
    pyramid_indices = resolve_out_indices(
        options.out_indices if options.out_indices is not None else (0, 1, 2, 3), 4
    )
    neck = SimpleFeaturePyramid(last.num_chs, pyramid_indices, stride=last.reduction)
    pyramid_levels = [
        FeatureLevel(i, neck.channels[i], 4 * 2**i, f"neck.levels.stride{4 * 2**i}")
        for i in range(4)
    ]
    return neck, pyramid_levels, pyramid_indices


# -- weights -------------------------------------------------------------------------------
def _weights_kwargs(
    arch: str, tag: str, options: BackboneOptions
) -> tuple[str, dict[str, Any], str]:
    """timm's model name and weight arguments for ``options``, and the source to report."""
    import timm

    model_name = f"{arch}.{tag}" if tag else arch
    pretrained = options.pretrained
    overlay = dict(options.pretrained_cfg_overlay or {})
    if not pretrained:
        return model_name, ({"pretrained_cfg_overlay": overlay} if overlay else {}), ""
    _check_weights_options(arch, options)
    kwargs: dict[str, Any] = {"pretrained": True}
    if not options.pretrained_strict:
        kwargs["pretrained_strict"] = False
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    text = os.fspath(pretrained) if not isinstance(pretrained, bool) else ""
    if pretrained is True:
        chosen = tag or (tags[0] if tags else "")
        if not chosen:
            raise WeightsError(
                f"backbone timm/{arch!r} has no published weights; pass pretrained= a file, "
                f"an http(s) URL or 'hf-hub:<repo>'"
            )
        source = f"timm:{arch}.{chosen}"
        model_name = f"{arch}.{chosen}"
    elif text in tags:
        model_name, source = f"{arch}.{text}", f"timm:{arch}.{text}"
    elif os.path.exists(text) or "/" in text or ":" in text or "\\" in text:
        path = resolve_source(text, sha256=options.pretrained_sha256)
        overlay["file"] = str(path)
        source = text
    else:
        close = difflib.get_close_matches(text, tags, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise WeightsError(
            f"pretrained={text!r} is neither a weights tag of timm/{arch!r} nor a file{hint} "
            f"Tags: {', '.join(tags) or '(none)'}; or give a path, an http(s) URL or "
            f"'hf-hub:<repo>'"
        )
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    return model_name, kwargs, source


def _check_weights_options(arch: str, options: BackboneOptions) -> None:
    defaults = {s.name: s.default for s in option_specs()}
    if options.pretrained_format not in (None, "timm"):
        raise WeightsError(
            f"pretrained_format={options.pretrained_format!r}: timm/{arch} loads timm "
            f"checkpoints through timm's own loader; accepted: None or 'timm'"
        )
    if options.in_chans_strategy != defaults["in_chans_strategy"]:
        raise WeightsError(
            f"in_chans_strategy={options.in_chans_strategy!r}: timm/{arch} adapts the input "
            f"convolution with timm's own rule (repeat, rescaled); leave it at 'repeat'"
        )
