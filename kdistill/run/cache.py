"""`kdistill cache`: run the teacher once over the data and write the cache folder, shard by shard.

    from kdistill.config.schema import load_config
    from kdistill.run.cache import write_cache
    write_cache(load_config("configs/demo.yaml", ["cache.out=runs/cache", "cache.k=50"]))

Folder: manifest.json, shard-00000.safetensors, ..., tokenizer/ (the tokenizer, so a training run needs no
teacher folder) and teacher_config.json. Each shard is written whole and renamed into place, then listed
in the manifest; a run that was stopped finds the manifest, checks the listed shards and continues after
the last good one. Settings that differ from the stopped run's are refused (or replaced with overwrite).
The manifest is written first, so a folder stopped before its first shard (a full disk) is still known as
kdistill's own and the same command continues it.

The teacher is picked once, here: a local model (`teacher.model`), or a teacher server (`teacher.server`,
after its parity check), whose top `teacher.server_top_k` answers are cut to the cache's k; a served cache
needs cache.mode=topk at temperature 1 (the server gives no more of the distribution).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save as save_tensors

from kdistill import __version__
from kdistill.base import fsutil
from kdistill.base.hardware import pick_device, pick_dtype, set_threads
from kdistill.base.outputs import check_output
from kdistill.cache import bits as B
from kdistill.cache import manifest as M
from kdistill.cache import shard as S
from kdistill.cache.signal import sampled_rows, topk_from_sparse, topk_rows
from kdistill.base.errors import ConfigError
from kdistill.config.paths import input_paths
from kdistill.config.schema import Config
from kdistill.data import batches as batching
from kdistill.sources.model import teacher_signal

log = logging.getLogger("kdistill")
IDENTITY = ("teacher", "tokenizer", "vocab_size", "data", "signal", "seq_len", "shard_tokens")


@torch.no_grad()
def teacher_logprobs(teacher, batch: dict, vocab_size: int, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) at the masked positions. Shapes: batch (B, T) -> (N, V) fp32"""
    rows = batch["mask"].reshape(-1).nonzero().squeeze(-1)
    logits = teacher_signal(teacher, batch, vocab_size).take(rows).logits.float()  # the loop's teacher signal
    return (logits / temperature).log_softmax(-1)


def plan_shards(examples: list[dict], shard_tokens: int) -> list[tuple[int, int]]:
    """Consecutive example ranges of at least `shard_tokens` teacher positions (the last may hold fewer)."""
    plan, start, rows = [], 0, 0
    for i, e in enumerate(examples):
        rows += int(np.count_nonzero(e["mask"][1:]))
        if rows >= shard_tokens:
            plan.append((start, i + 1))
            start, rows = i + 1, 0
    if start < len(examples):
        plan.append((start, len(examples)))
    return plan


def signal_settings(cfg: Config, vocab_size: int) -> dict:
    c = cfg.cache
    mode = {"k": c.k, "value_bits": c.value_bits} if c.mode == "topk" else {"samples": c.samples, "seed": c.seed}
    id_bits = int(B.bit_length(np.array([vocab_size - 1]))[0])
    return {"mode": c.mode, **mode, "temperature": c.temperature, "id_bits": id_bits}


class CacheTeacher:
    """What writing a cache needs of its teacher: `parts(batches, signal settings, generator)` yields, per
    batch of examples, `topk_rows`/`sampled_rows`' output at the batch's loss positions."""

    def __init__(self, tokenizer, config, folder, record: dict, vocab: int, parts, examples: list[dict]):
        self.tokenizer, self.config, self.folder, self.record = tokenizer, config, folder, record
        self.vocab, self.parts, self.examples = vocab, parts, examples


def local_teacher(cfg: Config, device, loaded=None) -> CacheTeacher:
    """The teacher model in this process; `loaded` = (teacher, tokenizer, folder) to reuse."""
    from kdistill.data.load import load_examples

    if loaded is None:
        from kdistill.models.teacher import load_teacher

        t = cfg.teacher
        loaded = load_teacher(t.model, device, pick_dtype(t.dtype, device), t.trust_remote_code, t.load_in,
                              max_memory=t.max_memory, offload_dir=t.offload_dir, allow_pickle=t.allow_pickle)
    teacher, tokenizer, teacher_dir = loaded
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = load_examples(cfg, teacher, tokenizer, teacher_dir, device)
    vocab = int(teacher.get_output_embeddings().weight.shape[0])
    params = sum(p.numel() for p in {id(p): p for p in teacher.parameters()}.values())
    record = {"spec": cfg.teacher.model, "folder": str(teacher_dir), "load_in": cfg.teacher.load_in,
              "model_type": teacher.config.model_type, "parameters": params,
              "weights_sha256": M.weights_fingerprint(teacher_dir, teacher)}

    def parts(chunks, sig: dict, gen):
        for chunk in chunks:
            batch = {k: v.to(device) for k, v in batching.collate(chunk, 0).items()}
            lp = teacher_logprobs(teacher, batch, vocab, sig["temperature"]).cpu()
            yield topk_rows(lp, sig["k"], sig["value_bits"]) if sig["mode"] == "topk" else \
                sampled_rows(lp, sig["samples"], gen)
    return CacheTeacher(tokenizer, teacher.config, teacher_dir, record, vocab, parts, examples)


