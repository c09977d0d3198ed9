// tokenmill's chat page: plain JavaScript, no dependencies, no build step.
// The conversation and the settings live in localStorage; answers stream from /v1/chat/completions.
"use strict";

// ---- storage ----

const STORAGE = { conversation: "tokenmill-chat:conversation", settings: "tokenmill-chat:settings" };
const SETTING_FIELDS = { systemPrompt: "system-prompt", temperature: "temperature", topP: "top-p",
  maxTokens: "max-tokens", apiKey: "api-key" };

function loadJson(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value === null ? fallback : value;
  } catch (error) {
    return fallback;  // a corrupt entry is forgotten, not fatal
  }
}

function saveJson(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (error) {
    showStatus(`Could not save in this browser: ${error.message}`);
  }
}

// ---- page state ----

const page = {};
let conversation = { messages: [] };  // {role, content, state?: "streaming" | "done" | "stopped"}
let running = null;  // {controller, message, element} while an answer streams
let modelName = null;

function $(id) { return document.getElementById(id); }

function showStatus(text) {
  page.status.textContent = text;
  page.status.hidden = !text;
}

function saveConversation() { saveJson(STORAGE.conversation, conversation); }

function saveSettings() {
  const settings = {};
  for (const [name, id] of Object.entries(SETTING_FIELDS)) settings[name] = $(id).value;
  saveJson(STORAGE.settings, settings);
}

function restoreSettings() {
  const settings = loadJson(STORAGE.settings, {});
  for (const [name, id] of Object.entries(SETTING_FIELDS)) {
    if (typeof settings[name] === "string") $(id).value = settings[name];
  }
}

function restoreConversation() {
  const stored = loadJson(STORAGE.conversation, null);
  const messages = stored && Array.isArray(stored.messages) ? stored.messages : [];
  const wellFormed = (m) => m && typeof m.content === "string" && (m.role === "user" || m.role === "assistant");
  conversation = { messages: messages.filter(wellFormed) };
  // an answer that was streaming when the page went away was cut there
  for (const message of conversation.messages) if (message.state === "streaming") message.state = "stopped";
}

// ---- rendering ----

function messageElement(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  if (message.role === "assistant") {
    // a reasoning model's thinking (reasoning_content), folded away; kept across re-renders so it stays open
    const reasoning = document.createElement("details");
    reasoning.className = "reasoning";
    reasoning.hidden = true;
    reasoning.append(Object.assign(document.createElement("summary"), { textContent: "Reasoning" }),
      Object.assign(document.createElement("div"), { className: "reasoning-text" }));
    element.appendChild(reasoning);
  }
  const content = document.createElement("div");
  content.className = "content";
  element.appendChild(content);
  fillMessage(element, message);
  return element;
}

function fillMessage(element, message) {
  element.dataset.state = message.state || "done";
  if (message.finish) element.dataset.finish = message.finish;
  const content = element.querySelector(".content");
  if (message.role === "assistant") {
    content.innerHTML = window.tokenmillMarkdown.render(message.content);  // escaped first: see markdown.js
    const reasoning = element.querySelector(".reasoning");
    reasoning.hidden = !message.reasoning;
    reasoning.querySelector(".reasoning-text").textContent = message.reasoning || "";
  } else {
    content.textContent = message.content;
  }
}

function renderConversation() {
  page.messages.replaceChildren(...conversation.messages.map(messageElement));
  scrollToEnd();
}

function scrollToEnd() { page.messages.scrollTop = page.messages.scrollHeight; }

function setRunning(isRunning) {
  page.send.disabled = isRunning;
  page.stop.disabled = !isRunning;
  page.newChat.disabled = isRunning;
}

// ---- talking to the server ----

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function numberSetting(id, name) {
  const text = $(id).value.trim();
  if (text === "") return undefined;  // the server's default
  const value = Number(text);
  if (!Number.isFinite(value)) throw new Error(`${name} must be a number, not ${JSON.stringify(text)}`);
  return value;
}

function requestBody(history) {
  const system = $("system-prompt").value.trim();
  const messages = history.map((m) => ({ role: m.role, content: m.content }));
  const body = {
    messages: system ? [{ role: "system", content: system }, ...messages] : messages,
    stream: true,
    temperature: numberSetting("temperature", "Temperature"),
    top_p: numberSetting("top-p", "Top p"),
    max_tokens: numberSetting("max-tokens", "Max tokens"),
  };
  if (modelName) body.model = modelName;
  return body;
}

