"""A child process on a pseudo-terminal: send keys, wait for text (the chat tests' terminal)."""

from __future__ import annotations

import os
import pty
import select
import sys
import time


class PtyChild:
    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a terminal on stdin/stdout/stderr
            os.execve(sys.executable, [sys.executable, *argv], env)
        self.output = ""

    def send(self, data: str | bytes) -> None:
        data = data.encode() if isinstance(data, str) else data
        for start in range(0, len(data), 4096):  # the pty's buffer is small: let the child read as we write
            os.write(self.fd, data[start:start + 4096])
            self._read(0.005)

    def _read(self, wait: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            try:
                self.output += os.read(self.fd, 1 << 16).decode("utf-8", "replace")
            except OSError:  # the child closed the terminal
                pass

    def expect(self, text: str, timeout: float = 60.0, start: int = 0) -> int:
        """Wait until `text` appears after position `start`; returns the position just past it."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, start)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen in {timeout} s; output so far: {self.output[-2000:]!r}")
            self._read(0.05)
        return found + len(text)

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"the child did not exit; output: {self.output[-2000:]!r}")
