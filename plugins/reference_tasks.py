"""The reference setup's tasks: AG News, IMDB, MNLI and MRPC, with the hub datasets that
roberta-base was fine-tuned and is evaluated on.

Label orders of the textattack models: their `config.json` files name labels `LABEL_0..k`, so the
order is taken from TextAttack's documented dataset mapping (`textattack/dataset_args.py`,
HUGGINGFACE_DATASET_BY_MODEL): AG News, IMDB and MRPC models predict in the dataset's order; the
MNLI models were trained with the label map {0: 1, 1: 2, 2: 0} (dataset → model), so they predict
(contradiction, entailment, neutral). TextAttack's table lists that map for its BERT and DistilBERT
MNLI models; prefkit applies it to textattack/roberta-base-MNLI too. A recipe can always state a
model's order with `labels:`.
"""

from __future__ import annotations

from prefkit.api import Task, hookimpl

TEXTATTACK_MNLI_ORDER = ("contradiction", "entailment", "neutral")

TASKS = [
    Task(
        name="ag_news",
        dataset="wangrongsheng/ag_news",
        text_fields=("text",),
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        splits={"train": "train", "test": "test"},
        summary="News topic classification, 4 classes.",
        source="AG's corpus of news articles (Zhang et al. 2015), via the Hugging Face hub",
        known_label_orders={"textattack/roberta-base-ag-news": ("World", "Sports", "Business",
                                                               "Sci/Tech")},
    ),
    Task(
        name="imdb",
        dataset="stanfordnlp/imdb",
        text_fields=("text",),
        label_names=("neg", "pos"),
        splits={"train": "train", "test": "test"},
        summary="Movie review sentiment, 2 classes.",
        source="Large Movie Review Dataset (Maas et al. 2011), via the Hugging Face hub",
        known_label_orders={"textattack/roberta-base-imdb": ("neg", "pos")},
    ),
    Task(
        name="mnli",
        dataset="SetFit/mnli",
        text_fields=("text1", "text2"),
        label_names=("entailment", "neutral", "contradiction"),
        splits={"train": "train", "validation": "validation", "test": "validation"},
        summary="Natural language inference (premise, hypothesis), 3 classes.",
        source="MultiNLI (Williams et al. 2018), GLUE version via SetFit on the Hugging Face hub; "
        "its test labels are hidden, so evaluation uses the matched validation split",
        known_label_orders={"textattack/roberta-base-MNLI": TEXTATTACK_MNLI_ORDER},
    ),
    Task(
        name="mrpc",
        dataset="SetFit/mrpc",
        text_fields=("text1", "text2"),
        label_names=("not_equivalent", "equivalent"),
        splits={"train": "train", "validation": "validation", "test": "test"},
        summary="Paraphrase detection (sentence pair), 2 classes.",
        source="Microsoft Research Paraphrase Corpus (Dolan & Brockett 2005), GLUE via SetFit",
        known_label_orders={"textattack/roberta-base-MRPC": ("not_equivalent", "equivalent")},
    ),
]


@hookimpl
def prefkit_register_tasks(register):
    for task in TASKS:
        register(task)
