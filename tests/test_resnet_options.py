"""Every option of create_backbone does what its documentation says, checked on numbers."""

import itertools
import math
import re
import uuid
from typing import ClassVar

import pytest
import torch
from helpers import max_abs_diff, randomize_norm_stats
from timm.layers import DropPath
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from backbones import create_backbone, register_block
from backbones.blocks import BasicBlock, Bottleneck

BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
LAYERS = ("layer1", "layer2", "layer3", "layer4")


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """Every residual block, in network order."""
    return [block for name in LAYERS if name in model for block in model[name]]


def frozen_prefixes(k: int) -> tuple[str, ...]:
    return (("conv1", "bn1") if k >= 0 else ()) + tuple(f"layer{i}" for i in range(1, k + 1))


def is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# -- in_chans ------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 4, 7])
def test_in_chans_sets_stem_conv_input_channels(in_chans):
    model = create_backbone("resnet18", in_chans=in_chans).eval()
    assert model.conv1.weight.shape == (64, in_chans, 7, 7)
    out = model(torch.randn(2, in_chans, 64, 64))
    assert [t.shape for t in out] == [
        (2, 64, 16, 16),
        (2, 128, 8, 8),
        (2, 256, 4, 4),
        (2, 512, 2, 2),
    ]


@pytest.mark.parametrize("in_chans", [1, 4, 7])
def test_in_chans_sets_deep_stem_first_conv_input_channels(in_chans):
    model = create_backbone("resnet50d", in_chans=in_chans, out_indices=(0, 1)).eval()
    assert model.conv1[0].weight.shape == (32, in_chans, 3, 3)
    assert model.conv1[3].weight.shape == (32, 32, 3, 3)  # only the first conv changes
    out = model(torch.randn(1, in_chans, 32, 32))
    assert [t.shape for t in out] == [(1, 64, 16, 16), (1, 256, 8, 8)]


def test_input_with_wrong_channel_count_is_rejected_naming_in_chans():
    model = create_backbone("resnet18", in_chans=4).eval()
    with pytest.raises(
        ValueError, match=re.escape("expects (N, 4, H, W) (in_chans=4)")
    ):  # before: torch's RuntimeError from inside the stem conv
        model(torch.randn(1, 3, 32, 32))


# -- frozen_stages -------------------------------------------------------------------


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 4])
def test_frozen_stages_sets_requires_grad_exactly_on_stem_and_first_k_layers(k):
    model = create_backbone("resnet18", frozen_stages=k)
    frozen = frozen_prefixes(k)
    for name, param in model.named_parameters():
        assert param.requires_grad is not is_under(name, frozen), name
    n_frozen = sum(not p.requires_grad for p in model.parameters())
    # conv1 + bn1 (3 tensors), then 12 tensors per basic stage without a projection,
    # 15 with one (layer2..layer4 start with a conv + norm shortcut).
    expected = {-1: 0, 0: 3, 1: 15, 2: 30, 3: 45, 4: 60}[k]
    assert n_frozen == expected


def test_frozen_stages_freeze_every_stem_conv_of_a_deep_stem():
    model = create_backbone("resnet50d", frozen_stages=0, out_indices=(0, 1))
    assert all(not p.requires_grad for p in model.conv1.parameters())
    assert len(list(model.conv1.parameters())) == 7  # three convs, two norms with 2 each
    assert all(p.requires_grad for p in model.layer1.parameters())


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 4])
def test_frozen_stages_stay_in_eval_mode_after_train(k):
    model = create_backbone("resnet18", frozen_stages=k)
    model.eval()
    model.train()
    frozen = frozen_prefixes(k)
    assert model.training is True
    for name, module in model.named_modules():
        if name:
            assert module.training is not is_under(name, frozen), name
    n_frozen_bn = sum(isinstance(m, nn.BatchNorm2d) and not m.training for m in model.modules())
    assert n_frozen_bn == {-1: 0, 0: 1, 1: 5, 2: 10, 3: 15, 4: 20}[k]


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 4])
def test_frozen_stages_survive_a_training_step(k):
    torch.manual_seed(0)
    model = create_backbone("resnet18", frozen_stages=k).train()
    # A trainable scale keeps backward possible even when the whole trunk is frozen.
    scale = nn.Parameter(torch.ones(()))
    trainable = [p for p in model.parameters() if p.requires_grad] + [scale]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    before = {n: t.clone() for n, t in model.state_dict().items()}

    out = model(torch.randn(2, 3, 32, 32))
    loss = scale * sum(t.square().mean() for t in out)
    loss.backward()
    optimizer.step()

    frozen = frozen_prefixes(k)
    after = model.state_dict()
    for name, param in model.named_parameters():
        if is_under(name, frozen):
            assert param.grad is None, name
            assert torch.equal(after[name], before[name]), name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            assert not torch.equal(after[name], before[name]), name
    for name, _ in model.named_buffers():
        if is_under(name, frozen):
            assert torch.equal(after[name], before[name]), name
        elif name.endswith("num_batches_tracked"):
            assert int(after[name]) == int(before[name]) + 1, name
        else:  # running_mean / running_var of a trainable BatchNorm move
            assert not torch.equal(after[name], before[name]), name


