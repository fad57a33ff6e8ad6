"""The ``tv/`` namespace: torchvision's classification models, under the contract.

``create_backbone("tv/resnet50", ...)`` builds torchvision's classifier
(``torchvision.models.get_model``), loads weights into it, and cuts it with torchvision's
own FX feature extractor (``create_feature_extractor``) at one node per level; a
:class:`~backbones.zoo.extractor.ZooBackbone` wraps the extractor, measures what it
returns and adds what the contract promises. A name's family is its torchvision module
(``tv/resnet``, ``tv/mobilenetv3``, ``tv/swin_transformer``).

Levels follow timm's convention: level 0 is the stride-2 stem where the network has
one, then one level per stride, each the output of the *last* module of the family's
trunk that runs at that stride, found by running the network once with a hook on each
trunk module. Per family (trunk: the modules looked at, ``x.*`` meaning each child of
``x``; the levels shown are the 64-pixel run of the first model named):

==================  ============================  ========================================
family              trunk                         levels
==================  ============================  ========================================
resnet              fixed nodes                   relu, layer1, layer2, layer3, layer4
regnet              stem, trunk_output.*          stem, trunk_output.block1 .. block4
mobilenetv2         features.*                    features.1, .3, .6, .13, .18
mobilenetv3         features.*                    (large) features.1, .3, .6, .12, .16
efficientnet        features.*                    (b0) features.1, .2, .3, .5, .8
mnasnet             layers.*                      layers.7, .8, .9, .11, .16
shufflenetv2        conv1, maxpool, stage2..4,    conv1, maxpool, stage2, stage3, conv5
                    conv5
densenet            features.*                    features.relu0, .denseblock1 .. 3,
                                                  .norm5
googlenet           conv1 .. inception5b          conv1, conv3, inception3b, inception4e,
                                                  inception5b
vgg                 features.*                    (vgg11) features.1, .4, .9, .14, .19,
                                                  .20 (stride 1 to 32)
convnext            features.*                    features.1, .3, .5, .7 (from stride 4)
swin_transformer    features.*                    features.1, .3, .5, .7 (NHWC, permuted)
maxvit              stem, blocks.*                stem, blocks.0 .. blocks.3 (224 px)
vision_transformer  encoder.layers.*              every encoder layer, stride 16
==================  ============================  ========================================

The last level is the last module of torchvision's trunk, so where torchvision puts the
1x1 head convolution inside ``features`` (MobileNet, EfficientNet, MNASNet) the last
level has its channels (960 for mobilenet_v3_large, 1280 for efficientnet_b0), as
torchvision's detection ``mobilenet_backbone`` takes it. A ViT's encoder layers return
tokens ``(B, 1 + H*W, C)``: :class:`TokenMaps` drops the class token and folds the
patches into ``(B, C, H, W)`` maps. MaxViT and ViT take only their image size (224, or
the weights' size).

Options: ``out_indices`` (every level by default), ``frozen_stages`` (the stem and the
first k levels of stride 4 or more, from the order in which modules run),
``norm_eval``, ``return_dict`` and ``in_chans`` (the first convolution replaced: the
weights adapted by ``in_chans_strategy`` when pretrained, PyTorch's default
initialisation otherwise) everywhere; ``output_stride`` for ResNets with bottleneck
blocks (torchvision's ``replace_stride_with_dilation``); ``drop_path_rate`` for ConvNeXt,
EfficientNet, Swin and MaxViT (torchvision's ``stochastic_depth_prob``, 0 unless set,
where torchvision's builders default to their training recipe's 0.1 to 0.5). AlexNet,
SqueezeNet and Inception v3 are not listed: their unpadded convolutions give maps that
are not the input divided by a stride, which the contract promises.

Weights: ``pretrained=True`` is the model's ``DEFAULT`` weights enum,
``pretrained="IMAGENET1K_V1"`` a member by name, read through torch hub's cache
(``$TORCH_HOME/hub/checkpoints``); a file, URL or ``hf-hub:`` id is fetched by this
library. Either is loaded into the classifier before it is cut; the tensors the backbone
keeps must all fit (unless ``pretrained_strict=False``), the classifier's are dropped.

torchvision itself is imported only when a ``tv/`` name is used.
"""

