// bkg's Web UI: relative times, copy buttons, confirmations, the one-time login token, a run's
// output streamed live, the notebook's cells and the terminal page. Output is only ever put in
// the page as text (textContent).
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
// SGR parameters (`ESC[…m`) applied to a style: colour and bold, the rest ignored.
function sgr(style, params) {
  const codes = (params === "" ? "0" : params).split(";").map((part) => Number(part || "0"));
  for (let at = 0; at < codes.length; at++) {
    const code = codes[at];
    // 256 colours (38;5;N, the first 16 being the classes') and true colour (38;2;R;G;B), the
    // background's (48) not shown: their numbers are no codes of their own (ui/ansi.rs).
    if (code === 38 || code === 48) {
      let colour = null;
      if (codes[at + 1] === 5) { colour = codes[at + 2] < 16 ? codes[at + 2] : null; at += 2; }
      else if (codes[at + 1] === 2) { at += 4; }
      else { at += 1; }
      if (code === 38) style.fg = colour;
      continue;
    }
    if (code === 0) { style.fg = null; style.bold = false; }
    else if (code === 1) style.bold = true;
    else if (code === 22) style.bold = false;
    else if (code >= 30 && code <= 37) style.fg = code - 30;
    else if (code === 39) style.fg = null;
    else if (code >= 90 && code <= 97) style.fg = code - 90 + 8;
  }
}
function styleClasses(style) {
  const classes = [];
  if (style.fg !== null) classes.push("ansi-" + style.fg);
  if (style.bold) classes.push("ansi-bold");
  return classes;
}
class Terminal {
  constructor(pre) { this.pre = pre; this.fg = null; this.bold = false; this.pending = ""; }
  emit(text, stream) {
    if (!text) return;
    const span = document.createElement("span");
    const classes = styleClasses(this);
    if (stream === "stderr") classes.unshift("stderr");
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
          sgr(this, match[1]);
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

// The agent's reason for a refusal, from its body: the error event of a stream, or the API's
// JSON error (found by a new-user trial: "Refused (409): reload the page." hid "this sandbox's
// python session holds it: run code in its Notebook …", and reloading never helped).
async function refusalReason(response) {
  let text;
  try { text = await response.text(); } catch (error) { return null; }
  let reason = null;
  if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) {
    parseEvents(text + "\n\n", (name, data) => {
      if (name === "error" && reason === null) {
        try { reason = JSON.parse(data); } catch (error) { reason = data; }
      }
    });
    return typeof reason === "string" ? reason : null;
  }
  try { reason = JSON.parse(text).error.message; } catch (error) { return null; }
  return typeof reason === "string" ? reason : null;
}

// What stops an answer fetched by a page from being used, said in `line` (null when it can be):
// a session that ended while the page was open (the agent sends such a request to the login
// page, which says why), or a refusal.
async function showUnusable(line, response) {
  const login = response.redirected && new URL(response.url).pathname === "/ui/login" ? response.url : null;
  if (!login && response.ok) return false;
  const reason = login ? null : await refusalReason(response);
  line.textContent = login
    ? "Your session ended (its key was revoked, rotated or expired, or the agent restarted). "
    : reason
      ? "Refused: " + reason
      : "Refused (" + response.status + "): reload the page. ";
  line.className = "error";
  if (login) {
    const link = document.createElement("a");
    link.href = login;
    link.textContent = "Sign in again";
    line.appendChild(link);
  }
  return true;
}

// Reads a streamed answer of server-sent events to its end, calling onEvent(name, data).
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), onEvent);
  }
}

function runForm() {
  const form = document.getElementById("run-form");
  if (!form) return;
  const output = document.getElementById("run-output");
  const summary = document.getElementById("run-summary");
  const live = document.getElementById("run-live");
  const button = document.getElementById("run-button");
  indentsWithTab(form.elements.code);
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
      if (await showUnusable(summary, response)) return;
      await readEvents(response, (name, data) => {
        const payload = JSON.parse(data);
        if (name === "stdout" || name === "stderr") terminal.write(payload, name);
        else if (name === "started") { summary.textContent = "Running " + payload + "…"; summary.dataset.run = payload; }
        else if (name === "result") showResult(summary, payload);
        else if (name === "error") { summary.textContent = "Error: " + payload; summary.className = "error"; }
      });
    } catch (error) {
      summary.textContent = "The connection to the agent was lost: " + error;
    } finally {
      button.disabled = false;
    }
  });
}