def test_fully_frozen_trunk_output_does_not_require_grad():
    model = create_backbone("resnet18", frozen_stages=4).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert not any(t.requires_grad for t in out)


def test_frozen_stages_only_counts_built_stages():
    model = create_backbone("resnet18", out_indices=(1, 2), frozen_stages=2)
    assert "layer3" not in model and "layer4" not in model
    assert all(not p.requires_grad for p in model.parameters())


# -- norm_eval -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "norm_layer", "n_norms"),
    [
        ("resnet50", "batchnorm", 53),  # stem + 16 blocks x 3 + 4 projections
        ("resnet50", "syncbatchnorm", 53),
        ("resnet50d", "batchnorm", 55),  # + the two norms inside the deep stem
    ],
)
def test_norm_eval_keeps_every_batchnorm_in_eval_mode_after_train(variant, norm_layer, n_norms):
    model = create_backbone(variant, norm_eval=True, norm_layer=norm_layer).eval().train()
    bns = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    assert len(bns) == n_norms
    assert all(not m.training for m in bns)
    others = [m for m in model.modules() if not isinstance(m, BATCH_NORMS)]
    assert others and all(m.training for m in others)
    model.eval()
    assert not any(m.training for m in model.modules())


def test_norm_eval_freezes_running_stats_but_not_gradients():
    torch.manual_seed(0)
    model = randomize_norm_stats(create_backbone("resnet18", norm_eval=True)).train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    out = model(torch.randn(2, 3, 32, 32))
    for name, buf in model.named_buffers():
        assert torch.equal(buf, buffers[name]), name
    sum(t.mean() for t in out).backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20
    for conv in convs:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.weight.grad is not None  # norm_eval fixes statistics, not the affine


