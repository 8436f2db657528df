"""``archlab train``: config -> data -> tokenizer -> model -> Trainer, in a run directory."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from archlab.config import ModelConfig, save_yaml, to_dict
from archlab.errors import ArchlabError, ConfigError
from archlab.objectives import OBJECTIVES, Contrastive, SpecialTokens, TokenClassification, make_objective
from archlab.run import MODEL_CONFIG, WEIGHTS, RunDir
from archlab.train.config import RunConfig, load_run_config, micro_batches_per_process
from archlab.train.trainer import MetricFn, Trainer, TrainResult

# which objectives read which kind of data (archlab.data.Dataset.kind); contrastive reads
# (query, positive) pairs: a retrieval task's, or the (source, target) pairs of any pair task;
# token-classification reads tags, or the pairs of the mqar probe (the values classified at
# the query positions, objectives/tokcls.py)
_DATA_KIND = {"seq2seq": "pair", "classification": "label", "contrastive": "pairs",
              "token-classification": "tags"}
_ALSO_READS = {"contrastive": ("pair",), "token-classification": ("pair",)}
TOKEN_CLASSIFIED_PROBES = ("mqar",)  # probe tasks whose answers token-classification can classify


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_objective_data(cfg: RunConfig, kind: str, task: str | None = None) -> None:
    """The objective reads the data the task gives (one line otherwise). ``task``: the loaded
    dataset's name (probe tasks: which one)."""
    name = cfg.objective.name
    if name not in OBJECTIVES:
        raise ConfigError(f"objective.name: unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    base = cfg.objective.base_name
    need = _DATA_KIND.get(base, "text")
    if need == "text" and kind in ("pair", "pairs"):
        return  # LM-style objectives on a parallel corpus train on the target side (see below)
    if kind == "tags" and need != "tags":
        raise ConfigError(f"objective {name} does not read tags data (data.task={cfg.data.task} gives words with "
                          "tags); use objective token-classification")
    if need != kind and kind not in _ALSO_READS.get(base, ()):
        raise ConfigError(f"objective {name} needs {need} data but data.task={cfg.data.task} gives {kind} data")
    if base == "token-classification" and kind == "pair" and task not in TOKEN_CLASSIFIED_PROBES:
        raise ConfigError(f"objective {name} needs tags data (words with tags, e.g. data.task=wnut16-ner) or the "
                          f"mqar probe; data.task={cfg.data.task} gives pair data")


def prepare_tokenizer(cfg: RunConfig, ds: Any, run_dir: Path, resume: bool) -> Any:
    """The run's tokenizer: reused on resume (hash checked), loaded from tokenizer.path, or
    trained on the training split."""
    from archlab.data import Tokenizer, corpus_texts

    tdir = RunDir(run_dir).tokenizer
    if resume and tdir.exists():
        return Tokenizer.load(tdir)
    tc = cfg.tokenizer
    if tc.path:
        from archlab.convert import resolve_checkpoint

        p = Path(resolve_checkpoint(tc.path))  # a GGUF reference: its converted model directory
        if not (p / "archlab_tokenizer.json").exists() and (p / "tokenizer" / "archlab_tokenizer.json").exists():
            p = p / "tokenizer"  # an archlab model directory's
        tok = Tokenizer.load(p) if (p / "archlab_tokenizer.json").exists() else Tokenizer.from_hf_dir(p)
    else:
        texts = corpus_texts(ds)
        if tc.max_texts:
            texts = (t for i, t in enumerate(texts) if i < tc.max_texts)
        tok = Tokenizer.train(texts, tc.vocab_size, kind=tc.kind, n_sentinels=tc.n_sentinels,
                              min_frequency=tc.min_frequency)
    tok.save(tdir)
    return tok


def model_config_for(cfg: RunConfig, tok: Any, n_classes: int, base: ModelConfig | None = None, *,
                     n_tags: int = 0) -> ModelConfig:
    """The model config with vocabulary and special ids taken from the tokenizer, and the
    task's classes (``n_classes``: a label task's, for the pooled head; ``n_tags``: a tags
    task's, for the token-classification head)."""
    m = base or cfg.model
    sp = tok.special
    vocab = tok.vocab_size
    if base is not None and base.vocab_size >= vocab:
        # pretrained embedding tables are often padded past the tokenizer (T5: 32128 rows for
        # 32100 tokens); keep the checkpoint's size so every weight loads unchanged
        vocab = base.vocab_size
    elif base is not None:
        raise ArchlabError(f"train.init_from: the tokenizer has {tok.vocab_size} tokens but the "
                           f"checkpoint's embeddings only {base.vocab_size}; use the checkpoint's tokenizer")
    changes: dict[str, Any] = {
        "vocab_size": vocab, "pad_token_id": sp.pad, "bos_token_id": sp.bos,
        "eos_token_id": sp.eos,
    }
    if base is None:
        changes["decoder_start_token_id"] = None
    if n_classes:
        changes["n_classes"] = n_classes
    if n_tags:
        changes["n_tags"] = n_tags
    return replace(m, **changes)


def examples_for_objective(examples: list[Any], objective_name: str) -> list[Any]:
    """LM objectives read ``ids``; on a parallel corpus they use the target side."""
    from archlab.objectives import Example

    if _DATA_KIND.get(objective_name, "text") == "text":
        return [ex if ex.src is None else Example(ids=ex.tgt or []) for ex in examples]
    return examples


def train_run(
    cfg: RunConfig,
    *,
    resume: bool = False,
    metric_fn: MetricFn | None = None,
    progress: bool | None = None,
    raw_model_keys: set[str] | None = None,
    dataset: Any | None = None,
    evaluate_only: bool = False,
) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns the result summary.
    ``dataset``: the already loaded ``cfg.data`` (callers that also evaluate load it once).
    ``evaluate_only``: no training steps; the run directory gets the starting model
    (``train.init_from``'s weights: a zero-shot baseline) and its validation scores."""
    from archlab.data import Batcher, load_dataset, tokenize_examples
    from archlab.model import build_model
    from archlab.run import load_weights, save_model_dir

    run_dir = cfg.run_dir
    layout = RunDir(run_dir)
    cfg_path = layout.config
    if resume:
        if not cfg_path.exists():
            raise ArchlabError(f"{run_dir}: nothing to resume (no {cfg_path.name}); run without --resume")
    elif layout.checkpoints.exists() and any(layout.checkpoints.iterdir()):
        raise ArchlabError(f"{run_dir}: already holds a run; use --resume to continue it or choose "
                           "another out_dir (nothing was changed)")

    # everything that can be checked is checked before anything is written
    init = cfg.train.init_from
    if init:
        from archlab.convert import resolve_checkpoint

        init = resolve_checkpoint(init)  # a .gguf file or model name: its cached archlab model directory
    base = _init_model_config(init, cfg, raw_model_keys or set()) if init else None
    arch = base.arch if base is not None else cfg.model.arch
    check_objective(cfg, arch)
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    _check_objective_data(cfg, ds.kind, ds.name)
    if cfg.train.pack and cfg.objective.base_name == "token-classification":
        raise ConfigError("train.pack: packing joins texts into chunks, which loses each word's tag; "
                          "token-classification trains unpacked (train.pack: false)")
    if not ds.train:
        raise ArchlabError(f"data.task={cfg.data.task}: zero training examples")
    from archlab.train.parallel import check_supported, init_distributed

    # under torchrun: rank 0 writes the run directory's config and tokenizer, the others read them
    env = init_distributed(cfg.train.parallel, cfg.train.device)
    per_rank = micro_batches_per_process(cfg.train, env.world_size)  # global_batch must divide
    check_supported(env, decode_metrics=cfg.eval.decode_examples > 0 and ds.kind == "pair")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tok = prepare_tokenizer(cfg, ds, run_dir, resume)
    env.barrier()
    if not env.is_main:
        from archlab.data import Tokenizer

        tok = Tokenizer.load(layout.tokenizer)

    from archlab.data.datasets import check_symbols, score_kind

    check_symbols(ds, tok)  # probe tasks: one token per symbol (tokenizer.kind: word)
    n_classes = len(ds.label_names) if ds.kind == "label" and ds.label_names else 0
    n_tags = len(ds.label_names) if ds.kind == "tags" and ds.label_names else 0
    mcfg = model_config_for(cfg, tok, n_classes, base, n_tags=n_tags)
    cfg = replace(cfg, model=mcfg)
    if resume:
        saved = load_run_config(cfg_path)
        if to_dict(saved.model) != to_dict(mcfg):
            raise ArchlabError(f"{cfg_path}: the model config differs from the run being resumed")
        want = _tokenizer_meta(run_dir)
        if want:
            tok.check_matches(want["sha256"], want["vocab_size"], str(layout.tokenizer))
    elif env.is_main:
        save_yaml(cfg, cfg_path)
        _write_tokenizer_meta(run_dir, tok)

    options = dict(cfg.objective.options)
    if cfg.objective.name == "denoising" and options.get("permute_sentences"):
        options.setdefault("sentence_end_ids", sentence_end_ids(tok))
    objective = make_objective(cfg.objective.name, tok.special, mcfg.arch, cfg.train.max_len,
                               decoder_start=mcfg.start_token_id, **_budget_kw(cfg), **options)
    base_name = cfg.objective.base_name  # what sets the data layout (distillation's base)
    names = ds.label_names if ds.kind == "tags" else None  # (tags: continuation tags of sub-tokens)
    train_ex = examples_for_objective(tokenize_examples(ds.train, tok, names), base_name)
    n_truncated = sum(objective.truncated(ex) for ex in train_ex)
    valid_ex = examples_for_objective(tokenize_examples(ds.valid, tok, names), base_name)
    batcher = Batcher(train_ex, tokens_per_batch=cfg.train.tokens_per_batch,
                      max_batch=cfg.train.max_batch, seed=cfg.train.seed,
                      pack=cfg.train.pack, pack_len=cfg.train.max_len if cfg.train.pack else None,
                      eos=tok.special.eos, max_len=cfg.train.max_len, length=objective.batch_length)

    import torch

    torch.manual_seed(cfg.train.seed)  # the initialisation is part of the experiment: seeded
    model = build_model(mcfg)
    if init and not resume:
        _load_init_weights(model, init, load_weights)
    if hasattr(objective, "prepare"):  # distillation: load the teacher, check tokenizer and shapes
        objective.prepare(tok)
        objective.check_student(model)

    # where the weights came from travels with every saved model (an HF import's source and
    # family, so archlab convert to-hf can restore the original layout)
    provenance: dict[str, Any] = {}
    if init:
        provenance["init_from"] = str(Path(init).resolve())
        if (Path(init) / MODEL_CONFIG).exists():
            from archlab.run import read_meta

            hf_meta = read_meta(init).get("hf")
            if hf_meta:
                provenance["hf"] = hf_meta

    def save_dir(path: Path) -> None:
        save_model_dir(path, trainer.host_model, tok, extra={"run": str(run_dir), **provenance})

    if metric_fn is None and cfg.eval.decode_examples > 0:
        # periodic task metrics: decode (pair tasks) or tag (tags tasks) a fixed validation
        # subset, so best/ can track BLEU or entity F1 rather than the loss
        from archlab.evaluate.runner import decode_metric_fn

        metric_fn = decode_metric_fn(tok, ds.valid, score_kind(ds), base_name, n=cfg.eval.decode_examples,
                                     max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams,
                                     max_source_len=cfg.train.max_source_len,
                                     max_target_len=cfg.train.max_target_len,
                                     objective_options=dict(cfg.objective.options), max_len=cfg.train.max_len,
                                     label_names=ds.label_names)
    # (contrastive: accuracy is the in-batch top-1 accuracy of the validation batches)
    built_in = ("loss", "ppl", "bpb",
                *(("accuracy",) if base_name in ("classification", "contrastive", "token-classification") else ()))
    if metric_fn is None and cfg.eval.metric not in built_in:
        raise ArchlabError(f"eval.metric={cfg.eval.metric}: task metrics need eval.decode_examples > 0 "
                           f"on a pair, pairs or tags task (this task is {ds.kind}); use eval.metric=loss")
    check_eval_metric(cfg.eval.metric, score_kind(ds), ds.name)
    trainer = Trainer(model=model, objective=objective, batches_for_epoch=batcher.epoch_batches,
                      valid_examples=valid_ex, train_cfg=cfg.train, eval_cfg=cfg.eval, run_dir=run_dir,
                      metric_fn=metric_fn, save_model_dir=save_dir, progress=progress,
                      examples_truncated=n_truncated, dist_env=env)
    n_params = sum(p.numel() for p in model.parameters())
    if env.is_main:
        par = (f"; {env.kind} over {env.world_size} process(es), {per_rank * env.world_size} "
               "micro-batches per step" if env.active else "")
        _log(f"{mcfg.arch} model, {n_params / 1e6:.2f}M parameters; objective {objective.name}; "
             f"{len(train_ex)} training / {len(valid_ex)} validation examples "
             f"({n_truncated} truncated); run dir {run_dir}{par}")
    if evaluate_only:
        if not init:
            raise ConfigError("evaluate_only: needs train.init_from (a random model has nothing to evaluate)")
        return trainer.evaluate_only()
    return trainer.fit(resume=resume)


def _budget_kw(cfg: RunConfig) -> dict[str, Any]:
    return {"max_source_len": cfg.train.max_source_len, "max_target_len": cfg.train.max_target_len}


def check_eval_metric(metric: str, scoring: str, task: str) -> None:
    """``eval.metric`` against how the task is scored (``scoring``:
    :func:`archlab.data.datasets.score_kind`): a probe task decodes answers scored by
    token_acc / exact_match, not BLEU-like text metrics. (archlab compare checks every job with
    it before any work.)"""
    if scoring == "probe" and metric in ("bleu", "chrf", "rougeL"):
        raise ArchlabError(f"eval.metric={metric}: probe task {task} is scored by token_acc and exact_match "
                           "(or loss)")


def check_objective(cfg: RunConfig, arch: str) -> None:
    """Everything about the objective that can be checked without data or tokenizer: its name,
    options, that it fits ``arch``, and that an explicit source/target budget fits the model's
    absolute-position table."""
    obj = make_objective(cfg.objective.name, SpecialTokens(sentinels=(7,)), arch, cfg.train.max_len,
                         **_budget_kw(cfg),
                         **{k: v for k, v in cfg.objective.options.items() if k != "sentence_end_ids"},
                         **({"sentence_end_ids": [1]} if cfg.objective.options.get("permute_sentences") else {}))
    ctx = obj.context if isinstance(obj, (Contrastive, TokenClassification)) else obj.budget.context(arch)
    if ctx is not None and cfg.model.position in ("learned", "sinusoidal") and ctx > cfg.model.max_seq_len:
        raise ConfigError(f"train.max_source_len + train.max_target_len: a {arch} input of {ctx} tokens "
                          f"exceeds model.max_seq_len={cfg.model.max_seq_len} ({cfg.model.position} positions)")


def sentence_end_ids(tok: Any) -> list[int]:
    """Token ids whose text ends a sentence (for BART's sentence permutation)."""
    return [i for i in range(tok.vocab_size) if tok.decode([i]).rstrip().endswith((".", "!", "?"))]


def _tokenizer_meta(run_dir: Path) -> dict[str, Any] | None:
    import json

    p = RunDir(run_dir).run_meta
    if not p.exists():
        return None
    return json.loads(p.read_text()).get("tokenizer")


def _write_tokenizer_meta(run_dir: Path, tok: Any) -> None:
    import json

    RunDir(run_dir).run_meta.write_text(json.dumps(
        {"tokenizer": {"sha256": tok.sha256, "vocab_size": tok.vocab_size}}, indent=2))


def _init_model_config(init: str, cfg: RunConfig, raw_keys: set[str]) -> ModelConfig:
    """Model config of the weights we start from; keys the user set in ``model:`` (such as
    dropout or n_classes) override it."""
    p = Path(init)
    if (p / MODEL_CONFIG).exists():
        from archlab.run import read_model_config

        base = read_model_config(p)
    elif (p / "config.json").exists():
        from archlab.convert import hf_model_config

        base = hf_model_config(p)
    else:
        raise ArchlabError(f"train.init_from={init}: not an archlab model directory or an HF checkpoint")
    overrides = {k: getattr(cfg.model, k) for k in raw_keys if k not in ("preset",)}
    return replace(base, **overrides)


def _load_init_weights(model: Any, init: str, load_weights: Any) -> None:
    p = Path(init)
    if (p / MODEL_CONFIG).exists():
        # a classification or token-classification head added for fine-tuning starts fresh
        load_weights(model, p / WEIGHTS, allow_missing=("cls_head.", "tag_head."))
        return
    from archlab.convert import load_hf_weights

    load_hf_weights(model, p)
