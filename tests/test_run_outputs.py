"""A tiny `kdistill distill` from the command line: no third-party progress bar, a log file, a model card,
and a last line naming what it wrote and the next commands. The Python API returns eval.json."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", "eval.prompts=[Once]", "student.layer_selection=first_last",
        "train.max_steps=2", "train.checkpoint_every=1"]


@pytest.fixture(scope="module")
def cli_run(teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    env = {**os.environ, "KDISTILL_CACHE": str(out.parent / "kdcache"), "KDISTILL_THREADS": "1",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "kdistill", "distill", f"teacher.model={teacher_dir}",
                           f"output_dir={out}", *FAST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_no_third_party_progress_bars(cli_run):
    _, proc = cli_run
    for bar in ("Loading weights", "Writing model shards", "Generating train split", "Map:"):
        assert bar not in proc.stderr and bar not in proc.stdout


def test_log_file_keeps_what_was_logged_and_printed(cli_run):
    out, proc = cli_run
    log = (out / "kdistill.log").read_text()
    assert "device cpu" in log  # a log record
    assert "student: LLaMA, 1 layer x" in log and "student: LLaMA" in proc.stdout  # a printed line


def test_run_ends_with_what_it_wrote_and_the_next_commands(cli_run):
    out, proc = cli_run
    last = proc.stdout.strip().splitlines()[-2:]
    assert last[0].startswith(f"wrote {out / 'student'} (") and "model card README.md" in last[0]
    assert "eval.json" in last[0] and "metrics.jsonl" in last[0] and "kdistill.log" in last[0]
    assert last[1] == (f"next: kdistill report {out}  |  kdistill generate --model {out / 'student'} \"Once\"  |  "
                       f"kdistill export --model {out / 'student'} --format gguf --type Q8_0")


def test_model_card_loads_with_huggingface_hub(cli_run, teacher_dir):
    from huggingface_hub import ModelCard

    out, _ = cli_run
    card = ModelCard.load(out / "student" / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == teacher_dir and meta["library_name"] == "transformers"
    assert meta["tags"] == ["kdistill", "distillation"] and meta["pipeline_tag"] == "text-generation"
    for section in ("## Teacher", "## Data", "## Teacher vs student", "## Held-out metrics", "## Seed prompts",
                    "```yaml", "kdistill distill --config config.yaml"):
        assert section in card.text
    kl = json.loads((out / "eval.json").read_text())["heldout"]["kl"]
    assert f"| {kl:,.3f} |" in card.text


def test_export_writes_a_card_too(cli_run, tmp_path):
    from huggingface_hub import ModelCard

    from kdistill import export

    out, _ = cli_run
    result = export(out / "student", "int8", out=tmp_path / "s-int8")
    card = ModelCard.load(result["card"])
    assert Path(result["card"]) == tmp_path / "s-int8" / "README.md"
    assert card.data.to_dict()["base_model"] == ModelCard.load(out / "student" / "README.md").data.base_model
    assert "quantized" in card.data.tags and f"{result['report']['kl_mean']:.3e}" in card.text


def test_api_distill_returns_eval_json(teacher_dir, tmp_path):
    from kdistill import distill, load_config

    out = tmp_path / "run"
    result = distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST[:-2],
                                        "train.max_steps=1", "train.checkpoint_every=1"]))
    assert result == json.loads((out / "eval.json").read_text())
    assert (out / "student" / "README.md").is_file() and (out / "kdistill.log").is_file()
