"""``examples/train_ddp.py`` under ``torchrun --standalone --nproc_per_node=2`` on CPU
(gloo, on 127.0.0.1): ranks agree, frozen tensors stay put, resuming goes on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
TIMEOUT_S = 240


def _torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        str(SCRIPT),
        "--quiet",
        "--batch-size",
        "2",
        *args,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    _torchrun(
        "--steps", "4", "--frozen-stages", "1", "--grad-checkpointing", "--save-every", "2",
        "--checkpoint", str(folder / "ckpt.pt"), "--dump", str(folder / "first"),
    )  # fmt: skip
    return folder


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _parameters(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if not k.endswith(STATISTICS)]


def test_every_rank_ends_with_the_same_parameters(run: Path):
    rank0, rank1 = _state(run / "first" / "rank0.pt"), _state(run / "first" / "rank1.pt")
    assert list(rank0) == list(rank1)
    assert len(_parameters(rank0)) == 99  # every parameter of resnet18 + semantic_fpn
    for key in _parameters(rank0):
        assert torch.equal(rank0[key], rank1[key]), key
    # the trained BatchNorms' statistics are each rank's own batch's since the last
    # broadcast (DDP's broadcast_buffers); the frozen ones are the same everywhere
    for key in rank0:
        if key.startswith(("backbone.bn1.", "backbone.layer1.")):
            assert torch.equal(rank0[key], rank1[key]), key


def test_frozen_stages_are_unchanged_and_the_rest_trained(run: Path):
    initial, final = _state(run / "first" / "initial.pt"), _state(run / "first" / "rank0.pt")
    frozen = [
        k for k in initial if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1."))
    ]
    assert len(frozen) == 1 + 5 + 2 * (2 + 2 * 5)  # conv1, bn1 (5 tensors), layer1's 2 blocks
    for key in frozen:  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(initial[key], final[key]), key
    moved = [k for k in initial if k.startswith("backbone.layer2.") and k.endswith("conv1.weight")]
    assert moved and all(not torch.equal(initial[k], final[k]) for k in moved)
    assert not torch.equal(initial["head.classifier.weight"], final["head.classifier.weight"])


def test_rank_0_checkpoints_the_model_optimizer_and_step(run: Path):
    state = torch.load(run / "ckpt.pt", weights_only=True)
    assert state["step"] == 4
    final = _state(run / "first" / "rank0.pt")
    for key, value in state["model"].items():
        assert torch.equal(value, final[key]), key
    assert len(state["optimizer"]["state"]) > 0
    assert not (run / "ckpt.pt.partial").exists()
    report = json.loads((run / "first" / "report.json").read_text())
    assert (report["world_size"], report["start_step"], len(report["losses"])) == (2, 0, 4)


def test_resume_goes_on_from_the_saved_step_with_bf16_autocast(run: Path):
    proc = _torchrun(
        "--steps", "6", "--frozen-stages", "1", "--amp", "bf16", "--resume",
        "--checkpoint", str(run / "ckpt.pt"), "--dump", str(run / "resumed"),
    )  # fmt: skip
    report = json.loads((run / "resumed" / "report.json").read_text())
    assert (report["start_step"], report["steps"], len(report["losses"])) == (4, 6, 2)
    assert "steps 5..6" in proc.stdout
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 6
    rank0, rank1 = _state(run / "resumed" / "rank0.pt"), _state(run / "resumed" / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in _parameters(rank0))
    initial = _state(run / "first" / "initial.pt")
    assert torch.equal(
        initial["backbone.layer1.0.bn1.running_mean"], rank0["backbone.layer1.0.bn1.running_mean"]
    )


def test_sync_bn_on_cpu_is_refused_saying_why():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sync-bn", "--steps", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode != 0
    assert "--sync-bn needs GPUs: torch's SyncBatchNorm runs on CUDA only" in proc.stderr


def test_fsdp2_shards_the_frozen_stages_too_and_keeps_them_unchanged(tmp_path: Path):
    _torchrun("--steps", "3", "--frozen-stages", "1", "--fsdp", "--dump", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    # conv1, bn1 (2) and layer1's 12 tensors: stored as halves, not replicated whole
    assert report["sharded_frozen"] == 15
    initial, final = _state(tmp_path / "initial.pt"), _state(tmp_path / "rank0.pt")
    other = _state(tmp_path / "rank1.pt")
    assert list(final) == list(initial)
    for key in _parameters(final):
        assert torch.equal(final[key], other[key]), key
    for key in initial:
        if key.startswith(("backbone.conv1", "backbone.bn1.", "backbone.layer1.")):
            assert torch.equal(initial[key], final[key]), key
    assert not torch.equal(
        initial["backbone.layer4.1.conv2.weight"], final["backbone.layer4.1.conv2.weight"]
    )
