"""Reliability under hostile input, by class (each case asserts the exact first error line, the
exit code, and that nothing was left behind or clobbered):

- recipes: `test_bad_recipes.py` (the corpus in tests/data/bad_recipes), `test_recipes.py` (recipe
  files, bounds, shapes), `test_fuzz_loader.py` (random YAML), `test_untrusted.py` (no code from
  recipes, plugins only from explicit places, no pickle from the hub);
- checkpoints: `test_checkpoints.py` (damaged, lying and hostile files, config.json values),
  `test_fuzz_checkpoints.py` (hypothesis: headers, index files, configs; more examples under -m slow);
- paths: `test_paths.py` (output names, outputs inside inputs, one model listed twice);
- processes: `test_processes.py` (kills at chosen and random moments, signals, two runs on one
  output, outputs appearing mid-run, full disk), with `crash_driver.py`;
- results: `test_results.py` (non-finite outputs from finite inputs), `test_determinism.py`.

Run them with `python -m pytest tests/reliability` (and `-m slow tests/reliability` for the long fuzz).
"""
