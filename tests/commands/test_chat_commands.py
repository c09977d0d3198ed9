"""The chat's slash commands on a session, without a model."""

from __future__ import annotations

import argparse
import json

import pytest

from tokenmill.commands.chat_commands import HELP, ChatSession, run_command
from tokenmill.errors import TokenmillError


def _session() -> ChatSession:
    args = argparse.Namespace(temperature=None, top_p=None, top_k=None, min_p=None, repetition_penalty=None,
                              max_new_tokens=256, seed=None)
    return ChatSession(args, system="Be brief.", turns=[{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}])


def test_set_changes_the_sampling_flags_and_verbose():
    session = _session()
    assert run_command(session, "/set temperature 0.5") == "(set temperature 0.5)"
    run_command(session, "/set top-k 40")
    run_command(session, "/set max_new_tokens 12")
    assert (session.args.temperature, session.args.top_k, session.args.max_new_tokens) == (0.5, 40, 12)
    run_command(session, "/set verbose")
    assert session.verbose
    run_command(session, "/set quiet")
    assert not session.verbose
    assert "temperature 0.5" in run_command(session, "/set") and "top_k 40" in run_command(session, "/show")


@pytest.mark.parametrize("line, message", [
    ("/set temperature hot", "takes a float"),
    ("/set top_p 1.5", "must be in (0, 1]"),
    ("/set max_new_tokens 0", "at least 1"),
    ("/set colour blue", "/set knows"),
    ("/frobnicate", "unknown command"),
    ("/save", "needs a file name"),
])
def test_mistakes_are_clear_and_change_nothing(line, message):
    session = _session()
    before = (vars(session.args).copy(), list(session.turns), session.system)
    with pytest.raises(TokenmillError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_command(session, line)
    assert (vars(session.args), session.turns, session.system) == before


def test_system_clear_and_bye():
    session = _session()
    run_command(session, "/system You are a poet.")
    assert session.messages()[0] == {"role": "system", "content": "You are a poet."}
    run_command(session, "/clear")
    assert session.messages() == [{"role": "system", "content": "You are a poet."}]
    run_command(session, "/system")
    assert session.messages() == []
    run_command(session, "/bye")
    assert session.done


def test_save_writes_the_conversation_and_load_reads_it_back(tmp_path):
    session = _session()
    run_command(session, "/set temperature 0.3")
    path = tmp_path / "chat.json"
    assert "saved 3 messages" in run_command(session, f"/save {path}")
    saved = json.loads(path.read_text())
    assert saved["messages"] == session.messages() and saved["parameters"]["temperature"] == 0.3
    fresh = ChatSession(_session().args)
    run_command(fresh, f"/load {path}")
    assert fresh.messages() == session.messages()
    path.write_text("{not json")
    with pytest.raises(TokenmillError, match="not a conversation"):
        run_command(fresh, f"/load {path}")


def test_help_names_every_command_with_an_example():
    for command in ("/help", "/set temperature 0.5", "/system", "/save FILE", "/clear", "/bye", "Ctrl-C"):
        assert command in HELP