import difflib
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from backbones.contract import BackboneEntry
from backbones.errors import (
    BackboneContractError,
    UnknownNameError,
    WeightsError,
    WeightsLoadError,
)
from backbones.features import FeatureLevel, resolve_out_indices
from backbones.namespace import SEPARATOR, Namespace, close_matches
from backbones.options import BackboneOptions
from backbones.weights.config import IMAGENET_MEAN, IMAGENET_STD, PretrainedCfg, set_attributes
from backbones.weights.in_chans import adapt_first_conv
from backbones.weights.loading import LoadReport
from backbones.weights.sources import read_checkpoint, resolve_source, sha256_of
from backbones.zoo.extractor import (
    STEM_STRIDE,
    ZooBackbone,
    check_frozen_stages,
    frozen_module_names,
    measure,
    measured_levels,
    pad_multiple,
    span_of,
    stage_partition,
)

__all__ = ["NAMESPACE", "TV", "TokenMaps"]

NAMESPACE = "tv"

_COMMON = frozenset({"out_indices", "in_chans", "frozen_stages", "norm_eval", "return_dict"})
_OUTPUT_STRIDE = frozenset({"output_stride"})
_DROP_PATH = frozenset({"drop_path_rate"})
_DILATIONS = {16: [False, False, True], 8: [False, True, True]}
"""torchvision's ``replace_stride_with_dilation`` for each ``output_stride``."""
_BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")
"""The ResNets of basic blocks, which torchvision cannot dilate."""


@dataclass(frozen=True)
class _Family:
    """How the models of one torchvision module become backbones.

    Attributes:
        trunk: the modules whose outputs can be levels, in order; ``"x.*"`` is each child
            of ``x`` (as ``features.*``).
        per_stride: a level is the last trunk module of each stride; False: every trunk
            module is a level (ResNet's fixed nodes keep their numbers when dilated; a
            ViT's layers all have stride 16).
        layout: ``"nchw"``, ``"nhwc"`` (Swin's stages) or ``"tokens"`` (ViT's layers).
        options: the build options honoured beyond the common ones.
        drop_path: how ``drop_path_rate`` reaches the network: ``"kwarg"`` (the builder's
            ``stochastic_depth_prob``) or ``"rescale"`` (the builder fixes it: every
            StochasticDepth's ``p`` is scaled so the deepest one's is the rate).
        size_kwarg: a network of one input size names its builder argument
            (``image_size``, ``input_size``); the weights' ``min_size`` sets it.
        builder_kwargs: fixed builder arguments.
        not_built: checkpoint key prefixes of parts never built, dropped knowingly.
        mean_std: the pre-processing the backbone expects, where it differs from the
            weights' transforms.
    """

    trunk: tuple[str, ...]
    per_stride: bool = True
    layout: str = "nchw"
    options: frozenset[str] = frozenset()
    drop_path: str = ""
    size_kwarg: str = ""
    builder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    not_built: tuple[str, ...] = ()
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None


