"""Hub references against a local fake hub (the real huggingface_hub client): revision pinning,
one-line messages naming the missing repository, revision or file, and `--offline`."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.errors import CheckpointError, RecipeError, RecipeErrors
from prefkit.io.hub import HubRef, download, offline_mode
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from tests.ecosystem.hub_fixtures import lora_delta
from tests.helpers import load_tensors, merge, write_recipe

LAYER0 = "roberta.encoder.layer.0.attention.self.query.weight"


def test_hub_reference_parts():
    assert HubRef.parse("org/name@v1.0") == HubRef("org/name", "v1.0")
    assert HubRef.parse("org/name") == HubRef("org/name", None)
    assert str(HubRef("org/name", "abc")) == "org/name@abc"


def test_revision_pinning(online, hub_files, tmp_path, registry):
    recipe = ("merge_method: task_arithmetic\nbase_model: someorg/tiny-base\nmodels:\n"
              "  - model: someorg/tiny-a{rev}\nparameters: {{weight: 1.0}}\n")
    base, v1, main = (load_tensors(hub_files["zoo"][n]) for n in ("base", "v1", "main"))
    pinned = merge(tmp_path, recipe.format(rev="@v1"), registry, output="pinned")
    latest = merge(tmp_path, recipe.format(rev=""), registry, output="latest")
    torch.testing.assert_close(pinned[LAYER0], v1[LAYER0], rtol=0, atol=1e-6)
    torch.testing.assert_close(latest[LAYER0], main[LAYER0], rtol=0, atol=1e-6)
    assert not torch.allclose(v1[LAYER0], main[LAYER0])
    # a commit hash pins too (what `@v1` resolved to)
    path = download("someorg/tiny-a@v1")
    assert download(f"someorg/tiny-a@{path.name}") == path
    assert torch.equal(base[LAYER0], load_tensors(download("someorg/tiny-base"))[LAYER0])


@pytest.mark.parametrize("ref, message", [
    ("someorg/absent", r"base_model: model 'someorg/absent' is not a local folder and the Hugging "
     r"Face hub has no repository 'someorg/absent' \(or it is private and you are not logged in\) "
     r"\(check the hub id and revision"),
    ("someorg/tiny-base@v9", r"base_model: model 'someorg/tiny-base@v9' is not a local folder and "
     r"the hub repository 'someorg/tiny-base' has no revision 'v9'"),
    ("someorg/no-weights", r"base_model: model 'someorg/no-weights': .*snapshots.* has no weights "
     r"\(no \*.safetensors\) \(the hub repo has no such weights"),
])
def test_missing_repo_revision_or_file_is_one_located_line(online, tmp_path, registry, ref, message):
    recipe = write_recipe(tmp_path, f"merge_method: task_arithmetic\nbase_model: {ref}\nmodels:\n"
                          "  - model: someorg/tiny-a\nparameters: {weight: 1.0}\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml:2:1: " + message):
        resolve(load_recipe(recipe), registry)


def test_offline_flag_uses_the_cache_only(online, tmp_path, registry):
    recipe = write_recipe(tmp_path, "merge_method: task_arithmetic\nbase_model: someorg/tiny-base\n"
                          "models:\n  - model: someorg/tiny-a@v1\nparameters: {weight: 1.0}\n")
    cli = build_cli(lambda: registry)
    result = CliRunner().invoke(cli, ["--offline", "plan", str(recipe)])
    assert result.exit_code == 3
    assert online.requests == []  # the hub was reachable, and never asked
    assert result.stderr.splitlines() == [
        "Error: the Hugging Face hub is offline or unreachable, and 2 models are not in its cache "
        f"({tmp_path / 'hf-cache'}): run `prefkit fetch RECIPE` where the hub is reachable, or "
        "point HF_HOME at a cache that has them",
        f"  {recipe}:2:1: base_model: someorg/tiny-base",
        f"  {recipe}:4:5: models[0].model: someorg/tiny-a@v1"]
    # one model missing: its own full line, with the cache folder and what to do
    single = write_recipe(tmp_path, "merge_method: task_arithmetic\nbase_model: someorg/tiny-base\n"
                          "models:\n  - model: " + str(tmp_path / "hf-cache") + "\n"
                          "parameters: {weight: 1.0}\n", "single.yaml")
    result = CliRunner().invoke(cli, ["--offline", "plan", str(single)])
    assert result.stderr.startswith(
        f"Error: {single}:2:1: base_model: model 'someorg/tiny-base' is not a local folder and it is "
        "not in the Hugging Face cache, and the hub is offline or unreachable ('someorg/tiny-base' "
        "is not under ")
    assert "prefkit fetch RECIPE" in result.stderr and "Traceback" not in result.stderr
    assert "HF_HUB_OFFLINE" not in os.environ  # restored when the command ended
    # once fetched, the same command works offline
    result = CliRunner().invoke(cli, ["fetch", "--no-datasets", str(recipe)])
    assert result.exit_code == 0, result.stderr
    asked = len(online.requests)
    result = CliRunner().invoke(cli, ["--offline", "plan", "--json", str(recipe)])
    assert result.exit_code == 0, result.stderr
    assert len(online.requests) == asked


def test_offline_mode_restores_the_environment(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with offline_mode():  # huggingface_hub is imported already: its own flag follows
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "0" and constants.HF_HUB_OFFLINE is False


def test_adapter_from_the_hub(online, hub_files, tmp_path, registry):
    out = merge(tmp_path, "merge_method: task_arithmetic\nbase_model: someorg/tiny-base\nmodels:\n"
                "  - model: someorg/tiny-base+someorg/tiny-lora\nparameters: {weight: 1.0}\n",
                registry)
    base = load_tensors(hub_files["zoo"]["base"])
    torch.testing.assert_close(out[LAYER0], base[LAYER0] + lora_delta(hub_files["adapter"], 0),
                               rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match=r"adapter 'someorg/tiny-base': .* has no "
                       r"adapter_config.json \(give a folder saved with peft's save_pretrained"):
        from prefkit.io.hub import fetch_adapter

        fetch_adapter("someorg/tiny-base")


def test_an_unreachable_hub_is_probed_once_and_the_cache_used(online, tmp_path, registry,
                                                               monkeypatch, caplog):
    """No offline setting, and nothing listens at the endpoint: one connection attempt for the
    whole recipe, no request and no retry log line, and each missing model is one located line."""
    import socket

    from prefkit.io import hub

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    hub._accepts_connections.cache_clear()
    attempts = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection",
                        lambda address, *a, **k: attempts.append(address) or real(address, *a, **k))
    recipe = write_recipe(tmp_path, "merge_method: task_arithmetic\nbase_model: someorg/tiny-base\n"
                          "models:\n  - model: someorg/tiny-a@v1\nparameters: {weight: 1.0}\n")
    caplog.set_level("DEBUG")
    with pytest.raises(RecipeErrors) as caught:
        resolve(load_recipe(recipe), registry)
    assert attempts == [("127.0.0.1", int(closed.rsplit(":", 1)[1]))]
    assert online.requests == []
    lines = str(caught.value).splitlines()
    assert lines == [
        "the Hugging Face hub is offline or unreachable, and 2 models are not in its cache "
        f"({tmp_path / 'hf-cache'}): run `prefkit fetch RECIPE` where the hub is reachable, or "
        "point HF_HOME at a cache that has them",
        f"  {recipe}:2:1: base_model: someorg/tiny-base",
        f"  {recipe}:4:5: models[0].model: someorg/tiny-a@v1"]
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert hub.hub_reachable() is False and len(attempts) == 1  # decided once per endpoint


def test_a_reachable_hub_is_used(online):
    from prefkit.io import hub

    hub._accepts_connections.cache_clear()
    assert hub.hub_reachable() is True
    with offline_mode():
        assert hub.hub_reachable() is False  # an explicit offline setting needs no probe


def test_a_missing_absolute_path_names_only_what_was_checked(tmp_path):
    from prefkit.io.hub import resolve_model

    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(CheckpointError) as caught:
        resolve_model(str(missing), tmp_path / "recipes")
    assert str(caught.value) == (f"model {str(missing)!r}: no such folder (give an existing folder "
                                 "or a hub id such as org/name[@revision])")
    (tmp_path / "zoo").mkdir()  # zoo/x is then a local path with a typo, not a hub id
    with pytest.raises(CheckpointError, match=r"'zoo/x': no such folder \(looked in "):
        resolve_model("zoo/x", tmp_path)  # a relative path: both places it was looked for
