"""`litgpt serve` of an MLA and an MKA checkpoint, answered over HTTP by a real client on this machine: the
answer at temperature 0 equals `litgpt generate`'s greedy continuation of the same prompt.

litgpt 0.5.13's `serve` has no host option and LitServe binds every interface by default; the server here is
litgpt's own `run_server` (what `litgpt serve` runs) in a subprocess whose LitServe binds 127.0.0.1 only. Both sides
run in fp32: on a CPU with native bf16 litgpt's default precision is bf16-true, whose greedy text leaves the fp32
reference's wherever two logits are closer than bf16 resolves (here after 8 tokens, at a top-2 margin of 0.01)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("litserve")
requests = pytest.importorskip("requests")
from tests.evaluate.checkpoints import save_checkpoint  # noqa: E402
from tests.evaluate.reference import greedy_litgpt_generate  # noqa: E402
from tests.helpers import preset_config  # noqa: E402

PROMPT, MAX_NEW_TOKENS = "Once upon a time", 12
SERVER = """
import sys, litserve
from litgpt.deploy.serve import run_server
run = litserve.LitServer.run
litserve.LitServer.run = lambda self, *args, **kwargs: run(self, *args, **{**kwargs, "host": "127.0.0.1"})
run_server(sys.argv[1], precision="32-true", temperature=0.0, max_new_tokens=int(sys.argv[3]), accelerator="cpu",
           devices=1, port=int(sys.argv[2]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (LitServe's worker processes too), SIGKILL after 30 s."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    time.sleep(1)  # the group's other processes exit on the same signal
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["pythia-14m-mla", "pythia-14m-mka"])
def test_serve_answers_over_http_with_generates_greedy_text(preset, tokenizer_dir, subprocess_env, tmp_path):
    checkpoint = save_checkpoint(tmp_path / preset, preset_config(preset), tokenizer_dir)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(checkpoint), str(port), str(MAX_NEW_TOKENS)], cwd=tmp_path,
        env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: LitServe's workers and uvicorn stop with it
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the server exited {server.returncode}:\n{server.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        answer = requests.post(f"http://127.0.0.1:{port}/predict", json={"prompt": PROMPT}, timeout=120)
    finally:
        stop_process_group(server)
    assert f"Uvicorn running on http://127.0.0.1:{port}" in server.stdout.read()
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == greedy_litgpt_generate(checkpoint, PROMPT, MAX_NEW_TOKENS)
