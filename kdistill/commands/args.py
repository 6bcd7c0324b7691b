"""The arguments of every `kdistill` subcommand, defined without importing torch or transformers.

Building the parser imports this module only, so `kdistill --help` and every `kdistill SUB --help` answer
in well under a second; a command imports what it needs when it runs. Choices that mirror a constant of a
heavy module (GGUF types, int schemes, loss kinds) are written out here, and tests/commands/test_args.py checks
them against those constants.
"""
from __future__ import annotations

import argparse

EXAMPLES = {
    "distill": "examples:\n  kdistill distill --config configs/demo.yaml\n"
               "  kdistill distill --config configs/demo.yaml train.max_steps=20 output_dir=runs/quick\n"
               "  kdistill distill --config configs/demo.yaml --dry-run\n"
               "  kdistill distill --config configs/demo.yaml --resume",
    "generate": "examples:\n  kdistill generate --model runs/demo/student \"Once upon a time\"\n"
                "  kdistill generate --model runs/demo/student-q4_0.gguf --chat \"What is the capital of France?\"",
    "eval": "examples:\n  kdistill eval --student runs/demo/student --teacher default --data notes.txt --out e.json\n"
            "  kdistill eval --run runs/demo --tasks tests/fixtures/tasks/tiny_mc.jsonl --lm-eval-dir runs/lm_tasks",
    "report": "examples:\n  kdistill report runs/demo\n"
              "  kdistill report runs/small runs/medium runs/large --min-retention 0.9 --out runs/report",
    "bench": "example:\n  kdistill bench loss --tokens 4096 --vocab 49152 --hidden 576",
    "bench step": "example:\n  kdistill bench step --layers 4 --steps 5",
    "design": "examples:\n  kdistill design --teacher default --compression 4\n"
              "  kdistill design --teacher default --params 30M --out configs/student_30m.yaml",
    "cache": "examples:\n  kdistill cache --config configs/demo.yaml cache.out=runs/cache cache.k=50\n"
             "  kdistill cache --inspect runs/cache\n"
             "  kdistill distill --config configs/demo.yaml teacher.cache=runs/cache",
    "map-layers": "examples:\n  kdistill map-layers --teacher default --student runs/demo/student\n"
                  "  kdistill map-layers --teacher default --student runs/demo --data notes.txt --out runs/map",
    "config": "examples:\n  kdistill config list\n"
              "  kdistill config show --config configs/demo.yaml train.max_steps=20\n"
              "  kdistill config cp demo my_run.yaml\n"
              "  kdistill config reference > docs/configuration.md",
}
EXPORT_EPILOG = """\
examples:
  # GGUF for llama.cpp / llama-cpp-python (F32, F16, Q8_0, Q5_0 or Q4_0)
  kdistill export --model runs/student/final --format gguf --type Q4_0 --out student-q4_0.gguf
  # int4 folder, its scheme chosen by measured KL within 5 bits a weight, reported on your held-out text
  kdistill export --model runs/student/final --format int4 --out student-int4 --data heldout.txt
  # load it back: transformers with `pip install compressed-tensors`, or kdistill without it
  python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('student-int4')"
  python -c "from kdistill.export import load_quantized; m = load_quantized('student-int4')"

The table reports the output size, the memory saved against the fp32 weights, and the mean per-token
KL(fp32 student || exported) and top-1 agreement on held-out text (a built-in paragraph unless --data),
with the KL the type should give; a warning says when the export is far above it.
"""
GGUF_TYPES = ("F32", "F16", "Q8_0", "Q5_0", "Q4_0")  # kdistill.export.gguf_writer.QTYPES
INT_SCHEMES = ("int8", "int4")  # kdistill.export.quantize.SCHEMES
BENCH_DIVERGENCES = ("forward_kl", "reverse_kl", "bidirectional_kl", "jsd", "skew_forward_kl", "skew_reverse_kl",
                     "tvd", "selective", "reverse_kl_pg", "uld", "hybrid")  # losses.config.KINDS without ce
BENCH_DTYPES = ("float32", "bfloat16")  # kdistill.commands.bench_loss.DTYPES


def distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file stating what differs from the defaults")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in output_dir")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="with --resume: continue although the data files changed since the checkpoint "
                        "(recorded in resumes.jsonl); without it such a resume is refused")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve and check the config, print the plan, and stop: no model loads, nothing is written")


def cache_arguments(p: argparse.ArgumentParser) -> None:
    from kdistill.commands import cache as command

    command.add_arguments(p)


def generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a model folder, an int8/int4 folder from `kdistill export`, or a .gguf file")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--chat", action="store_true",
                   help="send each prompt as a user message through the tokenizer's chat template")


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="a `kdistill distill` output_dir: its student, teacher and held-out split; "
                                 "the result is merged into RUN/eval.json")
    p.add_argument("--student", help="student folder (default with --run: RUN/student)")
    p.add_argument("--teacher", help="hub id, folder, .gguf file or 'default' (default with --run: from its config)")
    p.add_argument("--teacher-server", metavar="URL",
                   help="the teacher on an inference server (vLLM http://HOST:PORT/v1, or SGLang): held-out numbers "
                        "against it; --teacher (or the run's teacher.model) gives its tokenizer, and its weights where "
                        "they load for the rest of the table")
    p.add_argument("--server-model", help="the model name the server serves (default: its only model)")
    p.add_argument("--server-api", choices=["vllm", "sglang"], default=None, help="the server's API (default vllm)")
    p.add_argument("--data", help="held-out data file (default: with --run the run's own held-out split, else "
                                  "new teacher samples with a seed of their own)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--tasks", nargs="+", metavar="FILE",
                   help="benchmark files: kdistill JSONL (kdistill/evaluation/tasks.py), BIG-bench task.json or "
                        "lm-eval task YAML")
    p.add_argument("--limit", type=int, help="use at most this many records of each task")
    p.add_argument("--max-new-tokens", type=int, help="for completions, speed and generative tasks (default 32)")
    p.add_argument("--no-speed", action="store_true", help="skip the generation speed and memory measurement")
    p.add_argument("--no-heldout", action="store_true",
                   help="no held-out text (read or generated): tasks, sizes and speed only")
    p.add_argument("--lm-eval-dir", help="also write lm-eval task YAMLs for --tasks here")
    p.add_argument("--out", help="write the result as JSON here (default with --run: RUN/eval.json); an eval "
                                 "result already there is merged with the new one")
    p.add_argument("--force", action="store_true",
                   help="replace --out (or --lm-eval-dir) when it holds something else (never an input or a "
                        "run's own files)")


def report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report, or PARENT/report for several runs); "
                                 "a report written there before is refreshed")
    p.add_argument("--force", action="store_true",
                   help="replace --out when it holds something else (never a run folder or a run's own files)")
    p.add_argument("--min-retention", type=float, default=0.9,
                   help="recommend the smallest student that keeps this share of the teacher's quality")
    p.add_argument("--title", default="kdistill report")


def bench_step_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `kdistill bench step` (kdistill.commands.bench_step)."""
    p.add_argument("--teacher", default="default", help="teacher spec, as teacher.model (default: the embedded one)")
    p.add_argument("--layers", type=int, default=8, help="student layers (copied first/last from the teacher)")
    p.add_argument("--batch", type=int, default=8, help="rows per step")
    p.add_argument("--seq", type=int, default=128, help="tokens per row")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each part")
    p.add_argument("--warmup", type=int, default=2, help="steps left out first")
    p.add_argument("--threads", type=int, default=1, help="torch threads")


def bench_loss_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `kdistill bench loss` (kdistill.commands.bench_loss.add_arguments is this function)."""
    p.add_argument("--tokens", type=int, default=4096, help="rows (batch x sequence) of the loss")
    p.add_argument("--vocab", type=int, default=49152, help="vocabulary size V")
    p.add_argument("--hidden", type=int, default=576, help="student width D (teacher width too)")
    p.add_argument("--divergence", default="forward_kl", choices=BENCH_DIVERGENCES,
                   help="our loss term; the reference is always the seed-style forward KL")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    p.add_argument("--memory-budget-mb", type=float, default=256.0, help="budget for the automatic chunk")
    p.add_argument("--dtype", default="float32", choices=BENCH_DTYPES, help="dtype of hidden and weights")
    p.add_argument("--teacher", default="hidden", choices=["hidden", "logits"],
                   help="teacher given as hidden states + head (chunked) or as full logits")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the measured one")
    p.add_argument("--seed", type=int, default=0)


