"""The engine's text for each choice (LLMEngine with a tokenizer: one printable character per token, the
char_tokenizer fixture): stop strings cut it where plain decoding reaches them, with or without the stop string,
and special tokens are kept or skipped as the request asks."""

from tokenmill.engine import EngineConfig, LLMEngine, SamplingParams

from engine_steps import run_to_completion

EOS = 95  # the char_tokenizer fixture's eos


def _run(engine, requests):
    """Each request's first (only) choice."""
    return {request_id: output.outputs[0] for request_id, output in run_to_completion(engine, requests).items()}


def _engine(tiny_model, char_tokenizer):
    return LLMEngine(tiny_model, char_tokenizer, EngineConfig(num_blocks=64, block_size=4), eos_token_ids=[EOS])


def test_stop_strings_cut_the_text_with_or_without_the_stop(tiny_model, char_tokenizer):
    prompt = list(char_tokenizer.encode("Once upon a time", add_special_tokens=False))
    free = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logit_bias={EOS: -100.0})
    reference = _run(_engine(tiny_model, char_tokenizer), {"free": (prompt, free)})["free"]
    assert len(reference.text) == 16 and reference.finish_reason == "length"
    stop = reference.text[6:8]
    cut = reference.text.index(stop)  # the first occurrence (it may begin before position 6)

    def stopping(include):
        return SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logit_bias={EOS: -100.0}, stop=[stop],
                              include_stop_str_in_output=include)

    finished = _run(_engine(tiny_model, char_tokenizer), {"cut": (prompt, stopping(False)),
                                                          "kept": (prompt, stopping(True))})
    for name, end in (("cut", cut), ("kept", cut + len(stop))):
        assert finished[name].text == reference.text[:end], name
        assert (finished[name].finish_reason, finished[name].stop_reason) == ("stop", stop), name
        assert finished[name].token_ids == reference.token_ids[:cut + len(stop)], name


def test_special_tokens_are_skipped_or_kept_as_asked(tiny_model, char_tokenizer):
    prompt = list(char_tokenizer.encode("abc", add_special_tokens=False))

    def eos_only(skip):  # every token is eos, and eos does not end the request
        return SamplingParams(max_tokens=3, temperature=0, ignore_eos=True, logit_bias={EOS: 100.0},
                              skip_special_tokens=skip)

    finished = _run(_engine(tiny_model, char_tokenizer), {"skip": (prompt, eos_only(True)),
                                                          "keep": (prompt, eos_only(False))})
    assert finished["skip"].token_ids == finished["keep"].token_ids == [EOS] * 3
    assert finished["skip"].text == "" and finished["keep"].text == "<eos>" * 3


def test_streamed_deltas_add_up_to_each_choices_output(tiny_model, char_tokenizer):
    """Each step reports what is new since the last report: the deltas of a choice, joined, are its final
    tokens, text and logprobs, and only the last report is finished."""
    prompt = list(char_tokenizer.encode("The end is", add_special_tokens=False))

    def params(stop):
        return SamplingParams(max_tokens=7, temperature=0.8, seed=2, n=2, logprobs=1, ignore_eos=True,
                              logit_bias={EOS: -100.0}, stop=stop)

    plain = _run(_engine(tiny_model, char_tokenizer), {"r": (prompt, params(None))})["r"]
    # a stop string that begins with the last character and is never generated ("\n" is no token here): the
    # last character is held back as a possible stop until the final report releases it
    engine = _engine(tiny_model, char_tokenizer)
    engine.add_request("r", prompt, params([plain.text[-1] + "\n"]))
    reports = []
    while engine.has_unfinished_requests():
        reports += [output for output in engine.step() if output.request_id == "r"]
    assert [report.finished for report in reports] == [False] * (len(reports) - 1) + [True]
    assert len(reports) > 2  # one report a step: the deltas are really split
    final = reports[-1].outputs
    assert final[0].text == plain.text and final[0].finish_reason == "length"
    for index, choice in enumerate(final):
        deltas = [report.outputs[index] for report in reports]
        assert [t for d in deltas for t in d.delta_token_ids] == choice.token_ids and len(choice.token_ids) == 7
        assert "".join(d.delta_text for d in deltas) == choice.text == char_tokenizer.decode(choice.token_ids)
        assert [lp for d in deltas for lp in d.delta_logprobs] == choice.logprobs and len(choice.logprobs) == 7
        assert [d.index for d in deltas] == [index] * len(deltas)
    assert final[0].token_ids != final[1].token_ids  # two choices, each its own