_FAMILIES: dict[str, _Family] = {
    "resnet": _Family(
        ("relu", "layer1", "layer2", "layer3", "layer4"), per_stride=False, options=_OUTPUT_STRIDE
    ),
    "regnet": _Family(("stem", "trunk_output.*")),
    "mobilenetv2": _Family(("features.*",)),
    "mobilenetv3": _Family(("features.*",)),
    "efficientnet": _Family(("features.*",), options=_DROP_PATH, drop_path="kwarg"),
    "mnasnet": _Family(("layers.*",)),
    "shufflenetv2": _Family(("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")),
    "densenet": _Family(("features.*",)),
    # Without its auxiliary classifiers, and without transform_input: that rescales
    # ImageNet-normalised images to [-1, 1], which the pre-processing then does instead.
    "googlenet": _Family(
        (
            "conv1",
            "maxpool1",
            "conv2",
            "conv3",
            "maxpool2",
            "inception3a",
            "inception3b",
            "maxpool3",
            "inception4a",
            "inception4b",
            "inception4c",
            "inception4d",
            "inception4e",
            "maxpool4",
            "inception5a",
            "inception5b",
        ),
        builder_kwargs={"aux_logits": False, "transform_input": False, "init_weights": True},
        not_built=("aux1.", "aux2."),
        mean_std=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ),
    "vgg": _Family(("features.*",)),
    "convnext": _Family(("features.*",), options=_DROP_PATH, drop_path="kwarg"),
    "swin_transformer": _Family(
        ("features.*",), layout="nhwc", options=_DROP_PATH, drop_path="rescale"
    ),
    "maxvit": _Family(
        ("stem", "blocks.*"), options=_DROP_PATH, drop_path="rescale", size_kwarg="input_size"
    ),
    "vision_transformer": _Family(
        ("encoder.layers.*",), per_stride=False, layout="tokens", size_kwarg="image_size"
    ),
}

_VALID_CONVS = (
    "its unpadded convolutions give maps that are not the input size divided by a "
    "stride (e.g. 31x31 for a 64x64 input at stride 2), which the backbone contract promises"
)
_NO_FEATURES = {"alexnet": _VALID_CONVS, "squeezenet": _VALID_CONVS, "inception": _VALID_CONVS}
"""torchvision modules whose models are not listed, and why."""

_DEFAULT_SIZE = 224
"""The input size of torchvision's fixed-size networks built without weights."""
_PROBE = 64
"""The side of the image the other networks are probed with: twice the deepest stride."""


# -- the namespace -------------------------------------------------------------------------
def _module_of(arch: str) -> str:
    import torchvision

    return str(torchvision.models.get_model_builder(arch).__module__).rsplit(".", 1)[-1]


def _all_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _names() -> list[str]:
    return [n for n in _all_names() if _module_of(n) in _FAMILIES]


def _families_supporting(option: str) -> list[str]:
    return sorted(
        f"{NAMESPACE}/{name}"
        for name, family in _FAMILIES.items()
        if option in _COMMON | family.options
    )


def _resolve(name: str) -> BackboneEntry:
    known = _all_names()
    if name not in known:
        raise UnknownNameError(
            "backbone",
            f"{NAMESPACE}{SEPARATOR}{name}",
            [f"{NAMESPACE}{SEPARATOR}{n}" for n in close_matches(name, _names())],
            accepted=f"a torchvision classification model; list them with "
            f"list_backbones('{NAMESPACE}/*')",
        )
    module = _module_of(name)
    if module not in _FAMILIES:
        raise ValueError(
            f"backbone {NAMESPACE}/{name!r} cannot return features: {_NO_FEATURES[module]}"
        )
    family = _FAMILIES[module]

    def build(options: BackboneOptions) -> nn.Module:
        return _build(name, module, family, options)

    return BackboneEntry(
        build,
        f"{NAMESPACE}/{module}",
        _COMMON | family.options,
        source=f"torchvision.models.get_model({name!r}) cut by create_feature_extractor",
        loads_weights=True,
    )


TV = Namespace(
    names=_names,
    resolve=_resolve,
    doc="torchvision's classification models, cut by its FX feature extractor",
    families_supporting=_families_supporting,
)


