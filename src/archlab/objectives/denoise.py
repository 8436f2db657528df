"""Denoising objectives: T5 span corruption and BART text infilling.

Both turn a text into a (corrupted input, target) pair. On an encoder-decoder model the
encoder reads the input and the decoder predicts the target; on a decoder-only or prefix-LM
model the pair is concatenated (``input <sep> target``, loss on the target), which is how the
T5 paper trains its decoder-only and prefix-LM baselines with the denoising objective
(Raffel et al. 2020, Sec. 3.2.1 and Table 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from archlab.errors import ConfigError
from archlab.objectives.base import Batch, Example, Objective
from archlab.objectives.lm import GENERATIVE, build_seq2seq


def random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n_items`` into ``n_segments`` non-empty parts, uniformly at random (T5's
    ``_random_segmentation``)."""
    first = np.zeros(n_items, dtype=bool)
    if n_segments > 1:
        first[1 + rng.choice(n_items - 1, size=n_segments - 1, replace=False)] = True
    first[0] = True
    seg = np.cumsum(first) - 1
    return np.bincount(seg, minlength=n_segments)


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float,
                            rng: np.random.Generator, max_spans: int | None = None) -> np.ndarray:
    """Boolean noise mask of T5's span corruption (Raffel et al. 2020, Sec. 3.1.4): about
    ``noise_density`` of the tokens, in spans averaging ``mean_span``, alternating with kept
    spans; the sequence starts with a kept span."""
    if length < 2:
        return np.zeros(length, dtype=bool)
    n_noise = int(round(length * noise_density))
    n_noise = min(max(n_noise, 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span)), 1)
    if max_spans is not None:
        n_spans = min(n_spans, max_spans)
    n_spans = min(n_spans, n_noise, length - n_noise)
    noise_lens = random_segmentation(n_noise, n_spans, rng)
    keep_lens = random_segmentation(length - n_noise, n_spans, rng)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for k, nz in zip(keep_lens, noise_lens):
        pos += int(k)
        mask[pos : pos + int(nz)] = True
        pos += int(nz)
    return mask


class SpanCorruption(Objective):
    """T5 span corruption: drop ~15 % of tokens in spans of mean length 3; each dropped span
    becomes one sentinel in the input; the target lists each sentinel followed by its span."""

    name = "span-corruption"
    archs = GENERATIVE

    def __init__(self, special, arch: str, max_len: int = 512, *, noise_density: float = 0.15,  # noqa: ANN001
                 mean_span_length: float = 3.0, **kw: Any) -> None:
        super().__init__(special, arch, max_len, **kw)
        if not 0.0 < noise_density < 1.0:
            raise ConfigError(f"objective span-corruption: noise_density must be in (0, 1), got {noise_density}")
        if mean_span_length < 1.0:
            raise ConfigError(f"objective span-corruption: mean_span_length must be >= 1, got {mean_span_length}")
        if not special.sentinels:
            raise ConfigError("objective span-corruption needs sentinel tokens; train the tokenizer with "
                              "tokenizer.n_sentinels > 0")
        self.noise_density = noise_density
        self.mean_span = mean_span_length

    def corrupt(self, ids: Sequence[int], rng: np.random.Generator) -> tuple[list[int], list[int], np.ndarray]:
        sents = self.special.sentinels
        # more spans than sentinels: fewer, longer spans at the same density
        mask = random_spans_noise_mask(len(ids), self.noise_density, self.mean_span, rng, max_spans=len(sents))
        inp: list[int] = []
        tgt: list[int] = []
        k = -1
        prev = False
        for tok, m in zip(ids, mask):
            if m:
                if not prev:
                    k += 1
                    inp.append(sents[k])
                    tgt.append(sents[k])
                tgt.append(tok)
            else:
                inp.append(tok)
            prev = bool(m)
        return inp, tgt, mask

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        srcs, tgts = [], []
        for ex in examples:
            inp, tgt, _ = self.corrupt(ex.ids[: self.max_len - 2], rng)
            srcs.append(inp)
            tgts.append(tgt)
        return build_seq2seq(self, srcs, tgts)


