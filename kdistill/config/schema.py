"""Typed, strict run configuration: dataclass sections, YAML files, `key.path=value` overrides.

A YAML file states only what differs from the defaults below. Values are coerced to each field's type
(PyYAML reads `1e-3` as a string), a key typed as a choice (kdistill/config/choices.py) takes only its
names, an unknown key is an error that names the file and line and the nearest valid key, and the fully
resolved config is written as `config.yaml` next to every output.

    cfg = load_config("configs/demo.yaml", ["train.max_steps=50", "loss.terms=[{kind: forward_kl}]"])

Each number declares what it accepts beside it, `ranged(default, ">= 1")` (kdistill/config/ranges.py: one
check of every key, finite numbers, no empty value where one is needed); each section checks what a range
cannot say in `validate()` (no files, no model); `validate(cfg)` runs them all and the checks that need two
sections (kdistill/config/checks.py). Checks that read files run in
kdistill/run/preflight.py, those that need a model when it loads. `kdistill config reference` prints every
key of this file with its type, default, choices and meaning (docs/configuration.md).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from kdistill.base.errors import ConfigError
from kdistill.config import loading
from kdistill.config.checks import check_agreement
from kdistill.config.choices import (
    CacheMode,
    DataFormat,
    Distributed,
    LayerSelection,
    StudentInit,
    StudentKind,
    Tracker,
    check_choices,
)
from kdistill.config.generation import GenerateConfig
from kdistill.config.presets import PresetName, default_freeze, default_lr
from kdistill.config.ranges import check_ranges, ranged, where_set
from kdistill.config.rollout import RolloutConfig
from kdistill.config.teacher import TeacherConfig

SEED_PROMPTS = ["Once upon a time", "The king said", "In the beginning"]
DEFAULT_STEPS = 150  # train.max_steps when neither it nor train.epochs is set
DEVICE = re.compile(r"auto|(cpu|cuda|mps|xpu)(:\d+)?")  # the forms torch.device takes that kdistill runs on


@dataclass
class StudentConfig:
    """The model trained: its kind, its size (a preset, then the size keys) and how it starts."""

    kind: StudentKind = "llama"
    """llama (LlamaForCausalLM sized by preset/fields), fractal, or pretrained (`model` with optional LoRA)."""
    preset: PresetName = "auto"
    """A name from the presets table (kdistill/config/presets.py); `auto` keeps the teacher's width and
    about a quarter of its layers."""
    num_layers: int | None = ranged(None, ">= 1")
    """Decoder layers; empty = the preset's (or the teacher's)."""
    hidden_size: int | None = ranged(None, ">= 1")
    """Width; empty = the preset's (or the teacher's, so its layers can be copied)."""
    num_heads: int | None = ranged(None, ">= 1")
    """Attention heads (must divide hidden_size); empty = the preset's (or the teacher's)."""
    num_kv_heads: int | None = ranged(None, ">= 1")
    """Key/value heads of grouped-query attention (must divide num_heads); empty = the preset's (or the
    teacher's)."""
    intermediate_size: int | None = ranged(None, ">= 1")
    """Width of the MLP's hidden layer; empty = the preset's (or the teacher's)."""
    init: StudentInit = "teacher"
    """teacher (copy embeddings, final norm and selected layers where shapes allow) or random."""
    layer_selection: LayerSelection = "importance"
    """importance (greedy removal by measured KL on calibration data), even, first_last, or explicit."""
    layers: list[int] | None = ranged(None, ">= 0", "each a teacher layer index")
    """Teacher layer indices to copy when layer_selection=explicit."""
    repair_steps: int = ranged(20, ">= 0", "0 = off")
    """init=teacher with layers copied from the teacher: fit every norm gain and each layer's attention and
    MLP output scale to the teacher on 16 calibration rows for this many Adam steps before training, which
    repairs the residual stream the dropped layers built (kdistill/students/repair.py; held-out KL at
    step 0 on SmolLM2-135M: 4 layers 9.44 -> 4.99, 8 layers 5.32 -> 3.88); 0 = off."""
    repair_rows: int = ranged(16, ">= 1")
    """Training answers the repair fits on (the first rows of the training split), run 16 at a time."""
    span_fit_steps: int = ranged(120, ">= 0", "0 = off")
    """init=teacher with layers copied at the teacher's width: before the repair, train every decoder
    weight for this many Adam steps (16 rows each) so that each copied layer's output matches the teacher's
    stream at the end of the span of layers it stands for (kdistill/students/span_fit.py; held-out KL at
    step 60 on SmolLM2-135M, 600 answers, no fit / 60 steps on 128 rows / 120 steps on 256 rows: 4 layers
    2.843 / 2.551 / 2.296, 8 layers 2.092 / 1.877 / 1.708, README "Quality per compute"); 0 = off."""
    span_fit_rows: int = ranged(256, ">= 1")
    """Training answers the span fit cycles through (the first rows of the training split; their targets
    are kept, in bfloat16, for the whole fit: up to 1.2 MB a row at 8 layers, 0.6 MB at 4)."""
    span_fit_lr: float = ranged(2e-3, "> 0", "a learning rate, e.g. 2e-3")
    """The span fit's constant Adam learning rate (best of 1e-4, 3e-4, 1e-3, 2e-3, 3e-3)."""
    span_fit_share: float = ranged(0.5, "(0, 1]", "a fraction, e.g. 0.5")
    """With train.time_budget: the most of the seconds left when the student is built that the span fit may
    take (it stops after the step that reaches it, or at span_fit_steps); docs/benchmarks.md "Quality per
    minute" measures the share."""
    repair_share: float = ranged(0.1, "(0, 1]", "a fraction, e.g. 0.1")
    """With train.time_budget: the most of the seconds left after the span fit that the repair may take."""
    model: str | None = None
    """For kind=pretrained: the student's hub id or folder."""
    fractal_steps: int = ranged(10, ">= 1")
    """For kind=fractal: T, how many times the one shared block is applied."""
    fractal_alpha: float = ranged(0.5, "(0, 1]")
    """For kind=fractal: the update Z <- (1 - alpha) Z + alpha sigma(Layer(Z))."""
    lora_rank: int = ranged(0, ">= 0", "0 = no LoRA")
    """For kind=pretrained: LoRA rank (0 = train all weights)."""
    lora_alpha: float = ranged(16.0, "> 0")
    """For kind=pretrained with LoRA: the adapters' scale is lora_alpha / lora_rank."""
    lora_dropout: float = ranged(0.05, "[0, 1)")
    """For kind=pretrained with LoRA: dropout on the adapters' input."""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """For kind=pretrained with LoRA: the names of the linear layers that get adapters."""
    tokenizer: str | None = None
    """The student's own tokenizer (a folder, a .gguf, or `default`: SmolLM2's) when it is not the teacher's:
    cross-tokenizer distillation with loss kinds hybrid or uld (kdistill/sources/cross.py). kind=llama:
    the student is built around it (embeddings fresh, or the teacher's rows of matching strings with
    init=teacher); kind=pretrained: give the student's folder. Empty = the teacher's tokenizer."""

    def validate(self) -> None:
        if self.layer_selection == "explicit" and not self.layers:
            raise ConfigError("student.layers must list teacher layer indices when student.layer_selection=explicit")
        if self.kind == "pretrained" and not self.model:
            raise ConfigError("student.model must name a model (hub id or folder) when student.kind=pretrained")