def served_teacher(cfg: Config, device) -> CacheTeacher:
    """The teacher on `teacher.server`: every batch of a shard is asked for at once (the server batches
    them), then read in order."""
    from kdistill.sources.served import ServedSource

    c, t = cfg.cache, cfg.teacher
    if c.mode != "topk" or c.temperature != 1.0:
        raise ConfigError(f"cache.mode={c.mode}, cache.temperature={c.temperature} with teacher.server: a teacher "
                          "server gives its top teacher.server_top_k log-probabilities at temperature 1 only; use "
                          "cache.mode=topk and cache.temperature=1 (a loss term's temperature still applies)")
    if c.k > t.server_top_k:
        raise ConfigError(f"cache.k={c.k} is more than teacher.server_top_k={t.server_top_k}: raise "
                          "teacher.server_top_k (and the server's --max-logprobs), or lower cache.k")
    source = ServedSource.open(cfg, device, pick_dtype(t.dtype, device))
    examples = source.load_examples(cfg, device)
    local = source.init_model
    record = {"spec": t.model, "folder": str(source.folder), "load_in": "server", "server_model": source.client.model,
              "model_type": source.config.model_type, "parameters": None if local is None else
              sum(p.numel() for p in {id(p): p for p in local.parameters()}.values()),
              "weights_sha256": M.weights_fingerprint(source.folder, local) if local is not None
              else f"server {source.client.model or t.server}"}  # the parity check proved the local copy is it
    source.release_init()
    def parts(chunks, sig: dict, gen):
        batches = [source.collate(chunk, 0) for chunk in chunks]  # every request of the shard goes out now
        for batch in batches:
            signal = source.signal(batch, source.vocab_size)
            rows = batch["mask"].reshape(-1).nonzero().squeeze(-1)
            ids = signal.ids.reshape(-1, signal.ids.shape[-1])[rows]
            yield topk_from_sparse(ids, signal.logprobs.reshape(-1, ids.shape[-1])[rows], sig["k"], sig["value_bits"])
    return CacheTeacher(source.tokenizer, source.config, source.folder, record, source.vocab_size, parts, examples)


def new_manifest(cfg: Config, teacher: CacheTeacher, examples: list[dict]) -> dict:
    vocab, tokenizer = teacher.vocab, teacher.tokenizer
    if cfg.cache.mode == "topk" and cfg.cache.k > vocab:
        raise ConfigError(f"cache.k={cfg.cache.k} is more than the teacher's vocabulary ({vocab}); lower cache.k")
    return {
        "format": M.FORMAT, "format_version": M.FORMAT_VERSION, "kdistill_version": __version__,
        "complete": False,
        "teacher": teacher.record,
        "tokenizer": {"sha256": M.tokenizer_fingerprint(tokenizer), "folder": M.TOKENIZER_DIR, "size": len(tokenizer)},
        "vocab_size": vocab,
        "data": {"sha256": M.data_fingerprint(examples), "source": M.data_source(cfg), "examples": len(examples),
                 "tokens": sum(len(e["ids"]) for e in examples), "positions": S.signal_rows(examples)},
        "signal": signal_settings(cfg, vocab),
        "seq_len": cfg.train.seq_len, "shard_tokens": cfg.cache.shard_tokens,
        "shards": [],
    }


def _differences(a: dict, b: dict) -> list[str]:
    out = []
    for key in IDENTITY:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{key}.{k}: {x.get(k)!r} -> {y.get(k)!r}" for k in sorted(set(x) | set(y))
                    if x.get(k) != y.get(k) and k not in ("folder", "spec")]
        elif x != y:
            out.append(f"{key}: {x!r} -> {y!r}")
    return out


def own_file(path: Path) -> bool:
    """Whether `path` in a cache folder is one kdistill writes there (or a half-written one of them)."""
    name = path.name
    partial = fsutil.PARTIAL.match(name)
    name = partial.group("name") if partial else name
    return name in (M.MANIFEST, M.TOKENIZER_DIR, M.TEACHER_CONFIG) or name.startswith("shard-")


