"""Backbones, composed models and adapters compile with TorchScript, trace with torch.fx and
export with torch.export, and compute what eager mode computes."""

import pytest
import torch
from helpers import max_abs_diff, randomize_norm_stats
from torch.export import Dim
from torchvision.models.detection import FasterRCNN, RetinaNet

from backbones import create_backbone, create_model
from backbones.adapters import as_detectron2, as_mmdet, as_transformers

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


# -- composed models and adapters: TorchScript, torch.fx and torch.export ------------------

MODELS = {
    "classification": ("resnet18", {}, "classification", {"num_classes": 3}),
    "classification_dict": ("resnet18", {"return_dict": True}, "classification", {}),
    "fpn": ("resnet18", {}, "fpn", {}),
    "fpn_p6p7": ("resnet18", {"out_indices": (2, 3, 4)}, "fpn", {"extra_blocks": "p6p7"}),
    "fcn": ("resnet18", {"output_stride": 16}, "fcn", {"num_classes": 3}),
    "fcn_aux": ("resnet18", {"out_indices": (3, 4)}, "fcn", {"num_classes": 3, "aux": True}),
    "deeplabv3": ("resnet18", {"output_stride": 8}, "deeplabv3", {"num_classes": 3}),
    "deeplabv3_aux": (
        "resnet18",
        {"out_indices": (3, 4), "return_dict": True},
        "deeplabv3",
        {"num_classes": 3, "aux": True, "atrous_rates": (2, 4)},
    ),
    "semantic_fpn": ("resnet18", {}, "semantic_fpn", {"num_classes": 3}),
    "upernet": ("resnet18", {}, "upernet", {"num_classes": 3, "channels": 32}),
    "upernet_aux": ("resnet18", {}, "upernet", {"num_classes": 3, "channels": 32, "aux": True}),
}
ADAPTERS = {"detectron2": as_detectron2, "mmdet": as_mmdet, "transformers": as_transformers}
# torchvision's FeaturePyramidNetwork (its own BackboneWithFPN too) specializes the input
# size under torch.export: the fpn models export at one size.
STATIC_EXPORT = {"fpn", "fpn_p6p7"}


def build_model(name: str) -> torch.nn.Module:
    variant, backbone_kwargs, head, head_kwargs = MODELS[name]
    torch.manual_seed(0)
    model = create_model(variant, head, backbone_kwargs=backbone_kwargs, **head_kwargs)
    return randomize_norm_stats(model).eval()


def build_adapter(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = randomize_norm_stats(create_backbone("resnet18", out_indices=(0, 2, 3, 4)))
    return ADAPTERS[name](backbone).eval()


def flatten(out) -> list[torch.Tensor]:
    """The tensors of a model's output, in order (a tensor, dict, list, tuple, NamedTuple)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten(v)]
    return [t for v in out for t in flatten(v)]


def assert_same_output(got, expected) -> None:
    if isinstance(expected, dict):
        assert list(got) == list(expected)
    assert max_abs_diff(flatten(got), flatten(expected)) < TOL


SIZES = [(64, 64), (97, 65)]


@pytest.mark.parametrize("name", list(MODELS))
def test_composed_model_scripts_and_matches_eager(name: str):
    model = build_model(name)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for size in SIZES:
            x = torch.randn(1, 3, *size)
            got, expected = scripted(x), model(x)
            assert type(got) is type(expected) or isinstance(expected, dict)
            assert_same_output(got, expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_composed_model_fx_traces_and_matches_eager(name: str):
    model = build_model(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        for size in SIZES:
            x = torch.randn(1, 3, *size)
            assert_same_output(traced(x), model(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_composed_model_exports_and_matches_eager(name: str):
    model = build_model(name)
    x = torch.randn(1, 3, 64, 64)
    if name in STATIC_EXPORT:
        exported = torch.export.export(model, (x,)).module()
        sizes = [(64, 64)]
    else:
        dims = {2: Dim("h", min=64, max=512), 3: Dim("w", min=64, max=512)}
        exported = torch.export.export(model, (x,), dynamic_shapes={"x": dims}).module()
        sizes = [(64, 64), (97, 80)]
    with torch.no_grad():
        for size in sizes:
            x = torch.randn(1, 3, *size)
            assert_same_output(exported(x), model(x))


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_scripts_traces_and_exports_and_matches_eager(name: str):
    adapter = build_adapter(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = adapter(x)
        scripted = torch.jit.script(adapter)(x)
        traced = torch.fx.symbolic_trace(adapter)(x)
    argument = "pixel_values" if name == "transformers" else "x"
    dims = {2: Dim("h", min=64, max=512), 3: Dim("w", min=64, max=512)}
    exported = torch.export.export(adapter, (x,), dynamic_shapes={argument: dims}).module()
    y = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        # TorchScript has no variable-length tuples: there the tuples are lists.
        assert_same_output(scripted, expected)
        for got in (traced, exported(x)):
            assert type(got) is type(expected)
            assert_same_output(got, expected)
        assert_same_output(exported(y), adapter(y))


def test_scripted_adapters_keep_their_contracts():
    backbone = create_backbone("resnet18", out_indices=(2, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert list(torch.jit.script(as_detectron2(backbone))(x)) == ["res3", "res5"]
        assert isinstance(torch.jit.script(as_mmdet(backbone))(x), list)
        maps = torch.jit.script(as_transformers(backbone))(x).feature_maps
        assert [m.shape[1] for m in maps] == [128, 512]


DETECTORS = {
    "faster_rcnn": lambda: FasterRCNN(
        create_model("resnet18", "fpn"), num_classes=3, box_score_thresh=0.0
    ),
    "retinanet": lambda: RetinaNet(
        create_model(
            "resnet18", "fpn", backbone_kwargs={"out_indices": (2, 3, 4)}, extra_blocks="p6p7"
        ),
        num_classes=3,
        score_thresh=0.0,
    ),
}


# torchvision's scripted detectors warn, at every call, that they return (losses, detections).
@pytest.mark.filterwarnings("ignore:.*always returns a \\(Losses, Detections\\) tuple:UserWarning")
@pytest.mark.parametrize("name", list(DETECTORS))
def test_torchvision_scripts_its_detector_on_our_fpn(name: str):
    torch.manual_seed(0)
    detector = randomize_norm_stats(DETECTORS[name]()).eval()
    detector.transform.min_size, detector.transform.max_size = (64,), 64
    scripted = torch.jit.script(detector)
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        _, got = scripted(images)  # scripted, torchvision's detectors return (losses, detections)
        expected = detector(images)
    assert len(got[0]["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[0][key], expected[0][key])
