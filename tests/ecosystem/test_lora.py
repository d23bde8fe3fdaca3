"""LoRA / PEFT adapters as merge inputs, checked against peft's own merge_and_unload() on tiny
models with real peft adapters."""

from __future__ import annotations

import peft  # the dev extra installs peft: these tests never skip
import pytest
import torch
import transformers

from prefkit.errors import RecipeError
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from prefkit.testing import tiny_config
from tests.helpers import merge, write_recipe

# peft 0.21 reads a property transformers 5 deprecates (their matter, not prefkit's)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "prefkit-cache"))
    transformers.logging.set_verbosity_error()


def _roberta(path, seed=0):
    config = {k: v for k, v in tiny_config(3).items() if k != "architectures"}
    torch.manual_seed(seed)
    model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**config))
    model.save_pretrained(path)
    return model


def _adapter(model, path, seed=1, **lora):
    """Save a peft adapter for `model` and return peft's merge_and_unload() state dict (which
    changes `model` in place: compare against the base saved on disk)."""
    torch.manual_seed(seed)  # init_lora_weights=False: random A and B, so B·A is not zero
    config = peft.LoraConfig(init_lora_weights=False, **lora)
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():  # as if trained: the saved whole modules (classifier) differ too
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.1 * torch.randn(param.shape))
    peft_model.save_pretrained(path)
    return {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}


