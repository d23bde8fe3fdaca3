"""`prefkit plugins`: what each installed plugin provides, and why a plugin failed to load.
One broken plugin never hides the others."""

from __future__ import annotations

import fnmatch
import json

from click.testing import CliRunner

from prefkit.api import hookimpl
from prefkit.cli import build_cli
from prefkit.registry import load_registry
from tests.conftest import builtin_plugins
from tests.plugins.test_registry import PLUGIN_SOURCE, install_distribution, site  # noqa: F401

RAISES_IN_HOOK = '''
from prefkit.api import TensorMethod, WeightParams, hookimpl


class Half(TensorMethod):
    name = "half_registered"
    summary = "Registered before the hook raises."
    reference_url = "https://example.org"
    ModelParams = WeightParams

    def merge(self, tensors, *, base, params, model_params, info):
        return base


@hookimpl
def prefkit_register_methods(register):
    register(Half())
    raise RuntimeError("boom")
'''


def _plugins(args=("plugins", "--json")):
    return CliRunner().invoke(build_cli(), list(args))


def test_lists_installed_broken_and_raising_plugins(site):  # noqa: F811
    install_distribution(site, "prefkit-third", "prefkit_third", PLUGIN_SOURCE, version="1.2.3")
    install_distribution(site, "prefkit-third-broken", "prefkit_third_broken",
                         "raise ImportError('nope')", version="0.0.1")
    install_distribution(site, "prefkit-third-raises", "prefkit_third_raises", RAISES_IN_HOOK)
    result = _plugins()
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["prefkit_third"] == {
        "name": "prefkit_third", "distribution": "prefkit-third", "version": "1.2.3",
        "methods": ["first_model"], "tasks": [], "hooks": ["prefkit_register_methods"],
        "error": None}
    assert rows["prefkit_third_broken"] == {
        "name": "prefkit_third_broken", "distribution": "prefkit-third-broken",
        "version": "0.0.1", "methods": [], "tasks": [], "hooks": [], "error": "ImportError: nope"}
    raising = rows["prefkit_third_raises"]
    assert raising["error"] == "RuntimeError: boom" and raising["methods"] == []  # nothing half-kept
    # the others are all there
    assert rows["ties"]["methods"] == ["ties"] and rows["ties"]["distribution"] == "prefkit"
    assert rows["reference_tasks"]["tasks"] == ["ag_news", "imdb", "mnli", "mrpc"]
    assert "Warning: plugin 'prefkit_third_broken' failed to load: ImportError: nope" in result.stderr
    # a recipe naming the broken plugin's method says which plugins failed
    methods = CliRunner().invoke(build_cli(), ["methods", "--json"])
    names = {r["name"] for r in json.loads(methods.stdout)}
    assert "first_model" in names and "half_registered" not in names


def test_table_shows_versions_and_errors(site):  # noqa: F811
    install_distribution(site, "prefkit-third-broken", "prefkit_third_broken",
                         "raise ImportError('nope')", version="0.0.1")
    result = _plugins(["plugins"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for pattern in ("*prefkit_third_broken*prefkit-third-broken 0.0.1*failed: ImportError: nope*",
                    "*ties*prefkit 0.1.0*ties*ok*",
                    "*reference_tasks*ag_news, imdb, mnli, mrpc*ok*"):
        assert any(fnmatch.fnmatch(line, pattern) for line in lines), (pattern, result.stdout)


def test_ad_hoc_plugins_have_no_distribution():
    class Tasks:
        @hookimpl
        def prefkit_register_tasks(self, register):
            pass

    registry = load_registry(entry_points=False, plugins={**builtin_plugins(), "mine": Tasks()})
    result = CliRunner().invoke(build_cli(lambda: registry), ["plugins", "--json"])
    mine = next(r for r in json.loads(result.stdout) if r["name"] == "mine")
    assert mine == {"name": "mine", "distribution": None, "version": None, "methods": [],
                    "tasks": [], "hooks": ["prefkit_register_tasks"], "error": None}
