"""Turn a ``pretrained=`` value into a local file, and read that file safely.

Accepted sources:

* a local path to ``.safetensors``, ``.pth``, ``.pt``, ``.bin`` or ``.ckpt``;
* an ``http://`` or ``https://`` URL, downloaded once into torch's hub cache
  (``torch.hub.get_dir()/checkpoints``) and verified by sha256: a hash prefix in the file
  name (``resnet50-0676ba61.pth``, torchvision's convention) or an explicit ``sha256=``.
  A file whose name carries such a hash is cached under that name; any other URL gets a
  folder of its own (``checkpoints/url-<sha256 of the URL, 16 digits>/<name>``), so two
  URLs ending in ``model.pth`` never share a cache entry;
* ``hf-hub:<repo>[@<revision>]``, fetched by huggingface_hub into its cache (it honours
  ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``). The repository id is validated before any
  request, and a hub that cannot be reached is detected with one short request, so an
  uncached file fails in seconds instead of after the client's retries.

Pickled files are read with ``torch.load(weights_only=True)`` only, so no code in them
runs. Downloads go to a temporary file (unique per call, so threads and processes never
share one) that is moved into the cache only once complete and verified: a partial or
corrupt download never sits in the cache, and a cached copy that no longer reads as
weights is fetched again.
"""

import contextlib
import hashlib
import http.client
import json
import logging
import os
import pickle
import re
import secrets
import struct
import threading
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from backbones.errors import WeightsError

__all__ = [
    "WeightsError",
    "check_sha256",
    "read_checkpoint",
    "read_source",
    "resolve_source",
    "sha256_of",
    "url_cache_path",
    "write_atomically",
]

log = logging.getLogger("backbones.weights")

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
SAFETENSORS_SUFFIX = ".safetensors"
HF_PREFIX = "hf-hub:"
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_SAFETENSORS_MAGIC_MAX_HEADER = 100_000_000
# One short request tells a reachable hub from an unreachable one; huggingface_hub itself
# retries an uncached file for about 25 s per file before giving up.
HUB_PROBE_TIMEOUT = 5.0
HUB_PROBE_TTL = 60.0
"""Seconds a probe's answer is reused for its endpoint (long enough for one model)."""
_OFFLINE_HINT = (
    "to use cached files only, without trying the hub, set HF_HUB_OFFLINE=1 "
    "(the files must have been downloaded once while online)"
)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_source(
    source: str | os.PathLike[str], *, sha256: str = "", progress: bool = True
) -> Path:
    """A local file for ``source``: the path itself, a cached download, or a hub file.

    Args:
        source: a path, an http(s) URL or ``hf-hub:<repo>[@<revision>]``.
        sha256: the expected sha256 (full or a prefix of at least 8 hex digits).
        progress: show a progress bar while downloading.

    Raises:
        WeightsError: the file does not exist, cannot be downloaded, or fails its hash.
    """
    text = os.fspath(source)
    check_sha256(sha256)
    if text.startswith(HF_PREFIX):
        return _from_hub(text[len(HF_PREFIX) :], sha256)
    if text.startswith(("http://", "https://")):
        return _from_url(text, sha256.lower(), progress)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"pretrained={text!r}: no such file{_hub_id_hint(text) or '.'} Accepted: True (the "
            f"variant's default weights), a weights tag of the variant, a path to "
            f".safetensors/.pth/.pt/.bin, an http(s) URL, or 'hf-hub:<repo>'"
        )
    _check_hash(path, sha256.lower(), what=text)
    return path


def _hub_id_hint(text: str) -> str:
    """ "; did you mean 'hf-hub:<text>'?" when a missing path reads as a hub repository id.

    ``timm/resnet50.a1_in1k`` (one slash, a relative name whose folder does not exist,
    no weights-file suffix) is a hub id without its ``hf-hub:`` prefix far more often
    than a file.
    """
    owner, _, name = text.partition("/")
    if (
        not re.fullmatch(r"[\w.-]+/[\w.-]+", text)
        or text.startswith((".", "~"))
        or Path(owner).is_dir()
        or Path(name).suffix.lower() in (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, ".pkl")
    ):
        return ""
    return f"; did you mean '{HF_PREFIX}{text}'?"


def check_sha256(sha256: str, *, option: str = "sha256") -> None:
    """Raise WeightsError unless ``sha256`` is '' (no check) or 8 to 64 hex digits.

    Args:
        sha256: the expected hash, or a prefix of it.
        option: how the caller spells the option, named in the message.
    """
    if sha256 and not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256):
        raise WeightsError(
            f"{option}={sha256!r} is not a hex digest: give 8 to 64 hex digits of the "
            f"file's sha256 (a prefix is enough), or '' for no check"
        )


