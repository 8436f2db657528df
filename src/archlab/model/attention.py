"""The one attention module: self- and cross-attention, MHA/GQA/MQA, KV cache, SDPA.

Every family uses this class; the difference between an encoder, a decoder and a prefix-LM
is only the mask handed in (see ``masks.py``). Attention itself is
``torch.nn.functional.scaled_dot_product_attention`` so that PyTorch picks the fused kernel
(flash / memory-efficient on GPU, the flash CPU kernel here); when the mask is purely causal
we pass ``is_causal=True`` instead of a mask tensor, the kernels' fastest path.

Sliding windows much shorter than the sequence run banded (:func:`banded_attention`): SDPA
over blocks of w queries and the 2w (causal) or 3w keys their band can reach, instead of all
T^2 pairs under a mask tensor (the blocked local attention of Beltagy et al. 2020, Sec. 3.1,
and of Longformer's "sliding chunks"). The result equals the masked dense SDPA to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlab.config import ModelConfig
from archlab.model.layers import apply_rotary
from archlab.model.masks import AttnMask, Band


class KVCache:
    """Preallocated key/value cache for all layers of one decoder stack.

    Storage is allocated once for ``max_len`` slots; each step writes its keys and values in
    place and attention reads a view of the filled slots, so the decoding loop never
    reallocates. The cache also keeps per-slot positions and padding (so position biases and
    padding masks cover cached keys), and the cross-attention keys/values of each layer,
    computed once per source. :class:`StaticKVCache` is the fixed-shape variant for compiled
    decoding steps.
    """

    static = False

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._layer_views()
        self.positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.key_valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.has_padding = False
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.max_len = max_len
        self.length = 0

    def _layer_views(self) -> None:
        # per-layer views of the storage, made once: a decoding step then slices one 4-d
        # tensor per write instead of indexing the 5-d storage (fewer ops per token)
        # (one select per layer, not unbind: unbind's views may not be written in place)
        self.k_layers = [self.k[i] for i in range(self.k.shape[0])]
        self.v_layers = [self.v[i] for i in range(self.v.shape[0])]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def nbytes(self) -> int:
        n = self.k.numel() * self.k.element_size() * 2
        for kv in self.cross:
            if kv is not None:
                n += sum(t.numel() * t.element_size() for t in kv)
        return n

    def begin(self, positions: torch.Tensor, key_valid: torch.Tensor | None) -> None:
        """Record positions/padding of the ``T`` slots about to be written (B, T)."""
        start, n = self.length, positions.shape[1]
        if start + n > self.max_len:
            raise ValueError(f"KV cache full: {start + n} slots needed, {self.max_len} allocated")
        self.positions.narrow(1, start, n).copy_(positions)
        if key_valid is not None:
            self.key_valid.narrow(1, start, n).copy_(key_valid)
            self.has_padding = self.has_padding or not bool(key_valid.all())
        else:
            self.key_valid.narrow(1, start, n).fill_(True)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (B, Hkv, T, hd) -> views over all filled slots (B, Hkv, length + T, hd)
        # narrow: one view op per slice (indexing ``[:, :, a:b]`` costs one per dimension)
        start, n = self.length, k.shape[2]
        kl, vl = self.k_layers[layer], self.v_layers[layer]
        kl.narrow(2, start, n).copy_(k)
        vl.narrow(2, start, n).copy_(v)
        return kl.narrow(2, 0, start + n), vl.narrow(2, 0, start + n)

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor, *, cross: bool = False) -> None:
        """Select batch rows in place (beam search): row i becomes old row ``index[i]``.

        Only the filled slots are gathered and the storage stays where it is, so a beam
        step allocates nothing that outlives it. Beam search only moves rows between the
        beams of one source, which share the same cross-attention keys/values, positions and
        padding; ``cross=True`` reorders those too (for arbitrary row selections)."""
        n = self.length
        self.k[:, :, :, :n] = self.k[:, :, :, :n].index_select(1, index)
        self.v[:, :, :, :n] = self.v[:, :, :, :n].index_select(1, index)
        if cross:
            self.positions = self.positions.index_select(0, index)
            self.key_valid = self.key_valid.index_select(0, index)
            self.cross = [
                None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                for kv in self.cross
            ]

    def repeat_interleave(self, n: int) -> None:
        """Grow the batch n-fold, each row repeated n times in a row (one source -> n beams);
        allocates the larger storage once."""
        self.k = self.k.repeat_interleave(n, dim=1)
        self.v = self.v.repeat_interleave(n, dim=1)
        self._layer_views()
        self.positions = self.positions.repeat_interleave(n, dim=0)
        self.key_valid = self.key_valid.repeat_interleave(n, dim=0)
        self.cross = [
            None if kv is None else (kv[0].repeat_interleave(n, dim=0), kv[1].repeat_interleave(n, dim=0))
            for kv in self.cross
        ]


class StaticKVCache(KVCache):
    """A KV cache whose every decoding step has the same shapes: the step writes its slot at a
    position held in a tensor (``index_copy_``) and attention reads the whole buffer, with the
    slots not yet written masked out (:meth:`valid_keys`). Nothing a step does depends on a
    Python integer, so ``torch.compile`` traces one graph for all steps and CUDA graphs can
    replay it (Hugging Face's ``StaticCache`` plays the same role). Storage addresses never
    change after construction (beam reordering copies in place), and on CUDA they are marked
    static for the compiler."""

    static = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fill = torch.zeros((), dtype=torch.long, device=self.k.device)  # slots written
        self._slots = torch.arange(self.max_len, device=self.k.device)
        self._idx = self.fill.reshape(1)
        self._mark_static()

    def _mark_static(self) -> None:
        if self.k.is_cuda:
            for t in (self.k, self.v, self.positions, self.key_valid, self.fill):
                torch._dynamo.mark_static_address(t)

    @property
    def length(self) -> int:  # type: ignore[override]  # read outside the compiled step only
        return int(self.fill)

    @length.setter
    def length(self, value: int) -> None:
        if hasattr(self, "fill"):
            self.fill.fill_(value)

    def begin(self, positions: torch.Tensor, key_valid: torch.Tensor | None) -> None:
        n = positions.shape[1]
        self._idx = self.fill + torch.arange(n, device=self.fill.device)  # (T,) slots of this step
        self.positions.index_copy_(1, self._idx, positions)
        self.key_valid.index_copy_(1, self._idx, key_valid if key_valid is not None
                                   else torch.ones_like(positions, dtype=torch.bool))

    def valid_keys(self, n: int) -> torch.Tensor:
        """(B, max_len): real keys among the slots written so far and by this step."""
        return self.key_valid & (self._slots < self.fill + n)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl, vl = self.k_layers[layer], self.v_layers[layer]
        kl.index_copy_(2, self._idx, k)
        vl.index_copy_(2, self._idx, v)
        return kl, vl  # (B, Hkv, max_len, hd): every slot; valid_keys masks the rest

    def advance(self, n: int) -> None:
        self.fill.add_(n)

    def reorder(self, index: torch.Tensor, *, cross: bool = False) -> None:
        # in place over the whole buffer: the addresses a compiled step captured stay valid
        self.k.copy_(self.k.index_select(1, index))
        self.v.copy_(self.v.index_select(1, index))
        if cross:
            self.positions.copy_(self.positions.index_select(0, index))
            self.key_valid.copy_(self.key_valid.index_select(0, index))
            self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                          for kv in self.cross]

    def repeat_interleave(self, n: int) -> None:
        super().repeat_interleave(n)
        self._mark_static()


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, band: Band, *,
                     dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Sliding-window self-attention by blocks. q (B, H, T, hd); k, v (B, Hkv, T, hd) ->
    (B, T, H * hd).

    Query block n (w slots) meets key blocks n - 1 .. n + band.after, taken as overlapping
    windows of the zero-padded keys (``unfold``: a view, copied once into the blocks); every
    block is then one row of a batch of B x n_blocks small attentions that SDPA runs with the
    block mask. Shapes depend only on T and w, so ``torch.compile`` traces it like the rest."""
    B, H, T, hd = q.shape
    Hkv, w, nb = k.shape[1], band.block, band.n_blocks
    kw = (2 + band.after) * w
    tail = nb * w - T  # the last query block padded to w slots
    qb = F.pad(q, (0, 0, 0, tail)).view(B, H, nb, w, hd).transpose(1, 2).reshape(B * nb, H, w, hd)

    def windows(x: torch.Tensor) -> torch.Tensor:  # (B, Hkv, T, hd) -> (B * nb, Hkv, kw, hd)
        xp = F.pad(x, (0, 0, w, tail + band.after * w))  # key slot -w .. (nb + after) w - 1
        return xp.unfold(2, kw, w).permute(0, 2, 1, 4, 3).reshape(B * nb, Hkv, kw, hd)

    mask = band.mask.expand(B, nb, w, kw).reshape(B * nb, 1, w, kw)
    y = F.scaled_dot_product_attention(qb, windows(k), windows(v), attn_mask=mask, dropout_p=dropout_p,
                                       scale=scale, enable_gqa=Hkv != H)  # (B * nb, H, w, hd)
    return y.view(B, nb, H, w, hd).permute(0, 1, 3, 2, 4).reshape(B, nb * w, H * hd)[:, :T]


class Attention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017) with grouped key/value heads (Ainslie et al.
    2023: n_kv_heads < n_heads; 1 is multi-query attention, Shazeer 2019).

    Self-attention projects q, k, v with one fused matrix ``qkv``; cross-attention projects
    queries from the decoder (``q``) and keys/values from the encoder output (``kv``).
    """

    def __init__(self, cfg: ModelConfig, *, cross: bool = False) -> None:
        super().__init__()
        self.cross = cross
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.dim_head
        q_dim = self.n_heads * self.head_dim
        kv_dim = self.n_kv_heads * self.head_dim
        if cross:
            self.q = nn.Linear(cfg.d_model, q_dim, bias=cfg.bias)
            self.kv = nn.Linear(cfg.d_model, 2 * kv_dim, bias=cfg.bias)
        else:
            self.qkv = nn.Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=cfg.bias)
        self.o = nn.Linear(q_dim, cfg.d_model, bias=cfg.bias)
        self.scale = cfg.attn_scale  # None: SDPA's default 1/sqrt(head_dim)
        p = cfg.attn_dropout if cfg.attn_dropout is not None else cfg.dropout
        self.dropout_p = p

    def _split(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        B, T, _ = x.shape
        if T == 1:  # a decoding step: (B, 1, H*hd) is already laid out as (B, H, 1, hd)
            return x.view(B, n_heads, 1, self.head_dim)
        return x.view(B, T, n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttnMask,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x: (B, T, C); context: (B, S, C) encoder output for cross-attention -> (B, T, C)."""
        B, T, _ = x.shape
        kv_dim = self.n_kv_heads * self.head_dim
        if self.cross:
            q = self._split(self.q(x), self.n_heads)
            cached = cache.cross[layer] if cache is not None else None
            if cached is None:
                k, v = self.kv(context).split(kv_dim, dim=-1)
                k, v = self._split(k, self.n_kv_heads), self._split(v, self.n_kv_heads)
                if cache is not None:
                    cache.cross[layer] = (k, v)
            else:
                k, v = cached
        else:
            q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)
            q = self._split(q, self.n_heads)
            k, v = self._split(k, self.n_kv_heads), self._split(v, self.n_kv_heads)
            if rope is not None:
                cos, sin = rope
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if cache is not None:
                k, v = cache.update(layer, k, v)

        if mask.band is not None:  # a window much shorter than T: only the band's blocks
            y = banded_attention(q, k, v, mask.band, dropout_p=self.dropout_p if self.training else 0.0,
                                 scale=self.scale)
            return self.o(y)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask.mask,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=mask.is_causal,
            scale=self.scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, H, T, hd)
        if T == 1 and y.is_contiguous():  # (B, H, 1, hd) is (B, 1, H*hd) in memory
            y = y.view(B, 1, self.n_heads * self.head_dim)
        else:
            y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o(y)
