"""Width pruning (Minitron): nothing removed is the teacher exactly; the most active slices are kept."""
import torch
from helpers import tiny_llama

from kdistill.students.llama import build_llama, teacher_sizes
from kdistill.students.prune import activation_importance, keep_heads, prune_into, top_sorted

TEACHER = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
               num_hidden_layers=3)


def batch(vocab=50, b=2, t=9):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    am = torch.ones(b, t, dtype=torch.long)
    am[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": am, "mask": am.bool()}


def pruned(teacher, layers, **sizes):
    full = {**teacher_sizes(teacher.config), "num_layers": len(layers), **sizes}
    student = build_llama(full, teacher.config, teacher.config.vocab_size)
    report = prune_into(student, teacher, layers, batch())
    return student.eval(), report


def test_keeping_everything_reproduces_the_teacher_exactly():
    teacher = tiny_llama(50, **TEACHER)
    student, report = pruned(teacher, [0, 1, 2])
    b = batch()
    with torch.no_grad():
        a = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(s, a, rtol=0, atol=0)
    assert report["attention"].startswith("pruned")


def test_the_most_active_channels_heads_and_hidden_dims_are_kept():
    teacher = tiny_llama(50, **TEACHER)
    with torch.no_grad():
        layer = teacher.model.layers[1]
        layer.mlp.up_proj.weight[[5, 40]] *= 30  # FFN channels 5 and 40 fire hardest
        layer.self_attn.v_proj.weight[8:16] *= 30  # KV group 1 (heads 2, 3) carries the most
        teacher.model.embed_tokens.weight[:, [3, 17]] *= 30  # hidden channels 3 and 17
    imp = activation_importance(teacher, [1], batch())
    assert set(imp["ffn"][0].topk(2).indices.tolist()) == {5, 40}
    assert set(imp["heads"][0].topk(2).indices.tolist()) == {2, 3}
    assert set(imp["hidden"].topk(2).indices.tolist()) == {3, 17}
    student, report = pruned(teacher, [1], hidden_size=16, num_heads=2, num_kv_heads=1, intermediate_size=8)
    s, t = student.model.layers[0], teacher.model.layers[1]
    hidden, ffn = top_sorted(imp["hidden"], 16), top_sorted(imp["ffn"][0], 8)
    assert {3, 17} <= set(hidden.tolist()) and {5, 40} <= set(ffn.tolist())
    torch.testing.assert_close(s.mlp.up_proj.weight, t.mlp.up_proj.weight[ffn][:, hidden])
    torch.testing.assert_close(s.self_attn.k_proj.weight, t.self_attn.k_proj.weight[8:16][:, hidden])
    torch.testing.assert_close(s.self_attn.o_proj.weight, t.self_attn.o_proj.weight[hidden][:, 16:32])
    assert report["ffn"] == "pruned to 8 of 64 channels"
    with torch.no_grad():
        assert student(**{k: batch()[k] for k in ("input_ids", "attention_mask")}).logits.shape == (2, 9, 50)


def test_grouped_query_heads_are_kept_group_by_group():
    scores = torch.tensor([1.0, 9.0, 2.0, 8.0, 0.5, 0.1, 7.0, 6.0, 0.0])  # 9 heads in 3 groups of 3
    heads, groups = keep_heads(scores, n_kv=3, n_heads=9, student_kv=2, student_heads=4)
    assert groups.tolist() == [0, 2] and heads.tolist() == [1, 2, 6, 7]


def test_attention_stays_random_when_head_size_differs():
    teacher = tiny_llama(50, **TEACHER)
    student, report = pruned(teacher, [0], hidden_size=16, num_heads=4, num_kv_heads=2, intermediate_size=32)
    assert report["attention"].startswith("random (student head size 4 differs")
