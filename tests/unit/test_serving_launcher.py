"""Launcher pieces: tritonserver discovery and environment, settings, shm cleanup, ports."""

from __future__ import annotations

import json
import os
import socket
import sys
import sysconfig
from pathlib import Path

import pytest

from llm_core.serving import launcher, tritonserver_env
from llm_core.serving.settings import load_settings, model_parameters


def test_wheel_install_and_environment(monkeypatch):
    monkeypatch.setattr(tritonserver_env.shutil, "which", lambda name: None)
    install = tritonserver_env.find_tritonserver()
    assert install.from_wheel and install.binary.is_file()
    stub = install.backend_dir / "python" / "triton_python_backend_stub"
    assert stub.exists() and (install.backend_dir / "python" / "libtriton_python.so").exists()
    assert f"/{sys.version_info.major}.{sys.version_info.minor}/" in str(stub.resolve())
    env = tritonserver_env.server_env(install, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == sysconfig.get_config_var("LIBDIR") and libs[1].endswith("nvidia_pytriton.libs")
    assert libs[-1] == "/opt/x"
    again = tritonserver_env.find_tritonserver()  # idempotent
    assert again.backend_dir == install.backend_dir


def test_tritonserver_on_path_wins(monkeypatch, tmp_path):
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setattr(tritonserver_env.shutil, "which", lambda name: str(binary))
    install = tritonserver_env.find_tritonserver()
    assert install.binary == binary and install.backend_dir is None and not install.from_wheel


def test_triton_command_and_model_env(tiny_llama):
    args = launcher.parse_args(
        [
            "--model-dir",
            str(tiny_llama),
            "--http-port",
            "1",
            "--grpc-port",
            "2",
            "--metrics-port",
            "3",
            "--tp",
            "2",
            "--device",
            "cuda",
            "--",
            "--log-info=true",
        ]
    )
    cmd = launcher.triton_command(Path("/bin/tritonserver"), Path("/b"), args, "pfx_")
    assert "--http-port=1" in cmd and "--backend-directory=/b" in cmd and cmd[-1] == "--log-info=true"
    assert "--backend-config=python,shm-region-prefix-name=pfx_" in cmd
    env = launcher.model_env(args)
    assert env == {"LLM_MODEL_DIR": str(tiny_llama), "LLM_TP": "2", "LLM_DEVICE": "cuda"}
    embedding = launcher.parse_args(["--model-dir", str(tiny_llama), "--embedding"])
    assert launcher.model_env(embedding) == {"LLM_MODEL_DIR": str(tiny_llama), "LLM_EMBEDDING": "1"}
    assert "--load-model=*" in launcher.triton_command(Path("/t"), None, embedding, "p_")
    only = launcher.parse_args(["--model-dir", str(tiny_llama), "--embedding-only"])
    assert launcher.model_env(only) == {"LLM_MODEL_DIR": str(tiny_llama), "LLM_EMBEDDING": "1"}
    cmd = launcher.triton_command(Path("/t"), None, only, "p_")
    assert [a for a in cmd if a.startswith("--load-model")] == ["--load-model=embedding", "--load-model=engine_health"]


def test_remove_shm_only_touches_the_prefix():
    prefix = f"llmcore_unit_{os.getpid()}_"
    mine, other = Path(f"/dev/shm/{prefix}a"), Path(f"/dev/shm/llmcore_unit_other_{os.getpid()}")
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    try:
        assert launcher.remove_shm(prefix) == [mine.name]
        assert not mine.exists() and other.exists()
    finally:
        other.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)


def test_busy_ports_are_refused():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert launcher.busy_ports([port]) == [port]
        assert launcher.main(["--http-port", str(port)]) == 2


def test_settings_env_overrides_parameters(tiny_llama, tiny_qwen2):
    config = json.dumps(
        {
            "parameters": {
                "model_dir": {"string_value": str(tiny_llama)},
                "tp": {"string_value": "1"},
                "max_total_tokens": {"string_value": ""},
                "device": {"string_value": "${device}"},
            }
        }
    )
    params = model_parameters(config)
    settings = load_settings(params, env={})
    assert settings.model_dir == tiny_llama and settings.engine.max_total_tokens is None
    assert settings.engine.device == "cpu"
    settings = load_settings(
        params, env={"LLM_MODEL_DIR": str(tiny_qwen2), "LLM_TP": "2", "LLM_MAX_TOTAL_TOKENS": "4096"}
    )
    assert settings.model_dir == tiny_qwen2 and settings.engine.tp == 2 and settings.engine.max_total_tokens == 4096
    switches = load_settings(params, env={"LLM_GEMV": "0", "LLM_CPU_THREADS": "3"}).engine
    assert not switches.gemv and switches.cpu_threads == 3 and settings.engine.gemv
    with pytest.raises(ValueError, match="LLM_TP"):
        load_settings(params, env={"LLM_TP": "two"})
    assert settings.engine.cuda_graph and settings.engine.symm_mem_all_reduce
    assert load_settings(params, env={"LLM_MAX_PREFILL_TOKENS": "512"}).engine.max_prefill_tokens == 512
    off = load_settings(params, env={"LLM_CUDA_GRAPH": "0", "LLM_SYMM_MEM_ALL_REDUCE": "false"}).engine
    assert not off.cuda_graph and not off.symm_mem_all_reduce and settings.engine.prefix_cache
    assert not load_settings(params, env={"LLM_PREFIX_CACHE": "0"}).engine.prefix_cache
    with pytest.raises(ValueError, match="LLM_CUDA_GRAPH"):
        load_settings(params, env={"LLM_CUDA_GRAPH": "maybe"})
    with pytest.raises(FileNotFoundError):
        load_settings({}, env={"LLM_MODEL_DIR": "/nonexistent/model"})


def test_watchdog_exits_when_the_parent_dies(tmp_path):
    """A grandchild running exit_with_parent() ends soon after its parent is killed."""
    import subprocess
    import time

    script = tmp_path / "child.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "if sys.argv[1] == 'parent':\n"
        "    p = subprocess.Popen([sys.executable, __file__, 'child'])\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n"
        "else:\n"
        "    from llm_core.serving.watchdog import exit_with_parent\n"
        "    exit_with_parent(poll_s=0.05)\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script), "parent"], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the child imports and starts watching
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie has exited
    except (FileNotFoundError, ProcessLookupError):
        return True
