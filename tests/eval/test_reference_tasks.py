"""The reference tasks' loading code on local files in their hub datasets' format."""

from __future__ import annotations

import dataclasses
import json

import pytest
from prefkit.plugins.reference_tasks import TASKS

from prefkit.eval.data import examples, load_split, subset_indices
from prefkit.eval.labels import label_order

pytest.importorskip("datasets")
BY_NAME = {t.name: t for t in TASKS}

# One row per hub dataset, with the columns that dataset has (extra columns included).
ROWS = {
    "ag_news": [{"text": "Stocks rally on rate hopes", "label": 2},
                {"text": "Team wins the cup", "label": 1}],
    "imdb": [{"text": "A wonderful film.", "label": 1}, {"text": "Dull and long.", "label": 0}],
    "mnli": [{"text1": "A man sleeps.", "text2": "A person rests.", "label": 0,
              "idx": 0, "label_text": "entailment"},
             {"text1": "A man sleeps.", "text2": "A man runs.", "label": 2,
              "idx": 1, "label_text": "contradiction"}],
    "mrpc": [{"text1": "He left.", "text2": "He went away.", "label": 1, "idx": 0,
              "label_text": "equivalent"}],
}
TEXTATTACK = {"ag_news": "textattack/roberta-base-ag-news", "imdb": "textattack/roberta-base-imdb",
              "mnli": "textattack/roberta-base-MNLI", "mrpc": "textattack/roberta-base-MRPC"}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_reference_task_reads_its_hub_format(tmp_path, name):
    file = tmp_path / f"{name}.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in ROWS[name]))
    task = dataclasses.replace(BY_NAME[name], dataset="json",
                               data_files={"test": str(file)}, splits={"test": "test"})
    dataset = load_split(task, "test")
    texts, labels = examples(task, dataset, subset_indices(len(dataset), None, 0))
    assert labels == [r["label"] for r in ROWS[name]]
    assert texts[0] == tuple(ROWS[name][0][f] for f in task.text_fields)
    generic = {str(i): f"LABEL_{i}" for i in range(task.num_labels)}
    order = label_order(task, id2label=generic, model_id=TEXTATTACK[name])
    if name == "mnli":  # TextAttack's MNLI label map {0: 1, 1: 2, 2: 0} (dataset → model)
        assert [task.label_names[i] for i in order] == ["contradiction", "entailment", "neutral"]
        assert order == [2, 0, 1]
    else:
        assert order == list(range(task.num_labels))
