"""Batched decoding for decoder, prefix-LM and encoder-decoder models: greedy, sampling and
beam search over one static KV cache.

Cost model (why the loop looks the way it does): a decoder-only or prefix-LM model reads its
prompt once into the self-attention cache (the "prefill") and then feeds one token per step;
an encoder-decoder runs its encoder once per source, and its cross-attention keys/values are
computed at the first decoder step and kept in the cache (Vaswani et al. 2017). The cache is
preallocated for prompt + ``max_new_tokens`` slots, so steps write in place.

Padding: decoder prompts are left-padded so every row's last prompt token sits in the same
slot and all rows step together; positions count real tokens only (a padded row's first real
token is position 0, as in training). Encoder sources are right-padded and masked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from archlab.errors import ArchlabError
from archlab.generate.backends import decoding_backend
from archlab.generate.config import GenerationConfig
from archlab.objectives.layout import lm_prompt, seq2seq_prompt

NEG_INF = float("-inf")


@dataclass
class GenerationOutput:
    """Results in input order; with ``num_return_sequences = n`` input i owns rows
    ``i*n .. i*n+n-1`` (best first)."""

    sequences: list[list[int]]  # new tokens, without the final EOS
    scores: list[float]  # sum of log-probabilities (greedy/sample); length-normalised (beam)
    finished: list[bool]  # ended with EOS (else cut at max_new_tokens)
    n_new_tokens: int  # tokens produced, EOS included (what decoding tokens/s counts)
    prompts: list[list[int]] = field(default_factory=list)  # the decoder-side prompt of each input
    logits: list[torch.Tensor] | None = None  # greedy/sample with output_logits: per step (B, V)


@dataclass
class Prompt:
    """One input laid out for the model: decoder prompt ids, encoder ids (encoder-decoder)
    and whether the decoder prompt is a bidirectional prefix (prefix-LM)."""

    decoder: list[int]
    encoder: list[int] | None = None
    prefix: bool = False


def _special_ids(model: Any, special: Any | None) -> tuple[int, int, int, int | None]:
    """(pad, bos, eos, sep) from the tokenizer's special tokens, else the model config."""
    cfg = model.cfg
    if special is not None:
        return special.pad, special.bos, special.eos, special.sep
    return cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, None


def layout_prompts(model: Any, inputs: Sequence[Sequence[int]], cfg: GenerationConfig,
                   special: Any | None = None) -> list[Prompt]:
    """Turn token-id inputs into prompts in the layout the model was trained on (see
    :class:`GenerationConfig`), truncated to fit absolute-position tables."""
    mcfg = model.cfg
    arch = mcfg.arch
    pad, bos, eos, sep = _special_ids(model, special)
    absolute = mcfg.position in ("learned", "sinusoidal")
    limit = mcfg.max_seq_len if absolute else None
    out = []
    for x in inputs:
        x = [int(t) for t in x]
        if cfg.prompt_layout == "seq2seq":
            if arch != "encoder-decoder" and sep is None:
                raise ArchlabError("prompt_layout=seq2seq on a decoder-only model needs the "
                                   "tokenizer's <sep> token (pass special=tokenizer.special)")
            if cfg.max_source_len is not None:  # the run's source budget, as in training
                x = x[: cfg.max_source_len]
            if limit:  # absolute-position tables: keep the start of the source
                x = x[: max(limit - (1 if arch == "encoder-decoder" else 3), 0)]
            dec, enc = seq2seq_prompt(arch, x, _Special(pad, bos, eos, sep), mcfg.start_token_id)
            out.append(Prompt(dec, enc, prefix=arch == "prefix-lm"))
        elif cfg.prompt_layout == "lm":
            dec, enc = lm_prompt(arch, x, _Special(pad, bos, eos, sep))
            out.append(Prompt(dec[-(limit - 1):] if limit else dec, enc))
        elif arch == "encoder-decoder":
            out.append(Prompt([mcfg.start_token_id], x[:limit] if limit else x))
        else:
            if not x:
                raise ArchlabError("prompt_layout=raw: an empty prompt has nothing to continue")
            out.append(Prompt(x[-(limit - 1):] if limit else x, prefix=arch == "prefix-lm"))
    return out


@dataclass(frozen=True)
class _Special:
    pad: int
    bos: int
    eos: int
    sep: int | None


