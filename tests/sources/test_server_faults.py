"""A teacher server's faults: retried with back-off, then one clear error naming the URL; a wrong answer is
never trained on; a run whose server dies stops with a checkpoint and resumes. (The fake server stands in
for faults only; tests/sources/test_served_vllm.py runs the real one.)"""
import json
import socket
import subprocess
import sys

import pytest
import torch
from fake_server import FakeServer
from helpers import tiny_llama, tiny_tokenizer

from kdistill.base.errors import TeacherUnavailable
from kdistill.data.batches import collate
from kdistill.sources.served import ServedSource, row_ids
from kdistill.sources.server_client import ServerClient, ServerError


@pytest.fixture(scope="module")
def model_and_tok():
    tok = tiny_tokenizer()
    return tiny_llama(len(tok)).eval(), tok


def _client(url, retries=2):
    return ServerClient(url, "teacher", retries=retries, backoff=0.01, timeout=1.0)


def _served(server, tok, model, retries=2):
    return ServedSource(_client(server.url, retries), 4, tok, model.config, None, "", "tiny", prefetch=0)


def _batch(tok):
    examples = [{"ids": tok.encode(t), "mask": [True] * len(tok.encode(t))} for t in
                ("Once upon a time there was a fox", "The king said no")]
    return collate(examples, tok.pad_token_id)


def test_the_signal_is_the_servers_top_k(model_and_tok):
    model, tok = model_and_tok
    server = FakeServer(model, tok)
    try:
        batch = _batch(tok)
        signal = _served(server, tok, model).signal(batch, len(tok))
        with torch.no_grad():
            lp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
        top_lp, top_ids = lp.topk(4, dim=-1)
        real = batch["attention_mask"].bool()
        assert torch.equal(signal.ids[real], top_ids[real])
        torch.testing.assert_close(signal.logprobs[real], top_lp[real], rtol=0, atol=1e-5)
        assert torch.isinf(signal.logprobs[~real]).all()
        assert row_ids(batch)[1] == tok.encode("The king said no")
    finally:
        server.close()


@pytest.mark.parametrize("faults", [["503", "503"], ["drop"], ["slow"]], ids=["503 twice", "dropped", "timeout"])
def test_passing_faults_are_retried(model_and_tok, faults):
    model, tok = model_and_tok
    server = FakeServer(model, tok, faults=faults)
    try:
        ids, _ = _client(server.url).prompt_topk(tok.encode("Once upon a time"), 4)
        assert len(ids) == len(tok.encode("Once upon a time")) - 1 and server.requests == len(faults) + 1
    finally:
        server.close()


def test_a_refused_connection_is_one_error_naming_the_url():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerError, match=rf"teacher server http://127.0.0.1:{port}/v1/completions did not answer "
                                          r"after 3 tries .*make teacher-server"):
        _client(f"http://127.0.0.1:{port}/v1").prompt_topk([1, 2, 3], 4)


def test_a_client_error_is_not_retried(model_and_tok):
    model, tok = model_and_tok
    server = FakeServer(model, tok, faults=["400"])
    try:
        with pytest.raises(ServerError, match="answered 400: .*bad request"):
            _client(server.url).prompt_topk([1, 2, 3], 4)
        assert server.requests == 1
    finally:
        server.close()


@pytest.mark.parametrize("fault,message", [
    ("short", "3 log-probabilities at a position where 4 were asked; start the server with --max-logprobs"),
    ("outside", "token id 999999 outside the vocabulary"),
    ("nan", "NaN, infinite or above 0; not trained on"),
    ("length", "prompt positions for a prompt of"),
])
def test_a_wrong_answer_names_the_batch_and_is_never_trained_on(model_and_tok, fault, message):
    model, tok = model_and_tok
    server = FakeServer(model, tok, faults=[fault])
    try:
        with pytest.raises(TeacherUnavailable, match=message) as e:
            _served(server, tok, model).signal(_batch(tok), len(tok))
        assert server.url in str(e.value)
    finally:
        server.close()


def test_the_api_key_is_read_from_the_environment_and_never_written(monkeypatch):
    with pytest.raises(ServerError, match="KD_KEY: that environment variable is not set"):
        ServerClient("http://127.0.0.1:1/v1", api_key_env="KD_KEY")
    monkeypatch.setenv("KD_KEY", "sk-secret")
    assert ServerClient("http://127.0.0.1:1/v1", api_key_env="KD_KEY")._key == "sk-secret"


def _distill(args, cwd):
    return subprocess.run([sys.executable, "-m", "kdistill", "distill", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", "eval.prompts=[Once]", "student.layer_selection=first_last",
        "student.span_fit_steps=0", "student.repair_steps=0", "teacher.server_top_k=4", "teacher.server_retries=1",
        "teacher.server_timeout=5", "teacher.server_api_key_env=KD_TEST_KEY"]


def test_a_server_that_dies_mid_run_stops_with_a_checkpoint_and_resumes(teacher_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    monkeypatch.setenv("KD_TEST_KEY", "sk-never-written")
    out = tmp_path / "run"
    dying = FakeServer(model, tok, dead_after=12)  # parity (4 requests), held-out rows, then a few steps
    try:
        notes = tmp_path / "notes.txt"  # data from a file: the fake server's requests are the signal's only
        notes.write_text("\n\n".join(f"Note {i}: the fox read {i} books by the river." for i in range(24)))
        args = [f"teacher.model={teacher_dir}", f"teacher.server={dying.url}", f"output_dir={out}", *FAST,
                f"data.path={notes}",
                "train.max_steps=6", "train.checkpoint_every=100", "train.eval_every=100"]
        done = _distill(args, tmp_path)
    finally:
        dying.close()
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()[-1]
    assert f"teacher server {dying.url}/completions did not answer" in err and "--resume" in err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in rows)
    assert 0 < last < 6 and f"step-{last:06d}" in err and (out / "checkpoints" / f"step-{last:06d}").is_dir()
    for f in (out / "config.yaml", out / "kdistill.log", *out.rglob("*.json")):
        assert "sk-never-written" not in f.read_text()

    alive = FakeServer(model, tok)
    try:
        args[1] = f"teacher.server={alive.url}"
        again = _distill([*args, "--resume"], tmp_path)
    finally:
        alive.close()
    assert again.returncode == 0, again.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and (out / "student" / "model.safetensors").is_file()
