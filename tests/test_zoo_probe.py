"""The probe (`python -m backbones probe`): the suite's run on a fixed sample of timm's
models, each in a child process, and the tables it writes."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from backbones.cli import main
from backbones.zoo import timm_models
from backbones.zoo.probe import (
    CHECKS,
    COLUMNS,
    ProbeRow,
    ProbeRun,
    probe_backbone,
    probe_backbones,
    read_table,
)

SAMPLE = (
    "timm/convnext_atto",  # stages at strides 4..32
    "timm/resnet18",  # a stem level at stride 2, dilates for output_stride
    "timm/efficientnet_b0",
    "timm/vit_tiny_patch16_224",  # a plain ViT: every level at stride 16
    "timm/resnet50",  # 25.6 M parameters: over the sample's limit
)
LIMIT_M = 20.0
CHEAP_CHECKS = tuple(c for c in CHECKS if c not in ("script", "export"))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> ProbeRun:
    return probe_backbones(
        SAMPLE,
        out=tmp_path_factory.mktemp("probe"),
        table="sample",
        max_params_m=LIMIT_M,
        checks=CHEAP_CHECKS,
        timeout_s=120,
    )


def _row(run: ProbeRun, name: str) -> ProbeRow:
    return {r.name: r for r in run.rows}[name]


# -- the sample ----------------------------------------------------------------------------
def test_the_sample_builds_and_the_model_over_the_limit_is_skipped(sample: ProbeRun):
    assert {r.name: r.status for r in sample.rows} == {
        "timm/convnext_atto": "ok",
        "timm/resnet18": "ok",
        "timm/efficientnet_b0": "ok",
        "timm/vit_tiny_patch16_224": "ok",
        "timm/resnet50": "skipped",
    }
    assert sample.probed == SAMPLE


def test_a_skipped_model_names_its_estimated_size_and_the_limit(sample: ProbeRun):
    row = _row(sample, "timm/resnet50")
    assert row.reason == "26 M params > 20 M limit"
    assert row.params_m == pytest.approx(25.557, abs=1e-3)
    assert row.levels is None and row.contract == "n/a"


def test_convnext_atto_returns_four_stages_at_strides_4_to_32(sample: ProbeRun):
    row = _row(sample, "timm/convnext_atto")
    assert row.family == "convnext"
    assert row.levels == 4
    assert row.out_indices == (0, 1, 2, 3)
    assert row.strides == (4, 8, 16, 32)
    assert row.channels == (40, 80, 160, 320)
    assert row.params_m == pytest.approx(3.374, abs=1e-3)
    assert (row.contract, row.nhwc, row.metadata_fixes) == ("yes", "no", ())
    assert row.input_size == "64x64"


def test_resnet18_honours_every_cheap_option(sample: ProbeRun):
    row = _row(sample, "timm/resnet18")
    assert row.strides == (2, 4, 8, 16, 32)
    answers = {c: getattr(row, c) for c in CHECKS}
    assert answers == {
        "contract": "yes",
        "sizes": "yes",
        "output_stride": "yes",
        "frozen_stages": "yes",
        "in_chans": "yes",
        "drop_path_rate": "yes",
        "script": "not run",
        "export": "not run",
    }
    assert row.notes == ()


def test_output_stride_16_is_not_applicable_to_a_network_already_at_stride_16(
    sample: ProbeRun,
):
    row = _row(sample, "timm/vit_tiny_patch16_224")
    assert row.family == "vision_transformer"
    assert set(row.strides) == {16}
    assert row.output_stride == "n/a"
    assert row.frozen_stages == "yes"  # patch embedding and the first block


def test_the_csv_is_what_capabilities_reads(sample: ProbeRun):
    with sample.csv.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = {r["name"]: r for r in reader}
    assert tuple(reader.fieldnames or ()) == COLUMNS
    assert list(rows) == sorted(SAMPLE)
    resnet = rows["timm/resnet18"]
    assert (resnet["family"], resnet["status"], resnet["output_stride"]) == ("resnet", "ok", "yes")
    assert resnet["strides"] == "2 4 8 16 32"
    assert rows["timm/resnet50"]["reason"] == "26 M params > 20 M limit"
    assert read_table(sample.csv) == list(sample.rows)  # read back, row for row


def test_the_markdown_starts_with_the_versions_and_a_summary_of_counts(sample: ProbeRun):
    text = sample.markdown.read_text()
    head = text.split("## Models")[0]
    assert "timm 1." in head and "torch 2." in head
    for line in (
        "| ok | 4 |",
        "| skipped | 1 |",
        "| fail | 0 |",
        "| all | 5 |",
        "| contract | 4 | 0 | 1 | 0 |",
        "| sizes | 4 | 0 | 1 | 0 |",
        "| output_stride | 3 | 0 | 2 | 0 |",  # ViT: n/a
        "| frozen_stages | 4 | 0 | 1 | 0 |",
        "| script | 0 | 0 | 1 | 4 |",
    ):
        assert line in head.splitlines(), line
    assert "| timm/convnext_atto | convnext | ok | 3.4 | 4 | 4 8 16 32 |" in text


def test_the_sidecar_records_the_run(sample: ProbeRun):
    meta = json.loads(sample.meta.read_text())
    (run,) = meta["runs"]
    assert set(run["versions"]) >= {"python", "torch", "timm"}
    assert run["settings"]["checks"] == list(CHEAP_CHECKS)
    assert run["probed"] == len(SAMPLE)
    assert run["started"] <= run["finished"]


def test_resume_keeps_the_rows_and_probes_only_the_missing_names(sample: ProbeRun, tmp_path: Path):
    shutil.copy(sample.csv, tmp_path / "sample.csv")
    shutil.copy(sample.meta, tmp_path / "sample.meta.json")
    run = probe_backbones(
        [*SAMPLE, "timm/resnet10t"],
        out=tmp_path,
        table="sample",
        checks=["contract"],
        resume=True,
    )
    assert run.probed == ("timm/resnet10t",)
    assert _row(run, "timm/resnet10t").status == "ok"
    assert _row(run, "timm/resnet10t").frozen_stages == "not run"
    assert [r for r in run.rows if r.name != "timm/resnet10t"] == list(sample.rows)
    assert len(json.loads(run.meta.read_text())["runs"]) == 2


def test_fill_runs_only_the_checks_a_kept_row_has_not_run(sample: ProbeRun, tmp_path: Path):
    shutil.copy(sample.csv, tmp_path / "sample.csv")
    shutil.copy(sample.meta, tmp_path / "sample.meta.json")
    run = probe_backbones(
        ["timm/convnext_atto", "timm/resnet50"],  # resnet50: skipped, so nothing to fill
        out=tmp_path,
        table="sample",
        max_params_m=LIMIT_M,
        checks=["contract", "script", "export"],  # contract has run: not again
        fill=True,
    )
    assert run.probed == ("timm/convnext_atto",)
    before, after = _row(sample, "timm/convnext_atto"), _row(run, "timm/convnext_atto")
    assert (after.script, after.export) == ("yes", "yes")
    assert {c: getattr(after, c) for c in CHEAP_CHECKS} == {
        c: getattr(before, c) for c in CHEAP_CHECKS
    }
    assert after.seconds > before.seconds
    assert [r for r in run.rows if r.name != "timm/convnext_atto"] == [
        r for r in sample.rows if r.name != "timm/convnext_atto"
    ]
    assert len(json.loads(run.meta.read_text())["runs"]) == 2


def test_an_interrupted_fill_keeps_every_row_of_the_table(sample: ProbeRun, tmp_path: Path):
    shutil.copy(sample.csv, tmp_path / "sample.csv")
    shutil.copy(sample.meta, tmp_path / "sample.meta.json")

    def stop(done: int, total: int, row: ProbeRow) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        probe_backbones(
            ["timm/convnext_atto", "timm/resnet18"],
            out=tmp_path,
            table="sample",
            max_params_m=LIMIT_M,
            checks=["script"],
            fill=True,
            progress=stop,
        )
    rows = {r.name: r for r in read_table(tmp_path / "sample.csv")}
    assert sorted(rows) == sorted(SAMPLE)
    scripted = [n for n, r in rows.items() if r.script != "not run" and r.status == "ok"]
    assert scripted == ["timm/convnext_atto"]  # the first one filled; the other as it was
    assert rows["timm/resnet18"] == _row(sample, "timm/resnet18")


def test_a_check_a_table_has_no_column_for_is_not_run_on_its_built_rows(sample: ProbeRun):
    # a table written before the check existed: a fill pass then runs it
    with sample.csv.open(newline="") as f:
        old = [{k: v for k, v in row.items() if k != "sizes"} for row in csv.DictReader(f)]
    rows = {r.name: r for r in (ProbeRow.from_csv(row) for row in old)}
    assert rows["timm/convnext_atto"].sizes == "not run"
    assert rows["timm/convnext_atto"].contract == "yes"
    assert rows["timm/resnet50"].sizes == "n/a"  # skipped: nothing to run


def test_a_network_that_takes_only_some_sizes_answers_no_naming_the_size_it_refused():
    row = probe_backbone("timm/levit_128s", checks=["contract", "sizes"])
    assert (row.status, row.input_size, row.contract, row.sizes) == ("ok", "224x224", "yes", "no")
    (note,) = row.notes
    assert note.startswith("sizes: refuses 225x287: RuntimeError: The size of tensor a")


def test_merging_a_fill_row_keeps_the_other_checks_and_their_notes():
    from backbones.zoo.probe import _merged

    old = ProbeRow(
        "timm/x", status="ok", contract="yes", in_chans="no", script="not run",
        export="not run", notes=("in_chans: ValueError: no",), seconds=2.0,
    )  # fmt: skip
    new = ProbeRow(
        "timm/x", status="ok", contract="not run", in_chans="not run", script="no",
        export="yes", notes=("script: RuntimeError: getattr",), seconds=1.5,
    )  # fmt: skip
    row = _merged(old, new)
    assert (row.contract, row.in_chans, row.script, row.export) == ("yes", "no", "no", "yes")
    assert row.notes == ("in_chans: ValueError: no", "script: RuntimeError: getattr")
    assert row.seconds == 3.5


def test_a_fill_pass_cut_short_keeps_the_row_ok_with_what_it_finished():
    from backbones.zoo.probe import _merged

    old = ProbeRow(
        "timm/x", status="ok", contract="yes", sizes="not run", script="not run",
        export="not run", seconds=2.0,
    )  # fmt: skip
    lost = ProbeRow(  # what a child killed in its script check reported
        "timm/x", status="timeout", reason="timeout: still running after 90 s (in the script "
        "check)", contract="not run", sizes="no", script="not run", export="not run",
        notes=("sizes: refuses 65x95: RuntimeError: window",), seconds=90.0,
    )  # fmt: skip
    row = _merged(old, lost)
    assert (row.status, row.reason) == ("ok", "")
    assert (row.contract, row.sizes, row.script, row.export) == ("yes", "no", "not run", "not run")
    assert row.notes == (
        "sizes: refuses 65x95: RuntimeError: window",
        "fill: timeout: still running after 90 s (in the script check)",
    )
    assert row.seconds == 92.0


# -- isolation and failures ----------------------------------------------------------------
def test_a_model_over_the_time_limit_is_killed_and_says_timeout(tmp_path: Path):
    run = probe_backbones(["timm/resnet18"], out=tmp_path, timeout_s=0.01, checks=[])
    (row,) = run.rows
    assert (row.status, row.family) == ("timeout", "resnet")
    assert row.reason == "timeout: still running after 0.01 s"


def test_a_timeout_during_a_check_keeps_what_was_measured():
    # What the runner does with the last progress report of a child it kills.
    from backbones.zoo.probe import _Child

    partial = ProbeRow("timm/x", family="x", status="ok", strides=(8, 16), contract="yes")
    child = _Child("timm/x", process=None, start=0.0, partial=partial, running_check="export")  # type: ignore[arg-type]
    row = child.lost("timeout: still running after 90 s", 90.04, "timeout")
    assert (row.status, row.reason) == (
        "timeout",
        "timeout: still running after 90 s (in the export check)",
    )
    assert (row.strides, row.contract, row.seconds) == ((8, 16), "yes", 90.0)


def test_an_unknown_name_fails_with_the_lookup_error(tmp_path: Path):
    run = probe_backbones(["timm/resnet_18"], out=tmp_path, checks=[])
    (row,) = run.rows
    assert row.status == "fail"
    assert row.reason.startswith("UnknownNameError: unknown backbone 'timm/resnet_18'")


def test_a_model_the_namespace_says_cannot_return_features_is_no_features(
    monkeypatch: pytest.MonkeyPatch,
):
    # timm 1.0's models all build with features_only; the table is how one is marked.
    table = {"resnet18": {"name": "resnet18", "status": "no_features", "reason": "not here"}}
    monkeypatch.setattr(timm_models, "capabilities", lambda: table)
    row = probe_backbone("timm/resnet18", checks=[])
    assert row.status == "no_features"
    assert "cannot return features" in row.reason


def test_the_patterns_must_name_a_backbone_and_the_checks_be_known(tmp_path: Path):
    with pytest.raises(ValueError, match=r"match no backbone"):
        probe_backbones("timm/no_such_model_*", out=tmp_path)
    with pytest.raises(ValueError, match=r"unknown checks \['scripted'\]; accepted: contract"):
        probe_backbones("timm/resnet18", out=tmp_path, checks=["scripted"])


def test_a_row_survives_the_csv_round_trip():
    row = ProbeRow(
        "timm/x",
        family="x",
        status="ok",
        params_m=1.5,
        levels=2,
        out_indices=(0, 1),
        strides=(8, 16),
        channels=(3, 4),
        metadata_fixes=("level 0 (a): 3 | 4",),
        notes=("script: no", "export: no"),
        seconds=1.3,
    )
    back = ProbeRow.from_csv(row.to_csv())
    assert back == ProbeRow(
        **{**row.__dict__, "metadata_fixes": ("level 0 (a): 3 / 4",), "seconds": 1.3}
    )


# -- the command line ----------------------------------------------------------------------
def test_the_probe_command_writes_the_tables_to_out_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    args = ["timm/convnext_atto", "--out", str(tmp_path), "--table", "one", "--img-size", "32"]
    status = main(["probe", *args, "--checks", "contract"])
    out = capsys.readouterr().out
    assert status == 0
    assert "[1/1] timm/convnext_atto: ok" in out
    assert "1 models: ok 1, fail 0, timeout 0, skipped 0, no_features 0" in out
    (row,) = read_table(tmp_path / "one.csv")
    assert (row.status, row.input_size, row.contract, row.in_chans) == (
        "ok",
        "32x32",
        "yes",
        "not run",
    )
    assert "python -m backbones probe timm/convnext_atto" in (tmp_path / "one.md").read_text()
