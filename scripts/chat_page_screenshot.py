"""The README's picture of the chat page: a real `tokenmill serve` (the embedded SmolLM2) on loopback, one question
typed into the page in headless chromium, the greedy answer streamed in, the window saved as a PNG.

    .venv/bin/python scripts/chat_page_screenshot.py [out=docs/images/chat_page.png] [chromium=/usr/bin/chromium]
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
from playwright.sync_api import sync_playwright

QUESTION = "Write a Python function that checks whether a number is prime, and explain it briefly."
SYSTEM_PROMPT = "You are a helpful coding assistant. Use markdown."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tokenmill serve exited with {server.returncode}")
        try:
            if httpx2.get(f"{url}/health").status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("tokenmill serve did not become healthy")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/chat_page.png")
    chromium = sys.argv[2] if len(sys.argv) > 2 else "/usr/bin/chromium"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tokenmill", "serve", "--port", str(port), "--threads", "1",
                               "--log-level", "warning"])
    try:
        wait_until_healthy(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(url)
            page.fill("#system-prompt", SYSTEM_PROMPT)
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "220")
            page.fill("#prompt", QUESTION)
            page.press("#prompt", "Enter")
            page.wait_for_selector('.message.assistant[data-state="done"]', timeout=600_000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
        print(f"wrote {out}")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
