"""The command line: `python -m backbones list` and `bench`."""

import os
import re
import subprocess
import sys

import pytest

from backbones.bench import benchmark
from backbones.cli import main


def _run_cli(*args: str, autoload: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BACKBONES_DISABLE_PLUGIN_AUTOLOAD": "0" if autoload else "1"}
    return subprocess.run(
        [sys.executable, "-m", "backbones", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_weights_lists_the_tags_sources_and_licences_of_a_variant():
    result = _run_cli("weights", "resnet50")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "resnet50: pretrained=True loads 'tv2_in1k'; a tag picks a row"
    assert lines[1] == "  tv2_in1k   https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert lines[2].startswith(
        "             torchvision, bsd-3-clause; 224x224 bilinear, crop 0.966"
    )
    assert lines[5] == "  a1_in1k    hf-hub:timm/resnet50.a1_in1k"
    assert "timm, apache-2.0; 224x224 bicubic, crop 0.950" in lines[6]
    unknown = _run_cli("weights", "resnet05")
    assert unknown.returncode == 2
    assert "unknown backbone 'resnet05'; did you mean 'resnet50'" in unknown.stderr


def test_list_prints_matching_backbones_blocks_and_heads():
    result = _run_cli("list", "resnet5*")  # built-ins only: plugins would add names
    assert result.returncode == 0, result.stderr
    assert result.stdout == "backbones (2):\n  resnet50\n  resnet50d\nblocks (0):\nheads (0):\n"


def test_list_without_pattern_shows_every_builtin():
    result = _run_cli("list")
    assert result.returncode == 0, result.stderr
    assert "backbones (12):" in result.stdout
    assert "  wide_resnet101_2\n" in result.stdout
    assert "blocks (2):\n  basic\n  bottleneck\n" in result.stdout
    heads = "heads (6):\n  classification\n  deeplabv3\n  fcn\n  fpn\n  semantic_fpn\n  upernet\n"
    assert heads in result.stdout


def test_list_in_process_includes_the_builtins(capsys: pytest.CaptureFixture[str]):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  resnet50\n" in out and "  bottleneck\n" in out and "  classification\n" in out


def test_bench_reports_both_models_and_their_ratio(capsys: pytest.CaptureFixture[str]):
    argv = ["bench", "resnet18", "--batch-size", "1", "--img-size", "32", "--rounds", "2"]
    assert main([*argv, "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "resnet18: batch 1, 32x32, 1 threads, 2 interleaved rounds" in out
    number = r"\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d{3})"
    ours = re.search(r"backbones" + number, out)
    ref = re.search(r"timm features_only" + number, out)
    assert ours and ref
    assert float(ours.group(2)) > 0 and float(ref.group(2)) > 0
    assert ref.group(3) == "1.000"
    assert re.search(r"ratio \(backbones / timm images/s\): \d+\.\d{3}", out)
    assert "optimized" not in out


def test_bench_optimized_adds_a_row(capsys: pytest.CaptureFixture[str]):
    argv = ["bench", "resnet18", "--batch-size", "1", "--img-size", "32", "--rounds", "1"]
    assert main([*argv, "--warmup", "0", "--optimized"]) == 0
    assert re.search(r"backbones optimized\s+\d+\.\d", capsys.readouterr().out)


def test_bench_result_images_per_second_follow_the_timings():
    result = benchmark("resnet18", batch_size=2, img_size=32, rounds=1, warmup=0, threads=1)
    assert set(result.seconds) == {"backbones", "timm features_only"}
    for contender, seconds in result.seconds.items():
        assert result.images_per_second(contender) == pytest.approx(2 / seconds)
    timm_s = result.seconds["timm features_only"]
    assert result.ratio_median == pytest.approx(timm_s / result.seconds["backbones"])
    assert result.ratios["timm features_only"] == 1.0


def test_bench_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    benchmark("resnet18", batch_size=1, img_size=32, rounds=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before


def test_bench_unknown_name_exits_2_with_a_suggestion(capsys: pytest.CaptureFixture[str]):
    assert main(["bench", "resnt18"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'resnt18'; did you mean 'resnet18'," in err


def test_bench_rejects_a_zero_batch(capsys: pytest.CaptureFixture[str]):
    assert main(["bench", "resnet18", "--batch-size", "0"]) == 2
    assert "batch_size must be at least 1, got 0" in capsys.readouterr().err


def test_plugins_lists_the_builtin_plugin_and_what_it_registered():
    result = _run_cli("plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "entry-point autoload is disabled (BACKBONES_DISABLE_PLUGIN_AUTOLOAD)"
    assert lines[1] == "builtin [loaded] backbones: backbones._builtins"
    assert lines[2].startswith("  backbones: resnet18, resnet34, resnet50,")
    assert lines[3] == "  blocks: basic, bottleneck"
    assert lines[4] == "  heads: classification, fpn, fcn, deeplabv3, semantic_fpn, upernet"
    assert len(lines) == 5
