"""Which of this repository's files one served request runs through, in order, in every process.

Drives one streamed text request through the serving steps as tritonserver would (preprocess (a text
request never calls the visual model) -> llm step's LlmService and the engine's workers -> postprocess),
without tritonserver: the model.py
adapters only hand pb_utils tensors to these functions, so they are listed, not run. A profile hook
(sys.setprofile in every thread, inherited by the engine's spawned workers through a sitecustomize
on PYTHONPATH) records each call into a file of `llm_core/` after the request starts; start-up and
imports are left out. Prints, per process, the files in the order the request first enters them,
the total, and with `--cycles` a cycle of files that call back into a file that called them in the
request's file-level call graph (none means the request only ever goes down from a file and back; a loop
calling the same files again from the same caller is not a cycle).

  python scripts/request_path.py                  (the default tiny model, CPU)
  python scripts/request_path.py --model-dir DIR --max-tokens 8
"""

from __future__ import annotations

import argparse
import graphlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run by tritonserver around the steps below (pb_utils tensors in and out), so not run here.
ADAPTERS = [f"model_repository/{m}/1/model.py" for m in ("preprocess", "llm", "postprocess")]
ADAPTERS += ["llm_core/serving/triton_bridge.py"]

# Loaded by every Python process started with PYTHONPATH=<dir> (this one's workers included): records
# (time, thread, file) of each call into the repository's llm_core/ once REQUEST_PATH_START exists.
HOOK = r"""
import atexit, json, os, sys, threading, time
_out, _root = os.environ["REQUEST_PATH_OUT"], os.environ["REQUEST_PATH_ROOT"] + "/llm_core/"
_start_file = os.path.join(_out, "start")
_events, _started, _checked, _done = [], [False], [0.0], [False]

def _dump():
    with open(os.path.join(_out, f"{os.getpid()}.json"), "w") as f:
        json.dump({"events": _events}, f)

def _profile(frame, event, arg):
    if event != "call":
        return
    name = frame.f_code.co_filename
    if _done[0] or not name.startswith(_root):
        return
    now = time.monotonic()
    if not _started[0]:  # a stat per call until then: none of the request's calls is missed
        if not os.path.exists(_start_file):
            return
        _started[0] = True
        _checked[0] = now
    if now - _checked[0] > 0.05:  # the request is over once the start file is gone: dump now (workers
        _checked[0] = now  # end with os._exit, which runs no atexit handler)
        if not os.path.exists(_start_file):
            _done[0] = True
            sys.setprofile(None)
            threading.setprofile(None)
            _dump()
            return
    stack, f = [], frame.f_back  # the repository's files below this call, innermost first
    while f is not None:
        caller = f.f_code.co_filename
        if caller.startswith(_root) and (not stack or stack[-1] != caller[len(_root) - 9:]):
            stack.append(caller[len(_root) - 9:])
        f = f.f_back
    _events.append((now, threading.get_ident(), name[len(_root) - 9:], stack))

sys.setprofile(_profile)
threading.setprofile(_profile)
atexit.register(lambda: _done[0] or _dump())
"""


