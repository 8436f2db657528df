"""Task metrics (BLEU/chrF via sacrebleu, ROUGE via rouge-score, accuracy/macro-F1,
perplexity/bits-per-byte) and ``archlab evaluate``."""

from archlab.evaluate.metrics import (
    classification_metrics,
    length_ratio,
    lm_metrics,
    repetition_rate,
    summarization_metrics,
    translation_metrics,
)
from archlab.evaluate.runner import DecodeOptions, evaluate_run, score_task

__all__ = ["DecodeOptions", "classification_metrics", "evaluate_run", "length_ratio", "lm_metrics",
           "repetition_rate", "score_task", "summarization_metrics", "translation_metrics"]
