"""What the engine reports: a choice is finished once it has a reason, and a request counts every choice's tokens."""

from tokenmill.engine.outputs import CompletionOutput, RequestOutput


def _choice(index, token_ids, finish_reason=None):
    return CompletionOutput(index, "t", token_ids, "d", token_ids[-1:], finish_reason=finish_reason)


def test_a_choice_is_finished_only_with_a_reason():
    running = _choice(0, [1, 2])
    assert not running.finished
    assert (running.delta_logprobs, running.logprobs, running.stop_reason, running.seed) == ([], None, None, None)
    assert _choice(1, [1], "length").finished and _choice(1, [1], "abort").finished


def test_a_request_counts_the_tokens_of_every_choice():
    output = RequestOutput("r", [5, 6], [_choice(0, [1, 2, 3]), _choice(1, [4])], finished=False)
    assert output.num_generated_tokens == 4
    assert (output.num_cached_tokens, output.prompt_logprobs, output.error) == (0, None, None)
    assert RequestOutput("r", [5], [], finished=True).num_generated_tokens == 0
