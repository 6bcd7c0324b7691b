"""Any causal LM as the teacher: sizes from any config, LLaMA-family layers copied exactly (Qwen2's
biases included), other families give their embeddings only and say so, without calibration passes."""
from types import SimpleNamespace

import pytest
import torch
from helpers import TEACHER_ARCHS, save_tiny_teacher, tiny_teacher, tiny_tokenizer
from transformers import Gemma3Config, GPT2Config

from kdistill.config.schema import load_config
from kdistill.students import build_student
from kdistill.students.init import _only_layers
from kdistill.students.llama import build_llama, llama_blocks_missing, student_config, teacher_sizes
from kdistill.students.prune import prune_into

V = len(tiny_tokenizer())
LLAMA_FAMILY = ("llama", "qwen2", "mistral")
OTHERS = ("gpt2", "gemma3_text", "phi")
SIZES = {  # what each tiny teacher's config resolves to
    "llama": (2, 32, 4, 2, 64), "qwen2": (2, 32, 4, 2, 64), "mistral": (2, 32, 4, 2, 64),
    "gpt2": (2, 32, 4, 4, 128),  # n_inner unset: 4 x n_embd; no KV heads: one per head
    "gemma3_text": (2, 32, 4, 2, 64), "phi": (2, 32, 4, 4, 64),
}


def batch(b=2, t=9):
    g = torch.Generator().manual_seed(0)
    am = torch.ones(b, t, dtype=torch.long)
    am[1, :3] = 0  # left padding
    return {"input_ids": torch.randint(3, V, (b, t), generator=g), "attention_mask": am, "mask": am.bool()}


def logits(model, b):
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def build(teacher, *overrides, calib=None):
    cfg = load_config(None, list(overrides))
    return build_student(cfg, teacher, V, calib if calib is not None else batch(), tiny_tokenizer())


def forbid_forward(teacher):
    """Make any forward pass of `teacher` fail: a non-LLaMA teacher must not run calibration passes."""
    def refuse(*_):
        raise AssertionError("the teacher ran a forward pass")

    return teacher.register_forward_pre_hook(refuse)


@pytest.mark.parametrize("arch", TEACHER_ARCHS)
def test_sizes_and_student_config_come_from_any_config(arch):
    config = tiny_teacher(arch, V).config
    keys = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size")
    assert tuple(teacher_sizes(config)[k] for k in keys) == SIZES[arch]
    student = student_config(teacher_sizes(config), config, V)
    assert (student.bos_token_id, student.eos_token_id) == (1, 2) and student.max_position_embeddings == 128
    assert student.pad_token_id == (None if arch == "gpt2" else 2)
    assert (llama_blocks_missing(config) is None) == (arch in LLAMA_FAMILY)


def test_sizes_from_gpt2_n_inner_a_multimodal_config_and_heads_that_do_not_divide():
    sizes = teacher_sizes(GPT2Config(n_embd=48, n_layer=3, n_head=6, n_inner=100))
    assert sizes == {"num_layers": 3, "hidden_size": 48, "num_heads": 6, "num_kv_heads": 6, "intermediate_size": 100}
    assert student_config(sizes, GPT2Config(layer_norm_epsilon=1e-3), 50257).rms_norm_eps == 1e-3
    text = dict(hidden_size=48, num_attention_heads=3, num_key_value_heads=1, head_dim=32, intermediate_size=80,
                num_hidden_layers=5)
    multimodal = Gemma3Config(text_config=text)
    sizes = teacher_sizes(multimodal)
    assert sizes == {"num_layers": 5, "hidden_size": 48, "num_heads": 3, "num_kv_heads": 1, "intermediate_size": 80}
    rope = student_config(sizes, multimodal, 64).rope_parameters
    assert rope["rope_type"] == "default" and rope["rope_theta"] == 1_000_000.0  # the global layers' base
    assert "no LLaMA-compatible blocks" in llama_blocks_missing(multimodal)
    remote = SimpleNamespace(model_type="custom", hidden_size=40, num_attention_heads=3, num_key_value_heads=3,
                             num_hidden_layers=2)  # remote code: 3 heads in a width of 40, no FFN size
    assert teacher_sizes(remote) == {"num_layers": 2, "hidden_size": 40, "num_heads": 2, "num_kv_heads": 2,
                                     "intermediate_size": 160}


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
def test_full_copy_reproduces_the_teacher_exactly(arch):
    teacher = tiny_teacher(arch, V, num_hidden_layers=3)
    student, report = build(teacher, "student.num_layers=3", "student.layer_selection=even")
    assert report["layers"] == [0, 1, 2] and report["embeddings"] == "copied" and report["final_norm"] == "copied"
    torch.testing.assert_close(logits(student.eval(), batch()), logits(teacher, batch()), rtol=0, atol=0)
    attention = student.model.layers[0].self_attn
    if arch == "qwen2":  # q/k/v biases copied, the o_proj bias only the student has is zero
        assert student.config.attention_bias and not attention.o_proj.bias.any()
        torch.testing.assert_close(attention.q_proj.bias, teacher.model.layers[0].self_attn.q_proj.bias)
    else:
        assert attention.q_proj.bias is None


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
def test_dropped_layer_student_is_the_teacher_without_that_layer(arch):
    teacher = tiny_teacher(arch, V, num_hidden_layers=3)
    student, report = build(teacher, "student.num_layers=2", "student.repair_steps=0",
                            "student.span_fit_steps=0")  # the copy itself
    assert report["layer_selection"] == "importance" and len(report["layers"]) == 2
    with _only_layers(teacher, report["layers"]):
        expected = logits(teacher, batch())
    torch.testing.assert_close(logits(student.eval(), batch()), expected, rtol=0, atol=0)
    assert len(teacher.model.layers) == 3