def design_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `kdistill design` (kdistill.commands.design.add_arguments is this function)."""
    p.add_argument("--teacher", required=True, help="hub id, folder, .gguf file or 'default'")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--params", help="student parameters, e.g. 30M or 1.1B")
    size.add_argument("--compression", type=float, help="teacher parameters / student parameters, e.g. 4")
    p.add_argument("--context", type=int, default=512, help="context length for FLOPs per token (512)")
    p.add_argument("--choose", type=int, help="write candidate N instead of the first (deepest)")
    p.add_argument("--out", default="runs/design/student.yaml", help="where to write the chosen config")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def export_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `kdistill export` (kdistill.commands.export.add_arguments is this function)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = p.description or "a student folder -> GGUF for llama.cpp, or int8/int4 safetensors for PyTorch."
    p.epilog = EXPORT_EPILOG
    p.add_argument("--model", required=True, help="student folder (HF LlamaForCausalLM + tokenizer)")
    p.add_argument("--format", required=True, choices=("gguf", *INT_SCHEMES), help="output format")
    p.add_argument("--type", choices=GGUF_TYPES, help="GGUF tensor type (default F16)")
    p.add_argument("--out", help="output .gguf file or folder (default: beside --model, named by type)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it exists (never --model itself, an input or a run folder)")
    p.add_argument("--group-size", type=int,
                   help="int4 group length (default: 32, 64 and 128 measured, the lowest KL kept)")
    p.add_argument("--max-bits", type=float, default=5.0,
                   help="int4: bits a layer weight may cost on average, scales included (default 5.0; group 32 "
                        "is 4.5, the rest moves the layers that matter most to int8)")
    p.add_argument("--calibration", help="int4: UTF-8 text the scheme is chosen on (default: a built-in paragraph)")
    p.add_argument("--keep-embeddings", action="store_true",
                   help="int8/int4: keep the token embedding and output head in float (default int8)")
    p.add_argument("--data", help="held-out UTF-8 text for the KL measurement")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per measured sequence (default 128)")
    p.add_argument("--max-tokens", type=int, default=2048, help="held-out tokens measured (default 2048)")
    p.add_argument("--no-eval", action="store_true", help="skip loading the output back and measuring")


def map_layers_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `kdistill map-layers` (kdistill/commands/map_layers.py)."""
    p.add_argument("--teacher", required=True, help="hub id, folder, .gguf file or 'default'")
    p.add_argument("--student", required=True, help="student folder, or a kdistill run folder (its student/)")
    p.add_argument("--data", help="calibration text: any file data.path reads (default: a few built-in sentences)")
    p.add_argument("--tokens", type=int, default=512, help="calibration tokens (512)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration row (128)")
    p.add_argument("--out", default="runs/layer_map",
                   help="folder for layer_map.yaml/.json/.png (a map written there before is refreshed)")
    p.add_argument("--force", action="store_true",
                   help="replace --out when it holds something else (never an input or a run folder)")


def config_arguments(p: argparse.ArgumentParser) -> None:
    subs = p.add_subparsers(dest="action", required=True)
    show = subs.add_parser("show", help="print the resolved config as YAML, each key with its meaning",
                           description="Print the resolved config as YAML, each key commented with its meaning.")
    show.add_argument("--config", help="YAML file stating what differs from the defaults")
    show.add_argument("overrides", nargs="*", metavar="key.path=value")
    subs.add_parser("list", help="list the shipped configs (configs/*.yaml)",
                    description="List the shipped configs (configs/*.yaml) with what each is for.")
    cp = subs.add_parser("cp", help="copy a shipped config to a file to edit",
                         description="Copy a shipped config (a name from `kdistill config list`) to FILE.")
    cp.add_argument("name", metavar="NAME")
    cp.add_argument("file", metavar="FILE")
    cp.add_argument("--force", action="store_true", help="replace FILE if it exists")
    subs.add_parser("reference", help="print every config key as Markdown: type, default, choices, meaning",
                    description="Print the configuration reference (docs/configuration.md) as Markdown: every "
                                "section and key with its type, default, choices and meaning.")


SUBCOMMANDS = [  # (name, help, add the arguments)
    ("distill", "Distill a teacher into a student (config file plus key.path=value overrides).", distill_arguments),
    ("cache", "Run the teacher once over the data and write a compact teacher cache (or --inspect one).",
     cache_arguments),
    ("generate", "Generate text with a model folder, an int8/int4 export or a .gguf file.", generate_arguments),
    ("eval", "Compare a student with its teacher: held-out agreement, benchmarks, size and speed.", eval_arguments),
    ("report", "An HTML page (and Markdown) of one or more runs: curves, tables, completions, quality vs size.",
     report_arguments),
    ("bench", "Benchmarks that print their numbers.", None),
    ("design", "Print candidate students for a teacher and a size; write the chosen one as a config.",
     design_arguments),
    ("export", "Quantise a student or export it as GGUF.", export_arguments),
    ("map-layers", "Map student layers to teacher layers by linear CKA; write the pairs, a matrix and a heat map.",
     map_layers_arguments),
    ("config", "Show every config key with its meaning, list the shipped configs, copy one, print the reference.",
     config_arguments),
]


def add_subcommands(subs) -> None:
    for name, help_text, add in SUBCOMMANDS:
        p = subs.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if add is not None:
            add(p)
    bench = subs.choices["bench"].add_subparsers(dest="bench", required=True)
    bench_loss_arguments(bench.add_parser("loss", help="loss time and peak memory: seed-style reference vs kdistill",
                                          epilog=EXAMPLES["bench"],
                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    bench_step_arguments(bench.add_parser("step", help="the KD step's share of the ceiling set by the teacher's "
                                          "forward and the student's step", epilog=EXAMPLES["bench step"],
                                          formatter_class=argparse.RawDescriptionHelpFormatter))
