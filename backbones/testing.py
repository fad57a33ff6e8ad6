"""Test helpers for plugin authors: parity against a reference, the block and feature contracts.

Everything here raises ``AssertionError`` with a message that names what differs
(the feature level, the shapes, the largest difference and the tolerance), so it
reads well in a pytest report. The checks never use the ``assert`` statement:
they must still check under ``python -O``.

At module level this imports torch and nothing of backbones: not the registry,
the plugin manager or the weights code, whose layout may change. The one function
that looks a name up (:func:`check_block`) imports ``backbones.get_block`` when called.

Example:
    >>> import timm, torch
    >>> from backbones import create_backbone
    >>> from backbones.testing import assert_parity, check_block, check_feature_contract
    >>> reference = timm.create_model("resnet18", features_only=True)
    >>> model = create_backbone("resnet18", out_indices=(0, 1, 2, 3, 4))
    >>> _ = assert_parity(model, reference, torch.randn(2, 3, 64, 64))
    >>> check_block("bottleneck")
    >>> _ = check_feature_contract(model, torch.randn(1, 3, 65, 47))
"""

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn

from backbones.catalog import BLOCKS, LAYERS, get_block
from backbones.layers import BlockVariant
from backbones.registry import BUILTIN_PROVIDER
from backbones.resnet import resolve_block_layer

__all__ = [
    "Features",
    "assert_features_close",
    "assert_frozen_unchanged",
    "assert_parity",
    "check_block",
    "check_feature_contract",
    "randomize_batchnorm_stats",
]

Features: TypeAlias = Tensor | Sequence[Tensor] | Mapping[str, Tensor]
"""What a backbone returns (a list or a dict of maps), or one tensor (a block's output)."""

_MAX_KEYS_SHOWN = 10


# -- BatchNorm statistics ------------------------------------------------------------


