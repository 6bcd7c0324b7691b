"""`kdistill eval` on a run folder: partial reruns keep what they did not measure, --no-heldout reads and
generates nothing, generated held-out data has a seed of its own, and overlap with training is counted."""
import json
from pathlib import Path

import pytest
from helpers import CORPUS, save_tiny_teacher, tiny_llama, tiny_tokenizer

from kdistill.commands.cli import main
from kdistill.config.schema import dump, load_config
from kdistill.evaluation import eval_data, record

TASKS = [str(Path(__file__).parents[1] / "fixtures" / "tasks" / "tiny_mc.jsonl")]

SPEED = {"tokens_per_s": 50.0, "ttft_ms": 9.0, "peak_rss_mb": 400.0, "model_rss_mb": 12.0}
EARLIER = {"time": "2026-01-01T00:00:00+00:00", "command": "kdistill distill --config RUN/config.yaml"}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("KDISTILL_THREADS", "1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalruns")
    save_tiny_teacher(root / "teacher")
    (root / "notes.txt").write_text("\n".join(CORPUS * 3))
    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=1, num_hidden_layers=1).save_pretrained(root / "student")
    tok.save_pretrained(root / "student")
    return root


def make_run(root, tmp_path, overrides: list[str], earlier: dict | None = None):
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    for f in (root / "student").iterdir():
        (run / "student" / f.name).write_bytes(f.read_bytes())
    cfg = load_config(None, [f"teacher.model={root / 'teacher'}", f"output_dir={run}", "train.seq_len=32",
                             "train.batch_size=2", "eval.max_new_tokens=2", *overrides])
    (run / "config.yaml").write_text(dump(cfg))
    if earlier is not None:
        (run / "eval.json").write_text(json.dumps(earlier))
    return run


def distilled() -> dict:
    """An eval.json as `distill` leaves it: speed measured, held-out metrics, each with its `measured` line."""
    return {"teacher": {"parameters": 900, "size_on_disk_mb": 1.0, **SPEED},
            "student": {"parameters": 300, "size_on_disk_mb": 0.5, **{k: v * 2 for k, v in SPEED.items()}},
            "speedup": 2.0, "compression": 3.0, "heldout": {"kl": 9.9, "tokens": 5}, "heldout_start": {"kl": 12.0},
            "heldout_cache": {"kl": 1.0}, "teacher_source": {"kind": "model"},
            "measured": {g: EARLIER for g in ("size", "speed", "heldout", "heldout_cache")}}


def test_partial_reruns_keep_every_earlier_field(root, tmp_path, capsys):
    run = make_run(root, tmp_path, [f"data.path={root / 'notes.txt'}"], distilled())
    assert main(["eval", "--run", str(run), "--no-speed", "--no-heldout", "--tasks", TASKS[0]]) == 0
    out = capsys.readouterr().out
    first = json.loads((run / "eval.json").read_text())
    for side in ("teacher", "student"):
        assert {k: first[side][k] for k in SPEED} == {k: distilled()[side][k] for k in SPEED}
    assert first["teacher"]["tokens_per_s"] == 50.0 and first["student"]["tokens_per_s"] == 100.0
    assert first["speedup"] == 2.0  # recomputed from the speeds that are still there
    assert first["heldout"] == {"kl": 9.9, "tokens": 5} and first["measured"]["heldout"] == EARLIER
    assert first["heldout_start"] == {"kl": 12.0} and first["teacher_source"] == {"kind": "model"}
    assert first["measured"]["speed"] == EARLIER and "KL(teacher||student)" not in out
    bench = first["benchmarks"]["tiny_mc"]
    assert bench["measured"]["command"] == f"kdistill eval --run {run} --tasks {TASKS[0]} --no-speed --no-heldout"
    assert first["measured"]["size"]["command"].startswith("kdistill eval --run")  # sizes cost nothing: remeasured
    assert first["student"]["parameters"] != 300 and first["compression"] == pytest.approx(
        first["teacher"]["parameters"] / first["student"]["parameters"])

    assert main(["eval", "--run", str(run), "--no-speed", "--batches", "1", "--max-new-tokens", "2"]) == 0
    second = json.loads((run / "eval.json").read_text())
    assert second["heldout"]["tokens"] > 5 and second["heldout"]["kl"] != 9.9
    assert second["measured"]["heldout"]["command"] == f"kdistill eval --run {run} --batches 1 --max-new-tokens 2 --no-speed"
    assert second["heldout_cache"] == {"kl": 1.0} and second["measured"]["heldout_cache"] == EARLIER
    assert second["benchmarks"]["tiny_mc"] == bench and second["teacher"]["tokens_per_s"] == 50.0
    assert second["heldout_data"]["kind"] == "run split" and second["heldout_data"]["overlap"]["checked"]
    assert set(second["measured"]["heldout"]) >= {"time", "command", "student", "teacher", "device", "teacher_dtype"}


def test_a_new_speed_measurement_replaces_the_whole_speed_group():
    old = distilled()
    new = record.stamp({"teacher": {"parameters": 900, "error": "out of memory"}, "student": {"parameters": 300}},
                       {"command": "kdistill eval"})
    merged = record.merge(old, new)
    assert merged["teacher"] == {"parameters": 900, "error": "out of memory"}  # no stale tokens/s beside the error
    assert "speedup" not in merged and merged["compression"] == 3.0
    assert merged["measured"]["speed"] == {"command": "kdistill eval"} and merged["heldout"] == old["heldout"]
    legacy = {k: v for k, v in old.items() if k != "measured"}  # an eval.json from before `measured` lines
    merged = record.merge(legacy, new, "2026-01-01T00:00:00+00:00")
    assert merged["measured"]["heldout"] == {"time": "2026-01-01T00:00:00+00:00", "command": (
        "not recorded (eval.json written before kdistill kept how each number was measured)")}
    assert merged["measured"]["speed"] == {"command": "kdistill eval"}


