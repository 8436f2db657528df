"""The one mask builder: ``causal | bidirectional | prefix`` combined with padding.

Every family is a mask pattern over the same stack (Raffel et al. 2020, Fig. 3):
- bidirectional: every query sees every (non-pad) key (encoders, cross-attention);
- causal: query i sees keys j <= i (decoders);
- prefix: query i sees keys j <= i and every key inside its example's prefix (prefix-LM, the
  "non-causal decoder" of the T5 paper; Liu et al. 2018, Dong et al. 2019).

Sliding-window attention (``window``; Child et al. 2019, Beltagy et al. 2020, Mistral: Jiang et
al. 2023) intersects any of the three with a band: query slot i sees key slot j only when
``|i - j| < window``, so a causal query sees itself and the ``window - 1`` slots before it (HF
Mistral's ``sliding_window``) and a bidirectional one ``window - 1`` slots on each side. Slots,
not positions, are compared, as HF does; for contiguous (left or right) padding the two agree.

Queries may start at an offset into the keys (a KV cache holds earlier keys), so key slot j is
compared with absolute query slot ``q_offset + i``.

The result is an :class:`AttnMask`: either nothing at all (no mask needed, or the pure causal
case SDPA handles natively with ``is_causal=True``, its fast path), or a boolean tensor
(B|1, 1, Tq, Tk), True where attention is allowed, or, when position biases (ALiBi, T5) are
present, a float additive tensor, or (``banded=True``, a window much shorter than the
sequence) a :class:`Band`: the same mask cut into blocks for the banded kernel of
``attention.py``.

What runs decides the FLOPs (``model/flops.py`` mirrors these choices): SDPA with a mask
tensor computes every (query, key) pair, so the causal fast path is kept whenever the mask adds
nothing for real queries: pure causal, and causal with right (trailing) padding only, whose pad
keys come after every real query. A window keeps only a band of the pairs; the dense masked
kernel would still compute all of them, the banded kernel computes about ``2 w`` (causal) or
``3 w`` keys per query (:func:`band_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

MaskKind = Literal["causal", "bidirectional", "prefix"]


@dataclass
class Band:
    """A sliding-window self-attention mask in blocks of ``block`` (= the window w) slots:
    query block n (slots n w .. n w + w - 1) attends to the key blocks n - 1 .. n + after,
    which hold every key its band ``|i - j| < w`` can reach (``after`` = 0 causal, 1 with keys
    after the query: bidirectional, prefix). ``mask`` is exact inside those blocks."""

    block: int  # w: queries per block and keys per key block
    after: int  # key blocks after the query's own block (0 or 1); one block before it
    length: int  # T: real slots (the last query block is padded to w)
    mask: torch.Tensor  # (B|1, n_blocks, w, (2 + after) * w) bool, True where allowed

    @property
    def n_blocks(self) -> int:
        return -(-self.length // self.block)


@dataclass
class AttnMask:
    mask: torch.Tensor | None = None  # bool (B|1, 1, Tq, Tk) or float additive (B|1, H|1, Tq, Tk)
    is_causal: bool = False  # SDPA's native causal path: mask is None and Tq == Tk
    band: Band | None = None  # banded sliding-window kernel (mask is None then)

    def with_bias(self, bias: torch.Tensor | None, q_len: int, k_len: int) -> AttnMask:
        """Fold an additive position bias (B|1, H, Tq, Tk) into the mask."""
        if bias is None:
            return self
        if self.band is not None:
            raise ValueError("a banded mask takes no position bias (build it with banded=False)")
        mask = self.mask
        if self.is_causal:
            mask = _causal(q_len, k_len, 0, bias.device)[None, None]
        if mask is None:
            return AttnMask(bias, False)
        neg = torch.tensor(torch.finfo(bias.dtype).min, dtype=bias.dtype, device=bias.device)
        return AttnMask(torch.where(mask, bias, neg), False)  # broadcasts (B|1, H, Tq, Tk)


def _causal(q_len: int, k_len: int, q_offset: int, device: torch.device) -> torch.Tensor:
    q = torch.arange(q_len, device=device)[:, None] + q_offset
    k = torch.arange(k_len, device=device)[None, :]
    return k <= q  # (Tq, Tk)


def band_blocks(kind: MaskKind, n: int, window: int | None) -> int | None:
    """Key blocks after the own block (0 causal, 1 otherwise) if the banded kernel runs a
    self-attention of ``n`` queries over ``n`` keys (from slot 0) under ``window``, else None.

    It runs when it computes at most half of the dense kernel's n^2 pairs: it computes
    ceil(n / w) w x (2 + after) w. Measured on a 2-core CPU at one thread (forward,
    bench/attention_window.py), it pays from about that point: causal T = 4w 0.71-0.75x the
    dense masked SDPA's time, T = 8w 0.32-0.34x; bidirectional T = 4w (3/4 of the pairs)
    0.98-1.13x, so the dense kernel stays there."""
    if window is None or window >= n:
        return None
    after = 0 if kind == "causal" else 1
    blocks = -(-n // window)
    if 2 * blocks * window * (2 + after) * window > n * n:
        return None
    return after


def build_mask(
    kind: MaskKind,
    q_len: int,
    k_len: int,
    *,
    key_padding: torch.Tensor | None = None,
    prefix_lengths: torch.Tensor | None = None,
    q_offset: int = 0,
    window: int | None = None,
    device: torch.device | None = None,
    banded: bool = False,
) -> AttnMask:
    """Build the attention mask.

    Args:
        kind: ``causal``, ``bidirectional`` or ``prefix``.
        q_len, k_len: query and key lengths (k_len = q_offset + q_len for self-attention).
        key_padding: (B, Tk) bool, True for real tokens, False for padding; None = no padding.
        prefix_lengths: (B,) number of key slots (from slot 0) every query may see; ``prefix``
            only. With left padding, count the pad slots too (the prefix ends where the prompt
            ends).
        q_offset: absolute slot of the first query (cached keys come before it).
        window: sliding window (``|query slot - key slot| < window``); None = no window.
        banded: allow a :class:`Band` where :func:`band_blocks` chooses the banded kernel
            (self-attention from slot 0 with no position bias to fold in).
    """
    if kind not in ("causal", "bidirectional", "prefix"):
        raise ValueError(f"mask kind {kind!r}: choose causal, bidirectional or prefix")
    if window is not None and window < 1:
        raise ValueError(f"attention window must be >= 1, got {window}")
    # every distance between a query slot and a key slot is below max(k_len, q_offset + q_len)
    if window is not None and window >= max(k_len, q_offset + q_len):
        window = None
    if kind == "prefix" and prefix_lengths is None:
        kind = "causal"
    if key_padding is not None:
        device = key_padding.device
        if key_padding.shape[-1] != k_len:
            raise ValueError(f"key_padding has {key_padding.shape[-1]} slots, expected {k_len}")
        # no padding: drop the mask (a faster kernel path); not while compiling, where the
        # data-dependent test would break the graph and an all-true mask is the same mask
        if not torch.compiler.is_compiling() and bool(key_padding.all()):
            key_padding = None
        # causal self-attention over right-padded rows (training batches): every pad key comes
        # after every real query, so the causal mask alone already hides it, and the causal
        # fast path computes half the pairs a mask tensor makes SDPA compute. Pad queries then
        # see earlier pads too; their outputs are never used (and stay finite).
        elif (kind == "causal" and window is None and q_offset == 0 and q_len == k_len
              and not torch.compiler.is_compiling() and not bool((key_padding[:, 1:] > key_padding[:, :-1]).any())):
            key_padding = None
    elif prefix_lengths is not None:
        device = prefix_lengths.device
    device = device or torch.device("cpu")

    # A single query at the end of the keys sees everything under causal masking: no mask.
    if kind == "causal" and q_len == 1 and q_offset == k_len - 1:
        kind = "bidirectional"

    if window is not None:
        after = band_blocks(kind, q_len, window) if banded and q_offset == 0 and q_len == k_len else None
        if after is not None:
            return AttnMask(band=_band(kind, q_len, window, after, key_padding, prefix_lengths, device))
        return _windowed(kind, q_len, k_len, key_padding, prefix_lengths, q_offset, window, device)

    if kind == "bidirectional":
        if key_padding is None:
            return AttnMask(None, False)
        return AttnMask(key_padding[:, None, None, :], False)  # (B, 1, 1, Tk)

    if kind == "causal" and key_padding is None and q_offset == 0 and q_len == k_len:
        return AttnMask(None, True)

    return AttnMask(_combine(kind, _causal(q_len, k_len, q_offset, device)[None, None],
                             q_len, k_len, key_padding, prefix_lengths, q_offset, device), False)


def _windowed(kind: MaskKind, q_len: int, k_len: int, key_padding: torch.Tensor | None,
              prefix_lengths: torch.Tensor | None, q_offset: int, window: int,
              device: torch.device) -> AttnMask:
    q = torch.arange(q_len, device=device)[:, None] + q_offset
    k = torch.arange(k_len, device=device)[None, :]
    band = (q - k).abs() < window  # (Tq, Tk)
    if kind == "bidirectional":
        mask = band[None, None]
        if key_padding is not None:
            # a pad query whose whole band is padding would get an empty row (NaN from SDPA,
            # which then poisons later layers through 0 * NaN); it sees itself instead
            mask = (mask & key_padding[:, None, None, :]) | (k == q)[None, None]
        return AttnMask(mask, False)
    return AttnMask(_combine(kind, (band & (k <= q))[None, None], q_len, k_len, key_padding,
                             prefix_lengths, q_offset, device, band), False)


def _band(kind: MaskKind, n: int, w: int, after: int, key_padding: torch.Tensor | None,
          prefix_lengths: torch.Tensor | None, device: torch.device) -> Band:
    """The mask of :func:`_windowed` in blocks: entry (b, i, j) is query slot b w + i and key
    slot (b - 1) w + j; key slots outside [0, n) (the zero padding of the blocks) are masked.
    Every row allows its own slot (the padding rule of :func:`_combine`; for real queries the
    band already does), so no row is empty, not even those of the padded last block."""
    nb, kw = -(-n // w), (2 + after) * w
    blk = torch.arange(nb, device=device)[:, None, None]
    q = blk * w + torch.arange(w, device=device)[None, :, None]  # (nb, w, 1)
    k = (blk - 1) * w + torch.arange(kw, device=device)[None, None, :]  # (nb, 1, kw)
    inside = (k >= 0) & (k < n)
    allowed = ((q - k).abs() < w) & inside  # (nb, w, kw)
    if kind != "bidirectional":
        allowed = allowed & (k <= q)
    mask = allowed[None]  # (1, nb, w, kw)
    if kind == "prefix" and prefix_lengths is not None:
        in_prefix = k[None] < prefix_lengths.to(device)[:, None, None, None]  # (B, nb, 1, kw)
        mask = mask | (in_prefix & ((q - k).abs() < w) & inside)
    if key_padding is not None:
        kp = torch.nn.functional.pad(key_padding, (w, nb * w - n + after * w))  # (B, (nb+1+after) w)
        mask = mask & kp.unfold(1, kw, w)[:, :, None, :]  # key slot (n - 1) w + j of each block
    return Band(w, after, n, mask | (k == q)[None])


def _combine(kind: MaskKind, mask: torch.Tensor, q_len: int, k_len: int,
             key_padding: torch.Tensor | None, prefix_lengths: torch.Tensor | None, q_offset: int,
             device: torch.device, band: torch.Tensor | None = None) -> torch.Tensor:
    """Add the prefix and the padding to a causal (possibly windowed) (1, 1, Tq, Tk) mask."""
    if kind == "prefix":
        k = torch.arange(k_len, device=device)
        in_prefix = k[None, :] < prefix_lengths.to(device)[:, None]  # (B, Tk)
        seen = in_prefix[:, None, None, :]
        if band is not None:
            seen = seen & band[None, None]
        mask = mask | seen  # (B, 1, Tq, Tk)
    if key_padding is not None:
        mask = mask & key_padding[:, None, None, :]
        # A left-padding query slot sees no real key under causal masking; SDPA would return
        # NaN for that all-masked row, and the NaN (cached as a key/value) would poison every
        # later step through 0 * NaN. Letting each slot see itself keeps pad rows finite and
        # changes nothing for real queries (they always see themselves).
        q = torch.arange(q_len, device=device)[:, None] + q_offset
        mask = mask | (torch.arange(k_len, device=device)[None, :] == q)[None, None]
    return mask
