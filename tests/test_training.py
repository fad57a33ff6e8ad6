"""Training helpers: stages, optimizer groups with layer-wise decay, norm conversion, and
what trains (``backbones.training``), and the frozen-step assertion of ``backbones.testing``."""

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct
from timm.optim import param_groups_layer_decay
from torch import nn
from torchvision.models import detection
from torchvision.ops.misc import FrozenBatchNorm2d

from backbones import (
    convert_norm,
    create_backbone,
    create_model,
    param_groups,
    trainability,
)
from backbones.errors import UnknownNameError, UnsupportedOptionError
from backbones.testing import assert_frozen_unchanged
from backbones.training import model_stages

BACKBONES = {
    "resnet18": ("resnet18", {}),
    "timm-convnext": ("timm/convnext_atto", {}),
    "timm-vit-pyramid": ("timm/vit_tiny_patch16_224", {"pyramid": "simple"}),
    "tv-mobilenet": ("tv/mobilenet_v3_large", {}),
}


def _image(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    out = model(_image())
    maps = out if isinstance(out, list | tuple) else [out]
    loss = sum(m.float().square().mean() for m in maps)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# -- stages --------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_parameter_is_in_exactly_one_stage(backbone):
    name, options = BACKBONES[backbone]
    model = create_model(name, "classification", backbone_kwargs=options, num_classes=3)
    stages = model_stages(model)
    listed = [p for _, params in stages for p in params]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    assert len(listed) == len(set(listed))
    assert stages[0][0] == "stem" and stages[-1][0] == "head"


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_frozen_stages_k_freezes_exactly_the_first_k_plus_1_stages(backbone):
    name, options = BACKBONES[backbone]
    model = create_backbone(name, frozen_stages=1, **options)
    stages = model.stage_params()
    params = dict(model.named_parameters())
    for i, (stage, names) in enumerate(stages):
        frozen = {not params[n].requires_grad for n in names}
        assert frozen == {i <= 1}, stage


def test_resnet_stages_are_the_stem_and_its_layers():
    stages = create_backbone("resnet18", out_indices=(1, 2)).stage_params()
    assert [s for s, _ in stages] == ["stem", "layer1", "layer2"]
    assert stages[0][1] == ["conv1.weight", "bn1.weight", "bn1.bias"]


def test_a_plain_vits_stages_are_its_blocks_after_a_stem_of_embeddings():
    stages = create_backbone("timm/vit_tiny_patch16_224", pyramid="simple").stage_params()
    assert [s for s, _ in stages] == ["stem", *[f"blocks.{i}" for i in range(12)], "neck"]
    assert {p.rpartition(".")[2] for p in stages[0][1]} == {
        "cls_token",
        "pos_embed",
        "weight",
        "bias",
    }


# -- parameter groups ----------------------------------------------------------------------
def test_param_groups_leave_frozen_parameters_out_and_norms_and_biases_without_decay():
    model = create_model("resnet18", "classification", backbone_kwargs={"frozen_stages": 1})
    groups = param_groups(model, lr=0.1, weight_decay=0.05)
    named = {id(p): n for n, p in model.named_parameters()}
    grouped = [named[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    for group in groups:
        for p in group["params"]:
            assert group["weight_decay"] == (0.05 if p.ndim > 1 else 0.0), named[id(p)]
    assert {g["stage"] for g in groups} == {"layer2", "layer3", "layer4", "head"}
    assert all(g["lr"] == 0.1 and g["lr_scale"] == 1.0 for g in groups)


def test_layer_decay_scales_the_rate_per_stage_from_the_head_down():
    model = create_model("resnet18", "classification")
    groups = param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.5)
    scales = {g["stage"]: g["lr"] for g in groups}
    assert scales == {
        "stem": 0.5**5,
        "layer1": 0.5**4,
        "layer2": 0.5**3,
        "layer3": 0.5**2,
        "layer4": 0.5,
        "head": 1.0,
    }


def test_layer_decay_of_a_vit_is_timms_param_groups_layer_decay():
    ours = create_backbone("timm/vit_tiny_patch16_224", out_indices=(-1,))
    reference = timm.create_model("vit_tiny_patch16_224")
    theirs = param_groups_layer_decay(  # as timm's create_optimizer_v2 calls it
        reference,
        weight_decay=0.05,
        layer_decay=0.75,
        no_weight_decay_list=reference.no_weight_decay(),
    )
    names = {id(p): n for n, p in reference.named_parameters()}
    expected = {
        names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in theirs for p in g["params"]
    }
    named = {id(p): n.removeprefix("body.model.") for n, p in ours.named_parameters()}
    got = {
        named[id(p)]: (g["lr_scale"], g["weight_decay"])
        for g in param_groups(ours, lr=1.0, weight_decay=0.05, layer_decay=0.75)
        for p in g["params"]
    }
    assert len(got) == 4 + 12 * 12  # the embeddings and 12 blocks (timm's norm, head: not ours)
    for name, (scale, decay) in got.items():
        assert scale == pytest.approx(expected[name][0], rel=1e-6), name
        assert decay == expected[name][1], name


def test_no_decay_patterns_and_no_weight_decay_names_get_none():
    vit = create_backbone("timm/vit_tiny_patch16_224", out_indices=(-1,))
    groups = param_groups(vit, lr=1.0, weight_decay=0.05, no_decay=["*.qkv.weight"])
    named = {id(p): n for n, p in vit.named_parameters()}
    no_decay = {named[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {"body.model.pos_embed", "body.model.cls_token"} <= no_decay  # timm's no_weight_decay
    assert "body.model.blocks.0.attn.qkv.weight" in no_decay
    assert "body.model.blocks.0.attn.proj.weight" not in no_decay


def test_param_groups_reach_into_a_torchvision_detector_built_on_a_backbone():
    torch.manual_seed(0)
    fpn = create_model("resnet18", "fpn", backbone_kwargs={"frozen_stages": 1})
    detector = detection.FasterRCNN(fpn, num_classes=3, min_size=64, max_size=64)
    groups = param_groups(detector, lr=1.0, weight_decay=0.0, layer_decay=0.5)
    stages = {g["stage"]: g["lr"] for g in groups}
    assert stages == {"layer2": 0.125, "layer3": 0.25, "layer4": 0.5, "head": 1.0}
    head = {id(p) for g in groups if g["stage"] == "head" for p in g["params"]}
    assert id(detector.roi_heads.box_predictor.cls_score.weight) in head
    assert {id(p) for p in fpn.head.parameters()} <= head  # the FPN is a head too


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0, "weight_decay": 0.0}, r"lr must be a finite number > 0, got 0.0"),
        ({"lr": 1.0, "weight_decay": -1}, r"weight_decay must be a finite number >= 0, got -1"),
        (
            {"lr": 1.0, "weight_decay": 0.0, "layer_decay": 1.5},
            r"layer_decay must be a finite number \(0, 1\], got 1.5",
        ),
        ({"lr": "1e-3", "weight_decay": 0.0}, r"lr must be a finite number > 0, got '1e-3'"),
        (
            {"lr": 1.0, "weight_decay": 0.0, "no_decay": [3]},
            r"no_decay must be parameter-name patterns \(non-empty strings\), got \[3\]",
        ),
    ],
)
def test_param_groups_refuse_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        param_groups(create_backbone("resnet18"), **kwargs)


