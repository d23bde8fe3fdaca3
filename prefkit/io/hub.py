"""Model references: a local folder, or a hub id fetched into the standard Hugging Face cache.

A hub reference is `org/name` or `org/name@revision` (a branch, tag or commit hash; mergekit's
syntax). Downloads go through `huggingface_hub.snapshot_download`, so they land in the usual cache
(`HF_HUB_CACHE`, `HF_HOME`) and a later offline run finds them. Offline (`prefkit --offline` or
`HF_HUB_OFFLINE=1`) only the cache is used; `prefkit fetch RECIPE` fills it ahead of time.
`HF_ENDPOINT` points the client at a mirror.

Whether the hub can be reached is decided once per endpoint and process (`hub_reachable`): with
no offline setting, one TCP connection to the endpoint with a short timeout. An unreachable hub is
then treated as offline (the cache only), so a compute node without internet fails in a second
instead of after huggingface_hub's retries, and those retries' log lines never reach the user.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefkit.errors import CheckpointError, NotCachedError

TOKENIZER_FILES = [
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "*.model",
]
WEIGHT_FILES = ["*.safetensors", "model.safetensors.index.json"]
PICKLE_WEIGHT_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
PICKLE_ADAPTER_FILES = ["adapter_model.bin"]
Kind = Literal["model", "adapter", "dataset"]
_FINAL_HUB_ERRORS = {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"}
_NOT_CACHED = {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}  # offline, and not in the cache
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_TRUE = ("1", "true", "yes", "on")
_LIBRARY_FLAGS = ("huggingface_hub.constants", "datasets.config")  # modules with HF_HUB_OFFLINE
DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 1.5  # seconds for the one connection that tells whether the hub is reachable


@dataclass(frozen=True)
class HubRef:
    """`org/name[@revision]`, split."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, ref: str) -> HubRef:
        repo_id, _, revision = ref.partition("@")
        return cls(repo_id, revision or None)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def is_offline() -> bool:
    """Read now, not at import: huggingface_hub reads `HF_HUB_OFFLINE` once, when imported."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def hub_reachable() -> bool:
    """False when offline is set (`--offline`, `HF_HUB_OFFLINE`) or the endpoint (`HF_ENDPOINT`,
    default the hub) does not accept a TCP connection within PROBE_TIMEOUT; probed once per
    endpoint and process. (A name lookup that hangs is not bounded by the timeout; one that fails,
    as on a node without DNS, fails at once.)"""
    return not is_offline() and _accepts_connections(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)


@functools.cache
def _accepts_connections(endpoint: str) -> bool:
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT):
            return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def quiet_hub_logging() -> Iterator[None]:
    """huggingface_hub logs each retry of a failing request as a warning; prefkit reports the
    outcome as one error instead."""
    logger = logging.getLogger("huggingface_hub")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """`HF_HUB_OFFLINE=1` for the duration, restored afterwards.

    huggingface_hub and datasets read the variable once, when imported; if they already are
    (prefkit used from Python, tests), their flags are switched too.
    """
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    flags = [(module, module.HF_HUB_OFFLINE) for name in _LIBRARY_FLAGS
             if hasattr(module := sys.modules.get(name), "HF_HUB_OFFLINE")]
    for module, _ in flags:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in flags:
            module.HF_HUB_OFFLINE = value
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def resolve_local(ref: str, recipe_dir: Path) -> Path | None:
    """A local folder for `ref`: relative to the recipe's folder first, then the working directory."""
    candidate = Path(ref).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for root in (recipe_dir, Path.cwd()):
        if (root / candidate).exists():
            return (root / candidate).resolve()
    return None


def _looks_local(ref: str, recipe_dir: Path) -> bool:
    """`zoo/base` where a folder `zoo/` exists here is a local path with a typo, not a hub id."""
    first = Path(ref).parts[0]
    return (recipe_dir / first).is_dir() or (Path.cwd() / first).is_dir()


