"""Turn a ``pretrained=`` value into a local file, and read that file safely.

Accepted sources:

* a local path to ``.safetensors``, ``.pth``, ``.pt``, ``.bin`` or ``.ckpt``;
* an ``http://`` or ``https://`` URL, downloaded once into torch's hub cache
  (``torch.hub.get_dir()/checkpoints``) and verified by sha256: a hash prefix in the file
  name (``resnet50-0676ba61.pth``, torchvision's convention) or an explicit ``sha256=``;
* ``hf-hub:<repo>[@<revision>]``, fetched by huggingface_hub into its cache (it honours
  ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``).

Pickled files are read with ``torch.load(weights_only=True)`` only, so no code in them
runs. Downloads go to a temporary file that is moved into the cache only once complete
and verified: a partial or corrupt download never sits in the cache.
"""

import hashlib
import http.client
import logging
import os
import pickle
import re
import struct
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

__all__ = ["WeightsError", "read_checkpoint", "resolve_source", "sha256_of"]

log = logging.getLogger("backbones.weights")

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
SAFETENSORS_SUFFIX = ".safetensors"
HF_PREFIX = "hf-hub:"
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_SAFETENSORS_MAGIC_MAX_HEADER = 100_000_000


class WeightsError(ValueError):
    """Weights could not be found, fetched, verified, read or loaded. The message says why."""


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
    if sha256 and not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256):
        raise WeightsError(f"sha256={sha256!r} is not a hex digest (8 to 64 hex digits)")
    if text.startswith(HF_PREFIX):
        return _from_hub(text[len(HF_PREFIX) :], sha256)
    if text.startswith(("http://", "https://")):
        return _from_url(text, sha256.lower(), progress)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"pretrained={text!r}: no such file. Accepted: True (the variant's default "
            f"weights), a weights tag of the variant, a path to .safetensors/.pth/.pt/.bin, "
            f"an http(s) URL, or 'hf-hub:<repo>'"
        )
    _check_hash(path, sha256.lower(), what=text)
    return path


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


def _from_url(url: str, sha256: str, progress: bool) -> Path:
    name = Path(urlparse(url).path).name
    if not name:
        raise WeightsError(f"pretrained={url!r}: the URL names no file")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / name
    expected = _expected_hash(url, sha256)
    if target.is_file():
        if not expected or sha256_of(target).startswith(expected):
            return target
        log.warning("cached %s fails its sha256 check; downloading it again", target)
        target.unlink()
    log.info("downloading %s to %s", url, target)
    partial = target.with_name(f".{target.name}.{os.getpid()}.download")
    try:
        # torch writes a temporary file, checks the hash, then moves it to `partial`; the
        # file enters the cache under its real name only once it also reads as weights
        # (a server that closes early can leave a short file without any error).
        torch.hub.download_url_to_file(url, str(partial), expected or None, progress=progress)
        try:
            read_checkpoint(partial)
        except WeightsError as err:
            raise WeightsError(
                f"{url}: the download is not a readable weights file (truncated or corrupt?); "
                f"it was not cached"
            ) from err
        partial.replace(target)
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
    finally:
        partial.unlink(missing_ok=True)
    return target


def _from_hub(spec: str, sha256: str) -> Path:
    repo, _, revision = spec.partition("@")
    if not repo or repo.count("/") != 1:
        raise WeightsError(
            f"'hf-hub:{spec}' is not a hub repository; expected 'hf-hub:<owner>/<name>' "
            f"with an optional '@<revision>', e.g. 'hf-hub:timm/resnet50.a1_in1k'"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    failures = []
    for filename in HF_FILENAMES:
        try:
            path = Path(hf_hub_download(repo, filename, revision=revision or None))
        except LocalEntryNotFoundError as err:  # a subclass of EntryNotFoundError: first
            failures.append(f"{filename}: not in the local cache and offline ({err})")
            continue
        except EntryNotFoundError:
            failures.append(f"{filename}: not in the repository")
            continue
        except Exception as err:  # the hub client's many network and HTTP errors
            failures.append(f"{filename}: {type(err).__name__}: {err}")
            continue
        _check_hash(path, sha256.lower(), what=f"hf-hub:{spec}")
        return path
    raise WeightsError(
        f"hf-hub:{spec}: found none of {', '.join(HF_FILENAMES)}: " + "; ".join(failures)
    )


HUB_CFG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def hub_preprocessing(spec: str) -> dict[str, Any]:
    """Pre-processing from a hub repository's ``config.json`` (timm's ``pretrained_cfg``).

    Returns only the keys in ``HUB_CFG_KEYS``, lists as tuples; an empty dict when the
    repository has no such file, or it is not cached and the hub is offline.
    """
    import json

    from huggingface_hub import hf_hub_download

    repo, _, revision = spec.partition("@")
    try:
        path = hf_hub_download(repo, "config.json", revision=revision or None)
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
    if path.suffix == SAFETENSORS_SUFFIX or _is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).lower()
        if "global" not in reason and "reduce" not in reason:  # garbage, not foreign objects
            raise WeightsError(f"{path}: not a readable checkpoint (corrupt? {err})") from None
        raise WeightsError(
            f"{path}: holds objects other than tensors and plain containers, so it was not "
            f"loaded (backbones reads pickles with torch.load(weights_only=True) only). "
            f"Re-save just the weights, e.g. torch.save(checkpoint['state_dict'], path), "
            f"or convert with `python -m backbones convert`. torch said: "
            f"{str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, struct.error) as err:
        raise WeightsError(
            f"{path}: not a readable checkpoint (corrupt or truncated? {err})"
        ) from err
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: holds a {type(checkpoint).__name__}, not a dict of weights")
    return checkpoint, {}