def test_norm_eval_train_output_equals_eval_output():
    torch.manual_seed(0)
    model = randomize_norm_stats(create_backbone("resnet18", norm_eval=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    assert max_abs_diff(train_out, eval_out) == 0.0


def test_without_norm_eval_train_mode_moves_running_stats():
    model = create_backbone("resnet18").train()
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(model.bn1.running_mean, before)


# -- norm_layer ----------------------------------------------------------------------

NORM_NAME_RE = re.compile(r"(^|\.)bn\d$|downsample\.1$")


def norms_of(model: nn.Module) -> dict[str, nn.Module]:
    """The stem norm, every block's norms and every projection norm of a plain ResNet."""
    return {n: m for n, m in model.named_modules() if NORM_NAME_RE.search(n)}


@pytest.mark.parametrize(
    ("norm_layer", "cls"),
    [
        ("batchnorm", nn.BatchNorm2d),
        ("frozen_batchnorm", FrozenBatchNorm2d),
        ("syncbatchnorm", nn.SyncBatchNorm),
        ("groupnorm", nn.GroupNorm),
    ],
)
def test_norm_layer_name_selects_module_class_everywhere(norm_layer, cls):
    model = create_backbone("resnet50", norm_layer=norm_layer)
    norms = norms_of(model)
    assert len(norms) == 53
    for name, module in norms.items():
        assert type(module) is cls, name
    if cls is nn.GroupNorm:
        assert all(m.num_groups == 32 for m in norms.values())
        assert model.layer1[0].bn3.num_channels == 256
    # No stray norm of another kind anywhere.
    kinds = {type(m) for m in model.modules()} & {
        nn.BatchNorm2d,
        FrozenBatchNorm2d,
        nn.SyncBatchNorm,
        nn.GroupNorm,
    }
    assert kinds == {cls}


@pytest.mark.parametrize(
    "norm_layer", ["batchnorm", "frozen_batchnorm", "syncbatchnorm", "groupnorm"]
)
def test_norm_layer_eval_forward_on_cpu(norm_layer):
    model = create_backbone("resnet50", norm_layer=norm_layer).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert [t.shape for t in out] == [
        (2, 256, 8, 8),
        (2, 512, 4, 4),
        (2, 1024, 2, 2),
        (2, 2048, 1, 1),
    ]
    assert all(torch.isfinite(t).all() for t in out)


def test_syncbatchnorm_trains_on_cpu_like_batchnorm_without_a_process_group():
    # Without torch.distributed initialised, SyncBatchNorm falls back to plain
    # batch statistics, so in train mode it matches BatchNorm2d number for number.
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    torch.manual_seed(0)
    sync = randomize_norm_stats(create_backbone("resnet18", norm_layer="syncbatchnorm"))
    plain = create_backbone("resnet18", norm_layer="batchnorm")
    plain.load_state_dict(sync.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_abs_diff(sync.train()(x), plain.train()(x)) < 1e-5
    assert torch.allclose(sync.bn1.running_mean, plain.bn1.running_mean)
    assert int(sync.bn1.num_batches_tracked) == 1


def test_frozen_batchnorm_train_mode_uses_fixed_statistics():
    model = create_backbone("resnet18", norm_layer="frozen_batchnorm")
    assert all(not isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # Its statistics are buffers, not parameters: only convs remain trainable.
    assert {type(m) for m in model.modules() if any(True for _ in m.parameters(False))} == {
        nn.Conv2d
    }
    x = torch.randn(2, 3, 32, 32)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        assert max_abs_diff(model.train()(x), model.eval()(x)) == 0.0
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


def test_groupnorm_train_mode_forward_on_cpu():
    model = create_backbone("resnet18", norm_layer="groupnorm").train()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))  # batch 1 is fine: no batch statistics
    assert [t.shape[1] for t in out] == [64, 128, 256, 512]
    assert not list(model.buffers())


def test_norm_layer_callable_builds_every_norm():
    seen: list[int] = []

    def group_norm_8(channels: int) -> nn.Module:
        seen.append(channels)
        return nn.GroupNorm(8, channels)

    model = create_backbone("resnet18", norm_layer=group_norm_8).train()
    norms = norms_of(model)
    assert len(norms) == 1 + 8 * 2 + 3
    assert all(type(m) is nn.GroupNorm and m.num_groups == 8 for m in norms.values())
    assert sorted(seen) == sorted(m.num_channels for m in norms.values())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert [t.shape[1] for t in out] == [64, 128, 256, 512]


def test_norm_layer_lambda_reaches_the_deep_stem():
    model = create_backbone("resnet50d", norm_layer=lambda c: nn.GroupNorm(8, c), out_indices=(0,))
    assert type(model.conv1[1]) is nn.GroupNorm and model.conv1[1].num_channels == 32
    assert type(model.conv1[4]) is nn.GroupNorm
    assert type(model.bn1) is nn.GroupNorm and model.bn1.num_channels == 64


# -- drop_path_rate ------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "n_blocks"), [("resnet18", 8), ("resnet50", 16)])
def test_drop_path_rates_rise_linearly_from_zero_to_the_rate(variant, n_blocks):
    rate = 0.3
    blocks = blocks_of(create_backbone(variant, drop_path_rate=rate))
    assert len(blocks) == n_blocks
    assert isinstance(blocks[0].drop_path, nn.Identity)
    probs = [0.0] + [b.drop_path.drop_prob for b in blocks[1:]]
    assert all(isinstance(b.drop_path, DropPath) for b in blocks[1:])
    assert probs == pytest.approx([rate * i / (n_blocks - 1) for i in range(n_blocks)])
    assert probs[-1] == pytest.approx(rate)
    assert all(b > a for a, b in itertools.pairwise(probs))


def test_drop_path_rate_zero_uses_identity_everywhere():
    blocks = blocks_of(create_backbone("resnet18"))
    assert all(type(b.drop_path) is nn.Identity for b in blocks)


def test_truncated_network_keeps_the_full_schedule_rates():
    full = blocks_of(create_backbone("resnet50", drop_path_rate=0.3))
    part = blocks_of(create_backbone("resnet50", drop_path_rate=0.3, out_indices=(1, 2)))
    assert len(part) == 7
    rate = [getattr(b.drop_path, "drop_prob", 0.0) for b in full]
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in part] == rate[:7]


def test_drop_path_in_eval_mode_equals_model_without_drop_path():
    torch.manual_seed(0)
    dropped = randomize_norm_stats(create_backbone("resnet18", drop_path_rate=0.5)).eval()
    plain = create_backbone("resnet18").eval()
    plain.load_state_dict(dropped.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_abs_diff(dropped(x), plain(x)) == 0.0


def test_drop_path_in_train_mode_is_random():
    torch.manual_seed(0)
    dropped = create_backbone("resnet18", drop_path_rate=0.5).train()
    plain = create_backbone("resnet18").train()
    plain.load_state_dict(dropped.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        first, second = dropped(x), dropped(x)
        assert not torch.equal(first[-1], second[-1])
        # The control: with no drop path, two train-mode calls agree exactly.
        assert max_abs_diff(plain(x), plain(x)) == 0.0


# -- zero_init_last ------------------------------------------------------------------


def last_norm(block: nn.Module) -> nn.Module:
    return block.bn3 if isinstance(block, Bottleneck) else block.bn2


@pytest.mark.parametrize(("variant", "n_blocks"), [("resnet18", 8), ("resnet50", 16)])
def test_zero_init_last_zeros_every_last_norm_weight(variant, n_blocks):
    blocks = blocks_of(create_backbone(variant, zero_init_last=True))
    assert len(blocks) == n_blocks
    for block in blocks:
        assert torch.count_nonzero(last_norm(block).weight) == 0
        assert torch.all(block.bn1.weight == 1)  # the other norms keep gamma = 1


def test_without_zero_init_last_last_norm_weight_is_one():
    for block in blocks_of(create_backbone("resnet50")):
        assert torch.all(last_norm(block).weight == 1)


@pytest.mark.parametrize("norm_layer", ["batchnorm", "groupnorm", "frozen_batchnorm"])
@pytest.mark.parametrize("variant", ["resnet18", "resnet50"])
def test_zero_init_last_blocks_start_as_their_shortcut(variant, norm_layer):
    torch.manual_seed(0)
    model = create_backbone(variant, zero_init_last=True, norm_layer=norm_layer).eval()
    x = torch.randn(2, 64, 8, 8)
    checked = 0
    with torch.no_grad():
        for block in blocks_of(model):
            shortcut = x if block.downsample is None else block.downsample(x)
            y = block(x)
            assert torch.equal(y, torch.relu(shortcut))
            x = y + torch.rand_like(y)  # keep the inputs varied and non-negative
            checked += 1
    assert checked == len(blocks_of(model))


def test_zero_init_last_first_block_output_is_relu_of_projection():
    torch.manual_seed(0)
    model = create_backbone("resnet50", zero_init_last=True).eval()
    block = model.layer1[0]
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        expected = torch.relu(block.downsample(x))
        assert expected.shape == (2, 256, 16, 16)
        assert torch.equal(block(x), expected)


def test_zero_init_last_frozen_batchnorm_zeros_its_weight_buffer():
    blocks = blocks_of(
        create_backbone("resnet18", zero_init_last=True, norm_layer="frozen_batchnorm")
    )
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)


# -- block ---------------------------------------------------------------------------


def test_block_basic_on_resnet50_spec():
    model = create_backbone("resnet50", block="basic").eval()
    blocks = blocks_of(model)
    assert len(blocks) == 3 + 4 + 6 + 3
    assert all(type(b) is BasicBlock for b in blocks)
    assert model.feature_info.channels() == [64, 128, 256, 512]
    out = model(torch.randn(1, 3, 64, 64))
    assert [t.shape for t in out] == [
        (1, 64, 16, 16),
        (1, 128, 8, 8),
        (1, 256, 4, 4),
        (1, 512, 2, 2),
    ]


def test_block_bottleneck_on_resnet18_spec():
    model = create_backbone("resnet18", block="bottleneck").eval()
    assert all(type(b) is Bottleneck for b in blocks_of(model))
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    out = model(torch.randn(1, 3, 64, 64))
    assert [t.shape[1] for t in out] == [256, 512, 1024, 2048]


@pytest.mark.parametrize(
    ("blocks", "channels"),
    [
        (("bottleneck", "bottleneck", "basic", "basic"), [256, 512, 256, 512]),
        (("basic", "bottleneck", "basic", "bottleneck"), [64, 512, 256, 2048]),
        (["basic", "basic", "basic", "bottleneck"], [64, 128, 256, 2048]),
    ],
)
def test_block_per_stage_follows_each_stage_expansion(blocks, channels):
    model = create_backbone("resnet50", block=blocks, out_indices=(0, 1, 2, 3, 4)).eval()
    expected_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}
    for stage, name in zip(LAYERS, blocks, strict=True):
        assert all(type(b) is expected_cls[name] for b in model[stage]), stage
    assert model.feature_info.channels() == [64, *channels]
    out = model(torch.randn(1, 3, 64, 48))
    assert [tuple(t.shape) for t in out] == [
        (1, c, math.ceil(64 / r), math.ceil(48 / r))
        for c, r in zip(model.feature_info.channels(), model.feature_info.reduction(), strict=True)
    ]


def test_registered_block_receives_block_kwargs():
    name = f"test_recording_block_{uuid.uuid4().hex}"

    @register_block(name)
    class RecordingBlock(BasicBlock):
        calls: ClassVar[list[dict]] = []

        def __init__(self, inplanes, planes, *, tag, scale=1.0, **kwargs):
            super().__init__(inplanes, planes, **kwargs)
            type(self).calls.append({"tag": tag, "scale": scale, **kwargs})
            self.tag = tag

    model = create_backbone("resnet18", block=name, block_kwargs={"tag": "seen", "scale": 2.0})
    calls = RecordingBlock.calls
    assert len(calls) == 8
    assert all(c["tag"] == "seen" and c["scale"] == 2.0 for c in calls)
    # The trunk's own arguments arrive as keywords too.
    assert [c["stride"] for c in calls] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert all(c["groups"] == 1 and c["base_width"] == 64 for c in calls)
    assert [c["downsample"] is not None for c in calls] == [
        False,
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert all(b.tag == "seen" for b in blocks_of(model))
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert [t.shape[1] for t in out] == [64, 128, 256, 512]


def test_block_kwargs_dict_is_not_mutated():
    name = f"test_mutating_block_{uuid.uuid4().hex}"

    @register_block(name)
    class PoppingBlock(BasicBlock):
        def __init__(self, inplanes, planes, *, extra, **kwargs):
            super().__init__(inplanes, planes, **kwargs)

    kwargs = {"extra": 1}
    create_backbone("resnet18", block=name, block_kwargs=kwargs, out_indices=(1,))
    assert kwargs == {"extra": 1}


def test_registered_block_with_other_expansion_sets_feature_channels():
    name = f"test_wide_block_{uuid.uuid4().hex}"

    @register_block(name)
    class DoubleBlock(nn.Module):
        expansion = 2

        def __init__(self, inplanes, planes, *, stride, downsample, norm_layer, **_):
            super().__init__()
            self.conv = nn.Conv2d(inplanes, planes * 2, 3, stride, 1, bias=False)
            self.bn = norm_layer(planes * 2)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    model = create_backbone("resnet18", block=name).eval()
    assert model.feature_info.channels() == [128, 256, 512, 1024]
    out = model(torch.randn(1, 3, 64, 64))
    assert [t.shape for t in out] == [
        (1, 128, 16, 16),
        (1, 256, 8, 8),
        (1, 512, 4, 4),
        (1, 1024, 2, 2),
    ]


# -- return_dict ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out_indices", "keys"),
    [
        ((1, 2, 3, 4), ["layer1", "layer2", "layer3", "layer4"]),
        ((0, 2, 4), ["act1", "layer2", "layer4"]),
        ((-2, -1), ["layer3", "layer4"]),
        ((0,), ["act1"]),
    ],
)
def test_return_dict_keys_are_module_names_in_network_order(out_indices, keys):
    torch.manual_seed(0)
    as_dict = randomize_norm_stats(
        create_backbone("resnet18", out_indices=out_indices, return_dict=True)
    ).eval()
    as_list = create_backbone("resnet18", out_indices=out_indices).eval()
    as_list.load_state_dict(as_dict.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, expected = as_dict(x), as_list(x)
    assert isinstance(out, dict)
    assert list(out) == keys
    assert list(out) == as_dict.feature_info.module_name()
    assert max_abs_diff(list(out.values()), expected) == 0.0


def test_default_output_is_a_list():
    out = create_backbone("resnet18").eval()(torch.randn(1, 3, 32, 32))
    assert isinstance(out, list) and len(out) == 4


# -- output_stride -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output_stride", "reductions"),
    [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]), (8, [2, 4, 8, 8, 8])],
)
@pytest.mark.parametrize("variant", ["resnet18", "resnet50d"])
def test_output_stride_sets_reductions_and_spatial_sizes(variant, output_stride, reductions):
    model = create_backbone(
        variant, output_stride=output_stride, out_indices=(0, 1, 2, 3, 4)
    ).eval()
    assert model.feature_info.reduction() == reductions
    h, w = 61, 38
    out = model(torch.randn(1, 3, h, w))
    assert [tuple(t.shape[2:]) for t in out] == [
        (math.ceil(h / r), math.ceil(w / r)) for r in reductions
    ]
    assert [t.shape[1] for t in out] == model.feature_info.channels()


