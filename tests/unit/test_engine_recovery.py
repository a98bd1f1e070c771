"""resume_command: what a request continues with on fresh workers after a crash."""

from __future__ import annotations

from llm_core import SamplingParams
from llm_core.engine_recovery import Inflight, resume_command
from llm_core.worker.scheduler_loop import AddCommand


def test_nothing_delivered_resends_the_original():
    cmd = AddCommand("r", [1, 2, 3], SamplingParams(max_tokens=8))
    assert resume_command(Inflight(cmd)) is cmd


def test_delivered_tokens_join_the_prompt_and_shrink_the_budget():
    params = SamplingParams(max_tokens=8, min_tokens=5, stop=("x",), stop_token_ids=(7,))
    inflight = Inflight(AddCommand("r", [1, 2, 3], params), delivered=[9, 10, 11])
    resumed = resume_command(inflight)
    assert resumed.request_id == "r" and resumed.prompt_ids == [1, 2, 3, 9, 10, 11]
    assert resumed.params.max_tokens == 5 and resumed.params.min_tokens == 2
    assert resumed.params.stop == ("x",) and resumed.params.stop_token_ids == (7,)
    assert inflight.command.prompt_ids == [1, 2, 3] and inflight.num_prompt_tokens == 3  # unchanged


def test_min_tokens_never_goes_negative():
    inflight = Inflight(AddCommand("r", [1], SamplingParams(max_tokens=8, min_tokens=1)), delivered=[4, 5])
    assert resume_command(inflight).params.min_tokens == 0