class _Decoding:
    """The model side of the loop: prefill, one step, row reordering. ``use_cache=False`` is
    the reference path that recomputes the whole sequence at every step."""

    def __init__(self, model: Any, prompts: list[Prompt], pad: int, max_new: int,
                 use_cache: bool, compiled: bool = False) -> None:
        self.model = model
        dev = model.embed_tokens.weight.device
        self.use_cache = use_cache
        # compiled: fixed-shape steps over a StaticKVCache (generate.backends.compiled_step)
        self.compiled = compiled and use_cache
        B = len(prompts)
        P = max(len(p.decoder) for p in prompts)
        ids = torch.full((B, P), pad, dtype=torch.long)
        mask = torch.zeros(B, P, dtype=torch.bool)
        for i, p in enumerate(prompts):  # left padding
            ids[i, P - len(p.decoder):] = torch.tensor(p.decoder)
            mask[i, P - len(p.decoder):] = True
        self.ids, self.mask = ids.to(dev), mask.to(dev)
        self.padded = not bool(mask.all())
        # positions count real tokens: a left-padded row starts at 0 like an unpadded one (a
        # static cache is always given them: its steps read no Python length)
        self.pos = ((self.mask.long().cumsum(-1) - 1).clamp(min=0) if self.padded or self.compiled
                    else None)
        self.last_pos = self.pos[:, -1:] if self.pos is not None else None
        self.prefix = (torch.full((B,), P, dtype=torch.long, device=dev)
                       if any(p.prefix for p in prompts) else None)
        self.enc_out = self.enc_mask = None
        if prompts[0].encoder is not None:
            S = max(len(p.encoder) for p in prompts)
            src = torch.full((B, S), pad, dtype=torch.long)
            smask = torch.zeros(B, S, dtype=torch.bool)
            for i, p in enumerate(prompts):  # right padding (the encoder is bidirectional)
                src[i, : len(p.encoder)] = torch.tensor(p.encoder)
                smask[i, : len(p.encoder)] = True
            src, smask = src.to(dev), smask.to(dev)
            self.enc_out = model.encode(src, smask)  # (B, S, C)
            self.enc_mask = smask
        self.cache = model.new_cache(B, P + max_new, static=self.compiled) if use_cache else None
        self._step = None
        if self.compiled:
            from archlab.generate.backends import compiled_step

            self._step = compiled_step(dev)
        self.prompt_len = P

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_logits(hidden[:, -1]).float()  # (N, V)

    def prefill(self) -> torch.Tensor:
        """Read the prompts; next-token logits (B, V)."""
        hidden = self.model.decode(self.ids, self.mask if self.padded else None,
                                   encoder_out=self.enc_out, encoder_mask=self.enc_mask,
                                   prefix_lengths=self.prefix, position_ids=self.pos,
                                   cache=self.cache)
        if self.use_cache:
            self.enc_out = None  # cross-attention keys/values now live in the cache
        return self._logits(hidden)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (N,); next-token logits (N, V)."""
        tok = tokens[:, None]
        if self.last_pos is not None:
            self.last_pos = self.last_pos + 1
        if self._step is not None:
            return self._step(self.model, self.cache, tok, self.last_pos, self.enc_mask)
        if self.use_cache:
            hidden = self.model.decode(tok, None, encoder_mask=self.enc_mask,
                                       position_ids=self.last_pos, cache=self.cache)
            return self._logits(hidden)
        self.ids = torch.cat([self.ids, tok], 1)
        self.mask = torch.cat([self.mask, torch.ones_like(tok, dtype=torch.bool)], 1)
        if self.pos is not None:
            self.pos = torch.cat([self.pos, self.last_pos], 1)
        hidden = self.model.decode(self.ids, self.mask if self.padded else None,
                                   encoder_out=self.enc_out, encoder_mask=self.enc_mask,
                                   prefix_lengths=self.prefix, position_ids=self.pos)
        return self._logits(hidden)

    def repeat_interleave(self, n: int) -> None:
        """Each row becomes n rows (beams) in a row."""
        def rep(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.repeat_interleave(n, dim=0)

        self.ids, self.mask, self.pos, self.last_pos = rep(self.ids), rep(self.mask), rep(self.pos), rep(self.last_pos)
        self.prefix, self.enc_out, self.enc_mask = rep(self.prefix), rep(self.enc_out), rep(self.enc_mask)
        if self.cache is not None:
            self.cache.repeat_interleave(n)

    def reorder(self, index: torch.Tensor) -> None:
        """Row i takes old row ``index[i]`` (always a beam of the same source)."""
        if self.cache is not None:
            self.cache.reorder(index)
        else:
            self.ids, self.mask = self.ids.index_select(0, index), self.mask.index_select(0, index)
            if self.pos is not None:
                self.pos = self.pos.index_select(0, index)


def _filter_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering; (N, V) -> (N, V)."""
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (keeps >= 1 token)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= cfg.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, NEG_INF)
    return logits


