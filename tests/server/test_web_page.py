"""The chat page at GET /: its files come from the package with a strict content-security policy, and a real
browser (Debian's chromium driven by playwright) chats with a real server on loopback: the answer streams, Stop
aborts the request on the server, a reload restores the conversation, an API key is asked for and kept.

The browser tests fail (never skip) when chromium or playwright is missing: `make test` installs both (chromium
with apt-get; TOKENMILL_CHROMIUM names another binary). Only TOKENMILL_NO_BROWSER=1, which CI never sets, skips
them."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import httpx2
import pytest

from tokenmill.server.web_page import ASSET_TYPES, CONTENT_SECURITY_POLICY, asset_bytes

# generous: the machine may be shared; a healthy run takes a fraction of this
ANSWER_TIMEOUT_MS = 240_000
CONVERSATION_KEY = "tokenmill-chat:conversation"


# ---- the files ----

def test_get_root_is_the_page_and_it_loads_only_its_own_files(served):
    response = httpx2.get(f"{served.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.text == asset_bytes("chat.html").decode()
    addresses = re.findall(r'(?:src|href)="([^"]*)"', response.text)
    # data:, the empty icon
    assert sorted(addresses) == ["/static/chat.css", "/static/chat.js", "/static/markdown.js", "data:,"]
    assert "<script>" not in response.text  # no inline script: the policy would block it
    for name in ("chat.js", "markdown.js", "chat.css"):
        asset = httpx2.get(f"{served.url}/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"] == ASSET_TYPES[name]
        assert asset.content == asset_bytes(name)
        assert not re.search(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}/", asset.text), f"{name} names another site"


def test_the_page_loads_without_the_api_key_and_the_api_still_needs_it(smollm2, server_factory):
    """The key is typed into the page and sent with each API call: the page and its files are open."""
    running = server_factory(*smollm2, api_key="sekret")
    try:
        for path in ("/", "/static/chat.js", "/static/markdown.js", "/static/chat.css"):
            assert httpx2.get(f"{running.url}{path}").status_code == 200, path
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        assert httpx2.post(f"{running.url}/v1/chat/completions", json=body).status_code == 401
    finally:
        running.stop()


@pytest.mark.parametrize("name", ["nothing.js", "chat.html", "..%2Fapp.py", "web_page.py"])
def test_only_the_pages_files_are_served(served, name):
    rejected = _metric(served.url, 'tokenmill_requests_total{outcome="rejected"}', absent=0.0)
    response = httpx2.get(f"{served.url}/static/{name}")
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"
    assert _metric(served.url, 'tokenmill_requests_total{outcome="rejected"}', absent=0.0) == rejected


def test_closing_a_chat_stream_frees_its_sequence(served):
    """What Stop relies on, without a browser: a streamed chat completion whose client goes away is aborted."""
    engine = served.engine
    body = {"messages": [{"role": "user", "content": "Count from 1 to 500, one number per line."}],
            "max_tokens": 600, "temperature": 0, "stream": True}
    with httpx2.Client(timeout=ANSWER_TIMEOUT_MS / 1000) as client:
        with client.stream("POST", f"{served.url}/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
            assert engine.has_unfinished_requests() and engine.blocks.num_used_blocks > 0
        # leaving the block closes the connection mid-answer
    deadline = time.monotonic() + 30
    while engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.has_unfinished_requests() and engine.blocks.num_used_blocks == 0


# ---- the browser ----

@pytest.fixture(scope="module")
def browser():
    if os.environ.get("TOKENMILL_NO_BROWSER") == "1":
        pytest.skip("TOKENMILL_NO_BROWSER=1: the browser tests are switched off")
    executable = os.environ.get("TOKENMILL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (`make test` does it), or name one "
                    "with TOKENMILL_CHROMIUM=/path/to/chromium, or set TOKENMILL_NO_BROWSER=1 to skip the browser "
                    "tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    opened = context.new_page()
    errors = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # a blocked script or style (the content-security policy) is a console error; a refused request (401) is
    # the page's to explain, not an error of the page
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error"
              and not message.text.startswith("Failed to load resource") else None)
    yield opened
    context.close()
    assert not errors, f"the page raised or logged errors: {errors}"


def _fill_settings(page, **values) -> None:
    for field, value in values.items():
        page.fill(f"#{field.replace('_', '-')}", value)


def _ask(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _stored_messages(page) -> list[dict]:
    return page.evaluate(f"JSON.parse(localStorage.getItem({CONVERSATION_KEY!r})).messages")


def _record_answer_lengths(page) -> None:
    """Every change to the last answer's text, as its length, into window.answerLengths."""
    page.evaluate("""() => {
        window.answerLengths = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('.message.assistant .content');
            if (answers.length) window.answerLengths.push(answers[answers.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")


def _metric(url: str, name: str, absent: float | None = None) -> float:
    """A sample's value from /metrics; `absent` for a labelled counter not yet incremented (else it must exist)."""
    text = httpx2.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    if match is None:
        assert absent is not None, f"{name} is not in /metrics"
        return absent
    return float(match.group(1))


def test_an_answer_streams_in_and_equals_the_apis_answer(served, page):
    page.goto(served.url)
    _fill_settings(page, system_prompt="Answer in one short sentence.", temperature="0", top_p="0.9",
                   max_tokens="16")
    _record_answer_lengths(page)
    _ask(page, "What colour is the sky?")
    page.wait_for_selector('.message.assistant[data-state="done"]', timeout=ANSWER_TIMEOUT_MS)
    growing = sorted({length for length in page.evaluate("window.answerLengths") if length > 0})
    assert len(growing) >= 2, f"the answer appeared at once, not streamed: lengths {growing}"

    user, answer = _stored_messages(page)
    assert user == {"role": "user", "content": "What colour is the sky?"}
    assert answer["role"] == "assistant" and answer["state"] == "done" and answer["content"]
    # greedy: the page's assembled stream equals the API's own answer to the same request
    direct = httpx2.post(f"{served.url}/v1/chat/completions", timeout=ANSWER_TIMEOUT_MS / 1000, json={
        "messages": [{"role": "system", "content": "Answer in one short sentence."}, user],
        "temperature": 0, "top_p": 0.9, "max_tokens": 16})
    choice = direct.json()["choices"][0]
    assert choice["message"]["content"] == answer["content"]
    assert answer["finish"] == choice["finish_reason"]
    assert page.get_attribute(".message.assistant", "data-finish") == choice["finish_reason"]
    assert page.input_value("#prompt") == "" and page.is_enabled("#send") and not page.is_enabled("#stop")


def test_stop_aborts_the_request_on_the_server_and_reload_restores_the_conversation(served, page):
    cancelled_before = _metric(served.url, 'tokenmill_requests_total{outcome="cancelled"}', absent=0.0)
    page.goto(served.url)
    _fill_settings(page, temperature="0", max_tokens="600")
    _ask(page, "Count from 1 to 500, one number per line.")
    page.wait_for_function("() => { const a = document.querySelector('.message.assistant .content');"
                           " return a && a.textContent.length > 0; }", timeout=ANSWER_TIMEOUT_MS)
    engine = served.engine
    assert engine.has_unfinished_requests(), "the answer ended before Stop could be pressed"
    page.click("#stop")
    page.wait_for_selector('.message.assistant[data-state="stopped"]', timeout=10_000)

    deadline = time.monotonic() + 30
    while engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.has_unfinished_requests() and engine.blocks.num_used_blocks == 0
    assert _metric(served.url, "tokenmill_running_batch_size") == 0
    assert _metric(served.url, "tokenmill_kv_blocks_used") == 0
    assert _metric(served.url, 'tokenmill_requests_total{outcome="cancelled"}') == cancelled_before + 1

    stopped = _stored_messages(page)
    assert [m["role"] for m in stopped] == ["user", "assistant"] and stopped[1]["state"] == "stopped"
    shown = page.inner_text(".message.assistant .content")
    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.inner_text(".message.user .content") == "Count from 1 to 500, one number per line."
    assert page.inner_text(".message.assistant .content") == shown
    assert page.get_attribute(".message.assistant", "data-state") == "stopped"
    assert page.input_value("#max-tokens") == "600" and page.input_value("#temperature") == "0"

    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    page.reload()
    page.wait_for_load_state()
    assert page.locator(".message").count() == 0 and _stored_messages(page) == []
    assert page.input_value("#max-tokens") == "600"  # a new chat keeps the settings


def test_markdown_is_rendered_from_escaped_text(served, page):
    page.goto(served.url)
    render = lambda source: page.evaluate("source => window.tokenmillMarkdown.render(source)", source)  # noqa: E731

    assert render("<img src=x onerror=alert(1)> & <script>x</script>") == (
        "<p>&lt;img src=x onerror=alert(1)&gt; &amp; &lt;script&gt;x&lt;/script&gt;</p>")
    assert render("**bold**, *it*, _it_, snake_case_name, 2 * 3 * 4 and `a<b *c*`") == (
        "<p><strong>bold</strong>, <em>it</em>, <em>it</em>, snake_case_name, 2 * 3 * 4 and "
        "<code>a&lt;b *c*</code></p>")
    assert render("```python\nprint('<b>')\n\n**x**\n```\nafter") == (
        "<pre><code class=\"language-python\">print(&#39;&lt;b&gt;&#39;)\n\n**x**</code></pre><p>after</p>")
    assert render("```\nstill streaming") == "<pre><code>still streaming</code></pre>"
    assert render("- a\n- b\n  - c\n\n3. x\n4. y") == (
        "<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><ol start=\"3\"><li>x</li><li>y</li></ol>")
    assert render("1. one\n\n2. two") == "<ol><li>one</li><li>two</li></ol>"
    assert render("# Title\n> quoted *x*\n\nline one\nline two") == (
        "<h1>Title</h1><blockquote><p>quoted <em>x</em></p></blockquote><p>line one<br>line two</p>")
    assert render("Sizes:\n| name | size |\n|---|--:|\n| `a|` | **2** |\nafter") == (
        "<p>Sizes:</p><table><thead><tr><th>name</th><th>size</th></tr></thead><tbody><tr><td><code>a|</code>"
        "</td><td><strong>2</strong></td></tr></tbody></table><p>after</p>")
    assert render("[docs](https://example.com/a_b_c?x=1&y=2)") == (
        '<p><a href="https://example.com/a_b_c?x=1&amp;y=2" target="_blank" rel="noopener noreferrer">docs</a></p>')
    for unsafe in ("[x](javascript:alert(1))", "[x](data:text/html,hi)", "[x](//evil.test/)"):
        assert "<a" not in render(unsafe), unsafe
    # an address cannot leave its attribute: the quote arrives escaped
    broken_out = render('[x](https://a.test/"onmouseover="steal)')
    assert page.evaluate("""html => { const d = document.createElement('div'); d.innerHTML = html;
        return [...d.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name)); }""",
                         broken_out) == ["href", "target", "rel"]


def test_the_request_the_page_sends_and_what_it_shows_of_a_canned_stream(served, page):
    """The server's answers replaced by fixed SSE streams: reasoning deltas, content, then an error event; then a
    stream that ends without [DONE]."""
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"reasoning_content": "Greeted; "}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"reasoning_content": "<b>be</b> kind."}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": "Hello **there**"}, "finish_reason": None}]},
              {"error": {"message": "generation failed: out of memory", "type": "server_error"}}]
    cut_short = [{"choices": [{"index": 0, "delta": {"content": "Partial"}, "finish_reason": None}]}]
    sent = []

    def answer(route):
        sent.append((route.request.post_data_json, route.request.headers.get("authorization")))
        route.fulfill(status=200, headers={"content-type": "text/event-stream"},
                      body="".join(f"data: {json.dumps(event)}\n\n" for event in (cut_short if sent[1:] else events)))

    page.route("**/v1/chat/completions", answer)
    page.goto(served.url)
    page.wait_for_function("() => document.getElementById('model-name').textContent === 'smollm2'")
    _fill_settings(page, system_prompt="Be brief.", temperature="0.5", top_p="0.8", max_tokens="7", api_key="k1")
    _ask(page, "Hi")
    page.wait_for_selector('.message.assistant[data-state="stopped"]', timeout=10_000)
    assert sent == [({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                      "stream": True, "temperature": 0.5, "top_p": 0.8, "max_tokens": 7, "model": "smollm2"},
                     "Bearer k1")]
    assert page.text_content(".reasoning-text") == "Greeted; <b>be</b> kind."  # as text, never as markup
    assert page.is_visible(".message.assistant .reasoning summary")
    assert page.inner_html(".message.assistant .content") == "<p>Hello <strong>there</strong></p>"
    assert page.inner_text("#status") == "The answer was cut off: generation failed: out of memory"

    page.reload()
    assert page.text_content(".reasoning-text") == "Greeted; <b>be</b> kind."
    _fill_settings(page, system_prompt="")
    _ask(page, "Again")
    page.wait_for_selector('#messages > .message.assistant:nth-child(4)[data-state="stopped"]', timeout=10_000)
    # the history goes back without the reasoning, and without a system message once the prompt is empty
    assert sent[1][0]["messages"] == [{"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello **there**"},
                                      {"role": "user", "content": "Again"}]
    assert page.inner_text("#messages > .message:nth-child(4) .content") == "Partial"
    assert page.inner_text("#status") == "The answer was cut off: the connection closed before the answer ended"


def test_the_page_asks_for_the_api_key_and_keeps_it(smollm2, server_factory, page):
    running = server_factory(*smollm2, api_key="sekret", max_total_tokens=1024)
    try:
        page.goto(running.url)  # the page itself needs no key
        _fill_settings(page, max_tokens="4")
        _ask(page, "Hello")
        page.wait_for_selector("#status:not([hidden])", timeout=ANSWER_TIMEOUT_MS)
        status = page.inner_text("#status")
        assert "missing or wrong API key" in status and "Enter the server's API key under Settings" in status
        # nothing was answered: the turn is taken back and the text returns to the input box
        assert page.locator(".message").count() == 0 and page.input_value("#prompt") == "Hello"
        assert page.evaluate("document.activeElement.id") == "api-key"

        page.fill("#api-key", "sekret")
        page.press("#prompt", "Enter")
        page.wait_for_selector('.message.assistant[data-state="done"]', timeout=ANSWER_TIMEOUT_MS)
        assert page.is_hidden("#status") and page.inner_text(".message.assistant .content")
        page.reload()
        assert page.input_value("#api-key") == "sekret"
        assert page.locator(".message.assistant").count() == 1
    finally:
        running.stop()
