"""Reading records: every file type, and a clear error for each bad input."""
import json

import pytest

from kdistill.data.files import read_records
from kdistill.errors import DataError


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