def _check_hash(path: Path, expected: str, *, what: str) -> None:
    if not expected:
        return
    digest = sha256_of(path)
    if not digest.startswith(expected):
        raise WeightsError(f"{what}: sha256 {digest} does not match the expected {expected}")


def _expected_hash(url: str, sha256: str) -> str:
    if sha256:
        return sha256
    match = _HASH_IN_NAME.search(Path(urlparse(url).path).name)
    return match.group(1) if match else ""


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write ``target`` by calling ``write(tmp)``, then renaming ``tmp`` onto it.

    ``tmp`` sits beside ``target`` under a name unique to this call (process, thread and a
    random part), so concurrent writers never share it; it is removed whatever happens,
    and a reader of ``target`` sees the old file or the whole new one, never a part.

    Raises:
        WeightsError: ``target``'s folder does not exist (it is not created: a typo in
            the path should not silently create folders).
    """
    folder = target.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise WeightsError(f"cannot write {target}: the folder {folder} {state}")
    tmp = folder / (
        f".{target.name}.{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}.tmp"
    )
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def url_cache_path(url: str) -> Path:
    """Where the download of ``url`` is cached.

    A file name with a hash (``resnet50-0676ba61.pth``) names its content, so it is the
    cache entry, as in torchvision. Any other name may be shared by unrelated URLs
    (``.../v1/model.pth``, ``.../v2/model.pth``), so the file goes into a folder named by
    a digest of the whole URL.

    Raises:
        WeightsError: the URL names no file.
    """
    name = Path(urlparse(url).path).name
    if not name:
        raise WeightsError(f"pretrained={url!r}: the URL names no file")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    if _HASH_IN_NAME.search(name):
        return cache / name
    return cache / f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}" / name


_LOCKS: dict[object, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(key: object) -> threading.Lock:
    """One lock per key (a cache entry, a hub endpoint): threads asking for one wait
    for the first, so a URL is downloaded, or an endpoint probed, once."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _from_url(url: str, sha256: str, progress: bool) -> Path:
    target = url_cache_path(url)
    expected = _expected_hash(url, sha256)
    with _lock_for(target):
        if target.is_file():
            if not expected or sha256_of(target).startswith(expected):
                return target
            log.warning("cached %s fails its sha256 check; downloading it again", target)
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, target)
        try:
            _download(url, target, expected, progress)
        except WeightsError:
            with contextlib.suppress(OSError):  # a URL's own folder, left empty: remove it
                if target.parent.name.startswith("url-"):
                    target.parent.rmdir()
            raise
    return target