def test_an_optimizer_on_the_groups_leaves_frozen_weights_bit_identical():
    # weight decay on parameters that have no gradient still moves them (mmdet #10881)
    # unless they are left out of the optimizer, as here
    torch.manual_seed(0)
    model = create_backbone("resnet18", frozen_stages=1).train()
    optimizer = torch.optim.AdamW(param_groups(model, lr=0.1, weight_decay=0.5))
    assert_frozen_unchanged(model, lambda: _step(model, optimizer))


# -- the frozen-step assertion -------------------------------------------------------------
def test_the_frozen_step_assertion_names_a_statistic_that_moved():
    torch.manual_seed(0)
    model = create_backbone("resnet18", frozen_stages=1).train()
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=0.0))

    def step_in_train_mode() -> None:
        model.layer1.train()  # the frozen stage's BatchNorms now update their statistics
        _step(model, optimizer)

    with pytest.raises(
        AssertionError,
        match=r"frozen tensors changed in a training step: .*layer1\.0\.bn1\.running_mean",
    ):
        assert_frozen_unchanged(model, step_in_train_mode)


def test_the_frozen_step_assertion_refuses_a_model_with_nothing_frozen():
    model = create_backbone("resnet18").train()
    with pytest.raises(AssertionError, match="nothing is frozen"):
        assert_frozen_unchanged(model, lambda: None)


# -- norm conversion -----------------------------------------------------------------------
def _norm_types(model: nn.Module) -> set[type]:
    kinds = (nn.modules.batchnorm._NormBase, FrozenBatchNorm2d, FrozenBatchNormAct2d)
    return {type(m) for m in model.modules() if isinstance(m, kinds)}


def _eval_outputs(model: nn.Module) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return list(model(_image()))


