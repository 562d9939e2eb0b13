// Drives the agent's /mcp endpoint with the official MCP TypeScript SDK, as an AI client would:
// list the tools, start a sandbox, run Python in it, read the output, get the run's metrics and
// stop it. Prints one JSON summary line on stdout; any failure exits non-zero.
//
//   node client.mjs http://127.0.0.1:PORT/mcp API_KEY
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node client.mjs MCP_URL API_KEY");
  process.exit(2);
}

function connect(bearer) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${bearer}` } },
  });
  const client = new Client({ name: "bkg-e2e", version: "1.0.0" });
  return client.connect(transport).then(() => client);
}

function structured(result, tool) {
  if (result.isError) {
    throw new Error(`${tool} failed: ${JSON.stringify(result.content)}`);
  }
  return result.structuredContent ?? JSON.parse(result.content[0].text);
}

// A wrong key is refused before MCP even starts.
let refused = false;
try {
  await connect("bkg_sess_not-a-key");
} catch (error) {
  refused = /401|nauthorized/.test(String(error));
}

const client = await connect(key);
const { tools } = await client.listTools();
const started = structured(
  await client.callTool({ name: "sandbox_start", arguments: { language: "python", memory: "256MiB" } }),
  "sandbox_start",
);
const ran = structured(
  await client.callTool({
    name: "sandbox_run_code",
    arguments: { sandbox_id: started.sandbox_id, code: "import sys\nprint('hello from mcp', sum(range(10)))\nsys.exit(3)\n" },
  }),
  "sandbox_run_code",
);
// Output longer than a result holds (1 MiB) is read whole with run_read_file, a page at a time
// (found by a new-user trial: there was no way to it over MCP); a page ends on a character's
// boundary, so each comes as text (the 1 MiB mark falls inside an "é" here).
const long = structured(
  await client.callTool({
    name: "sandbox_run_code",
    arguments: { sandbox_id: started.sandbox_id, code: "import sys\nsys.stdout.write('a' + '\\u00e9' * 700000)\n" },
  }),
  "sandbox_run_code",
);
const pages = [];
for (let offset = 0; offset !== null && pages.length < 5; ) {
  const page = structured(
    await client.callTool({ name: "run_read_file", arguments: { run_id: long.id, path: "stdout", offset } }),
    "run_read_file",
  );
  pages.push(page);
  offset = page.next_offset;
}
const pastEnd = await client.callTool({ name: "run_read_file", arguments: { run_id: long.id, path: "stdout", offset: 9999999 } });
// Node code in the Python sandbox: run by node, and recorded as node.
const ranNode = structured(
  await client.callTool({
    name: "sandbox_run_code",
    arguments: { sandbox_id: started.sandbox_id, code: "console.log(typeof process.versions.node)", language: "node" },
  }),
  "sandbox_run_code",
);
const command = structured(
  await client.callTool({ name: "sandbox_run_command", arguments: { sandbox_id: started.sandbox_id, command: "echo kept > note && cat note" } }),
  "sandbox_run_command",
);
const metrics = structured(
  await client.callTool({ name: "sandbox_get_metrics", arguments: { sandbox_id: started.sandbox_id } }),
  "sandbox_get_metrics",
);
// Files in and out, then a session that keeps its state across two executions.
const uploaded = structured(
  await client.callTool({
    name: "sandbox_upload",
    arguments: { sandbox_id: started.sandbox_id, path: "data/in.txt", content_base64: Buffer.from("41\n").toString("base64") },
  }),
  "sandbox_upload",
);
const listed = structured(
  await client.callTool({ name: "sandbox_list_files", arguments: { sandbox_id: started.sandbox_id, path: "data" } }),
  "sandbox_list_files",
);
const downloaded = structured(
  await client.callTool({ name: "sandbox_download", arguments: { sandbox_id: started.sandbox_id, path: "data/in.txt" } }),
  "sandbox_download",
);
// Refusals name what was asked: the whole path, a link as a link.
const outside = await client.callTool({
  name: "sandbox_upload",
  arguments: { sandbox_id: started.sandbox_id, path: "../../etc/x", content_base64: "" },
});
structured(
  await client.callTool({ name: "sandbox_run_command", arguments: { sandbox_id: started.sandbox_id, command: "ln -s in.txt data/link" } }),
  "sandbox_run_command",
);
const link = await client.callTool({ name: "sandbox_download", arguments: { sandbox_id: started.sandbox_id, path: "data/link" } });
// No path is /workspace itself, a directory, whatever its first file is.
const whole = await client.callTool({ name: "sandbox_download", arguments: { sandbox_id: started.sandbox_id } });
const noSuch = await client.callTool({ name: "sandbox_download", arguments: { sandbox_id: "doesnotexist-1234" } });
// A sandbox busy with another run: said with what MCP can do, not the CLI's `bkg stop`. The
// slow run is sent first; a call sent after it that still got in first is tried again.
let busy = null;
let busyCreate = null;
for (let attempt = 0; attempt < 5 && busy === null; attempt++) {
  const slow = client.callTool({ name: "sandbox_run_code", arguments: { sandbox_id: started.sandbox_id, code: "import time\ntime.sleep(6)" } });
  await new Promise((resolve) => setTimeout(resolve, 500));
  const tried = await client.callTool({ name: "sandbox_run_command", arguments: { sandbox_id: started.sandbox_id, command: "true" } });
  if (tried.isError) {
    busy = tried.content?.[0]?.text ?? "";
    busyCreate = await client.callTool({ name: "session_create", arguments: { sandbox_id: started.sandbox_id } });
  }
  await slow;
}
// Before session_create, the session tools say to call it.
const noSession = await client.callTool({ name: "session_execute", arguments: { sandbox_id: started.sandbox_id, code: "1" } });
const session = structured(
  await client.callTool({ name: "session_create", arguments: { sandbox_id: started.sandbox_id } }),
  "session_create",
);
const first = structured(
  await client.callTool({
    name: "session_execute",
    arguments: { sandbox_id: started.sandbox_id, code: "x = int(open('data/in.txt').read())\nprint('read', x)" },
  }),
  "session_execute",
);
const second = structured(
  await client.callTool({ name: "session_execute", arguments: { sandbox_id: started.sandbox_id, code: "x + 1" } }),
  "session_execute",
);
// Refusals name the tools, not the CLI's commands or the agent's flags: a second session_create,
// code run beside the session, a limit above the agent's maximum.
const again = await client.callTool({ name: "session_create", arguments: { sandbox_id: started.sandbox_id } });
const beside = await client.callTool({ name: "sandbox_run_code", arguments: { sandbox_id: started.sandbox_id, code: "print(1)" } });
const tooBig = await client.callTool({ name: "sandbox_start", arguments: { language: "python", memory: "1000GiB" } });
const stopped = structured(
  await client.callTool({ name: "sandbox_stop", arguments: { sandbox_id: started.sandbox_id } }),
  "sandbox_stop",
);
const gone = await client.callTool({ name: "sandbox_get_metrics", arguments: { sandbox_id: started.sandbox_id } });
// An argument the tool does not take is refused, as the REST API refuses an unknown field.
const unknownArgument = await client.callTool({ name: "sandbox_start", arguments: { language: "python", bogus: 1 } });
// A session's execution is held to the sandbox's timeout and its output to 1 MiB a stream
// (found by a new-user trial: `while True: pass` held the call until the client gave up and the
// session stayed busy; 40 MB printed came back whole).
const limited = structured(
  await client.callTool({ name: "sandbox_start", arguments: { language: "python", timeout: "2s" } }),
  "sandbox_start",
);
structured(await client.callTool({ name: "session_create", arguments: { sandbox_id: limited.sandbox_id } }), "session_create");
const execute = async (code) =>
  structured(await client.callTool({ name: "session_execute", arguments: { sandbox_id: limited.sandbox_id, code } }), "session_execute");
const set = await execute("kept = 41");
const spun = await execute("while True: pass");
const afterSpin = await execute("kept + 1");
const ignored = await execute("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass");
const afterIgnored = await execute("'kept' in globals()");
const flood = await execute("import sys\nfor _ in range(3): sys.stdout.write('z' * 1000000)\nprint('end', file=sys.stderr)");
structured(await client.callTool({ name: "sandbox_stop", arguments: { sandbox_id: limited.sandbox_id } }), "sandbox_stop");
// A call the client cancels ends its code, and the sandbox takes the next call (found by a
// new-user trial: the run went on to its timeout, the sandbox busy meanwhile). The run's record
// is read by the test over the API.
const cancelled = structured(
  await client.callTool({ name: "sandbox_start", arguments: { language: "python", timeout: "60s" } }),
  "sandbox_start",
);
const abort = new AbortController();
const longCall = client.callTool(
  { name: "sandbox_run_code", arguments: { sandbox_id: cancelled.sandbox_id, code: "import time\nprint('up', flush=True)\ntime.sleep(50)" } },
  undefined,
  { signal: abort.signal },
);
await new Promise((resolve) => setTimeout(resolve, 1500));
abort.abort("the user gave up");
const abortedCall = await longCall.then(() => "answered", (error) => String(error));
let afterCancel = null;
for (let attempt = 0; attempt < 40 && (afterCancel === null || afterCancel.isError); attempt++) {
  if (afterCancel !== null) await new Promise((resolve) => setTimeout(resolve, 250));
  afterCancel = await client.callTool({ name: "sandbox_run_command", arguments: { sandbox_id: cancelled.sandbox_id, command: "echo free" } });
}
// The sandbox is left for the test, which calls into it and hangs up.
await client.close();

console.log(
  JSON.stringify({
    refused_bad_key: refused,
    tools: tools.map((tool) => ({ name: tool.name, schema_type: tool.inputSchema?.type, required: tool.inputSchema?.required ?? [] })),
    started,
    stdout: ran.stdout,
    exit_code: ran.exit_code,
    python_language: ran.language,
    node_stdout: ranNode.stdout,
    node_language: ranNode.language,
    command_stdout: command.stdout,
    long: {
      truncated: long.truncated,
      kept: (long.files ?? []).map((file) => file.path),
      pages: pages.map((page) => ({ offset: page.offset, bytes: page.bytes, size: page.size, next: page.next_offset })),
      whole: pages.map((page) => page.text).join("") === "a" + "\u00e9".repeat(700000),
    },
    past_end: { is_error: pastEnd.isError === true, text: pastEnd.content?.[0]?.text ?? "" },
    command_run: command.id,
    metrics_run: metrics.id,
    metrics_exit_code: metrics.exit_code,
    uploaded_files: uploaded.files,
    uploaded_path: uploaded.path,
    outside: { is_error: outside.isError === true, text: outside.content?.[0]?.text ?? "" },
    link: { is_error: link.isError === true, text: link.content?.[0]?.text ?? "" },
    whole: { is_error: whole.isError === true, text: whole.content?.[0]?.text ?? "" },
    no_such: { is_error: noSuch.isError === true, text: noSuch.content?.[0]?.text ?? "" },
    no_session: { is_error: noSession.isError === true, text: noSession.content?.[0]?.text ?? "" },
    listed: listed.entries.map((entry) => entry.name),
    downloaded: Buffer.from(downloaded.content_base64, "base64").toString(),
    session_language: session.language,
    first_stdout: first.stdout,
    second_result: second.result && second.result["text/plain"],
    stopped: stopped.stopped,
    gone_is_error: gone.isError === true,
    again: { is_error: again.isError === true, text: again.content?.[0]?.text ?? "" },
    beside: { is_error: beside.isError === true, text: beside.content?.[0]?.text ?? "" },
    too_big: { is_error: tooBig.isError === true, text: tooBig.content?.[0]?.text ?? "" },
    unknown_argument: { is_error: unknownArgument.isError === true, text: unknownArgument.content?.[0]?.text ?? "" },
    busy,
    busy_create: { is_error: busyCreate?.isError === true, text: busyCreate?.content?.[0]?.text ?? "" },
    cancel: {
      sandbox_id: cancelled.sandbox_id,
      aborted: abortedCall,
      after: afterCancel.isError ? afterCancel.content?.[0]?.text ?? "" : structured(afterCancel, "sandbox_run_command").stdout,
    },
    limited: {
      set: [set.status, set.timed_out, set.truncated],
      spun: [spun.status, spun.timed_out, spun.error?.name ?? null],
      after_spin: afterSpin.result && afterSpin.result["text/plain"],
      ignored: [ignored.status, ignored.timed_out, typeof ignored.note],
      after_ignored: afterIgnored.result && afterIgnored.result["text/plain"],
      flood: [flood.status, flood.truncated, flood.stdout.length, flood.stderr],
    },
  }),
);
