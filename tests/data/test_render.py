"""Rendering records into examples: packing, instruction masks, chat template, field errors."""
import pytest
from helpers import tiny_tokenizer

from kdistill.base.errors import DataError
from kdistill.data.render import detect_format, pack_text, render, render_instruction


def test_pack_text_strides_without_losing_targets():
    tok = tiny_tokenizer()
    text = "Once upon a time there was a little fox. " * 20
    examples = pack_text([{"text": text}], tok, seq_len=16)
    stream = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    targets = [t for e in examples for t in e["ids"][1:]]
    assert targets == stream[1:]
    assert all(len(e["ids"]) <= 17 and all(e["mask"]) for e in examples)


def test_missing_text_field_names_existing_fields():
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match=r"record 1: no 'text'.*\['body_text', 'id'\]"):
        pack_text([{"body_text": "x", "id": 1}], tok, 16, text_field="text", source="f.jsonl")
    with pytest.raises(DataError, match=r"data.text_field"):
        pack_text([{"foo": "x"}], tok, 16)
    assert pack_text([{"body_text": "hello there"}], tok, 16, text_field="body_text")


@pytest.mark.parametrize("record", [
    {"instruction": "Name a fruit.", "context": "", "response": "An apple."},                  # Dolly
    {"instruction": "Name a fruit.", "input": "Be brief.", "output": "An apple."},            # Alpaca
    {"messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}]},
])
def test_instruction_records_mask_only_the_response(record):
    tok = tiny_tokenizer()
    assert detect_format([record]) == "instruction"
    ids, n_prompt = render_instruction(record, tok, "r")
    prompt_text = tok.decode(ids[:n_prompt])
    assert "<|im_start|>assistant" in prompt_text and "Name a fruit." in prompt_text
    assert tok.decode(ids[n_prompt:]).startswith("An apple.")
    [example] = render([record], tok, seq_len=128)
    counted = [i for i, m in zip(example["ids"], example["mask"]) if m]
    assert tok.decode(counted).startswith("An apple.")
    assert not any(example["mask"][:n_prompt])


def test_prompt_longer_than_seq_len_is_refused():
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match="raise train.seq_len"):
        render([{"instruction": "word " * 50, "response": "ok"}], tok, seq_len=8)


def test_check_fields_refuses_what_render_would_without_a_tokenizer():
    from kdistill.data.render import check_fields

    check_fields([{"text": "fine"}, {"text": None}])
    check_fields([{"instruction": "Name a fruit.", "input": "", "output": "An apple."}])
    with pytest.raises(DataError, match=r"f\.jsonl, record 2: field 'text' holds a list"):
        check_fields([{"text": "fine"}, {"text": ["a"]}], source="f.jsonl")
    with pytest.raises(DataError, match=r"record 1: field 'body' holds a number"):
        check_fields([{"body": 1}], text_field="body")
    with pytest.raises(DataError, match=r"field 'response' holds a JSON object"):
        check_fields([{"instruction": "q", "response": {"a": 1}}])
    with pytest.raises(DataError, match=r"'messages' must end with an assistant turn"):
        check_fields([{"messages": [{"role": "user", "content": "hi"}]}])
