// The Web UI in a real browser: Debian's chromium driven by playwright-core, with axe-core's
// accessibility scan on every page. scripts/ui-browser.sh starts the agent and runs this with
// BKG_ADDRESS (its loopback TCP listener), BKG_SOCKET and BKG_BIN (the bkg binary). Screenshots
// of every page at desktop and phone width go to BKG_SCREENSHOTS (default target/ui-screenshots).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const address = process.env.BKG_ADDRESS;
const socket = process.env.BKG_SOCKET;
const bkg = process.env.BKG_BIN;
const base = `http://${address}`;
const shots = process.env.BKG_SCREENSHOTS || "target/ui-screenshots";
const widths = { desktop: { width: 1280, height: 860 }, phone: { width: 390, height: 844 } };
mkdirSync(shots, { recursive: true });

/** A request to the agent: over its unix socket (as the machine's admin) or TCP with a key. */
function call(method, urlPath, { body, key, overSocket } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const options = overSocket
      ? { socketPath: socket, path: urlPath, method }
      : { host: address.split(":")[0], port: Number(address.split(":")[1]), path: urlPath, method };
    options.headers = { "content-type": "application/json" };
    if (key) options.headers.authorization = `Bearer ${key}`;
    const request = http.request(options, (response) => {
      let text = "";
      response.on("data", (chunk) => { text += chunk; });
      response.on("end", () => resolve({ status: response.statusCode, text }));
    });
    request.on("error", reject);
    if (data) request.write(data);
    request.end();
  });
}

function launchUrl() {
  const out = execFileSync(bkg, ["ui", "--json"], { env: { ...process.env, BKG_SOCKET: socket } });
  return JSON.parse(out.toString()).url;
}

