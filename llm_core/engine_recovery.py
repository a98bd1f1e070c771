"""What the engine keeps per in-flight request so that a worker crash loses nothing.

The engine holds, for every request it has not finished, the command it was added with and the
token ids already delivered to the caller. After the workers restart it sends each one again
as a resumed request: prompt = original prompt + delivered tokens, `max_tokens` / `min_tokens`
reduced by the tokens already delivered. The new workers re-prefill that prompt and go on, so a
stream sees a pause, not an error, and greedy output equals an uninterrupted run.

Not identical after a resume (documented in docs/SERVING.md): seeded sampling (the generator
restarts from its seed), and presence/frequency penalties, which the worker counts over output
tokens only (the delivered tokens are prompt tokens for the resumed request).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from llm_core.worker.scheduler_loop import AddCommand

MAX_RESUMES = 2  # a request in flight at this many worker deaths fails (it may be what kills them)


@dataclass(slots=True)
class Inflight:
    """One request the engine has accepted and not yet finished."""

    command: AddCommand  # as the caller added it (original prompt and params)
    delivered: list[int] = field(default_factory=list)  # token ids already handed to the caller
    resumes: int = 0  # worker restarts this request has lived through
    aborted: bool = False  # the caller aborted it while the workers were down

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.command.prompt_ids)


def resume_command(inflight: Inflight) -> AddCommand:
    """The command that continues `inflight` on fresh workers (the original when nothing was delivered)."""
    cmd, done = inflight.command, len(inflight.delivered)
    if done == 0:
        return cmd
    params = cmd.params
    # done < max_tokens: the request would have finished with reason "length" otherwise.
    params = replace(params, max_tokens=params.max_tokens - done, min_tokens=max(0, params.min_tokens - done))
    return AddCommand(cmd.request_id, list(cmd.prompt_ids) + inflight.delivered, params, cmd.image_embeds)