// the server's error message, in OpenAI's shape or TGI's, with what to do about a missing key
async function describeFailure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const error = body.error;
    message = typeof error === "string" ? error : (error && error.message) || message;
  } catch (error) { /* not JSON: keep the status line */ }
  if (response.status === 401) {
    return `The server refused the request: ${message}. Enter the server's API key under Settings.`;
  }
  return `The server refused the request: ${message}`;
}

// SSE frames → choice 0's text deltas and finish reason, into `message`; returns true at [DONE]
function consumeEvents(buffer, message) {
  const frames = buffer.text.split("\n\n");
  buffer.text = frames.pop();
  for (const frame of frames) {
    for (const line of frame.split("\n")) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return true;
      const event = JSON.parse(data);
      if (event.error) throw new Error(typeof event.error === "string" ? event.error : event.error.message);
      const choice = event.choices && event.choices[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      if (delta.reasoning_content) message.reasoning = (message.reasoning || "") + delta.reasoning_content;
      if (delta.content) message.content += delta.content;
      if (choice.finish_reason) message.finish = choice.finish_reason;
    }
  }
  return false;
}

async function streamAnswer(response, message, element) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const buffer = { text: "" };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the connection closed before the answer ended");  // no [DONE]: cut short
    buffer.text += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    const following = page.messages.scrollHeight - page.messages.scrollTop - page.messages.clientHeight < 48;
    const finished = consumeEvents(buffer, message);
    fillMessage(element, message);
    if (following) scrollToEnd();  // a reader who scrolled up to read stays where they are
    saveConversation();  // a reload mid-answer keeps what arrived
    if (finished) return;
  }
}

async function send() {
  const text = page.prompt.value;
  if (!text.trim() || running) return;
  showStatus("");
  let body;
  const user = { role: "user", content: text };
  try {
    body = requestBody([...conversation.messages, user]);
  } catch (error) {
    showStatus(error.message);
    return;
  }
  const message = { role: "assistant", content: "", state: "streaming" };
  conversation.messages.push(user, message);
  page.messages.appendChild(messageElement(user));
  const element = messageElement(message);
  page.messages.appendChild(element);
  page.prompt.value = "";
  scrollToEnd();
  saveConversation();
  running = { controller: new AbortController(), message, element };
  setRunning(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: running.controller.signal,
    });
    if (!response.ok) throw new RefusedError(await describeFailure(response), response.status);
    await streamAnswer(response, message, element);
    message.state = "done";
  } catch (error) {
    if (error.name === "AbortError") {
      message.state = "stopped";
    } else if (error instanceof RefusedError || message.content === "") {
      // nothing was answered: take the turn back, the text returns to the input box
      conversation.messages.splice(conversation.messages.indexOf(user), 2);
      page.prompt.value = text;
      renderConversation();
      showStatus(error instanceof RefusedError ? error.message : `The request failed: ${error.message}`);
      if (error.status === 401) showSettings(true, "api-key");
    } else {
      message.state = "stopped";
      showStatus(`The answer was cut off: ${error.message}`);
    }
  } finally {
    running = null;
    setRunning(false);
    if (conversation.messages.includes(message)) fillMessage(element, message);
    saveConversation();
  }
}

class RefusedError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function stop() {
  if (running) running.controller.abort();  // closing the stream makes the server abort the request
}

function newChat() {
  if (running) return;
  conversation = { messages: [] };
  saveConversation();
  renderConversation();
  showStatus("");
  page.prompt.focus();
}

function showSettings(visible, focusId) {
  $("settings").hidden = !visible;
  $("settings-toggle").setAttribute("aria-expanded", String(visible));
  if (visible && focusId) $(focusId).focus();
}

async function loadModelName() {
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) return;
    const models = await response.json();
    modelName = models.data && models.data[0] ? models.data[0].id : null;
    page.modelName.textContent = modelName || "";
  } catch (error) { /* the name is only shown; requests go without it */ }
}

function start() {
  Object.assign(page, { messages: $("messages"), status: $("status"), prompt: $("prompt"), send: $("send"),
    stop: $("stop"), newChat: $("new-chat"), modelName: $("model-name") });
  restoreSettings();
  restoreConversation();
  renderConversation();
  for (const id of Object.values(SETTING_FIELDS)) $(id).addEventListener("input", saveSettings);
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  page.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
  });
  page.stop.addEventListener("click", stop);
  page.newChat.addEventListener("click", newChat);
  $("settings-toggle").addEventListener("click", () => showSettings($("settings").hidden));
  setRunning(false);
  loadModelName();
  page.prompt.focus();
}

document.addEventListener("DOMContentLoaded", start);
