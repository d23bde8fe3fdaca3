"""Model references: a local folder, or a hub id fetched into the standard Hugging Face cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prefkit.errors import CheckpointError

TOKENIZER_FILES = [
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "*.model",
]
_FINAL_HUB_ERRORS = {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


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


def fetch_model(ref: str, allow_pickle: bool = False) -> Path:
    """Download (or find in the cache) the weights, config and tokenizer of a hub model.

    Only safetensors weights are fetched, unless `allow_pickle` lets a repo with only
    `pytorch_model*.bin` give those. With `HF_HUB_OFFLINE=1` only the local cache is used.
    """
    from huggingface_hub import HfApi, snapshot_download

    repo_id, _, revision = ref.partition("@")
    revision = revision or None
    # read the environment now: huggingface_hub reads it once, at import
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    try:
        weights = ["*.safetensors", "model.safetensors.index.json"]
        if allow_pickle:  # pickle files can run code when loaded: only when the user says so
            weights += ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
        if not offline:
            try:
                files = HfApi().list_repo_files(repo_id, revision=revision)
                if any(f.endswith(".safetensors") for f in files):  # never download both
                    weights = weights[:2]
            except Exception as exc:
                if type(exc).__name__ in _FINAL_HUB_ERRORS:
                    raise
                offline = True  # unreachable: fall back to the cache
        path = Path(snapshot_download(
            repo_id, revision=revision, local_files_only=offline, cache_dir=cache_dir,
            allow_patterns=[*weights, "config.json", *TOKENIZER_FILES],
        ))
    except Exception as exc:
        raise CheckpointError(f"model {ref!r} is not a local folder and {_why(exc)}",
                              hint="check the path or hub id; offline, set HF_HUB_OFFLINE=1 and "
                              "download it first into the HF cache (`prefkit fetch` or `hf download`)"
                              ) from exc
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise CheckpointError(f"model {ref!r}: the hub repo has no safetensors weights"
                              + ("" if allow_pickle else " (pass --allow-pickle to fetch .bin ones)"))
    return path


def _why(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "RepositoryNotFoundError":
        return "no such repository on the Hugging Face hub (or it is private and you are not logged in)"
    if name == "RevisionNotFoundError":
        return "the hub repository has no such revision"
    if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return "it is not in the Hugging Face cache, and the hub is offline or unreachable"
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"could not be fetched from the Hugging Face hub ({name}{': ' + text if text else ''})"


def resolve_model(ref: str, recipe_dir: Path, allow_pickle: bool = False) -> Path:
    """Turn a recipe's `model:` string into a local checkpoint folder."""
    local = resolve_local(ref, recipe_dir)
    if local is not None:
        return local
    if is_hub_id(ref) and not _looks_local(ref, recipe_dir):
        return fetch_model(ref, allow_pickle)
    raise CheckpointError(
        f"model {ref!r}: no such folder (looked in {recipe_dir} and {Path.cwd()})",
        hint="give a checkpoint folder or a hub id such as org/name",
    )
