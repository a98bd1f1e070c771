"""LlmService (the llm model's logic) against a fake engine and a fake transport."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from llm_core.detokenizer import decode_delta, full_text
from llm_core.engine_workers import EngineUnavailableError
from llm_core.outputs import StreamChunk
from llm_core.sampling_params import SamplingParams
from llm_core.serving.health import HealthWriter, read_json
from llm_core.serving.llm_io import LlmResponse, parse_llm_request, requested_outputs, response_arrays
from llm_core.serving.llm_service import LlmService
from llm_core.serving.metrics import EngineMetrics, RecordingSink
from llm_core.serving.postprocess import chunk_text, parse_postprocess_input
from llm_core.serving.request import InputError


class FakeEngine:
    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer
        self.added: dict[str, tuple] = {}
        self.aborted: list[str] = []
        self.queue = None
        self.slots_used = 0
        self.state, self.state_reason = "ready", ""

    def add_request(self, prompt_ids, params, image_embeds=None, request_id=None, output_queue=None):
        if len(prompt_ids) > 100:
            raise ValueError("prompt has too many tokens")
        if self.state == "down":  # like Engine: bad requests are refused as such first
            raise EngineUnavailableError("engine unavailable (restart failed); retry in a few seconds")
        self.added[request_id] = (prompt_ids, params, image_embeds)
        self.queue = output_queue
        return request_id

    def emit(self, request_id, ids, finish=None, **kw) -> None:
        self.queue.put(StreamChunk(request_id, list(ids), finish, time=time.monotonic(), **kw))

    def abort(self, request_id) -> None:
        self.aborted.append(request_id)
        self.emit(request_id, [], "abort")

    def stats(self) -> dict:
        return {
            "slots_used": self.slots_used,
            "slots_total": 100,
            "running": 1,
            "waiting": 0,
            "paused": 0,
            "total_pauses": 0,
            "prompt_tokens_total": 5,
            "generation_tokens_total": 7,
            "restarts": 0,
        }


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple] = []
        self.cancelled: set = set()
        self.retryable: dict = {}
        self.lock = threading.Lock()

    def send(self, handle, response, final):
        with self.lock:
            self.sent.append((handle, response, final))

    def send_error(self, handle, message, retryable=False):
        with self.lock:
            self.sent.append((handle, message, True))
            self.retryable[handle] = retryable

    def is_cancelled(self, handle):
        return handle in self.cancelled

    def of(self, handle):
        with self.lock:
            return [(r, f) for h, r, f in self.sent if h == handle]


def _inputs(ids, stream=True, **sampling) -> dict:
    out = {"input_ids": np.array([ids], np.int32), "stream": np.array([[stream]])}
    if sampling:
        out["sampling_parameters"] = np.array([[json.dumps(sampling).encode()]], np.object_)
    return out


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def setup():
    engine, transport, sink = FakeEngine(), FakeTransport(), RecordingSink()
    service = LlmService(
        engine, transport, EngineMetrics(sink), default_max_tokens=8, cancel_poll_s=0.02, stats_interval_s=0.02
    )
    service.start()
    yield engine, transport, service, sink
    service.stop()


def test_parse_llm_request():
    req = parse_llm_request(
        {
            **_inputs([1, 2, 3], temperature=0),
            "max_tokens": np.array([[5]], np.int32),
            "image_embeds": np.zeros((1, 0, 8), np.float32),
        },
        16,
    )
    assert req.prompt_ids == [1, 2, 3] and req.params.max_tokens == 5 and req.params.greedy
    assert req.image_embeds is None and req.stream
    req = parse_llm_request(
        {"input_ids": np.array([[7]], np.int32), "image_embeds": np.ones((1, 2, 4), np.float32)}, 16
    )
    assert req.image_embeds.shape == (2, 4) and not req.stream and req.params.max_tokens == 16
    with pytest.raises(InputError, match="^input_ids"):
        parse_llm_request({"input_ids": np.zeros((1, 0), np.int32)}, 16)
    assert not req.from_ensemble and req.options == ""


def test_parse_llm_request_from_the_ensemble_takes_preprocess_params_as_they_are():
    params = SamplingParams(max_tokens=3, temperature=0.0, stop=("x",), stop_token_ids=(5, 6), seed=2)
    inputs = {
        "input_ids": np.array([[7, 8]], np.int32),
        "sampling_parameters": np.array([[params.to_json().encode()]], np.object_),
        "postprocess_options": np.array([[b'{"return_finish_reason":true}']], np.object_),
    }
    req = parse_llm_request(inputs, 16)
    assert req.from_ensemble and req.params == params and req.options == '{"return_finish_reason":true}'
    bad = {**inputs, "sampling_parameters": np.array([[b'{"temprature": 1}']], np.object_)}
    with pytest.raises(InputError, match="^sampling_parameters: is not preprocess's canonical JSON"):
        parse_llm_request(bad, 16)


def test_streaming_sends_one_response_per_pass_and_ends_final(setup):
    engine, transport, service, _ = setup
    rid = service.submit("h", _inputs([10, 11, 12]))
    engine.emit(rid, [1])
    wait_until(lambda: len(transport.of("h")) == 1)
    engine.emit(rid, [2])
    engine.emit(rid, [3])
    engine.emit(rid, [4], "length")
    wait_until(lambda: transport.of("h") and transport.of("h")[-1][1])
    sent = transport.of("h")
    ids = [t for r, _ in sent for t in r.output_ids]
    assert ids == [1, 2, 3, 4]
    assert [f for _, f in sent].count(True) == 1 and sent[-1][0].finish_reason == "length"
    assert sent[0][0].context_ids == [10, 11, 12] and sent[0][0].response_index == 0
    assert sent[1][0].context_ids[-1] == 1 and sent[-1][0].response_index == len(sent) - 1
    assert service.num_streams() == 0


def test_coalescing_merges_chunks_queued_together(setup):
    engine, transport, service, _ = setup
    rid = service.submit("h", _inputs([1]))
    with engine.queue.mutex:  # hold the sender back while five steps' chunks arrive
        for t in range(5):
            engine.queue.queue.append(StreamChunk(rid, [t + 2], None, time=time.monotonic()))
        engine.queue.not_empty.notify()
    wait_until(lambda: transport.of("h"))
    assert transport.of("h")[0][0].output_ids == [2, 3, 4, 5, 6]


def test_non_streaming_gets_exactly_one_response(setup):
    engine, transport, service, _ = setup
    rid = service.submit("h", _inputs([5, 6], stream=False))
    for t in (1, 2, 3):
        engine.emit(rid, [t])
    time.sleep(0.1)
    assert transport.of("h") == []
    engine.emit(rid, [4], "stop", text_trim=2)
    wait_until(lambda: transport.of("h"))
    [(response, final)] = transport.of("h")
    assert final and response.output_ids == [1, 2, 3, 4] and response.text_trim == 2
    assert response.finish_reason == "stop" and response.context_ids == [5, 6]


def test_errors_end_the_request(setup):
    engine, transport, service, _ = setup
    service.submit("bad-json", {**_inputs([1]), "sampling_parameters": np.array([[b"{"]], np.object_)})
    service.submit("too-long", _inputs(list(range(200))))
    rid = service.submit("dies", _inputs([1]))
    engine.emit(rid, [3])
    engine.emit(rid, [], "error", error="engine failure: worker died")
    wait_until(lambda: transport.of("dies") and transport.of("dies")[-1][1])
    assert transport.of("bad-json") == [
        ("sampling_parameters: malformed JSON (Expecting property name enclosed in double quotes at position 1)", True)
    ]
    assert transport.of("too-long") == [("prompt has too many tokens", True)]
    assert transport.of("dies")[-1] == ("engine failure: worker died", True)


def test_unavailable_engine_errors_are_retryable(setup):
    engine, transport, service, _ = setup
    rid = service.submit("lost", _inputs([1]))
    engine.emit(rid, [], "error", error="engine unavailable (restart failed); retry later", retryable=True)
    engine.state = "down"
    service.submit("refused", _inputs([1]))
    service.submit("bad", _inputs(list(range(200))))
    wait_until(lambda: len(transport.retryable) == 3)
    assert transport.retryable == {"lost": True, "refused": True, "bad": False}


def test_engine_state_reaches_metrics_and_the_health_file(tmp_path):
    engine, transport, sink = FakeEngine(), FakeTransport(), RecordingSink()
    health = HealthWriter(tmp_path)
    service = LlmService(engine, transport, EngineMetrics(sink), stats_interval_s=0.02, health=health)
    service.start()
    try:
        wait_until(lambda: sink.values.get("llm_engine_ready") == 1.0)
        assert read_json(health.path)["state"] == "ready"
        engine.state, engine.state_reason = "restarting", "a worker process died"
        wait_until(lambda: sink.values.get("llm_engine_ready") == 0.0)
        wait_until(lambda: read_json(health.path)["state"] == "restarting")
        assert read_json(health.path)["reason"] == "a worker process died"
        assert read_json(health.path)["pid"] == os.getpid()
    finally:
        service.stop()


def test_client_cancellation_aborts_and_ends_with_a_bare_final(setup):
    engine, transport, service, _ = setup
    rid = service.submit("h", _inputs([1]))
    engine.emit(rid, [2])
    wait_until(lambda: transport.of("h"))
    transport.cancelled.add("h")
    wait_until(lambda: engine.aborted == [rid])
    wait_until(lambda: transport.of("h")[-1][1])
    assert transport.of("h")[-1] == (None, True)


def test_relayed_abort_reports_cancelled(setup):
    engine, transport, service, _ = setup
    rid = service.submit("h", _inputs([1]))
    service.abort(rid)
    wait_until(lambda: transport.of("h"))
    [(response, final)] = transport.of("h")
    assert final and response.finish_reason == "cancelled"


def test_metrics_published_from_the_sender(setup):
    engine, transport, service, sink = setup
    engine.slots_used = 42
    rid = service.submit("h", _inputs([1]))
    engine.emit(rid, [2])
    engine.emit(rid, [3], "length")
    wait_until(lambda: sink.values.get("llm_kv_slots_used") == 42)
    assert sink.values["llm_generation_tokens_total"] == 7
    wait_until(lambda: len(sink.observations.get("llm_time_to_first_token_seconds", [])) == 1)
    assert len(sink.observations["llm_inter_token_latency_seconds"]) == 1


class TimedTransport(FakeTransport):
    def send(self, handle, response, final):
        super().send(handle, (time.monotonic(), response), final)


@pytest.mark.parametrize("streams,rate", [(10, 50.0), (1, 1500.0), (10, 0.0)])
def test_stream_responses_are_spaced_by_streams_over_rate(streams, rate):
    """Each stream's responses come at most once per `streams / rate` s, its first and last at once; held-back
    tokens ride in the next response, none lost or reordered. 0: a response per stream per pass."""
    engine, transport = FakeEngine(), TimedTransport()
    service = LlmService(engine, transport, EngineMetrics(RecordingSink()), max_responses_per_s=rate)
    service.start()
    rids = {f"s{i}": service.submit(f"s{i}", _inputs([1])) for i in range(streams)}
    tokens, ended = 60, {}
    for step in range(tokens):
        for rid in rids.values():
            engine.emit(rid, [100 + step], "length" if step == tokens - 1 else None)
        if step == 0:
            first_at = time.monotonic()
        time.sleep(0.005)
    ended_at = time.monotonic()
    wait_until(lambda: all(transport.of(h) and transport.of(h)[-1][1] for h in rids))
    service.stop()
    interval = streams / rate if rate else 0.0
    for handle in rids:
        sent = transport.of(handle)
        times = [t for (t, _), _ in sent]
        ids = [tok for (_, response), _ in sent for tok in response.output_ids]
        assert ids == [100 + step for step in range(tokens)], handle  # every token, in order
        assert times[0] - first_at < 0.1 and times[-1] - ended_at < 0.1  # first and last at once (interval 0.2 s)
        gaps = [b - a for a, b in zip(times[:-2], times[1:-1], strict=True)]  # between intermediate responses
        assert all(gap >= interval * 0.95 for gap in gaps), (handle, min(gaps))
        ended[handle] = len(sent)
    if rate == 50.0:  # 0.2 s apart over ~0.3 s: a few responses of many tokens, not one per token
        assert max(ended.values()) <= 8, ended
    elif rate == 1500.0:  # one stream: interval 0.7 ms, below the token gap: (nearly) one response per token
        assert min(ended.values()) >= tokens * 0.8, ended


def test_only_streams_producing_tokens_share_the_rate():
    """Requests still waiting for admission (no token yet) do not stretch the others' interval."""
    engine, transport = FakeEngine(), TimedTransport()
    service = LlmService(engine, transport, EngineMetrics(RecordingSink()), max_responses_per_s=40.0)
    service.start()
    waiting = [service.submit(f"w{i}", _inputs([1])) for i in range(38)]  # 40 / 40 = 1 s if they counted
    rids = {f"s{i}": service.submit(f"s{i}", _inputs([1])) for i in range(2)}  # 2 / 40 = 50 ms
    for step in range(40):
        for rid in rids.values():
            engine.emit(rid, [step], "length" if step == 39 else None)
        time.sleep(0.01)
    wait_until(lambda: all(transport.of(h) and transport.of(h)[-1][1] for h in rids))
    for handle in rids:
        assert len(transport.of(handle)) >= 5, transport.of(handle)  # ~0.4 s at 50 ms, not 1 s apart
    assert service._interval() == 0.0  # both ended; the waiting ones never produced
    for rid in waiting:
        engine.emit(rid, [], "abort")
    service.stop()