// Tab in a code box indents by four spaces, as in an editor (found by a new-user trial: it left
// the box). Escape first lets the next Tab move on, so the keyboard is never trapped there.
function indentsWithTab(box) {
  let leaving = false;
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { leaving = true; return; }
    if (event.key !== "Tab" || event.shiftKey || event.ctrlKey || event.altKey || event.metaKey || leaving) {
      leaving = false;
      return;
    }
    event.preventDefault();
    box.setRangeText("    ", box.selectionStart, box.selectionEnd, "end");
  });
}

function showResult(summary, result) {
  summary.textContent = "";
  summary.className = "";
  const ended = result.killed ? result.killed
    : result.exit_code !== null ? "exit code " + result.exit_code : "signal " + result.signal;
  const strong = document.createElement("strong");
  strong.textContent = ended;
  strong.id = "run-exit";
  summary.appendChild(strong);
  summary.appendChild(document.createTextNode(
    // Nothing of the stream is cut: the result's `truncated` is of the copy it keeps, which the
    // run's page says (found by a new-user trial: "output truncated" under all of it).
    " · wall " + result.wall + " · CPU " + result.cpu + " · peak memory " + result.peak_memory + " · "));
  const link = document.createElement("a");
  link.href = "/ui/runs/" + encodeURIComponent(result.id);
  link.textContent = "run " + result.id;
  summary.appendChild(link);
}

// The notebook: cells run one after another in the sandbox's session, their events streamed back.
// A value or figure is shown by its text and, for images, as a PNG; never as HTML.
function showData(output, payload) {
  const data = payload.data || {};
  if (typeof data["image/png"] === "string") {
    const image = document.createElement("img");
    image.src = "data:image/png;base64," + data["image/png"];
    image.alt = typeof data["text/plain"] === "string" ? data["text/plain"] : "A figure";
    output.appendChild(image);
    output.appendChild(document.createTextNode("\n"));
    return;
  }
  if (typeof data["text/plain"] !== "string") return;
  const span = document.createElement("span");
  span.className = payload.type === "result" ? "result" : "display";
  span.textContent = visible(data["text/plain"]) + "\n";
  output.appendChild(span);
}

function notebook() {
  const book = document.getElementById("notebook");
  if (!book) return;
  const template = document.getElementById("cell-template");
  const cells = document.getElementById("cells");
  const csrf = document.querySelector("form[data-fetch] input[name=csrf]").value;
  let count = 0;

  async function runCell(cell) {
    const code = cell.querySelector(".cell-code");
    const output = cell.querySelector(".cell-output");
    const status = cell.querySelector(".cell-status");
    const run = cell.querySelector(".cell-run");
    output.hidden = false;
    output.textContent = "";
    status.textContent = "Running…";
    run.disabled = true;
    cell.dataset.state = "running";
    const terminal = new Terminal(output);
    try {
      const response = await fetch(book.dataset.execute, {
        method: "POST", credentials: "same-origin",
        body: new URLSearchParams({ session: book.dataset.session, code: code.value }),
        headers: { "x-csrf-token": csrf, "accept": "text/event-stream" },
      });
      if (await showUnusable(status, response)) { cell.dataset.state = "refused"; return; }
      await readEvents(response, (name, data) => {
        const payload = JSON.parse(data);
        if (name === "error") { status.textContent = "Refused: " + payload; cell.dataset.state = "refused"; return; }
        if (payload.type === "stream") terminal.write(payload.text, payload.name);
        else if (payload.type === "display" || payload.type === "result") showData(output, payload);
        else if (payload.type === "error") {
          const lines = payload.traceback.length ? payload.traceback : [payload.name + ": " + payload.message];
          terminal.write(lines.map((line) => (line.endsWith("\n") ? line : line + "\n")).join(""), "stderr");
        } else if (payload.type === "end") {
          status.textContent = "[" + payload.execution + "] " + payload.status;
          cell.dataset.state = payload.status;
          // Why the interpreter could not start (its packages failed to install).
          if (payload.error) terminal.write(payload.error + "\n", "stderr");
        }
      });
    } catch (error) {
      status.textContent = "The connection to the agent was lost: " + error;
    } finally {
      run.disabled = false;
    }
    if (cell === cells.lastElementChild && cell.dataset.state === "ok") addCell().querySelector(".cell-code").focus();
  }

  function addCell() {
    count += 1;
    const cell = template.content.firstElementChild.cloneNode(true);
    const code = cell.querySelector(".cell-code");
    code.id = "cell-" + count;
    const label = cell.querySelector(".cell-label");
    label.htmlFor = code.id;
    label.textContent = "Cell " + count;
    const output = cell.querySelector(".cell-output");
    output.setAttribute("aria-label", "Output of cell " + count);
    const run = cell.querySelector(".cell-run");
    run.setAttribute("aria-label", "Run cell " + count);
    run.addEventListener("click", () => runCell(cell));
    indentsWithTab(code);
    code.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey || event.shiftKey)) { event.preventDefault(); runCell(cell); }
    });
    cells.appendChild(cell);
    return cell;
  }

  document.getElementById("add-cell").addEventListener("click", () => addCell().querySelector(".cell-code").focus());
  addCell();
}

