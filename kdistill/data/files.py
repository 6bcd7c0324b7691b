"""Read records from local .txt, .jsonl, .json, .csv and .parquet files, or a hub dataset by name.

Every record is a dict; the records read from files are `Record`s, dicts that also carry `origin`
("notes.jsonl, line 7"), so a later error about a field can name the file and the line. A .txt file
gives one record {"text": whole file}, so plain text is packed across line breaks. JSON may be a list
of objects, one object, an object wrapping one list of objects ({"data": [...]}), or columnar
({"text": ["a", "b"]}: equal-length lists, one record per position). CSV cells are strings.

Text is decoded from bytes as strict UTF-8 (a BOM allowed): another encoding, a binary file or an empty
file is refused with the file's name (and the byte and line where decoding failed), never read as
U+FFFD noise.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

from kdistill.base.errors import DataError

SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv", ".parquet")
BINARY_PEEK = 8192  # a NUL byte in the first 8 KB means binary, as git and grep decide
OTHER_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class Record(dict):
    """A record (a plain dict to every reader) that remembers where it came from, for error messages."""

    def __init__(self, fields: dict, origin: str):
        super().__init__(fields)
        self.origin = origin


def read_records(spec: str, split: str = "train", max_records: int | None = None) -> list[dict]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"data.path: folder {spec} has no {'/'.join(SUFFIXES)} files")
        records = [r for f in files for r in _read_file(f)]
    elif path.is_file():
        records = _read_file(path)
    elif path.suffix in SUFFIXES or spec.startswith((".", "/", "~")):
        raise DataError(f"data.path: file {spec} does not exist")
    else:
        records = _read_hub(spec, split)
    if not records:
        raise DataError(f"data.path: {spec} holds no records (empty file?); give a file with text in it")
    return records[:max_records] if max_records else records


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    readers = {".txt": _read_plain, ".md": _read_plain, ".jsonl": _read_jsonl, ".json": _read_json,
               ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"data.path: {path} has an unknown suffix; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: holds no records (the file is empty); give a file with text in it")
    records = readers[suffix](path)
    if not records:
        raise DataError(f"{path}: holds no records (nothing but blank space or empty lists); "
                        "give a file with text in it")
    return records


def read_text(path: Path) -> str:
    """The file decoded as strict UTF-8 (a leading BOM dropped); DataError for binary or other encodings."""
    data = path.read_bytes()
    for bom, encoding in OTHER_BOMS:
        if data.startswith(bom):
            raise DataError(f"{path}: is {encoding.upper()} text, not UTF-8: convert it with "
                            f"`iconv -f {encoding} -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`")
    nul = data.find(b"\0", 0, BINARY_PEEK)
    if nul >= 0:
        raise DataError(f"{path}: is a binary file (a NUL byte at byte {nul}), not text; "
                        f"give a UTF-8 text file ({', '.join(SUFFIXES)})")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data.count(b"\n", 0, at) + 1
        raise DataError(f"{path}: not UTF-8 at byte {at} (line {line}): if it is Latin-1 text, convert it with "
                        f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`; "
                        "if it is binary, give a text file") from None


def _read_plain(path: Path) -> list[dict]:
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open() reads
    return [Record({"text": text}, str(path))] if text.strip() else []


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(read_text(path).split("\n"), 1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno}); "
                            "each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object like {{\"text\": ...}}, "
                            f"got {type(record).__name__}")
        records.append(Record(record, f"{path}, line {number}"))
    return records


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        data = _unwrap(path, data)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of JSON objects, one object, or an object of equal-length "
                        f"lists; got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}, record {i + 1}: expected a JSON object like {{\"text\": ...}}, "
                            f"got {type(record).__name__}")
    return [Record(r, f"{path}, record {i + 1}") for i, r in enumerate(data)]


def _unwrap(path: Path, data: dict) -> list:
    """An object -> its records: {"data": [{...}]} wraps them, {"text": [...], ...} holds columns."""
    lists = {k: v for k, v in data.items() if isinstance(v, list)}
    of_records = [k for k, v in lists.items() if v and all(isinstance(r, dict) for r in v)]
    if len(of_records) > 1:
        raise DataError(f"{path}: holds several lists of records ({', '.join(map(repr, of_records))}); "
                        "keep one list per file")
    if of_records and len(lists) == 1:
        return lists[of_records[0]]
    if not data:
        return []
    if len(lists) < len(data):
        return [data]  # one record; a list field in it is refused where it is used as text
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k!r} has {n}" for k, n in lengths.items())
        raise DataError(f"{path}: columnar JSON needs lists of equal length, but {sizes}; "
                        "give every field one value per record")
    return [dict(zip(lists, row)) for row in zip(*lists.values())]


def _read_csv(path: Path) -> list[dict]:
    csv.field_size_limit(2**31 - 1)  # one cell may hold a whole document (the default stops at 128 KB)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    records, header, start = [], None, 1
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                pass  # a blank line
            elif header is None:
                header = row
                _check_header(path, header)
            elif len(row) != len(header):
                raise DataError(f"{path}, line {start}: {len(row)} fields but the header has {len(header)} "
                                f"({', '.join(header)}); quote a field that holds a comma")
            else:
                records.append(Record(dict(zip(header, row)), f"{path}, line {start}"))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}, line {start}: not valid CSV ({e})") from None
    return records


def _check_header(path: Path, header: list[str]) -> None:
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}, line 1: the header repeats column {', '.join(map(repr, repeated))}; "
                        "give each column its own name")


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet files needs `pip install pyarrow`") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
        raise DataError(f"{path}: cannot read as parquet ({type(e).__name__}: {e}); "
                        "give a parquet file or another format") from None
    return [Record(r, f"{path}, row {i + 1}") for i, r in enumerate(rows)]


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        import datasets

        table = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, missing, or not a dataset
        raise DataError(f"data.path: {name!r} is neither a local file nor a dataset that can be loaded "
                        f"({type(e).__name__}: {e}). Offline, give a local file") from None
    return [Record(r, f"{name} ({split}), row {i + 1}") for i, r in enumerate(table)]
