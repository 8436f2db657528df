"""archlab models imported from Hugging Face checkpoints give HF's numbers exactly (fp32 CPU,
``torch.testing.assert_close`` at default tolerances), and exported models load back in HF with
the same logits."""

from __future__ import annotations

import pytest
import torch

from archlab.convert import from_hf, hf_to_archlab, to_hf

from .hf_models import DECODERS, FAMILY, PAD, SEQ2SEQ, SPECS, batch, greedy, left_positions, load_hf, make

pytest.importorskip("transformers")

NAMES = list(SPECS)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """name -> (checkpoint dir, HF model), built once per module."""
    root = tmp_path_factory.mktemp("hf")
    return {name: (root / name, make(name, root / name)) for name in NAMES}


def _hf_out(hf, name, ids, mask, dec=None, position_ids=None):
    with torch.no_grad():
        if name in SEQ2SEQ:
            return hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        if name.endswith("-model"):
            return hf(input_ids=ids, attention_mask=mask).last_hidden_state
        if SPECS[name][0].startswith(("Roberta", "DistilBert")):  # no position_ids argument needed
            return hf(input_ids=ids, attention_mask=mask).logits
        return hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


def _ours(model, name, ids, mask, dec=None, position_ids=None):
    with torch.no_grad():
        if name.endswith("-cls"):
            return model.classify(ids, mask)
        out = model(ids, mask, decoder_input_ids=dec, position_ids=position_ids)
        return out.hidden if name.endswith("-model") else out.logits


def _compare(a, b, name, mask):
    if a.dim() == 3 and name not in SEQ2SEQ:  # positions of padding are not compared
        m = mask.bool()
        a, b = a[m], b[m]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_import_right_padding_matches_hf(ckpts, name):
    path, hf = ckpts[name]
    imp = from_hf(path)
    assert imp.family == FAMILY[name] and imp.architecture == SPECS[name][0]
    ids, mask = batch(pad=PAD.get(name, 0))
    dec = batch(seed=2, T=6)[0] if name in SEQ2SEQ else None
    ref = _hf_out(hf, name, ids, mask, dec)
    ours = _ours(imp.model, name, ids, mask, dec)
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    _compare(ours, ref, name, mask)


@pytest.mark.parametrize("name", ["t5", "t5-v1.1"])
def test_t5_beyond_max_distance(ckpts, name):
    """Sequences longer than relative_attention_max_distance (20): the clamped log buckets."""
    path, hf = ckpts[name]
    ids, mask = batch(seed=9, T=33)
    dec = batch(seed=10, T=27)[0]
    _compare(_ours(from_hf(path).model, name, ids, mask, dec), _hf_out(hf, name, ids, mask, dec), name, mask)


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_left_padding_with_position_ids(ckpts, name):
    path, hf = ckpts[name]
    model = from_hf(path).model
    ids, mask = batch(seed=3, left=True)
    pos = left_positions(mask)
    _compare(_ours(model, name, ids, mask, position_ids=pos), _hf_out(hf, name, ids, mask, position_ids=pos),
             name, mask)


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5", "t5-v1.1", "bart", "mistral", "marian"])
def test_greedy_generation_matches_hf_generate(ckpts, name):
    path, hf = ckpts[name]
    model = from_hf(path).model
    ids, mask = batch(seed=4, T=7, left=name not in SEQ2SEQ)
    n_new = 8
    # transformers 5 sizes its decoder cache by num_layers, which breaks T5 with more decoder
    # than encoder layers (our "t5" spec): HF then decodes without a cache
    use_cache = name != "t5"
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                          max_new_tokens=n_new, min_new_tokens=0, use_cache=use_cache)
    ours = greedy(model, ids, mask, n_new)
    assert torch.equal(ours, ref), (ours, ref)
    # again with an end token that row 0 produces midway: rows stop, then continue as padding
    start = ids.shape[1] if name not in SEQ2SEQ else 1
    eos = int(ours[0, start + 2])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                          max_new_tokens=n_new, min_new_tokens=0, use_cache=use_cache, eos_token_id=eos,
                          pad_token_id=model.cfg.pad_token_id)
    ours = greedy(model, ids, mask, n_new, eos=eos)
    assert (ours[0, start + 3:] == model.cfg.pad_token_id).all()
    assert torch.equal(ours, ref), (ours, ref)