// Forms marked data-fetch (interrupt, restart) are posted without leaving the page, so the
// notebook's cells stay; their status line says what happened.
function fetchForms() {
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.dataset || !form.dataset.fetch) return;
    event.preventDefault();
    const status = document.getElementById("notebook-status");
    status.textContent = "…";
    try {
      const response = await fetch(form.action, {
        method: "POST", credentials: "same-origin", body: new URLSearchParams(new FormData(form)),
      });
      if (!(await showUnusable(status, response))) { status.textContent = form.dataset.fetch; status.className = ""; }
    } catch (error) {
      status.textContent = "The connection to the agent was lost: " + error;
    }
  });
}

// The terminal page's screen: the shell's output drawn as text. Finished lines scroll up; on the
// line being written, carriage return, backspace, cursor left and right, erase and delete work,
// colours and bold are kept, and every other escape sequence (titles, cursor moves to other lines,
// modes) is dropped: neither obeyed nor shown.
const SCREEN_LINES = 5000;
class Screen {
  constructor(pre) {
    this.pre = pre; this.cells = []; this.col = 0; this.fg = null; this.bold = false; this.pending = "";
    this.line = document.createElement("span");
    pre.appendChild(this.line);
  }
  put(ch) { this.cells[this.col] = { ch, cls: styleClasses(this).join(" ") }; this.col += 1; }
  draw() {
    this.line.textContent = "";
    let text = "";
    let cls = "";
    const flush = () => {
      if (!text) return;
      const span = document.createElement("span");
      if (cls) span.className = cls;
      span.textContent = text;
      this.line.appendChild(span);
      text = "";
    };
    for (let index = 0; index < this.cells.length; index += 1) {
      const cell = this.cells[index] || { ch: " ", cls: "" };
      if (cell.cls !== cls) { flush(); cls = cell.cls; }
      text += cell.ch;
    }
    flush();
  }
  newline() {
    this.draw();
    this.pre.appendChild(document.createTextNode("\n"));
    this.line = document.createElement("span");
    this.pre.appendChild(this.line);
    this.cells = [];
    this.col = 0;
    while (this.pre.childNodes.length > SCREEN_LINES * 2) this.pre.removeChild(this.pre.firstChild);
  }
  csi(params, final) {
    const count = Math.max(1, Number(params) || 1);
    if (final === "m" && /^[0-9;]*$/.test(params)) sgr(this, params);
    else if (final === "K" && (params === "" || params === "0")) this.cells.length = Math.min(this.cells.length, this.col);
    else if (final === "K" && params === "1") for (let index = 0; index < this.col; index += 1) this.cells[index] = undefined;
    else if (final === "K" && params === "2") this.cells = [];
    else if (final === "C") this.col += count;
    else if (final === "D") this.col = Math.max(0, this.col - count);
    else if (final === "G") this.col = count - 1;
    else if (final === "P") this.cells.splice(this.col, count);
    else if (final === "@") this.cells.splice(this.col, 0, ...new Array(count).fill(undefined));
  }
  write(chunk) {
    const text = this.pending + chunk;
    this.pending = "";
    let index = 0;
    while (index < text.length) {
      const ch = text[index];
      if (ch === ESC) {
        const next = text[index + 1];
        if (next === undefined) { this.pending = text.slice(index); break; }
        if (next === "[") {
          const match = /^\[([\u0030-\u003f]*)[\u0020-\u002f]*([\u0040-\u007e])/.exec(text.slice(index + 1));
          if (!match) {
            if (text.length - index < 64) { this.pending = text.slice(index); break; }
            index += 2;
            continue;
          }
          this.csi(match[1], match[2]);
          index += 1 + match[0].length;
          continue;
        }
        if (next === "]") {
          // An operating system command (a title, a link) ends at BEL or ESC \.
          const end = text.slice(index + 2).search(/\u0007|\u001b\\/);
          if (end < 0) {
            if (text.length - index < 4096) { this.pending = text.slice(index); break; }
            index += 2;
            continue;
          }
          index += 2 + end + (text[index + 2 + end] === "\u0007" ? 1 : 2);
          continue;
        }
        index += 2;
        continue;
      }
      if (ch === "\n") this.newline();
      else if (ch === "\r") this.col = 0;
      else if (ch === "\b") this.col = Math.max(0, this.col - 1);
      else if (ch === "\t") { do this.put(" "); while (this.col % 8 !== 0); }
      else if (ch === "\u0007") { /* the bell rings nowhere */ }
      else if (ch < " " || ch === "\u007f") this.put(picture(ch));
      else this.put(ch);
      index += 1;
    }
    this.draw();
    this.pre.scrollTop = this.pre.scrollHeight;
  }
}

// The terminal's size in character cells, from the screen's size and one character's.
function screenSize(pre) {
  const probe = document.createElement("span");
  probe.className = "term-probe";
  probe.textContent = "MMMMMMMMMM";
  pre.appendChild(probe);
  const box = probe.getBoundingClientRect();
  probe.remove();
  const width = box.width / 10 || 8;
  const height = box.height || 16;
  return {
    cols: Math.max(20, Math.min(500, Math.floor((pre.clientWidth - 24) / width))),
    rows: Math.max(5, Math.min(200, Math.floor((pre.clientHeight - 16) / height))),
  };
}

function terminalPage() {
  const pre = document.getElementById("term-screen");
  if (!pre) return;
  const form = document.getElementById("term-form");
  const input = document.getElementById("term-input");
  const status = document.getElementById("term-status");
  const reconnect = document.getElementById("term-reconnect");
  const encoder = new TextEncoder();
  let socket = null;

  function send(text) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(text));
  }
  function say(text, bad) {
    status.textContent = text;
    status.className = bad ? "error" : "";
  }
  function connect() {
    pre.textContent = "";
    const screen = new Screen(pre);
    const decoder = new TextDecoder();
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + window.location.host + pre.dataset.socket);
    ws.binaryType = "arraybuffer";
    socket = ws;
    reconnect.hidden = true;
    let ended = false;
    say("Connecting…");
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ csrf: form.elements.csrf.value, size: screenSize(pre) }));
    });
    ws.addEventListener("message", (event) => {
      if (typeof event.data !== "string") { screen.write(decoder.decode(event.data, { stream: true })); return; }
      const message = JSON.parse(event.data);
      if (message.type === "started") {
        say("Connected: run " + message.run_id);
        status.dataset.run = message.run_id;
      } else if (message.type === "result") {
        ended = true;
        const result = message.result;
        const killed = JSON.parse(pre.dataset.killed || "{}");
        say("The shell ended: " + (result.killed_by ? killed[result.killed_by] || result.killed_by
          : result.exit_code !== null ? "exit code " + result.exit_code : "signal " + result.signal) + ".");
      } else if (message.type === "error") {
        ended = true;
        say("Refused: " + message.error.error.message, true);
      }
    });
    ws.addEventListener("close", () => {
      if (!ended) say("The connection to the agent closed.", true);
      reconnect.hidden = false;
      if (socket === ws) socket = null;
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(input.value + "\r");
    input.value = "";
  });
  input.addEventListener("keydown", (event) => {
    if (!event.ctrlKey || event.altKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    const selected = input.selectionStart !== input.selectionEnd;
    if (key === "c" && !selected) { event.preventDefault(); send("\u0003"); }
    else if (key === "d" && input.value === "") { event.preventDefault(); send("\u0004"); }
  });
  document.getElementById("term-ctrl-c").addEventListener("click", () => { send("\u0003"); input.focus(); });
  document.getElementById("term-ctrl-d").addEventListener("click", () => { send("\u0004"); input.focus(); });
  reconnect.addEventListener("click", connect);
  let resizing = false;
  window.addEventListener("resize", () => {
    if (resizing) return;
    resizing = true;
    requestAnimationFrame(() => {
      resizing = false;
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "resize", ...screenSize(pre) }));
    });
  });
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  relativeTimes();
  copyButtons();
  confirmations();
  tokenLogin();
  runForm();
  fetchForms();
  notebook();
  terminalPage();
});