@pytest.mark.parametrize("kind", ["syncbatchnorm", "frozen_batchnorm"])
def test_convert_norm_keeps_outputs_weights_and_what_is_frozen(kind):
    torch.manual_seed(0)
    model = create_backbone("resnet18", frozen_stages=1)
    before = _eval_outputs(model)
    weights = {n: p for n, p in model.named_parameters() if "bn" not in n}
    converted = convert_norm(model.train(), kind)
    assert converted is model
    expected = {"syncbatchnorm": nn.SyncBatchNorm, "frozen_batchnorm": FrozenBatchNorm2d}[kind]
    assert _norm_types(model) == {expected}
    for name, param in model.named_parameters():
        if name in weights:
            assert param is weights[name]  # the same tensors: an optimizer still holds them
    report = trainability(model)
    assert (report["stem"].trainable_tensors, report["layer1"].trainable_tensors) == (0, 0)
    assert report["layer1"].norms_train == 0 and report["layer2"].norms_eval == 0
    model.train()  # the frozen stages' norms stay in eval across .train()
    assert (
        trainability(model)["layer1"].norms_eval,
        trainability(model)["layer1"].norms_train,
    ) == (4, 0)
    for a, b in zip(before, _eval_outputs(model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_convert_norm_back_from_frozen_trains_only_outside_the_frozen_stages():
    model = create_backbone("resnet18", frozen_stages=1, norm_layer="frozen_batchnorm")
    convert_norm(model, "batchnorm")
    assert _norm_types(model) == {nn.BatchNorm2d}
    params = dict(model.named_parameters())
    assert not params["bn1.weight"].requires_grad and not params["layer1.0.bn1.bias"].requires_grad
    assert params["layer2.0.bn1.weight"].requires_grad
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=0.0))
    assert_frozen_unchanged(model.train(), lambda: _step(model, optimizer))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("syncbatchnorm", SyncBatchNormAct),
        ("frozen_batchnorm", FrozenBatchNormAct2d),
    ],
)
def test_convert_norm_turns_timms_norm_act_layers_into_their_timm_counterparts(kind, expected):
    torch.manual_seed(0)
    model = create_backbone("timm/efficientnet_b0", frozen_stages=1)
    assert BatchNormAct2d in _norm_types(model)
    before = _eval_outputs(model)
    convert_norm(model, kind)
    assert _norm_types(model) == {expected}
    for a, b in zip(before, _eval_outputs(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    back = convert_norm(model, "batchnorm")
    assert _norm_types(back) == {BatchNormAct2d}
    assert trainability(model)["stem"].trainable_tensors == 0


def test_convert_norm_refuses_an_unknown_kind_naming_the_accepted_ones():
    with pytest.raises(
        UnknownNameError, match=r"unknown norm kind 'syncbn'; did you mean 'syncbatchnorm'\?"
    ):
        convert_norm(create_backbone("resnet18"), "syncbn")
    with pytest.raises(
        ValueError, match="process_group is for kind='syncbatchnorm', not 'batchnorm'"
    ):
        convert_norm(create_backbone("resnet18"), "batchnorm", process_group=object())


# -- trainability --------------------------------------------------------------------------
def test_trainability_counts_tensors_parameters_and_norm_modes_per_stage():
    model = create_model("resnet18", "classification", backbone_kwargs={"frozen_stages": 1})
    report = trainability(model.train())
    assert [r.stage for r in report.stages] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "head",
    ]
    stem = report["stem"]
    assert (stem.trainable_tensors, stem.frozen_tensors, stem.frozen_params) == (0, 3, 9536)
    assert (stem.norms_train, stem.norms_eval) == (0, 1)
    assert (report["layer2"].trainable_tensors, report["layer2"].norms_train) == (15, 5)
    assert report["head"].trainable_params == 512 * 1000 + 1000
    lines = str(report).splitlines()
    assert lines[0].split() == [
        "stage",
        "trainable",
        "frozen",
        "trainable",
        "params",
        "frozen",
        "params",
        "norms",
    ]
    assert lines[1].split() == ["stem", "0", "3", "0", "9,536", "0", "train", "/", "1", "eval"]
    with pytest.raises(KeyError, match="no stage 'layer9'; stages: stem, layer1"):
        report["layer9"]


# -- gradient checkpointing ----------------------------------------------------------------
CHECKPOINTED = {
    "resnet18-frozen-droppath": ("resnet18", {"frozen_stages": 1, "drop_path_rate": 0.2}, True),
    "resnet18-layer1-2": ("resnet18", {}, (1, 2)),
    "timm-convnext-frozen": ("timm/convnext_atto", {"frozen_stages": 1}, True),
    "timm-vit-droppath": (
        "timm/vit_tiny_patch16_224",
        {"frozen_stages": 2, "drop_path_rate": 0.1},
        True,
    ),
    "timm-efficientnet": ("timm/efficientnet_b0", {}, True),
}


def _gradients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # drop path draws the same in both runs
    loss = sum(m.square().mean() for m in model(x))
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CHECKPOINTED))
def test_gradient_checkpointing_gives_the_same_gradients(case):
    name, options, checkpointing = CHECKPOINTED[case]
    torch.manual_seed(0)
    plain = create_backbone(name, **options).train()
    recomputed = create_backbone(name, grad_checkpointing=checkpointing, **options).train()
    recomputed.load_state_dict(plain.state_dict())
    x = _image()
    expected, got = _gradients(plain, x), _gradients(recomputed, x)
    assert sorted(got) == sorted(expected)
    assert len(got) < len(list(plain.parameters())) or not options.get("frozen_stages")
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-6, atol=1e-7, msg=key)


