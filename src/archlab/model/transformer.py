"""One ``Stack`` of blocks, and every family as a composition of it.

- encoder-only (BERT; Devlin et al. 2019): one bidirectional stack + MLM head;
- decoder-only (GPT; Radford et al. 2018): one causal stack + LM head;
- prefix-LM (non-causal decoder; Raffel et al. 2020 Sec. 3.2.1): the same stack with a
  prefix mask;
- encoder-decoder (Vaswani et al. 2017; T5; BART): a bidirectional stack and a causal stack
  whose blocks add cross-attention to the encoder output.

The model returns hidden states or logits; losses live in ``archlab.objectives``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archlab.config import ModelConfig
from archlab.model.attention import Attention, KVCache, StaticKVCache
from archlab.model.cache import StackCache
from archlab.model.layers import (
    MLP,
    RelativePositionBias,
    RMSNorm,
    Rotary,
    activation_fn,
    alibi_bias,
    alibi_slopes,
    make_norm,
    sinusoidal_table,
)
from archlab.model.masks import AttnMask, MaskKind, build_mask
from archlab.model.moe import MoE
from archlab.model.ssm import Mamba, Mamba2, make_mixer, reverse_by_length


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class Block(nn.Module):
    """One layer: a sequence mixer (attention, Mamba or Mamba-2), optional cross-attention
    and an optional feed-forward; each in a residual branch.

    Pre-norm (``x + f(norm(x))``; Xiong et al. 2020) or post-norm (``norm(x + f(x))``, the
    original Transformer and BERT/BART). Attention layers keep the module names ``attn_norm``
    / ``attn`` (checkpoints of all-attention models are unchanged); Mamba layers name theirs
    ``ssm_norm`` / ``ssm``, plus ``ssm_bwd`` for the backward scan of a bidirectional layer.
    """

    def __init__(self, cfg: ModelConfig, *, cross: bool = False, share: Block | None = None,
                 mixer: str = "attention", ffn: str = "dense", bidirectional: bool = False) -> None:
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.mixer = mixer
        if mixer == "attention":
            # share: T5's shared encoder-decoder variant reuses the encoder block's
            # self-attention and feed-forward; only cross-attention is the decoder's own.
            self.attn_norm = share.attn_norm if share else make_norm(cfg)
            self.attn = share.attn if share else Attention(cfg)
            self.ssm = self.ssm_bwd = None
        else:
            self.attn_norm = self.attn = None
            self.ssm_norm = make_norm(cfg)
            self.ssm = make_mixer(mixer, cfg.d_model, cfg.ssm_cfg, cfg.norm_eps)
            # a second mixer reads each sequence reversed (Caduceus / Vim); outputs are added
            self.ssm_bwd = (make_mixer(mixer, cfg.d_model, cfg.ssm_cfg, cfg.norm_eps)
                            if bidirectional else None)
        if cross:
            self.cross_norm = make_norm(cfg)
            self.cross_attn = Attention(cfg, cross=True)
        else:
            self.cross_norm = self.cross_attn = None
        self.moe = ffn == "moe"
        if ffn == "dense":
            self.mlp_norm = share.mlp_norm if share else make_norm(cfg)
            self.mlp = share.mlp if share else MLP(cfg)
        elif ffn == "moe":  # routed experts in the feed-forward slot (model/moe.py)
            self.mlp_norm = make_norm(cfg)
            self.mlp = MoE(cfg)
        else:
            self.mlp_norm = self.mlp = None
        self.drop = nn.Dropout(cfg.dropout)

    def _ssm(self, h: torch.Tensor, cache: KVCache | None, layer: int,
             valid: torch.Tensor | None, bwd_lengths: torch.Tensor | None,
             bwd_span: int | None = None) -> torch.Tensor:
        # h: (B, T, C) normed input -> (B, T, C)
        state = cache.ssm[layer] if cache is not None else None
        y, new = self.ssm(h, valid, state, return_state=cache is not None)
        if cache is not None:
            cache.ssm[layer] = new
        if self.ssm_bwd is not None and bwd_lengths is not None:
            # backward scan over slots [0, L_b) of each row, reversed by its own length;
            # slots past L_b (the targets of a prefix-LM) get no backward term, so the scan
            # runs over the first S = max_b L_b slots only (a causal scan of the reversed
            # prefix never reads the slots after it)
            lengths, S = bwd_lengths, bwd_span or h.shape[1]
            rv = reverse_by_length(valid[:, :S], lengths) if valid is not None else None
            yb, _ = self.ssm_bwd(reverse_by_length(h[:, :S], lengths), rv)
            yb = reverse_by_length(yb, lengths)  # (B, S, C)
            inside = torch.arange(S, device=h.device)[None, :] < lengths[:, None]
            yb = yb * inside[..., None].to(yb.dtype)
            y = y + (yb if S == h.shape[1] else F.pad(yb, (0, 0, 0, h.shape[1] - S)))
        return y

    def forward(
        self,
        x: torch.Tensor,
        mask: AttnMask | None,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | None = None,
        context_mask: AttnMask | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        valid: torch.Tensor | None = None,
        bwd_lengths: torch.Tensor | None = None,
        bwd_span: int | None = None,
    ) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        """valid: (B, T) real tokens (Mamba layers zero the pads' inputs; MoE layers do not
        route pads); bwd_lengths: (B,) span of the backward scan of bidirectional Mamba
        layers (None: causal only), bwd_span its maximum (None: T)."""
        # dropout is the identity in eval mode; skipping the module call saves per-token time
        drop = self.drop if self.training else _identity
        if self.pre:
            if self.attn is not None:
                x = x + drop(self.attn(self.attn_norm(x), mask, rope=rope, cache=cache, layer=layer))
            else:
                x = x + drop(self._ssm(self.ssm_norm(x), cache, layer, valid, bwd_lengths, bwd_span))
            if self.cross_attn is not None:
                h = self.cross_attn(self.cross_norm(x), context_mask, context=context,
                                    cache=cache, layer=layer)
                x = x + drop(h)
            if self.mlp is None:
                return x
            h = self.mlp_norm(x)
            return x + drop(self.mlp(h, valid) if self.moe else self.mlp(h))
        if self.attn is not None:
            x = self.attn_norm(x + drop(self.attn(x, mask, rope=rope, cache=cache, layer=layer)))
        else:
            x = self.ssm_norm(x + drop(self._ssm(x, cache, layer, valid, bwd_lengths, bwd_span)))
        if self.cross_attn is not None:
            h = self.cross_attn(x, context_mask, context=context, cache=cache, layer=layer)
            x = self.cross_norm(x + drop(h))
        if self.mlp is None:
            return x
        return self.mlp_norm(x + drop(self.mlp(x, valid) if self.moe else self.mlp(x)))


class Stack(nn.Module):
    """``n_layers`` blocks plus what they share: relative position encodings and final norm.

    ``bidirectional_positions`` tells T5 relative buckets whether keys after the query exist
    (encoders and prefix-LMs) or not (causal decoders).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        n_layers: int,
        *,
        cross: bool = False,
        bidirectional_positions: bool = True,
        share: Stack | None = None,
        kinds: list[tuple[str, str]] | None = None,
        ssm_bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        kinds = kinds if kinds is not None else [("attention", "dense")] * n_layers
        self.mixers = [m for m, _ in kinds]
        self.blocks = nn.ModuleList(
            Block(cfg, cross=cross, share=share.blocks[i] if share else None, mixer=m, ffn=f,
                  bidirectional=ssm_bidirectional)
            for i, (m, f) in enumerate(kinds)
        )
        # masks and position tables only for stacks that have self-attention layers
        self.has_attn = "attention" in self.mixers
        self.has_ssm = any(m != "attention" for m in self.mixers)
        self.has_moe = any(f == "moe" for _, f in kinds)
        self.ssm_bidirectional = ssm_bidirectional and self.has_ssm
        self.final_norm = make_norm(cfg) if cfg.use_final_norm else None
        attn = self.has_attn
        self.rotary = Rotary(cfg.dim_head, cfg.rope_theta) if cfg.position == "rope" and attn else None
        if cfg.position == "alibi" and attn:
            self.register_buffer("alibi", alibi_slopes(cfg.n_heads), persistent=False)
        else:
            self.alibi = None
        self.rel_bias = (
            RelativePositionBias(cfg.n_heads, cfg.rel_buckets, cfg.rel_max_distance,
                                 bidirectional_positions)
            if cfg.position == "t5-relative" and attn
            else None
        )

    def _ssm_inputs(self, B: int, T: int, mask_kind: MaskKind, key_padding: torch.Tensor | None,
                    prefix_lengths: torch.Tensor | None, q_offset: int, device: torch.device
                    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, int] | None]:
        """(valid (B, T) of the new tokens or None, (backward-scan spans (B,), their max) or None)."""
        valid = None
        if key_padding is not None:
            valid = key_padding[:, -T:]
            if bool(valid.all()):
                valid = None
        if not self.ssm_bidirectional:
            return valid, None
        if mask_kind == "bidirectional":
            if valid is None:
                return None, (torch.full((B,), T, device=device), T)
            # up to the last real token (right padding: the sequence's own length)
            ar = torch.arange(1, T + 1, device=device)
            lengths = (valid.long() * ar).amax(-1)
            return valid, (lengths, max(int(lengths.max()), 1))
        if mask_kind == "prefix" and prefix_lengths is not None:
            if q_offset:
                raise ValueError("a prefix-LM with Mamba layers reads its prefix in the first "
                                 "call (the backward scan spans the whole prefix)")
            lengths = prefix_lengths.to(device).clamp(max=T)
            return valid, (lengths, max(int(lengths.max()), 1))  # >= 1: a conv needs an input
        return valid, None

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask_kind: MaskKind,
        positions: torch.Tensor,
        key_padding: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_padding: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) embedded inputs; positions: (B, T) integer positions;
        key_padding: (B, T) (or (B, past+T) with a cache), True for real tokens;
        context: (B, S, C) encoder output with context_padding (B, S) -> (B, T, C)."""
        B, T, _ = x.shape
        valid = bwd = None
        if self.has_ssm or self.has_moe:
            valid, bwd = self._ssm_inputs(B, T, mask_kind, key_padding, prefix_lengths,
                                          cache.length if cache is not None else 0, x.device)
        q_offset = 0
        k_pos = positions
        if cache is not None and cache.static:
            # every slot is a key, those not yet written masked out; a one-token step sees all
            # earlier slots (what causal and prefix masks give the newest token), so its mask
            # needs no offset; a longer input is the prompt, written from slot 0
            if key_padding is not None and key_padding.shape[1] != T:
                key_padding = key_padding[:, -T:]
            cache.begin(positions, key_padding)
            k_pos, key_padding = cache.positions, cache.valid_keys(T)
            if T == 1:
                mask_kind, prefix_lengths = "bidirectional", None
            mask = rope = None
            if self.has_attn:
                mask, rope = self._attn_inputs(x, mask_kind, positions, k_pos, key_padding,
                                               prefix_lengths, 0, T, cache.max_len)
            return self._run_blocks(x, mask, rope, T, context, context_padding, cache, None, None)
        if cache is not None:
            q_offset = cache.length
            if key_padding is not None and key_padding.shape[1] != T:
                key_padding = key_padding[:, -T:]
            cache.begin(positions, key_padding)
            k_pos = cache.positions.narrow(1, 0, q_offset + T)
            key_padding = cache.key_valid.narrow(1, 0, q_offset + T) if cache.has_padding else None
        k_len = q_offset + T
        mask = rope = None
        if self.has_attn:
            mask, rope = self._attn_inputs(x, mask_kind, positions, k_pos, key_padding,
                                           prefix_lengths, q_offset, T, k_len)
        return self._run_blocks(x, mask, rope, T, context, context_padding, cache, valid, bwd)

    def _run_blocks(self, x: torch.Tensor, mask: AttnMask | None, rope: tuple[torch.Tensor, torch.Tensor] | None,
                    T: int, context: torch.Tensor | None, context_padding: torch.Tensor | None,
                    cache: KVCache | None, valid: torch.Tensor | None,
                    bwd: tuple[torch.Tensor, int] | None) -> torch.Tensor:
        context_mask = None
        cached_cross = cache is not None and cache.cross[0] is not None
        if context is not None or cached_cross:
            # with a cache, the encoder's keys/values were stored at the first step
            S = context.shape[1] if context is not None else cache.cross[0][0].shape[2]
            context_mask = build_mask("bidirectional", T, S, key_padding=context_padding, device=x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rope=rope, context=context, context_mask=context_mask,
                      cache=cache, layer=i, valid=valid, bwd_lengths=bwd[0] if bwd else None,
                      bwd_span=bwd[1] if bwd else None)
        if cache is not None:
            cache.advance(T)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def _attn_inputs(
        self, x: torch.Tensor, mask_kind: MaskKind, positions: torch.Tensor, k_pos: torch.Tensor,
        key_padding: torch.Tensor | None, prefix_lengths: torch.Tensor | None, q_offset: int,
        T: int, k_len: int,
    ) -> tuple[AttnMask, tuple[torch.Tensor, torch.Tensor] | None]:
        """Self-attention mask (with position biases folded in) and rotary tables."""
        mask = build_mask(mask_kind, T, k_len, key_padding=key_padding,
                          prefix_lengths=prefix_lengths, q_offset=q_offset,
                          window=self.cfg.attn_window, device=x.device,
                          banded=self.rel_bias is None and self.alibi is None)  # a bias needs T x T
        bias = None
        if self.rel_bias is not None or self.alibi is not None:
            q_pos = positions
            if positions.stride(0) == 0 and k_pos.stride(0) == 0:
                # the same positions in every row (the default arange, expanded): one bias of
                # batch 1 broadcasts, B times less memory and work than a per-row bias
                q_pos, k_pos = positions[:1], k_pos[:1]
            if self.rel_bias is not None:
                bias = self.rel_bias(q_pos, k_pos).to(x.dtype)  # (B|1, H, Tq, Tk)
            else:
                bias = alibi_bias(self.alibi, q_pos, k_pos).to(x.dtype)
        mask = mask.with_bias(bias, T, k_len)
        rope = None
        if self.rotary is not None:  # expanded (shared) positions: one table broadcast over the batch
            rope = self.rotary(positions[:1] if positions.stride(0) == 0 else positions, x.dtype)
        return mask, rope


class InputEmbedding(nn.Module):
    """Absolute positions, token types and the optional embedding norm of one stack's input.
    Token embeddings are owned by the model (shared by encoder, decoder and tied LM head)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.offset = cfg.position_offset
        self.pos = (
            nn.Embedding(cfg.max_seq_len + cfg.position_offset, cfg.d_model)
            if cfg.position == "learned"
            else None
        )
        if cfg.position == "sinusoidal":
            self.register_buffer("sin", sinusoidal_table(cfg.max_seq_len, cfg.d_model,
                                                             cfg.sinusoidal_layout),
                                 persistent=False)
        else:
            self.sin = None
        self.types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:  # x: (B, T, C) token vectors; positions: (B, T)
        # BERT's order (word + token type, then position): float addition is not associative,
        # and this order reproduces BERT checkpoints bit for bit
        if self.types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(positions)
            x = x + self.types(token_type_ids)
        if self.pos is not None:
            x = x + self.pos(positions + self.offset if self.offset else positions)
        elif self.sin is not None:
            x = x + self.sin[positions]
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x) if self.training else x


