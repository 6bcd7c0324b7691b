"""Reading records: every file type, and a clear error for each bad input."""
import json
import re

import pytest

from kdistill.base.errors import DataError
from kdistill.data.files import read_records


def test_reads_every_format(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\nsecond line\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    (tmp_path / "c.json").write_text(json.dumps({"data": [{"text": "x"}, {"text": "y"}]}))
    (tmp_path / "d.csv").write_text("text,label\nhello,1\nworld,2\n")
    assert read_records(str(tmp_path / "a.txt")) == [{"text": "hello world\nsecond line\n"}]
    assert [r["text"] for r in read_records(str(tmp_path / "b.jsonl"))] == ["one", "two"]
    assert [r["text"] for r in read_records(str(tmp_path / "c.json"))] == ["x", "y"]
    assert [r["text"] for r in read_records(str(tmp_path / "d.csv"))] == ["hello", "world"]
    assert len(read_records(str(tmp_path / "b.jsonl"), max_records=1)) == 1


def test_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["a b", "c d"]}).to_parquet(str(tmp_path / "p.parquet"))
    assert [r["text"] for r in read_records(str(tmp_path / "p.parquet"))] == ["a b", "c d"]


def test_empty_file_is_refused(tmp_path):
    for name, content in [("e.txt", "  \n"), ("e.jsonl", "\n\n")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=f"{name}.*no records"):
            read_records(str(tmp_path / name))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: not valid JSON"):
        read_records(str(f))
    f.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: expected a JSON object"):
        read_records(str(f))


def test_missing_file_and_offline_hub_name(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="neither a local file nor a dataset"):
        read_records("nobody/no-such-dataset-kdistill")


def _render_error(path, **kw) -> str:
    """The DataError message that reading and rendering `path` gives."""
    from helpers import tiny_tokenizer

    from kdistill.data.render import render

    with pytest.raises(DataError) as caught:
        render(read_records(str(path)), tiny_tokenizer(), seq_len=32, source=str(path), **kw)
    return str(caught.value)


def test_columnar_json_is_read_as_records(tmp_path):
    f = tmp_path / "cols.json"
    f.write_text(json.dumps({"text": ["a b", "c d"]}))
    assert read_records(str(f)) == [{"text": "a b"}, {"text": "c d"}]
    f.write_text(json.dumps({"instruction": ["Name a fruit.", "Name a tree."], "response": ["Apple.", "Oak."]}))
    assert read_records(str(f)) == [{"instruction": "Name a fruit.", "response": "Apple."},
                                    {"instruction": "Name a tree.", "response": "Oak."}]


def test_columnar_json_of_unequal_lengths_names_the_fields(tmp_path):
    f = tmp_path / "cols.json"
    f.write_text(json.dumps({"instruction": ["a", "b", "c"], "response": ["x", "y"]}))
    with pytest.raises(DataError, match=r"cols\.json: columnar JSON .*'instruction' has 3, 'response' has 2"):
        read_records(str(f))


def test_json_with_several_lists_of_records_is_refused(tmp_path):
    f = tmp_path / "splits.json"
    f.write_text(json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]}))
    with pytest.raises(DataError, match=r"splits\.json: holds several lists of records \('train', 'test'\)"):
        read_records(str(f))


@pytest.mark.parametrize("name, content, where", [
    ("t.jsonl", '{"text": "fine"}\n\n{"text": [1, 2]}\n', r"t\.jsonl, line 3: field 'text' holds a list \(\[1, 2\]\)"),
    ("t.jsonl", '{"text": {"en": "hi"}}\n', r"t\.jsonl, line 1: field 'text' holds a JSON object"),
    ("t.json", json.dumps([{"text": "fine"}, {"text": 5}]), r"t\.json, record 2: field 'text' holds a number \(5\)"),
    ("t.json", json.dumps({"text": ["fine", True]}), r"t\.json, record 2: field 'text' holds a true/false"),
])
def test_a_text_field_that_is_not_a_string_is_refused(tmp_path, name, content, where):
    (tmp_path / name).write_text(content)
    message = _render_error(tmp_path / name)
    assert re.search(where, message) and "not a string" in message, message


def test_a_parquet_list_column_is_refused_naming_the_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": [["a"], ["b", "c"]]}).to_parquet(str(tmp_path / "p.parquet"))
    assert re.search(r"p\.parquet, row 1: field 'text' holds a list", _render_error(tmp_path / "p.parquet"))


def test_a_custom_text_field_must_be_a_string_too(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"body": 3.5}\n')
    assert re.search(r"line 1: field 'body' holds a number", _render_error(tmp_path / "t.jsonl", text_field="body"))


