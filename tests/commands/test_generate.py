"""`kdistill generate` on a .gguf file, an int4 export and a plain folder, and `--chat` through the
tokenizer's chat template (tiny student, vocab 320, greedy)."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from kdistill.base.errors import ModelError
from kdistill.commands.cli import main
from kdistill.export import quantize_model, save_quantized, write_gguf
from kdistill.export.complete import complete, load_for_generation, prompt_ids
from tests.export.export_fixtures import save_student
from tests.helpers import tiny_tokenizer

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return save_student(tmp_path_factory.mktemp("gen") / "tiny")


@pytest.fixture(scope="module")
def student(student_dir):
    return AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()


def test_gguf_file_generates_what_the_float_student_does(student, student_dir, tmp_path, capsys):
    """F32 GGUF: the same model through transformers' GGUF reader, tokenizer read from the file."""
    path = write_gguf(student, tiny_tokenizer(), tmp_path / "s-f32.gguf", "F32")
    model, tok = load_for_generation(str(path))
    expected = complete(student, tiny_tokenizer(), PROMPT, max_new_tokens=12)
    assert complete(model, tok, PROMPT, max_new_tokens=12) == expected and len(expected) > len(PROMPT)
    assert main(["generate", "--model", str(path), "--max-new-tokens", "12", PROMPT]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()


def test_quantised_folder_generates_what_the_quantised_model_does(student, tmp_path, capsys):
    quant = quantize_model(student, "int4")
    out = save_quantized(quant, tmp_path / "s-int4", tiny_tokenizer())
    expected = complete(quant, tiny_tokenizer(), PROMPT, max_new_tokens=12)
    assert main(["generate", "--model", str(out), "--max-new-tokens", "12", PROMPT]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()


def test_chat_uses_the_template(student, student_dir, capsys):
    tok = tiny_tokenizer()
    enc = prompt_ids(tok, "What is the capital of France?", chat=True)
    text = tok.decode(enc["input_ids"][0])
    assert text == tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert main(["generate", "--model", str(student_dir), "--chat", "--max-new-tokens", "4", "Hi"]) == 0
    assert capsys.readouterr().out.startswith("Hi")


def test_chat_without_a_template_is_a_clear_error(student_dir, tmp_path, capsys):
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ModelError, match="--chat: the tokenizer .* has no chat template"):
        prompt_ids(tok, "Hi", chat=True)
    folder = save_student(tmp_path / "base")
    (folder / "chat_template.jinja").unlink()
    assert main(["generate", "--model", str(folder), "--chat", "Hi"]) == 2
    assert "no chat template" in capsys.readouterr().err
    with pytest.raises(ModelError, match="no chat template"):  # refused before the model loads
        load_for_generation(str(folder), chat=True)


def test_missing_model_is_named(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nothing.gguf"), "Hi"]) == 2
    assert "nothing.gguf" in capsys.readouterr().err
