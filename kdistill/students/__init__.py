"""Students, one builder per `student.kind`: `llama` (sized by a preset, kdistill/config/presets.py, or by
`design.py`; initialised from the teacher by `init.py` and `prune.py`), `fractal` (`fractal.py`) and
`pretrained` (`pretrained.py`).

Any causal LM can be the teacher. A LLaMA student copies (or prunes) chosen teacher layers only from a
LLaMA-family teacher (Llama, Mistral, Qwen2); from any other (GPT-2, Gemma, Phi, ...) it takes the
teacher's embeddings (projected when widths differ) and starts with random layers, and its report says so."""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from kdistill.base import fsutil
from kdistill.base.hardware import release_memory
from kdistill.config.presets import SIZE_KEYS
from kdistill.models.heads import count_parameters, decoder_layers
from kdistill.students.init import init_from_teacher, select_layers
from kdistill.students.layer_map import increasing
from kdistill.students.llama import build_llama, llama_blocks_missing, resolve_sizes, teacher_sizes, window_dropped
from kdistill.students.prune import prune_into

log = logging.getLogger("kdistill")


def choose_layers(cfg, teacher, n: int, calib_batch) -> list[int]:
    strategy = cfg.student.layer_selection
    n_rounds = len(decoder_layers(teacher)) - n if strategy == "importance" else 0
    with tqdm(total=n_rounds, desc="choosing teacher layers", unit="layer", disable=not n_rounds,
              dynamic_ncols=True) as bar:
        return select_layers(strategy, teacher, n, cfg.student.layers, calib_batch, bar)


def fit_copied_spans(cfg, student, teacher, layers: list[int], calib_batch, seconds: float | None = None) -> dict:
    """`span_fit.fit_spans` on the first `student.span_fit_rows` calibration rows, on their device;
    `seconds`: its share of train.time_budget."""
    from kdistill.students.span_fit import fit_spans

    rows = {k: v[:cfg.student.span_fit_rows] for k, v in calib_batch.items()}
    student.to(rows["input_ids"].device)
    with tqdm(total=cfg.student.span_fit_steps, desc="fitting copied layers to their spans", unit="step",
              dynamic_ncols=True) as bar:
        report = fit_spans(student, teacher, rows, layers, cfg.student.span_fit_steps, cfg.student.span_fit_lr,
                           bar=bar, seconds=seconds)
    release_memory(student)  # the targets, activations and Adam state it held, back before the next phase
    return report


def llama_student(cfg, teacher, vocab_size: int, calib_batch, tokenizer=None, budget=None):
    """LLaMA student; with init=teacher: chosen teacher layers, cut to the student's width if narrower
    (LLaMA-family teachers), else the teacher's embeddings and random layers. `budget`
    (train/budget.Budget): the span fit and the repair each get their share of the time left."""
    sizes = resolve_sizes(cfg.student, teacher.config)
    own_ids = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")} \
        if cfg.student.tokenizer else None
    student = build_llama(sizes, teacher.config, vocab_size, own_ids)
    fresh = student.get_input_embeddings().weight.detach().clone() if cfg.student.tokenizer else None
    report = {"kind": "llama", "sizes": sizes, "teacher_architecture": getattr(teacher.config, "model_type", None)}
    blocks_missing = llama_blocks_missing(teacher.config)
    if cfg.student.init == "random":
        report.update(embeddings="random", layers="random (student.init=random)")
    elif blocks_missing is not None:  # no layers to choose: no calibration passes
        report.update(init_from_teacher(student, teacher, None, blocks_missing))
    else:
        base = teacher_sizes(teacher.config)
        if all(sizes[k] <= base[k] for k in SIZE_KEYS):
            layers = choose_layers(cfg, teacher, sizes["num_layers"], calib_batch)
            report["layer_selection"] = cfg.student.layer_selection
            same_width = all(sizes[k] == base[k] for k in SIZE_KEYS if k != "num_layers")
            first = calib_batch and {k: v[:4] for k, v in calib_batch.items()}  # pruning: its first rows
            report.update(init_from_teacher(student, teacher, layers) if same_width
                          else prune_into(student, teacher, layers, first))
            whole = same_width and len(layers) == len(decoder_layers(teacher))  # an exact copy: nothing to repair
            fits = calib_batch is not None and not cfg.student.tokenizer and not whole  # span fit, repair
            shares = (cfg.student.span_fit_share, cfg.student.repair_share)  # of a train.time_budget
            if cfg.student.span_fit_steps and fits:
                if not same_width:
                    report["span_fit"] = "skipped: the student is narrower than the teacher (pruned)"
                elif not increasing(layers):
                    report["span_fit"] = "skipped: the copied layers are not in increasing order (student.layers)"
                else:
                    limits = budget.fit_limits(*shares) if budget else None
                    report["span_fit"] = fit_copied_spans(cfg, student, teacher, layers, calib_batch,
                                                          limits and limits["span_fit"])
            if cfg.student.repair_steps and fits:
                from kdistill.students.repair import repair_from_teacher

                rows = {k: v[:cfg.student.repair_rows] for k, v in calib_batch.items()}
                limits = budget.fit_limits(*shares) if budget else None
                report["repair"] = repair_from_teacher(student, teacher, rows, cfg.student.repair_steps,
                                                       limits and limits["repair"])
            if window_dropped(teacher.config):
                report["attention_window"] = window_dropped(teacher.config)
        else:  # wider or deeper than the teacher in some size: nothing to slice, project the embeddings
            report.update(init_from_teacher(student, teacher, None))
    report["parameters"] = count_parameters(student)
    if fresh is not None:  # its own tokenizer: no embedding row means the teacher's row of the same id
        from kdistill.students.own_tokenizer import use_tokenizer

        report.update(use_tokenizer(student, tokenizer, fresh))
    return student, report


