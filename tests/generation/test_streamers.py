"""TextStreamer / TextIteratorStreamer: fed the same puts as transformers' streamers, they produce the same
text, never a piece with U+FFFD, and the prompt handling (skip_prompt) and batch errors behave the same."""

from __future__ import annotations

import queue
import threading

import pytest
import torch
import transformers

from tokenmill.generation.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer

PROMPT = "<|im_start|>user\nSay something 中文 😀<|im_end|>\n<|im_start|>assistant\n"
REPLY = "Sure! Voilà: café, 中文测试, emoji 😀🎉👍🏽 and a\nnew line.<|im_end|>"


@pytest.fixture(scope="module")
def ids(hf_smollm2_tokenizer):
    tok = hf_smollm2_tokenizer
    return tok.encode(PROMPT, add_special_tokens=False), tok.encode(REPLY, add_special_tokens=False)


def feed(streamer, prompt, reply, step_shape="1d"):
    streamer.put(torch.tensor([prompt]))
    for token in reply:
        streamer.put(torch.tensor([token]) if step_shape == "1d" else torch.tensor([[token]]))
    streamer.end()


@pytest.mark.parametrize("skip_prompt", [False, True])
@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_text_streamer_matches_transformers(capsys, hf_smollm2_tokenizer, ids, skip_prompt, skip_special_tokens):
    tok = hf_smollm2_tokenizer
    prompt, reply = ids
    feed(TextStreamer(tok, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens), prompt, reply)
    ours = capsys.readouterr().out
    feed(transformers.TextStreamer(tok, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens),
         prompt, reply)
    theirs = capsys.readouterr().out
    assert ours == theirs
    shown = reply if skip_prompt else prompt + reply
    assert ours == tok.decode(shown, skip_special_tokens=skip_special_tokens) + "\n"


def test_text_streamer_prints_incrementally(hf_smollm2_tokenizer, ids):
    pieces = []

    class Recording(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            pieces.append((text, stream_end))

    prompt, reply = ids
    feed(Recording(hf_smollm2_tokenizer, skip_prompt=True), prompt, reply, step_shape="2d")
    texts = [t for t, _ in pieces]
    assert len([t for t in texts if t]) > 10
    assert not any("\ufffd" in t for t in texts)
    assert pieces[-1][1] is True and sum(end for _, end in pieces) == 1
    assert "".join(texts) == hf_smollm2_tokenizer.decode(reply)


@pytest.mark.parametrize("skip_prompt", [False, True])
def test_iterator_streamer_from_a_thread(hf_smollm2_tokenizer, ids, skip_prompt):
    tok = hf_smollm2_tokenizer
    prompt, reply = ids
    ours = TextIteratorStreamer(tok, skip_prompt=skip_prompt, timeout=10)
    theirs = transformers.TextIteratorStreamer(tok, skip_prompt=skip_prompt, timeout=10)
    results = {}

    def consume(name, streamer):
        results[name] = list(streamer)

    threads = [threading.Thread(target=consume, args=(n, s)) for n, s in (("ours", ours), ("theirs", theirs))]
    for thread in threads:
        thread.start()
    producer = threading.Thread(target=lambda: (feed(ours, prompt, reply), feed(theirs, prompt, reply)))
    producer.start()
    producer.join(10)
    for thread in threads:
        thread.join(10)
    assert "".join(results["ours"]) == "".join(results["theirs"])
    assert "".join(results["ours"]) == tok.decode(reply if skip_prompt else prompt + reply)
    assert not any("\ufffd" in piece for piece in results["ours"])


def test_iterator_streamer_timeout(hf_smollm2_tokenizer):
    streamer = TextIteratorStreamer(hf_smollm2_tokenizer, timeout=0.05)
    with pytest.raises(queue.Empty):
        next(iter(streamer))


def test_streamer_reused_across_generations(hf_smollm2_tokenizer, ids):
    tok = hf_smollm2_tokenizer
    prompt, reply = ids
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    feed(streamer, prompt, reply)
    first = "".join(streamer)
    feed(streamer, prompt, reply[:5])
    second = "".join(streamer)
    assert first == tok.decode(reply) and second == tok.decode(reply[:5])


def test_batch_errors(hf_smollm2_tokenizer):
    for cls in (TextStreamer, TextIteratorStreamer):
        with pytest.raises(ValueError, match="batch size 1"):
            cls(hf_smollm2_tokenizer).put(torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match="batch size 1"):
        transformers.TextStreamer(hf_smollm2_tokenizer).put(torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(NotImplementedError):
        BaseStreamer().put(torch.tensor([1]))