class Denoising(Objective):
    """BART text infilling (Lewis et al. 2020, Sec. 2.2): ``mask_ratio`` (30 %) of the tokens
    are masked in spans with Poisson(``poisson_lambda`` = 3) lengths; each span becomes ONE
    ``<mask>`` (a 0-length span inserts one); the target is the original text. Optional
    sentence permutation shuffles sentences first (``permute_sentences``, needs
    ``sentence_end_ids``: token ids that end a sentence, supplied by the trainer)."""

    name = "denoising"
    archs = GENERATIVE

    def __init__(self, special, arch: str, max_len: int = 512, *, mask_ratio: float = 0.3,  # noqa: ANN001
                 poisson_lambda: float = 3.0, permute_sentences: bool = False,
                 sentence_end_ids: Sequence[int] = (), **kw: Any) -> None:
        super().__init__(special, arch, max_len, **kw)
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"objective denoising: mask_ratio must be in (0, 1), got {mask_ratio}")
        if poisson_lambda <= 0:
            raise ConfigError(f"objective denoising: poisson_lambda must be > 0, got {poisson_lambda}")
        if permute_sentences and not sentence_end_ids:
            raise ConfigError("objective denoising: permute_sentences needs sentence_end_ids")
        self.mask_ratio = mask_ratio
        self.lam = poisson_lambda
        self.permute = permute_sentences
        self.sentence_end = set(int(i) for i in sentence_end_ids)
        self.last_span_lengths: list[int] = []  # of the last corrupt() call (for statistics)

    def _permute(self, ids: list[int], rng: np.random.Generator) -> list[int]:
        sents, cur = [], []
        for t in ids:
            cur.append(t)
            if t in self.sentence_end:
                sents.append(cur)
                cur = []
        if cur:
            sents.append(cur)
        order = rng.permutation(len(sents))
        return [t for i in order for t in sents[i]]

    def corrupt(self, ids: Sequence[int], rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
        """(corrupted ids, boolean mask of the original tokens that were removed)."""
        ids = list(ids)
        n = len(ids)
        masked = np.zeros(n, dtype=bool)
        inserts = np.zeros(n + 1, dtype=bool)
        self.last_span_lengths = []
        if n == 0:
            return [], masked
        budget = int(round(n * self.mask_ratio))
        lengths: list[int] = []
        while sum(lengths) < budget:
            lengths.append(int(rng.poisson(self.lam)))
        if lengths and sum(lengths) > budget:  # trim the last span to the budget
            lengths[-1] -= sum(lengths) - budget
        self.last_span_lengths = lengths
        if lengths:
            # lay the spans out without overlap: the n - budget kept tokens are split into
            # k + 1 random gaps, interior gaps >= 1 so neighbouring spans stay separate masks
            k = len(lengths)
            kept = n - budget
            interior = min(k - 1, kept)
            gaps = rng.multinomial(kept - interior, np.full(k + 1, 1.0 / (k + 1)))
            gaps[1 : 1 + interior] += 1
            pos = 0
            for gap, length in zip(gaps, lengths):
                pos += int(gap)
                if length == 0:
                    inserts[pos] = True
                else:
                    masked[pos : pos + length] = True
                    pos += length
        out: list[int] = []
        for i in range(n):
            if inserts[i]:
                out.append(self.special.mask)
            if masked[i]:
                if i == 0 or not masked[i - 1]:
                    out.append(self.special.mask)
            else:
                out.append(ids[i])
        if inserts[n]:
            out.append(self.special.mask)
        return out, masked

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        srcs, tgts = [], []
        for ex in examples:
            text = list(ex.ids[: self.max_len - 2])
            if self.permute:
                src_text = self._permute(text, rng)
            else:
                src_text = text
            inp, _ = self.corrupt(src_text, rng)
            srcs.append(inp[: self.max_len - 2])
            tgts.append(text)
        return build_seq2seq(self, srcs, tgts)