def drive(model_dir: str | None, max_tokens: int, out: Path) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from llm_core.config import EngineConfig
    from llm_core.engine import Engine
    from llm_core.sampling_params import SamplingParams
    from llm_core.serving.llm_io import requested_outputs, response_arrays
    from llm_core.serving.llm_service import LlmService
    from llm_core.serving.metrics import EngineMetrics, RecordingSink
    from llm_core.serving.model_dir import resolve_model_dir
    from llm_core.serving.postprocess import parse_postprocess_input, postprocess_outputs
    from llm_core.serving.preprocess import Preprocessor, with_image_embeds

    class Transport:  # what the llm adapter's _Transport does, minus pb_utils
        def __init__(self) -> None:
            self.responses: list = []

        def send(self, handle, response, final: bool) -> None:
            if response is not None:
                self.responses.append(dict(response_arrays(response, requested_outputs(["text", "output_ids"]))))
                postprocess_outputs(parse_postprocess_input(self._postprocess_inputs(response)))
            if final:
                handle["done"] = True

        def _postprocess_inputs(self, r) -> dict:
            names = ["output_ids", "text", "finish_reason", "num_input_tokens", "response_index", "request_id"]
            names += ["postprocess_options", "output_log_probs", "cum_log_probs"]
            return dict(response_arrays(r, requested_outputs(names)))

        def send_error(self, handle, message: str, retryable: bool = False) -> None:
            raise RuntimeError(message)

        def is_cancelled(self, handle) -> bool:
            return False

    # The engine's workers start isolated (`python -I`, as under a Triton stub), which ignores PYTHONPATH:
    # start them through a wrapper that drops -I, so that they load the hook too.
    import multiprocessing

    wrapper = out / "python-hooked"
    drop_isolated = 'for a; do shift; [ "$a" = -I ] || set -- "$@" "$a"; done'
    wrapper.write_text(f'#!/bin/sh\n{drop_isolated}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    multiprocessing.set_executable(str(wrapper))
    path = resolve_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    preprocess = Preprocessor(path, tokenizer)
    transport = Transport()
    with Engine(EngineConfig(model_dir=str(path), max_total_tokens=4096)) as engine:
        service = LlmService(engine, transport, EngineMetrics(RecordingSink()))
        service.start()
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2))  # the workers' first step (warm), not counted
        (out / "start").touch()
        inputs = {
            "text_input": np.array([[b"Tell me a story"]], np.object_),
            "max_tokens": np.array([[max_tokens]], np.int32),
            "stream": np.array([[True]], np.bool_),
        }
        llm_inputs = with_image_embeds(preprocess.run(inputs, {}), _no_images)
        handle: dict = {}
        service.submit(handle, llm_inputs)
        deadline = time.monotonic() + 120
        while not handle.get("done") and time.monotonic() < deadline:
            time.sleep(0.01)
        (out / "start").unlink()
        time.sleep(0.6)  # every process notices (the idle rank-0 loop polls every 0.5 s) and dumps
        service.stop()
    if not handle.get("done"):
        raise SystemExit("the request did not finish in 120 s")
    print(f"{len(transport.responses)} responses")


def _no_images(pixel_values, image_md5):
    raise AssertionError("a text request called the visual model")


def _cycle(calls: list[tuple[str, list[str]]]) -> list[str]:
    """A cycle in the file-level call graph (files calling back into a file that called them, directly or
    through others), or [] when there is none. Calling the same file again from the same caller (a loop over
    layers or steps) is not one."""
    callees: dict[str, set[str]] = {}
    for name, callers in calls:
        chain = [name, *callers] if not callers or callers[0] != name else callers
        for callee, caller in itertools.pairwise(chain):
            if callee != caller:
                callees.setdefault(caller, set()).add(callee)
    try:
        graphlib.TopologicalSorter(callees).prepare()
    except graphlib.CycleError as exc:
        return exc.args[1]
    return []


def report(out: Path, show_cycles: bool) -> None:
    per_process = {}
    dumps = sorted(out.glob("*.json"))
    for dump in dumps:
        data = json.loads(dump.read_text())
        if data["events"]:
            per_process[dump.stem] = data
    print(f"{len(dumps)} processes recorded, {len(per_process)} of them during the request")
    everything: list[str] = []
    for pid, data in per_process.items():
        events = sorted(data["events"])
        order = list(dict.fromkeys(name for _, _, name, _ in events))
        role = "engine worker" if "llm_core/worker/scheduler_loop.py" in order else "the serving steps and the Engine"
        print(f"== process {pid} ({role}): {len(order)} files")
        for name in order:
            print(f"   {name}")
        everything += order
        if show_cycles:
            cycle = _cycle([(name, stack) for _, _, name, stack in events])
            print(f"   files that call back into a file that called them: {cycle or 'none'}")
    files = list(dict.fromkeys(everything))
    print(f"{len(files)} files of llm_core/ ({len(everything)} counted per process), plus {len(ADAPTERS)} run by the")
    print(f"adapters, not here: {', '.join(ADAPTERS)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--cycles", action="store_true", help="list the files that call back into a file that called them")
    args = ap.parse_args()
    if os.environ.get("REQUEST_PATH_OUT"):  # the hooked run
        drive(args.model_dir, args.max_tokens, Path(os.environ["REQUEST_PATH_OUT"]))
        return
    with tempfile.TemporaryDirectory() as tmp:  # run this script again with the hook installed
        out, hook_dir = Path(tmp) / "out", Path(tmp) / "hook"
        out.mkdir()
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(HOOK)
        env = {**os.environ, "REQUEST_PATH_OUT": str(out), "REQUEST_PATH_ROOT": str(ROOT)}
        env["PYTHONPATH"] = os.pathsep.join([str(hook_dir), str(ROOT), env.get("PYTHONPATH", "")])
        code = os.spawnve(os.P_WAIT, sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
        if code:
            raise SystemExit(code)
        report(out, args.cycles)


if __name__ == "__main__":
    main()
