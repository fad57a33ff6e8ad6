"""The command line: `python -m backbones list` and `bench`."""

import argparse
import os
import re
import shlex
import subprocess
import sys

import pytest

from backbones import list_namespaces
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
    assert (
        result.stdout
        == "backbones (2):\n  resnet50\n  resnet50d\nblocks (0):\nlayers (0):\nheads (0):\n"
        "namespaces (list one with PATTERN '<namespace>/*'):\n"
        "  timm/  timm's models that return features (timm.create_model(..., features_only=True))\n"
        f"  tv/  {list_namespaces()['tv']}\n"
    )


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


def test_bench_startup_times_the_first_create_in_fresh_processes(
    capsys: pytest.CaptureFixture[str],
):
    assert main(["bench", "timm/resnet10t", "--startup", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "timm/resnet10t: first create in a fresh process (after import torch), "
        "1 alternating rounds\n"
    )
    ours = re.search(r"backbones.create_backbone\('timm/resnet10t'\)\s+(\d+\.\d{3})\n", out)
    ref = re.search(r"timm.create_model\('resnet10t', features_only=True\)\s+(\d+\.\d{3})\n", out)
    ratio = re.search(r"ratio \(backbones / timm seconds\): (\d+\.\d{3})", out)
    assert ours and ref and ratio
    assert float(ours.group(1)) > 0 and float(ref.group(1)) > 0
    assert float(ratio.group(1)) == pytest.approx(
        float(ours.group(1)) / float(ref.group(1)), rel=0.01, abs=0.002
    )


def test_bench_startup_refuses_an_unknown_name_before_starting_processes(
    capsys: pytest.CaptureFixture[str],
):
    assert main(["bench", "timm/resnet10", "--startup"]) == 2
    assert "unknown backbone 'timm/resnet10'; did you mean 'timm/resnet10t'" in (
        capsys.readouterr().err
    )


def test_bench_train_times_training_steps_and_their_peak_memory(
    capsys: pytest.CaptureFixture[str],
):
    argv = ["bench", "resnet18", "--train", "--grad-checkpointing", "--amp", "bf16"]
    argv += ["--batch-size", "2", "--img-size", "32", "--rounds", "1", "--warmup", "0"]
    assert main([*argv, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "resnet18: training step (forward, backward, SGD), batch 2, 32x32, 1 threads, "
        "1 interleaved rounds, amp bf16, gradient checkpointing\n"
    )
    row = r"\s+(\d+\.\d{3})\s+(\d+\.\d)\s+(-?\d+)\n"
    ours = re.search(r"  backbones" + row, out)
    ref = re.search(r"  timm features_only" + row, out)
    assert ours and ref
    assert float(ours.group(2)) == pytest.approx(2 / float(ours.group(1)), rel=0.01, abs=0.1)
    assert re.search(r"ratio \(backbones / timm images/s\): \d+\.\d{3}", out)


def test_bench_training_flags_need_train(capsys: pytest.CaptureFixture[str]):
    assert main(["bench", "resnet18", "--amp", "bf16"]) == 2
    assert "--grad-checkpointing, --amp and --channels-last go with --train" in (
        capsys.readouterr().err
    )


def test_bench_train_refuses_an_unknown_amp_naming_the_accepted_ones():
    from backbones.bench import train_benchmark

    with pytest.raises(ValueError, match="amp='fp8' is not accepted; accepted: none, bf16, fp16"):
        train_benchmark("resnet18", amp="fp8")


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


# -- errors: one line on stderr, a non-zero exit, never a traceback --------------------


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("backbones: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


def test_convert_of_a_missing_file_is_one_line(tmp_path):
    # Before: a FileNotFoundError traceback.
    missing = tmp_path / "missing.pth"
    result = _run_cli("convert", str(missing), str(tmp_path / "out.safetensors"))
    _assert_one_line_error(result, str(missing))
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("weights", "resnt50"), "unknown backbone 'resnt50'; did you mean 'resnet50'"),
        (("bench", "resnet18", "--batch-size", "x"), "argument --batch-size: invalid int value"),
        (("convert", "a.pkl", "b.safetensors", "--format", "mmdett"), "invalid choice: 'mmdett'"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_names_and_options_are_one_line(args, fragment):
    # Before: argparse printed its usage block above the error.
    _assert_one_line_error(_run_cli(*args), fragment)


def test_usage_error_points_to_the_subcommand_help():
    result = _run_cli("bench")
    _assert_one_line_error(result, "required: name (see 'backbones bench --help')")


def test_an_unknown_option_points_to_the_subcommand_help():
    # Before: "(see 'backbones --help')", whose help does not list the subcommand's options.
    result = _run_cli("list", "--bogus")
    _assert_one_line_error(result, "unrecognized arguments: --bogus (see 'backbones list --help')")


def _run_shell(command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BACKBONES_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, env=env
    )


def test_output_into_a_closed_pipe_stops_quietly_with_status_141():
    # `true` exits without reading, so every write meets a closed pipe. Before: a
    # BrokenPipeError traceback and status 1.
    cli = f"{shlex.quote(sys.executable)} -m backbones"
    result = _run_shell(f'{cli} list | true; echo "status=${{PIPESTATUS[0]}}"')
    assert result.stdout == "status=141\n"
    assert result.stderr == ""


def test_plugins_into_head_prints_the_first_line_and_nothing_on_stderr():
    cli = f"{shlex.quote(sys.executable)} -m backbones"
    result = _run_shell(f"{cli} plugins | head -1")
    assert result.stdout == "entry-point autoload is disabled (BACKBONES_DISABLE_PLUGIN_AUTOLOAD)\n"
    assert "BrokenPipeError" not in result.stderr
    assert "Exception ignored" not in result.stderr
    assert result.stderr == ""


def test_ctrl_c_is_one_line_and_status_130():
    code = (
        "import sys, backbones.cli as cli\n"
        "def interrupted(args):\n"
        "    raise KeyboardInterrupt\n"
        "cli._cmd_list = interrupted\n"
        "sys.exit(cli.main(['list']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 130
    assert result.stderr == "backbones: error: interrupted\n"


def test_unexpected_error_is_one_line_with_status_1_and_traceback_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    import backbones.cli as cli

    def broken(args):
        return 1 // 0

    monkeypatch.setattr(cli, "_cmd_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "backbones: error: unexpected ZeroDivisionError: integer division or modulo by zero "
        "(run with --traceback for details, and please report it)\n"
    )
    with pytest.raises(ZeroDivisionError):
        main(["--traceback", "list"])


def test_library_errors_are_one_line_even_when_their_message_has_several(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    import backbones.cli as cli

    def failing(args):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(cli, "_cmd_list", failing)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "backbones: error: first line; second line\n"


# -- --help: every option with its default and choices ---------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from backbones.cli import _parser

    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_argument_of_every_subcommand_has_help_and_options_show_a_default():
    parsers = _subparsers()
    assert set(parsers) == {"list", "plugins", "info", "bench", "weights", "convert", "probe"}
    for command, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (command, action.dest)
            if action.option_strings or action.nargs == "?":
                assert "default" in action.help, (command, action.dest)
            if action.choices:
                assert "%(choices)s" in action.help, (command, action.dest)


@pytest.mark.parametrize(
    ("command", "fragments"),
    [
        ("list", ["(default: *, everything)"]),
        (
            "bench",
            [
                "images per batch (default: 8)",
                "image height and width (default: 224)",
                "torch intra-op threads (default: 2)",
                "interleaved timed rounds (default: 20)",
                "untimed rounds first (default: 3)",
                "(default: off)",
            ],
        ),
        (
            "convert",
            [
                "--format {torchvision,timm,mmdet,lightning,detectron2}",
                "one of: torchvision, timm, mmdet, lightning, detectron2",
                "(default: detected from the checkpoint's keys)",
                ".safetensors, .pth, .pt, .bin",
            ],
        ),
        ("weights", ["a registered backbone, e.g. resnet50"]),
        ("plugins", ["Takes no options."]),
    ],
)
def test_subcommand_help_lists_defaults_and_choices(
    command: str, fragments: list[str], capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    for fragment in fragments:
        assert " ".join(fragment.split()) in out


def test_convert_format_choices_are_the_known_formats():
    from backbones.weights import FORMATS

    (fmt,) = [a for a in _subparsers()["convert"]._actions if a.dest == "format"]
    assert list(fmt.choices) == list(FORMATS)