# -- building ------------------------------------------------------------------------------
def _build(arch: str, module: str, family: _Family, options: BackboneOptions) -> nn.Module:
    name = f"{NAMESPACE}/{arch}"
    # The classifier, with its weights: torchvision's loaders expect the whole network.
    member, path = _pick_weights(arch, options)
    state, source = _read_weights(arch, member, path, options)
    model = _classifier(arch, module, family, member, options)
    fitted = _load(model, state, source) if state is not None else None

    # Its levels, from one run; then the input conv for in_chans, and the cut.
    size = _input_size(model, family, member)
    levels = _levels(model, family, name, size)
    returned = _out_indices(levels, name, options)
    first_conv, classifier = _first_conv(model), _last_linear(model)
    if options.in_chans != 3:
        _replace_first_conv(model, first_conv, options, pretrained=fitted is not None)
    body = _extract(model, family, [levels[i].module for i in returned])
    prefix = "extractor." if isinstance(body, TokenMaps) else ""

    # What the cut network returns, and the modules each stage runs, measured.
    run = measure(body, [(size, size)], options.in_chans, [levels[i].num_chs for i in returned])
    levels, fixes = measured_levels(levels, returned, run)
    body_strides = [levels[i].reduction for i in returned]
    pad_to = pad_multiple(body, run, body_strides, options.in_chans)
    frozen, owners, partition = _frozen(
        body, run.spans, levels, options.frozen_stages, returned, prefix
    )
    # Strictness is judged on the tensors the backbone keeps, so it is checked after the cut.
    report = _report(name, body, prefix, fitted, family, first_conv, options) if fitted else None
    backbone = ZooBackbone(
        body,
        levels,
        returned,
        nhwc=run.nhwc,
        in_chans=options.in_chans,
        probe_input_size=run.size,
        frozen=frozen,
        owners=owners,
        frozen_stages=options.frozen_stages,
        norm_eval=options.norm_eval,
        return_dict=options.return_dict,
        metadata_fixes=fixes,
        pad_to=pad_to,
        body_strides=body_strides,
        stages=partition,
    )
    cfg = _pretrained_cfg(arch, family, member, first_conv, classifier, options)
    set_attributes(backbone, pretrained_cfg=cfg)
    if report is not None:
        set_attributes(backbone, pretrained_report=report)
    return backbone


def _classifier(
    arch: str, module: str, family: _Family, member: Any, options: BackboneOptions
) -> nn.Module:
    """torchvision's network, without weights, built for ``options``."""
    import torchvision

    kwargs: dict[str, Any] = dict(family.builder_kwargs)
    if options.output_stride != 32:
        kwargs["replace_stride_with_dilation"] = _DILATIONS[options.output_stride]
    if family.drop_path == "kwarg":
        kwargs["stochastic_depth_prob"] = options.drop_path_rate
    if family.size_kwarg and member is not None:
        side = int(member.meta["min_size"][0])
        kwargs[family.size_kwarg] = side if family.size_kwarg == "image_size" else (side, side)
    try:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except NotImplementedError as err:  # BasicBlock: "Dilation > 1 not supported"
        if "replace_stride_with_dilation" not in kwargs:
            raise
        dilating = [
            f"{NAMESPACE}/{n}"
            for n in _names()
            if _module_of(n) == module and n not in _BASIC_BLOCK_RESNETS
        ]
        raise ValueError(
            f"output_stride={options.output_stride} is not supported by {NAMESPACE}/{arch}: "
            f"torchvision cannot dilate its basic blocks ({err}); the bottleneck ResNets "
            f"can: {', '.join(sorted(dilating))}"
        ) from None
    if family.drop_path == "rescale":
        _rescale_stochastic_depth(model, options.drop_path_rate)
    return model


def _rescale_stochastic_depth(model: nn.Module, rate: float) -> None:
    """Scale every StochasticDepth's ``p`` so the deepest is ``rate``, keeping the schedule.

    Swin's and MaxViT's builders fix ``stochastic_depth_prob`` (the probability rises
    linearly to it at the last block), so the schedule they built is scaled instead.
    """
    from torchvision.ops import StochasticDepth

    layers = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    deepest = max((m.p for m in layers), default=0.0)
    for m in layers:
        m.p = m.p * rate / deepest if deepest else 0.0