def _saved(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _single(folder, registry, method, model_line):
    """One adapted model with weight 1 (linear: alone; task arithmetic: against the base)."""
    base = "base_model: base\n" if method == "task_arithmetic" else ""
    return merge(folder, f"merge_method: {method}\n{base}models:\n  - {model_line}\n"
                 "    parameters: {weight: 1.0}\n", registry)


ROBERTA_LORA = dict(task_type="SEQ_CLS", r=4, lora_alpha=8,
                    target_modules=["query", "value", "dense", "word_embeddings"],
                    rank_pattern={"layer.1.attention.self.query": 2}, alpha_pattern={"value": 3})


def test_single_adapter_with_weight_one_is_peft_merge_and_unload(tmp_path, registry):
    merged = _adapter(_roberta(tmp_path / "base"), tmp_path / "adapter", **ROBERTA_LORA)
    out = _single(tmp_path, registry, "linear", "model: base\n    lora: adapter")
    assert set(out) == set(merged)
    for name, expected in merged.items():
        assert torch.equal(out[name], expected), name
    # the adapter really changed the targets (embedding, attention, MLP, the saved classifier)
    changed = {n for n, t in _saved(tmp_path / "base").items() if not torch.equal(t, merged[n])}
    assert {"roberta.embeddings.word_embeddings.weight",
            "roberta.encoder.layer.1.attention.self.query.weight",
            "roberta.encoder.layer.0.intermediate.dense.weight",
            "classifier.out_proj.weight"} <= changed
    assert "roberta.encoder.layer.0.attention.self.key.weight" not in changed

    arithmetic = _single(tmp_path, registry, "task_arithmetic", "model: base+adapter")
    for name, expected in merged.items():
        torch.testing.assert_close(arithmetic[name], expected, rtol=0, atol=1e-6)


# peft warns about the 1-D lora_B.bias it saves itself with lora_bias=True
@pytest.mark.filterwarnings("ignore:Adapter 'default'.*invalid shape")
def test_rslora_and_lora_bias(tmp_path, registry):
    merged = _adapter(_roberta(tmp_path / "base"), tmp_path / "adapter", r=3, lora_alpha=5,
                      target_modules=["query", "intermediate.dense"], use_rslora=True,
                      lora_bias=True)
    out = _single(tmp_path, registry, "linear", "model: base+adapter")
    for name, expected in merged.items():
        assert torch.equal(out[name], expected), name


def test_fan_in_fan_out_gpt2(tmp_path, registry):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "base")
    merged = _adapter(model, tmp_path / "adapter", r=2, lora_alpha=4,
                      target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    out = _single(tmp_path, registry, "linear", "model: base+adapter")
    assert out  # GPT-2 ties lm_head to wte: only the saved tensors are compared
    for name in out:
        assert torch.equal(out[name], merged[name]), name
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(out[name], _saved(tmp_path / "base")[name])


def test_two_adapters_merge_as_task_vectors(tmp_path, registry):
    model = _roberta(tmp_path / "base")
    lora = dict(r=2, lora_alpha=2, target_modules=["query", "value"])
    first = _adapter(model, tmp_path / "a1", seed=1, **lora)
    second = _adapter(_roberta(tmp_path / "base2"), tmp_path / "a2", seed=2, **lora)
    base = _saved(tmp_path / "base")
    out = merge(tmp_path, "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
                "  - model: base+a1\n    parameters: {weight: 0.7}\n"
                "  - {model: base, lora: a2, parameters: {weight: 0.3}}\n", registry)
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    expected = base[name] + 0.7 * (first[name] - base[name]) + 0.3 * (second[name] - base[name])
    torch.testing.assert_close(out[name], expected, rtol=0, atol=1e-6)


def test_adapted_tensors_are_cached_once(tmp_path, registry):
    _adapter(_roberta(tmp_path / "base"), tmp_path / "adapter", r=2, lora_alpha=2,
             target_modules=["query"])
    recipe = write_recipe(tmp_path, "merge_method: linear\nmodels:\n  - model: base+adapter\n"
                          "parameters: {weight: 1.0}\n")
    first = resolve(load_recipe(recipe), registry)
    cached = first.inputs[0].path
    assert first.inputs[0].label == "base+adapter"
    assert sorted(p.name for p in cached.iterdir()) == ["adapted.safetensors", "config.json"]
    stamp = (cached / "adapted.safetensors").stat().st_mtime_ns
    again = resolve(load_recipe(recipe), registry)
    assert again.inputs[0].path == cached
    assert (cached / "adapted.safetensors").stat().st_mtime_ns == stamp
    # untouched tensors are read from the base's own file, adapted ones from the cache
    files = {m.name: m.file.name for m in again.inputs[0].checkpoint.tensors.values()}
    assert files["roberta.encoder.layer.0.attention.self.query.weight"] == "adapted.safetensors"
    assert files["roberta.encoder.layer.0.attention.self.key.weight"] == "model.safetensors"


def test_adapter_for_another_model_is_one_clear_error(tmp_path, registry):
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    _adapter(gpt2, tmp_path / "adapter", r=2, lora_alpha=2, target_modules=["c_attn"],
             fan_in_fan_out=True)
    _roberta(tmp_path / "base")
    recipe = write_recipe(tmp_path, "merge_method: linear\nmodels:\n  - model: base+adapter\n"
                          "parameters: {weight: 1.0}\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml:3:5: models\[0\]\.model: adapter .*adapter: "
                       r"targets module 'transformer.h.0.attn.c_attn', but the base .*base has "
                       r"no tensor transformer.h.0.attn.c_attn.weight \(is this adapter trained"):
        resolve(load_recipe(recipe), registry)


def test_dora_is_refused(tmp_path, registry):
    _adapter(_roberta(tmp_path / "base"), tmp_path / "adapter", r=2, lora_alpha=2,
             target_modules=["query"], use_dora=True)
    recipe = write_recipe(tmp_path, "merge_method: linear\nmodels:\n  - {model: base, lora: adapter}\n"
                          "parameters: {weight: 1.0}\n")
    with pytest.raises(RecipeError, match=r"DoRA adapters \(use_dora\) cannot be merged as B·A·scale"):
        resolve(load_recipe(recipe), registry)


def test_adapter_given_twice_is_an_error(tmp_path, registry):
    _roberta(tmp_path / "base")
    recipe = write_recipe(tmp_path, "merge_method: linear\nmodels:\n"
                          "  - {model: base+x, lora: adapter}\nparameters: {weight: 1.0}\n")
    with pytest.raises(RecipeError, match=r"already names an adapter after '\+', and lora: names"):
        resolve(load_recipe(recipe), registry)