def is_hub_id(ref: str) -> bool:
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def cache_location() -> str:
    """Where huggingface_hub keeps downloads (for messages)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def download(ref: str, kind: Kind = "model", *, offline: bool | None = None,
             allow_pickle: bool = False) -> Path:
    """Download a hub repository's files that prefkit needs (or find them in the cache).

    A model gets its weights (safetensors; `pytorch_model*.bin` only with `allow_pickle` and when
    the repo has no safetensors), config and tokenizer; an adapter its `adapter_config.json`,
    weights and tokenizer; a dataset everything. Offline, only the cache is used.

    Raises:
        CheckpointError: naming the repository, revision and what is missing.
    """
    hub = HubRef.parse(ref)
    offline = (not hub_reachable()) if offline is None else offline
    endpoint = os.environ.get("HF_ENDPOINT") or None
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    pickles = {"model": PICKLE_WEIGHT_FILES, "adapter": PICKLE_ADAPTER_FILES, "dataset": []}[kind]
    patterns: list[str] | None = {
        "model": [*WEIGHT_FILES, "config.json", *TOKENIZER_FILES],
        "adapter": [*ADAPTER_FILES, *TOKENIZER_FILES],
        "dataset": None,
    }[kind]
    if allow_pickle and patterns is not None:
        patterns += pickles
    try:
        with quiet_hub_logging():
            return _snapshot(hub, kind, offline, patterns, pickles, endpoint, cache_dir)
    except Exception as exc:
        message = f"{kind} {ref!r} is not a local folder and {_why(exc, hub)}"
        if type(exc).__name__ in _NOT_CACHED:
            raise NotCachedError(message, ref=ref, cache=cache_location(), hint=_hint(exc)) from exc
        raise CheckpointError(message, hint=_hint(exc)) from exc


def _snapshot(hub: HubRef, kind: Kind, offline: bool, patterns, pickles, endpoint, cache_dir) -> Path:
    """The repository's snapshot folder (downloaded, or from the cache when `offline`)."""
    from huggingface_hub import HfApi, snapshot_download

    if kind == "model" and not offline:
        try:
            files = HfApi(endpoint=endpoint).list_repo_files(hub.repo_id, revision=hub.revision)
            if any(f.endswith(".safetensors") for f in files):  # never download both
                patterns = [p for p in patterns if p not in pickles]
        except Exception as exc:
            if type(exc).__name__ in _FINAL_HUB_ERRORS:
                raise
            offline = True  # unreachable after all: fall back to the cache
    return Path(snapshot_download(
        hub.repo_id, repo_type=None if kind != "dataset" else "dataset",
        revision=hub.revision, local_files_only=offline, cache_dir=cache_dir,
        endpoint=endpoint, allow_patterns=patterns,
    ))


def _why(exc: Exception, hub: HubRef) -> str:
    name = type(exc).__name__
    if name == "RepositoryNotFoundError":
        return (f"the Hugging Face hub has no repository {hub.repo_id!r} (or it is private and "
                "you are not logged in)")
    if name == "RevisionNotFoundError":
        return f"the hub repository {hub.repo_id!r} has no revision {hub.revision!r}"
    if name == "GatedRepoError":
        return f"the hub repository {hub.repo_id!r} is gated (accept its terms on the hub)"
    if name in _NOT_CACHED:
        what = f"revision {hub.revision!r} of {hub.repo_id!r}" if hub.revision else repr(hub.repo_id)
        return (f"it is not in the Hugging Face cache, and the hub is offline or unreachable "
                f"({what} is not under {cache_location()})")
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"could not be fetched from the Hugging Face hub ({name}{': ' + text if text else ''})"


def _hint(exc: Exception) -> str:
    if type(exc).__name__ in _FINAL_HUB_ERRORS:
        return "check the hub id and revision (org/name@revision), or give a local folder"
    return ("download it first where the hub is reachable: `prefkit fetch RECIPE` (or "
            "`hf download`), into the same cache (HF_HOME / HF_HUB_CACHE)")


def fetch_model(ref: str, allow_pickle: bool = False) -> Path:
    """A hub model's snapshot folder, with at least one weights file."""
    path = download(ref, "model", allow_pickle=allow_pickle)
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        what = "*.safetensors or pytorch_model*.bin" if allow_pickle else "*.safetensors"
        raise CheckpointError(
            f"model {ref!r}: {path} has no weights (no {what})",
            hint="the hub repo has no such weights (pickle-only repos need --allow-pickle), or the "
            "cached download is incomplete: run `prefkit fetch RECIPE` where the hub is reachable")
    return path


def fetch_adapter(ref: str, allow_pickle: bool = False) -> Path:
    """A hub PEFT adapter's snapshot folder, with its adapter_config.json."""
    path = download(ref, "adapter", allow_pickle=allow_pickle)
    if not (path / "adapter_config.json").exists():
        raise CheckpointError(f"adapter {ref!r}: {path} has no adapter_config.json",
                              hint="give a folder saved with peft's save_pretrained()")
    return path


def resolve_model(ref: str, recipe_dir: Path, allow_pickle: bool = False, *,
                  kind: Kind = "model") -> Path:
    """Turn a recipe's `model:` (or `lora:`) string into a local folder."""
    local = resolve_local(ref, recipe_dir)
    if local is not None:
        return local
    if is_hub_id(ref) and not _looks_local(ref, recipe_dir):
        fetch = fetch_adapter if kind == "adapter" else fetch_model
        return fetch(ref, allow_pickle)
    if Path(ref).expanduser().is_absolute():  # only that path was checked
        raise CheckpointError(f"{kind} {ref!r}: no such folder",
                              hint="give an existing folder or a hub id such as org/name[@revision]")
    raise CheckpointError(
        f"{kind} {ref!r}: no such folder (looked in {recipe_dir} and {Path.cwd()})",
        hint="give a folder or a hub id such as org/name[@revision]",
    )