def test_qwen2_width_pruning_keeps_everything_exactly_and_slices_biases():
    teacher = tiny_teacher("qwen2", V)
    full = build_llama(teacher_sizes(teacher.config), teacher.config, V)
    prune_into(full, teacher, [0, 1], batch())
    torch.testing.assert_close(logits(full.eval(), batch()), logits(teacher, batch()), rtol=0, atol=0)
    student, report = build(teacher, "student.hidden_size=16", "student.num_heads=2", "student.num_kv_heads=1",
                            "student.intermediate_size=32", "student.num_layers=1")
    assert report["attention"] == "pruned (head importance)"
    s, t = student.model.layers[0].self_attn, teacher.model.layers[report["layers"][0]].self_attn
    kept = [g for g in range(2) if torch.equal(s.k_proj.bias, t.k_proj.bias[8 * g:8 * g + 8])]
    assert len(kept) == 1 and torch.equal(s.v_proj.bias, t.v_proj.bias[8 * kept[0]:8 * kept[0] + 8])
    assert not s.o_proj.bias.any()


@pytest.mark.parametrize("arch", OTHERS)
def test_other_families_give_their_embeddings_and_say_so(arch):
    teacher = tiny_teacher(arch, V)
    handle = forbid_forward(teacher)
    student, report = build(teacher, "student.num_layers=3", calib={})  # even deeper than the teacher
    why = f"random: teacher architecture {arch} has no LLaMA-compatible blocks"
    assert report["layers"] == why and report["embeddings"] == "copied" and "layer_selection" not in report
    torch.testing.assert_close(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    narrow, report = build(teacher, "student.hidden_size=16", "student.num_heads=2", "student.num_kv_heads=1",
                           "student.intermediate_size=32", "student.num_layers=1", calib={})
    assert report["embeddings"] == "projected (SVD)" and report["layers"] == why
    assert narrow.get_input_embeddings().weight.shape == (V, 16)
    handle.remove()
    assert logits(narrow.eval(), batch()).shape == (2, 9, V)


@pytest.mark.parametrize("arch", TEACHER_ARCHS)
def test_build_student_runs_for_every_family(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(save_tiny_teacher(tmp_path / arch, arch=arch)).eval()
    assert teacher.config.model_type == arch
    for init in ("teacher", "random"):
        student, report = build(teacher, f"student.init={init}")
        assert {"kind", "parameters", "layers", "embeddings"} <= report.keys()
        assert report["kind"] == "llama" and report["teacher_architecture"] == arch
        assert torch.isfinite(logits(student.eval(), batch())).all()


def test_a_mistral_sliding_window_is_reported_as_dropped():
    teacher = tiny_teacher("mistral", V, sliding_window=4)
    _, report = build(teacher, "student.layer_selection=even")
    assert report["attention_window"] == "full context (the teacher's sliding window of 4 tokens is not kept)"
