"""The EMA self-teacher: matches a hand-written EMA, shadows adapters only for a LoRA student, and a
resumed run continues with exactly the same shadow."""
import torch
from helpers import tiny_llama
from safetensors.torch import load_file

from kdistill.config.schema import load_config
from kdistill.run.distill import distill
from kdistill.sources.ema import EmaSource

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "student.layer_selection=first_last",
        "train.lr=0.01", "train.warmup_steps=0", "train.checkpoint_every=1"]


def test_the_shadow_is_a_hand_written_ema():
    student = tiny_llama(64)
    ema = EmaSource("ema", update_rate=0.25, every=2)
    ema.attach_student(student)
    expected = {n: p.detach().clone() for n, p in student.named_parameters()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.after_step(student, step)
        if step % 2 == 0:
            for n, p in student.named_parameters():
                expected[n] = 0.75 * expected[n] + 0.25 * p.detach()
    for n, shadow in ema.state_dict().items():
        torch.testing.assert_close(shadow, expected[n], rtol=1e-6, atol=1e-7)
    assert dict(ema.model.named_parameters())["model.embed_tokens.weight"].data_ptr() != \
        student.model.embed_tokens.weight.data_ptr()


def test_a_lora_student_shadows_its_adapters_and_shares_the_base():
    from peft import LoraConfig, get_peft_model

    student = get_peft_model(tiny_llama(64), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    ema = EmaSource("ema", update_rate=0.5, every=1)
    ema.attach_student(student)
    assert set(ema.state_dict()) == {n for n, p in student.named_parameters() if p.requires_grad}
    base = dict(ema.model.named_parameters())
    for n, p in student.named_parameters():
        if not p.requires_grad:
            assert base[n].data_ptr() == p.data_ptr(), n  # frozen weights are not copied


def test_a_resumed_run_has_the_same_shadow(teacher_dir, tmp_path):
    import shutil

    sources = f"teacher.sources=[{{name: t, model: {teacher_dir}, weight: 0.5}}, " \
              "{name: ema, kind: ema, update_rate: 0.3, weight: 0.5}]"
    cfg = load_config(None, [f"teacher.model={teacher_dir}", sources, *FAST, f"output_dir={tmp_path / 'whole'}",
                             "train.max_steps=4", "train.keep_checkpoints=4"])
    distill(cfg)
    split = shutil.copytree(tmp_path / "whole", tmp_path / "split")
    for step in (3, 4):  # as if killed right after the checkpoint of step 2
        shutil.rmtree(split / "checkpoints" / f"step-{step:06d}")
    shutil.rmtree(split / "student")
    (split / "eval.json").unlink()
    cfg.output_dir = str(split)
    distill(cfg, resume=True)
    for name in ("source.safetensors", "model.safetensors"):
        a = load_file(str(tmp_path / "whole" / "checkpoints" / "step-000004" / name))
        b = load_file(str(split / "checkpoints" / "step-000004" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    shadow = load_file(str(split / "checkpoints" / "step-000004" / "source.safetensors"))
    student = load_file(str(split / "checkpoints" / "step-000004" / "model.safetensors"))
    assert any(not torch.equal(shadow[f"ema/{k}"], student[k]) for k in student if f"ema/{k}" in shadow)
