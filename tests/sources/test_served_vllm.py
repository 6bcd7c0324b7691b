"""A teacher on a real vLLM server (vLLM's CPU build in .venv-vllm, `make teacher-server-env`): the served
signal is the local teacher's top-K, the parity check passes on the served model and refuses another, and
`kdistill distill teacher.server=...` trains against it (off- and on-policy), `kdistill eval --teacher-server`
measures against it, the cache written from it equals the local teacher's, it writes the teacher's data, and
a run whose server is killed stops with its checkpoint. The server starts once for this module (~1-3 min) and
is killed by the last test."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import tiny_tokenizer

from kdistill.base.errors import ConfigError
from kdistill.data.batches import collate
from kdistill.sources.served import ServedSource
from kdistill.sources.server_client import ServerClient

ROOT = Path(__file__).parents[2]
SERVER_PYTHON = Path(os.environ.get("KDISTILL_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
K = 8
SERVER = {}  # the vLLM process, for the test that kills it (the last one)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(URL, the teacher folder it serves): the embedded teacher, converted once into a folder of this run."""
    if not SERVER_PYTHON.is_file():
        pytest.skip(f"no vLLM environment at {SERVER_PYTHON}: `make teacher-server-env` installs it "
                    "(`make test` does so first)")
    from kdistill.models.teacher import local_folder

    before = os.environ.get("KDISTILL_CACHE")
    os.environ["KDISTILL_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # the converted teacher: this run's own
    try:
        folder = local_folder("default")
    finally:
        if before is None:
            os.environ.pop("KDISTILL_CACHE")
        else:
            os.environ["KDISTILL_CACHE"] = before
    port, log = _free_port(), tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(SERVER_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
                                 "--served-model-name", "teacher", "--max-model-len", "512", "--dtype", "float32",
                                 "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    SERVER["proc"] = proc  # its own process group: vLLM's engine and worker processes go with it
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 900
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode} while starting:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"vLLM did not answer within 900 s:\n{log.read_text()[-3000:]}")
                time.sleep(3)
        yield url, folder
    finally:
        _stop(proc)