def _input_size(model: nn.Module, family: _Family, member: Any) -> int:
    """The side of the square image the network is probed with."""
    if family.size_kwarg == "image_size":
        return int(getattr(model, "image_size", _DEFAULT_SIZE))
    if family.size_kwarg:
        return int(member.meta["min_size"][0]) if member is not None else _DEFAULT_SIZE
    return _PROBE


def _trunk(model: nn.Module, family: _Family) -> list[str]:
    names = []
    for entry in family.trunk:
        if entry.endswith(".*"):
            parent = entry[:-2]
            names += [
                f"{parent}.{child}" for child, _ in model.get_submodule(parent).named_children()
            ]
        else:
            names.append(entry)
    return names


def _levels(model: nn.Module, family: _Family, name: str, size: int) -> list[FeatureLevel]:
    """Run the network once with a hook on each trunk module; pick the levels.

    Raises:
        BackboneContractError: a trunk module's map is not the input divided by a stride.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(module_name: str) -> Any:
        def record(_m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, Tensor) and module_name not in shapes:
                shapes[module_name] = tuple(out.shape)

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in _trunk(model, family)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes:
            m.training = mode
    found: list[tuple[str, int, int]] = []  # (module, channels, stride), in run order
    for module_name, shape in shapes.items():  # hooks fire, and dicts keep, in run order
        chs, stride = _chs_stride(model, family, shape, size)
        if stride == 0:
            raise BackboneContractError(
                f"{name}: {module_name} gives {shape} for a {size}x{size} input, not the "
                f"input divided by a stride"
            )
        found.append((module_name, chs, stride))
    if family.per_stride:
        found = [f for i, f in enumerate(found) if i + 1 == len(found) or found[i + 1][2] != f[2]]
    return [FeatureLevel(i, chs, stride, n) for i, (n, chs, stride) in enumerate(found)]


def _chs_stride(
    model: nn.Module, family: _Family, shape: tuple[int, ...], size: int
) -> tuple[int, int]:
    """Channels and stride of one trunk module's output (stride 0: none fits)."""
    if family.layout == "tokens":
        patch = int(getattr(model, "patch_size", 0))
        fits = len(shape) == 3 and patch > 0 and shape[1] == 1 + (size // patch) ** 2
        return shape[-1], patch if fits else 0
    if len(shape) != 4:
        return 0, 0
    chs, h, w = (shape[3], shape[1], shape[2]) if family.layout == "nhwc" else shape[1:]
    stride = size // h if h else 0
    return chs, stride if stride and h * stride == size and w * stride == size else 0


def _out_indices(
    levels: list[FeatureLevel], name: str, options: BackboneOptions
) -> tuple[int, ...]:
    if options.out_indices is None:
        return tuple(range(len(levels)))
    try:
        return resolve_out_indices(options.out_indices, len(levels))
    except ValueError as err:
        described = ", ".join(
            f"{lv.index} {lv.module} (stride {lv.reduction}, {lv.num_chs} channels)"
            for lv in levels
        )
        raise ValueError(f"{err}. {name}'s levels: {described}") from None


def _extract(model: nn.Module, family: _Family, nodes: list[str]) -> nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor

    # Train and eval graphs differ where dropout or stochastic depth only run in
    # training; the extractor keeps both and follows the mode, so the warning is noise.
    extractor = create_feature_extractor(
        model, return_nodes={n: n for n in nodes}, suppress_diff_warning=True
    )
    if family.layout == "tokens":
        return TokenMaps(extractor, int(getattr(model, "patch_size", 0)))
    return extractor


class TokenMaps(nn.Module):
    """A ViT extractor's token sequences as feature maps.

    torchvision's encoder layers return ``(B, 1 + H*W, C)``: the class token, then the
    patches row by row. This drops the class token and folds the patches into
    ``(B, C, H, W)``, ``H`` and ``W`` being the input's size over the patch size.

    Args:
        extractor: returns ``{node: tokens}``.
        patch_size: the network's patch size.

    Example:
        >>> import torch, torchvision
        >>> from torchvision.models.feature_extraction import create_feature_extractor
        >>> vit = torchvision.models.vit_b_16()
        >>> layer = "encoder.layers.encoder_layer_11"
        >>> body = TokenMaps(create_feature_extractor(vit, [layer]), vit.patch_size)
        >>> body(torch.zeros(1, 3, 224, 224))[layer].shape
        torch.Size([1, 768, 14, 14])
    """

    def __init__(self, extractor: nn.Module, patch_size: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return {
            node: tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
            for node, tokens in self.extractor(x).items()
        }


def _first_conv(model: nn.Module) -> str:
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module_name
    raise BackboneContractError(f"{type(model).__name__} has no 3-channel input convolution")


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else ""


def _replace_first_conv(
    model: nn.Module, path: str, options: BackboneOptions, *, pretrained: bool
) -> None:
    """An ``in_chans`` first convolution: its weights adapted, or freshly initialised."""
    old = model.get_submodule(path)
    if not isinstance(old, nn.Conv2d):  # found by type in _first_conv
        raise TypeError(f"{path} is a {type(old).__name__}, not a Conv2d")
    new = nn.Conv2d(
        options.in_chans,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        old.stride,  # type: ignore[arg-type]
        old.padding,  # type: ignore[arg-type]
        old.dilation,  # type: ignore[arg-type]
        old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(
                adapt_first_conv(old.weight, options.in_chans, options.in_chans_strategy)
            )
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def _frozen(
    body: nn.Module,
    spans: dict[str, tuple[int, int]],
    levels: list[FeatureLevel],
    frozen_stages: int,
    returned: tuple[int, ...],
    prefix: str,
) -> tuple[list[str], list[str], list[tuple[str, list[str]]]]:
    """The modules ``frozen_stages`` freezes (see ``frozen_module_names``), and each
    stage's parameters (``stage_partition``).

    The extractor calls leaf modules directly, so a level's container (``layer1``) never
    runs itself: its span is that of the modules inside it.
    """
    stages = [lv for lv in levels if lv.reduction >= STEM_STRIDE]
    spans = dict(spans)
    built, labels = [], []
    for level in stages:
        node = prefix + level.module
        span = span_of(node, spans)
        if span is not None:
            spans[node] = span
            built.append(node)
            labels.append(level.module)
    check_frozen_stages(frozen_stages, len(built), [lv.module for lv in stages], returned)
    partition = list(zip(["stem", *labels], stage_partition(body, spans, built), strict=True))
    return (*frozen_module_names(body, spans, built, frozen_stages), partition)


# -- weights -------------------------------------------------------------------------------
def _pick_weights(arch: str, options: BackboneOptions) -> tuple[Any, str]:
    """The weights enum member ``pretrained`` names, or the file/URL/hub text, or neither."""
    import torchvision

    pretrained = options.pretrained
    if pretrained is False:
        return None, ""
    if options.pretrained_format not in (None, "torchvision"):
        raise WeightsError(
            f"pretrained_format={options.pretrained_format!r}: {NAMESPACE}/{arch} loads "
            f"torchvision classification checkpoints; accepted: None or 'torchvision'"
        )
    enum = torchvision.models.get_model_weights(arch)
    members = list(enum.__members__)
    if pretrained is True:
        return enum.DEFAULT, ""
    text = os.fspath(pretrained)
    if text in members:
        return enum[text], ""
    if os.path.exists(text) or "/" in text or ":" in text or "\\" in text:
        return None, text
    close = difflib.get_close_matches(text, members, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
    raise WeightsError(
        f"pretrained={text!r} is neither a weights name of {NAMESPACE}/{arch} "
        f"({enum.__name__}) nor a file{hint} Accepted: {', '.join(members)}; or a path, an "
        f"http(s) URL or 'hf-hub:<repo>'"
    )


def _read_weights(
    arch: str, member: Any, path: str, options: BackboneOptions
) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint's tensors (torchvision's key names) and where they came from."""
    if member is not None:
        url = str(member.url)
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        try:
            state = member.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
            raise WeightsError(
                f"could not fetch the weights {member} of {NAMESPACE}/{arch} from {url}: "
                f"{type(err).__name__}: {err}. Offline, put the file at {cached} (torch "
                f"hub's cache, under TORCH_HOME) or pass pretrained=<file>"
            ) from None
        sha256 = options.pretrained_sha256.lower()
        if sha256 and not sha256_of(Path(cached)).startswith(sha256):
            raise WeightsError(
                f"{cached}: its sha256 does not start with pretrained_sha256={sha256!r}"
            )
        return _state_dict(state, cached), url
    if not path:
        return None, ""
    checkpoint, _ = read_checkpoint(resolve_source(path, sha256=options.pretrained_sha256))
    return _state_dict(checkpoint, path), path


def _state_dict(checkpoint: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The tensors of a checkpoint: itself, or its ``state_dict``/``model`` entry.

    DenseNet's old ``norm.1``-style keys are renamed as torchvision's own loader does;
    a DataParallel ``module.`` prefix is cut. ``_metadata`` (module versions, which
    MNASNet's loader reads) is kept.
    """
    state: Any = checkpoint
    for key in ("state_dict", "model"):
        nested = checkpoint.get(key)
        if isinstance(nested, Mapping) and any(isinstance(v, Tensor) for v in nested.values()):
            state = nested
            break
    if not any(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(
            f"{where}: found no tensors, at the top level or under 'state_dict' or 'model'; "
            f"the top-level keys are {sorted(map(str, checkpoint))[:8]}"
        )
    out: dict[str, Any] = OrderedDict()
    strip = "module." if all(str(k).startswith("module.") for k in state) else ""
    for key, value in state.items():
        key = str(key)[len(strip) :]
        out[_DENSENET_OLD_KEY.sub(r"\1\2", key)] = value
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass(frozen=True)
class _Fitted:
    """What loading into the classifier did.

    Attributes:
        source: where the weights came from.
        keys: every key of the checkpoint.
        loaded: the keys loaded.
        mismatched: ``(key, our shape, its shape)`` of the keys of other shapes.
        not_in_model: checkpoint keys the classifier does not have.
    """

    source: str
    keys: list[str]
    loaded: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    not_in_model: list[str]


def _load(model: nn.Module, state: dict[str, Any], source: str) -> _Fitted:
    """Load what fits into the classifier; the report is made once the backbone is cut."""
    ours = model.state_dict()
    fitting: dict[str, Any] = OrderedDict()
    mismatched = []
    for key, value in state.items():
        if key not in ours:
            continue
        if tuple(value.shape) != tuple(ours[key].shape):
            mismatched.append((key, tuple(ours[key].shape), tuple(value.shape)))
            continue
        fitting[key] = value
    # A checkpoint without module versions (safetensors) is read as saved by this version.
    fitting._metadata = getattr(state, "_metadata", None) or getattr(ours, "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(fitting, strict=False)
    except (RuntimeError, ValueError) as err:
        raise WeightsError(f"{source}: torchvision could not load the weights: {err}") from None
    return _Fitted(
        source, list(state), list(fitting), mismatched, [k for k in state if k not in ours]
    )


def _report(
    name: str,
    body: nn.Module,
    prefix: str,
    fitted: _Fitted,
    family: _Family,
    first_conv: str,
    options: BackboneOptions,
) -> LoadReport:
    """The loading report over the tensors the backbone keeps; strict loading checks it."""
    kept = {k[len(prefix) :] for k in body.state_dict()}
    state = set(fitted.keys)
    outside = [k for k in fitted.keys if k not in kept and k not in fitted.not_in_model]
    not_built = [k for k in fitted.not_in_model if k.startswith(family.not_built or ("\0",))]
    dropped = {}
    if outside:
        dropped["outside the backbone: the classifier, or layers after its deepest level"] = outside
    if not_built:
        dropped["parts torchvision's builder was asked not to build"] = not_built
    adapted = []
    if options.in_chans != 3:
        adapted.append(
            f"{first_conv}.weight: 3 -> {options.in_chans} input channels "
            f"({options.in_chans_strategy!r})"
        )
    report = LoadReport(
        fitted.source,
        "torchvision",
        loaded=sorted(k for k in fitted.loaded if k in kept),
        missing=sorted(k for k in kept if k not in state and not k.endswith("num_batches_tracked")),
        unexpected=sorted(k for k in fitted.not_in_model if k not in not_built),
        mismatched=[m for m in fitted.mismatched if m[0] in kept],
        dropped=dropped,
        adapted=adapted,
    )
    if options.pretrained_strict and not report.ok:
        report.applied = False
        raise WeightsLoadError(
            report,
            f"the weights from {fitted.source} do not fit {name} ({len(report.missing)} missing, "
            f"{len(report.unexpected)} unexpected, {len(report.mismatched)} of other shapes); "
            f"nothing was loaded:\n{report}\nPass pretrained_strict=False to load what fits.",
        )
    return report


def _pretrained_cfg(
    arch: str,
    family: _Family,
    member: Any,
    first_conv: str,
    classifier: str,
    options: BackboneOptions,
) -> dict[str, Any]:
    """timm's keys: the chosen weights' pre-processing (the default weights' without)."""
    import torchvision

    if member is None:
        member = torchvision.models.get_model_weights(arch).DEFAULT
    transforms = member.transforms()
    crop = int(transforms.crop_size[0])
    resize = int(getattr(transforms, "resize_size", [crop])[0])
    mean, std = family.mean_std or (
        tuple(getattr(transforms, "mean", IMAGENET_MEAN)),
        tuple(getattr(transforms, "std", IMAGENET_STD)),
    )
    categories = member.meta.get("categories")
    cfg = PretrainedCfg(
        tag=member.name,
        url=str(member.url),
        origin="torchvision",
        license=str(member.meta.get("license", "")),
        input_size=(3, crop, crop),
        interpolation=str(getattr(transforms.interpolation, "value", "bilinear")),
        crop_pct=round(crop / resize, 4),
        mean=mean,
        std=std,
        num_classes=len(categories) if categories else 0,
        first_conv=first_conv,
        classifier=classifier,
    )
    pretrained = options.pretrained
    if not isinstance(pretrained, bool):
        text = os.fspath(pretrained)
        if text not in type(member).__members__:  # a file, URL or hub id: its own source
            cfg = replace(cfg, tag="", url="", license="", origin="")
            if text.startswith("hf-hub:"):
                cfg = replace(cfg, hf_hub_id=text[len("hf-hub:") :])
            elif text.startswith(("http://", "https://")):
                cfg = replace(cfg, url=text)
            else:
                cfg = replace(cfg, file=text)
    if options.pretrained_sha256:
        cfg = replace(cfg, sha256=options.pretrained_sha256)
    strategy = options.in_chans_strategy
    sources = (
        None
        if isinstance(strategy, str)
        else [c if c is not None else i % 3 for i, c in enumerate(strategy)]
    )
    cfg = cfg.for_in_chans(options.in_chans, sources)
    overlay = dict(options.pretrained_cfg_overlay or {})
    cfg = replace(cfg, **{k: v for k, v in overlay.items() if k != "pool_size"})
    out = cfg.to_dict()
    if "pool_size" in overlay:
        out["pool_size"] = overlay["pool_size"]
    return out