def _frozen_batchnorm_types() -> tuple[type, ...]:
    # Looked up instead of imported: a model can only hold an instance of a class whose
    # module is already loaded, and importing torchvision or timm here would be slow.
    found = []
    for module_name, class_name in (
        ("torchvision.ops.misc", "FrozenBatchNorm2d"),
        ("timm.layers.norm_act", "FrozenBatchNormAct2d"),
    ):
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def randomize_batchnorm_stats(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine weights and running statistics, in place.

    A fresh BatchNorm is nearly the identity in eval mode (mean 0, variance 1,
    weight 1, bias 0), so two networks whose norms were mapped to the wrong keys
    still agree; random statistics make such a mistake show. Covers every
    ``nn.modules.batchnorm._BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm, timm's
    BatchNormAct2d) and the frozen ones, torchvision's ``FrozenBatchNorm2d`` and
    timm's ``FrozenBatchNormAct2d``. Running means are N(0, 0.1²), variances
    U(0.5, 1.5), weights U(0.5, 1.5) and biases N(0, 0.1²), drawn module by module
    in ``model.modules()`` order from a generator seeded with ``seed``.

    Args:
        model: the network to change.
        seed: the seed of the random values; the same seed gives the same values.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: a lazy BatchNorm has not been initialised yet (run a forward first).

    Example:
        >>> bn = randomize_batchnorm_stats(nn.BatchNorm2d(4), seed=1)
        >>> bool((bn.running_var > 0).all())
        True
    """
    norm_types = (nn.modules.batchnorm._BatchNorm, *_frozen_batchnorm_types())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, norm_types):
                continue
            # The order of draws is fixed (mean, var, weight, bias) so a seed keeps
            # giving the same network whichever of them a norm lacks.
            values = {}
            for attr, sample in (
                ("running_mean", lambda n: torch.randn(n, generator=gen) * 0.1),
                ("running_var", lambda n: torch.rand(n, generator=gen) + 0.5),
                ("weight", lambda n: torch.rand(n, generator=gen) + 0.5),
                ("bias", lambda n: torch.randn(n, generator=gen) * 0.1),
            ):
                tensor = getattr(m, attr, None)
                if tensor is None:  # affine=False or track_running_stats=False
                    continue
                if nn.parameter.is_lazy(tensor):
                    raise ValueError(
                        f"{name or type(m).__name__} is a lazy {type(m).__name__} that has "
                        f"no size yet; run a forward before randomizing its statistics"
                    )
                values[attr] = (tensor, sample(tensor.numel()))
            for tensor, value in values.values():
                tensor.copy_(value.view_as(tensor))
    return model


# -- comparing features --------------------------------------------------------------


def _as_levels(features: Features, what: str) -> list[tuple[object, Tensor]]:
    if isinstance(features, Tensor):
        return [(0, features)]
    if isinstance(features, Mapping):
        return list(features.items())
    if isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
        return list(enumerate(features))
    raise AssertionError(
        f"{what} must be a tensor, a list or tuple of tensors, or a dict of tensors, "
        f"got {type(features).__name__}"
    )


def _kind(features: Features) -> str:
    if isinstance(features, Tensor):
        return "a tensor"
    return "a dict" if isinstance(features, Mapping) else "a sequence"


def _compare(actual: Tensor, expected: Tensor, label: str, atol: float, rtol: float) -> None:
    if not isinstance(actual, Tensor) or not isinstance(expected, Tensor):
        raise AssertionError(
            f"{label}: expected tensors, got {type(actual).__name__} (actual) and "
            f"{type(expected).__name__} (expected)"
        )
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{label}: shape {tuple(actual.shape)} (actual) != {tuple(expected.shape)} (expected)"
        )
    if actual.dtype != expected.dtype:
        raise AssertionError(
            f"{label}: dtype {actual.dtype} (actual) != {expected.dtype} (expected)"
        )
    a = actual.detach()
    e = expected.detach().to(a.device)
    close = torch.isclose(a, e, rtol=rtol, atol=atol)
    if bool(close.all()):
        return
    diff = (a.double() - e.double()).abs()
    # NaN is never close; report it instead of a NaN maximum
    diff = torch.where(close, torch.zeros_like(diff), diff.nan_to_num(nan=math.inf))
    flat = int(diff.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    bad = int((~close).sum())
    raise AssertionError(
        f"{label}: values differ: max abs diff {float(diff.max()):.3g} at index {where} "
        f"(actual {float(a.reshape(-1)[flat]):.6g}, expected {float(e.reshape(-1)[flat]):.6g}); "
        f"{bad} of {a.numel()} elements exceed atol={atol:g} + rtol={rtol:g} * |expected|"
    )


def assert_features_close(
    actual: Features,
    expected: Features,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    names: Sequence[str] | None = None,
) -> None:
    """Check that two sets of feature maps are equal up to a tolerance.

    Both must be of the same kind (lists/tuples, dicts, or single tensors), with
    the same number of maps (dicts: the same keys in the same order), and each
    pair must have the same shape and dtype and values within
    ``atol + rtol * |expected|``, element by element (as in ``torch.isclose``).

    Args:
        actual: the features under test.
        expected: the reference features.
        atol: absolute tolerance.
        rtol: relative tolerance, a fraction of ``|expected|``.
        names: a name for each map of a list, shown in messages (say the module names).

    Raises:
        AssertionError: they differ; the message names the level (index, key or
            name), the shapes or dtypes, or the largest absolute difference, where
            it is, and the tolerance.
        ValueError: ``names`` does not have one name per expected map.

    Example:
        >>> a = [torch.zeros(1, 2, 4, 4), torch.ones(1, 4, 2, 2)]
        >>> assert_features_close(a, [t.clone() for t in a], names=["layer1", "layer2"])
    """
    actual_levels = _as_levels(actual, "actual")
    expected_levels = _as_levels(expected, "expected")
    if _kind(actual) != _kind(expected):
        raise AssertionError(f"actual is {_kind(actual)}, expected is {_kind(expected)}")
    if names is not None and len(names) != len(expected_levels):
        raise ValueError(
            f"names must have one name per expected feature map ({len(expected_levels)}), "
            f"got {len(names)}: {list(names)!r}"
        )
    if isinstance(expected, Mapping):
        actual_keys = [k for k, _ in actual_levels]
        expected_keys = [k for k, _ in expected_levels]
        if actual_keys != expected_keys:
            raise AssertionError(f"keys {actual_keys} (actual) != {expected_keys} (expected)")
    elif len(actual_levels) != len(expected_levels):
        raise AssertionError(
            f"{len(actual_levels)} feature maps (actual) != {len(expected_levels)} (expected)"
        )
    for i, ((key, a), (_, e)) in enumerate(zip(actual_levels, expected_levels, strict=True)):
        if isinstance(expected, Mapping):
            label = f"level {key!r}"
        elif names is not None:
            label = f"level {i} ({names[i]!r})"
        else:
            label = f"level {i}"
        _compare(a, e, label, atol, rtol)


# -- parity with a reference model ---------------------------------------------------


def _key_list(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return f"[{shown}{f', ... ({more} more)' if more > 0 else ''}]"


def assert_parity(
    model: nn.Module,
    reference: nn.Module,
    inputs: Any,
    *,
    load: bool = True,
    strict: bool = True,
    key_map: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    randomize: bool = True,
) -> tuple[Any, Any]:
    """Check that ``model`` computes what ``reference`` computes, with its weights.

    The steps: randomize the reference's BatchNorm statistics (so a wrong key
    mapping shows), load the reference's ``state_dict`` (passed through
    ``key_map``) into ``model``, put both in eval mode, run both on ``inputs``
    under ``torch.no_grad`` and compare with :func:`assert_features_close`.
    Both models are changed in place and left in eval mode.

    Args:
        model: the model under test (say ``create_backbone(...)``).
        reference: the model it must equal (say ``timm.create_model(...,
            features_only=True)``).
        inputs: the one positional argument of both forwards (an image batch).
        load: load the reference's weights into ``model`` first; False when the
            two already hold the same weights.
        strict: with ``load``, every key of ``model`` must be given and every
            given key used.
        key_map: maps the reference's state_dict to ``model``'s keys before
            loading (drop ``fc.*``, rename a prefix).
        atol: absolute tolerance of the comparison.
        rtol: relative tolerance of the comparison.
        randomize: with ``load``, randomize the reference's BatchNorm statistics
            first (:func:`randomize_batchnorm_stats`, seed 0). Ignored without
            ``load``: randomizing one of two already matched models would make
            them differ.

    Returns:
        ``(model_output, reference_output)``, for further checks.

    Raises:
        AssertionError: a key is missing or unexpected (with ``strict``), a
            shape does not match the model's, or the outputs differ.

    Example:
        >>> import timm
        >>> from backbones import create_backbone
        >>> ours, ref = assert_parity(
        ...     create_backbone("resnet18", out_indices=(0, 1, 2, 3, 4)),
        ...     timm.create_model("resnet18", features_only=True),
        ...     torch.randn(1, 3, 64, 64),
        ... )
        >>> [f.shape[1] for f in ours]
        [64, 64, 128, 256, 512]
    """
    if load:
        if randomize:
            randomize_batchnorm_stats(reference)
        state = reference.state_dict()
        if key_map is not None:
            state = key_map(state)
        _load(model, state, strict=strict)
    model.eval()
    reference.eval()
    with torch.no_grad():
        expected = reference(inputs)
        actual = model(inputs)
    assert_features_close(actual, expected, atol=atol, rtol=rtol)
    return actual, expected


def _load(model: nn.Module, state: Mapping[str, Tensor], *, strict: bool) -> None:
    own = model.state_dict()
    # Checked before loading: load_state_dict raises a RuntimeError on the first bad
    # shape even when not strict, and names the keys less plainly.
    bad_shapes = [
        f"{k}: {tuple(v.shape)} (reference) vs {tuple(own[k].shape)} (model)"
        for k, v in state.items()
        if k in own and isinstance(v, Tensor) and v.shape != own[k].shape
    ]
    if bad_shapes:
        raise AssertionError(
            f"{len(bad_shapes)} reference weights do not fit the model's shapes: "
            + "; ".join(bad_shapes[:_MAX_KEYS_SHOWN])
        )
    result = model.load_state_dict(dict(state), strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise AssertionError(
            "the reference's state_dict does not load strictly into the model: "
            f"missing keys (in the model, not given) {_key_list(result.missing_keys)}; "
            f"unexpected keys (given, not in the model) {_key_list(result.unexpected_keys)}; "
            "pass key_map= to rename or drop keys"
        )


# -- the block contract --------------------------------------------------------------


class _CountingNorm:
    """A norm_layer that records the norms it builds."""

    def __init__(self) -> None:
        self.made: list[nn.Module] = []

    def __call__(self, num_channels: int) -> nn.Module:
        norm = nn.BatchNorm2d(num_channels)
        self.made.append(norm)
        return norm


def _resolve_block(
    block: type[nn.Module] | BlockVariant | str,
) -> tuple[type[nn.Module], dict[str, Any]]:
    """The block class to build, and the ``layers`` keyword a variant adds."""
    found: object = get_block(block) if isinstance(block, str) else block
    if isinstance(found, BlockVariant):
        provider = (BLOCKS.provider(block),) if isinstance(block, str) else ()
        layers = tuple(
            resolve_block_layer(bl, LAYERS, (*provider, BUILTIN_PROVIDER)) for bl in found.layers
        )
        return found.base, {"layers": layers}
    if not isinstance(found, type):
        raise TypeError(
            f"check_block takes a block class, a BlockVariant or a registered block name, "
            f"got {block!r}"
        )
    return found, {}


class _BlockChecker:
    """Builds one block class in the contract's configurations and checks each point."""

    def __init__(
        self,
        cls: type[nn.Module],
        inplanes: int,
        planes: int,
        size: int,
        block_kwargs: Mapping[str, Any],
        act: Callable[[Tensor], Tensor],
    ) -> None:
        self.cls = cls
        self.name = cls.__qualname__
        self.inplanes = inplanes
        self.planes = planes
        self.size = size
        self.block_kwargs = dict(block_kwargs)
        self.act = act
        self.gen = torch.Generator().manual_seed(0)

    def fail(self, point: str, detail: str) -> AssertionError:
        return AssertionError(f"block {self.name} breaks the block contract: {point}: {detail}")

    def input(self, channels: int, batch: int = 2) -> Tensor:
        return torch.randn(batch, channels, self.size, self.size, generator=self.gen)

    def build(self, point: str, inplanes: int, **overrides: Any) -> nn.Module:
        args: dict[str, Any] = {
            "stride": 1,
            "downsample": None,
            "groups": 1,
            "base_width": 64,
            "dilation": 1,
            "first_dilation": 1,
            "norm_layer": nn.BatchNorm2d,
            "drop_path": 0.0,
        }
        args.update(overrides)
        try:
            block = self.cls(inplanes, self.planes, **args, **self.block_kwargs)
        except Exception as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items() if k != "downsample")
            raise self.fail(
                point,
                f"{self.name}({inplanes}, {self.planes}, {shown or 'defaults'}) raised "
                f"{type(err).__name__}: {err}",
            ) from err
        init = getattr(block, "init_weights", None)
        if callable(init):
            try:
                init()
            except Exception as err:
                raise self.fail("init_weights()", f"raised {type(err).__name__}: {err}") from err
        return block

    def forward(self, point: str, block: nn.Module, x: Tensor) -> Tensor:
        try:
            out = block(x)
        except Exception as err:
            raise self.fail(
                point, f"forward of a {tuple(x.shape)} input raised {type(err).__name__}: {err}"
            ) from err
        if not isinstance(out, Tensor):
            raise self.fail(point, f"forward returned {type(out).__name__}, not a tensor")
        return out

    def check_shape(self, point: str, out: Tensor, x: Tensor, stride: int) -> None:
        side = math.ceil(self.size / stride)
        expected = (x.shape[0], self.out_channels, side, side)
        if tuple(out.shape) == expected:
            return
        if out.ndim == 4 and out.shape[1] != self.out_channels:
            detail = (
                f"output has {out.shape[1]} channels, expected planes * expansion = "
                f"{self.planes} * {self.expansion} = {self.out_channels}"
            )
        elif out.ndim == 4:
            detail = (
                f"output is {out.shape[2]}x{out.shape[3]} for a {self.size}x{self.size} input "
                f"at stride {stride}, expected ceil({self.size} / {stride}) = {side}"
            )
        else:
            detail = "output is not NCHW"
        raise self.fail(point, f"{detail} (output shape {tuple(out.shape)}, expected {expected})")

    def build_unless_refused(
        self, point: str, inplanes: int, refusable: str, **overrides: Any
    ) -> nn.Module | None:
        """The block, or None when it refuses ``refusable`` with a ValueError naming it.

        The contract lets a block refuse an argument it cannot honour that way.
        """
        try:
            return self.build(point, inplanes, **overrides)
        except AssertionError as err:
            cause = err.__cause__
            if isinstance(cause, ValueError) and refusable in str(cause):
                return None
            raise

    # -- the contract points -------------------------------------------------------

    def expansion_attribute(self) -> None:
        if not issubclass(self.cls, nn.Module):
            raise self.fail("nn.Module", f"{self.cls!r} is not an nn.Module subclass")
        expansion = getattr(self.cls, "expansion", None)
        if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
            raise self.fail(
                "expansion", f"needs a positive int class attribute expansion, got {expansion!r}"
            )
        self.expansion = expansion
        self.out_channels = self.planes * expansion

    def stride_and_downsample(self) -> None:
        point = "stride=2 with a downsample"
        calls: list[int] = []
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, self.out_channels, 1, stride=2, bias=False),
            nn.BatchNorm2d(self.out_channels),
        )
        downsample.register_forward_hook(lambda *_: calls.append(1))
        norm_layer = _CountingNorm()
        block = self.build(
            point, self.inplanes, stride=2, downsample=downsample, norm_layer=norm_layer
        )
        self.check_norm_layer(block, norm_layer, downsample)
        x = self.input(self.inplanes)
        with torch.no_grad():
            out = self.forward(point, block.eval(), x)
        self.check_shape(point, out, x, stride=2)
        if not calls:
            raise self.fail(point, "the downsample module passed in was never called")

    def check_norm_layer(
        self, block: nn.Module, norm_layer: _CountingNorm, downsample: nn.Module
    ) -> None:
        point = "norm_layer"
        if not norm_layer.made:
            raise self.fail(point, "the norm_layer passed in was never called")
        made = {id(m) for m in norm_layer.made} | {id(m) for m in downsample.modules()}
        own = [
            name
            for name, m in block.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in made
        ]
        if own:
            raise self.fail(point, f"BatchNorms not built by norm_layer: {', '.join(own)}")

    def identity_shortcut(self) -> None:
        point = "stride=1, inplanes == planes * expansion, downsample=None"
        block = self.build(point, self.out_channels)
        x = self.input(self.out_channels)
        with torch.no_grad():
            out = self.forward(point, block.eval(), x)
        self.check_shape(point, out, x, stride=1)

    def dilation(self) -> None:
        x = self.input(self.out_channels)
        plain = self.build("dilation=1", self.out_channels)
        randomize_batchnorm_stats(plain)
        with torch.no_grad():
            reference = self.forward("dilation=1", plain.eval(), x)
        for first in (1, 2):
            point = f"dilation=2, first_dilation={first}"
            dilated = self.build_unless_refused(
                point, self.out_channels, "dilation", dilation=2, first_dilation=first
            )
            if dilated is None:
                return
            try:
                dilated.load_state_dict(plain.state_dict())
            except RuntimeError as err:
                raise self.fail(
                    point, f"its state_dict differs from the dilation=1 block's: {err}"
                ) from err
            with torch.no_grad():
                out = self.forward(point, dilated.eval(), x)
            self.check_shape(point, out, x, stride=1)
            # With first_dilation=1 a block with one 3x3 conv (a bottleneck) rightly
            # computes the dilation=1 output; with both at 2 every spatial conv dilates.
            if first == 2 and torch.allclose(out, reference, atol=1e-6, rtol=1e-6):
                raise self.fail(point, "gives the dilation=1 output with the same weights")

    def drop_path(self) -> None:
        point = "drop_path=0.5"
        plain = self.build("drop_path=0", self.out_channels)
        dropped = self.build_unless_refused(point, self.out_channels, "drop_path", drop_path=0.5)
        if dropped is None:
            return
        dropped.load_state_dict(plain.state_dict())
        # several images: each is dropped or kept on its own, so two seeds differ
        x = self.input(self.out_channels, batch=16)
        with torch.no_grad():
            reference = self.forward("drop_path=0", plain.eval(), x)
            first = self.forward(point, dropped.eval(), x)
            second = self.forward(point, dropped, x)
            if not torch.equal(first, second):
                raise self.fail(point, "two forwards in eval mode differ")
            if not torch.allclose(first, reference, atol=1e-6, rtol=1e-6):
                diff = float((first - reference).abs().max())
                raise self.fail(
                    point, f"in eval mode differs from drop_path=0 (max abs diff {diff:.3g})"
                )
            dropped.train()
            outs = []
            for seed in (1, 2):
                torch.manual_seed(seed)
                outs.append(self.forward(point, dropped, x))
        if torch.equal(outs[0], outs[1]):
            raise self.fail(point, "in train mode, forwards with seeds 1 and 2 are equal")

    def zero_init_last(self) -> None:
        point = "zero_init_last()"
        block = self.build(point, self.out_channels)
        init = getattr(block, "zero_init_last", None)
        if not callable(init):
            return
        try:
            init()
        except Exception as err:
            raise self.fail(point, f"raised {type(err).__name__}: {err}") from err
        x = self.input(self.out_channels)
        with torch.no_grad():
            out = self.forward(point, block.eval(), x)
            expected = self.act(x)
        if not torch.allclose(out, expected, atol=1e-6, rtol=1e-6):
            diff = float((out - expected).abs().max())
            raise self.fail(
                point,
                f"after it the block (identity shortcut, eval) should return act(x), "
                f"max abs diff {diff:.3g}",
            )

    def gradients(self) -> None:
        point = "gradients"
        block = self.build(point, self.out_channels).train()
        x = self.input(self.out_channels)
        out = self.forward(point, block, x)
        # a random projection: the plain sum gives zero gradients behind a BatchNorm
        (out * torch.randn(out.shape, generator=self.gen)).sum().backward()
        unreached = [
            name for name, p in block.named_parameters() if p.requires_grad and p.grad is None
        ]
        if unreached:
            raise self.fail(point, f"no gradient reaches {', '.join(unreached)}")


