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
    with pytest.raises(DataError, match=r"f.jsonl: data.text_field='text' names no field of any record; the records "
                                        r"have fields \['body_text', 'id'\]"):
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
    with pytest.raises(DataError, match=r"of 1 records, 1 whose prompt fills train.seq_len=8 \(raise it"):
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


NO_TEXT_FIELD = "'text' or 'content' or 'document' or 'body' or 'story'"  # the fields auto looks for


def test_records_without_text_are_counted_printed_and_reported(tmp_path, capsys):
    from kdistill.data.files import read_records

    f = tmp_path / "notes.jsonl"
    f.write_text('{"text": "Once upon a time."}\n{"text": null}\n{"title": "no text here"}\n{"text": "  "}\n'
                 '{"text": "A fox ran to the river."}\n')
    examples = render(read_records(str(f)), tiny_tokenizer(), seq_len=16, source=str(f))
    assert examples and examples.report["records"] == 5 and examples.report["dropped"] == {"no_text": 3}
    assert examples.report["dropped_records"]["no_text"] == [
        f"{f}, line 2: 'text' is null", f"{f}, line 3: no {NO_TEXT_FIELD} field", f"{f}, line 4: 'text' is blank"]
    said = capsys.readouterr().out
    assert f"data: 3 of 5 records of {f} dropped: 3 without text" in said and "line 2: 'text' is null" in said


def test_instruction_records_without_a_response_are_counted():
    records = [{"instruction": "Name a fruit.", "response": "An apple."},
               {"instruction": "Name a tree.", "response": None}, {"instruction": "Name a bird."},
               {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}]
    examples = render(records, tiny_tokenizer(), seq_len=64, source="i.jsonl")
    assert len(examples) == 1 and examples.report["dropped"] == {"no_text": 3}
    assert examples.report["dropped_records"]["no_text"] == [
        "i.jsonl, record 2: 'response' is null",
        "i.jsonl, record 3: no 'response' or 'output' or 'completion' or 'answer' field",
        "i.jsonl, record 4: the assistant's turn is blank"]


def test_records_whose_prompt_fills_seq_len_are_counted_and_printed(capsys):
    records = [{"instruction": "Say ok.", "response": "ok"}, {"instruction": "word " * 50, "response": "ok"}]
    examples = render(records, tiny_tokenizer(), seq_len=24, source="i.jsonl")
    assert len(examples) == 1 and examples.report["dropped"] == {"prompt_over_seq_len": 1}
    assert examples.report["dropped_records"]["prompt_over_seq_len"][0].startswith("i.jsonl, record 2: ")
    assert "1 of 2 records of i.jsonl dropped: 1 whose prompt fills train.seq_len=24" in capsys.readouterr().out


def test_nothing_left_names_every_reason():
    records = [{"instruction": "word " * 50, "response": "ok"}, {"instruction": "q", "response": None}]
    with pytest.raises(DataError, match=r"i.jsonl: no example to train on; of 2 records, 1 without text .*\[i.jsonl, "
                                        r"record 2: 'response' is null\]; 1 whose prompt fills train.seq_len=8"):
        render(records, tiny_tokenizer(), seq_len=8, source="i.jsonl")
    with pytest.raises(DataError, match=r"of 2 records, 2 without text"):
        render([{"text": None}, {"text": ""}], tiny_tokenizer(), seq_len=8, source="t.jsonl")


@pytest.mark.parametrize("records", [
    [{"instruction": "Name a fruit.", "response": "An apple."}, {"instruction": "Name a tree.", "response": "Oak."}],
    [{"text": "Once upon a time.", "id": 1}, {"text": "A fox.", "id": 2}],
])
def test_a_text_field_that_names_no_field_of_any_record_is_an_error(records):
    from kdistill.data.render import check_fields

    fields = sorted(records[0])
    named = rf"d.jsonl: data.text_field='respones' names no field of any record; the records have fields {fields!r}"
    with pytest.raises(DataError, match=named.replace("[", r"\[").replace("]", r"\]")):
        render(records, tiny_tokenizer(), 32, text_field="respones", source="d.jsonl")
    with pytest.raises(DataError, match="data.text_field='respones' names no field"):
        check_fields(records, text_field="respones", source="d.jsonl")  # before any model loads
    assert render(records, tiny_tokenizer(), 32, source="d.jsonl")


def test_check_fields_lets_records_without_text_through_for_render_to_count():
    from kdistill.data.render import check_fields

    check_fields([{"text": "fine"}, {"title": "no text"}, {"text": None}])
    check_fields([{"instruction": "q", "response": "a"}, {"instruction": "q", "response": None}, {"instruction": "q"}])
