// bkg's Web UI: relative times, copy buttons, confirmations, the one-time login token, and a
// run's output streamed live. Output is only ever put in the page as text (textContent).
"use strict";

function relative(ms) {
  const seconds = Math.round((ms - Date.now()) / 1000);
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const steps = [[60, "second"], [60, "minute"], [24, "hour"], [30, "day"], [12, "month"], [Infinity, "year"]];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return format.format(value, unit);
    value = Math.round(value / size);
  }
  return "";
}

function relativeTimes() {
  for (const element of document.querySelectorAll("time[data-rel]")) {
    const ms = Date.parse(element.getAttribute("datetime"));
    if (!Number.isNaN(ms)) element.textContent = relative(ms);
  }
}

function copyButtons() {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    try {
      await navigator.clipboard.writeText(button.dataset.copy);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
}

function confirmations() {
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
}

// `bkg ui` opens /ui/login#token=…: the fragment never reaches a server; it is posted once.
function tokenLogin() {
  const form = document.getElementById("token-form");
  const match = /^#token=([0-9a-f]+)$/.exec(window.location.hash);
  if (!form || !match) return;
  history.replaceState(null, "", window.location.pathname);
  form.elements.token.value = match[1];
  form.submit();
}

// Terminal output as text: SGR colours become classes, every other control sequence is shown.
const ESC = "\u001b";
function picture(ch) {
  const code = ch.charCodeAt(0);
  if (code === 0x7f) return "\u2421";
  return String.fromCharCode(0x2400 + code);
}
function visible(text) {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, picture);
}
class Terminal {
  constructor(pre) { this.pre = pre; this.fg = null; this.bold = false; this.pending = ""; }
  sgr(params) {
    for (const part of (params === "" ? "0" : params).split(";")) {
      const code = Number(part || "0");
      if (code === 0) { this.fg = null; this.bold = false; }
      else if (code === 1) this.bold = true;
      else if (code === 22) this.bold = false;
      else if (code >= 30 && code <= 37) this.fg = code - 30;
      else if (code === 39) this.fg = null;
      else if (code >= 90 && code <= 97) this.fg = code - 90 + 8;
    }
  }
  emit(text, stream) {
    if (!text) return;
    const span = document.createElement("span");
    const classes = [];
    if (stream === "stderr") classes.push("stderr");
    if (this.fg !== null) classes.push("ansi-" + this.fg);
    if (this.bold) classes.push("ansi-bold");
    if (classes.length) span.className = classes.join(" ");
    span.textContent = text;
    this.pre.appendChild(span);
  }
  write(chunk, stream) {
    let text = this.pending + chunk;
    this.pending = "";
    let plain = "";
    let index = 0;
    while (index < text.length) {
      const ch = text[index];
      if (ch === ESC && text[index + 1] === "[") {
        const rest = text.slice(index + 2);
        const match = /^([\u0030-\u003f]*[\u0020-\u002f]*)([\u0040-\u007e])/.exec(rest);
        if (!match) { if (rest.length < 32) { this.pending = text.slice(index); break; } plain += visible(ESC) + "["; index += 2; continue; }
        if (match[2] === "m" && /^[0-9;]*$/.test(match[1])) {
          this.emit(visible(plain), stream); plain = "";
          this.sgr(match[1]);
        } else {
          plain += visible(ESC + "[" + match[0]);
        }
        index += 2 + match[0].length;
        continue;
      }
      plain += ch;
      index += 1;
    }
    this.emit(visible(plain), stream);
  }
}

function parseEvents(buffer, onEvent) {
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data.push(line.slice(6));
    }
    onEvent(name, data.join("\n"));
  }
  return buffer;
}

function runForm() {
  const form = document.getElementById("run-form");
  if (!form) return;
  const output = document.getElementById("run-output");
  const summary = document.getElementById("run-summary");
  const live = document.getElementById("run-live");
  const button = document.getElementById("run-button");
  form.elements.code.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    live.hidden = false;
    output.textContent = "";
    summary.textContent = "Running…";
    button.disabled = true;
    const terminal = new Terminal(output);
    const body = new URLSearchParams(new FormData(form));
    try {
      const response = await fetch(form.action, {
        method: "POST", body, credentials: "same-origin",
        headers: { "x-csrf-token": form.elements.csrf.value, "accept": "text/event-stream" },
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), (name, data) => {
          const payload = JSON.parse(data);
          if (name === "stdout" || name === "stderr") terminal.write(payload, name);
          else if (name === "started") { summary.textContent = "Running " + payload + "…"; summary.dataset.run = payload; }
          else if (name === "result") showResult(summary, payload);
          else if (name === "error") { summary.textContent = "Error: " + payload; summary.className = "error"; }
        });
      }
    } catch (error) {
      summary.textContent = "The connection to the agent was lost: " + error;
    } finally {
      button.disabled = false;
    }
  });
}

function showResult(summary, result) {
  summary.textContent = "";
  summary.className = "";
  const ended = result.killed_by ? "killed by " + result.killed_by
    : result.exit_code !== null ? "exit code " + result.exit_code : "signal " + result.signal;
  const strong = document.createElement("strong");
  strong.textContent = ended;
  strong.id = "run-exit";
  summary.appendChild(strong);
  summary.appendChild(document.createTextNode(
    " · wall " + result.wall + " · CPU " + result.cpu + " · peak memory " + result.peak_memory +
    (result.truncated ? " · output truncated" : "") + " · "));
  const link = document.createElement("a");
  link.href = "/ui/runs/" + encodeURIComponent(result.id);
  link.textContent = "run " + result.id;
  summary.appendChild(link);
}

document.addEventListener("DOMContentLoaded", () => {
  relativeTimes();
  copyButtons();
  confirmations();
  tokenLogin();
  runForm();
});
