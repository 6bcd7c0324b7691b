"""A teacher on a real vLLM server (vLLM's CPU build in .venv-vllm, `make teacher-server-env`): the served
signal is the local teacher's top-K, the parity check passes on the served model and refuses another, and
`kdistill distill teacher.server=...` trains against it. The server starts once for this module (~1-3 min)."""
import json
import os
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
                                stdout=out, stderr=subprocess.STDOUT, env=env)
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
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def test_distill_trains_against_the_server(served, tmp_path):
    url, folder = served
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(f"Note {i}: the fox read {i} books by the river and told the king about them."
                                for i in range(24)))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kdistill", "distill", f"teacher.model={folder}",
                           f"teacher.server={url}", "teacher.server_model=teacher", f"teacher.server_top_k={K}",
                           f"data.path={data}", f"output_dir={out}", "train.seq_len=32", "train.batch_size=4",
                           "train.max_steps=3", "train.eval_every=3", "train.checkpoint_every=3", "train.threads=1",
                           "student.init=random", "student.num_layers=1", "eval.max_new_tokens=4",
                           "eval.measure_speed=false", "eval.prompts=[Once]"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "eval_server_kl" in rows[0] and rows[-1]["step"] == 3
    assert rows[-1]["eval_server_kl"] < rows[0]["eval_server_kl"]
    log = (out / "kdistill.log").read_text()
    assert "parity: server" in log and "top-1 100.0%" in log
    assert "heldout_server" in json.loads((out / "eval.json").read_text())
