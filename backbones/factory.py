"""``create_backbone`` and ``create_head``: build what the catalog names.

``create_backbone`` is one pipeline, in the order of timm's ``build_model_with_cfg``:

1. look the name up (:mod:`backbones.catalog`);
2. validate the options once (:class:`~backbones.options.BackboneOptions`) and check
   that the backbone's family honours the ones that are set;
3. build (the entry's family: the ResNet trunk, or a plugin's factory);
4. check the result against the backbone contract (:mod:`backbones.contract`);
5. apply weights (:mod:`backbones.weights.pretrained`);
6. record the configuration (``backbone_config``, which ``save_backbone`` writes).
"""

from typing import Any

from torch import nn

from backbones._spellings import unknown_options_error
from backbones.catalog import HEADS, backbone_entry, families_supporting
from backbones.contract import BackboneEntry, check_backbone
from backbones.errors import BackboneContractError, UnsupportedOptionError
from backbones.features import FeatureInfo
from backbones.options import BUILD, BackboneOptions, option_names, option_specs
from backbones.weights.config import set_attributes
from backbones.weights.pretrained import apply_pretrained

__all__ = ["create_backbone", "create_head"]

_OPTION_NAMES = frozenset(option_names())


def create_backbone(name: str, **options: Any) -> nn.Module:
    """Build a registered backbone as a multi-scale feature extractor.

        Args:
            name: a registered backbone, see :func:`~backbones.list_backbones`.
            **options: keyword options, each defined (default, check, doc) once in
                :class:`~backbones.options.BackboneOptions`:

    {options}

                Another library's spelling (``trainable_layers``, ``features_only``,
                ``norm_cfg``, ...) is answered with this library's option.

        Returns:
            An ``nn.Module`` whose forward returns the requested feature maps and whose
            ``feature_info`` describes them. It also has ``pretrained_cfg`` (timm's keys:
            mean, std, input_size, interpolation, ...), ``backbone_config`` (the name and
            build options, for :func:`~backbones.save_backbone`) and, when weights were
            loaded, ``pretrained_report``.

        Raises:
            UnknownNameError: ``name`` (or a block or layer name) is not registered.
            ValueError, TypeError: an option is out of range or of the wrong type; the
                message names the value and what is accepted.
            UnsupportedOptionError: (a ValueError) the backbone's family does not honour an
                option that is set; the message names the families that do.
            TypeError: ``name`` is not a string, or an option is unknown (the message says
                what to use instead).
            BackboneContractError: (a TypeError) the factory returned no backbone whose
                ``feature_info`` describes its forward's outputs; the message names it.
            WeightsError: the weights cannot be found, read or fitted.

        Example:
            >>> bb = create_backbone("resnet50", out_indices=(1, 2, 3, 4))
            >>> bb.feature_info.channels()
            [256, 512, 1024, 2048]
    """
    if not isinstance(name, str):
        raise TypeError(
            f"name must be a registered backbone name (a str, see list_backbones()), "
            f"got {type(name).__name__} {name!r}"
        )
    unknown = {k: v for k, v in options.items() if k not in _OPTION_NAMES}
    if unknown:
        raise unknown_options_error("create_backbone", unknown, option_names())
    entry = backbone_entry(name)
    checked = BackboneOptions(**options)
    _check_supported(entry, checked)
    try:
        model = entry.build(checked)
    except UnsupportedOptionError as err:  # a namespace knows its own families, not all
        families = [*families_supporting(err.option)]
        families += [f for f in err.families if f not in families]
        raise UnsupportedOptionError(err.family, err.option, err.value, families) from None
    except BackboneContractError as err:  # measured while building: name the backbone
        if name in str(err):
            raise
        raise BackboneContractError(f"backbone {name!r}: {err}") from None
    check_backbone(name, entry, model, checked)
    if not entry.loads_weights:  # a zoo loads through its own library's machinery
        apply_pretrained(model, name, entry.weights, checked)
    set_attributes(model, backbone_config={"name": name, **checked.to_config()})
    return model


def _check_supported(entry: BackboneEntry, options: BackboneOptions) -> None:
    """Refuse a build option set to anything but its default that the family ignores."""
    for option, value in options.changed(BUILD).items():
        if option not in entry.supports:
            raise UnsupportedOptionError(entry.family, option, value, families_supporting(option))


def _options_doc() -> str:
    lines = []
    for spec in option_specs():
        lines.append(
            f"            - ``{spec.name}={spec.default_text}``: {spec.doc.replace('`', '``')}"
        )
    return "\n".join(lines)


if create_backbone.__doc__:  # None under python -OO
    create_backbone.__doc__ = create_backbone.__doc__.replace("{options}", _options_doc())


def create_head(name: str, *, feature_info: FeatureInfo, **head_kwargs: Any) -> nn.Module:
    """Build a registered head for a backbone described by ``feature_info``.

    Args:
        name: a registered head, see :func:`~backbones.list_heads`.
        feature_info: the backbone's :class:`~backbones.features.FeatureInfo`.
        **head_kwargs: the head's own options (e.g. ``num_classes``).

    Returns:
        An ``nn.Module`` whose forward takes the backbone's list of feature maps.

    Raises:
        UnknownNameError: ``name`` is not registered.
        TypeError: ``feature_info`` is not a FeatureInfo, or an option is not the head's.

    Example:
        >>> bb = create_backbone("resnet18")
        >>> head = create_head("classification", feature_info=bb.feature_info, num_classes=3)
    """
    factory = HEADS.get(name)
    if not isinstance(feature_info, FeatureInfo):
        raise TypeError(
            f"feature_info must be a backbone's FeatureInfo (backbone.feature_info), "
            f"got {type(feature_info).__name__}"
        )
    return factory(feature_info=feature_info, **head_kwargs)
