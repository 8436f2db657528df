"""Deterministic, resumable batching under a token budget, and sequence packing.

``Batcher.epoch_batches(epoch)`` is a pure function of (examples, seed, epoch): the trainer
stores its position as (epoch, batch index) and a resumed run sees exactly the same batches.
Batches are length-bucketed (examples of similar length batched together, as fairseq and
tensor2tensor do) so little compute is spent on padding: examples are shuffled, cut into
large pools, sorted by length inside each pool, grouped under the token budget (padded
tokens = longest example x batch size), and the batch order is shuffled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from archlab.data.types import Example

POOL = 100  # pool = POOL batches' worth of examples, sorted by length


def example_length(ex: Example) -> int:
    """Tokens an example occupies (both sides of a pair, plus room for special tokens)."""
    if ex.src is not None:
        return len(ex.src) + len(ex.tgt or []) + 3
    return len(ex.ids) + 2


class Batcher:
    def __init__(
        self,
        examples: Sequence[Example],
        *,
        tokens_per_batch: int,
        max_batch: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        bucket: bool = True,
        pack: bool = False,
        pack_len: int | None = None,
        eos: int | None = None,
        max_len: int | None = None,
        length: Callable[[Example], int] | None = None,
    ) -> None:
        """``max_len``: lengths are capped at this for budgeting (objectives truncate to it).
        ``length``: an example's length for budgeting, instead of :func:`example_length`
        capped at ``max_len + 3``: the objective's :meth:`~archlab.objectives.Objective.
        batch_length`, which with explicit source/target budgets is the same for every
        family, so every family's run groups the same examples into the same batches."""
        if tokens_per_batch < 1:
            raise ValueError("tokens_per_batch must be >= 1")
        if pack:
            if not pack_len:
                raise ValueError("packing needs pack_len")
            examples = pack_examples(examples, pack_len, eos)
            max_len = pack_len
        self.examples = list(examples)
        self.tokens_per_batch = tokens_per_batch
        self.max_batch = max_batch
        self.seed = seed
        self.shuffle = shuffle
        self.bucket = bucket
        cap = (max_len + 3) if max_len else None
        if length is not None and not pack:
            self.lengths = np.array([length(e) for e in self.examples], dtype=np.int64)
        else:
            self.lengths = np.array([min(example_length(e), cap) if cap else example_length(e)
                                     for e in self.examples], dtype=np.int64)

    def _group(self, order: np.ndarray) -> list[list[int]]:
        batches, cur, longest = [], [], 0
        for i in order:
            n = int(self.lengths[i])
            new_longest = max(longest, n)
            full = cur and (new_longest * (len(cur) + 1) > self.tokens_per_batch or
                            (self.max_batch is not None and len(cur) >= self.max_batch))
            if full:
                batches.append(cur)
                cur, new_longest = [], n
            cur.append(int(i))
            longest = new_longest
        if cur:
            batches.append(cur)
        return batches

    def epoch_indices(self, epoch: int) -> list[list[int]]:
        """The epoch's batches as example indices (into :attr:`examples`)."""
        n = len(self.examples)
        if n == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket:
            mean = max(float(self.lengths.mean()), 1.0)
            pool = max(int(POOL * self.tokens_per_batch / mean), 1)
            batches = []
            for s in range(0, n, pool):
                chunk = order[s : s + pool]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += self._group(chunk)
        else:
            batches = self._group(order)
        if self.shuffle:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
        return batches

    def epoch_batches(self, epoch: int) -> list[list[Example]]:
        return [[self.examples[i] for i in b] for b in self.epoch_indices(epoch)]

    def __len__(self) -> int:
        return len(self.epoch_batches(0))


def pack_examples(examples: Sequence[Example], pack_len: int, eos: int | None) -> list[Example]:
    """Concatenate the token streams of text examples (separated by ``eos``) and cut them into
    chunks of ``pack_len`` tokens, so LM training wastes nothing on padding (GPT-2, T5).
    Objectives then add their own framing tokens around each chunk."""
    stream: list[int] = []
    for ex in examples:
        if ex.src is not None:
            raise ValueError("packing applies to text examples (ids), not to source/target pairs")
        stream.extend(ex.ids)
        if eos is not None:
            stream.append(eos)
    body = max(pack_len - 2, 1)  # room for the objective's bos/eos (or cls/sep)
    return [Example(ids=stream[i : i + body]) for i in range(0, len(stream), body) if stream[i : i + body]]
