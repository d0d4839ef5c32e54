"""Serving gradguard to other processes: an OpenAI-compatible chat server whose answers carry their scores,
a side-car ``/v1/score`` endpoint for answers generated elsewhere (vLLM, TGI, Ollama), and the wire format
the clients read back.

Importing this package imports no web framework: :mod:`gradguard.serving.wire` is framework-free, and
the app (:mod:`gradguard.serving.app`, FastAPI) needs ``pip install 'gradguard[serve]'``.
"""
