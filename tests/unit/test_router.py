"""Router: future-aware admission, prefill/decode policy, pausing, aborts (CPU only).

The engine loop is simulated with a fake model whose token depends only on (request, position),
so a request produces the same tokens however it was scheduled, paused or resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_core.sampling_params import SamplingParams
from llm_core.scheduler import Request, RequestStatus, Router, fits, peak_slots

SETTINGS = settings(max_examples=60, deadline=None)


# --- fits() against a brute-force simulation of the peak -----------------------------------
def simulated_peak(held: list[int], remaining: list[int]) -> int:
    """Step by step: every live request stores one more token per step, and frees all its
    slots after its last step."""
    usage = peak = sum(held)
    alive = list(zip(held, remaining, strict=True))
    step = 0
    while alive:
        step += 1
        usage += len(alive)
        peak = max(peak, usage)
        usage -= sum(a + b for a, b in alive if b == step)
        alive = [(a, b) for a, b in alive if b != step]
    assert usage == 0
    return peak


@SETTINGS
@given(
    reqs=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30)), max_size=8),
    slack=st.integers(-3, 3),
)
def test_fits_matches_brute_force_peak(reqs, slack):
    held = [a for a, _ in reqs]
    remaining = [b for _, b in reqs]
    peak = simulated_peak(held, remaining)
    assert peak_slots(held, remaining) == peak
    assert fits(held, remaining, peak + slack) == (slack >= 0)


@SETTINGS
@given(
    reqs=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30), st.integers(0, 12)), max_size=8),
    starts=st.data(),
)
def test_peak_with_delayed_requests_bounds_every_schedule(reqs, starts):
    # A request still waiting for prefill chunks holds its slots, starts growing after up to d
    # steps and finishes by b + d: peak_slots(held, b + d, growth=b) must bound the usage of every
    # such schedule (a random delay 0..d per request, and the longest), and equal the closed form
    # max_k sum_{L_i >= L_k} (a_i + min(L_k, b_i)).
    held = [a for a, _, _ in reqs]
    grows = [b for _, b, _ in reqs]
    lives = [b + d for _, b, d in reqs]
    bound = peak_slots(held, lives, growth=grows)
    delays = [starts.draw(st.integers(0, d)) for _, _, d in reqs]
    for actual in (delays, [d for _, _, d in reqs]):
        usage_peak, step = sum(held), 0
        while any(step < b + dd for (_, b, _), dd in zip(reqs, actual, strict=True)):
            step += 1
            usage = sum(
                a + max(0, min(step, b + dd) - dd)
                for (a, b, _), dd in zip(reqs, actual, strict=True)
                if step <= b + dd  # counted at its last step, freed after it
            )
            usage_peak = max(usage_peak, usage)
        assert usage_peak <= bound
    assert bound == max(
        [sum(held)]
        + [
            sum(a + min(life_k, b) for (a, b, _), life in zip(reqs, lives, strict=True) if life >= life_k)
            for life_k in lives
        ]
    )


def test_fits_example():
    # sorted by b: (a=2, b=10), (a=5, b=3): max(2 + 10, 7 + 2 * 3) = 13
    assert peak_slots([5, 2], [3, 10]) == 13
    assert fits([5, 2], [3, 10], 13) and not fits([5, 2], [3, 10], 12)
    assert fits([], [], 0)


# --- the simulated engine loop ---------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    arrival_step: int
    prompt_len: int
    max_tokens: int
    eos_after: int | None  # the fake "eos" fires when this many tokens were generated
    shared_len: int = 0  # the prompt starts with this many tokens common to its family
    family: int = 0


@dataclass
class SimResult:
    outputs: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    paused_aborts: int = 0
    max_running: int = 0


def fake_token(req: Request) -> int:
    return (len(req.all_ids) * 31 + int(req.request_id[1:]) * 7) % 1000


def make_request(i: int, spec: Spec) -> Request:
    shared = min(spec.shared_len, spec.prompt_len)
    prompt = [1000 + spec.family * 100 + j for j in range(shared)]
    prompt += [(i * 13 + j * 7) % 1000 for j in range(shared, spec.prompt_len)]
    return Request(request_id=f"r{i}", prompt_ids=prompt, params=SamplingParams(max_tokens=spec.max_tokens))


def budget(router: Router, req: Request) -> int:
    if router.optimistic:
        estimate = max(1, math.ceil(router.optimistic_ratio * req.params.max_tokens))
        return max(1, estimate - len(req.output_ids))
    return req.remaining_budget


def cache_slots(router: Router) -> list[int]:
    """Every slot the prefix cache holds; also checks its counters and reference counts."""
    cache = router.cache
    if cache is None:
        return []
    users: dict[int, int] = {}  # node id -> running requests whose prefix passes through it
    for r in router.running.values():
        node = r.cache_node
        assert (node is None) == (r.num_cached == 0)
        while node is not None and node is not cache.root:
            users[id(node)] = users.get(id(node), 0) + 1
            node = node.parent
    slots, locked, stack = [], 0, list(cache.root.children.values())
    while stack:
        node = stack.pop()
        assert node.ref == users.get(id(node), 0) and len(node.key) == len(node.slots) > 0
        slots += node.slots
        locked += len(node.slots) if node.ref else 0
        stack.extend(node.children.values())
    assert cache.num_slots == len(slots) and cache.num_locked == locked
    return slots


def check_invariants(router: Router) -> None:
    running = list(router.running.values())
    slots = [s for r in running for s in r.slots[r.num_cached :]]  # each request's own
    cached = cache_slots(router)
    assert router.slot_allocator.num_used == len(slots) + len(cached) == len(set(slots) | set(cached))
    for r in running:
        assert set(r.slots[: r.num_cached]) <= set(cached)
    assert router.row_allocator.num_used == len(running) == len({r.row for r in running})
    for r in running:
        assert r.status is RequestStatus.RUNNING and r.row is not None
        if r.is_prefilling:  # chunks to go: holds every slot of its prefill already
            assert len(r.slots) == r.prefill_len == r.num_tokens > r.num_computed
        else:
            assert len(r.slots) == r.num_computed == r.num_tokens - 1
    arrivals = [r.arrival for r in router.waiting]
    assert arrivals == sorted(arrivals)
    if running and arrivals:
        assert max(r.arrival for r in running) < arrivals[0]  # strict FCFS
    for r in router.waiting:
        assert r.status is RequestStatus.WAITING and r.row is None and r.slots == []
    stats = router.stats()
    assert stats["paused"] == sum(r.num_pauses > 0 for r in router.waiting)
    evictable = router.cache.num_evictable if router.cache else 0
    assert stats["slots_used"] == len(slots) + len(cached) - evictable and stats["running"] == len(running)


def head_admissible(router: Router) -> bool:
    """Whether the head of `waiting` would be admitted by a prefill step now: re-derived here from
    the rules in router.py (chunks of admitted prompts first; a prefilling request counts in fits()
    with its budget plus decode_steps_per_prefill decode steps per max_prefill_tokens tokens still to
    prefill in itself and the requests before it)."""
    if not router.waiting or router.row_allocator.num_free == 0:
        return False
    # A mixed step (decoding requests present) allocates their decode slots first and prefills at most
    # mixed_prefill_tokens; with mixed steps on, a prefilling request waits (dspp + 1) decode steps per
    # mixed_prefill_tokens tokens ahead of it.
    decoding = {r.request_id for r in decodable(router)}
    mixed = bool(router.mixed_prefill_tokens and decoding)
    tokens, ahead, delays = router.mixed_prefill_tokens if mixed else router.max_prefill_tokens, 0, {}

    def delay(tokens_ahead: int) -> int:
        if router.mixed_prefill_tokens:
            return (router.decode_steps_per_prefill + 1) * math.ceil(tokens_ahead / router.mixed_prefill_tokens)
        return router.decode_steps_per_prefill * math.ceil(tokens_ahead / router.max_prefill_tokens)

    for r in router.running.values():
        if r.is_prefilling:
            rest = r.prefill_len - r.num_computed - min(r.prefill_len - r.num_computed, max(tokens, 0))
            tokens -= r.prefill_len - r.num_computed - rest
            ahead += rest
            delays[r.request_id] = delay(ahead)
    if tokens <= 0:
        return False
    head = router.waiting[0]
    node, cached = None, []
    if router.cache is not None:
        node, cached = router.cache.match(head.all_ids[: head.num_tokens - 1])
    todo = head.num_tokens - len(cached)
    rest = todo - min(todo, tokens)
    head_delay = delay(ahead + rest) if rest else 0
    running = list(router.running.values())
    held = [len(r.slots) - r.num_cached + (mixed and r.request_id in decoding) for r in running] + [todo]
    grows = [budget(router, r) for r in running] + [budget(router, head)]
    lives = [budget(router, r) + delays.get(r.request_id, 0) + router.lookahead for r in running]
    lives.append(grows[-1] + head_delay + router.lookahead)
    locked = router.cache.num_locked + (router.cache.unlocked_on_path(node) if cached else 0) if router.cache else 0
    return fits(held, lives, router.num_slots - locked, growth=grows)


def decodable(router: Router) -> list[Request]:
    """Running requests that a decode step takes: past their prefill, with tokens to go (a request at its
    budget waits for finish() in the overlapped loop, its last id not seen yet)."""
    return [
        r for r in router.running.values()
        if not r.is_prefilling and r.remaining_budget > 0 and r.num_tokens < router.max_model_len
    ]  # fmt: skip


def check_batch(
    router: Router,
    batch,
    waiting_before: list[Request],
    prefilling_before: list[Request],
    num_decodable_before: int,
    decodes_since_prefill: int,
    head_fit_before: bool,
    paused_now: bool,
) -> None:
    policy_allows_prefill = num_decodable_before == 0 or decodes_since_prefill >= router.decode_steps_per_prefill
    for seq in batch.seqs:
        req = seq.request
        n = len(seq.new_token_ids)
        assert len(seq.new_slots) == n > 0
        assert req.slots[seq.prefix_len : seq.prefix_len + n] == seq.new_slots and seq.row == req.row
        assert req.num_computed == seq.prefix_len + n
        assert seq.new_token_ids == req.all_ids[seq.prefix_len : seq.prefix_len + n]
        assert seq.samples == (req.num_computed == req.num_tokens), "only the last chunk samples"
    if batch.kind == "mixed":  # the decode rows first, then at most mixed_prefill_tokens of prefill
        assert policy_allows_prefill and router.mixed_prefill_tokens and num_decodable_before
        num_decode = sum(s.request not in prefilling_before and s.request not in waiting_before for s in batch.seqs)
        assert num_decode == num_decodable_before or paused_now, (num_decode, num_decodable_before)
        for seq in batch.seqs[:num_decode]:
            assert seq.new_token_ids == [seq.request.output_ids[-1]]
        prefill = batch.seqs[num_decode:]
        assert prefill and sum(len(s.new_token_ids) for s in prefill) <= router.mixed_prefill_tokens
    else:
        prefill = batch.seqs
    if batch.kind != "decode":
        assert policy_allows_prefill or paused_now  # (every decodable request paused: prefill instead)
        assert batch.kind == "mixed" or not (router.mixed_prefill_tokens and num_decodable_before) or paused_now
        assert sum(len(s.new_token_ids) for s in prefill) <= router.max_prefill_tokens
        # Chunks of prompts admitted earlier come first, oldest first, then new requests in FCFS order.
        k = sum(seq.request in prefilling_before for seq in prefill)
        assert [s.request for s in prefill[:k]] == prefilling_before[:k]
        assert all(s.samples for s in prefill[: k - 1])  # an older prompt finishes before a newer chunk
        new = [s.request for s in prefill[k:]]
        assert new == waiting_before[: len(new)]
        for seq in prefill[k:]:
            assert seq.prefix_len == seq.request.num_cached  # 0 without a prefix-cache hit
            assert list(seq.cached_slots) == seq.request.slots[: seq.prefix_len]
            # A paused request resumes before any request that arrived after it.
            assert not any(r.is_paused and r.arrival < seq.request.arrival for r in router.waiting)
    else:
        # (a mixed step pauses before it prefills: what was paused may leave nothing to prefill)
        assert not (policy_allows_prefill and (head_fit_before or prefilling_before)) or paused_now
        assert len(batch.seqs) == num_decodable_before or paused_now
        for seq in batch.seqs:
            assert seq.new_token_ids == [seq.request.output_ids[-1]]
    assert len(router.running) <= router.row_allocator.size


def pick_abort_target(router: Router, where: str, i: int) -> str | None:
    """where: "id" (request r{i}, live or not), or "running" / "waiting" / "paused" (the i-th
    such request now, modulo their number; None while there is none)."""
    if where == "id":
        return f"r{i}"
    if where == "running":
        pool = list(router.running)
    else:
        pool = [r.request_id for r in router.waiting if where == "waiting" or r.is_paused]
    return pool[i % len(pool)] if pool else None


def simulate(
    router: Router, specs: list[Spec], aborts: list[tuple[int, str, int]] = (), overlap: bool = False
) -> SimResult:
    """aborts: (step, where, i); an abort stays pending from `step` until it finds a target.

    overlap: as the overlapped scheduler loop drives the router: a step's sampled ids are appended as
    placeholders and become known only after the next step was scheduled; a request that finishes on
    such an id may already be in that next step (its extra id is dropped by finish(num_output=...))."""
    pending_aborts = sorted(aborts)
    result = SimResult()
    order = sorted(range(len(specs)), key=lambda i: specs[i].arrival_step)
    next_spec, step, decodes_since_prefill = 0, 0, 0
    last_step = max(s.arrival_step for s in specs) + 1
    in_flight: list[tuple[Request, int, int]] = []  # (request, index in output_ids, its id) not yet seen
    while next_spec < len(order) or router.has_work() or step <= last_step or in_flight:
        assert step < 5000, "no progress"
        while next_spec < len(order) and specs[order[next_spec]].arrival_step <= step:
            i = order[next_spec]
            router.add(make_request(i, specs[i]))
            next_spec += 1
        for action in [a for a in pending_aborts if a[0] <= step]:
            request_id = pick_abort_target(router, *action[1:])
            if request_id is None:
                continue
            pending_aborts.remove(action)
            req = router.abort(request_id)
            if req is not None:
                result.paused_aborts += req.num_pauses > 0 and req.num_computed == 0
                assert req.status is RequestStatus.FINISHED and req.slots == [] and req.row is None
                result.reasons[req.request_id] = "abort"
                result.outputs[req.request_id] = list(req.output_ids)
        check_invariants(router)
        waiting_before = list(router.waiting)
        prefilling_before = [r for r in router.running.values() if r.is_prefilling]
        num_decodable_before = len(decodable(router))
        head_fit_before, pauses_before = head_admissible(router), router.total_pauses
        batch = router.schedule()
        step += 1
        resolve, in_flight = in_flight, []
        if batch is None:
            resolve_ids(router, specs, resolve, result)
            assert in_flight or resolve or not router.has_work()
            continue
        check_batch(
            router, batch, waiting_before, prefilling_before, num_decodable_before, decodes_since_prefill,
            head_fit_before, router.total_pauses > pauses_before,
        )  # fmt: skip
        decodes_since_prefill = 0 if batch.is_prefill else decodes_since_prefill + 1
        result.kinds.append(batch.kind)
        result.max_running = max(result.max_running, len(router.running))
        sampled = []
        for seq in batch.seqs:
            req = seq.request
            if seq.samples:
                sampled.append((req, len(req.output_ids), fake_token(req)))
                router.append_token(req, PLACEHOLDER if overlap else sampled[-1][2])
        resolve_ids(router, specs, resolve, result)  # the previous step's ids, after this one is queued
        if overlap:
            in_flight = sampled
        else:
            resolve_ids(router, specs, sampled, result)
        check_invariants(router)
    cached = cache_slots(router)
    assert router.slot_allocator.num_free + len(cached) == router.num_slots
    assert router.cache is None or router.cache.num_locked == 0
    assert router.row_allocator.num_free == router.row_allocator.size
    assert not router.waiting and not router.running
    assert len(result.reasons) == len(specs)  # every request finished or was aborted
    return result


PLACEHOLDER = -1


def resolve_ids(router: Router, specs: list[Spec], sampled: list[tuple[Request, int, int]], result: SimResult) -> None:
    """The ids of a step become known: fill them in, finish requests that end on them."""
    for req, index, token in sampled:
        if req.status is not RequestStatus.RUNNING:
            continue  # aborted, or finished on an earlier id (this one is dropped)
        req.output_ids[index] = token
        spec = specs[int(req.request_id[1:])]
        n = index + 1
        reason = "length" if n == spec.max_tokens else "stop" if n == spec.eos_after else None
        if reason is not None:
            router.finish(req, reason, num_output=n)
            result.reasons[req.request_id] = reason
            result.outputs[req.request_id] = list(req.output_ids)


def expected_output(i: int, spec: Spec) -> list[int]:
    req = make_request(i, spec)
    n = spec.max_tokens if spec.eos_after is None else spec.eos_after
    for _ in range(n):
        req.output_ids.append(fake_token(req))
    return req.output_ids


@st.composite
def workloads(draw, max_pool: int = 80, max_arrival: int = 30, crowded: bool = False):
    """crowded: several long requests at once and room for many to run (pauses likely)."""
    num_slots = draw(st.integers(4, max_pool))
    specs = []
    for _ in range(draw(st.integers(3 if crowded else 1, 10))):
        max_tokens = draw(st.integers(min(num_slots // 2, 24) if crowded else 1, min(24, num_slots - 1)))
        prompt_len = draw(st.integers(1, min(40, num_slots - max_tokens)))
        eos_after = None if crowded else draw(st.none() | st.integers(1, max_tokens))
        shared = draw(st.integers(0, prompt_len))
        specs.append(
            Spec(draw(st.integers(0, max_arrival)), prompt_len, max_tokens, eos_after, shared, draw(st.integers(0, 2)))
        )
    config = dict(
        num_slots=num_slots,
        max_running_requests=draw(st.integers(4 if crowded else 1, 8)),
        max_prefill_tokens=draw(st.integers(1, 64)),
        max_model_len=num_slots + draw(st.integers(0, 4)),
        decode_steps_per_prefill=draw(st.integers(0, 5)),
        prefix_cache=draw(st.booleans()),
        mixed_prefill_tokens=draw(st.sampled_from([0, 0, 1, 8, 64])),
    )
    return config, specs


@SETTINGS
@given(workloads(), st.booleans())
def test_exact_budgets_never_pause_and_every_request_finishes(workload, overlap):
    config, specs = workload
    router = Router(**config, lookahead=int(overlap))
    result = simulate(router, specs, overlap=overlap)
    assert router.total_pauses == 0
    for i, spec in enumerate(specs):
        assert result.outputs[f"r{i}"] == expected_output(i, spec)
        assert result.reasons[f"r{i}"] == ("length" if spec.eos_after in (None, spec.max_tokens) else "stop")


@SETTINGS
@given(workloads(max_pool=40, max_arrival=4, crowded=True) | workloads(max_pool=40), st.floats(0.05, 1.0))
def test_optimistic_mode_pauses_but_produces_the_same_tokens(workload, ratio):
    config, specs = workload
    router = Router(**config, optimistic=True, optimistic_ratio=ratio)
    result = simulate(router, specs)
    for i, spec in enumerate(specs):
        assert result.outputs[f"r{i}"] == expected_output(i, spec)


@SETTINGS
@given(
    workloads(max_pool=40, max_arrival=4, crowded=True) | workloads(max_pool=40),
    st.booleans(),
    st.lists(
        st.tuples(st.integers(0, 60), st.sampled_from(["id", "running", "waiting", "paused"]), st.integers(0, 9)),
        max_size=8,
    ),
)
def test_aborts_at_any_point_free_everything(workload, optimistic, abort_list):
    # Optimistic: the plain loop; exact budgets: the overlapped loop (aborts land while a step's ids are unseen).
    config, specs = workload
    router = Router(**config, optimistic=optimistic, optimistic_ratio=0.2, lookahead=int(not optimistic))
    aborts = [(step, where, i % len(specs)) for step, where, i in abort_list]
    simulate(router, specs, aborts, overlap=not optimistic)
    assert router.abort("r0") is None  # already gone


def crowded_specs() -> list[Spec]:
    return [Spec(0, 4, 30, None) for _ in range(4)] + [Spec(1, 3, 10, None) for _ in range(2)]


def test_optimistic_small_pool_pauses_newest_and_matches_exact_run():
    specs = crowded_specs()
    exact = simulate(Router(40, 8, 64, 64), specs)
    router = Router(40, 8, 64, 64, optimistic=True, optimistic_ratio=0.1)
    optimistic = simulate(router, specs)
    assert router.total_pauses > 0
    assert optimistic.outputs == exact.outputs == {f"r{i}": expected_output(i, s) for i, s in enumerate(specs)}
    # Exact budgets run one 4 + 30 request at a time in 40 slots; the estimate admits more.
    assert optimistic.max_running > exact.max_running


def test_pause_order_and_abort_of_a_paused_request():
    router = Router(40, 8, 64, 64, decode_steps_per_prefill=100, optimistic=True, optimistic_ratio=0.1)
    reqs = [make_request(i, s) for i, s in enumerate(crowded_specs()[:4])]
    for req in reqs:
        router.add(req)
    while router.total_pauses == 0:
        batch = router.schedule()
        for seq in batch.seqs:
            router.append_token(seq.request, fake_token(seq.request))
    # 4 requests of 4 + g tokens outgrow 40 slots; the newest (r3) is paused first.
    assert [r.request_id for r in router.waiting] == ["r3"]
    assert router.stats()["paused"] == 1 and reqs[3].is_paused and reqs[3].slots == []
    assert router.abort("r3") is reqs[3] and reqs[3].finish_reason == "abort"
    assert router.stats()["paused"] == 0
    for req in reqs[:3]:
        router.finish(req, "stop")
    assert router.stats()["slots_used"] == 0 and router.row_allocator.num_free == 8


def test_prefill_batches_respect_token_budget_and_policy():
    router = Router(1000, 16, 10, 1000, decode_steps_per_prefill=2)
    for i, n in enumerate([25, 4, 4, 4, 3]):
        router.add(make_request(i, Spec(0, n, 50, None)))
    kinds, sizes, samples = [], [], []
    for _ in range(8):
        batch = router.schedule()
        kinds.append(batch.kind)
        sizes.append([len(s.new_token_ids) for s in batch.seqs])
        samples.append([s.samples for s in batch.seqs])
        for seq in batch.seqs:
            if seq.samples:
                router.append_token(seq.request, 1)
    # The 25-token prompt runs in chunks of 10 + 10 + 5 and nothing can decode meanwhile; the last
    # chunk shares its step with the next prompts (4, and the first token of the third). Then two
    # decode steps, and the rest of the third prompt goes first in the next prefill, then 4 + 3.
    assert kinds == ["prefill", "prefill", "prefill", "decode", "decode", "prefill", "decode", "decode"]
    assert sizes[:3] == [[10], [10], [5, 4, 1]] and sizes[5] == [3, 4, 3]
    assert samples[:3] == [[False], [False], [True, True, False]] and samples[5] == [True, True, True]
    assert sizes[3] == [1, 1] and sizes[6] == [1] * 5


def test_a_long_prompt_does_not_stall_decoding():
    # A running request keeps decoding while a later 95-token prompt is prefilled 10 tokens at a
    # time: one chunk per two decode steps.
    router = Router(1000, 4, 10, 1000, decode_steps_per_prefill=2)
    router.add(make_request(0, Spec(0, 3, 100, None)))
    batch = router.schedule()
    router.append_token(batch.seqs[0].request, 1)
    router.add(make_request(1, Spec(0, 95, 10, None)))
    kinds = []
    while len(router.running) < 2 or router.running["r1"].is_prefilling:
        batch = router.schedule()
        kinds.append(batch.kind)
        for seq in batch.seqs:
            if seq.samples:
                router.append_token(seq.request, 1)
    assert kinds == ["decode", "decode", "prefill"] * 9 + ["decode", "decode", "prefill"]
    assert router.running["r0"].output_ids == [1] * 21 and router.running["r1"].output_ids == [1]


def test_row_limit_and_schedule_idle():
    router = Router(100, 2, 100, 100, decode_steps_per_prefill=0)
    assert router.schedule() is None
    for i in range(3):
        router.add(make_request(i, Spec(0, 2, 3, None)))
    batch = router.schedule()
    assert batch.kind == "prefill" and len(batch.seqs) == 2
    assert router.stats() == dict(
        slots_total=100,
        slots_used=4,
        slots_cached=0,
        prefix_cache_hit_tokens_total=0,
        running=2,
        waiting=1,
        paused=0,
        total_pauses=0,
    )


def test_add_rejects_requests_that_can_never_run():
    # The context (max_model_len) is the engine's check (request_checks.context_problem); the router knows the pool.
    router = Router(num_slots=20, max_running_requests=4, max_prefill_tokens=8, max_model_len=64)
    with pytest.raises(ValueError, match="KV pool"):
        router.add(make_request(0, Spec(0, 15, 6, None)))
    with pytest.raises(ValueError, match="empty prompt"):
        router.add(make_request(1, Spec(0, 0, 6, None)))
    router.add(make_request(2, Spec(0, 15, 5, None)))  # exactly the pool
    with pytest.raises(ValueError, match="duplicate"):
        router.add(make_request(2, Spec(0, 1, 1, None)))
    assert router.stats()["waiting"] == 1


def test_finish_and_append_token_require_a_running_request():
    router = Router(20, 2, 8, 20)
    req = make_request(0, Spec(0, 2, 2, None))
    router.add(req)
    with pytest.raises(ValueError):
        router.append_token(req, 1)
    with pytest.raises(ValueError):
        router.finish(req, "stop")


def test_image_prompts_are_chunked_like_text():
    # An image request's prompt is prefilled max_prefill_tokens at a time too (the runner gives each
    # chunk the embedding rows of its image tokens), next to a text request admitted in the same step.
    router = Router(num_slots=100, max_running_requests=4, max_prefill_tokens=8, max_model_len=64)
    image = make_request(0, Spec(0, 20, 2, None))
    image.image_embeds = object()  # opaque to the router
    text = make_request(1, Spec(0, 5, 2, None))
    router.add(image)
    router.add(text)
    chunks = []
    while image.is_prefilling or image.status != RequestStatus.RUNNING:
        batch = router.schedule()
        assert batch.kind == "prefill" and batch.num_tokens <= 8
        for seq in batch.seqs:
            if seq.request is image:
                chunks.append((seq.prefix_len, len(seq.new_token_ids), seq.samples))
    assert chunks == [(0, 8, False), (8, 8, False), (16, 4, True)]
