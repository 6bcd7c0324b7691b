"""Each student scenario's shipped config trains for a few steps (tiny teacher and sizes swapped in)."""
import importlib.util
from pathlib import Path

from helpers import tiny_llama, tiny_tokenizer

from kdistill.commands.cli import main
from kdistill.config.schema import load_config
from tests.students.settings import FAST

ROOT = Path(__file__).parents[2]


def run(quick_distill, config, teacher_dir, out, *extra):
    cfg = load_config(ROOT / "configs" / config, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST,
                                                  "train.max_steps=2", "train.warmup_steps=1", *extra])
    return cfg, quick_distill(cfg)


def test_fractal_config_trains(quick_distill, teacher_dir, tmp_path):
    cfg, result = run(quick_distill, "fractal.yaml", teacher_dir, tmp_path / "f", "student.hidden_size=16",
                      "student.fractal_steps=2")
    assert cfg.loss.terms == [{"kind": "forward_kl", "weight": 1.0, "temperature": 2.0}] and cfg.train.lr == 1e-4
    assert result["student_init"]["kind"] == "fractal" and len(result["completions"]["student"]) == 3
    assert (tmp_path / "f" / "student" / "config.json").is_file()


def test_lora_dolly_config_trains(quick_distill, teacher_dir, tmp_path):
    run_dir = tmp_path / "demo"
    tiny_llama(len(tiny_tokenizer()), seed=3).save_pretrained(run_dir / "student")
    tiny_tokenizer().save_pretrained(run_dir / "student")
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    cfg, result = run(quick_distill, "lora_dolly.yaml", teacher_dir, tmp_path / "l", f"student.model={run_dir}",
                      "train.seq_len=96", "train.grad_accum=1", *([] if has_bnb else ["teacher.load_in=full"]))
    assert cfg.data.path == "data/dolly_sample.jsonl" and cfg.student.lora_rank == 8
    assert result["student_init"]["lora"]["rank"] == 8 and result["teacher_memory"]["load_in"] == cfg.teacher.load_in
    assert (tmp_path / "l" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "l" / "student" / "model.safetensors").is_file()


def test_designed_config_trains(quick_distill, tmp_path, capsys):
    from helpers import save_tiny_teacher

    teacher = save_tiny_teacher(tmp_path / "t8", num_hidden_layers=8)
    assert main(["design", "--teacher", teacher, "--compression", "1.5", "--out", str(tmp_path / "s.yaml")]) == 0
    cfg = load_config(tmp_path / "s.yaml", [f"output_dir={tmp_path / 'd'}", *FAST, "train.max_steps=1",
                                            "student.layer_selection=even"])
    result = quick_distill(cfg)
    assert result["student"]["parameters"] == int(capsys.readouterr().out.splitlines()[3].split()[6].replace(",", ""))