def _resolve(model: Any, cfg: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    if cfg is None:
        cfg = GenerationConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    cfg.validate()
    if model.cfg.arch == "encoder":
        raise ArchlabError("arch encoder has no decoder to generate with (masked-LM models fill "
                           "masks; use a decoder, prefix-lm or encoder-decoder model)")
    return cfg


@torch.inference_mode()
def generate(model: Any, inputs: Sequence[Sequence[int]], config: GenerationConfig | None = None,
             *, special: Any | None = None, output_logits: bool = False,
             forced: Sequence[Mapping[int, int]] | None = None,
             **overrides: Any) -> GenerationOutput:
    """Decode a batch of token-id inputs.

    Args:
        model: an archlab ``Transformer`` (decoder, prefix-lm or encoder-decoder).
        inputs: one list of token ids per example (sources, or texts to continue).
        config: decoding options; keyword ``overrides`` replace its fields.
        special: the tokenizer's ``SpecialTokens`` (``tokenizer.special``); without it the
            model config's pad/bos/eos ids are used (enough for ``raw`` and ``lm`` layouts).
        output_logits: keep each step's (B, V) logits (greedy/sample; for checks).
        forced: per input, {step: token}: new token ``step`` (0-based) is ``token`` whatever
            the model predicts (greedy/sample): the given positions of a target, such as the
            query keys of MQAR's interleaved layout (Arora et al. 2023), are fed, not generated.
    """
    cfg = _resolve(model, config, overrides)
    if forced is not None:
        if cfg.strategy == "beam":
            raise ArchlabError("generate: forced tokens need greedy or sample decoding, not beam search")
        if len(forced) != len(inputs):
            raise ArchlabError(f"generate: {len(forced)} forced-token maps for {len(inputs)} inputs")
    if not inputs:
        return GenerationOutput([], [], [], 0, [], [] if output_logits else None)
    pad, _, eos, _ = _special_ids(model, special)
    if cfg.eos_token_id is not None:
        eos = cfg.eos_token_id
    prompts = layout_prompts(model, inputs, cfg, special)
    max_new = cfg.max_new_tokens
    if model.cfg.position in ("learned", "sinusoidal"):  # absolute tables end at max_seq_len
        longest = max(len(p.decoder) for p in prompts)
        max_new = min(max_new, model.cfg.max_seq_len - longest)
        if max_new < 1:
            raise ArchlabError(f"prompt of {longest} tokens leaves no room to generate "
                               f"(model.max_seq_len={model.cfg.max_seq_len})")
    was_training = model.training
    model.eval()
    try:
        with decoding_backend(model, cfg.backend) as backend:  # the weight products (generate.backends)
            dec = _Decoding(model, prompts, pad, max_new, cfg.use_cache, compiled=backend == "compiled")
            if cfg.strategy == "beam":
                out = _beam_search(dec, cfg, len(prompts), max_new, eos, pad)
            else:
                out = _sample_or_greedy(dec, cfg, max_new, eos, pad, output_logits, forced)
    finally:
        model.train(was_training)
    out.prompts = [p.decoder for p in prompts]
    return out


def _sample_or_greedy(dec: _Decoding, cfg: GenerationConfig, max_new: int, eos: int, pad: int,
                      output_logits: bool, forced: Sequence[Mapping[int, int]] | None = None) -> GenerationOutput:
    n = cfg.num_return_sequences
    logits = dec.prefill()  # (B, V)
    if n > 1:
        dec.repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)
    N = logits.shape[0]
    dev = logits.device
    force = None  # (N, max_new): the token fed at each step, -1 where the model chooses
    if forced is not None and any(forced):
        force = torch.full((len(forced), max_new), -1, dtype=torch.long)
        for i, f in enumerate(forced):
            for t, tok in f.items():
                if 0 <= t < max_new:
                    force[i, t] = int(tok)
        force = force.repeat_interleave(n, dim=0).to(dev)
    gen = None
    if cfg.strategy == "sample" and cfg.seed is not None:
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    out = torch.full((N, max_new), pad, dtype=torch.long, device=dev)
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    length = torch.full((N,), max_new, dtype=torch.long, device=dev)
    score = torch.zeros(N, device=dev)
    kept: list[torch.Tensor] | None = [] if output_logits else None
    steps = 0
    any_done = False  # until a row ends, the per-row masking below has nothing to mask
    for t in range(max_new):
        if kept is not None:
            kept.append(logits.clone())
        if t < cfg.min_new_tokens:
            logits[:, eos] = NEG_INF
        if cfg.strategy == "greedy":
            nxt = logits.argmax(-1)
        else:
            probs = _filter_logits(logits, cfg).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        if force is not None:
            nxt = torch.where(force[:, t] >= 0, force[:, t], nxt)
        logp = logits.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
        if any_done:
            logp = logp.masked_fill(done, 0.0)
            nxt = nxt.masked_fill(done, pad)
        score += logp
        out[:, t] = nxt
        ended = nxt == eos
        if any_done:
            ended &= ~done
        steps = t + 1
        if bool(ended.any()):
            length = torch.where(ended, t, length)
            done |= ended
            any_done = True
            if bool(done.all()):
                break
        if t + 1 == max_new:
            break
        logits = dec.step(nxt)
    lengths = length.tolist()
    rows = out[:, :steps].tolist()
    finished = done.tolist()
    seqs = [r[:n_] for r, n_ in zip(rows, lengths)]
    n_tokens = sum(n_ + int(f) for n_, f in zip(lengths, finished))
    return GenerationOutput(seqs, score.tolist(), finished, n_tokens, logits=kept)


