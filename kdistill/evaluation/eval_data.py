"""What text `kdistill eval` measures held-out agreement on, and how much of it the student trained on.

| options                  | held-out text                                                                   |
|--------------------------|---------------------------------------------------------------------------------|
| --no-heldout             | none: tasks, sizes and speed only; nothing is read or generated                 |
| --data FILE              | the whole file                                                                  |
| --run RUN                | RUN's own held-out split: its data (a file, or teacher-generated, from the      |
|                          | cache when it is there) split with its data.heldout_fraction and train.seed, as |
|                          | `distill` split it                                                              |
| --student and --teacher  | new teacher samples (RUN's data.generate settings when the student lives in a   |
|                          | run folder, else the defaults) drawn with `eval_seed(training seed)`            |

The training data is known when there is a run: --run RUN, or RUN/config.yaml beside --student
RUN/student. Its training split is then checked against the evaluation examples: an example overlaps
when the first 150 characters of its scored text (the tokens that count, whitespace collapsed) equal
those of a training example. The count is printed as a warning and kept in eval.json's `heldout_data`.
Teacher-generated training data is read only from the cache for this check (nothing is generated for it).
"""
from __future__ import annotations

import copy
from pathlib import Path

from kdistill.base.errors import KdistillError
from kdistill.config.legacy import load_run_config
from kdistill.config.schema import Config
from kdistill.data import batches as batching

PREFIX_CHARS = 150
SEED_OFFSET = 1_000_003  # generation batch b draws with seed + b: no training batch seed comes near


def eval_seed(train_seed: int) -> int:
    """The generation seed of evaluation samples: never the training data's seed (nor one of its batches')."""
    return train_seed + SEED_OFFSET


def find_run(run: str | None, student: str | None) -> Path | None:
    """The run folder: --run, else the folder holding --student when it is RUN/student with RUN/config.yaml."""
    if run:
        return Path(run)
    if student:
        parent = Path(student).resolve().parent
        if Path(student).resolve().name == "student" and (parent / "config.yaml").is_file():
            return parent
    return None


def plan(args, run_cfg: Config | None) -> dict:
    """{"kind": none|file|run split|generated, "cfg": the Config to load the examples with, "split": bool}."""
    if getattr(args, "no_heldout", False):
        return {"kind": "none", "cfg": None, "split": False}
    if args.data:
        cfg = copy.deepcopy(run_cfg) if run_cfg else Config()
        cfg.data.path = args.data
        if not run_cfg:
            cfg.train.seq_len = args.seq_len
        return {"kind": "file", "cfg": cfg, "split": False}
    if args.run:
        return {"kind": "run split", "cfg": run_cfg, "split": True}
    cfg = Config()
    cfg.train.seq_len = args.seq_len
    if run_cfg is not None and not run_cfg.data.path:
        cfg.data.generate = copy.deepcopy(run_cfg.data.generate)
    cfg.data.generate.seed = eval_seed(cfg.data.generate.seed)
    return {"kind": "generated", "cfg": cfg, "split": False}


def scored_text(example: dict, tokenizer, chars: int = PREFIX_CHARS) -> str:
    """The first `chars` characters of the text an example is scored on (its masked tokens)."""
    ids = [i for i, keep in zip(example["ids"], example["mask"]) if keep]
    return " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())[:chars]


def overlap(examples: list[dict], training: list[dict], tokenizer, chars: int = PREFIX_CHARS) -> int:
    """How many of `examples` share their first `chars` scored characters with a training example."""
    seen = {scored_text(e, tokenizer, chars) for e in training}
    seen.discard("")
    return sum(scored_text(e, tokenizer, chars) in seen for e in examples)


def training_split(run_cfg: Config, tokenizer, teacher_dir: str, device) -> list[dict] | str:
    """The run's training examples as `distill` split them, or a sentence saying why they are not at hand."""
    from kdistill.data.load import load_examples

    try:
        examples = load_examples(run_cfg, None, tokenizer, teacher_dir, device)  # no teacher: cache or file only
    except KdistillError as e:
        return f"the run's training data could not be read without generating it ({str(e).splitlines()[0]})"
    return batching.split(examples, run_cfg.data.heldout_fraction, run_cfg.train.seed)[0]


def run_config(run: Path | None) -> Config | None:
    return load_run_config(run / "config.yaml") if run is not None and (run / "config.yaml").is_file() else None


def source_record(p: dict, args, examples: list[dict], run: Path | None) -> dict:
    """eval.json's `heldout_data`: where the held-out text came from."""
    out = {"kind": p["kind"], "examples": len(examples)}
    if p["kind"] == "file":
        out["path"] = str(args.data)
    elif p["kind"] == "run split":
        out.update(run=str(run), heldout_fraction=p["cfg"].data.heldout_fraction, seed=p["cfg"].train.seed)
    elif p["kind"] == "generated":
        out.update(seed=p["cfg"].data.generate.seed, num_samples=p["cfg"].data.generate.num_samples)
    return out


def check_overlap(record: dict, examples: list[dict], training, run: Path | None, tokenizer) -> str | None:
    """Fill record["overlap"]; returns the warning to print, None when there is nothing to warn about."""
    if run is None or isinstance(training, str):
        why = training if isinstance(training, str) else "no run folder is known (give --run RUN_DIR)"
        record["overlap"] = {"checked": False, "why": why}
        return f"note: overlap with the training data not checked: {why}"
    count = overlap(examples, training, tokenizer)
    record["overlap"] = {"checked": True, "training": str(run), "training_examples": len(training),
                         "matches": count, "prefix_chars": PREFIX_CHARS}
    if not count:
        return None
    fix = ("use the run's own held-out split (--run " + str(run) + ")" if record["kind"] != "run split"
           else "deduplicate the run's data")
    return (f"warning: {count} of {len(examples)} held-out examples share their first {PREFIX_CHARS} characters "
            f"with the training data of {run}: held-out metrics on them are optimistic; {fix}")
