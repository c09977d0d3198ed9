"""`tokenmill chat`'s conversation state and its slash commands (/help, /set, /show, /system, /save, /load, /clear,
/bye): each command changes the session and returns the line to show."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TokenmillError

# /set NAME VALUE: the parser and the check of each value (the same ranges generate() enforces)
SETTINGS = {
    "temperature": (float, lambda v: v >= 0, "at least 0 (0 is greedy)"),
    "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (int, lambda v: v >= 0, "at least 0 (0 is off)"),
    "min_p": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repetition_penalty": (float, lambda v: v > 0, "above 0"),
    "max_new_tokens": (int, lambda v: v >= 1, "at least 1"),
    "seed": (int, lambda v: v >= 0, "at least 0"),
}

HELP = """commands:
  /help                      this list
  /set                       show the parameters;  /set temperature 0.5  (also top_p, top_k, min_p,
                             repetition_penalty, max_new_tokens, seed);  /set verbose | /set quiet  (tokens/s line)
  /system TEXT               set the system message (/system alone removes it)
  /save FILE                 write the conversation as JSON;  /load FILE  reads one back
  /clear                     forget the conversation (the system message stays)
  /bye                       leave (also /quit, /exit, Ctrl-D)
  \"\"\"                        start and end a message of several lines
Ctrl-C stops the answer being written; the part already shown stays in the conversation."""


@dataclass
class ChatSession:
    args: argparse.Namespace  # the sampling flags, which /set changes
    system: str | None = None
    turns: list[dict] = field(default_factory=list)  # user and assistant messages, in order
    verbose: bool = False
    done: bool = False

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def parameters(self) -> dict:
        return {name: getattr(self.args, name) for name in SETTINGS if getattr(self.args, name) is not None}


def run_command(session: ChatSession, line: str) -> str:
    """Apply one /command; returns what to tell the user. A mistake raises TokenmillError (the session unchanged)."""
    name, _, rest = line.strip().partition(" ")
    handler = COMMANDS.get(name.lower())
    if handler is None:
        raise TokenmillError(f"unknown command {name!r}; /help lists them")
    return handler(session, rest.strip())


def _help(session: ChatSession, rest: str) -> str:
    return HELP


def _bye(session: ChatSession, rest: str) -> str:
    session.done = True
    return ""


def _clear(session: ChatSession, rest: str) -> str:
    session.turns.clear()
    return "(conversation cleared)"


def _system(session: ChatSession, rest: str) -> str:
    session.system = rest or None
    return f"(system message set: {rest!r})" if rest else "(system message removed)"


def _show(session: ChatSession, rest: str) -> str:
    shown = ", ".join(f"{name} {value}" for name, value in session.parameters().items())
    return (f"parameters: {shown or 'the defaults'}; verbose {'on' if session.verbose else 'off'}; "
            f"system {session.system!r}; {len(session.turns)} messages")


def _set(session: ChatSession, rest: str) -> str:
    name, _, value = rest.partition(" ")
    name, value = name.strip().lower().replace("-", "_"), value.strip()
    if not name:
        return _show(session, "")
    if name in ("verbose", "quiet"):
        session.verbose = name == "verbose"
        return f"(tokens/s line {'on' if session.verbose else 'off'})"
    if name == "system":
        return _system(session, value)
    if name not in SETTINGS:
        raise TokenmillError(f"/set knows {', '.join([*SETTINGS, 'verbose', 'quiet', 'system'])}, not {name!r}")
    parse, valid, expected = SETTINGS[name]
    try:
        parsed = parse(value)
    except ValueError:
        raise TokenmillError(f"/set {name} takes a {parse.__name__}, got {value!r}") from None
    if not valid(parsed):
        raise TokenmillError(f"/set {name}: the value must be {expected}, got {value}")
    setattr(session.args, name, parsed)
    if name == "seed":
        from ..generation.utils import set_seed

        set_seed(parsed)
    return f"(set {name} {parsed})"


def _save(session: ChatSession, rest: str) -> str:
    if not rest:
        raise TokenmillError("/save needs a file name, e.g. /save chat.json")
    document = {"messages": session.messages(), "parameters": session.parameters()}
    try:
        Path(rest).expanduser().write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    except OSError as error:
        raise TokenmillError(f"cannot write {rest}: {error.strerror}") from None
    return f"(saved {len(document['messages'])} messages to {rest})"


def _load(session: ChatSession, rest: str) -> str:
    if not rest:
        raise TokenmillError("/load needs a file name, e.g. /load chat.json")
    try:
        messages = json.loads(Path(rest).expanduser().read_text(encoding="utf-8"))["messages"]
    except OSError as error:
        raise TokenmillError(f"cannot read {rest}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise TokenmillError(f"{rest} is not a conversation saved by /save") from None
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in messages):
        raise TokenmillError(f"{rest}: every message needs a 'role' and a 'content' string")
    system = [m["content"] for m in messages if m["role"] == "system"]
    session.system = system[0] if system else None
    session.turns = [dict(m) for m in messages if m["role"] != "system"]
    return f"(loaded {len(messages)} messages from {rest})"


COMMANDS = {"/help": _help, "/?": _help, "/bye": _bye, "/quit": _bye, "/exit": _bye, "/clear": _clear,
            "/reset": _clear, "/system": _system, "/set": _set, "/show": _show, "/save": _save, "/load": _load}