def _beam_search(dec: _Decoding, cfg: GenerationConfig, B: int, max_new: int, eos: int,
                 pad: int) -> GenerationOutput:
    """Beam search (Sutskever et al. 2014) with n-best output.

    Each step scores all K*V extensions of a source's K beams and keeps the best 2K, so that
    K non-EOS continuations survive even when some candidates end; an EOS candidate within
    the top K becomes a finished hypothesis scored ``sum log p / length ** length_penalty``
    (length counts the EOS). A source is done when K hypotheses have finished and either
    ``early_stopping`` is set or no running beam can still beat the worst of them at the
    current length (the rule of HF's ``early_stopping=False``).
    """
    K = cfg.num_beams
    lp = cfg.length_penalty
    logits = dec.prefill()  # (B, V)
    dec.repeat_interleave(K)
    V = logits.shape[-1]
    dev = logits.device
    logp = logits.log_softmax(-1).repeat_interleave(K, dim=0)  # (B*K, V)
    beam_scores = torch.zeros(B, K, device=dev)
    beam_scores[:, 1:] = NEG_INF  # all beams start identical: extend only the first
    hist = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
    hyps: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(B)]
    done = [False] * B
    base = torch.arange(B, device=dev)[:, None] * K  # (B, 1) first row of each source
    for t in range(max_new):
        if t < cfg.min_new_tokens:
            logp[:, eos] = NEG_INF
        cand = (beam_scores.view(-1, 1) + logp).view(B, K * V)
        top_s, top_i = cand.topk(2 * K, dim=-1)  # (B, 2K)
        top_beam, top_tok = top_i // V, top_i % V
        s_l, b_l, k_l = top_s.tolist(), top_beam.tolist(), top_tok.tolist()
        next_scores = torch.zeros(B, K)
        next_beam = torch.arange(K).repeat(B, 1)
        next_tok = torch.full((B, K), pad, dtype=torch.long)
        hist_l = None
        for b in range(B):
            if done[b]:
                continue
            j = 0
            for rank, (s, bi, tk) in enumerate(zip(s_l[b], b_l[b], k_l[b])):
                if s == NEG_INF:
                    break
                if tk == eos:
                    if rank < K:
                        if hist_l is None:
                            hist_l = hist.tolist()
                        hyps[b].append((s / (t + 1) ** lp, hist_l[b * K + bi], True))
                    continue
                next_scores[b, j], next_beam[b, j], next_tok[b, j] = s, bi, tk
                j += 1
                if j == K:
                    break
            if j < K:  # fewer than K live continuations (tiny vocabularies): pad the rest
                next_scores[b, j:] = NEG_INF
            hyps[b].sort(key=lambda h: -h[0])
            del hyps[b][K:]
            if len(hyps[b]) == K:
                best_running = float(next_scores[b, 0]) / (t + 1) ** lp
                if cfg.early_stopping or best_running <= hyps[b][-1][0]:
                    done[b] = True
        if all(done) or t + 1 == max_new:
            # finish: the running beams of unfinished sources compete as cut hypotheses
            next_rows = (base.cpu() + next_beam).view(-1)
            final = torch.cat([hist.cpu()[next_rows], next_tok.view(-1, 1)], 1).tolist()
            for b in range(B):
                if done[b]:
                    continue
                for k in range(K):
                    s = float(next_scores[b, k])
                    if s != NEG_INF:
                        hyps[b].append((s / (t + 1) ** lp, final[b * K + k], False))
                hyps[b].sort(key=lambda h: -h[0])
            break
        rows = (base + next_beam.to(dev)).view(-1)  # (B*K,) old row of each new beam
        hist = torch.cat([hist.index_select(0, rows), next_tok.to(dev).view(-1, 1)], 1)
        beam_scores = next_scores.to(dev)
        dec.reorder(rows)
        logp = dec.step(next_tok.to(dev).view(-1)).log_softmax(-1)
    n = cfg.num_return_sequences
    seqs, scores, finished = [], [], []
    for b in range(B):
        for score, seq, fin in hyps[b][:n]:
            seqs.append(seq)
            scores.append(score)
            finished.append(fin)
    # tokens delivered (EOS included): the returned hypotheses, not every beam explored
    n_tokens = sum(len(q) + int(f) for q, f in zip(seqs, finished))
    return GenerationOutput(seqs, scores, finished, n_tokens)
