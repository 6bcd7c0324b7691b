"""`kdistill distill` with teacher.cache=FOLDER: train from the cache, the teacher never in the loop.

Before step 0 the cache is opened whole (manifest, checksums, every shard decoded) and checked against
the run: train.seq_len, the data settings (and for a data file, the fingerprint of its tokens), and the
tokenizer of any teacher loaded. The student is initialised as usual: student.init=teacher loads
`teacher.model` for the initialisation only and frees it before training (its tokenizer must be the
cache's); student.init=random needs no teacher at all (its shapes come from the cache's
teacher_config.json, on the meta device). Held-out metrics during training compare the student with the
cached distribution (top-k and the rest bucket: a lower bound of the full-vocabulary KL). At the end the
usual comparison runs against the real teacher when `teacher.model` loads with the cache's tokenizer;
otherwise eval.json holds the cached-distribution metrics.
"""
from __future__ import annotations

import logging

import torch

from ..errors import KdistillError
from ..evaluation.heldout import summarize
from ..losses.divergences import divergence
from ..train.loop import to_device
from . import manifest as M
from .reader import TeacherCache, collate, open_cache

log = logging.getLogger("kdistill")


def open_for_training(cfg) -> TeacherCache:
    """The cache, fully verified and checked against the run's seq_len and data settings."""
    cache = open_cache(cfg.teacher.cache)
    m, where = cache.manifest, f"teacher cache {cfg.teacher.cache}"
    if cfg.train.seq_len != m["seq_len"]:
        raise M.CacheMismatch(f"{where} was written with seq_len {m['seq_len']}, this run has train.seq_len="
                              f"{cfg.train.seq_len}; set train.seq_len={m['seq_len']} or rewrite the cache")
    from .writer import data_source

    source, mine = m["data"]["source"], data_source(cfg)
    if source != mine:
        diff = [f"{k}: cache {source.get(k)!r}, run {mine.get(k)!r}" for k in sorted(set(source) | set(mine))
                if source.get(k) != mine.get(k)]
        raise M.CacheMismatch(f"{where} holds other data than this run's data settings ({'; '.join(diff)}); set "
                              "data.* as when the cache was written, or rewrite the cache for this data")
    if cfg.data.path:
        check_data_file(cfg, cache)
    if m["signal"]["temperature"] != 1.0:
        log.warning("%s stores the teacher at temperature %s; each loss term's temperature applies on top of it",
                    where, m["signal"]["temperature"])
    return cache


def check_data_file(cfg, cache: TeacherCache) -> None:
    """The run's data file, tokenised with the cache's tokenizer, must be the cached token ids."""
    from ..data.load import load_examples

    examples = load_examples(cfg, None, cache.load_tokenizer(), "", torch.device("cpu"))
    if M.data_fingerprint(examples) != cache.manifest["data"]["sha256"]:
        raise M.CacheMismatch(f"data.path {cfg.data.path} has changed since teacher cache {cfg.teacher.cache} was "
                              "written (its token ids differ); rewrite the cache with `kdistill cache --overwrite`")


def init_teacher(cache: TeacherCache, cfg, device, dtype):
    """(teacher for the student's initialisation, the cache's tokenizer, teacher folder or None)."""
    tokenizer = cache.load_tokenizer()
    if cfg.student.init != "teacher":
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):  # shapes only: no weights, no memory, no compute
            return AutoModelForCausalLM.from_config(cache.teacher_config()), tokenizer, None
    from ..teacher import load_teacher

    try:
        teacher, own, folder = load_teacher(cfg.teacher.model, device, dtype, cfg.teacher.trust_remote_code,
                                            cfg.teacher.load_in)
    except KdistillError as e:
        raise type(e)(f"{e} (with teacher.cache, teacher.model is loaded only to initialise the student; "
                      "set student.init=random to train without it)") from e
    check_tokenizer(cache, own, f"teacher.model={cfg.teacher.model}")
    if M.weights_fingerprint(folder, teacher) != cache.manifest["teacher"]["weights_sha256"]:
        log.warning("teacher.model=%s is not the teacher that wrote %s (%s); the student starts from its weights",
                    cfg.teacher.model, cache.folder, cache.manifest["teacher"]["spec"])
    return teacher, tokenizer, folder


def check_tokenizer(cache: TeacherCache, tokenizer, what: str) -> None:
    if M.tokenizer_fingerprint(tokenizer) != cache.manifest["tokenizer"]["sha256"]:
        raise M.CacheMismatch(f"{what} has another tokenizer than teacher cache {cache.folder} (written by teacher "
                              f"{cache.manifest['teacher']['spec']!r}); its token ids would mean other tokens. Use "
                              "that teacher (or its tokenizer's family), or rewrite the cache with this one")


