"""generate()'s static-cache decode replayed from one captured graph (generation/static_graph.py), the CPU standing
in for CUDA graphs: the same logits as the eager static-cache decode (the same computation on the same buffers),
transformers' greedy tokens, one capture per generation, no Python length read inside the captured step, and the
cases it must leave eager (left padding, disable_compile, a failed capture)."""

from __future__ import annotations

import pytest
import torch
from decoding_fixtures import VOCAB, left_padded_prompts, save_tiny_llama

from tokenmill import AutoModelForCausalLM
from tokenmill.execution.graphs import EagerStandIn
from tokenmill.generation import static_graph

NEW = 10


class CountingStandIn(EagerStandIn):
    """The stand-in, counting captures and replays, and checking the captured forward leaves the cache lengths
    alone (in a CUDA graph no Python runs: the lengths advance outside it)."""

    def __init__(self, cache_of):
        self.captures, self.replays, self.cache_of = 0, 0, cache_of

    def capture(self, forward):
        self.captures += 1

        def checked():
            lengths = [layer.length for layer in self.cache_of().layers]
            output = forward()
            assert [layer.length for layer in self.cache_of().layers] == lengths
            self.replays += 1
            return output

        return super().capture(checked)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-static-graph")
    oracle = save_tiny_llama(folder, logit_scale=4.0)
    return oracle, AutoModelForCausalLM.from_pretrained(folder, progress=False)


@pytest.fixture
def stand_in(monkeypatch):
    caches = []
    capture = CountingStandIn(lambda: caches[-1])
    original = static_graph.StaticDecodeGraph.__init__

    def remember(self, model, cache, batch, capture_):
        caches.append(cache)
        original(self, model, cache, batch, capture_)

    monkeypatch.setattr(static_graph.StaticDecodeGraph, "__init__", remember)
    monkeypatch.setattr(static_graph, "graph_capture", lambda policy: capture)
    return capture


def _generate(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=NEW, cache_implementation="static", return_dict_in_generate=True,
                          output_logits=True, **kwargs)


def test_replayed_steps_give_the_eager_logits_and_transformers_tokens(tiny, stand_in):
    oracle, model = tiny
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    graphed = _generate(model, ids, do_sample=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(static_graph, "graph_capture", lambda policy: None)
        eager = _generate(model, ids, do_sample=False)
    assert torch.equal(graphed.sequences, eager.sequences)
    assert all(torch.equal(a, b) for a, b in zip(graphed.logits, eager.logits))
    expected = oracle.generate(ids, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
    assert torch.equal(graphed.sequences, expected)
    # the prefill runs eagerly; the NEW - 1 decode steps replay, the first after the stand-in's capture run
    assert stand_in.captures == 1 and stand_in.replays == 1 + (NEW - 1)


def test_seeded_sampling_is_unchanged(tiny, stand_in):
    _, model = tiny
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(11)
    graphed = _generate(model, ids, do_sample=True, top_k=20)
    assert stand_in.captures == 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(static_graph, "graph_capture", lambda policy: None)
        torch.manual_seed(11)
        eager = _generate(model, ids, do_sample=True, top_k=20)
    assert torch.equal(graphed.sequences, eager.sequences)


def test_padded_batches_and_disable_compile_stay_eager(tiny, stand_in):
    oracle, model = tiny
    ids, mask = left_padded_prompts()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(out, oracle.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                            min_new_tokens=6))
    plain = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(5))
    model.generate(plain, max_new_tokens=4, do_sample=False, cache_implementation="static", disable_compile=True)
    model.generate(plain, max_new_tokens=4, do_sample=False)  # the dynamic cache: nothing to capture
    assert stand_in.captures == 0


def test_a_failed_capture_decodes_eagerly_with_one_warning(tiny, monkeypatch):
    oracle, model = tiny

    class Failing:
        def capture(self, forward):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(static_graph, "graph_capture", lambda policy: Failing())
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(6))
    with pytest.warns(RuntimeWarning, match="decodes eagerly") as warned:
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, cache_implementation="static")
    assert len([w for w in warned if "decodes eagerly" in str(w.message)]) == 1
    assert torch.equal(out, oracle.generate(ids, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW))