def _forward_calls(model: nn.Module, module: nn.Module) -> int:
    # a pre-hook: the recomputation stops once it has what the backward pass needs, so
    # the block's forward may not finish a second time
    calls = []
    handle = module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        _gradients(model, _image())
    finally:
        handle.remove()
    return len(calls)


def test_set_grad_checkpointing_recomputes_the_blocks_in_the_backward_pass():
    model = create_backbone("resnet18").train()
    block = model.layer2[0]
    assert _forward_calls(model, block) == 1
    model.set_grad_checkpointing(True)  # timm's spelling, after creation
    assert _forward_calls(model, block) == 2  # forward, and again in the backward pass
    model.set_grad_checkpointing((1,))
    assert _forward_calls(model, block) == 1 and _forward_calls(model, model.layer1[0]) == 2
    model.eval()
    with torch.no_grad():
        model(_image())  # no recomputation without gradients or in eval
    model.set_grad_checkpointing(False)
    assert _forward_calls(model.train(), model.layer1[0]) == 1


def test_a_zoo_backbone_turns_timms_checkpointing_on_and_off():
    model = create_backbone("timm/convnext_atto").train()
    block = model.body.stages_1.blocks[0]
    assert _forward_calls(model, block) == 1
    model.set_grad_checkpointing(True)
    assert _forward_calls(model, block) == 2
    model.set_grad_checkpointing(False)
    assert _forward_calls(model, block) == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_checkpointed_resnet_still_scripts():
    model = create_backbone("resnet18", grad_checkpointing=True).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for a, b in zip(model(_image()), scripted(_image()), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("resnet18", {"grad_checkpointing": (5,)}, ValueError, r"stage numbers 1..4"),
        ("resnet18", {"grad_checkpointing": "yes"}, ValueError, r"grad_checkpointing='yes'"),
        (
            "resnet18",
            {"grad_checkpointing": (3,), "out_indices": (1, 2)},
            ValueError,
            r"grad_checkpointing=\(3,\) names stages beyond the deepest one built .* 1..2",
        ),
        (
            "timm/convnext_atto",
            {"grad_checkpointing": (1, 2)},
            ValueError,
            r"a timm/ backbone takes True or False",
        ),
        (
            "tv/resnet18",
            {"grad_checkpointing": True},
            UnsupportedOptionError,
            r"grad_checkpointing=True is not supported by the 'tv/resnet' family; families "
            r"that have it: resnet",
        ),
    ],
)
def test_grad_checkpointing_refuses_what_it_cannot_do(name, options, error, message):
    with pytest.raises(error, match=message):
        create_backbone(name, **options)


# -- mixed precision and layout ------------------------------------------------------------
HEAD_CASES = {
    # head: (backbone options, head options)
    "classification": ({}, {"num_classes": 4}),
    "fpn": ({}, {"out_channels": 32}),
    "fcn": ({"out_indices": (4,)}, {"num_classes": 4}),
    "deeplabv3": ({"out_indices": (4,), "output_stride": 8}, {"num_classes": 4}),
    "semantic_fpn": ({}, {"num_classes": 4}),
    "upernet": ({}, {"num_classes": 4}),
}


def _bf16_channels_last_step(model: nn.Module) -> torch.Tensor:
    model = model.to(memory_format=torch.channels_last).train()
    x = _image().contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.01, weight_decay=0.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    maps = list(out.values()) if isinstance(out, dict) else out if isinstance(out, list) else [out]
    assert all(m.dtype == torch.bfloat16 for m in maps)
    loss = sum(m.float().square().mean() for m in maps)
    optimizer.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("head", list(HEAD_CASES))
def test_every_head_trains_a_step_in_bf16_autocast_and_channels_last(head):
    torch.manual_seed(0)
    backbone_options, head_options = HEAD_CASES[head]
    model = create_model("resnet18", head, backbone_kwargs=backbone_options, **head_options)
    assert torch.isfinite(_bf16_channels_last_step(model))


@pytest.mark.parametrize(("backbone", "block"), [("resnet18", "basic"), ("resnet50", "bottleneck")])
def test_every_block_trains_a_step_in_bf16_autocast_and_channels_last(backbone, block):
    torch.manual_seed(0)
    model = create_backbone(backbone, block=block, out_indices=(1, 2), frozen_stages=0)
    assert torch.isfinite(_bf16_channels_last_step(model))
