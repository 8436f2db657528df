"""archlab.data: tokenizers, user files and bundled tasks, deterministic batching."""

from archlab.data.batching import Batcher, example_length, pack_examples
from archlab.data.datasets import (
    TASKS,
    DataConfig,
    Dataset,
    TextExample,
    corpus_texts,
    load_dataset,
    tokenize_examples,
)
from archlab.data.tokenizer import Tokenizer
from archlab.data.types import Example, SpecialTokens

__all__ = [
    "TASKS",
    "Batcher",
    "DataConfig",
    "Dataset",
    "Example",
    "SpecialTokens",
    "TextExample",
    "Tokenizer",
    "corpus_texts",
    "example_length",
    "load_dataset",
    "pack_examples",
    "tokenize_examples",
]
