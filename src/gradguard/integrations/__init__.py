"""Integrations of gradguard with application frameworks.

Each framework lives in its own subpackage (``gradguard.integrations.langchain``, ...)
and is imported only when asked for: ``import gradguard`` never imports a framework.
Install the matching extra, e.g. ``pip install 'gradguard[langchain]'``.
"""