def prepare_folder(out: Path, fresh: dict, overwrite: bool) -> dict:
    """The manifest to continue: the stopped run's (its good shards kept) or `fresh` in an emptied folder
    (one holding only kdistill's own files without a manifest is a cache stopped before it had one)."""
    found = list(out.iterdir()) if out.is_dir() else []
    if found and not overwrite and ((out / M.MANIFEST).is_file() or not all(map(own_file, found))):
        if not (out / M.MANIFEST).is_file():
            raise M.CacheError(f"cache.out {out} is not empty and holds no teacher cache; choose another "
                               "cache.out or pass --overwrite")
        old = M.read_manifest(out)
        diff = _differences(old, fresh)
        if diff:
            raise M.CacheError(f"cache.out {out} holds a cache written with other settings ({'; '.join(diff)}); "
                               "pass --overwrite to replace it or choose another cache.out")
        good = []
        for shard in old["shards"]:
            try:
                M.verify_shard(out, shard)
            except M.CacheError as e:
                log.warning("%s; rewriting from there", e)
                break
            good.append(shard)
        return {**old, "shards": good, "complete": old.get("complete", False) and len(good) == len(old["shards"])}
    if out.exists():
        for p in out.iterdir():
            if own_file(p):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return fresh


def shard_signal(teacher: CacheTeacher, examples: list[dict], manifest: dict, cfg: Config,
                 index: int) -> tuple[dict, dict]:
    """Encoded tensors and error sums of one shard's examples."""
    sig = manifest["signal"]
    gen = torch.Generator().manual_seed(cfg.cache.seed * 1_000_003 + index)
    parts, stats = [], {}
    chunks = [examples[i:i + cfg.cache.batch_size] for i in range(0, len(examples), cfg.cache.batch_size)]
    for part in teacher.parts(chunks, sig, gen):
        for key, value in part[-1].items():
            stats[key] = stats.get(key, 0) + value
        parts.append(part[:-1])
    tensors = S.encode_tokens(examples, sig["id_bits"])
    if sig["mode"] == "topk":
        ids, probs, rest = (np.concatenate(x) for x in zip(*parts))
        tensors.update(S.encode_topk(ids, probs, rest, sig["value_bits"]))
    else:
        width = max(p[0].shape[1] for p in parts)
        ids, counts = (np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in xs])
                       for xs in zip(*parts))
        tensors.update(S.encode_sampled(ids, counts, sig["samples"]))
    return tensors, stats


def summarize(shards: list[dict]) -> dict:
    """Cache-wide means of the shards' error sums, and bytes per teacher position."""
    total = {}
    for s in shards:
        for k, v in s["stats"].items():
            total[k] = total.get(k, 0) + v
    n = max(1, total.pop("positions", 0))
    out = {k: v / n for k, v in total.items()}
    out["bytes_per_token"] = sum(s["bytes"] for s in shards) / n
    return out


def write_cache(cfg: Config, overwrite: bool = False, loaded=None) -> dict:
    """Write (or finish) the cache in cfg.cache.out; `loaded` = (teacher, tokenizer, folder) to reuse."""
    out = Path(cfg.cache.out)
    # never a run folder or an input, even with --overwrite (which replaces only a cache's own files)
    check_output(out, True, input_paths(cfg), "cache.out")
    set_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    teacher = served_teacher(cfg, device) if cfg.teacher.server else local_teacher(cfg, device, loaded)
    examples = teacher.examples
    manifest = prepare_folder(out, new_manifest(cfg, teacher, examples), overwrite)
    M.write_manifest(out, manifest)  # first: a folder stopped before its first shard is still this cache
    with fsutil.atomic_dir(out / M.TOKENIZER_DIR) as tmp:
        teacher.tokenizer.save_pretrained(tmp)
    fsutil.write_json(out / M.TEACHER_CONFIG, json.loads(teacher.config.to_json_string()))
    plan = plan_shards(examples, cfg.cache.shard_tokens)
    if manifest["shards"]:
        log.info("resuming %s: %d of %d shards already written", out, len(manifest["shards"]), len(plan))
    for index in range(len(manifest["shards"]), len(plan)):
        t0 = time.time()
        start, end = plan[index]
        tensors, stats = shard_signal(teacher, examples[start:end], manifest, cfg, index)
        name = f"shard-{index:05d}.safetensors"
        # one metadata key: safetensors writes several in a per-process random order (bytes would differ)
        data = save_tensors(tensors, metadata={"kdistill": json.dumps({"format_version": M.FORMAT_VERSION,
                                                                       "mode": manifest["signal"]["mode"]})})
        fsutil.write_bytes(out / name, data)
        manifest["shards"].append({"file": name, "examples": [start, end], "positions": stats["positions"],
                                   "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "stats": stats})
        M.write_manifest(out, manifest)
        print(f"shard {index + 1}/{len(plan)}: {stats['positions']} positions, {len(data) / stats['positions']:.1f} "
              f"bytes/token, {time.time() - t0:.1f}s", flush=True)
    manifest.update(complete=True, stats=summarize(manifest["shards"]))
    M.write_manifest(out, manifest)
    return manifest