def fractal_student(cfg, teacher, vocab_size: int, calib_batch=None, tokenizer=None):
    """The weight-shared complex student of seed 000, on the teacher's vocabulary."""
    from kdistill.base.errors import ConfigError
    from kdistill.students.fractal import (
        FractalConfig,
        FractalForCausalLM,
        core_parameter_count,
        init_embeddings_from_teacher,
    )

    s, t = cfg.student, teacher.config
    hidden, heads = s.hidden_size or 256, s.num_heads or 4
    ffn = s.intermediate_size or 2 * hidden
    if hidden % (2 * heads) or ffn % 2:
        raise ConfigError(f"student.hidden_size={hidden} must be a multiple of 2 x student.num_heads={heads} and "
                          f"student.intermediate_size={ffn} even (complex units are [Re | Im] pairs)")
    config = FractalConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_heads=heads,
                           num_steps=s.fractal_steps, alpha=s.fractal_alpha,
                           max_position_embeddings=getattr(t, "max_position_embeddings", 2048),
                           bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)
    model = FractalForCausalLM(config)
    report = {"kind": "fractal", "hidden_size": hidden, "intermediate_size": ffn, "num_heads": heads,
              "steps": s.fractal_steps, "alpha": s.fractal_alpha, "embeddings": "random"}
    if s.init == "teacher":
        init_embeddings_from_teacher(model, teacher.get_input_embeddings().weight)
        report["embeddings"] = "teacher's, on their top principal directions"
    report.update(core_parameters=core_parameter_count(model), parameters=count_parameters(model))
    return model, report


def pretrained_student(cfg, teacher, vocab_size: int, calib_batch=None, tokenizer=None):
    from kdistill.students.pretrained import build_pretrained

    return build_pretrained(cfg, teacher, tokenizer)


BUILDERS = {"llama": llama_student, "fractal": fractal_student, "pretrained": pretrained_student}


def build_student(cfg, teacher, vocab_size: int, calib_batch=None, tokenizer=None, budget=None):
    """Build the configured student and initialise it. Returns (model, report dict). `budget`: a
    train/budget.Budget that limits the LLaMA student's start-up fits."""
    if cfg.student.kind == "llama":
        return llama_student(cfg, teacher, vocab_size, calib_batch, tokenizer, budget)
    return BUILDERS[cfg.student.kind](cfg, teacher, vocab_size, calib_batch, tokenizer)


def save_student(student, tokenizer, output_dir: Path):
    """Write OUTPUT_DIR/student (a plain model folder); a LoRA student also as OUTPUT_DIR/adapter.
    Returns the model to evaluate (a LoRA student merged into its base)."""
    from kdistill.students.pretrained import is_peft, save_adapter_and_merged

    if is_peft(student):
        return save_adapter_and_merged(student, tokenizer, Path(output_dir), fsutil.atomic_dir)
    with fsutil.atomic_dir(Path(output_dir) / "student") as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return student
