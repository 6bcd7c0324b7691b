"""The designer: exact parameter counts, deep-narrow ordering, budget, and the written config."""
import pytest
import yaml
from helpers import save_tiny_teacher, tiny_llama_config
from transformers import LlamaForCausalLM

from kdistill.base.errors import ConfigError
from kdistill.commands.cli import main
from kdistill.config.schema import load_config
from kdistill.models.heads import count_parameters
from kdistill.students import design
from kdistill.students.llama import student_config

SMOL = tiny_llama_config(49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64)


@pytest.mark.parametrize("sizes, vocab", [
    ({"num_layers": 2, "hidden_size": 32, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}, 320),
    ({"num_layers": 3, "hidden_size": 48, "num_heads": 3, "num_kv_heads": 1, "intermediate_size": 96}, 101),
    ({"num_layers": 1, "hidden_size": 64, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 40}, 77),
])
def test_parameter_formula_equals_what_is_instantiated(sizes, vocab):
    model = LlamaForCausalLM(student_config(sizes, tiny_llama_config(vocab), vocab))
    assert design.llama_parameters(sizes, vocab) == count_parameters(model)


def test_candidates_are_exact_deep_first_and_within_budget():
    target = 34_000_000
    found, teacher = design.candidates(SMOL, target)
    assert [c["num_layers"] for c in found] == sorted((c["num_layers"] for c in found), reverse=True)
    assert found[0]["hidden_size"] < 576 and all(c["num_layers"] <= 30 for c in found)
    for c in found:
        assert abs(c["parameters"] - target) <= design.TOLERANCE * target
        assert c["hidden_size"] == 64 * c["num_heads"] and c["num_heads"] % c["num_kv_heads"] == 0
        assert c["fp16_mb"] == pytest.approx(c["fp32_mb"] / 2) and c["speedup"] > 1
    c = found[0]
    sizes = {k: c[k] for k in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size")}
    assert c["parameters"] == design.instantiated_parameters(student_config(sizes, SMOL, 49152))
    assert teacher["parameters"] == 134_515_008  # SmolLM2-135M, tied


def test_flops_and_counts():
    s = {"num_layers": 2, "hidden_size": 32, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}
    matmul = 2 * (32 * 32 + 32 * 16) + 3 * 32 * 64  # q, o; k, v; gate, up, down
    assert design.flops_per_token(s, 100, 10) == 2 * (2 * matmul + 100 * 32) + 4 * 2 * 10 * 32
    assert design.parse_count("30M") == 30_000_000 and design.parse_count("1.5k") == 1500
    with pytest.raises(ConfigError, match="--params"):
        design.parse_count("lots")


def test_cli_prints_candidates_and_writes_a_config_that_builds(tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / "t", num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2)
    out = tmp_path / "student.yaml"
    assert main(["design", "--teacher", teacher, "--compression", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "int4 MB" in printed and "* " in printed
    cfg = load_config(out)
    assert cfg.teacher.model == teacher and cfg.student.kind == "llama"
    sizes = yaml.safe_load(out.read_text())["student"]
    first = printed.splitlines()[3].split()
    assert [int(x) for x in first[1:6]] == [sizes[k] for k in ("num_layers", "hidden_size", "num_heads",
                                                               "num_kv_heads", "intermediate_size")]
    assert main(["design", "--teacher", teacher, "--params", "10", "--out", str(out), "--force"]) == 2
    assert "no LLaMA-style student" in capsys.readouterr().err
    assert main(["design", "--teacher", teacher, "--compression", "2", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
