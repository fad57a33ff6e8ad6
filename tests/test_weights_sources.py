"""Where ``pretrained=`` weights come from: local files, http(s) URLs and ``hf-hub:`` repos.

Everything runs offline. The weights are a torchvision resnet18 with random BatchNorm
statistics, saved by the tests; a loaded backbone must reproduce torchvision's features.
URLs are served by a local ``ThreadingHTTPServer`` that counts its requests, torch's hub
cache is redirected to a temporary directory, and ``hf-hub:`` sources read a fake Hugging
Face cache built in ``tmp_path`` with ``huggingface_hub``'s offline mode on.
"""

import argparse
import collections
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import randomize_norm_stats
from safetensors.torch import save_file
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from backbones import create_backbone
from backbones.weights.loading import LoadReport, load_pretrained
from backbones.weights.sources import (
    WeightsError,
    read_checkpoint,
    resolve_source,
    sha256_of,
    url_cache_path,
)

SIZE = 32
OUT_INDICES = (1, 2)
# layer1 and layer2 of resnet18 at 32 px: strides 4 and 8.
SHAPES = [(2, 64, 8, 8), (2, 128, 4, 4)]
ATOL = 1e-5


# --- weights and the torchvision reference ------------------------------------------------


@pytest.fixture(scope="module")
def tv_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_norm_stats(torchvision.models.resnet18(), seed=1).eval()


@pytest.fixture(scope="module")
def state(tv_model: nn.Module) -> dict[str, Tensor]:
    """torchvision's full state dict, classifier and BatchNorm counters included."""
    return {k: v.detach().clone() for k, v in tv_model.state_dict().items()}


@pytest.fixture(scope="module")
def image() -> Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(tv_model: nn.Module, image: Tensor) -> list[Tensor]:
    getter = IntermediateLayerGetter(tv_model, return_layers={"layer1": "1", "layer2": "2"})
    with torch.no_grad():
        return list(getter.eval()(image).values())


