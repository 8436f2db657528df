"""One decoding cache for a stack whose layers differ: KV for attention layers, (conv state,
SSM state) for Mamba layers.

An all-attention stack keeps using :class:`~archlab.model.attention.KVCache` unchanged.
:class:`StackCache` is that cache with key/value storage for the attention layers only
(slots mapped by layer index) plus one recurrent state per Mamba layer. The KV part grows
with the decoded length (preallocated for ``max_len`` slots); the SSM part is constant in
length (Mamba-1: d_inner x (N + K - 1) numbers per layer and example; Mamba-2:
(d_inner + 2GN) x (K - 1) + H x P x N), which is the decoding-memory difference
``archlab info`` and the compare report show.
"""

from __future__ import annotations

import torch

from archlab.model.attention import KVCache


class StackCache(KVCache):
    """KV slots for the layers whose mixer is attention; ``ssm[i]`` the (conv, ssm) state of
    Mamba layer i (None until the layer first runs). Beam reordering and batch repetition
    cover both."""

    def __init__(
        self,
        mixers: list[str],
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.mixers = list(mixers)
        attn = [i for i, m in enumerate(self.mixers) if m == "attention"]
        self.slot = {layer: j for j, layer in enumerate(attn)}
        super().__init__(len(attn), batch, n_kv_heads, head_dim, max_len, dtype=dtype, device=device)
        self.cross = [None] * len(self.mixers)  # every decoder layer may cross-attend
        self.ssm: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.mixers)

    def _layer_views(self) -> None:
        k = [self.k[j] for j in range(self.k.shape[0])]
        v = [self.v[j] for j in range(self.v.shape[0])]
        self.k_layers = [k[self.slot[i]] if i in self.slot else None for i in range(len(self.mixers))]
        self.v_layers = [v[self.slot[i]] if i in self.slot else None for i in range(len(self.mixers))]

    def kv_nbytes(self) -> int:
        """Self-attention key/value storage (preallocated for max_len slots)."""
        return self.k.numel() * self.k.element_size() * 2

    def state_nbytes(self) -> int:
        """Recurrent (conv + SSM) states of the Mamba layers: constant in length."""
        return sum(t.numel() * t.element_size() for s in self.ssm if s is not None for t in s)

    def nbytes(self) -> int:
        return super().nbytes() + self.state_nbytes()

    def reorder(self, index: torch.Tensor, *, cross: bool = False) -> None:
        super().reorder(index, cross=cross)
        self.ssm = [None if s is None else (s[0].index_select(0, index), s[1].index_select(0, index))
                    for s in self.ssm]

    def repeat_interleave(self, n: int) -> None:
        super().repeat_interleave(n)
        self.ssm = [None if s is None else (s[0].repeat_interleave(n, dim=0),
                                            s[1].repeat_interleave(n, dim=0))
                    for s in self.ssm]
