"""The launcher's OpenAI child: its command line, and the flags that turn it off or configure it."""

from __future__ import annotations

import sys

from llm_core.serving import launcher
from llm_core.serving.openai.server import parse_args as openai_args


def test_openai_api_is_on_by_default_and_talks_to_our_grpc_port():
    args = launcher.parse_args(["--grpc-port", "9101"])
    assert args.openai_port == 9000
    cmd = launcher.openai_command(args, "/models/m")
    assert cmd[:3] == [sys.executable, "-m", "llm_core.serving.openai"]
    parsed = openai_args(cmd[3:])
    assert (parsed.triton_url, parsed.model_dir, parsed.port, parsed.chat_template) == (
        "127.0.0.1:9101", "/models/m", 9000, None,
    )  # fmt: skip


def test_chat_template_is_passed_on_and_port_zero_turns_it_off():
    args = launcher.parse_args(["--openai-port", "0", "--chat-template", "/t.jinja"])
    assert args.openai_port == 0
    assert openai_args(launcher.openai_command(args, "/m")[3:]).chat_template == "/t.jinja"


def test_launcher_reports_an_openai_server_that_did_not_start(monkeypatch, capsys):
    # tritonserver ready, the OpenAI child gone (e.g. fastapi missing): no "ready OpenAI" line, a clear one instead.
    from types import SimpleNamespace

    from llm_core.serving import launcher

    calls = []
    monkeypatch.setattr(launcher, "wait_ready", lambda url, proc, timeout: calls.append(url) or "v2" in url)
    args = SimpleNamespace(http_port=1, grpc_port=2, metrics_port=3, openai_port=9, host="h", ready_timeout=1)
    dead = SimpleNamespace(poll=lambda: 1, returncode=1)
    launcher._announce(args, SimpleNamespace(poll=lambda: None), dead)
    out = capsys.readouterr().out
    assert "ready  HTTP" in out and "ready  OpenAI" not in out
    assert "OpenAI API on port 9 exited with 1" in out and calls[-1].endswith(":9/health")


def test_launcher_names_the_openai_packages_it_lacks(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "fastapi" else real(name))
    assert launcher.missing_api_packages() == ["fastapi"]
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert launcher.missing_api_packages() == []  # the test environment has the api extra