@pytest.mark.parametrize("record, field", [
    ({"instruction": ["Name a fruit."], "response": "Apple."}, "instruction"),                 # Dolly
    ({"instruction": "Name a fruit.", "context": {"k": "v"}, "response": "Apple."}, "context"),
    ({"instruction": "Name a fruit.", "input": "", "output": 42}, "output"),                  # Alpaca
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                   {"role": "assistant", "content": "Hello."}]}, r"messages\[0\]\.content"),  # chat
])
def test_an_instruction_field_that_is_not_a_string_is_refused(tmp_path, record, field):
    (tmp_path / "i.jsonl").write_text(json.dumps({"instruction": "ok", "response": "ok"}) + "\n" + json.dumps(record))
    message = _render_error(tmp_path / "i.jsonl")
    assert re.search(rf"i\.jsonl, line 2: field '{field}' holds a", message), message


def test_chat_turns_that_are_not_objects_are_refused(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": ["hi", "hello"]}) + "\n")
    assert re.search(r"c\.jsonl, line 1: messages\[0\] must be", _render_error(tmp_path / "c.jsonl"))


LATIN1 = "caf\u00e9 cr\u00e8me".encode("latin-1")


@pytest.mark.parametrize("name, data, line", [
    ("notes.txt", b"first line\nsecond line\n" + LATIN1 + b"\n", 3),
    ("notes.jsonl", b'{"text": "ok"}\n{"text": "' + LATIN1 + b'"}\n', 2),
    ("notes.json", b'[{"text": "ok"},\n {"text": "' + LATIN1 + b'"}]', 2),
    ("notes.csv", b"text\nok\n" + LATIN1 + b"\n", 3),
])
def test_text_that_is_not_utf8_is_refused_with_byte_and_line(tmp_path, name, data, line):
    (tmp_path / name).write_bytes(data)
    at = data.index(b"\xe9")
    with pytest.raises(DataError, match=rf"{name}: not UTF-8 at byte {at} \(line {line}\): .*iconv -f latin1"):
        read_records(str(tmp_path / name))


def test_a_utf8_bom_is_allowed(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "b.txt").write_bytes(bom + "caf\u00e9".encode())
    (tmp_path / "b.jsonl").write_bytes(bom + b'{"text": "one"}\n')
    (tmp_path / "b.json").write_bytes(bom + b'{"text": ["one"]}')
    assert read_records(str(tmp_path / "b.txt")) == [{"text": "caf\u00e9"}]
    assert read_records(str(tmp_path / "b.jsonl")) == [{"text": "one"}]
    assert read_records(str(tmp_path / "b.json")) == [{"text": "one"}]
    (tmp_path / "bad.txt").write_bytes(bom + b"ok\n\xff")
    with pytest.raises(DataError, match=r"not UTF-8 at byte 6 \(line 2\)"):
        read_records(str(tmp_path / "bad.txt"))


def test_windows_line_ends_read_as_before(tmp_path):
    (tmp_path / "w.txt").write_bytes(b"one\r\ntwo\r\n")
    (tmp_path / "w.jsonl").write_bytes(b'{"text": "one"}\r\n{"text": "two"}\r\n')
    (tmp_path / "w.csv").write_bytes(b'text\r\n"a\r\nb"\r\nc\r\n')
    assert read_records(str(tmp_path / "w.txt")) == [{"text": "one\ntwo\n"}]
    assert read_records(str(tmp_path / "w.jsonl")) == [{"text": "one"}, {"text": "two"}]
    assert [r["text"] for r in read_records(str(tmp_path / "w.csv"))] == ["a\r\nb", "c"]


@pytest.mark.parametrize("name", ["x.txt", "x.jsonl", "x.json", "x.csv"])
def test_binary_files_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)))
    with pytest.raises(DataError, match=rf"{name}: is a binary file \(a NUL byte at byte 5\)"):
        read_records(str(tmp_path / name))
    (tmp_path / name).write_bytes("text\nhello\n".encode("utf-16"))
    with pytest.raises(DataError, match=rf"{name}: is UTF-16 text.*iconv -f utf-16 -t utf-8"):
        read_records(str(tmp_path / name))


@pytest.mark.parametrize("name, content", [
    ("e.json", ""), ("e.json", "{}"), ("e.json", '{"text": []}'), ("e.csv", ""), ("e.csv", "text\n"),
    ("e.parquet", ""),
])
def test_files_without_records_are_refused(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=rf"{name}: holds no records"):
        read_records(str(tmp_path / name))


def test_an_empty_file_in_a_folder_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n")
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(DataError, match=r"b\.jsonl: holds no records \(the file is empty\)"):
        read_records(str(tmp_path))


def test_malformed_csv_names_the_line(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text('text,label\n"a, quoted",1\n\nb,2,extra\n')
    with pytest.raises(DataError, match=r"t\.csv, line 4: 3 fields but the header has 2 \(text, label\)"):
        read_records(str(f))
    f.write_text("text,text\na,b\n")
    with pytest.raises(DataError, match=r"t\.csv, line 1: the header repeats column 'text'"):
        read_records(str(f))