const problems = [];
const browser = await chromium.launch({
  executablePath: process.env.BKG_CHROMIUM || "/usr/bin/chromium",
  // The suite runs as root (the agent must), where chromium's own sandbox cannot start.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

/** A fresh browser context; a page that breaks its CSP or throws fails the suite. */
async function context(viewport = widths.desktop) {
  const ctx = await browser.newContext({ viewport });
  ctx.on("page", watch);
  return ctx;
}
function watch(page) {
  page.on("console", (message) => {
    // Refusals the pages show in words (a busy sandbox is a 409) are logged by the browser too.
    if (message.type() === "error" && !/status of (404|401|403|409)/.test(message.text())) {
      problems.push(`console error on ${page.url()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => problems.push(`script error on ${page.url()}: ${error}`));
}

/** Screenshots at both widths and an axe scan of the page at `url`, in the session of `ctx`. */
async function record(ctx, name, url) {
  const page = await ctx.newPage();
  for (const [label, viewport] of Object.entries(widths)) {
    await page.setViewportSize(viewport);
    await page.goto(url);
    await page.screenshot({ path: path.join(shots, `${name}-${label}.png`), fullPage: true });
    await page.evaluate(axeSource);
    const results = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ["violations"] }));
    for (const violation of results.violations) {
      if (violation.impact === "serious" || violation.impact === "critical") {
        const where = violation.nodes.map((node) => node.target.join(" ")).join(", ");
        problems.push(`axe ${violation.impact} on ${name} (${label}): ${violation.id}: ${violation.help} at ${where}`);
      }
    }
  }
  await page.close();
}

async function step(name, body) {
  process.stdout.write(`ui: ${name} … `);
  await body();
  console.log("ok");
}

await step("axe reports a page it should (the scan itself works)", async () => {
  const ctx = await context();
  const page = await ctx.newPage();
  await page.setContent('<html lang="en"><title>t</title><img src="data:,"><input></html>');
  await page.evaluate(axeSource);
  const results = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ["violations"] }));
  const ids = results.violations.map((violation) => violation.id);
  assert.ok(ids.includes("image-alt") && ids.includes("label"), `axe found ${ids}`);
  await ctx.close();
});

// Users of two namespaces, made by the machine's admin over the socket.
for (const [username, namespace] of [["alice", "team-a"], ["bob", "team-b"]]) {
  const made = await call("POST", "/api/v1/auth/signup", {
    overSocket: true, body: { username, namespace, password: "correct horse battery" },
  });
  assert.equal(made.status, 201, made.text);
}

async function logIn(ctx, username) {
  const page = await ctx.newPage();
  await page.goto(`${base}/ui/login`);
  await page.getByLabel("User", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill("correct horse battery");
  await page.getByRole("button", { name: "Log in", exact: true }).click();
  await page.waitForURL(`${base}/ui/sandboxes`);
  return page;
}

const alice = await context();
let sandboxUrl;
let runUrl;
await step("a user logs in, creates a sandbox, runs print(6*7), sees 42 stream in and finds the run", async () => {
  await record(alice, "login", `${base}/ui/login`);
  const page = await logIn(alice, "alice");
  await record(alice, "sandboxes-empty", `${base}/ui/sandboxes`);
  await page.getByLabel("Name", { exact: true }).fill("demo");
  await page.getByLabel("Memory", { exact: true }).fill("256MiB");
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForURL(/\/ui\/sandboxes\/demo-/);
  sandboxUrl = page.url();
  // Tab indents in the code box, and Escape then Tab moves on.
  const code = page.getByLabel("Code", { exact: true });
  await code.fill("if True:\n");
  await code.press("Control+End");
  await code.press("Tab");
  await code.pressSequentially("print(6*7)");
  assert.equal(await code.inputValue(), "if True:\n    print(6*7)");
  await code.press("Escape");
  await code.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "run-button");
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("#run-output").filter({ hasText: "42" }).waitFor();
  await page.locator("#run-exit").waitFor();
  assert.equal(await page.locator("#run-exit").textContent(), "exit code 0");
  await page.screenshot({ path: path.join(shots, "sandbox-after-run-desktop.png"), fullPage: true });
  const runId = await page.locator("#run-summary").getAttribute("data-run");
  assert.match(runId, /^run_/);
  await page.getByRole("link", { name: "Runs", exact: true }).click();
  await page.getByRole("link", { name: runId }).click();
  await page.waitForURL(`${base}/ui/runs/${runId}`);
  runUrl = page.url();
  assert.equal((await page.locator("pre.output").textContent()).trim(), "42");
  await record(alice, "sandboxes", `${base}/ui/sandboxes`);
  await record(alice, "sandbox", sandboxUrl);
  await record(alice, "runs", `${base}/ui/runs`);
  await record(alice, "run", runUrl);
  await record(alice, "keys-user", `${base}/ui/keys`);
  await record(alice, "not-found", `${base}/ui/no-such-page`);
});

await step("a page whose session ended says so when it runs code, with a link to sign in again", async () => {
  const ctx = await context();
  const page = await logIn(ctx, "alice");
  await page.goto(sandboxUrl);
  // As after the agent's restart: the browser holds a session the agent no longer has (found by
  // a new-user trial: Run stayed at "Running…" for good).
  const [session] = (await ctx.cookies()).filter((cookie) => cookie.name === "bkg_session");
  await ctx.addCookies([{ ...session, value: "gone" }]);
  await page.getByLabel("Code", { exact: true }).fill("print(1)");
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("#run-summary").getByText("Your session ended").waitFor();
  await page.getByRole("link", { name: "Sign in again" }).click();
  await page.getByText("Your session is not known to this agent").waitFor();
  await ctx.close();
});

await step("a user of another namespace gets 404 for that sandbox and run by URL", async () => {
  const bob = await context();
  const page = await logIn(bob, "bob");
  for (const url of [sandboxUrl, runUrl, `${sandboxUrl}/notebook`, `${sandboxUrl}/terminal`]) {
    const response = await page.goto(url);
    assert.equal(response.status(), 404, url);
    assert.ok(!(await page.content()).includes("demo-"), "nothing of alice's sandbox is shown");
  }
  await bob.close();
});

await step("in the sandbox's notebook a second cell uses the first's variable, and a restart forgets it", async () => {
  const page = await alice.newPage();
  await page.goto(sandboxUrl);
  await page.getByRole("link", { name: "Notebook", exact: true }).click();
  await page.waitForURL(`${sandboxUrl}/notebook`);
  await record(alice, "notebook-no-session", `${sandboxUrl}/notebook`);
  await page.getByRole("button", { name: "Start a session" }).click();
  await page.waitForURL(`${sandboxUrl}/notebook`);
  await page.getByLabel("Cell 1", { exact: true }).fill("x = 6*7\nprint('<b>set</b>')");
  await page.getByRole("button", { name: "Run cell 1" }).click();
  const first = page.locator(".cell").nth(0);
  await first.locator(".cell-status").filter({ hasText: "[1] ok" }).waitFor();
  assert.equal(await first.locator(".cell-output").textContent(), "<b>set</b>\n", "markup is shown as text");
  await page.getByLabel("Cell 2", { exact: true }).fill("print(x + 1)\nx * 2");
  await page.getByLabel("Cell 2", { exact: true }).press("Control+Enter");
  const second = page.locator(".cell").nth(1);
  await second.locator(".cell-status").filter({ hasText: "[2] ok" }).waitFor();
  assert.equal(await second.locator(".cell-output").textContent(), "43\n84\n");
  await page.screenshot({ path: path.join(shots, "notebook-cells-desktop.png"), fullPage: true });
  await page.getByRole("button", { name: "Restart" }).click();
  await page.locator("#notebook-status").filter({ hasText: "Restarted" }).waitFor();
  await page.getByLabel("Cell 3", { exact: true }).fill("x");
  await page.getByRole("button", { name: "Run cell 3" }).click();
  const third = page.locator(".cell").nth(2);
  await third.locator(".cell-status").filter({ hasText: "[1] error" }).waitFor();
  assert.match(await third.locator(".cell-output").textContent(), /NameError: name 'x' is not defined/);
  await record(alice, "notebook", `${sandboxUrl}/notebook`);
  // The session holds the sandbox: the sandbox page's Run box says so, in the agent's words
  // (it said "Refused (409): reload the page.").
  const other = await alice.newPage();
  await other.goto(sandboxUrl);
  await other.getByLabel("Code", { exact: true }).fill("print(1)");
  await other.getByRole("button", { name: "Run" }).click();
  await other.locator("#run-summary").getByText("Refused: this sandbox's python session holds it").waitFor();
  await other.close();
  // The session holds the sandbox; the terminal needs it free.
  page.once("dialog", (dialog) => dialog.accept());
  await page.getByRole("button", { name: "End session" }).click();
  await page.getByRole("button", { name: "Start a session" }).waitFor();
  await page.close();
});

await step("in the sandbox's terminal a typed command's output comes back", async () => {
  const page = await alice.newPage();
  await page.goto(sandboxUrl);
  await page.getByRole("link", { name: "Terminal", exact: true }).click();
  await page.waitForURL(`${sandboxUrl}/terminal`);
  await page.locator("#term-status").filter({ hasText: "Connected" }).waitFor();
  const input = page.getByLabel("Input", { exact: true });
  await input.fill("echo $((6*7)) '<i>x</i>'");
  await input.press("Enter");
  // A line of the screen that is exactly `line` (the typed command's echo is not).
  const shows = (line) => page.waitForFunction((wanted) => document.getElementById("term-screen").textContent
    .split("\n").some((text) => text.trimEnd() === wanted), line);
  await shows("42 <i>x</i>");
  await page.screenshot({ path: path.join(shots, "terminal-session-desktop.png"), fullPage: true });
  // Ctrl-C in the line interrupts what runs, and the shell lives on.
  // The command says when it runs: a Ctrl-C sent before it started would reach the shell.
  await input.fill(`python3 -c 'import time; print("sleep" "ing", flush=True); time.sleep(600)'`);
  await input.press("Enter");
  await shows("sleeping");
  await input.press("Control+c");
  await input.fill("echo after-$((1+1))");
  await input.press("Enter");
  await shows("after-2");
  await input.fill("exit 3");
  await input.press("Enter");
  await page.locator("#term-status").filter({ hasText: "exit code 3" }).waitFor();
  await page.close();
  await record(alice, "terminal", `${sandboxUrl}/terminal`);
});

await step("the login URL of `bkg ui` works once", async () => {
  const url = launchUrl();
  const first = await context();
  const page = await first.newPage();
  await page.goto(url);
  await page.waitForURL(`${base}/ui/sandboxes`);
  await first.close();
  const second = await context();
  const again = await second.newPage();
  await again.goto(url);
  await again.getByText("This login link was used already").waitFor();
  assert.equal(new URL(again.url()).pathname, "/ui/login/token");
  await second.close();
});

await step("an admin issues a key, revokes it, and the API then answers it 401", async () => {
  const admin = await context();
  const page = await admin.newPage();
  await page.goto(launchUrl());
  await page.waitForURL(`${base}/ui/sandboxes`);
  await page.goto(`${base}/ui/keys`);
  await page.getByLabel("Role", { exact: true }).selectOption("namespace");
  await page.getByLabel("Namespace", { exact: true }).fill("team-c");
  await page.getByLabel("Name", { exact: true }).fill("from-the-ui");
  await page.getByRole("button", { name: "Issue" }).click();
  const secret = (await page.locator(".secret code").textContent()).trim();
  assert.match(secret, /^bkg_ns_/);
  assert.equal((await call("GET", "/api/v1/sandboxes", { key: secret })).status, 200, "the new key works");
  const row = page.locator("tr", { hasText: "from-the-ui" });
  page.once("dialog", (dialog) => dialog.accept());
  await row.getByRole("button", { name: /^Revoke/ }).click();
  await page.locator("tr", { hasText: "from-the-ui" }).getByText("revoked").waitFor();
  assert.equal((await call("GET", "/api/v1/sandboxes", { key: secret })).status, 401, "the revoked key is refused");
  await page.goto(`${base}/ui/admin/audit`);
  await page.getByLabel("Action", { exact: true }).fill("key.revoked");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.locator("tbody tr").first().getByText("key.revoked").waitFor();
  await page.getByRole("button", { name: "Verify now" }).click();
  await page.locator("#audit-verdict").getByText("Intact").waitFor();
  for (const [name, url] of [
    ["audit", "/ui/admin/audit"], ["audit-verified", "/ui/admin/audit?verify=1"],
    ["keys-admin", "/ui/keys"], ["admin", "/ui/admin"], ["admin-namespaces", "/ui/admin/namespaces"],
    ["admin-sync", "/ui/admin/sync"], ["runs-admin", "/ui/runs"],
  ]) {
    await record(admin, name, `${base}${url}`);
  }
  await admin.close();
});

await step("logging out ends the session", async () => {
  const page = await alice.newPage();
  await page.goto(`${base}/ui/sandboxes`);
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL(`${base}/ui/login`);
  await page.goto(`${base}/ui/sandboxes`);
  await page.waitForURL(`${base}/ui/login`);
});

await browser.close();
if (problems.length > 0) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`ui: every page passed; screenshots in ${shots}`);
