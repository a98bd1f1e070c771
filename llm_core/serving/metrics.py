"""Metric definitions and bookkeeping, independent of Triton.

The Triton adapters create one `pb_utils.MetricFamily` per MetricSpec and wrap them in a
MetricsSink. Everything here runs on ONE thread per model (the llm sender thread; the visual
model's execute): docs/SERVING.md links pb_utils metric updates from several threads to crashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str
    description: str
    buckets: tuple[float, ...] = ()


LLM_METRICS = (
    MetricSpec("llm_kv_slots_used", GAUGE, "KV cache token slots in use"),
    MetricSpec("llm_kv_slots_total", GAUGE, "KV cache token slots in the pool"),
    MetricSpec("llm_kv_slots_cached", GAUGE, "KV slots of finished requests kept by the prefix cache"),
    MetricSpec("llm_requests_running", GAUGE, "Requests in the running batch"),
    MetricSpec("llm_requests_waiting", GAUGE, "Requests waiting for admission (paused ones included)"),
    MetricSpec("llm_requests_paused", GAUGE, "Paused requests waiting to resume"),
    MetricSpec("llm_request_pauses_total", COUNTER, "Times a running request was paused for KV space"),
    MetricSpec("llm_prompt_tokens_total", COUNTER, "Prompt tokens admitted"),
    MetricSpec("llm_prefix_cache_hit_tokens_total", COUNTER, "Prompt tokens taken from the prefix cache"),
    MetricSpec("llm_generation_tokens_total", COUNTER, "Tokens generated"),
    MetricSpec("llm_engine_restarts_total", COUNTER, "Engine worker restarts after a failure"),
    MetricSpec("llm_resumed_requests_total", COUNTER, "Requests resumed on fresh workers after a worker failure"),
    MetricSpec("llm_stub_reloads_total", COUNTER, "Reloads of the llm model by the supervisor after its stub died"),
    MetricSpec("llm_server_restarts_total", COUNTER, "Restarts of tritonserver by the launcher after it died"),
    MetricSpec("llm_engine_ready", GAUGE, "1 when the engine takes requests, 0 while its workers restart or are down"),
    MetricSpec("llm_engine_steps_total", COUNTER, "Forward steps of the engine (prefill, decode and mixed)"),
    MetricSpec("llm_engine_step_seconds_total", COUNTER, "Wall time of the engine loop's steps"),
    MetricSpec("llm_engine_gpu_seconds_total", COUNTER, "Device time of the engine's steps (CUDA events; 0 on CPU)"),
    MetricSpec("llm_engine_host_seconds_total", COUNTER, "Host time of the steps: scheduling, launching, outputs"),
    MetricSpec("llm_engine_wait_seconds_total", COUNTER, "Time the engine loop waited for the device's results"),
    MetricSpec("llm_engine_idle_seconds_total", COUNTER, "Time the engine loop had no request to run"),
    MetricSpec(
        "llm_time_to_first_token_seconds", HISTOGRAM, "Time from request arrival to first token", LATENCY_BUCKETS
    ),
    MetricSpec(
        "llm_inter_token_latency_seconds", HISTOGRAM, "Time between consecutive tokens of a request", LATENCY_BUCKETS
    ),
)
VISUAL_METRICS = (
    MetricSpec("visual_cache_hits_total", COUNTER, "Images whose embeddings came from the cache"),
    MetricSpec("visual_cache_misses_total", COUNTER, "Images encoded by the vision tower"),
    MetricSpec("visual_cache_entries", GAUGE, "Image embeddings held in the cache"),
)

# engine.stats() key -> gauge / counter name
_GAUGES = {
    "slots_used": "llm_kv_slots_used",
    "slots_total": "llm_kv_slots_total",
    "slots_cached": "llm_kv_slots_cached",
    "running": "llm_requests_running",
    "waiting": "llm_requests_waiting",
    "paused": "llm_requests_paused",
    "engine_ready": "llm_engine_ready",
}
_COUNTERS = {
    "total_pauses": "llm_request_pauses_total",
    "prompt_tokens_total": "llm_prompt_tokens_total",
    "prefix_cache_hit_tokens_total": "llm_prefix_cache_hit_tokens_total",
    "generation_tokens_total": "llm_generation_tokens_total",
    "restarts": "llm_engine_restarts_total",
    "resumed_requests": "llm_resumed_requests_total",
}

# The step timeline (engine.stats() "step_<kind>_<field>", llm_core/worker/timeline.py), summed over the step
# kinds: counter -> the fields it adds up.
_STEP_COUNTERS = {
    "llm_engine_steps_total": ("steps",),
    "llm_engine_step_seconds_total": ("wall_s",),
    "llm_engine_gpu_seconds_total": ("gpu_s",),
    "llm_engine_host_seconds_total": ("schedule_s", "launch_s", "output_s"),
    "llm_engine_wait_seconds_total": ("wait_s",),
}


def step_totals(stats: dict) -> dict[str, float]:
    """Counter name -> total over every step kind of the engine's timeline stats."""
    totals = dict.fromkeys(_STEP_COUNTERS, 0.0)
    for key, value in stats.items():
        if not key.startswith("step_") or key.count("_") < 2:
            continue
        field = key.split("_", 2)[2]  # step_<kind>_<field>: kinds have no underscore
        for name, fields in _STEP_COUNTERS.items():
            if field in fields:
                totals[name] += float(value)
    totals["llm_engine_idle_seconds_total"] = float(stats.get("step_idle_s", 0.0))
    return totals