def test_stop_fails_requests_still_open():
    engine, transport = FakeEngine(), FakeTransport()
    service = LlmService(engine, transport, EngineMetrics(RecordingSink()))
    service.start()
    service.submit("h", _inputs([1]))
    service.stop()
    assert transport.of("h") == [("the server is shutting down", True)]
    service.submit("late", _inputs([1]))
    assert engine.queue.get_nowait().error == "the server is shutting down"


@pytest.mark.parametrize("arch,kind", [("llava", "bpe"), ("llama", "sp")])
def test_streamed_text_is_exact_and_never_empty(tiny_model_factory, arch, kind):
    """llm responses -> postprocess text: chunks concatenate to the whole text, none empty."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_factory(arch, kind)))
    engine, transport = FakeEngine(tokenizer), FakeTransport()
    service = LlmService(engine, transport, EngineMetrics(RecordingSink()))
    service.start()
    rng = np.random.default_rng(0)
    prompt = tokenizer("  你好 world 😀")["input_ids"]
    for trial in range(10):
        outputs = [int(t) for t in rng.integers(3, 1000, size=30)]
        rid = service.submit(trial, _inputs(prompt))
        for t in outputs[:-1]:
            engine.emit(rid, [t])
            time.sleep(0.0005 * (trial % 3))  # vary how chunks coalesce
        trim = 1 if trial == 9 else 0  # a stop string that began inside the last token: llm trims the text
        engine.emit(rid, outputs[-1:], "stop" if trim else "length", text_trim=trim)
        wait_until(lambda trial=trial: transport.of(trial) and transport.of(trial)[-1][1])
        texts = []
        for response, _ in transport.of(trial):
            inputs = {
                "output_ids": np.array([response.output_ids]),
                "text": np.array([[response.text.encode()]], np.object_),
                "finish_reason": np.array([[response.finish_reason.encode()]], np.object_),
                "response_index": np.array([[response.response_index]]),
            }
            texts.append(chunk_text(parse_postprocess_input(inputs)))
            # A direct caller decodes with the context ids to the same text.
            final = bool(response.finish_reason)
            untrimmed = decode_delta(tokenizer, response.context_ids, response.output_ids, final)
            assert untrimmed[: len(untrimmed) - (trim if final else 0)] == response.text
        whole = full_text(tokenizer, prompt, outputs)
        assert "".join(texts) == whole[: len(whole) - trim]
        assert all(texts[:-1]), texts
    service.stop()


def test_step_timeline_becomes_counters():
    # engine.stats()' step_<kind>_<field> totals, summed over the kinds, as counter increments.
    sink = RecordingSink()
    metrics = EngineMetrics(sink)
    stats = {
        "step_decode_steps": 10, "step_decode_wall_s": 0.5, "step_decode_gpu_s": 0.4, "step_decode_schedule_s": 0.01,
        "step_decode_launch_s": 0.02, "step_decode_output_s": 0.03, "step_decode_wait_s": 0.3,
        "step_mixed_steps": 2, "step_mixed_wall_s": 0.2, "step_mixed_gpu_s": 0.15, "step_idle_s": 1.5,
        "step_between_s": 0.1,
    }  # fmt: skip
    metrics.publish(stats)
    metrics.publish({**stats, "step_decode_steps": 13, "step_decode_wall_s": 0.65})
    values = sink.values
    assert values["llm_engine_steps_total"] == 15
    assert values["llm_engine_step_seconds_total"] == pytest.approx(0.85)
    assert values["llm_engine_gpu_seconds_total"] == pytest.approx(0.55)
    assert values["llm_engine_host_seconds_total"] == pytest.approx(0.06)
    assert values["llm_engine_wait_seconds_total"] == pytest.approx(0.3)
    assert values["llm_engine_idle_seconds_total"] == pytest.approx(1.5)


def test_llm_builds_only_the_outputs_a_request_asked_for():
    config = (Path(__file__).parents[2] / "model_repository/llm/config.pbtxt").read_text()
    declared = re.findall(r'\{ name: "(\w+)"', config.split("output [", 1)[1].split("]\n", 1)[0])
    assert requested_outputs(reversed(declared)) == tuple(declared)  # every declared output, in config order
    response = LlmResponse("llm-1", [5, 6], [4], "ab", "", 0, 3, 0, "{}", None, 0.0)
    # What the ensemble maps (everything but context_ids and text_trim), plus a name the llm does not have.
    mapped = requested_outputs(["text", "output_ids", "finish_reason", "no_such_output"])
    arrays = dict(response_arrays(response, mapped))
    assert list(arrays) == ["output_ids", "text", "finish_reason"]
    assert arrays["output_ids"].tolist() == [[5, 6]] and arrays["text"].tolist() == [[b"ab"]]
    assert arrays["finish_reason"].shape == (1, 1)
