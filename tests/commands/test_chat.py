"""`tokenmill chat` on a terminal: Ctrl-C stops an answer and returns to the prompt with the history kept (the
partial answer included), the verbose tokens/s line, /save, /bye."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .pty_child import PtyChild

REPO = Path(__file__).resolve().parents[2]


def test_ctrl_c_stops_the_answer_and_keeps_the_conversation(tiny_chat_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "XDG_CACHE_HOME": str(tmp_path)}
    child = PtyChild(["-m", "tokenmill", "chat", str(tiny_chat_folder), "--max-new-tokens", "3000", "--verbose",
                      "--dtype", "float32"], env)
    position = child.expect("you> ", timeout=120)
    child.send("Tell me a long story.\r")
    position = child.expect("assistant> ", start=position)
    while len(child.output) < position + 40:  # some of the answer is on screen
        child._read(0.05)
    child.send("\x03")
    position = child.expect("(stopped; the partial answer stays in the conversation)", start=position)
    position = child.expect("tokens/s", start=position)
    position = child.expect("you> ", start=position)
    saved = tmp_path / "chat.json"
    child.send(f"/save {saved}\r")
    position = child.expect("saved 2 messages", start=position)
    child.send("/bye\r")
    assert child.wait() == 0
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Tell me a long story." and messages[1]["content"]
