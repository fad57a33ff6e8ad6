"""Backbones compile with TorchScript and torch.export and compute what eager mode computes."""

import pytest
import torch
from helpers import max_abs_diff, randomize_norm_stats

from backbones import create_backbone

TOL = 1e-5
VARIANTS = ["resnet18", "resnet50d"]
CONFIGS = {
    "list": {},
    "dict": {"return_dict": True},
    "stem_and_layer2": {"out_indices": (0, 2)},
    "output_stride_8": {"output_stride": 8},
}


def build(variant: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norm_stats(create_backbone(variant, **options)).eval()


def as_list(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(out)


def check_same(got, expected, model) -> None:
    assert type(got) is type(expected)
    if isinstance(expected, dict):
        assert list(got) == list(expected) == model.feature_info.module_name()
    assert len(as_list(got)) == len(model.feature_info)
    assert [t.shape[1] for t in as_list(got)] == model.feature_info.channels()
    assert max_abs_diff(as_list(got), as_list(expected)) < TOL


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_torchscript_matches_eager(variant, config):
    model = build(variant, CONFIGS[config])
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        check_same(scripted(x), model(x), model)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_export_matches_eager(variant, config):
    model = build(variant, CONFIGS[config])
    x = torch.randn(2, 3, 64, 48)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        check_same(exported.module()(x), model(x), model)


def test_torchscript_module_handles_other_input_sizes():
    model = build("resnet18", {"out_indices": (0, 1, 2, 3, 4)})
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for h, w in [(32, 32), (45, 77), (1, 1)]:
            x = torch.randn(1, 3, h, w)
            check_same(scripted(x), model(x), model)


def test_torchscript_keeps_frozen_and_norm_eval_models_scriptable():
    model = build("resnet18", {"frozen_stages": 2, "norm_eval": True, "drop_path_rate": 0.1})
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        check_same(scripted(x), model(x), model)


@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_save_and_load_round_trip(tmp_path):
    model = build("resnet18", {"return_dict": True})
    path = tmp_path / "resnet18.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        check_same(loaded(x), model(x), model)


def test_torch_export_graph_holds_no_training_ops():
    # Exported in eval mode, batch norms run on their stored statistics: no
    # running-stat updates end up in the graph.
    model = build("resnet18", {})
    exported = torch.export.export(model, (torch.randn(1, 3, 32, 32),))
    assert not exported.graph_signature.buffers_to_mutate
