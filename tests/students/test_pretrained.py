"""A pretrained student with LoRA: only adapters train, the result is an adapter and a merged model."""
import importlib
import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from kdistill.base.errors import ConfigError, ModelError
from kdistill.config.schema import load_config
from tests.students.settings import FAST

ROOT = Path(__file__).parents[2]
DOLLY = str(ROOT / "data" / "dolly_sample.jsonl")


def cfg(teacher_dir, out, *extra):
    return load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "student.kind=pretrained",
                              "student.model=teacher", "student.lora_rank=4", f"data.path={DOLLY}",
                              "train.seq_len=96", *extra])


@pytest.fixture(scope="module")
def lora_run(teacher_dir, tmp_path_factory):
    """One LoRA run on the Dolly sample, recording what the optimizer was given."""
    mp = pytest.MonkeyPatch()
    module = importlib.import_module("kdistill.run.distill")  # the module; `from kdistill import distill` can be the function

    seen = {}
    real_adamw = torch.optim.AdamW

    def recording_adamw(params, **kw):
        seen["params"] = list(params)
        seen["trainable"] = [n for n, p in seen["model"].named_parameters() if p.requires_grad]
        return real_adamw(seen["params"], **kw)

    real_build = module.build_student

    def build(*a, **kw):
        model, report = real_build(*a, **kw)
        seen["model"], seen["report"] = model, report
        return model, report

    mp.setattr(module, "build_student", build)
    mp.setattr(torch.optim, "AdamW", recording_adamw)
    mp.setenv("KDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "kdcache"))
    out = tmp_path_factory.mktemp("lora") / "run"
    result = module.distill(cfg(teacher_dir, out, "train.max_steps=3", "train.lr=1e-2",
                                "student.lora_targets=[q_proj, v_proj]"))
    mp.undo()
    return out, result, seen


def test_only_adapters_are_given_to_the_optimizer(lora_run):
    _, _, seen = lora_run
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    assert len(seen["params"]) == len(seen["trainable"]) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert seen["report"]["trainable_parameters"] == sum(p.numel() for p in seen["params"])


def test_adapter_and_merged_model_are_saved_and_only_adapters_moved(lora_run, teacher_dir):
    out, result, _ = lora_run
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    merged = AutoModelForCausalLM.from_pretrained(out / "student").state_dict()
    base = AutoModelForCausalLM.from_pretrained(teacher_dir).state_dict()
    scale = config["lora_alpha"] / config["r"]
    for name, weight in merged.items():
        if ".q_proj." in name or ".v_proj." in name:
            key = "base_model.model." + name.replace(".weight", "")
            delta = adapter[key + ".lora_B.weight"] @ adapter[key + ".lora_A.weight"] * scale
            assert delta.abs().max() > 0
            torch.testing.assert_close(weight, base[name] + delta)  # base weight itself unchanged
        else:
            torch.testing.assert_close(weight, base[name], rtol=0, atol=0)
    assert result["student_init"]["lora"]["rank"] == 4


def save_model(path, tokenizer, vocab):
    tiny_llama(vocab).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("make, error, message", [
    (lambda p: save_model(p, tiny_tokenizer(300), 400), ModelError, "different tokenizer"),
    (lambda p: save_model(p, tiny_tokenizer(), 100), ModelError, "embedding rows"),
    (lambda p: str(p / "missing"), ModelError, "does not exist"),
])
def test_a_student_that_cannot_share_the_teachers_tokenizer_is_refused(teacher_dir, tmp_path, quick_distill,
                                                                       make, error, message):
    student = make(tmp_path / "s")
    with pytest.raises(error, match=message):
        quick_distill(cfg(teacher_dir, tmp_path / "r", "train.max_steps=1", f"student.model={student}"))


def test_a_run_folder_works_and_bad_targets_name_the_key(teacher_dir, tmp_path, quick_distill):
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    save_model(run / "student", tiny_tokenizer(), len(tiny_tokenizer()) + 7)  # padded rows are fine
    result = quick_distill(cfg(teacher_dir, tmp_path / "r", "train.max_steps=1", f"student.model={run}",
                               "student.lora_rank=0"))
    assert result["student_init"]["trainable_parameters"] == result["student_init"]["parameters"]
    with pytest.raises(ConfigError, match=r"student.lora_targets: \['qkv'\].*q_proj"):
        quick_distill(cfg(teacher_dir, tmp_path / "r2", "train.max_steps=1", "student.lora_targets=[qkv]"))


def test_a_lora_run_resumes_its_adapter(teacher_dir, tmp_path, monkeypatch):
    """Redo the last steps from a checkpoint: the adapter ends where the uninterrupted run ended."""
    import shutil

    from kdistill.run.distill import distill

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "kdcache"))
    out = tmp_path / "run"
    extra = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.lr=1e-2"]
    distill(cfg(teacher_dir, out, *extra))
    first = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    shutil.rmtree(out / "checkpoints" / "step-000004")
    distill(cfg(teacher_dir, out, *extra), resume=True)
    again = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert first.keys() == again.keys()
    for k in first:
        torch.testing.assert_close(first[k], again[k], rtol=0, atol=1e-6)