def _stop(proc, sig=signal.SIGTERM) -> None:
    """Stop the server and every process it started (engine core, workers, resource tracker)."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what outlived the parent
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def local(served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder = served
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def _source(url, tok, config, model=None):
    return ServedSource(ServerClient(url, "teacher"), K, tok, config, model, "", "default", prefetch=0)


def test_the_served_signal_is_the_local_teachers_top_k(served, local):
    url, _ = served
    model, tok = local
    texts = ["Once upon a time there was a fox who liked to read.", "The capital of France is Paris."]
    examples = [{"ids": tok(t)["input_ids"], "mask": [True] * len(tok(t)["input_ids"])} for t in texts]
    tok.pad_token = tok.pad_token or tok.eos_token
    batch = collate(examples, tok.pad_token_id)
    signal = _source(url, tok, model.config).signal(batch, model.config.vocab_size)
    with torch.no_grad():
        lp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    real = batch["attention_mask"].bool()
    top_lp, top_ids = lp.topk(K, dim=-1)
    torch.testing.assert_close(signal.logprobs[real], top_lp[real], rtol=0, atol=1e-3)
    assert (signal.ids[real][:, 0] == top_ids[real][:, 0]).float().mean() == 1.0  # top-1 everywhere
    served_lp_local = lp[real].gather(-1, signal.ids[real])  # the local teacher's values at the server's ids
    torch.testing.assert_close(served_lp_local, signal.logprobs[real], rtol=0, atol=1e-3)


def test_parity_passes_on_the_served_model_and_refuses_another(served, local):
    url, _ = served
    model, tok = local
    found = _source(url, tok, model.config, model).check_parity(0.01, "cpu")
    assert found["kl"] < 1e-3 and found["top1"] == 1.0
    other = type(model)(model.config).eval()  # the same tokenizer and shapes, other weights
    with pytest.raises(ConfigError, match="is not teacher.model=default: KL.*likely causes: temperature"):
        _source(url, tok, model.config, other).check_parity(0.01, "cpu")
    with pytest.raises(ConfigError, match="tokenizes a probe text differently"):
        _source(url, tiny_tokenizer(), model.config).check_parity(0.01, "cpu")


def _notes(tmp_path) -> Path:
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(f"Note {i}: the fox read {i} books by the river and told the king about them."
                                for i in range(24)))
    return data


def _distill(url, folder, tmp_path, *extra, timeout=900):
    return subprocess.run([sys.executable, "-m", "kdistill", "distill", f"teacher.model={folder}",
                           f"teacher.server={url}", "teacher.server_model=teacher", f"teacher.server_top_k={K}",
                           f"data.path={_notes(tmp_path)}", "train.seq_len=32", "train.batch_size=4",
                           "train.threads=1", "student.init=random", "student.num_layers=1", "eval.max_new_tokens=4",
                           "eval.measure_speed=false", "eval.prompts=[Once]", *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def test_distill_trains_against_the_server_and_eval_measures_against_it(served, tmp_path):
    url, folder = served
    out = tmp_path / "run"
    done = _distill(url, folder, tmp_path, f"output_dir={out}", "train.max_steps=3", "train.eval_every=3",
                    "train.checkpoint_every=3")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "eval_server_kl" in rows[0] and rows[-1]["step"] == 3
    assert rows[-1]["eval_server_kl"] < rows[0]["eval_server_kl"]
    log = (out / "kdistill.log").read_text()
    assert "parity: server" in log and "top-1 100.0%" in log
    assert "heldout_server" in json.loads((out / "eval.json").read_text())

    # `kdistill eval --teacher-server`, with only the tokenizer and config here (a teacher too big to load)
    light = tmp_path / "tokenizer-only"
    light.mkdir()
    for f in Path(folder).iterdir():
        if not f.name.endswith((".safetensors", ".bin", ".gguf")):
            (light / f.name).write_bytes(f.read_bytes())
    measured = subprocess.run([sys.executable, "-m", "kdistill", "eval", "--student", str(out / "student"),
                               "--teacher", str(light), "--teacher-server", url, "--server-model", "teacher",
                               "--data", str(tmp_path / "notes.txt"), "--seq-len", "32", "--no-speed",
                               "--out", str(tmp_path / "eval.json")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert measured.returncode == 0, measured.stderr[-3000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["heldout_server"]["tokens"] > 0 and 0 < result["heldout_server"]["kl"] < 20
    assert "heldout" not in result  # no local weights: nothing is called "against the teacher" but the server


def test_the_cache_written_from_the_server_equals_the_local_teachers(served, tmp_path):
    from kdistill.cache.reader import open_cache
    from kdistill.config.schema import load_config
    from kdistill.run.cache import write_cache

    url, folder = served
    common = [f"teacher.model={folder}", f"data.path={_notes(tmp_path)}", "train.seq_len=32", "train.threads=1",
              f"cache.k={K}", "cache.value_bits=16", "cache.shard_tokens=200"]
    local = write_cache(load_config(None, [*common, f"cache.out={tmp_path / 'local'}"]))
    served_m = write_cache(load_config(None, [*common, f"cache.out={tmp_path / 'served'}", f"teacher.server={url}",
                                              "teacher.server_model=teacher", f"teacher.server_top_k={K}"]))
    assert served_m["teacher"]["weights_sha256"] == local["teacher"]["weights_sha256"]  # parity-checked copy
    assert served_m["teacher"]["load_in"] == "server" and served_m["data"] == local["data"]
    a, b = open_cache(tmp_path / "local").examples, open_cache(tmp_path / "served").examples
    ids_a = torch.cat([torch.as_tensor(e["signal_ids"]) for e in a])
    ids_b = torch.cat([torch.as_tensor(e["signal_ids"]) for e in b])
    lp_a = torch.cat([torch.as_tensor(e["signal_logprobs"]) for e in a])
    lp_b = torch.cat([torch.as_tensor(e["signal_logprobs"]) for e in b])
    assert ids_a.shape == ids_b.shape and ids_a.shape[1] == K
    assert (ids_a[:, 0] == ids_b[:, 0]).all()
    assert (ids_a == ids_b).float().mean() > 0.99  # the rest: adjacent near-ties swapped by fp32 noise
    same = (ids_a == ids_b).all(1)
    torch.testing.assert_close(lp_a[same].exp(), lp_b[same].exp(), rtol=0, atol=1e-3)


def test_the_server_writes_the_teachers_data(served, local, tmp_path, monkeypatch):
    from kdistill.data import teacher_written as tw
    from kdistill.sources.server_writer import ServerWriter

    url, _ = served
    model, tok = local
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path))
    prompts = [tok(t)["input_ids"] for t in ["The river", "Once upon a time", "The king said"]]
    writer = ServerWriter(ServerClient(url, "teacher"), {tok.eos_token_id})
    greedy = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "batch_size": 3, "seed": 0}
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    assert writer.write_batch(prompts, greedy, 0) == tw._generate_batch(model, tok, prompts, greedy, "cpu")
    sampled = {**greedy, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 16}
    twice = [prompts[0], prompts[0]]
    first, again = writer.write_batch(twice, sampled, 7), writer.write_batch(twice, sampled, 7)
    assert first == again and first[0] != first[1]  # seeded per request: reproducible, and samples differ
    records, folder = tw.generate(writer, tok, "served", prompts, sampled, "cpu")
    assert len(records) == 3 and all(r["n_prompt"] == len(p) and len(r["ids"]) > len(p)
                                     for r, p in zip(records, prompts))
    assert (folder / tw.RECORDS).is_file()


def test_on_policy_rollouts_of_the_student_are_scored_by_the_server(served, tmp_path):
    url, folder = served
    out = tmp_path / "run"
    done = _distill(url, folder, tmp_path, f"output_dir={out}", "train.max_steps=2", "train.eval_every=2",
                    "train.checkpoint_every=2", "rollout.source=student", "rollout.lmbda=1",
                    "rollout.max_new_tokens=8", "rollout.prompt_tokens=8")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and any(r.get("rollout_tokens") for r in rows), rows


def test_a_server_killed_mid_run_stops_with_the_last_checkpoint(served, tmp_path):
    """The last test of the module: it kills the server."""
    url, folder = served
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "kdistill", "distill", f"teacher.model={folder}",
                            f"teacher.server={url}", "teacher.server_model=teacher", f"teacher.server_top_k={K}",
                            f"data.path={_notes(tmp_path)}", "train.seq_len=32", "train.batch_size=4",
                            "train.threads=1", "student.init=random", "student.num_layers=1", "train.max_steps=400",
                            "train.eval_every=1000", "train.checkpoint_every=1000", "teacher.server_retries=1",
                            "teacher.server_timeout=10", "eval.measure_speed=false", f"output_dir={out}"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not ((out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert run.poll() is None and time.time() < deadline, run.communicate()[1][-3000:]
        time.sleep(1)
    _stop(SERVER["proc"], signal.SIGKILL)  # killed, as a crash would: no goodbye to the client
    _, err = run.communicate(timeout=300)
    assert run.returncode == 2, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert f"teacher server {url}/completions did not answer" in last_line and "--resume" in last_line
    step = max(json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines())
    assert (out / "checkpoints" / f"step-{step:06d}").is_dir() and f"step-{step:06d}" in last_line
