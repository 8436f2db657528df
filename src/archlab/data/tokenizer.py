"""Tokenizers: train byte-level BPE or Unigram with Hugging Face ``tokenizers``, save/load
with a content hash, and wrap the ``tokenizer.json`` of Hugging Face checkpoints.

The subword kinds work on bytes (GPT-2's byte-level pre-tokenizer, Radford et al. 2019), so
any UTF-8 text round-trips and there is no unknown token; ``bpe`` is byte-pair encoding
(Sennrich et al. 2016), ``unigram`` the unigram language model of Kudo 2018. ``word`` splits
at whitespace and makes each distinct word one token (the probe tasks' symbols, so that
accuracy per answer token is accuracy per symbol); words outside its vocabulary become
``<unk>``. One vocabulary serves source and target (shared embeddings, as in T5 and BART).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from archlab.data.types import SpecialTokens
from archlab.errors import ArchlabError

META = "archlab_tokenizer.json"
FILE = "tokenizer.json"
# order fixes the ids: pad=0, bos=1, eos=2, mask=3, sep=4, cls=5, unk=6, then sentinels
SPECIALS = ["<pad>", "<s>", "</s>", "<mask>", "<sep>", "<cls>", "<unk>"]
KINDS = ("bpe", "unigram", "word")


def sentinel(i: int) -> str:
    """T5's span-corruption sentinel names (Raffel et al. 2020, Sec. 3.1.4)."""
    return f"<extra_id_{i}>"


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special-token ids archlab's objectives need."""

    def __init__(self, tok: Any, special: SpecialTokens, kind: str, source: str = "archlab") -> None:
        # a tokenizer.json may carry padding/truncation (all-MiniLM-L6-v2's pads and cuts every
        # text to 128 tokens); archlab pads in its batcher and truncates by data.max_len, so both
        # are switched off here, otherwise long inputs are silently cut and short ones padded
        tok.no_padding()
        tok.no_truncation()
        self.tok = tok
        self.kind = kind
        self.source = source  # "archlab" (trained here) or "hf" (from a checkpoint directory)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.special = SpecialTokens(**{**special.__dict__, "vocab_size": self.vocab_size})
        self._special_ids = sorted(self.special.special_ids())

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        kind: str = "bpe",
        n_sentinels: int = 100,
        min_frequency: int = 2,
    ) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        if kind not in KINDS:
            raise ArchlabError(f"tokenizer.kind={kind!r}: choose one of: {', '.join(KINDS)}")
        specials = SPECIALS + [sentinel(i) for i in range(n_sentinels)]
        if kind == "word":
            return cls._train_words(texts, vocab_size, specials, n_sentinels)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        need = len(specials) + len(alphabet) + 1
        if vocab_size < need:
            raise ArchlabError(f"tokenizer.vocab_size={vocab_size} is too small: {len(specials)} special "
                               f"tokens + {len(alphabet)} byte symbols need at least {need}")
        if kind == "bpe":
            tok = HFTokenizer(models.BPE())
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                          special_tokens=specials, initial_alphabet=alphabet,
                                          show_progress=False)
        else:
            tok = HFTokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                              initial_alphabet=alphabet, unk_token="<unk>",
                                              show_progress=False)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        n_texts = 0

        def counted() -> Iterable[str]:
            nonlocal n_texts
            for t in texts:
                n_texts += 1
                yield t

        tok.train_from_iterator(counted(), trainer=trainer)
        if n_texts == 0:
            raise ArchlabError("cannot train a tokenizer on zero texts (the training split is empty)")
        ids = {s: tok.token_to_id(s) for s in specials}
        special = SpecialTokens(
            pad=ids["<pad>"], bos=ids["<s>"], eos=ids["</s>"], mask=ids["<mask>"], sep=ids["<sep>"],
            cls=ids["<cls>"], sentinels=tuple(ids[sentinel(i)] for i in range(n_sentinels)),
            first_normal=len(specials),
        )
        return cls(tok, special, kind)

    @classmethod
    def _train_words(cls, texts: Iterable[str], vocab_size: int, specials: list[str],
                     n_sentinels: int) -> Tokenizer:
        """Word level: the specials, then every whitespace-separated word of ``texts``, most
        frequent first (ties: first seen), up to ``vocab_size`` tokens in all. Every word is
        kept however rare (``min_frequency`` does not apply): the texts of a probe task start
        with its whole symbol inventory (``archlab.data.corpus_texts``), each symbol once."""
        from collections import Counter

        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers

        counts: Counter[str] = Counter()
        n_texts = 0
        for t in texts:
            n_texts += 1
            counts.update(t.split())
        if n_texts == 0:
            raise ArchlabError("cannot train a tokenizer on zero texts (the training split is empty)")
        words = [w for w, _ in counts.most_common() if w not in specials]  # stable: ties keep first seen
        if len(specials) + len(words) > vocab_size:
            raise ArchlabError(f"tokenizer.vocab_size={vocab_size} is too small for the {len(words)} words of "
                               f"the task and {len(specials)} special tokens; set it to at least "
                               f"{len(specials) + len(words)} (kind word keeps every word)")
        vocab = {w: i for i, w in enumerate([*specials, *words])}
        tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # no decoder: decode joins with spaces
        tok.add_special_tokens(specials)
        special = SpecialTokens(
            pad=vocab["<pad>"], bos=vocab["<s>"], eos=vocab["</s>"], mask=vocab["<mask>"], sep=vocab["<sep>"],
            cls=vocab["<cls>"], sentinels=tuple(vocab[sentinel(i)] for i in range(n_sentinels)),
            first_normal=len(specials),
        )
        return cls(tok, special, "word")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A directory written by :meth:`save`; its hash is verified."""
        from tokenizers import Tokenizer as HFTokenizer

        d = Path(path)
        meta_path, file = d / META, d / FILE
        for p in (meta_path, file):
            if not p.exists():
                raise ArchlabError(f"{p}: missing (not an archlab tokenizer directory)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tok = HFTokenizer.from_str(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, Exception) as e:  # tokenizers raises Exception
            raise ArchlabError(f"{d}: unreadable tokenizer ({str(e).splitlines()[0][:120]})") from None
        sp = meta["special"]
        special = SpecialTokens(pad=sp["pad"], bos=sp["bos"], eos=sp["eos"], mask=sp["mask"], sep=sp["sep"],
                                cls=sp["cls"], sentinels=tuple(sp.get("sentinels", ())),
                                first_normal=sp.get("first_normal", 0))
        out = cls(tok, special, meta.get("kind", "bpe"), meta.get("source", "archlab"))
        out.check_matches(meta["sha256"], meta["vocab_size"], str(file))
        return out

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """The ``tokenizer.json`` of a Hugging Face model directory.

        Special ids come from ``tokenizer_config.json`` / ``special_tokens_map.json`` (token
        strings) or ``config.json`` (ids). Roles a tokenizer lacks are mapped as HF does: BERT
        has no bos/eos, so bos -> [CLS] and eos -> [SEP]; GPT-2 has only <|endoftext|>, which
        serves as bos, eos and pad; T5's sentinels are its <extra_id_N> tokens.
        """
        from tokenizers import Tokenizer as HFTokenizer

        d = Path(path)
        file = d / FILE
        if not file.exists():
            raise ArchlabError(f"{file}: missing; archlab reads Hugging Face tokenizers from tokenizer.json")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception
            raise ArchlabError(f"{file}: unreadable ({str(e).splitlines()[0][:120]})") from None
        names: dict[str, Any] = {}
        for fname in ("special_tokens_map.json", "tokenizer_config.json"):
            p = d / fname
            if p.exists():
                try:
                    data = json.loads(p.read_text(encoding="utf-8"))
                except json.JSONDecodeError:
                    raise ArchlabError(f"{p}: not valid JSON") from None
                for role in ("pad", "bos", "eos", "mask", "sep", "cls", "unk"):
                    v = data.get(f"{role}_token")
                    if isinstance(v, dict):
                        v = v.get("content")
                    if isinstance(v, str) and role not in names:
                        names[role] = v
        ids = {r: tok.token_to_id(n) for r, n in names.items() if tok.token_to_id(n) is not None}
        cfg_path = d / "config.json"
        if cfg_path.exists():
            try:
                c = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise ArchlabError(f"{cfg_path}: not valid JSON") from None
            for role in ("pad", "bos", "eos"):
                v = c.get(f"{role}_token_id")
                if isinstance(v, int) and role not in ids:
                    ids[role] = v
        vocab = tok.get_vocab(with_added_tokens=True)
        for role, candidates in {"pad": ["<pad>", "[PAD]"], "eos": ["</s>", "<|endoftext|>", "[SEP]"],
                                 "bos": ["<s>", "<|endoftext|>", "[CLS]"], "mask": ["<mask>", "[MASK]"],
                                 "sep": ["[SEP]", "</s>"], "cls": ["[CLS]", "<s>"],
                                 "unk": ["<unk>", "[UNK]"]}.items():
            if role not in ids:
                for c in candidates:
                    if c in vocab:
                        ids[role] = vocab[c]
                        break
        ids.setdefault("bos", ids.get("cls"))
        ids.setdefault("eos", ids.get("sep"))
        ids.setdefault("cls", ids.get("bos"))
        ids.setdefault("sep", ids.get("eos"))
        ids.setdefault("pad", ids.get("eos"))
        ids.setdefault("mask", ids.get("unk", ids.get("pad")))
        missing = [r for r in ("pad", "bos", "eos") if ids.get(r) is None]
        if missing:
            raise ArchlabError(f"{d}: cannot find the {', '.join(missing)} token id(s) in the tokenizer files")
        sentinels = []
        i = 0
        while sentinel(i) in vocab:
            sentinels.append(vocab[sentinel(i)])
            i += 1
        special = SpecialTokens(pad=ids["pad"], bos=ids["bos"], eos=ids["eos"], mask=ids["mask"],
                                sep=ids["sep"], cls=ids["cls"], sentinels=tuple(sentinels), first_normal=0)
        return cls(tok, special, "hf", "hf")

    # ---- use --------------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        """Hash of the vocabulary/merges/normalisation (canonical JSON) and the special ids."""
        canon = json.dumps(json.loads(self.tok.to_str()), sort_keys=True, separators=(",", ":"))
        blob = canon + json.dumps(self._meta_special(), sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _meta_special(self) -> dict[str, Any]:
        s = self.special
        return {"pad": s.pad, "bos": s.bos, "eos": s.eos, "mask": s.mask, "sep": s.sep, "cls": s.cls,
                "sentinels": list(s.sentinels), "first_normal": s.first_normal}

    def save(self, path: str | Path) -> None:
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        (d / FILE).write_text(self.tok.to_str(), encoding="utf-8")
        meta = {"kind": self.kind, "source": self.source, "vocab_size": self.vocab_size,
                "sha256": self.sha256, "special": self._meta_special()}
        (d / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")

    def check_matches(self, sha256: str, vocab_size: int, where: str) -> None:
        """Refuse a tokenizer that is not the one a model was trained with."""
        if vocab_size != self.vocab_size:
            raise ArchlabError(f"{where}: tokenizer has {self.vocab_size} tokens but the model was trained "
                               f"with {vocab_size}; use the run's own tokenizer/")
        if sha256 != self.sha256:
            raise ArchlabError(f"{where}: tokenizer hash {self.sha256[:12]} differs from the one the model was "
                               f"trained with ({sha256[:12]}); use the run's own tokenizer/")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_words_batch(self, sentences: list[list[str]]) -> list[tuple[list[int], list[int]]]:
        """Per sentence (a list of words), (token ids, the word index of every token).

        Each sentence is encoded as its words joined by single spaces, the running text the
        tokenizer was trained on and a model reads at inference, and each token is mapped to a
        word by its character offsets (into the original text, whatever the normalizer did). A
        token's word is the one holding the last character of its span; a byte-level token
        that is only the space before a word (``Ġ`` before a split character) belongs to the
        word it precedes. A word the tokenizer drops entirely (only characters its normalizer
        removes) has no token."""
        texts, owners = [], []
        for words in sentences:
            text = " ".join(words)
            owner = [0] * len(text)  # character -> word; the separating space -> the next word
            pos = 0
            for w, word in enumerate(words):
                if w:
                    owner[pos] = w
                    pos += 1
                owner[pos : pos + len(word)] = [w] * len(word)
                pos += len(word)
            texts.append(text)
            owners.append(owner)
        out = []
        for enc, owner in zip(self.tok.encode_batch(texts, add_special_tokens=False), owners):
            wids = []
            for start, end in enc.offsets:
                c = min(max(start, end - 1), len(owner) - 1)
                wids.append(owner[c] if owner else 0)
            out.append((list(enc.ids), wids))
        return out

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            sp = set(self._special_ids)
            ids = [i for i in ids if i not in sp]
        return self.tok.decode(ids, skip_special_tokens=skip_special).strip()
