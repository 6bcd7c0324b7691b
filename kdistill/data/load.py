"""The run's examples: read and rendered from `data.path`, or written by the teacher when there is none.

    examples = load_examples(cfg, teacher, tokenizer, teacher_id, device)   # [{"ids", "mask"}, ...]

Teacher-written data (data.generate) comes from one source: the built-in prompts, a prompts file
(`prompts`), self-instruct (`self_instruct.seed_tasks`) or checked problems (`cot.problems`: rationale,
program or code, kept only when right). Every generated example counts only the teacher's tokens. The
samples then pass the quality filter (filters.py). `data_report.json` (generated, kept, dropped by
reason, pass rates, settings) is written next to the generated data, in
`$KDISTILL_CACHE/generated/<key>/`; the returned list carries it as `examples.report` and its path as
`examples.report_path`. When every sample is dropped, the DataError names the rule that removed the most.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kdistill.base import fsutil
from kdistill.base.errors import DataError, ModelError
from kdistill.data.cot import check, code_end, problem_prompt, read_problems, token_at, weighted_examples
from kdistill.data.files import read_records
from kdistill.data.filters import contamination_grams, nothing_kept, quality_filter, score_logprobs
from kdistill.data.prompts_file import plain, prompt_ids, read_prompts, use_chat
from kdistill.data.render import render
from kdistill.data.self_instruct import parse_instruction, read_seeds, requests, select
from kdistill.data.teacher_written import examples_from_generated, generate, generate_records, sampling

log = logging.getLogger("kdistill")
REPORT = "data_report.json"


class Examples(list):
    """The run's examples, with the data report (`report`, a dict or None) and where it was written."""

    report: dict | None = None
    report_path: Path | None = None


def file_hash(spec: str) -> str:
    return spec if spec == "humaneval" else fsutil.sha256_file(Path(spec).expanduser())


def answer_prompts(prompts, cfg, teacher, tokenizer, teacher_id, device, desc: str, extra: dict):
    """Each prompt rendered and answered `samples_per_prompt` times; records carry "source" (the prompt's
    index) and "prompt_text"."""
    gen = cfg.data.generate
    k = gen.samples_per_prompt
    ids = [prompt_ids(tokenizer, p, gen.prompt_format) for p in prompts for _ in range(k)]
    records, folder = generate(teacher, tokenizer, teacher_id, ids, sampling(gen), device, desc,
                               {**extra, "prompt_format": gen.prompt_format})
    for r in records:
        r["source"] = r["prompt"] // k
        r["prompt_text"] = prompts[r["source"]].text
    return records, folder


def from_prompts(cfg, teacher, tokenizer, teacher_id, device) -> tuple[list[dict], Path, dict]:
    gen = cfg.data.generate
    prompts = read_prompts(gen.prompts)
    records, folder = answer_prompts(prompts, cfg, teacher, tokenizer, teacher_id, device, "teacher answers prompts",
                                     {"prompts_sha256": file_hash(gen.prompts)})
    return records, folder, {"source": "prompts", "prompts_file": gen.prompts, "prompts": len(prompts)}


def from_self_instruct(cfg, teacher, tokenizer, teacher_id, device) -> tuple[list[dict], Path, dict]:
    gen, si = cfg.data.generate, cfg.data.generate.self_instruct
    seeds = read_seeds(si.seed_tasks)
    asks = [prompt_ids(tokenizer, p, "auto") for p in requests(seeds, si, gen.seed)]
    replies, _ = generate(teacher, tokenizer, teacher_id, asks, sampling(gen, max_new_tokens=si.max_new_tokens),
                          device, "teacher writes instructions", {"seeds_sha256": file_hash(si.seed_tasks)})
    new, dropped = select([parse_instruction(r["text"]) for r in replies], seeds, si)
    stats = {"seeds": len(seeds), "requests": len(asks), "instructions": len(new), "dropped": dict(dropped)}
    print(f"self-instruct: {len(new)} new instructions from {len(asks)} requests "
          f"(dropped: {', '.join(f'{k} {v}' for k, v in dropped.most_common()) or 'none'})", flush=True)
    if not new:
        raise nothing_kept(len(asks), dropped, "the self-instruct replies (no report: nothing was answered)")
    prompts = [plain(t, f"self-instruct {i + 1}") for i, t in enumerate(new)]
    records, folder = answer_prompts(prompts, cfg, teacher, tokenizer, teacher_id, device,
                                     "teacher answers instructions", {"self_instruct": dataclasses.asdict(si)})
    for r in records:
        r["instruction"] = new[r["source"]]
    return records, folder, {"source": "self_instruct", "seed_tasks": si.seed_tasks, "self_instruct": stats}


def _verdicts(problems, records, c) -> list[tuple[str, int | None]]:
    jobs = [(problems[r["source"]], r["text"]) for r in records]
    if c.mode == "rationale":
        return [check(p, text, c, c.mode) for p, text in jobs]
    with ThreadPoolExecutor(max_workers=2) as pool:  # each check is a sandboxed subprocess
        return list(pool.map(lambda job: check(job[0], job[1], c, c.mode), jobs))


