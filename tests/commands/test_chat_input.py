"""Messages are read whole: a 67 KB multi-line paste on a terminal (bracketed paste through readline, raw mode, so
no 4,095-character canonical-mode cut), triple-quoted blocks and long lines from a pipe; the history file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .pty_child import PtyChild

REPO = Path(__file__).resolve().parents[2]
READ_TWO = ("from tokenmill.commands.chat_input import MessageReader\n"
            "reader = MessageReader()\n"
            "for _ in range(2):\n"
            "    message = reader.read('you> ')\n"
            "    print('\\nGOT', len(message), message.count(chr(10)), repr(message[-12:]), flush=True)\n")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "XDG_CACHE_HOME": str(tmp_path)}


def test_a_long_multi_line_paste_on_a_terminal_is_one_message(tmp_path):
    child = PtyChild(["-c", READ_TWO], _env(tmp_path))
    child.expect("you> ", timeout=30)
    paste = ("x" * 66 + " line\n") * 940 + "the end"  # 67 KB, 941 lines
    child.send("\x1b[200~" + paste + "\x1b[201~\r")
    after = child.expect(f"GOT {len(paste)} 940 'line\\nthe end'", timeout=60)
    child.expect("you> ", start=after)
    child.send("second message\r")
    child.expect("GOT 14 0 'cond message'", start=after)
    assert child.wait() == 0
    history = (tmp_path / "tokenmill" / "chat_history").read_text()
    assert "second message" in history


def test_a_pipe_reads_long_lines_whole_and_triple_quoted_blocks(tmp_path):
    long_line = "y" * 70_000
    stdin = f'{long_line}\n"""first line\nsecond line\nlast"""\n'
    result = subprocess.run([sys.executable, "-c", READ_TWO], input=stdin, capture_output=True, text=True,
                            env=_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("GOT")]
    assert lines == ["GOT 70000 0 'yyyyyyyyyyyy'", "GOT 27 2 'nd line\\nlast'"]


def test_up_arrow_recalls_the_previous_line_and_the_history_outlives_the_session(tmp_path):
    child = PtyChild(["-c", READ_TWO], _env(tmp_path))
    child.expect("you> ", timeout=30)
    child.send("first question\r")
    after = child.expect("GOT 14 0 'rst question'", timeout=30)
    child.expect("you> ", start=after)
    child.send("\x1b[A\r")  # up arrow, then Enter: the previous line again
    child.expect("GOT 14 0 'rst question'", start=after, timeout=30)
    assert child.wait() == 0

    later = PtyChild(["-c", READ_TWO], _env(tmp_path))  # a new session reads the history file
    later.expect("you> ", timeout=30)
    later.send("other\r")
    after = later.expect("GOT 5 0 'other'", timeout=30)
    later.expect("you> ", start=after)
    later.send("\x1b[A\x1b[A\r")  # two lines up: the last line of the first session
    later.expect("GOT 14 0 'rst question'", start=after, timeout=30)
    assert later.wait() == 0