class MetricsSink(Protocol):
    def set(self, name: str, value: float) -> None: ...  # gauge

    def increment(self, name: str, delta: float) -> None: ...  # counter

    def observe(self, name: str, value: float) -> None: ...  # histogram


class RecordingSink:
    """Keeps the latest values (tests, and a readable summary for logs)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.observations: dict[str, list[float]] = {}

    def set(self, name: str, value: float) -> None:
        self.values[name] = value

    def increment(self, name: str, delta: float) -> None:
        self.values[name] = self.values.get(name, 0.0) + delta

    def observe(self, name: str, value: float) -> None:
        self.observations.setdefault(name, []).append(value)


class CounterTracker:
    """Turns monotonically growing totals into counter increments (totals may reset on restart)."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink
        self._last: dict[str, float] = {}

    def update(self, name: str, total: float) -> None:
        last = self._last.get(name, 0.0)
        delta = total - last if total >= last else total  # reset: count the new total
        if delta > 0:
            self.sink.increment(name, delta)
        self._last[name] = total


class EngineMetrics:
    """Publishes engine.stats() snapshots: gauges as they are, totals as counter increments.

    Worker restarts reset the engine's totals; `restarts` itself never resets, so it is tracked
    separately from the engine-generation totals.
    """

    RESEND_EVERY = 40  # publishes: re-send unchanged gauges now and then (an update may be lost)

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink
        self.counters = CounterTracker(sink)
        self._gauges: dict[str, float] = {}
        self._publishes = 0

    def publish(self, stats: dict) -> None:
        # Updates sent while the model is still initializing are dropped by tritonserver (the
        # total slot count then read 0 until the first request): re-send the first few, then
        # every RESEND_EVERY publishes.
        self._publishes += 1
        if self._publishes <= 8 or self._publishes % self.RESEND_EVERY == 0:
            self._gauges.clear()
        for key, name in _GAUGES.items():
            # Each update is a blocking round trip to the server: skip unchanged values.
            if key in stats and self._gauges.get(name) != float(stats[key]):
                self._gauges[name] = float(stats[key])
                self.sink.set(name, float(stats[key]))
        for key, name in _COUNTERS.items():
            if key in stats:
                self.counters.update(name, float(stats[key]))
        for name, total in step_totals(stats).items():
            self.counters.update(name, total)

    def observe_ttft(self, seconds: float) -> None:
        self.sink.observe("llm_time_to_first_token_seconds", max(seconds, 0.0))

    def observe_itl(self, seconds: float) -> None:
        self.sink.observe("llm_inter_token_latency_seconds", max(seconds, 0.0))


def publish_cache(sink: MetricsSink, counters: CounterTracker, hits: int, misses: int, entries: int) -> None:
    counters.update("visual_cache_hits_total", hits)
    counters.update("visual_cache_misses_total", misses)
    sink.set("visual_cache_entries", entries)