def test_an_unreadable_eval_json_is_kept_aside(tmp_path, capsys):
    from kdistill.run.evaluate import write_result

    path = tmp_path / "eval.json"
    path.write_text('{"heldout": {"kl": 1.0}, "cut sho')
    written = write_result(path, {"student": {"parameters": 3}})
    assert (tmp_path / "eval.json.unreadable").read_text().startswith('{"heldout"')
    assert json.loads(path.read_text()) == written and written["student"] == {"parameters": 3}
    assert "kept as" in capsys.readouterr().out


def test_no_heldout_reads_and_generates_nothing(root, tmp_path, monkeypatch, capsys):
    import kdistill.data.load

    def refuse(*a, **k):
        raise AssertionError("--no-heldout must not read or generate held-out data")

    monkeypatch.setattr(kdistill.data.load, "load_examples", refuse)
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "e.json"
    assert main(["eval", "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--no-heldout",
                 "--no-speed", "--tasks", TASKS[0], "--max-new-tokens", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "heldout" not in result and "exposure" not in result and "heldout_data" not in result
    assert result["benchmarks"]["tiny_mc"]["n"] == 4 and not (tmp_path / "cache" / "generated").exists()
    assert "note: overlap" not in capsys.readouterr().out


def test_generated_heldout_data_never_uses_the_training_seed(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    gen = ["data.generate.num_samples=4", "data.generate.max_new_tokens=6", "data.generate.batch_size=4",
           "data.generate.seed=7", "data.generate.filter.enabled=false"]
    run = make_run(root, tmp_path, gen)
    assert main(["eval", "--student", str(run / "student"), "--teacher", str(root / "teacher"), "--no-speed",
                 "--batches", "1", "--max-new-tokens", "2", "--seq-len", "32", "--out", str(tmp_path / "e.json")]) == 0
    settings = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "generated").glob("*/settings.json")]
    assert [s["seed"] for s in settings] == [7 + eval_data.SEED_OFFSET] and settings[0]["max_new_tokens"] == 6
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["heldout_data"]["kind"] == "generated" and result["heldout_data"]["seed"] == 7 + 1_000_003
    # the run's own training data was never generated, so it is not there to compare with (and is not made)
    assert result["heldout_data"]["overlap"]["checked"] is False
    assert "overlap with the training data not checked" in capsys.readouterr().out
    assert len(settings) == 1


def test_overlap_with_the_training_data_is_counted_and_warned(root, tmp_path, capsys):
    run = make_run(root, tmp_path, [f"data.path={root / 'notes.txt'}"])
    assert main(["eval", "--student", str(run / "student"), "--teacher", str(root / "teacher"), "--no-speed",
                 "--data", str(root / "notes.txt"), "--batches", "1", "--max-new-tokens", "2",
                 "--out", str(tmp_path / "e.json")]) == 0
    overlap = json.loads((tmp_path / "e.json").read_text())["heldout_data"]["overlap"]
    assert overlap["checked"] and overlap["training"] == str(run.resolve()) and overlap["matches"] > 0
    out = capsys.readouterr().out
    assert f"warning: {overlap['matches']} of " in out and "share their first 150 characters" in out
    assert f"--run {run.resolve()}" in out


def test_overlap_compares_the_first_150_scored_characters():
    tok = tiny_tokenizer()

    def example(text, prompt=""):
        p, t = tok.encode(prompt), tok.encode(text)
        return {"ids": p + t, "mask": [False] * len(p) + [True] * len(t)}

    long = "Once upon a time there was a little fox who lived in the forest. " * 3
    train = [example(long), example("The king said that the castle would open its gates at dawn.")]
    evals = [example(long + " And then"), example("The  king said that\nthe castle would open its gates at dawn."),
             example("Bread needs flour, water, salt and yeast."), example(long, prompt="To bake bread")]
    assert eval_data.overlap(evals, train, tok) == 3  # a longer copy, a respaced copy, the same text after a prompt
    assert eval_data.scored_text(evals[3], tok) == " ".join(long.split())[:150]


def test_eval_measures_speed_after_letting_go_of_both_models(root, tmp_path, monkeypatch):
    """The speed subprocesses run while this process holds no model (their memory would add to it)."""
    import gc

    from transformers import PreTrainedModel

    import kdistill.run.evaluate as command

    seen = {}

    def fake_speeds(result, folders, *args):
        gc.collect()
        seen["live models"] = sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())
        seen["folders"] = {name: Path(folder).name for name, folder in folders.items()}
        for name in folders:
            result[name].update(SPEED)
        return result

    monkeypatch.setattr(command, "measure_speeds", fake_speeds)
    out = tmp_path / "e.json"
    assert main(["eval", "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--no-heldout",
                 "--max-new-tokens", "2", "--out", str(out)]) == 0
    assert seen == {"live models": 0, "folders": {"teacher": "teacher", "student": "student"}}
    assert json.loads(out.read_text())["student"]["tokens_per_s"] == SPEED["tokens_per_s"]
