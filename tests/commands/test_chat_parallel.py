"""`tokenmill chat --tensor-parallel-size 2`: the ranks answer each turn together, the answer is one process's
(greedy), and Ctrl-C on the terminal (which reaches every rank: one process group) stops the answer on every
rank at the same token, so the next turn runs, and /bye ends every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .pty_child import PtyChild

REPO = Path(__file__).resolve().parents[2]


def _chat(folder: Path, extra: list[str], tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "tokenmill", "chat", str(folder), "--max-new-tokens", "12",
                           "--temperature", "0", "--dtype", "float32", *extra],
                          input="Name a colour.\nAnd another?\n", capture_output=True, text=True, env=env,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_ranks_answer_as_one_process(tiny_chat_folder, tmp_path):
    single = _chat(tiny_chat_folder, [], tmp_path)
    assert single.count("assistant> ") == 2
    assert _chat(tiny_chat_folder, ["--tensor-parallel-size", "2", "--threads-per-rank", "1"], tmp_path) == single


def test_ctrl_c_stops_every_rank_and_the_next_turn_runs(tiny_chat_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "XDG_CACHE_HOME": str(tmp_path)}
    child = PtyChild(["-m", "tokenmill", "chat", str(tiny_chat_folder), "--max-new-tokens", "3000",
                      "--dtype", "float32", "--tensor-parallel-size", "2", "--threads-per-rank", "1"], env)
    position = child.expect("you> ", timeout=120)
    child.send("Tell me a long story.\r")
    position = child.expect("assistant> ", start=position)
    while len(child.output) < position + 40:  # some of the answer is on screen
        child._read(0.05)
    child.send("\x03")
    position = child.expect("(stopped; the partial answer stays in the conversation)", start=position)
    position = child.expect("you> ", start=position)
    child.send("/set max_new_tokens 4\r")
    position = child.expect("you> ", start=position)
    child.send("Go on.\r")  # every rank is still in step: this turn's collectives complete
    position = child.expect("you> ", start=position + 1, timeout=60)
    saved = tmp_path / "chat.json"
    child.send(f"/save {saved}\r")
    position = child.expect("saved 4 messages", start=position)
    child.send("/bye\r")
    assert child.wait() == 0
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert all(m["content"] for m in messages)
