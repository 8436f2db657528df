"""Decoding: greedy, sampling and beam search with a static KV cache (``archlab generate``)."""

from archlab.generate.api import GenerationOutput, Prompt, generate, layout_prompts
from archlab.generate.config import GenerationConfig

__all__ = ["GenerationConfig", "GenerationOutput", "Prompt", "generate", "layout_prompts"]
