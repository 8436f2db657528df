"""Tiny random Hugging Face checkpoints of every supported family, made with ``transformers``.

Every parameter (biases, norm weights and BART's final_logits_bias included) is drawn at random,
so a weight copied to the wrong place, or not at all, changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

V = 101  # vocabulary of the tiny models

# name -> (HF class, config class, config kwargs)
SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert-mlm": ("BertForMaskedLM", "BertConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu")),
    "bert-model": ("BertModel", "BertConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
        max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu_new", layer_norm_eps=1e-7)),
    "bert-cls": ("BertForSequenceClassification", "BertConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, num_labels=3)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=48, bos_token_id=V - 1,
        eos_token_id=V - 1)),
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=37, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "llama-tied": ("LlamaForCausalLM", "LlamaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=12, intermediate_size=40, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2)),
    "t5": ("T5ForConditionalGeneration", "T5Config", dict(
        vocab_size=V, d_model=32, d_kv=6, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="relu",
        decoder_start_token_id=0)),
    "t5-v1.1": ("T5ForConditionalGeneration", "T5Config", dict(
        vocab_size=V, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)),
    "bart": ("BartForConditionalGeneration", "BartConfig", dict(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=40,
        scale_embedding=True, forced_eos_token_id=None)),
    # Mixtral: Llama block with a top-2 of 4 experts MoE feed-forward (GQA, untied head)
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # Switch Transformers: T5 blocks, top-1 switch MoE in encoder layers 1, 3 and decoder layer 1
    # (expert_capacity 64 per sequence: nothing drops at these lengths)
    "switch": ("SwitchTransformersForConditionalGeneration", "SwitchTransformersConfig", dict(
        vocab_size=V, d_model=32, d_kv=8, d_ff=40, num_layers=4, num_sparse_encoder_layers=2,
        num_decoder_layers=2, num_sparse_decoder_layers=1, num_heads=4, num_experts=4, expert_capacity=64,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)),
    # bart-base style: no embedding scale, all-zero final_logits_bias (see make)
    "bart-plain": ("BartForConditionalGeneration", "BartConfig", dict(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=40,
        activation_function="relu", forced_eos_token_id=None)),
    # sliding window 4 < the test sequences: the window shapes every output
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=37, max_position_embeddings=64, rms_norm_eps=1e-5, sliding_window=4,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # padding_idx 1 (RoBERTa's): positions start at row 2 and count non-pad ids
    "roberta-mlm": ("RobertaForMaskedLM", "RobertaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=42, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "roberta-model": ("RobertaModel", "RobertaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
        max_position_embeddings=42, type_vocab_size=2, hidden_act="gelu_new", layer_norm_eps=1e-7,
        pad_token_id=1)),
    "roberta-cls": ("RobertaForSequenceClassification", "RobertaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=42, type_vocab_size=1, num_labels=3, pad_token_id=1)),
    "distilbert-mlm": ("DistilBertForMaskedLM", "DistilBertConfig", dict(
        vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40)),
    "distilbert-model": ("DistilBertModel", "DistilBertConfig", dict(
        vocab_size=V, dim=32, n_layers=2, n_heads=2, hidden_dim=40, max_position_embeddings=40,
        sinusoidal_pos_embds=True, activation="relu")),
    "distilbert-cls": ("DistilBertForSequenceClassification", "DistilBertConfig", dict(
        vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40,
        num_labels=3)),
    "marian": ("MarianMTModel", "MarianConfig", dict(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=40,
        scale_embedding=True, pad_token_id=0, eos_token_id=2, bos_token_id=None,
        decoder_start_token_id=0, forced_eos_token_id=None, activation_function="swish")),
}

FAMILY = {"bert-mlm": "bert", "bert-model": "bert", "bert-cls": "bert", "gpt2": "gpt2", "llama": "llama",
          "llama-tied": "llama", "t5": "t5", "t5-v1.1": "t5", "bart": "bart",
          "bart-plain": "bart", "mistral": "mistral", "roberta-mlm": "roberta", "roberta-model": "roberta",
          "roberta-cls": "roberta", "distilbert-mlm": "distilbert", "distilbert-model": "distilbert",
          "distilbert-cls": "distilbert", "marian": "marian", "mixtral": "mixtral",
          "switch": "switch_transformers"}
SEQ2SEQ = ("t5", "t5-v1.1", "bart", "bart-plain", "marian", "switch")
DECODERS = ("gpt2", "llama", "llama-tied", "mistral", "mixtral")
PAD = {"roberta-mlm": 1, "roberta-model": 1, "roberta-cls": 1}  # the pad id of the test batches


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.15, *, buffers: bool = True) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
            if name.endswith(("LayerNorm.weight", "layer_norm.weight", "ln_1.weight", "ln_2.weight",
                              "ln_f.weight", "layernorm.weight", "norm.weight", "layernorm_embedding.weight")):
                p.add_(1.0)  # norms near identity keep activations in a sane range
        for name, b in model.named_buffers():
            if name == "final_logits_bias" and buffers:
                b.copy_(torch.randn(b.shape, generator=g))


def make(name: str, path: Path, **overrides: Any) -> Any:
    """Build the named tiny HF model with random weights, save it to ``path``, return it (eval)."""
    import transformers

    cls_name, cfg_name, kwargs = SPECS[name]
    cfg = getattr(transformers, cfg_name)(**{**kwargs, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(cfg)
    if name == "t5-v1.1":  # T5 v1.1 has its own output matrix (transformers >= 5 ties by default)
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    randomize(model, buffers=name != "bart-plain")
    model.eval()
    model.save_pretrained(path)
    if name == "marian":  # its static sinusoid tables are not saved: compare with what HF loads
        return load_hf(path, name)
    return model


def load_hf(path: Path, name: str) -> Any:
    import transformers

    cls_name = SPECS[name][0]
    return getattr(transformers, cls_name).from_pretrained(path).eval()


def batch(seed: int = 1, B: int = 3, T: int = 9, *, left: bool = False,
          pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (avoiding ids 0-2) with padding of different lengths in the batch."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n_pad in enumerate([0, 3, 5][:B]):
        if n_pad:
            if left:
                mask[b, :n_pad] = 0
            else:
                mask[b, T - n_pad:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    return ids, mask


def left_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left padding, as HF generate computes them."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def greedy(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           eos: int | None = None, **options: Any) -> torch.Tensor:
    """archlab.generate (raw prompts, cached) laid out as HF ``generate`` returns it:
    decoder-only gives prompt + new tokens (left-padded prompts), encoder-decoder the start
    token + new tokens; rows that finished early continue with pad up to the longest row."""
    from archlab.generate import generate

    cfg = model.cfg
    pad = cfg.pad_token_id
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
    out = generate(model, prompts, prompt_layout="raw", max_new_tokens=max_new_tokens,
                   eos_token_id=eos, **options)
    eos = cfg.eos_token_id if eos is None else eos
    new = [s + [eos] if f else s for s, f in zip(out.sequences, out.finished)]
    width = max(len(s) for s in new)
    new_t = torch.tensor([s + [pad] * (width - len(s)) for s in new], dtype=torch.long)
    B = new_t.shape[0]
    if cfg.arch == "encoder-decoder":
        head = torch.full((B, 1), cfg.start_token_id, dtype=torch.long)
    else:
        head = input_ids.repeat_interleave(B // input_ids.shape[0], dim=0)
    return torch.cat([head, new_t], 1)
