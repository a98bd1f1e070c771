"""Visual cache/batching, postprocess outputs, metrics bookkeeping and the cancel relay."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from llm_core.serving.cancel_relay import CancelRelayClient, CancelRelayServer
from llm_core.serving.metrics import LLM_METRICS, CounterTracker, EngineMetrics, RecordingSink
from llm_core.serving.postprocess import CancelPolls, PostprocessInput, cancelled_outputs, postprocess_outputs
from llm_core.serving.request import OutputOptions
from llm_core.serving.triton_bridge import PbMetricsSink
from llm_core.serving.visual_cache import EmbeddingCache, VisualRequest, embed_batch

HIDDEN, TOKENS = 4, 3


class CountingEncoder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:  # [N, 3, H, W] -> [N, TOKENS, HIDDEN]
        self.calls.append(pixels.shape[0])
        return np.repeat(pixels[:, :1, :1, :1].reshape(-1, 1, 1), TOKENS, 1).repeat(HIDDEN, 2)


def _request(*values: float) -> VisualRequest:
    pixels = np.stack([np.full((3, 2, 2), v, np.float32) for v in values]) if values else np.zeros((0, 3, 2, 2))
    return VisualRequest(pixels, [f"md5-{v}" for v in values])


def test_embed_batch_encodes_misses_once_in_one_call():
    cache, encode = EmbeddingCache(8), CountingEncoder()
    out = embed_batch([_request(1.0, 2.0), _request(), _request(2.0, 3.0, 1.0)], cache, encode, HIDDEN)
    assert encode.calls == [3]  # 1, 2, 3 once each, in a single batch
    assert out[0].shape == (2 * TOKENS, HIDDEN) and out[1].shape == (0, HIDDEN) and out[2].shape == (9, HIDDEN)
    assert out[2][:TOKENS].max() == 2.0 and out[2][-TOKENS:].max() == 1.0  # order of the request's images
    assert (cache.hits, cache.misses) == (2, 3)
    embed_batch([_request(3.0)], cache, encode, HIDDEN)
    assert encode.calls == [3] and cache.hits == 3


def test_lru_evicts_the_least_recently_used():
    cache = EmbeddingCache(2)
    cache.put("a", np.zeros(1))
    cache.put("b", np.zeros(1))
    assert cache.get("a") is not None
    cache.put("c", np.zeros(1))
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2


def _item(**kw) -> PostprocessInput:
    base = dict(
        request_id="r",
        output_ids=[],
        text="",
        finish_reason="",
        num_input_tokens=7,
        response_index=0,
        options=OutputOptions(),
        logprobs=[],
        cum_log_prob=0.0,
    )
    return PostprocessInput(**{**base, **kw})


def test_postprocess_outputs_follow_the_options():
    out = postprocess_outputs(_item(output_ids=[104, 105], text="hi"))
    assert list(out) == ["text_output"] and out["text_output"].tolist() == [[b"hi"]]
    opts = OutputOptions(
        return_finish_reason=True, return_num_input_tokens=True, return_num_output_tokens=True, return_log_probs=True
    )
    out = postprocess_outputs(_item(output_ids=[104], text="h", options=opts, logprobs=[-0.5], cum_log_prob=-1.5))
    assert "finish_reason" not in out  # not finished yet: no `"finish_reason": []` in SSE events
    assert out["output_ids"].tolist() == [[104]]
    assert out["num_input_tokens"].tolist() == [[7]] and out["num_output_tokens"].tolist() == [[1]]
    assert out["output_log_probs"].shape == (1, 1, 1) and out["cum_log_probs"].tolist() == [[-1.5]]
    out = postprocess_outputs(_item(output_ids=[104, 83, 84], text="h", finish_reason="stop", options=opts))
    assert out["text_output"].tolist() == [[b"h"]] and out["finish_reason"].tolist() == [[b"stop"]]
    assert out["num_output_tokens"].tolist() == [[3]]


def test_echo_prepends_the_prompt_to_the_first_chunk_only():
    opts = OutputOptions(exclude_input_in_output=False, prompt="Q: ")
    assert postprocess_outputs(_item(text="A", options=opts))["text_output"].tolist() == [[b"Q: A"]]
    assert postprocess_outputs(_item(text="B", options=opts, response_index=1))["text_output"].tolist() == [[b"B"]]
    assert cancelled_outputs()["text_output"].tolist() == [[b""]]


def test_engine_metrics_gauges_and_counter_increments():
    sink = RecordingSink()
    metrics = EngineMetrics(sink)
    metrics.publish({"slots_used": 5, "slots_total": 10, "prompt_tokens_total": 10, "restarts": 0})
    metrics.publish({"slots_used": 0, "slots_total": 10, "prompt_tokens_total": 25, "restarts": 0})
    metrics.publish({"slots_used": 0, "slots_total": 10, "prompt_tokens_total": 4, "restarts": 1})  # restarted
    assert sink.values["llm_kv_slots_used"] == 0 and sink.values["llm_kv_slots_total"] == 10
    assert sink.values["llm_prompt_tokens_total"] == 29 and sink.values["llm_engine_restarts_total"] == 1
    tracker = CounterTracker(sink)
    tracker.update("x", 3)
    tracker.update("x", 3)
    assert sink.values["x"] == 3


class FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "c", "g", "h"

    def __init__(self, name, description, kind):
        self.name, self.kind, self.metric = name, kind, None

    def Metric(self, labels, buckets=None):  # noqa: N802 - pb_utils' name
        self.metric = SimpleNamespace(labels=labels, buckets=buckets, values=[])
        self.metric.set = self.metric.values.append
        self.metric.increment = self.metric.values.append
        self.metric.observe = self.metric.values.append
        return self.metric


def test_pb_metrics_sink_creates_one_family_per_spec():
    sink = PbMetricsSink(SimpleNamespace(MetricFamily=FakeFamily), LLM_METRICS)
    assert len(sink.families) == len(LLM_METRICS)
    sink.observe("llm_time_to_first_token_seconds", 0.1)
    sink.set("llm_kv_slots_used", 3)
    assert sink.metrics["llm_time_to_first_token_seconds"].buckets
    assert sink.metrics["llm_kv_slots_used"].values == [3]


def test_cancel_relay_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SERVING_RUNTIME_DIR", str(tmp_path))
    aborted: list[str] = []
    client = CancelRelayClient()  # may connect before the server binds
    server = CancelRelayServer(aborted.append)
    try:
        assert client.abort("req-1") and not client.abort("req-1")  # each id once
        assert client.abort("req-2")
        deadline = time.monotonic() + 5
        while len(aborted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert aborted == ["req-1", "req-2"]
    finally:
        client.close()
        server.close()
    assert not tmp_path.exists()  # the socket file and the (then empty) runtime dir are gone


def test_cancel_relay_without_launcher_uses_a_private_dir(monkeypatch):
    monkeypatch.delenv("LLM_SERVING_RUNTIME_DIR", raising=False)
    server = CancelRelayServer(lambda rid: None, model_name=f"test{time.monotonic_ns()}")
    directory = server.path.parent
    assert directory.is_dir() and str(directory.name).startswith("llm_core_triton_")
    server.close()
    assert not directory.exists()


def test_visual_text_only_batch_skips_the_cache_and_its_metrics(tiny_llava):
    from llm_core.serving.settings import load_settings
    from llm_core.serving.visual import VisualService

    sink = RecordingSink()
    service = VisualService(load_settings({"model_dir": str(tiny_llava)}, env={}), sink)
    text_only = {"pixel_values": np.zeros((1, 0, 3, 8, 8), np.float32), "image_md5": np.zeros((1, 0), np.object_)}
    out = service.run([text_only, text_only])
    assert [e.shape for e in out] == [(1, 0, service.hidden_size)] * 2
    assert (service.cache.hits, service.cache.misses) == (0, 0) and not sink.values  # no metric round trip


def test_cancel_polls_ask_each_stream_at_most_once_per_interval():
    polls = CancelPolls(interval_s=0.25)
    assert not polls.due("a", final=False, now=10.0)  # first response: time to first token, not asked
    assert not polls.due("a", final=False, now=10.1)  # within the interval
    assert polls.due("a", final=False, now=10.3)
    assert not polls.due("a", final=False, now=10.4)
    assert polls.due("a", final=False, now=10.6)
    assert not polls.due("b", final=False, now=10.6)  # streams are timed apart
    assert not polls.due("a", final=True, now=20.0)  # the last response: the engine request has ended
    assert not polls.due("a", final=False, now=20.1)  # forgotten: a new stream with that id starts over


def test_cancel_polls_forget_streams_that_never_finished():
    polls = CancelPolls(interval_s=0.25, max_tracked=4)
    for i in range(4):
        polls.due(f"old{i}", final=False, now=0.0)
    assert not polls.due("new", final=False, now=100.0)  # full: the stale ones are dropped first
    assert len(polls._last) == 1 and polls.due("new", final=False, now=100.5)