def heldout_batches(examples: list[dict], batch_size: int, pad_id: int, max_batches: int) -> list[dict]:
    """`batches.heldout_batches` with each batch's cached signal."""
    return [collate(examples[i:i + batch_size], pad_id)
            for i in range(0, len(examples), batch_size)][:max_batches]


def without_signal(batches: list[dict]) -> list[dict]:
    return [{k: v for k, v in b.items() if k != "signal"} for b in batches]


def batch_sums(logits: torch.Tensor, signal, targets: torch.Tensor) -> dict:
    """Sums over rows of the held-out metrics against a sparse teacher signal.

    Shapes: logits (N, V), signal over (N,), targets (N,) -> dict of floats and kl_tokens (N,)
    """
    kl = divergence("forward_kl", logits, signal, 1.0, "residual")
    js = divergence("jsd", logits, signal, 1.0, "residual", beta=0.5)
    probs = signal.logprobs.exp()
    ranked = signal.ids.gather(-1, signal.logprobs.argsort(-1, descending=True))
    k = min(10, signal.k)
    agree10 = (logits.topk(k, -1).indices[:, :, None] == ranked[:, None, :k]).any(-1).float().mean(-1)
    hit = signal.ids == targets[:, None]
    share = (1 - probs.sum(-1)).clamp(min=1e-12) / max(1, logits.shape[-1] - signal.k)
    p_target = torch.where(hit.any(-1), (probs * hit).sum(-1), share)
    return {"kl": kl.sum().item(), "js": js.sum().item(), "agree": (logits.argmax(-1) == ranked[:, 0]).sum().item(),
            "agree10": agree10.sum().item(),
            "nll_student": torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item(),
            "nll_teacher": -p_target.clamp(min=1e-30).log().sum().item(), "tokens": len(targets),
            "kl_tokens": kl.cpu()}


@torch.no_grad()
def heldout_metrics(student, batches: list[dict], device) -> dict:
    """The keys of `evaluation.heldout.heldout_metrics`, against the cached distribution.

    kl and js are on the stored support (the K ids and the rest bucket), top-1/top-10 compare with the
    stored ids ranked by probability, ppl_teacher gives a target outside the K ids its even share of the rest.
    """
    totals, kls, positions = {}, [], []
    for batch in batches:
        batch = to_device(batch, device)
        rows = batch["mask"].reshape(-1).nonzero().squeeze(-1)
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).logits.float()
        logits = logits.reshape(-1, logits.shape[-1])[rows]
        sums = batch_sums(logits, batch["signal"].take(rows), batch["targets"].reshape(-1)[rows])
        kls.append(sums.pop("kl_tokens"))
        positions.append((rows % batch["mask"].shape[1]).cpu())
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + v
    return summarize(totals, torch.cat(kls) if kls else torch.zeros(0),
                     torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long))


def final_comparison(cache: TeacherCache, cfg, student, tokenizer, heldout: list[dict], device, dtype,
                     student_dir) -> dict:
    """`compare` against the real teacher when teacher.model loads with the cache's tokenizer; else the
    held-out metrics against the cached distribution (`heldout_source` says which)."""
    from ..evaluation.compare import compare
    from ..modeling import count_parameters
    from ..teacher import load_teacher

    try:
        teacher, own, folder = load_teacher(cfg.teacher.model, device, dtype, cfg.teacher.trust_remote_code,
                                            cfg.teacher.load_in)
        check_tokenizer(cache, own, f"teacher.model={cfg.teacher.model}")
    except KdistillError as e:
        log.warning("no teacher to compare with (%s); eval.json holds metrics against the cached distribution", e)
        return {"heldout": heldout_metrics(student, heldout, device), "heldout_source": "cache",
                "student": {"parameters": count_parameters(student)},
                "teacher": {"parameters": cache.manifest["teacher"]["parameters"]}}
    result = compare(student, teacher, tokenizer, without_signal(heldout), device, student_dir, folder,
                     cfg.eval.prompts, cfg.eval.max_new_tokens, measure_speed=cfg.eval.measure_speed,
                     tasks=cfg.eval.tasks or None)
    return {**result, "heldout_source": "teacher"}


def format_result(result: dict) -> str:
    if result.get("heldout_source") != "cache":
        from ..evaluation.compare import format_table

        return format_table(result)
    h = result["heldout"]
    return (f"against the cached teacher distribution (top-k + rest): KL {h['kl']:.3f} nats/token, top-1 agreement "
            f"{100 * h['top1_agreement']:.1f}% over {h['tokens']:,} held-out tokens; student "
            f"{result['student']['parameters']:,} parameters (teacher {result['teacher']['parameters']:,})")