def from_problems(cfg, teacher, tokenizer, teacher_id, device) -> tuple[list[dict], Path, dict]:
    """Problems answered, checked, and only the right ones kept (all with cot.check=false)."""
    gen, c = cfg.data.generate, cfg.data.generate.cot
    problems = read_problems(c.problems, c.mode, c.max_problems)
    chat = use_chat(tokenizer, gen.prompt_format)
    prompts = [problem_prompt(p, c.mode, chat) for p in problems]
    records, folder = answer_prompts(prompts, cfg, teacher, tokenizer, teacher_id, device, f"teacher solves ({c.mode})",
                                     {"problems_sha256": file_hash(c.problems), "mode": c.mode})
    kept, verdicts, solved = [], Counter(), set()
    for r, (verdict, answer_char) in zip(records, _verdicts(problems, records, c)):
        new = r["ids"][r["n_prompt"]:]
        if c.mode == "code" and not chat:  # a continuation: keep the function, not what follows it
            end = code_end(r["text"])
            r["ids"], r["text"] = r["ids"][:r["n_prompt"] + token_at(tokenizer, new, end)], r["text"][:end]
        verdicts[verdict] += 1
        if verdict == "ok":
            solved.add(r["source"])
        if verdict == "ok" or not c.check:
            if answer_char is not None:
                r["answer_token"] = r["n_prompt"] + token_at(tokenizer, new, answer_char)
            kept.append(r)
    failed = Counter({k: v for k, v in verdicts.items() if k != "ok"})
    stats = {"mode": c.mode, "problems": len(problems), "samples": len(records), "correct": verdicts["ok"],
             "pass_rate": verdicts["ok"] / max(1, len(records)), "problems_solved": len(solved),
             "solve_rate": len(solved) / max(1, len(problems)), "failed": dict(failed.most_common()),
             "samples_per_prompt": gen.samples_per_prompt, "kept_failed": not c.check}
    rejected = failed if c.check else Counter()
    print(f"{c.mode}: {verdicts['ok']} of {len(records)} samples correct, {len(solved)} of {len(problems)} "
          f"problems solved (failed: {', '.join(f'{k} {v}' for k, v in failed.most_common()) or 'none'})", flush=True)
    return kept, folder, {"source": f"cot.{c.mode}", "problems_file": c.problems, "cot": stats,
                          "rejected": rejected}


def teacher_samples(cfg, teacher, tokenizer, teacher_id, device) -> tuple[list[dict], Path, dict]:
    gen = cfg.data.generate
    if gen.cot.problems:
        return from_problems(cfg, teacher, tokenizer, teacher_id, device)
    if gen.self_instruct.seed_tasks:
        return from_self_instruct(cfg, teacher, tokenizer, teacher_id, device)
    if gen.prompts:
        return from_prompts(cfg, teacher, tokenizer, teacher_id, device)
    records, folder = generate_records(teacher, tokenizer, teacher_id, gen, device)
    for r in records:
        r["prompt_text"] = tokenizer.decode(r["ids"][:r["n_prompt"]], skip_special_tokens=True)
    return records, folder, {"source": "builtin", "prompts": gen.num_samples}


def filtered_examples(cfg, teacher, tokenizer, teacher_id, device) -> Examples:
    gen, f = cfg.data.generate, cfg.data.generate.filter
    samples, folder, report = teacher_samples(cfg, teacher, tokenizer, teacher_id, device)
    rejected = report.pop("rejected", Counter())
    files = list(f.contamination_files) + (list(cfg.eval.tasks) if f.contamination_eval_tasks else [])
    grams = contamination_grams(files, f.contamination_ngram) if f.enabled and files else {}
    if f.enabled and f.min_logprob is not None:
        scorer = getattr(teacher, "local", teacher)  # a teacher server's writer: the local copy, where it loads
        if scorer is None:
            raise ModelError("data.generate.filter.min_logprob needs the teacher model to score the samples "
                             "(with teacher.server: teacher.model's weights)")
        score_logprobs(scorer, samples, device)
    kept, dropped = quality_filter(samples, f, grams)
    c = gen.cot
    examples = weighted_examples(kept, cfg.train.seq_len, c.rationale_weight, c.answer_weight) if c.problems \
        else examples_from_generated(kept, cfg.train.seq_len)
    generated = len(samples) + sum(rejected.values())
    report.update({"teacher": teacher_id, "generated": generated, "kept": len(kept), "examples": len(examples),
                   "dropped": dict((rejected + dropped).most_common()), "contamination_files": files,
                   "settings": dataclasses.asdict(gen)})
    path = folder / REPORT
    fsutil.write_json(path, report)
    print(f"data: {len(kept)} of {generated} teacher samples kept (dropped: "
          f"{', '.join(f'{k} {v}' for k, v in (rejected + dropped).most_common()) or 'none'}); report {path}",
          flush=True)
    if not kept:
        raise nothing_kept(generated, rejected + dropped, path)
    if not examples:  # only when every weighted part is empty (e.g. rationale_weight=0 without answers)
        raise DataError(f"none of the {len(kept)} kept samples has a token with weight > 0; check "
                        "data.generate.cot.rationale_weight and answer_weight")
    out = Examples(examples)
    out.report, out.report_path = report, path
    return out


def load_examples(cfg, teacher, tokenizer, teacher_id: str, device) -> list[dict]:
    """Token examples of at most `train.seq_len` + 1 ids; `teacher` (a model, or a teacher server's writer)
    is used only to generate data."""
    if not cfg.data.path:
        return filtered_examples(cfg, teacher, tokenizer, teacher_id, device)
    records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
    return render(records, tokenizer, cfg.train.seq_len, cfg.data.format, cfg.data.text_field, cfg.data.path)
