"""What `tokenmill chat` reads: one message per prompt, read whole.

On a terminal, GNU readline gives line editing and a history file, and reads in raw mode, so a line is not cut
at the terminal's 4,095-character canonical-mode limit; with bracketed paste on, a multi-line paste arrives as
one message. Anywhere, a message between lines of triple quotes (\"\"\") spans several lines, as in Ollama.
From a pipe each line is one message, read whole.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import TokenmillError
from .common import require_valid_text

MULTILINE_FENCE = '"""'
HISTORY_LENGTH = 1000


def history_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "tokenmill" / "chat_history"


class MessageReader:
    """`read(prompt)` → one message (a str), EOFError at the end of input; the history file saved as it goes."""

    def __init__(self, interactive: bool | None = None):
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.readline = _setup_readline() if self.interactive else None

    def read(self, prompt: str) -> str:
        line = self._line(prompt)
        if not line.lstrip().startswith(MULTILINE_FENCE):
            return line
        return self._fenced(line.lstrip()[len(MULTILINE_FENCE):])

    def _fenced(self, first: str) -> str:
        """Lines up to the closing \"\"\" (the fence lines' own text kept), one message."""
        lines = [first]
        while not lines[-1].rstrip().endswith(MULTILINE_FENCE):
            lines.append(self._line("... "))
        lines[-1] = lines[-1].rstrip()[:-len(MULTILINE_FENCE)]
        return "\n".join(lines).strip("\n")

    def _line(self, prompt: str) -> str:
        try:
            line = input(prompt)
        except UnicodeDecodeError as error:  # a strict UTF-8 stdin
            raise TokenmillError(f"the line is not valid UTF-8 ({error.reason})") from None
        if self.readline is not None:
            _save_history(self.readline)
        return require_valid_text(line, "the line")  # a surrogateescape stdin


def _setup_readline():
    """readline with bracketed paste and the history file, or None where Python has no readline module."""
    try:
        import readline
    except ImportError:
        return None
    readline.parse_and_bind("set enable-bracketed-paste on")
    readline.set_history_length(HISTORY_LENGTH)
    try:
        readline.read_history_file(history_path())
    except OSError:  # no history yet
        pass
    return readline


def _save_history(readline) -> None:
    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError:  # a read-only home: history stays in memory
        pass