@pytest.fixture(scope="module")
def pth_bytes(state: dict[str, Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pth_sha(pth_bytes: bytes) -> str:
    return hashlib.sha256(pth_bytes).hexdigest()


def assert_matches(bb: nn.Module, image: Tensor, reference: list[Tensor]) -> None:
    """``bb`` (eval mode) gives torchvision's layer1/layer2 features for ``image``."""
    with torch.no_grad():
        ours = list(bb.eval()(image))
    assert [tuple(t.shape) for t in ours] == SHAPES
    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)


def assert_report_is_clean(bb: nn.Module, source: str) -> None:
    report = bb.pretrained_report
    assert isinstance(report, LoadReport)
    assert report.ok, str(report)
    assert report.source == source
    assert report.format == "torchvision"
    assert sorted(report.dropped["classifier or another model part"]) == ["fc.bias", "fc.weight"]
    assert all(
        k.startswith(("layer3.", "layer4."))
        for k in report.dropped["stage not built (see out_indices)"]
    )
    # every parameter and buffer of the backbone came from the file
    expected = {k for k in bb.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(report.loaded) >= expected


def build(pretrained: object, **kwargs: object) -> nn.Module:
    return create_backbone(
        "resnet18",
        out_indices=OUT_INDICES,
        pretrained=pretrained,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


# --- 1. local files -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
def test_local_file_reproduces_torchvision_features(
    tmp_path: Path, suffix: str, state: dict[str, Tensor], image: Tensor, reference: list[Tensor]
) -> None:
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    bb = build(str(path))
    assert_matches(bb, image, reference)
    assert_report_is_clean(bb, str(path))
    assert bb.pretrained_cfg["file"] == str(path) and bb.pretrained_cfg["url"] == ""
    assert bb.pretrained_cfg["hf_hub_id"] == ""


def test_pathlib_path_is_accepted(
    tmp_path: Path, state: dict[str, Tensor], image: Tensor, reference: list[Tensor]
) -> None:
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    bb = build(path)
    assert_matches(bb, image, reference)
    assert bb.pretrained_report.source == str(path)
    assert resolve_source(path) == path


def test_safetensors_content_is_recognised_whatever_the_suffix(
    tmp_path: Path, state: dict[str, Tensor], image: Tensor, reference: list[Tensor]
) -> None:
    path = tmp_path / "model.bin"  # a safetensors file under a pickle suffix
    save_file(state, str(path), metadata={"origin": "test"})
    checkpoint, metadata = read_checkpoint(path)
    assert metadata == {"origin": "test"}
    assert set(checkpoint) == set(state)
    assert_matches(build(path), image, reference)


def test_explicit_sha256_of_a_local_file(
    tmp_path: Path, pth_bytes: bytes, pth_sha: str, image: Tensor, reference: list[Tensor]
) -> None:
    path = tmp_path / "r18.pth"
    path.write_bytes(pth_bytes)
    assert sha256_of(path) == pth_sha
    # full digest, and an upper-case prefix
    assert_matches(build(path, pretrained_sha256=pth_sha), image, reference)
    assert_matches(build(path, pretrained_sha256=pth_sha[:12].upper()), image, reference)
    wrong = ("0" if pth_sha[0] != "0" else "1") * 64
    with pytest.raises(
        WeightsError, match=rf"sha256 {pth_sha} does not match the expected {wrong}"
    ):
        build(path, pretrained_sha256=wrong)
    with pytest.raises(WeightsError, match=r"sha256='xyz' is not a hex digest"):
        build(path, pretrained_sha256="xyz")


# --- 2. pickles are read with weights_only=True -------------------------------------------


def _write_marker(path: str) -> None:
    Path(path).write_text("code in the checkpoint ran")


class Payload:
    """Unpickling this calls ``_write_marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _write_marker, (str(self.marker),)


def test_pickle_with_code_is_refused_and_its_code_never_runs(
    tmp_path: Path, state: dict[str, Tensor]
) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "extra": Payload(marker)}, path)

    with pytest.raises(WeightsError, match=r"weights_only=True") as info:
        build(path)
    assert str(path) in str(info.value)
    assert "Re-save just the weights" in str(info.value)
    assert not marker.exists()

    # The library's lower level refuses it too, and leaves a model untouched.
    bb = create_backbone("resnet18", out_indices=OUT_INDICES)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with pytest.raises(WeightsError, match=r"weights_only=True"):
        load_pretrained(bb, path)
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
    assert not marker.exists()

    # Control: the payload is live, an unrestricted unpickler does run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code in the checkpoint ran"


def test_pickle_with_a_training_namespace_is_refused(
    tmp_path: Path, state: dict[str, Tensor]
) -> None:
    path = tmp_path / "train_ckpt.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(WeightsError, match=r"weights_only=True") as info:
        build(path)
    assert str(path) in str(info.value)


# --- 3. unreadable and unsupported local files --------------------------------------------


def test_truncated_pth_names_the_file(tmp_path: Path, pth_bytes: bytes) -> None:
    path = tmp_path / "half.pth"
    path.write_bytes(pth_bytes[: len(pth_bytes) // 2])
    with pytest.raises(WeightsError, match=r"not a readable checkpoint \(corrupt or truncated"):
        build(path)
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        build(path)


def test_truncated_safetensors_names_the_file(tmp_path: Path, state: dict[str, Tensor]) -> None:
    whole = tmp_path / "whole.safetensors"
    save_file(state, str(whole))
    path = tmp_path / "half.safetensors"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"not a readable safetensors file") as info:
        build(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage" * 10, id="bad-opcode"),
        pytest.param(b"PK\x03\x04garbage", id="bad-zip"),
        pytest.param(b"\x80\x02}q\x00", id="cut-pickle"),
        pytest.param(b"\x80\x02}q\x00(X", id="cut-string"),
        pytest.param(b"this is not a checkpoint\n" * 40, id="text"),
        pytest.param(b"h\x05.", id="bad-memo"),
    ],
)
def test_garbage_pth_names_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        build(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_empty_file_says_it_is_empty(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r18{suffix}"
    path.write_bytes(b"")
    with pytest.raises(WeightsError) as info:
        build(path)
    assert str(info.value) == f"{path}: not a weights file: it is an empty file (0 bytes)"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param(
            "<!DOCTYPE html>\n<html><body>Access denied</body></html>\n",
            "'<!DOCTYPE html>'",
            id="html",
        ),
        pytest.param(
            "hello, these are not weights\n" * 3, "'hello, these are not weights'", id="text"
        ),
    ],
)
def test_text_file_says_it_starts_with_text(
    tmp_path: Path, suffix: str, text: str, shown: str
) -> None:
    path = tmp_path / f"r18{suffix}"
    path.write_text(text)
    with pytest.raises(WeightsError) as info:
        build(path)
    assert str(info.value) == f"{path}: not a weights file: it starts with text {shown}"


def test_git_lfs_pointer_says_so(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0c1b0b44e5d3c2f4b0f8a2b6d2c51f0b3e9f1a2b3\n"
        "size 46830571\n"
    )
    with pytest.raises(WeightsError, match=r"it is a Git LFS pointer.*git lfs pull"):
        build(path)


def test_missing_file_lists_the_accepted_forms(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "r18.pth"
    with pytest.raises(WeightsError, match=r"no such file") as info:
        build(path)
    message = str(info.value)
    assert repr(str(path)) in message
    for form in ("hf-hub:", "http(s) URL", ".safetensors", ".pth"):
        assert form in message


def test_missing_path_that_reads_as_a_hub_id_suggests_the_prefix(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"no such file") as info:
        create_backbone("resnet50", pretrained="timm/resnet50.a1_in1k")
    assert "did you mean 'hf-hub:timm/resnet50.a1_in1k'?" in str(info.value)
    (tmp_path / "weights").mkdir()
    for path in (
        "weights/r18.pth",  # a weights file's suffix
        "./timm/resnet50.a1_in1k",  # explicitly relative
        "/timm/resnet50.a1_in1k",
        "a/b/c",
        str(tmp_path / "weights" / "r18"),  # an existing folder
    ):
        with pytest.raises(WeightsError, match=r"no such file") as info:
            build(path)
        assert "did you mean" not in str(info.value), path


def test_pkl_file_points_to_the_converter(tmp_path: Path, state: dict[str, Tensor]) -> None:
    path = tmp_path / "model_final.pkl"
    torch.save(state, path)  # whatever it holds, a .pkl is never unpickled
    with pytest.raises(WeightsError, match=r"`python -m backbones convert ") as info:
        build(path)
    assert f"convert {path} {tmp_path / 'model_final.safetensors'}`" in str(info.value)


# --- 4. http(s) URLs ----------------------------------------------------------------------


@dataclass
class Server:
    root: Path
    url: str
    hits: collections.Counter[str]  # GET and HEAD requests, by path

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """Serves ``tmp_path/www``; ``/truncated/<name>`` sends half of ``<name>``, then closes.

    ``/chunked/<name>`` sends a chunked response whose first chunk is cut short;
    ``/slow/<name>`` waits 0.3 s, then sends ``<name>`` (so concurrent clients overlap).
    """
    root = tmp_path / "www"
    root.mkdir()
    hits: collections.Counter[str] = collections.Counter()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            hits[self.path] += 1
            super().do_HEAD()

        def do_GET(self) -> None:
            hits[self.path] += 1
            kind, _, name = self.path.lstrip("/").partition("/")
            if kind == "slow":
                time.sleep(0.3)
                self.path = "/" + name
            if kind in ("truncated", "chunked"):
                data = (root / name).read_bytes()
                self.send_response(200)
                if kind == "truncated":
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n" % len(data) + data[: len(data) // 2])
                self.close_connection = True
                return
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """torch's hub dir points into tmp_path; yields its ``checkpoints`` folder.

    Through ``torch.hub._hub_dir`` (what ``set_dir`` sets), restored to its value before:
    ``set_dir(get_dir())`` would leave it set, and later tests' TORCH_HOME ignored.
    """
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"


def cached(checkpoints: Path) -> list[str]:
    """Every file and folder in the cache, temporary files included, relative to it."""
    if not checkpoints.exists():
        return []
    return sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*"))


def test_url_with_hash_in_name_downloads_once_into_the_hub_cache(
    server: Server,
    checkpoints: Path,
    pth_bytes: bytes,
    pth_sha: str,
    image: Tensor,
    reference: list[Tensor],
) -> None:
    name = f"r18-{pth_sha[:8]}.pth"
    url = server.put(name, pth_bytes)

    bb = build(url)
    assert_matches(bb, image, reference)
    assert_report_is_clean(bb, url)
    assert bb.pretrained_cfg["url"] == url
    assert server.hits == {f"/{name}": 1}
    assert cached(checkpoints) == [name]
    assert (checkpoints / name).read_bytes() == pth_bytes

    again = build(url)
    assert_matches(again, image, reference)
    assert sum(server.hits.values()) == 1, "the cached file was downloaded again"


def test_url_with_wrong_hash_in_name_is_not_cached(
    server: Server, checkpoints: Path, pth_bytes: bytes, pth_sha: str
) -> None:
    wrong = "deadbeef" if not pth_sha.startswith("deadbeef") else "0badf00d"
    url = server.put(f"r18-{wrong}.pth", pth_bytes)
    with pytest.raises(WeightsError, match=rf"sha256 does not start with '{wrong}'.*not cached"):
        build(url)
    assert cached(checkpoints) == []
    # nothing was cached, so a second try downloads (and fails) again
    with pytest.raises(WeightsError, match=r"sha256"):
        build(url)
    assert server.hits == {f"/r18-{wrong}.pth": 2}


def test_url_without_hash_uses_the_explicit_sha256(
    server: Server,
    checkpoints: Path,
    pth_bytes: bytes,
    pth_sha: str,
    image: Tensor,
    reference: list[Tensor],
) -> None:
    url = server.put("r18.pth", pth_bytes)
    bb = build(url, pretrained_sha256=pth_sha)
    assert_matches(bb, image, reference)
    assert bb.pretrained_cfg["sha256"] == pth_sha
    entry = url_cache_path(url).relative_to(checkpoints)
    assert cached(checkpoints) == [str(entry.parent), str(entry)]

    other = server.put("other.pth", pth_bytes)
    wrong = ("0" if pth_sha[0] != "0" else "1") * 64
    with pytest.raises(WeightsError, match=rf"sha256 does not start with '{wrong}'"):
        build(other, pretrained_sha256=wrong)
    assert cached(checkpoints) == [str(entry.parent), str(entry)]


def test_truncated_download_never_reaches_the_cache(
    server: Server, checkpoints: Path, pth_bytes: bytes, pth_sha: str
) -> None:
    name = f"r18-{pth_sha[:8]}.pth"
    server.put(name, pth_bytes)
    url = f"{server.url}/truncated/{name}"
    with pytest.raises(WeightsError, match=r"sha256") as info:
        build(url)
    assert url in str(info.value)
    assert cached(checkpoints) == []


def test_truncated_download_without_hash_never_reaches_the_cache(
    server: Server, checkpoints: Path, pth_bytes: bytes
) -> None:
    server.put("r18.pth", pth_bytes)
    with pytest.raises(WeightsError):
        build(f"{server.url}/truncated/r18.pth")
    assert cached(checkpoints) == []


def test_cut_chunked_download_is_a_weights_error(
    server: Server, checkpoints: Path, pth_bytes: bytes
) -> None:
    server.put("r18.pth", pth_bytes)
    url = f"{server.url}/chunked/r18.pth"
    try:
        build(url)
    except WeightsError as err:
        assert url in str(err)
    except Exception as err:
        raise AssertionError(f"{type(err).__name__} escaped: {err}") from err
    else:
        raise AssertionError("a cut download loaded")
    assert cached(checkpoints) == []


def test_corrupt_cached_file_is_downloaded_again(
    server: Server,
    checkpoints: Path,
    pth_bytes: bytes,
    pth_sha: str,
    image: Tensor,
    reference: list[Tensor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"r18-{pth_sha[:8]}.pth"
    url = server.put(name, pth_bytes)
    checkpoints.mkdir(parents=True)
    (checkpoints / name).write_bytes(b"garbage left by an earlier run")

    with caplog.at_level(logging.WARNING, logger="backbones.weights"):
        bb = build(url)
    assert_matches(bb, image, reference)
    assert server.hits == {f"/{name}": 1}
    assert (checkpoints / name).read_bytes() == pth_bytes
    assert cached(checkpoints) == [name]
    assert any("fails its sha256 check" in r.getMessage() for r in caplog.records)


def test_progress_bar_is_optional(
    server: Server,
    checkpoints: Path,
    pth_bytes: bytes,
    pth_sha: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for progress, name in ((False, "quiet"), (True, "loud")):
        url = server.put(f"{name}-{pth_sha[:8]}.pth", pth_bytes)
        bb = create_backbone("resnet18", out_indices=OUT_INDICES)
        capsys.readouterr()
        report = load_pretrained(bb, url, progress=progress)
        err = capsys.readouterr().err
        assert report.ok
        assert report.source == url
        assert ("100" in err) is progress, err  # tqdm: "100%", torch's fallback: "100.0%"
    assert cached(checkpoints) == [f"loud-{pth_sha[:8]}.pth", f"quiet-{pth_sha[:8]}.pth"]


def test_missing_url_names_the_url(server: Server, checkpoints: Path) -> None:
    url = f"{server.url}/nope-0123abcd.pth"
    with pytest.raises(WeightsError, match=re.escape(url) + r": download failed .*404"):
        build(url)
    assert server.hits == {"/nope-0123abcd.pth": 1}
    assert cached(checkpoints) == []


def test_url_without_a_file_name(checkpoints: Path) -> None:
    with pytest.raises(WeightsError, match=r"the URL names no file"):
        build("http://127.0.0.1:9/")


# --- 5. hf-hub: repositories, from a fake offline cache ----------------------------------

COMMIT_MAIN = "0123456789abcdef0123456789abcdef01234567"
COMMIT_V1 = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> Iterator[Path]:
    """An empty Hugging Face cache, offline; any request to the hub would reach ``server``.

    huggingface_hub (2.x) reads ``constants.HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` when
    called, so patching them works in-process; the hub URL template points at the
    counting server to prove that no request was made.
    """
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    yield cache
    assert sum(server.hits.values()) == 0, f"offline, yet the hub was asked: {server.hits}"


def fake_repo(
    cache: Path, repo_id: str, ref: str, commit: str, files: dict[str, dict[str, Tensor]]
) -> Path:
    """Add ``files`` (name -> state dict) to ``repo_id``'s snapshot ``commit``, named by ``ref``."""
    owner, name = repo_id.split("/")
    repo = cache / f"models--{owner}--{name}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for filename, tensors in files.items():
        if filename.endswith(".safetensors"):
            save_file(tensors, str(snapshot / filename))
        else:
            torch.save(tensors, snapshot / filename)
    return snapshot


def test_hf_hub_repo_loads_from_the_cache(
    hf_cache: Path, state: dict[str, Tensor], image: Tensor, reference: list[Tensor]
) -> None:
    snapshot = fake_repo(
        hf_cache, "someone/tiny-r18", "main", COMMIT_MAIN, {"model.safetensors": state}
    )
    assert resolve_source("hf-hub:someone/tiny-r18") == snapshot / "model.safetensors"

    bb = build("hf-hub:someone/tiny-r18")
    assert_matches(bb, image, reference)
    assert_report_is_clean(bb, "hf-hub:someone/tiny-r18")
    assert bb.pretrained_cfg["hf_hub_id"] == "someone/tiny-r18"
    assert bb.pretrained_cfg["url"] == ""
    # pre-processing stays the variant's
    assert bb.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)


def test_hf_hub_config_json_sets_the_preprocessing(
    hf_cache: Path, state: dict[str, Tensor]
) -> None:
    snapshot = fake_repo(
        hf_cache, "someone/tiny-r18", "main", COMMIT_MAIN, {"model.safetensors": state}
    )
    pretrained_cfg = {"input_size": [3, 160, 160], "interpolation": "bicubic", "crop_pct": 0.95}
    pretrained_cfg |= {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_classes": 7}
    config = {"architecture": "resnet18", "pretrained_cfg": pretrained_cfg}
    (snapshot / "config.json").write_text(json.dumps(config))
    cfg = build("hf-hub:someone/tiny-r18").pretrained_cfg
    assert cfg["input_size"] == (3, 160, 160) and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == 0.95 and cfg["mean"] == (0.5, 0.5, 0.5)
    assert cfg["std"] == (0.25, 0.25, 0.25)
    assert cfg["num_classes"] == 1000  # only pre-processing keys come from the hub


def test_hf_hub_falls_back_to_pytorch_model_bin(
    hf_cache: Path, state: dict[str, Tensor], image: Tensor, reference: list[Tensor]
) -> None:
    fake_repo(hf_cache, "someone/old-r18", "main", COMMIT_MAIN, {"pytorch_model.bin": state})
    assert_matches(build("hf-hub:someone/old-r18"), image, reference)


def test_hf_hub_revision(hf_cache: Path, state: dict[str, Tensor]) -> None:
    v1 = dict(state, **{"conv1.weight": -state["conv1.weight"]})
    fake_repo(hf_cache, "someone/tiny-r18", "main", COMMIT_MAIN, {"model.safetensors": state})
    fake_repo(hf_cache, "someone/tiny-r18", "v1", COMMIT_V1, {"model.safetensors": v1})

    main = build("hf-hub:someone/tiny-r18")
    assert torch.equal(main.conv1.weight, state["conv1.weight"])
    for spec in ("someone/tiny-r18@v1", f"someone/tiny-r18@{COMMIT_V1}"):
        bb = build(f"hf-hub:{spec}")
        assert torch.equal(bb.conv1.weight, v1["conv1.weight"])
        assert torch.equal(bb.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
        assert bb.pretrained_cfg["hf_hub_id"] == spec


def test_hf_hub_sha256_is_checked(hf_cache: Path, state: dict[str, Tensor]) -> None:
    snapshot = fake_repo(
        hf_cache, "someone/tiny-r18", "main", COMMIT_MAIN, {"model.safetensors": state}
    )
    digest = sha256_of(snapshot / "model.safetensors")
    assert build("hf-hub:someone/tiny-r18", pretrained_sha256=digest).pretrained_report.ok
    wrong = ("0" if digest[0] != "0" else "1") * 64
    with pytest.raises(WeightsError, match=rf"hf-hub:someone/tiny-r18: sha256 {digest} does not"):
        build("hf-hub:someone/tiny-r18", pretrained_sha256=wrong)


def test_hf_hub_repo_not_cached_offline_is_a_weights_error(hf_cache: Path) -> None:
    with pytest.raises(WeightsError, match=r"hf-hub:someone/missing-r18: found none of") as info:
        build("hf-hub:someone/missing-r18")
    assert "model.safetensors" in str(info.value)
    assert "pytorch_model.bin" in str(info.value)


def test_hf_hub_repo_not_cached_offline_says_offline(hf_cache: Path) -> None:
    with pytest.raises(WeightsError) as info:
        build("hf-hub:someone/missing-r18")
    message = str(info.value)
    assert "someone/missing-r18" in message
    assert "offline" in message or "cache" in message, message
    assert "not in the repository" not in message, message


@pytest.mark.parametrize("spec", ["noslash", "a/b/c", "@main", ""])
def test_hf_hub_malformed_repo(spec: str) -> None:
    with pytest.raises(WeightsError, match=r"expected 'hf-hub:<owner>/<name>'") as info:
        build(f"hf-hub:{spec}")
    assert f"'hf-hub:{spec}' is not a hub repository" in str(info.value)


# --- 6. the URL cache: threads, distinct URLs, damaged entries ----------------------------


def _small_weights(value: float) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.full((4,), value)}, buffer)
    return buffer.getvalue()


def test_threads_fetching_one_url_all_get_the_whole_file_and_leave_no_temporaries(
    server: Server, checkpoints: Path
) -> None:
    data = _small_weights(1.0)
    server.put("model.pth", data)
    url = f"{server.url}/slow/model.pth"  # slow: every thread asks before any has the file
    start = threading.Barrier(8)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        start.wait()
        try:
            results.append(resolve_source(url, progress=False).read_bytes())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert results == [data] * 8
    assert server.hits == {"/slow/model.pth": 1}, "one download, shared by the threads"
    entry = url_cache_path(url).relative_to(checkpoints)
    assert cached(checkpoints) == [str(entry.parent), str(entry)]


def test_two_urls_with_one_file_name_never_share_a_cache_entry(
    server: Server, checkpoints: Path, state: dict[str, Tensor]
) -> None:
    (server.root / "v1").mkdir()
    (server.root / "v2").mkdir()
    flipped = dict(state, **{"conv1.weight": -state["conv1.weight"]})
    for folder, weights in (("v1", state), ("v2", flipped)):
        torch.save(weights, server.root / folder / "model.pth")
    v1, v2 = f"{server.url}/v1/model.pth", f"{server.url}/v2/model.pth"

    assert torch.equal(build(v1).conv1.weight, state["conv1.weight"])
    assert torch.equal(build(v2).conv1.weight, flipped["conv1.weight"])
    assert torch.equal(build(v1).conv1.weight, state["conv1.weight"])  # from the cache
    assert server.hits == {"/v1/model.pth": 1, "/v2/model.pth": 1}
    assert url_cache_path(v1) != url_cache_path(v2)
    assert url_cache_path(v1).name == url_cache_path(v2).name == "model.pth"
    assert len([p for p in checkpoints.rglob("*") if p.is_file()]) == 2


def test_a_file_name_with_a_hash_keeps_torchvisions_cache_name(checkpoints: Path) -> None:
    url = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert url_cache_path(url) == checkpoints / "resnet50-0676ba61.pth"
    other = url_cache_path("https://example.org/a/model.pth")
    assert other.parent.parent == checkpoints and other.parent.name.startswith("url-")


def test_damaged_cached_file_without_a_hash_is_downloaded_again(
    server: Server,
    checkpoints: Path,
    pth_bytes: bytes,
    image: Tensor,
    reference: list[Tensor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = server.put("r18.pth", pth_bytes)
    entry = url_cache_path(url)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(pth_bytes[: len(pth_bytes) // 3])  # a damaged copy in the cache

    with caplog.at_level(logging.WARNING, logger="backbones.weights"):
        bb = build(url)
    assert_matches(bb, image, reference)
    assert server.hits == {"/r18.pth": 1}
    assert entry.read_bytes() == pth_bytes
    assert any("does not read as weights" in r.getMessage() for r in caplog.records)
    assert_matches(build(url), image, reference)
    assert server.hits == {"/r18.pth": 1}


# --- 7. the hub: invalid ids before any request, an unreachable hub in seconds -----------


@pytest.fixture(autouse=True)
def _fresh_hub_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test probes its own endpoints: no answer remembered from another test."""
    from backbones.weights import sources

    monkeypatch.setattr(sources, "_HUB_PROBES", {})


@pytest.fixture
def online_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> Path:
    """huggingface_hub online, its endpoint the counting ``server`` (404 for every file)."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    return cache


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("repo", ["some one/r18", "someone/r18..v2", "some--one/r18", "a/b.git"])
def test_invalid_hub_repo_id_fails_before_any_request(
    monkeypatch: pytest.MonkeyPatch, repo: str
) -> None:
    import huggingface_hub

    calls: list[object] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a))
    with pytest.raises(WeightsError, match=r"is not a hub repository") as info:
        build(f"hf-hub:{repo}")
    assert repo in str(info.value)
    assert calls == [], "the hub client was called with an invalid repository id"


def test_unreachable_hub_fails_within_seconds_and_names_hf_hub_offline(tmp_path: Path) -> None:
    code = (
        "import time\n"
        "from backbones import create_backbone\n"
        "from backbones.weights import WeightsError\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    create_backbone('resnet18', pretrained='hf-hub:someone/missing-r18')\n"
        "except WeightsError as err:\n"
        "    print(f'{time.monotonic() - start:.1f}')\n"
        "    print(err)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seconds, message = result.stdout.split("\n", 1)
    assert float(seconds) < 15, f"took {seconds} s"
    assert "HF_HUB_OFFLINE=1" in message
    assert "hf-hub:someone/missing-r18" in message and "cannot be reached" in message
    assert "Retrying" not in result.stderr


def test_unreachable_hub_still_loads_cached_files(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state: dict[str, Tensor],
    image: Tensor,
    reference: list[Tensor],
) -> None:
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hf_constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}",
    )
    fake_repo(cache, "someone/old-r18", "main", COMMIT_MAIN, {"pytorch_model.bin": state})
    start = time.monotonic()
    bb = build("hf-hub:someone/old-r18")
    assert time.monotonic() - start < 10
    assert_matches(bb, image, reference)


def test_a_hub_that_answers_but_serves_nothing_says_so(online_hub: Path, server: Server) -> None:
    with pytest.raises(WeightsError) as info:
        build("hf-hub:someone/missing-r18")
    message = str(info.value)
    assert message.startswith("hf-hub:someone/missing-r18: found none of")
    assert f"the hub at {server.url} answered, but the files could not be fetched" in message
    assert "404" in message  # the client's hidden cause
    assert "Check the repository id, HF_ENDPOINT and the network" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_one_create_backbone_probes_the_hub_once(
    online_hub: Path,
    server: Server,
    state: dict[str, Tensor],
    image: Tensor,
    reference: list[Tensor],
) -> None:
    snapshot = fake_repo(
        online_hub, "someone/tiny-r18", "main", COMMIT_MAIN, {"model.safetensors": state}
    )
    (snapshot / "config.json").write_text(json.dumps({"pretrained_cfg": {"crop_pct": 0.95}}))
    bb = build("hf-hub:someone/tiny-r18")  # the weights, then config.json, from the cache
    assert_matches(bb, image, reference)
    assert bb.pretrained_cfg["crop_pct"] == 0.95
    assert server.hits["/"] == 1, server.hits  # the probe: HEAD of the endpoint


def test_threads_share_one_probe_of_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, online_hub: Path, server: Server
) -> None:
    from backbones.weights import sources

    barrier = threading.Barrier(6)
    answers: list[str] = []

    def probe() -> None:
        barrier.wait()
        answers.append(sources._hub_unreachable())

    threads = [threading.Thread(target=probe) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [""] * 6 and server.hits["/"] == 1
    # once the answer is older than HUB_PROBE_TTL, the endpoint is asked again
    monkeypatch.setattr(sources, "HUB_PROBE_TTL", 0.0)
    assert sources._hub_unreachable() == "" and server.hits["/"] == 2