@dataclass
class DataConfig:
    """The text distilled on: a file or hub dataset (`path`), or text the teacher writes (`generate`)."""

    path: str | None = None
    """Local .txt/.jsonl/.json/.csv/.parquet file or a hub dataset name; empty = teacher-generated data."""
    format: DataFormat = "auto"
    """auto, text (packed blocks), or instruction (Dolly/Alpaca/chat records, loss on responses only)."""
    text_field: str = "auto"
    """The record field that holds the text; auto = the first of text, content, document, body, story."""
    split: str = "train"
    """For a hub dataset: the split read."""
    heldout_fraction: float = ranged(0.1, "(0, 1)")
    """Share of the examples held out (shuffled with train.seed) to measure the student against the teacher."""
    max_records: int | None = ranged(None, ">= 1", "empty = all")
    """Read at most this many records (the first ones); empty = all."""
    pack: bool | Literal["auto"] = "auto"
    """Instruction records several per training row, each read as if alone (position ids restart per record,
    no attention across records; docs/data.md). auto = where that is exact: instruction data with a live
    teacher (teacher.model, teacher.sources of models or EMA) and a LLaMA student; true refuses a run it
    cannot pack (teacher.cache, teacher.server, student.tokenizer, on-policy rollouts); false = one record
    per row."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def validate(self) -> None:
        self.generate.validate()
        sources = ["data.path"] * bool(self.path) + self.generate.data_sources()
        if len(sources) > 1:
            raise ConfigError(f"{' and '.join(sources)} are both set; the data comes from one of them, so set only one")


def _default_terms() -> list[dict]:
    return [{"kind": "forward_kl", "weight": 1.0, "temperature": 1.0},
            {"kind": "ce", "weight": 0.1, "label_smoothing": 0.0}]


@dataclass
class LossConfig:
    """The training objective: weighted terms, computed over chunks of tokens (kdistill/losses)."""

    terms: list[dict] = field(default_factory=_default_terms)
    """Weighted terms; see README 'Losses' for the kinds and their keys (hidden_mse, hidden_cosine,
    attention_output, attention_map: README 'Hidden states and attention')."""
    t2_scale: bool = True
    """Multiply KD terms by T^2 (Hinton et al.) so gradients keep their scale across temperatures."""
    chunk_size: int | None = ranged(None, ">= 1", "empty = automatic")
    """Tokens per chunk of the fused output layer; empty = chosen from vocab and memory_budget_mb."""
    memory_budget_mb: float = ranged(256.0, "> 0")
    """Memory the output layer's logits of one chunk may take; sets the chunk size when chunk_size is empty."""

    def validate(self, origins: dict | None = None) -> None:
        """The terms, each key checked (kdistill/losses/config.py; torch is imported only now), and not every
        weight 0. `origins`: key path -> where it was set (file and line), for the message."""
        from kdistill.losses import build_objective

        objective = build_objective(self.terms, t2_scale=self.t2_scale, chunk_size=self.chunk_size,
                                    memory_budget_mb=self.memory_budget_mb, key="loss")
        if all(t.weight.bounds() == (0.0, 0.0) for t in (*objective.terms, *objective.features)):
            keys = [f"loss.terms[{i}].weight" for i in range(len(self.terms))]
            named = ", ".join(f"{key}=0{where_set(origins, key)}" for key in keys)
            raise ConfigError(f"{named}: every loss term's weight is 0, so the loss is 0 and nothing would train; "
                              "give at least one term a positive weight (e.g. weight: 1.0)")