def test_output_stride_dilates_instead_of_striding():
    model = create_backbone("resnet50", output_stride=8)
    assert model.layer3[0].conv2.stride == (1, 1)
    assert model.layer3[0].conv2.dilation == (1, 1)  # the first block keeps the old dilation
    assert model.layer3[1].conv2.dilation == (2, 2)
    assert model.layer4[0].conv2.dilation == (2, 2)
    assert model.layer4[1].conv2.dilation == (4, 4)
    assert model.layer4[0].downsample[0].stride == (1, 1)


# -- block_kwargs per stage and block-owned init -------------------------------------


class _RecordingBlock(BasicBlock):
    """A basic block that records its extra kwarg and has an init of its own."""

    def __init__(self, *args, tag: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag
        self.marker = nn.Conv2d(1, 1, 1)

    def init_weights(self) -> None:
        nn.init.constant_(self.marker.weight, 7.0)


def _register_recording_block() -> str:
    name = f"recording_{uuid.uuid4().hex[:8]}"
    register_block(name)(_RecordingBlock)
    return name


def test_block_kwargs_can_be_given_per_stage():
    name = _register_recording_block()
    kwargs = [{"tag": "a"}, {"tag": "b"}, {}, {"tag": "d"}]
    bb = create_backbone("resnet18", block=name, block_kwargs=kwargs)
    assert [bb[f"layer{i}"][0].tag for i in range(1, 5)] == ["a", "b", "none", "d"]
    assert [bb[f"layer{i}"][1].tag for i in range(1, 5)] == ["a", "b", "none", "d"]


def test_per_stage_block_kwargs_reach_only_the_stages_that_accept_them():
    name = _register_recording_block()
    bb = create_backbone(
        "resnet18", block=("basic", "basic", name, name), block_kwargs=[{}, {}, {"tag": "x"}, {}]
    )
    assert bb.layer3[0].tag == "x"
    assert not hasattr(bb.layer2[0], "tag")


def test_a_blocks_own_init_weights_runs_after_the_trunks_init():
    name = _register_recording_block()
    bb = create_backbone("resnet18", block=name)
    markers = [m.marker.weight for m in bb.modules() if isinstance(m, _RecordingBlock)]
    assert len(markers) == 8
    assert all(torch.equal(w, torch.full_like(w, 7.0)) for w in markers)
