"""`distill` on instruction records: several records per training row by default (data.pack=auto), said in
the log and in data_report.json, with a record whose prompt fills train.seq_len counted there too."""
import json

from kdistill.config.schema import load_config
from kdistill.run.distill import distill

FAST = ["train.max_steps=2", "train.seq_len=128", "train.batch_size=2", "train.threads=1", "student.num_layers=1",
        "eval.max_new_tokens=2", "eval.max_batches=1", "eval.measure_speed=false", "eval.prompts=[Hi]"]
THINGS = ["fruit", "tree", "bird", "river", "city", "colour", "song", "tool", "game", "planet", "flower", "fish"]


def test_instruction_records_are_packed_and_reported(tmp_path, teacher_dir, capsys):
    data = tmp_path / "dolly.jsonl"
    records = [{"instruction": f"Name a {t}.", "context": "", "response": f"A {t} I like."} for t in THINGS]
    records.append({"instruction": "word " * 150, "context": "", "response": "ok"})
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}", *FAST,
                               f"data.path={data}", "data.heldout_fraction=0.2"]))
    said = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    packing = report["packing"]
    assert report["dropped"] == {"prompt_over_seq_len": 1} and report["records"] == 13
    assert "1 of 13 records of" in said and "1 whose prompt fills train.seq_len=128" in said
    assert packing["packed"] and packing["records"] == report["heldout_split"]["train_examples"] == 10
    assert packing["rows_after"] < packing["rows_before"] == 10 and packing["fill_after"] > packing["fill_before"]
    assert f"data: packed 10 training records into {packing['rows_after']} rows of up to 128 tokens" in said