def check_block(
    block_cls: type[nn.Module] | BlockVariant | str,
    *,
    inplanes: int = 32,
    planes: int = 16,
    size: int = 16,
    block_kwargs: Mapping[str, Any] | None = None,
    act: Callable[[Tensor], Tensor] = torch.relu,
) -> None:
    """Check that a residual block follows the block contract the ResNet trunk relies on.

    The contract (see :mod:`backbones.blocks`): an ``nn.Module`` class with a
    positive int class attribute ``expansion``, built as ``Block(inplanes, planes,
    stride=..., downsample=..., groups=..., base_width=..., dilation=...,
    first_dilation=..., norm_layer=..., drop_path=..., **block_kwargs)``. Checked
    on a batch of small images:

    - output channels are ``planes * expansion`` and the output side is
      ``ceil(size / stride)``, at stride 2 with a downsample and at stride 1
      with an identity shortcut;
    - the ``downsample`` passed in is called, and every BatchNorm of the block
      was built by ``norm_layer`` (which must be called);
    - ``dilation=2`` keeps the size (with ``first_dilation`` 1 and 2), and with
      ``first_dilation=2`` too changes the output of the same weights;
    - ``drop_path=0.5`` drops per image in train mode and is the identity in eval;
    - after ``zero_init_last()`` (if the block has it) the block returns
      ``act(x)``; ``init_weights()`` (if it has it) runs;
    - a backward pass in train mode reaches every parameter.

    A block may refuse ``dilation`` or ``drop_path`` with a ValueError naming
    it, as the contract allows; that point is then skipped. The check seeds its
    own copy of torch's CPU generator, so it is deterministic and leaves the
    caller's random state as it was.

    Args:
        block_cls: the block class, a :class:`~backbones.layers.BlockVariant` (built
            as its base with its layers), or the name either is registered under.
        inplanes: input channels at stride 2.
        planes: the block's ``planes``.
        size: height and width of the input images.
        block_kwargs: extra constructor arguments (a plugin's own, e.g.
            ``{"deform_groups": 2}``).
        act: the block's last activation, which ``zero_init_last`` leaves
            applied to the shortcut.

    Raises:
        AssertionError: a contract point fails; the message names the block
            class, the point and what was found.
        TypeError: ``block_cls`` is neither a class, a variant nor a registered name.
        UnknownNameError: no block is registered under the name.

    Example:
        >>> from backbones.blocks import Bottleneck
        >>> check_block(Bottleneck, block_kwargs={})
    """
    cls, variant_kwargs = _resolve_block(block_cls)
    kwargs = {**variant_kwargs, **(block_kwargs or {})}
    checker = _BlockChecker(cls, inplanes, planes, size, kwargs, act)
    # The blocks' random init draws from the global generator: seed a private copy of
    # it, so the check gives the same verdict every time and leaves the caller's alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checker.expansion_attribute()
        checker.stride_and_downsample()
        checker.identity_shortcut()
        checker.dilation()
        checker.drop_path()
        checker.zero_init_last()
        checker.gradients()