def _until_eos(rows: torch.Tensor, start: int, eos: int) -> list[list[int]]:
    """New tokens of each row up to and including the first EOS (fillers after it differ:
    HF's beam search pads finished hypotheses with EOS or pad depending on the model)."""
    out = []
    for r in rows[:, start:].tolist():
        out.append(r[: r.index(eos) + 1] if eos in r else r)
    return out


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5-v1.1", "bart", "mistral", "marian"])
@pytest.mark.parametrize(("length_penalty", "early_stopping"), [(1.0, False), (0.6, True), (2.0, False)])
def test_beam_search_matches_hf_generate(ckpts, name, length_penalty, early_stopping):
    """n-best beam search (3 beams, 3 returned, left-padded prompts, an EOS that some beams
    hit midway) returns HF's hypotheses in HF's order."""
    path, hf = ckpts[name]
    model = from_hf(path).model
    ids, mask = batch(seed=4, T=7, left=name not in SEQ2SEQ)
    start = ids.shape[1] if name not in SEQ2SEQ else 1
    eos = int(greedy(model, ids, mask, 8)[0, start + 2])
    opts = dict(num_beams=3, num_return_sequences=3, length_penalty=length_penalty,
                early_stopping=early_stopping)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                          eos_token_id=eos, pad_token_id=model.cfg.pad_token_id, **opts)
    ours = greedy(model, ids, mask, 10, eos=eos, strategy="beam", **opts)
    assert _until_eos(ours, start, eos) == _until_eos(ref, start, eos)


@pytest.mark.parametrize("name", NAMES)
def test_export_loads_in_hf_with_same_logits(ckpts, tmp_path, name):
    path, hf = ckpts[name]
    imp = from_hf(path)
    out = to_hf(imp, tmp_path / "export")
    hf2 = load_hf(out, name)
    ids, mask = batch(seed=5, pad=PAD.get(name, 0))
    dec = batch(seed=6, T=5)[0] if name in SEQ2SEQ else None
    _compare(_hf_out(hf2, name, ids, mask, dec), _ours(imp.model, name, ids, mask, dec), name, mask)
    if name.endswith("-cls"):
        with torch.no_grad():
            torch.testing.assert_close(hf2(input_ids=ids, attention_mask=mask).logits,
                                       hf(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.filterwarnings("ignore:pooler.dense.weight")  # a bare BertModel: its pooler is not modelled
@pytest.mark.parametrize("name", NAMES)
def test_import_export_import_is_identity(ckpts, tmp_path, name):
    path, _ = ckpts[name]
    first = from_hf(path)
    # a bare model: the family is chosen from its config; a DistilBERT encoder without a
    # classifier is also exactly a BERT (one all-zero token type), which that choice prefers
    to_hf(first.model, tmp_path / "a", family="distilbert" if name.startswith("distilbert") else None)
    second = from_hf(tmp_path / "a")
    assert second.cfg == first.cfg
    sd1, sd2 = first.model.state_dict(), second.model.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k


def test_exported_families_follow_the_import(ckpts, tmp_path):
    import json

    for name in ("bert-mlm", "bert-model", "t5-v1.1", "bart", "mistral", "roberta-mlm", "roberta-model",
                 "roberta-cls", "distilbert-mlm", "distilbert-model", "distilbert-cls", "marian"):
        out = to_hf(from_hf(ckpts[name][0]), tmp_path / name)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architectures"] == [SPECS[name][0]]


@pytest.mark.parametrize("name", ["bert-mlm", "bert-cls"])
def test_bert_token_type_ids(ckpts, name):
    path, hf = ckpts[name]
    model = from_hf(path).model
    ids, mask = batch(seed=8)
    types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids) * mask
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        if name == "bert-cls":
            torch.testing.assert_close(model.classify(ids, mask, token_type_ids=types), ref)
        else:
            _compare(model(ids, mask, token_type_ids=types).logits, ref, name, mask)


def test_bart_zero_final_logits_bias_is_not_a_parameter(ckpts):
    assert from_hf(ckpts["bart-plain"][0]).cfg.lm_head_bias is False
    assert from_hf(ckpts["bart"][0]).cfg.lm_head_bias is True


def test_state_dict_level_api(ckpts):
    import json

    from safetensors.torch import load_file

    path, _ = ckpts["llama"]
    hf_cfg = json.loads((path / "config.json").read_text())
    cfg, state = hf_to_archlab(hf_cfg, load_file(path / "model.safetensors"))
    assert cfg.n_kv_heads == 2 and cfg.rope_theta == 500.0 and cfg.norm_eps == 1e-5
    assert state.keys() == from_hf(path).model.state_dict().keys()


def test_half_precision_checkpoint_is_read_in_fp32(ckpts, tmp_path):
    from transformers import LlamaForCausalLM

    path, _ = ckpts["llama"]
    LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    model = from_hf(tmp_path / "bf16").model
    assert model.embed_tokens.weight.dtype == torch.float32
    ids, mask = batch()
    _compare(_ours(model, "llama", ids, mask), _hf_out(hf, "llama", ids, mask), "llama", mask)