def _download(url: str, target: Path, expected: str, progress: bool) -> None:
    """Download ``url`` into ``target`` once it is complete, verified and readable."""

    def fetch(partial: Path) -> None:
        # torch writes its own temporary file, checks the hash, then moves it to
        # `partial`; the file enters the cache only once it also reads as weights (a
        # server that closes early can leave a short file without any error).
        torch.hub.download_url_to_file(url, str(partial), expected or None, progress=progress)
        try:
            read_checkpoint(partial)
        except WeightsError as err:
            raise WeightsError(
                f"{url}: the download is not a readable weights file (truncated or corrupt?); "
                f"it was not cached"
            ) from err

    try:
        write_atomically(target, fetch)
    except RuntimeError as err:
        if "invalid hash value" in str(err):
            raise WeightsError(
                f"{url}: the downloaded file's sha256 does not start with {expected!r}; "
                f"it was not cached ({err})"
            ) from None
        raise WeightsError(f"{url}: download failed: {err}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        if isinstance(err, WeightsError):
            raise
        raise WeightsError(f"{url}: download failed ({type(err).__name__}: {err})") from err


def read_source(
    source: str | os.PathLike[str], *, sha256: str = "", progress: bool = True
) -> tuple[dict[str, Any], dict[str, str]]:
    """Resolve ``source`` (:func:`resolve_source`) and read it (:func:`read_checkpoint`).

    A cached download that no longer reads as weights (damaged on disk, or left by an
    older version) is deleted and downloaded once more, instead of failing on every call.

    Raises:
        WeightsError: as :func:`resolve_source` and :func:`read_checkpoint`.
    """
    path = resolve_source(source, sha256=sha256, progress=progress)
    try:
        return read_checkpoint(path)
    except WeightsError as err:
        text = os.fspath(source)
        if not text.startswith(("http://", "https://")):
            raise
        log.warning("cached %s does not read as weights (%s); downloading it again", path, err)
        path.unlink(missing_ok=True)
    return read_checkpoint(resolve_source(source, sha256=sha256, progress=progress))


def _hub_repo(spec: str) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of ``"<owner>/<name>[@<revision>]"``, validated offline.

    Raises:
        WeightsError: not a valid repository id (huggingface_hub's rules: letters, digits,
            ``-``, ``_``, ``.``, no ``--`` or ``..``), or an empty revision after ``@``.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo, at, revision = spec.partition("@")
    expected = (
        "expected 'hf-hub:<owner>/<name>' with an optional '@<revision>', "
        "e.g. 'hf-hub:timm/resnet50.a1_in1k'"
    )
    if not repo or repo.count("/") != 1:
        raise WeightsError(f"'hf-hub:{spec}' is not a hub repository; {expected}")
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise WeightsError(f"'hf-hub:{spec}' is not a hub repository ({err}); {expected}") from None
    if at and not revision.strip():
        raise WeightsError(f"'hf-hub:{spec}' has an empty revision after '@'; {expected}")
    return repo, revision or None


# The probe's answer per endpoint: (when, why unreachable or ""). One create_backbone
# call asks twice (the weights, then config.json); an endpoint that never answers would
# cost the probe's timeout each time.
# Read and written only under the endpoint's lock.
_HUB_PROBES: dict[str, tuple[float, str]] = {}


def _hub_unreachable() -> str:
    """Why the hub cannot be used now (``HF_HUB_OFFLINE``, no connection), or "" if it can.

    One request to the endpoint, without retries, with a short timeout: any HTTP answer
    means reachable. huggingface_hub's own client retries network errors for ~25 s per
    file, so asking it directly would stall a machine without network for a minute.
    The answer is remembered per endpoint for :data:`HUB_PROBE_TTL` seconds, and threads
    asking at once wait for one probe.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    with _lock_for(("hub probe", endpoint)):
        known = _HUB_PROBES.get(endpoint)
        if known is not None and time.monotonic() - known[0] < HUB_PROBE_TTL:
            return known[1]
        why = _probe_hub(endpoint)
        _HUB_PROBES[endpoint] = (time.monotonic(), why)
    return why


def _probe_hub(endpoint: str) -> str:
    """One HEAD request to ``endpoint``: "" if anything answers, else why not."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT)
    except Exception as err:  # the client's connection, DNS, proxy and timeout errors
        return f"the hub at {endpoint} cannot be reached ({type(err).__name__}: {err})"
    return ""


def _from_hub(spec: str, sha256: str) -> Path:
    repo, revision = _hub_repo(spec)  # before any request: a typo never reaches the network
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = _hub_unreachable()
    failures = []
    unfetched = 0  # files the client fell back to the cache for, while the hub answered
    for filename in HF_FILENAMES:
        try:
            path = Path(
                hf_hub_download(repo, filename, revision=revision, local_files_only=bool(offline))
            )
        except LocalEntryNotFoundError as err:  # a subclass of EntryNotFoundError: first
            # Online, the client hides why its request failed (a 404 from another
            # endpoint, a proxy's error page) in __cause__.
            cause = err.__cause__
            why = f"{type(cause).__name__}: {_first_line(cause)}" if cause else ""
            if not offline:
                unfetched += 1
            failures.append(f"{filename}: {why or 'not in the local cache'}")
            continue
        except EntryNotFoundError:
            failures.append(f"{filename}: not in the repository")
            continue
        except Exception as err:  # the hub client's many network and HTTP errors
            failures.append(f"{filename}: {type(err).__name__}: {err}")
            continue
        _check_hash(path, sha256.lower(), what=f"hf-hub:{spec}")
        return path
    found_none = f"hf-hub:{spec}: found none of {', '.join(HF_FILENAMES)}"
    if offline.startswith("HF_HUB_OFFLINE"):
        from huggingface_hub import constants

        raise WeightsError(
            f"{found_none}: {offline} and they are not in the local cache "
            f"({constants.HF_HUB_CACHE})"
        )
    if offline:
        raise WeightsError(
            f"{found_none}: {offline}, and they are not in the local cache. Check the "
            f"network, HF_ENDPOINT or the proxy settings; {_OFFLINE_HINT}"
        )
    if unfetched == len(failures):
        from huggingface_hub import constants

        raise WeightsError(
            f"{found_none}: the hub at {constants.ENDPOINT} answered, but the files could "
            f"not be fetched and are not in the local cache ({'; '.join(failures)}). "
            f"Check the repository id, HF_ENDPOINT and the network; {_OFFLINE_HINT}"
        )
    raise WeightsError(f"{found_none}: " + "; ".join(failures))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


HUB_CFG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def hub_preprocessing(spec: str) -> dict[str, Any]:
    """Pre-processing from a hub repository's ``config.json`` (timm's ``pretrained_cfg``).

    Returns only the keys in ``HUB_CFG_KEYS``, lists as tuples; an empty dict when the
    repository has no such file, or it is not cached and the hub cannot be reached.
    """
    from huggingface_hub import hf_hub_download

    try:
        repo, revision = _hub_repo(spec)
        offline = bool(_hub_unreachable())
        path = hf_hub_download(repo, "config.json", revision=revision, local_files_only=offline)
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f).get("pretrained_cfg", {})
    except Exception as err:  # optional metadata: any failure leaves the variant's values
        log.debug("no pretrained_cfg from hf-hub:%s (%s)", spec, err)
        return {}
    if not isinstance(cfg, dict):
        return {}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in HUB_CFG_KEYS}


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts like a safetensors file (a small length, then a JSON header)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size < _SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{"


def _raise_if_text(path: Path) -> None:
    """Raise a clear WeightsError if an unreadable weights file is in fact text.

    An HTML error page saved by a download tool, a Git LFS pointer or a README under a
    weights name otherwise gives a pickle opcode error that says nothing.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # a cut last character
    if not text or not all(c.isprintable() or c in "\r\n\t" for c in text):
        return
    if text.startswith("version https://git-lfs"):
        raise WeightsError(
            f"{path}: not a weights file: it is a Git LFS pointer, not the file it points "
            f"to; fetch the file itself (git lfs pull)"
        )
    first = text.strip().splitlines()[0] if text.strip() else text
    raise WeightsError(f"{path}: not a weights file: it starts with text {first[:60]!r}")


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _plain(err: Exception) -> str:
    """``err``'s message without ANSI escape codes (torch sets some in bold)."""
    return _ANSI_ESCAPE.sub("", str(err))


def _torch_reason(err: Exception) -> str:
    """The line of torch.load's refusal that names the object, without terminal codes.

    torch's message opens with general advice in ANSI bold (escape codes that print as
    garbage in logs and files); its "WeightsUnpickler error" line names the class found.
    """
    lines = [line.strip() for line in _plain(err).splitlines()]
    lines = [line for line in lines if line]
    named = [line for line in lines if "Unsupported global" in line or "Unpickler" in line]
    reason = (named or lines or [type(err).__name__])[0]
    # torch goes on with how to allowlist the class, which is not this library's advice.
    return reason.split(" Please use ", 1)[0]


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a weights file: ``(checkpoint, metadata)``; nothing in it is executed.

    safetensors files give their tensors and their metadata; pickled files give whatever
    ``torch.load(weights_only=True)`` accepts (tensors, dicts, lists, numbers, strings),
    and empty metadata.

    Raises:
        WeightsError: the file is a detectron2 ``.pkl``, holds other objects, or is corrupt.
    """
    if path.suffix == ".pkl":
        raise WeightsError(
            f"{path}: .pkl files (detectron2's model zoo) are Python pickles and are not "
            f"loaded directly, since unpickling can run code. Convert it once with "
            f"`python -m backbones convert {path} {path.with_suffix('.safetensors')}` "
            f"and load the .safetensors file"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise WeightsError(f"{path}: not a weights file: it is an empty file (0 bytes)")
    if path.suffix == SAFETENSORS_SUFFIX or _is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as err:
            _raise_if_text(path)
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).lower()
        if "global" not in reason and "reduce" not in reason:  # garbage, not foreign objects
            _raise_if_text(path)
            raise WeightsError(
                f"{path}: not a readable checkpoint (corrupt? {_plain(err)})"
            ) from None
        raise WeightsError(
            f"{path}: holds objects other than tensors and plain containers, so it was not "
            f"loaded (backbones reads pickles with torch.load(weights_only=True) only). "
            f"Re-save just the weights, e.g. torch.save(checkpoint['state_dict'], path). "
            f"torch said: {_torch_reason(err)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, struct.error) as err:
        _raise_if_text(path)
        raise WeightsError(
            f"{path}: not a readable checkpoint (corrupt or truncated? {_plain(err)})"
        ) from err
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: holds a {type(checkpoint).__name__}, not a dict of weights")
    return checkpoint, {}
