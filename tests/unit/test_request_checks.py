"""The engine's request checks: the context rule shared with preprocess."""

from __future__ import annotations

from llm_core.request_checks import context_problem


def test_context_problem_names_the_field():
    assert context_problem(32, 10, 22) is None
    assert context_problem(32, 32, 1) == ("prompt", "is 32 tokens long; the model's context is 32 tokens")
    field, message = context_problem(32, 10, 23)
    assert field == "max_tokens"
    assert message == "23 exceeds the room left in the model's context (32 - 10 prompt tokens = 22)"