class ClassificationHead(nn.Module):
    """dense + tanh + linear over a pooled vector (BERT's pooler + classifier; BART's head)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.d_model, cfg.n_classes)
        self.act = torch.tanh if cfg.cls_activation == "tanh" else torch.relu

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, n_classes)
        return self.out(self.drop(self.act(self.dense(pooled))))


class TokenClassificationHead(nn.Module):
    """dropout + linear on every hidden state: one tag score vector per token (BERT's
    BertForTokenClassification; Devlin et al. 2019 Sec. 4.3, CoNLL-2003 NER)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.d_model, cfg.n_tags)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, n_tags)
        return self.out(self.drop(hidden))


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, T, V): MLM logits (encoder) or next-token logits
    hidden: torch.Tensor  # (B, T, C) last hidden states of the output stack; (B, C) pooled (classify)
    encoder_hidden: torch.Tensor | None = None  # (B, S, C) encoder-decoder only
    # MoE layers' auxiliary losses of this forward, unweighted means over layers:
    # {"balance": Switch load balancing, "z": router z-loss}; {} without MoE layers
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    # their sum weighted by the config's coefficients (moe.aux_loss_coef, moe.z_loss_coef)
    aux_loss: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None  # (B, n_classes), forward(..., classify=True)
    token_logits: torch.Tensor | None = None  # (B, T, n_tags), forward(..., classify_tokens=True)
    head_out: Any = None  # what forward(..., head=fn) returned