@dataclass
class TrainConfig:
    """The optimisation: steps, batches, the learning-rate schedule, checkpoints, devices and processes."""

    max_steps: int | None = ranged(None, ">= 1", "empty = 150, or from train.epochs")
    """Optimizer steps; empty = from `epochs` when it is set, else 150. When both are set, max_steps wins
    (as HF Trainer's max_steps overrides num_train_epochs), and the run and the dry run say so."""
    epochs: int | None = ranged(None, ">= 1", "empty = by max_steps")
    """Passes over the training examples: the run trains ceil(epochs * training examples / (batch_size *
    grad_accum)) steps, counted when the data is read (the log and the model card give the number); the
    schedule, evaluations and checkpoints follow that count. Empty = train `max_steps` steps."""
    time_budget: float | None = ranged(None, "> 0", "minutes, e.g. 10; empty = no budget")
    """Minutes from the command's start to the trained student (teacher, data, layer choice, start-up fits,
    steps; the final evaluation follows): the span fit and the repair get a share of what is left when the
    student is built, and the step count is set from the first steps' measured time (train.max_steps or
    train.epochs, when set, cap it). The run logs the count; a resumed run keeps it. See
    kdistill/train/budget.py and docs/training.md "A time budget"."""
    batch_size: int = ranged(8, ">= 1")
    """Sequences per step (over all processes), before gradient accumulation."""
    grad_accum: int = ranged(1, ">= 1")
    """Batches whose gradients are summed into one step (the loss is normalised by all their tokens)."""
    seq_len: int = ranged(128, ">= 8")
    """Tokens per sequence."""
    lr: float | None = ranged(None, "> 0")
    """Peak learning rate; empty = by student: for a LLaMA student initialised from the teacher FITTED_LR
    (1e-3) when the span fit runs (student.span_fit_steps > 0, the teacher's width: a teacher-width preset
    and no width keys, no student.tokenizer), else SHALLOW_LR (2e-3) (both measured in README "Quality per
    compute"); 5e-4 for every other (fractal, pretrained, random init)."""
    weight_decay: float = ranged(0.01, ">= 0")
    """AdamW's decoupled weight decay."""
    warmup_steps: int = ranged(10, ">= 0", "0 = no warm-up")
    """Steps of linear warm-up to the peak learning rate."""
    min_lr_ratio: float = ranged(0.1, "[0, 1]", "a fraction of the peak learning rate")
    """The cosine schedule ends at this fraction of the peak learning rate."""
    grad_clip: float | None = ranged(1.0, ">= 0", "0 or empty = no clipping")
    """Largest gradient norm; a larger one is scaled down to it. 0 or empty = no clipping (as HF/TRL's
    max_grad_norm=0); the logged grad_norm is the norm before clipping either way."""
    freeze_embeddings: bool | None = None
    """Keep the student's token embeddings (and the output layer tied to them) as initialised from the
    teacher: fewer weights to fit from little data, and no output-layer weight gradient to compute.
    Empty = by student: true for a LLaMA student that copies the teacher's embeddings unchanged (the
    teacher's width and tokenizer), else false."""
    seed: int = ranged(0, ">= 0")
    """Seed of the student's initialisation, the held-out split and the batch order."""
    checkpoint_every: int = ranged(50, ">= 1")
    """Steps between checkpoints (a stopped run resumes from the last one with --resume)."""
    keep_checkpoints: int = ranged(2, ">= 1")
    """Checkpoints kept (the newest ones)."""
    keep_best: bool = False
    """At each held-out evaluation during training (every eval_every steps and the last), write the student
    to checkpoints/best when its held-out KL is the lowest so far (kept apart from keep_checkpoints' rotation),
    and make that one the run's student (student/, the final evaluation and exports)."""
    eval_every: int = ranged(50, ">= 1")
    """Steps between held-out evaluations."""
    gradient_checkpointing: bool = False
    """Recompute the student's activations in the backward pass: less memory, more compute."""
    device: str = "auto"
    """auto (CUDA when available, else Apple's MPS, else CPU), cpu, cuda, cuda:N or mps."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # base/hardware.PRECISIONS
    """Mixed precision of training: auto (bf16 on CUDA with bf16, fp16 with a loss scaler on CUDA without
    it, fp32 on CPU and MPS), fp32, bf16 or fp16 (autocast with a loss scaler; see docs/training.md)."""
    threads: int | Literal["auto"] = ranged("auto", ">= 1", "auto = $KDISTILL_THREADS, else the idle cores")
    """Torch threads; auto = $KDISTILL_THREADS, else the cores not already busy now."""
    distributed: Distributed = "auto"
    """Several processes (torchrun / accelerate launch): auto (ddp when launched with more than one), none,
    ddp, or fsdp (FSDP2 fully_shard, each decoder layer its own unit). See kdistill/train/distributed.py."""
    debug_every: int = ranged(0, ">= 0", "0 = never")
    """Every N steps log per-layer gradient norms and update-to-weight ratios (0 = never)."""
    tracker: list[Tracker] = field(default_factory=lambda: ["jsonl"])
    """Where metrics go besides metrics.jsonl (always written): tensorboard, aim, wandb (several allowed)."""

    def validate(self) -> None:
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"train.device={self.device!r} is not a device; use auto, cpu, cuda or cuda:N")
        if self.max_steps is not None:  # with epochs alone the steps are known when the data is read
            self.check_evaluations(self.max_steps, f"train.max_steps={self.max_steps}")

    def check_evaluations(self, steps: int, said: str) -> None:
        """keep_best chooses among the evaluations during training: more than the last step's. `said`:
        where the `steps` come from (`train.max_steps=20`, or the epochs' count)."""
        if self.keep_best and self.eval_every >= steps:
            raise ConfigError(f"train.keep_best=true keeps the checkpoint of the lowest held-out KL, but with "
                              f"train.eval_every={self.eval_every} and {said} the held-out set is measured only "
                              f"at the last step, so there is nothing to choose from; set train.eval_every below "
                              f"{steps} (e.g. train.eval_every={max(1, steps // 5)}) or train.keep_best=false")


@dataclass
class EvalConfig:
    """What is measured after training: held-out agreement, completions, speed and benchmark tasks."""

    max_batches: int | None = ranged(8, ">= 1", "empty = all")
    """Held-out batches (of train.batch_size) measured at each evaluation; empty = all of them."""
    prompts: list[str] = field(default_factory=lambda: list(SEED_PROMPTS))
    """Prompts both models complete for the report (and the speed measurement)."""
    max_new_tokens: int = ranged(32, ">= 1")
    """Tokens generated per prompt."""
    measure_speed: bool = True
    """Measure generation tokens/s, time to first token and peak memory of both models (subprocesses)."""
    tasks: list[str] = field(default_factory=list)
    """Benchmark files run on teacher and student after training: kdistill JSONL (multiple-choice or
    generative, see kdistill/evaluation/tasks.py), BIG-bench task.json or lm-eval task YAML."""

    def validate(self) -> None:
        """Every key of this section is a range (kdistill/config/ranges.py) or a list."""


@dataclass
class CacheConfig:
    """`kdistill cache`: the teacher's signal over the data, written once (see kdistill/cache)."""

    out: str = "runs/teacher-cache"
    """The cache folder to write; train from it with teacher.cache=FOLDER."""
    mode: CacheMode = "topk"
    """topk (the k most likely ids and the mass outside them) or sampled (ids drawn from the teacher)."""
    k: int = ranged(50, ">= 1")
    """For mode=topk: the ids stored per position."""
    samples: int = ranged(32, "[1, 65535]")
    """For mode=sampled: draws per position; the stored ids and counts are unbiased for the teacher."""
    temperature: float = ranged(1.0, "> 0")
    """The teacher's distribution is stored as softmax(logits / temperature)."""
    value_bits: int = ranged(6, "[2, 16]")
    """Top-k probabilities are quantised as round(sqrt(p) * 2^value_bits)."""
    shard_tokens: int = ranged(8192, ">= 1")
    """Teacher positions per shard; a stopped run resumes after its last complete shard."""
    batch_size: int = ranged(8, ">= 1")
    """Sequences per teacher forward pass."""
    seed: int = ranged(0, ">= 0")
    """For mode=sampled: the seed of the draws."""

    def validate(self) -> None:
        """Every key of this section is a range (kdistill/config/ranges.py) or a choice."""


@dataclass
class Config:
    """A whole run: one section per concern, and the folder it writes."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    output_dir: str = "runs/demo"
    """The run folder: checkpoints, metrics, the student, the report and the resolved config.yaml."""


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config of the defaults, then the file at `path`, then each `key.path=value` override; checked."""
    cfg, origins = Config(), {}
    known = loading.every_key(cfg)
    if path is not None:
        data, lines = loading.read_yaml(path)
        loading.apply(cfg, data, "", str(path), lines, known, origins)
    for text in overrides:
        key, value = loading.parse_override(text)
        loading.apply(cfg, loading.nest(key, value), "", None, {}, known, origins)
    validate(cfg, origins)
    return cfg


def resolve_defaults(cfg: Config) -> None:
    """Fill the defaults that depend on other keys (the written config.yaml shows what was used)."""
    if cfg.train.lr is None:
        cfg.train.lr = default_lr(cfg.student)
    if cfg.train.freeze_embeddings is None:
        cfg.train.freeze_embeddings = default_freeze(cfg.student)
    if cfg.train.max_steps is None and cfg.train.epochs is None and cfg.train.time_budget is None:
        cfg.train.max_steps = DEFAULT_STEPS  # with a time budget the measured steps decide


def validate(cfg: Config, origins: dict | None = None) -> None:
    """Fill the defaults that depend on other keys, then every check that needs no files and no model: the
    typed choices, every key's range (kdistill/config/ranges.py), each section's own checks, the keys that
    must agree across sections. Raises ConfigError naming the key (and, from `origins`, the file and line
    or the command line that set it) and the fix."""
    resolve_defaults(cfg)
    check_choices(cfg)
    check_ranges(cfg, origins)
    for section in (cfg.teacher, cfg.student, cfg.data, cfg.train, cfg.eval, cfg.cache, cfg.rollout):
        section.validate()
    cfg.loss.validate(origins)
    check_agreement(cfg)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