# -- the feature contract ------------------------------------------------------------


def check_feature_contract(model: nn.Module, x: Tensor) -> Features:
    """Check that a backbone's outputs are what its ``feature_info`` says.

    Runs ``model(x)`` under ``torch.no_grad`` in the model's current mode (call
    ``.eval()`` first to leave BatchNorm statistics alone) and checks: a list or
    tuple, or a dict whose keys are ``feature_info.module_name()`` in order; one
    map per entry of ``feature_info.channels()``; each an NCHW tensor with the
    input's batch size, ``channels()[i]`` channels, and height and width
    ``ceil(H / reduction()[i])``, ``ceil(W / reduction()[i])``.

    Args:
        model: the backbone, with a ``feature_info`` (ours or timm's).
        x: an input batch, NCHW; odd sizes check the rounding.

    Returns:
        The model's output, for further checks.

    Raises:
        AssertionError: no ``feature_info``, or an output that does not match
            it; the message names the level and both values.

    Example:
        >>> from backbones import create_backbone
        >>> model = create_backbone("resnet18", out_indices=(2, 4)).eval()
        >>> [f.shape[-1] for f in check_feature_contract(model, torch.randn(1, 3, 64, 65))]
        [9, 3]
    """
    info = getattr(model, "feature_info", None)
    if info is None:
        raise AssertionError(f"{type(model).__name__} has no feature_info attribute")
    channels = list(info.channels())
    reductions = list(info.reduction())
    modules = list(info.module_name())
    with torch.no_grad():
        out = model(x)
    if isinstance(out, Mapping):
        keys = list(out)
        if keys != modules:
            raise AssertionError(f"output dict keys {keys} != feature_info.module_name() {modules}")
        maps = list(out.values())
    elif isinstance(out, Sequence) and not isinstance(out, (str, bytes)):
        maps = list(out)
    else:
        raise AssertionError(
            f"a backbone returns a list or dict of feature maps, got {type(out).__name__}"
        )
    if len(maps) != len(channels):
        raise AssertionError(
            f"{len(maps)} feature maps returned, feature_info describes {len(channels)} ({modules})"
        )
    height, width = x.shape[-2:]
    for i, fmap in enumerate(maps):
        label = f"level {i} ({modules[i]!r})"
        if not isinstance(fmap, Tensor) or fmap.ndim != 4:
            shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise AssertionError(f"{label}: expected an NCHW tensor, got {shape}")
        expected = (
            x.shape[0],
            channels[i],
            math.ceil(height / reductions[i]),
            math.ceil(width / reductions[i]),
        )
        if tuple(fmap.shape) != expected:
            raise AssertionError(
                f"{label}: shape {tuple(fmap.shape)} != {expected} from feature_info "
                f"(num_chs={channels[i]}, reduction={reductions[i]}, input {height}x{width})"
            )
    return out


