"""Tiny, seeded BERT classifiers with a word-level tokenizer, for evaluation tests.
Needs transformers and tokenizers (the `eval` extra)."""

from __future__ import annotations

from pathlib import Path

WORDS = ("good great fine bad awful poor cat dog bird car bus train red blue green the a is "
         "not very movie film news sport money science yes no maybe same different").split()


def save_tiny_tokenizer(path: Path, words=WORDS) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(path)


def make_tiny_classifier(path: str | Path, labels: list[str], *, seed: int = 0,
                         generic_names: bool = False, hidden: int = 16) -> Path:
    """A randomly initialised (seeded) BertForSequenceClassification with a tokenizer.

    `generic_names` writes LABEL_0..k into id2label instead of the label names.
    """
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = Path(path)
    torch.manual_seed(seed)
    names = [f"LABEL_{i}" for i in range(len(labels))] if generic_names else list(labels)
    config = transformers.BertConfig(
        vocab_size=len(WORDS) + 4, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=len(labels),
        initializer_range=0.5,  # large weights: predictions that vary with the input
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():  # bigger head weights so that predictions vary across inputs
        model.classifier.weight.normal_(0, 2.0)
    model.save_pretrained(path)
    save_tiny_tokenizer(path)
    return path
