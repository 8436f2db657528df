"""Marian (Junczys-Dowmunt et al. 2018; transformers ``models/marian``, ``MarianMTModel``): the
original Transformer's layout.
"""

from __future__ import annotations

import math

from archlab.convert.families.bart import Bart
from archlab.convert.families.base import _close
from archlab.errors import ArchlabError


class Marian(Bart):
    """Post-norm encoder-decoder (Vaswani et al. 2017) as Marian ships it: BART's layer names
    without the embedding LayerNorm, static sinusoidal positions (sines then cosines, from
    position 0; not stored in checkpoints), embeddings scaled by sqrt(d_model) when
    ``scale_embedding``."""

    name = "marian"
    model_type = "marian"
    prefix = "model."
    architectures = ("MarianMTModel",)

    def model_config(self, hf, arch, ck):
        if hf.get("share_encoder_decoder_embeddings", True) is False:
            raise ArchlabError("marian: share_encoder_decoder_embeddings=false is not supported "
                               "(archlab shares one token embedding)")
        dv = hf.get("decoder_vocab_size")
        if dv is not None and dv != hf.get("vocab_size", 58101):
            raise ArchlabError(f"marian: decoder_vocab_size={dv} differs from vocab_size "
                               f"{hf.get('vocab_size')} (archlab has one vocabulary)")
        hf = {"vocab_size": 58101, "pad_token_id": 58100, "eos_token_id": 0,
              "decoder_start_token_id": 58100, "scale_embedding": False, "activation_function": "gelu",
              **hf}
        kw = super().model_config(hf, arch, ck)
        if kw["d_model"] % 2:
            raise ArchlabError(f"marian: d_model={kw['d_model']} is odd (archlab's sinusoid tables "
                               "need an even width)")
        kw.update(position="sinusoidal", sinusoidal_layout="halves", position_offset=0,
                  embedding_norm=False)
        return kw

    def rules(self, cfg, prefix):
        return [r for r in super().rules(cfg, prefix) if not r.ours.startswith(("encoder_embed.", "decoder_embed."))]

    def ignored(self, key):
        # the static tables (HF neither saves nor loads them) and an all-zero final_logits_bias
        return key == "final_logits_bias" or key.endswith(("encoder.embed_positions.weight",
                                                           "decoder.embed_positions.weight"))

    def problems(self, cfg):
        p = self._common_problems(cfg, arch="encoder-decoder", norm="layernorm", pre=False, final=False,
                                  embedding_norm=False, position="sinusoidal", bias=True, gated=False)
        if cfg.position == "sinusoidal" and cfg.sinusoidal_layout != "halves":
            p.append("sinusoidal_layout is interleaved (marian puts the sines first, then the cosines)")
        if cfg.d_model % 2:
            p.append(f"d_model is {cfg.d_model} (marian's table here needs an even width)")
        if not _close(cfg.norm_eps, 1e-5):
            p.append(f"norm_eps is {cfg.norm_eps} (marian's LayerNorm eps is fixed at 1e-5)")
        if cfg.attn_scale is not None and not _close(cfg.attn_scale, cfg.dim_head ** -0.5):
            p.append(f"attn_scale is {cfg.attn_scale} (marian scales by head_dim^-0.5)")
        if cfg.embed_scale != 1.0 and not _close(cfg.embed_scale, math.sqrt(cfg.d_model)):
            p.append(f"embed_scale is {cfg.embed_scale} (marian uses 1 or sqrt(d_model))")
        if cfg.lm_head_scale != 1.0:
            p.append(f"lm_head_scale is {cfg.lm_head_scale} (marian has none)")
        return p

    def prefix_for(self, arch):
        return self.prefix

    def hf_config(self, cfg, arch):
        d = super().hf_config(cfg, arch)
        d.update(decoder_vocab_size=cfg.vocab_size, share_encoder_decoder_embeddings=True)
        return d