@dataclass
class LMHead:
    """The vocabulary projection, handed to a ``head`` callback inside the forward pass.

    Objectives compute their loss from hidden states and this head (only at labelled
    positions, fused with the cross-entropy: objectives/loss.py). Doing it *inside*
    ``forward`` is what keeps data-parallel wrappers correct: DDP's and FSDP2's hooks run
    around ``forward``, and FSDP2 holds the full (unsharded) weights only while it runs."""

    transform: Callable[[torch.Tensor], torch.Tensor]  # (..., C) -> (..., C): MLM transform, scale
    weight: torch.Tensor  # (V, C)
    bias: torch.Tensor | None  # (V,)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., V)
        return F.linear(self.transform(hidden), self.weight, self.bias)


HeadFn = Callable[[torch.Tensor, LMHead], Any]


def default_positions(
    batch: int, length: int, offset: int, device: torch.device
) -> torch.Tensor:
    return torch.arange(offset, offset + length, device=device).expand(batch, length)


class Transformer(nn.Module):
    """Every archlab family. Build with :func:`archlab.build_model`.

    Inputs follow Hugging Face conventions: ``input_ids`` / ``attention_mask`` are the encoder
    input of an encoder-decoder model, and ``decoder_input_ids`` its decoder input.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder_embed = self.encoder = None
        self.decoder_embed = self.decoder = None
        if cfg.arch in ("encoder", "encoder-decoder"):
            self.encoder_embed = InputEmbedding(cfg)
            self.encoder = Stack(cfg, cfg.encoder_layers, bidirectional_positions=True,
                                 kinds=cfg.layer_kinds("encoder"), ssm_bidirectional=True)
        if cfg.arch in ("decoder", "prefix-lm", "encoder-decoder"):
            self.decoder_embed = InputEmbedding(cfg)
            self.decoder = Stack(
                cfg,
                cfg.decoder_layers,
                cross=cfg.arch == "encoder-decoder",
                bidirectional_positions=cfg.arch == "prefix-lm",
                share=self.encoder if cfg.share_encoder_decoder else None,
                kinds=cfg.layer_kinds("decoder"),
                # prefix-LM: a backward scan over the prefix is added to the forward scan
                ssm_bidirectional=cfg.arch == "prefix-lm",
            )
        self.mlm_transform = None
        if cfg.arch == "encoder" and cfg.mlm_transform:
            # BERT's MLM head transform (dense + activation + norm) before the vocabulary
            # projection; its activation is the ungated form of cfg.activation.
            self.mlm_transform = nn.Sequential(
                nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias),
                _Act(cfg.activation),
                make_norm(cfg),
            )
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.lm_head_bias else None
        self.cls_head = ClassificationHead(cfg) if cfg.n_classes > 0 else None
        self.tag_head = TokenClassificationHead(cfg) if cfg.n_tags > 0 else None
        self._moe = [m for m in self.modules() if isinstance(m, MoE)]  # plain list: not submodules
        self.reset_parameters()

    # ---- initialisation ---------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """N(0, init_std) for matrices and embeddings; residual output projections scaled by
        1/sqrt(2 * depth) (GPT-2, Radford et al. 2019) so the residual stream does not grow
        with depth; zero biases; unit norms."""
        std = self.cfg.init_std
        depth = max(self.cfg.encoder_layers, self.cfg.decoder_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                s = std / math.sqrt(2 * depth) if name.endswith((".o", ".w_out", ".out_proj")) else std
                nn.init.normal_(module.weight, 0.0, s)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.lm_bias is not None:
            nn.init.zeros_(self.lm_bias)
        for module in self.modules():  # A, D, dt and conv of Mamba layers (mamba_ssm's init)
            if isinstance(module, (Mamba, Mamba2)):
                module.reset_ssm_parameters()
            elif isinstance(module, MoE):  # stacked experts: as the dense MLP's matrices
                module.reset_parameters(std, std / math.sqrt(2 * depth))

    # ---- auxiliary losses (MoE) -------------------------------------------------------------
    def _clear_aux(self) -> None:
        for m in self._moe:
            m.aux = None

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Balancing and z losses of the MoE layers that ran in the last forward (means over
        layers, unweighted); {} without MoE layers."""
        vals = [m.aux for m in self._moe if m.aux is not None]
        if not vals:
            return {}
        return {k: torch.stack([v[k] for v in vals]).mean() for k in ("balance", "z")}

    # ---- pieces -------------------------------------------------------------------------
    def _check_length(self, length: int, position_ids: torch.Tensor | None) -> None:
        # Absolute position tables have max_seq_len rows; relative schemes have no hard limit.
        # Explicit position ids are the caller's responsibility (checking them would force a
        # device sync on every step).
        if position_ids is None and self.cfg.position in ("learned", "sinusoidal") and (
            length > self.cfg.max_seq_len
        ):
            raise ValueError(f"sequence of {length} tokens is longer than model.max_seq_len="
                             f"{self.cfg.max_seq_len} ({self.cfg.position} positions)")

    def _embed(
        self,
        emb: InputEmbedding,
        ids: torch.Tensor,
        positions: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embed_tokens(ids)  # (B, T, C)
        if self.cfg.embed_scale != 1.0:
            x = x * self.cfg.embed_scale
        return emb(x, positions, token_type_ids)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bidirectional encoder: (B, S) ids -> (B, S, C) hidden states."""
        if self.encoder is None:
            raise ValueError(f"arch {self.cfg.arch} has no encoder")
        B, S = input_ids.shape
        self._check_length(S, position_ids)
        if position_ids is None and self.cfg.pad_aware_positions:
            # RoBERTa (fairseq make_positions): count real tokens, from the ids as HF does
            real = input_ids.ne(self.cfg.pad_token_id).long()
            position_ids = real.cumsum(1) * real - 1  # pads: -1 -> row position_offset - 1
        pos = position_ids if position_ids is not None else default_positions(B, S, 0, input_ids.device)
        x = self._embed(self.encoder_embed, input_ids, pos, token_type_ids)
        pad = attention_mask.bool() if attention_mask is not None else None
        return self.encoder(x, mask_kind="bidirectional", positions=pos, key_padding=pad)

    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        encoder_out: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Causal (or prefix) decoder stack: (B, T) ids -> (B, T, C) hidden states.

        With a cache, ``input_ids`` are the new tokens only and ``attention_mask`` may cover
        the new tokens or all tokens so far.
        """
        if self.decoder is None:
            raise ValueError(f"arch {self.cfg.arch} has no decoder")
        if self.cfg.arch == "encoder-decoder" and encoder_out is None and (
            cache is None or cache.cross[0] is None
        ):
            raise ValueError("encoder-decoder decoding needs encoder_out")
        B, T = input_ids.shape
        if cache is not None and cache.static:
            # a fixed-shape step reads no Python length: the caller numbers the positions
            if position_ids is None:
                raise ValueError("decoding with a StaticKVCache needs position_ids")
            pos = position_ids
        else:
            offset = cache.length if cache is not None else 0
            self._check_length(offset + T, position_ids)
            pos = position_ids if position_ids is not None else default_positions(B, T, offset, input_ids.device)
        x = self._embed(self.decoder_embed, input_ids, pos)
        kind: MaskKind = "prefix" if self.cfg.arch == "prefix-lm" and prefix_lengths is not None else "causal"
        pad = attention_mask.bool() if attention_mask is not None else None
        enc_pad = encoder_mask.bool() if encoder_mask is not None else None
        return self.decoder(x, mask_kind=kind, positions=pos, key_padding=pad,
                            prefix_lengths=prefix_lengths, context=encoder_out,
                            context_padding=enc_pad, cache=cache)

    def lm_head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the vocabulary projection sees: the MLM transform (encoders) and the output
        scale (tied T5) applied to the final hidden states."""
        if self.mlm_transform is not None:
            hidden = self.mlm_transform(hidden)
        if self.cfg.lm_head_scale != 1.0:
            hidden = hidden * self.cfg.lm_head_scale
        return hidden

    def lm_head_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(V, C) output matrix (the token embeddings when tied) and optional (V,) bias."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return weight, self.lm_bias

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., V) vocabulary logits."""
        weight, bias = self.lm_head_weight()
        return F.linear(self.lm_head_input(hidden), weight, bias)

    def new_cache(
        self, batch: int, max_len: int, *, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None, static: bool = False,
    ) -> KVCache:
        """A preallocated KV cache for the decoder stack; ``static``: the fixed-shape
        :class:`StaticKVCache` of compiled decoding steps (attention-only dense stacks)."""
        if self.decoder is None:
            raise ValueError(f"arch {self.cfg.arch} has no decoder to cache")
        p = self.embed_tokens.weight
        if static:
            why = ("Mamba layers" if self.decoder.has_ssm else "mixture-of-experts layers" if self.decoder.has_moe
                   else f"attn_window={self.cfg.attn_window}" if self.cfg.attn_window else None)
            if why:
                raise ValueError(f"a static (compiled) decoding step does not support {why} yet")
            return StaticKVCache(self.cfg.decoder_layers, batch, self.cfg.kv_heads, self.cfg.dim_head,
                                 max_len, dtype=dtype or p.dtype, device=device or p.device)
        if self.decoder.has_ssm:  # KV for attention layers, recurrent states for Mamba layers
            return StackCache(self.decoder.mixers, batch, self.cfg.kv_heads, self.cfg.dim_head,
                              max_len, dtype=dtype or p.dtype, device=device or p.device)
        return KVCache(self.cfg.decoder_layers, batch, self.cfg.kv_heads, self.cfg.dim_head,
                       max_len, dtype=dtype or p.dtype, device=device or p.device)

    # ---- full forward ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        encoder_out: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_logits: bool = True,
        head: HeadFn | None = None,
        classify: bool = False,
        classify_tokens: bool = False,
        encoder_only: bool = False,
    ) -> ModelOutput:
        """Encoder: MLM logits over ``input_ids``. Decoder / prefix-LM: next-token logits
        (``prefix_lengths`` (B,) gives each example's bidirectional prefix). Encoder-decoder:
        decoder logits for ``decoder_input_ids`` given source ``input_ids``.

        ``head(hidden, LMHead)``: called on the final hidden states inside this forward, its
        result returned as ``head_out`` (and no full logits are computed): how objectives get
        their loss (see :class:`LMHead`). ``classify=True``: sequence-classification logits
        (``class_logits``; ``hidden`` is the pooled (B, C) vector), as :meth:`classify`.
        ``encoder_only=True`` (encoder-decoder): run the encoder alone, ``hidden`` is its
        (B, S, C) states (sentence embeddings from the encoder, as Sentence-T5 and GTR take
        them; the decoder does not run). ``classify_tokens=True``: the token-classification
        head on the final hidden states of whichever stack ran (``token_logits`` (B, T,
        n_tags); no LM head)."""
        arch = self.cfg.arch
        enc = None
        if classify:
            pooled = self.pool(input_ids, attention_mask, token_type_ids)
            if self.cls_head is None:
                raise ValueError("this model has no classification head; set model.n_classes > 0")
            return self._output(None, pooled, None, class_logits=self.cls_head(pooled))
        if self._moe:
            self._clear_aux()
        if encoder_only and arch not in ("encoder", "encoder-decoder"):
            raise ValueError(f"encoder_only: arch {arch} has no encoder")
        if arch == "encoder" or encoder_only:
            hidden = self.encode(input_ids, attention_mask, position_ids=position_ids,
                                 token_type_ids=token_type_ids)
        elif arch == "encoder-decoder":
            if decoder_input_ids is None:
                raise ValueError("encoder-decoder forward needs decoder_input_ids")
            enc = encoder_out
            if enc is None and (cache is None or cache.cross[0] is None):
                enc = self.encode(input_ids, attention_mask, token_type_ids=token_type_ids)
            hidden = self.decode(decoder_input_ids, decoder_attention_mask, encoder_out=enc,
                                 encoder_mask=attention_mask, position_ids=position_ids,
                                 cache=cache)
        else:
            hidden = self.decode(input_ids, attention_mask, prefix_lengths=prefix_lengths,
                                 position_ids=position_ids, cache=cache)
        if classify_tokens:
            if self.tag_head is None:
                raise ValueError("this model has no token-classification head; set model.n_tags > 0")
            return self._output(None, hidden, enc, token_logits=self.tag_head(hidden))
        if head is not None:
            weight, bias = self.lm_head_weight()
            return self._output(None, hidden, enc, head_out=head(hidden, LMHead(self.lm_head_input, weight, bias)))
        logits = self.lm_logits(hidden) if return_logits else None
        return self._output(logits, hidden, enc)

    def _output(self, logits: torch.Tensor | None, hidden: torch.Tensor, enc: torch.Tensor | None,
                **kw: Any) -> ModelOutput:
        aux = self.aux_losses() if self._moe else {}
        weighted = None
        if aux:
            m = self.cfg.moe_cfg
            weighted = m.balance_coef * aux["balance"] + m.z_loss_coef * aux["z"]
        return ModelOutput(logits, hidden, enc, aux, weighted, **kw)

    def pool(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One vector per sequence, pooled as suits the family: (B, T) -> (B, C).

        encoder: first token ([CLS]); decoder: last real token (the only one that has seen the
        whole input); prefix-LM: mean over the input, read as one bidirectional prefix;
        encoder-decoder: the decoder's state at its start token, which cross-attends to the
        whole encoded input (a learned attention pooling).
        """
        B, T = input_ids.shape
        if self._moe:
            self._clear_aux()
        mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        mode = self.cfg.pooling_mode
        arch = self.cfg.arch
        if arch == "encoder-decoder":
            enc = self.encode(input_ids, attention_mask, token_type_ids=token_type_ids)
            if mode == "decoder":
                start = torch.full((B, 1), self.cfg.start_token_id, dtype=torch.long, device=input_ids.device)
                return self.decode(start, encoder_out=enc, encoder_mask=attention_mask)[:, 0]
            hidden = enc
        elif arch == "encoder":
            hidden = self.encode(input_ids, attention_mask, token_type_ids=token_type_ids)
        else:
            # prefix-LM: the whole input is one bidirectional prefix (padding slots are masked
            # out as keys anyway, so the prefix can cover all T slots for either padding side)
            prefix = torch.full((B,), T, device=input_ids.device) if arch == "prefix-lm" else None
            hidden = self.decode(input_ids, attention_mask, prefix_lengths=prefix)
        return pool_states(hidden, mask, mode)

    def classify(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sequence classification logits (B, n_classes)."""
        if self.cls_head is None:
            raise ValueError("this model has no classification head; set model.n_classes > 0")
        return self.cls_head(self.pool(input_ids, attention_mask, token_type_ids))


def pool_states(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per sequence from hidden states (B, T, C) and a (B, T) bool mask of real
    tokens: ``first`` slot, ``last`` real slot (a causal model's only state that has seen the
    whole input; padding on either side is skipped), or ``mean`` over the real slots."""
    if mode == "first":
        return hidden[:, 0]
    B, T = mask.shape
    if mode == "last":
        idx = (mask.long() * torch.arange(T, device=mask.device)).argmax(-1)  # last real slot
        return hidden[torch.arange(B, device=mask.device), idx]
    if mode != "mean":
        raise ValueError(f"pooling {mode!r}: choose first, last or mean")
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class _Act(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        base = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh", "reglu": "relu"}
        self.name = base.get(name, name)
        self.fn = activation_fn(self.name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def build_model(cfg: ModelConfig) -> Transformer:
    """Build the network described by ``cfg`` (randomly initialised)."""
    return Transformer(cfg)