def assert_frozen_unchanged(model: nn.Module, step: Callable[[], Any]) -> Any:
    """Run ``step`` (a training step on ``model``) and check that it left alone what is
    frozen: every parameter without ``requires_grad`` and the statistics of every norm
    in eval mode (frozen stages, ``norm_eval``, frozen BatchNorms), bit for bit.

    Args:
        model: the model the step trains.
        step: forward, backward and optimizer step; its result is returned.

    Raises:
        AssertionError: naming each tensor that changed, with its largest difference;
            or nothing is frozen, which would make the check vacuous.

    Example:
        >>> model = create_backbone("resnet18", frozen_stages=1).train()  # doctest: +SKIP
        >>> assert_frozen_unchanged(model, lambda: train_step(model))  # doctest: +SKIP
    """
    watched: dict[str, Tensor] = {
        name: param for name, param in model.named_parameters() if not param.requires_grad
    }
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.training:
            continue
        if not hasattr(module, "running_mean"):
            continue
        for buffer in ("running_mean", "running_var", "weight", "bias"):
            value = getattr(module, buffer, None)
            if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
                watched[f"{name}.{buffer}" if name else buffer] = value
    if not watched:
        raise AssertionError(
            "nothing is frozen: no parameter without requires_grad, no norm in eval"
        )
    before = {name: value.detach().clone() for name, value in watched.items()}
    result = step()
    changed = []
    for name, value in watched.items():
        if not torch.equal(value, before[name]):
            diff = (value.detach().float() - before[name].float()).abs().max().item()
            changed.append(f"{name} (max abs diff {diff:.3g})")
    if changed:
        raise AssertionError(
            f"{len(changed)} frozen tensors changed in a training step: "
            + ", ".join(changed[:10])
            + (" ..." if len(changed) > 10 else "")
        )
    return result
