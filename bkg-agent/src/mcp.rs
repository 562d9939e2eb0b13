//! `/mcp`: the Model Context Protocol over streamable HTTP, for AI agents. Its tools drive the
//! same persistent sandboxes as the HTTP API, in the caller's namespace (its project directory
//! on the agent), with the caller's rights: the gatekeeper has already authenticated the
//! request and put its `Principal` in the request's extensions. Every tool is one or two
//! operations of `service/`; this file only translates arguments and answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::request::Parts;
use base64::Engine as _;
use bkg_schema::sandbox::{ExecRequest, NewSandbox};
use bkg_schema::{Language, LimitOverrides, parse_duration_ms, parse_size};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::ids::new_id;
use crate::server::MAX_BODY_BYTES;
use crate::service::{OpError, Service};

/// The service mounted at `/mcp`: stateless (every request stands alone, so any request may
/// come on any connection), JSON answers where the protocol allows.
pub fn service(operations: Arc<Service>) -> StreamableHttpService<SandboxTools, NeverSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // Host checks guard servers that trust whoever reaches them; every request here is
        // authenticated by peer credentials or an API key before it gets this far.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(MAX_BODY_BYTES);
    StreamableHttpService::new(
        move || Ok(SandboxTools::new(Arc::clone(&operations))),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

#[derive(Clone)]
pub struct SandboxTools {
    operations: Arc<Service>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeLanguage {
    #[default]
    Python,
    Node,
}

impl From<CodeLanguage> for Language {
    fn from(language: CodeLanguage) -> Self {
        match language {
            CodeLanguage::Python => Language::Python,
            CodeLanguage::Node => Language::Node,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// The sandbox's main language (both python and node can run in it). Default: python.
    #[serde(default)]
    pub language: CodeLanguage,
    /// A name for the sandbox (a-z, 0-9, -); default: a new unique one.
    pub name: Option<String>,
    /// Memory limit, e.g. "256MiB" (default 512MiB).
    pub memory: Option<String>,
    /// Wall-clock limit of each run, e.g. "30s" (default 60s).
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeArgs {
    /// The id `sandbox_start` returned.
    pub sandbox_id: String,
    /// The program's source.
    pub code: String,
    /// Its language; default: the sandbox's.
    pub language: Option<CodeLanguage>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandArgs {
    /// The id `sandbox_start` returned.
    pub sandbox_id: String,
    /// A shell command line, run with /bin/sh -c in /workspace.
    pub command: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxArgs {
    /// The id `sandbox_start` returned.
    pub sandbox_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// The id `sandbox_start` returned.
    pub sandbox_id: String,
    /// Its language; default: the sandbox's. Only when the session is made.
    pub language: Option<CodeLanguage>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionExecuteArgs {
    /// The id `sandbox_start` returned.
    pub sandbox_id: String,
    /// The code of one cell; the value of its last expression is returned.
    pub code: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadArgs {
    /// The id `sandbox_start` returned.
    pub sandbox_id: String,
    /// Where the file goes, relative to /workspace (e.g. "data/input.csv").
    pub path: String,
    /// The file's content, base64.
    pub content_base64: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// The id `sandbox_start` returned.
    pub sandbox_id: String,
    /// A path relative to /workspace; default: /workspace itself.
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunFileArgs {
    /// The run's id: `id` in the result of `sandbox_run_code` or `sandbox_run_command`.
    pub run_id: String,
    /// `stdout` or `stderr` (kept whole when longer than a result holds), or a file the run kept,
    /// as its result's `files` list names it.
    pub path: String,
    /// Where to start, in bytes; default 0.
    #[serde(default)]
    pub offset: u64,
    /// How many bytes at most; default and most 1 MiB.
    pub length: Option<u64>,
}

/// The most `run_read_file` returns in one call: a result's own output cap, so that a caller
/// pages through output longer than a result holds as it read the result.
const MCP_READ_BYTES: u64 = bkg_schema::OUTPUT_CAP_BYTES as u64;

/// How long a session's execution interrupted at its timeout has to end before its interpreter
/// is ended (as `bkg stop` gives a run 5 s after SIGTERM).
const SESSION_INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// What a session's execution printed and displayed, each kept up to `OUTPUT_CAP_BYTES`: one
/// tool result is held whole in memory and read whole by a model (found by a new-user trial:
/// 40 MB printed came back in one result).
#[derive(Default)]
struct CappedOutput {
    stdout: String,
    stderr: String,
    displays: Vec<serde_json::Map<String, serde_json::Value>>,
    display_bytes: usize,
    truncated: bool,
}

impl CappedOutput {
    fn stdout(&mut self, text: &str) {
        self.truncated |= keep_within(&mut self.stdout, text);
    }

    fn stderr(&mut self, text: &str) {
        self.truncated |= keep_within(&mut self.stderr, text);
    }

    fn display(&mut self, data: serde_json::Map<String, serde_json::Value>, size: usize) {
        if self.display_bytes + size > bkg_schema::OUTPUT_CAP_BYTES {
            self.truncated = true;
            return;
        }
        self.display_bytes += size;
        self.displays.push(data);
    }
}

/// Appends what of `text` fits under the cap, cut at a character; true when some was left out.
fn keep_within(kept: &mut String, text: &str) -> bool {
    let room = bkg_schema::OUTPUT_CAP_BYTES.saturating_sub(kept.len());
    if text.len() <= room {
        kept.push_str(text);
        return false;
    }
    let cut = (0..=room).rev().find(|&at| text.is_char_boundary(at)).unwrap_or(0);
    kept.push_str(&text[..cut]);
    true
}

/// The largest file `sandbox_download` returns (base64 in a JSON answer); bigger ones go by the
/// HTTP API's tar stream.
const MCP_DOWNLOAD_BYTES: u64 = 16 * 1024 * 1024;

/// The one session MCP callers use in a sandbox.
const MCP_SESSION: &str = "default";

fn principal_of(parts: &Parts) -> Result<Principal, ErrorData> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request reached MCP without an authenticated caller", None))
}

/// The tool calls under way, by caller and JSON-RPC id: each POST is a protocol session of its
/// own here (`NeverSessionManager`), so rmcp cannot match a client's `notifications/cancelled`,
/// which comes in another POST, with the call it names; the gate (server.rs, `mcp_gate`) does,
/// and cancels the call's token, as it does when the call's client goes away.
#[derive(Default)]
pub struct InFlightCalls {
    calls: std::sync::Mutex<std::collections::HashMap<(String, String), (u64, CancellationToken)>>,
    serial: std::sync::atomic::AtomicU64,
}

impl InFlightCalls {
    /// Notes `caller`'s call `id` until the returned guard goes; its token is cancelled by
    /// [`Self::cancel`] or by the guard dropped before [`CallGuard::finished`].
    pub fn begin(self: &Arc<Self>, caller: String, id: &serde_json::Value) -> CallGuard {
        let token = CancellationToken::new();
        let key = (caller, id.to_string());
        let serial = self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(key.clone(), (serial, token.clone()));
        CallGuard { calls: Arc::clone(self), key, serial, token, finished: false }
    }

    /// Cancels `caller`'s call `id`, if it is under way (another caller's is not theirs to end).
    pub fn cancel(&self, caller: String, id: &serde_json::Value) {
        if let Some((_, token)) = self.lock().get(&(caller, id.to_string())) {
            token.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), (u64, CancellationToken)>> {
        self.calls.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A call under way (`InFlightCalls::begin`).
pub struct CallGuard {
    calls: Arc<InFlightCalls>,
    key: (String, String),
    serial: u64,
    token: CancellationToken,
    finished: bool,
}

impl CallGuard {
    /// What the call's tool waits on beside its work.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The call was answered: its end cancels nothing.
    pub fn finished(mut self) {
        self.finished = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // Dropped unanswered: the HTTP request went away with its client.
        if !self.finished {
            self.token.cancel();
        }
        let mut calls = self.calls.lock();
        // A second call of the caller's with the same id may have replaced this one.
        if calls.get(&self.key).is_some_and(|(serial, _)| *serial == self.serial) {
            calls.remove(&self.key);
        }
    }
}

/// The token of the call `parts` carry (the gate put it there); one never cancelled otherwise.
fn cancellation_of(parts: &Parts) -> CancellationToken {
    parts.extensions.get::<CancellationToken>().cloned().unwrap_or_default()
}

/// The answer to a call its client cancelled: it is not read, but a call has one.
fn cancelled_call() -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text("the call was cancelled, and its code ended")])
}

/// A refusal the model should read and act on, as a tool error rather than a protocol error.
fn refused(error: OpError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_string())])
}

/// Sandbox `sandbox_id` is running something that is not this caller's session: said with what
/// MCP can do about it (the operation's own words name `bkg stop`; found by a new-user trial).
fn busy_with_a_run(sandbox_id: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "sandbox {sandbox_id} is running another run (a service or a command started through the API or the CLI, \
         or an earlier call of yours still ending): try again once it has ended, or use another sandbox (sandbox_start)"
    ))])
}

/// An operation's answer as the tool's result: structured content, or a refusal.
fn answer<T: serde::Serialize>(outcome: Result<T, OpError>) -> Result<CallToolResult, ErrorData> {
    match outcome {
        Ok(value) => structured(&value),
        Err(error) => Ok(refused(error)),
    }
}

fn structured<T: serde::Serialize>(value: &T) -> Result<CallToolResult, ErrorData> {
    serde_json::to_value(value)
        .map(CallToolResult::structured)
        .map_err(|error| ErrorData::internal_error(format!("cannot encode the answer: {error}"), None))
}

#[tool_router]
impl SandboxTools {
    fn new(operations: Arc<Service>) -> Self {
        Self { operations, tool_router: Self::tool_router() }
    }

    /// A session tool's refusal: where the sandbox the caller sees has no session, the tool
    /// that starts one is named (the operation's own refusal names the CLI's and the API's ways);
    /// any other refusal is the operation's. Asked only once the operation has refused.
    async fn session_refusal(&self, principal: &Principal, sandbox_id: &str, error: OpError) -> CallToolResult {
        if matches!(error, OpError::NotFound(_))
            && let Ok(sessions) = self.operations.list_sessions(principal, sandbox_id).await
            && !sessions.iter().any(|session| session.name == MCP_SESSION)
        {
            return CallToolResult::error(vec![ContentBlock::text(format!(
                "sandbox {sandbox_id} has no session: call session_create first"
            ))]);
        }
        refused(error)
    }

    /// The session the caller's sandbox holds, if it holds one: a refusal that names the CLI's
    /// way of using or ending it then names the tools instead.
    async fn session_of(&self, principal: &Principal, sandbox_id: &str) -> Option<bkg_schema::files::SessionInfo> {
        self.operations.sandbox_session(principal, sandbox_id).await.ok().flatten()
    }

    async fn exec(
        &self,
        principal: &Principal,
        sandbox_id: &str,
        exec: ExecRequest,
        call: &CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let ran = match self.operations.accept_exec(principal, sandbox_id, exec).await {
            Ok(accepted) => tokio::select! {
                ran = self.operations.run_to_end(accepted) => ran,
                // The client cancelled the call (`notifications/cancelled`) or went away: the
                // run's future is dropped, which cancels the run, as a REST caller's hang-up does
                // (found by a new-user trial: the run went on to its timeout, the sandbox busy).
                () = call.cancelled() => return Ok(cancelled_call()),
            },
            Err(error) if error.is_busy() => match self.session_of(principal, sandbox_id).await {
                Some(session) => {
                    return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                        "sandbox {sandbox_id} is held by its {} session: run code there with session_execute, or \
                         use another sandbox (sandbox_start)",
                        session.language.as_str()
                    ))]));
                }
                None => return Ok(busy_with_a_run(sandbox_id)),
            },
            Err(error) => Err(error),
        };
        answer(ran)
    }

    #[tool(
        description = "Create a sandbox for running code: an isolated Linux box with python3 and node, no network, \
        and a /workspace that persists between runs until sandbox_stop. Returns its sandbox_id."
    )]
    async fn sandbox_start(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<StartArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        let mut limits = LimitOverrides::default();
        if let Some(memory) = &args.memory {
            match parse_size(memory) {
                Ok(bytes) => limits.memory_bytes = Some(bytes),
                Err(error) => return Ok(refused(OpError::Invalid(format!("memory: {error}")))),
            }
        }
        if let Some(timeout) = &args.timeout {
            match parse_duration_ms(timeout) {
                Ok(ms) => limits.timeout_ms = Some(ms),
                Err(error) => return Ok(refused(OpError::Invalid(format!("timeout: {error}")))),
            }
        }
        let name = args.name.unwrap_or_else(|| new_id("mcp").replace('_', "-"));
        let new = NewSandbox {
            name,
            namespace: None,
            language: args.language.into(),
            limits,
            env: BTreeMap::new(),
            scripts: BTreeMap::new(),
            restart: Default::default(),
        };
        // The refusal's fix names cave.yaml and the agent's flags; here it is this tool's argument.
        let created = self.operations.create_sandbox(&principal, new).await.map_err(|error| {
            error.with_limit_fix(|name| {
                matches!(name, "memory" | "timeout").then(|| format!("ask for at most that with `{name}`"))
            })
        });
        answer(created.map(|info| {
            serde_json::json!({
                "sandbox_id": info.id,
                "name": info.name,
                "namespace": info.namespace,
                "language": info.language,
                "limits": info.limits,
            })
        }))
    }

    #[tool(description = "Run a Python or Node.js program in a sandbox and return its stdout, stderr, exit code and \
        resource use. Output longer than 1 MiB is cut (`truncated`); run_read_file reads the rest.")]
    async fn sandbox_run_code(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<RunCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        let language = match args.language {
            Some(language) => language.into(),
            None => match self.operations.get_sandbox(&principal, &args.sandbox_id).await {
                Ok(info) => info.language,
                Err(error) => return Ok(refused(error)),
            },
        };
        // The program comes on stdin (`python3 -`, `node -`): no quoting, no size limit of argv.
        let interpreter = match language {
            Language::Python => "python3 -",
            Language::Node => "node -",
        };
        let exec = ExecRequest {
            stdin_base64: Some(base64::engine::general_purpose::STANDARD.encode(args.code.as_bytes())),
            language: Some(language),
            ..ExecRequest::command(interpreter)
        };
        self.exec(&principal, &args.sandbox_id, exec, &cancellation_of(&parts)).await
    }

    #[tool(
        description = "Run a shell command (/bin/sh -c) in a sandbox's /workspace and return its output, exit code \
        and resource use."
    )]
    async fn sandbox_run_command(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<RunCommandArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        let exec = ExecRequest::command(args.command);
        self.exec(&principal, &args.sandbox_id, exec, &cancellation_of(&parts)).await
    }

    #[tool(description = "Stop a sandbox and delete it with its workspace.")]
    async fn sandbox_stop(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<SandboxArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        let removed = self.operations.delete_sandbox(&principal, &args.sandbox_id).await;
        answer(removed.map(|()| serde_json::json!({ "stopped": true, "sandbox_id": args.sandbox_id })))
    }

    #[tool(description = "Start a Python or Node.js session in a sandbox: an interpreter that keeps variables, \
        imports and the working directory between session_execute calls. It holds the sandbox until sandbox_stop.")]
    async fn session_create(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<SessionArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        let new = bkg_schema::files::NewSession {
            name: Some(MCP_SESSION.into()),
            language: args.language.map(Language::from),
        };
        match self.operations.create_session(&principal, &args.sandbox_id, new).await {
            Err(OpError::Conflict(message)) => match self.session_of(&principal, &args.sandbox_id).await {
                Some(session) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "sandbox {} already has its {} session ({} executions): run code in it with session_execute, \
                     or start it afresh with session_restart",
                    args.sandbox_id,
                    session.language.as_str(),
                    session.executions
                ))])),
                None => Ok(refused(OpError::Conflict(message))),
            },
            Err(error) if error.is_busy() => Ok(busy_with_a_run(&args.sandbox_id)),
            outcome => answer(outcome),
        }
    }

    #[tool(description = "Run code in the sandbox's session (session_create first); state is kept. Returns \
        stdout, stderr, the last expression's value, display data (images as base64 PNG, HTML, JSON) and any error \
        with a traceback of the cells. An execution longer than the sandbox's timeout is interrupted (`timed_out`; \
        one that goes on 5 s after the interrupt ends with its interpreter, and the session starts afresh); \
        stdout, stderr and the displays are each cut at 1 MiB (`truncated`).")]
    async fn session_execute(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<SessionExecuteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        use bkg_schema::files::{SessionEvent, StreamName};
        let principal = principal_of(&parts)?;
        let call = cancellation_of(&parts);
        let limit = match self.operations.get_sandbox(&principal, &args.sandbox_id).await {
            Ok(sandbox) if sandbox.limits.timeout_ms != bkg_schema::NO_TIMEOUT_MS => {
                Some(Duration::from_millis(sandbox.limits.timeout_ms))
            }
            Ok(_) => None,
            Err(error) => return Ok(self.session_refusal(&principal, &args.sandbox_id, error).await),
        };
        let started = self.operations.execute_in_session(&principal, &args.sandbox_id, MCP_SESSION, args.code).await;
        let mut events = match started {
            Ok(events) => events,
            Err(error) => return Ok(self.session_refusal(&principal, &args.sandbox_id, error).await),
        };
        let mut kept = CappedOutput::default();
        let (mut result, mut error, mut status) = (None, None, None);
        // No limit: a deadline that never comes.
        let deadline = tokio::time::sleep(limit.unwrap_or(Duration::from_secs(u32::MAX.into())));
        tokio::pin!(deadline);
        let (mut timed_out, mut restarted) = (false, false);
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                // Cancelled, or the client went away: the cell is interrupted, as Ctrl-C in
                // `bkg repl` does, and nobody waits for the rest.
                () = call.cancelled() => {
                    let _ = self.operations.interrupt_session(&principal, &args.sandbox_id, MCP_SESSION).await;
                    return Ok(cancelled_call());
                }
                () = &mut deadline => {
                    if timed_out {
                        // The code went on after the interrupt: its interpreter goes, so the
                        // session takes code again (an MCP client has no other way out).
                        restarted = self.operations.restart_session(&principal, &args.sandbox_id, MCP_SESSION).await.is_ok();
                        break;
                    }
                    timed_out = true;
                    let _ = self.operations.interrupt_session(&principal, &args.sandbox_id, MCP_SESSION).await;
                    deadline.as_mut().reset(tokio::time::Instant::now() + SESSION_INTERRUPT_GRACE);
                    continue;
                }
            };
            let Some(event) = event else { break };
            let size = event.footprint();
            match event {
                SessionEvent::Stream { name: StreamName::Stdout, text } => kept.stdout(&text),
                SessionEvent::Stream { name: StreamName::Stderr, text } => kept.stderr(&text),
                SessionEvent::Display { data } => kept.display(data, size),
                SessionEvent::Result { data } => result = Some(data),
                SessionEvent::Error { name, message, traceback } => {
                    error =
                        Some(serde_json::json!({ "name": name, "message": message, "traceback": traceback.concat() }));
                }
                SessionEvent::End { status: end, error: not_started, .. } => {
                    status = Some(end);
                    // Why the interpreter could not start (its packages failed to install).
                    if let Some(message) = not_started {
                        error = Some(serde_json::json!({ "name": "not started", "message": message, "traceback": "" }));
                    }
                    break;
                }
            }
        }
        let status = match (status, restarted) {
            (Some(status), _) => serde_json::json!(status),
            (None, true) => serde_json::json!(bkg_schema::files::ExecutionStatus::Died),
            (None, false) => serde_json::Value::Null,
        };
        let CappedOutput { stdout, stderr, displays, truncated, .. } = kept;
        let mut answer = serde_json::json!({
            "status": status, "stdout": stdout, "stderr": stderr, "result": result, "displays": displays, "error": error,
            "truncated": truncated, "timed_out": timed_out,
        });
        if restarted {
            answer["note"] = serde_json::json!(
                "the code went on after the interrupt: its interpreter was ended and the session started afresh (its variables are gone)"
            );
        }
        structured(&answer)
    }

    #[tool(description = "Restart the sandbox's session with a fresh interpreter (its variables are gone).")]
    async fn session_restart(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<SandboxArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        match self.operations.restart_session(&principal, &args.sandbox_id, MCP_SESSION).await {
            Ok(session) => structured(&session),
            Err(error) => Ok(self.session_refusal(&principal, &args.sandbox_id, error).await),
        }
    }

    #[tool(description = "Write a file into a sandbox's /workspace (content base64; directories are made).")]
    async fn sandbox_upload(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<UploadArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        let Ok(content) = base64::engine::general_purpose::STANDARD.decode(&args.content_base64) else {
            return Ok(refused(OpError::Invalid("content_base64 is not valid base64".into())));
        };
        // The whole path is checked here, so a refusal names it and not its directory.
        if let Err(error) = crate::service::files::check_workspace_path(&args.path) {
            return Ok(refused(error));
        }
        let path = std::path::Path::new(&args.path);
        let (Some(name), parent) = (path.file_name(), path.parent().unwrap_or(std::path::Path::new(""))) else {
            return Ok(refused(OpError::Invalid(format!("`{}` names no file", args.path))));
        };
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let packed = archive.append_data(&mut header, name, content.as_slice()).and_then(|()| archive.into_inner());
        let Ok(packed) = packed else {
            return Ok(refused(OpError::Invalid(format!("`{}` cannot be a file name", args.path))));
        };
        let (sender, body) = tokio::sync::mpsc::channel(1);
        let _ = sender.send(Ok(packed)).await;
        drop(sender);
        let parent = parent.to_string_lossy().into_owned();
        let uploaded = self.operations.upload_files(&principal, &args.sandbox_id, &parent, body).await;
        // The file written, not the directory it went into.
        let name = name.to_string_lossy();
        answer(uploaded.map(|mut result| {
            result.path = format!("{}/{name}", result.path.trim_end_matches('/'));
            result
        }))
    }

    #[tool(description = "Read a file of a sandbox's /workspace; returns its content base64 (at most 16 MiB).")]
    async fn sandbox_download(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<PathArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        // A sandbox there is not is said first (found by a new-user trial: "/workspace is a directory").
        if let Err(error) = self.operations.get_sandbox(&principal, &args.sandbox_id).await {
            return Ok(refused(error));
        }
        // /workspace itself comes as its contents, whose first entry may be any of its files.
        if std::path::Path::new(&args.path).components().all(|part| part == std::path::Component::CurDir) {
            return Ok(refused(OpError::Invalid("/workspace is a directory: sandbox_list_files lists it".into())));
        }
        let mut chunks = match self.operations.download_files(&principal, &args.sandbox_id, &args.path).await {
            Ok(chunks) => chunks,
            Err(error) => return Ok(refused(error)),
        };
        let mut packed = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            match chunk {
                Ok(bytes) if (packed.len() + bytes.len()) as u64 <= MCP_DOWNLOAD_BYTES + 64 * 1024 => {
                    packed.extend(bytes)
                }
                Ok(_) => {
                    return Ok(refused(OpError::Invalid(format!(
                        "{} is over 16 MiB: download it with GET /api/v1/sandboxes/{{id}}/files",
                        args.path
                    ))));
                }
                Err(error) => return Ok(refused(OpError::Internal(error.to_string()))),
            }
        }
        let mut archive = tar::Archive::new(packed.as_slice());
        let mut content = Err(format!("{} is not a file", args.path));
        if let Ok(mut entries) = archive.entries()
            && let Some(Ok(mut entry)) = entries.next()
        {
            let kind = entry.header().entry_type();
            content = if kind.is_file() {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes)
                    .map(|_| bytes)
                    .map_err(|error| format!("{} could not be read: {error}", args.path))
            } else if kind.is_dir() {
                Err(format!("{} is a directory: sandbox_list_files lists it", args.path))
            } else if kind.is_symlink() {
                let target = entry.link_name().ok().flatten().map(|target| target.display().to_string());
                Err(format!(
                    "{} is a symbolic link (to {}): download the file it points to",
                    args.path,
                    target.as_deref().unwrap_or("?")
                ))
            } else {
                Err(format!("{} is not a file", args.path))
            };
        }
        let content = match content {
            Ok(content) => content,
            Err(message) => return Ok(refused(OpError::Invalid(message))),
        };
        structured(&serde_json::json!({
            "path": args.path,
            "size": content.len(),
            "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
        }))
    }

    #[tool(description = "Read what a run kept: its whole stdout or stderr when the result held only the first \
        MiB (`truncated`), or a file it kept (its result's `files`). Returns up to 1 MiB from `offset`, as `text` \
        when that is UTF-8, else `content_base64`, with the file's `size` and `next_offset` (null at its end).")]
    async fn run_read_file(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<RunFileArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        use futures_util::StreamExt as _;
        let principal = principal_of(&parts)?;
        let length = args.length.unwrap_or(MCP_READ_BYTES);
        if length == 0 || length > MCP_READ_BYTES {
            return Ok(refused(OpError::Invalid(format!(
                "length {length}: ask for 1 to {MCP_READ_BYTES} bytes, and for the rest from next_offset"
            ))));
        }
        let mut download = match self.operations.open_run_file(&principal, &args.run_id, &args.path).await {
            Ok(download) => download,
            Err(error) => return Ok(refused(error)),
        };
        let size = download.file.bytes;
        if args.offset > size {
            return Ok(refused(OpError::Invalid(format!(
                "offset {} is past the end of {} ({size} bytes)",
                args.offset, args.path
            ))));
        }
        let end = size.min(args.offset + length);
        let (mut at, mut piece) = (0_u64, Vec::new());
        while at < end {
            let Some(chunk) = download.content.next().await else { break };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => return Ok(refused(OpError::Unavailable(format!("{}: {error}", args.path)))),
            };
            let (from, to) = (args.offset.max(at), end.min(at + chunk.len() as u64));
            if from < to {
                piece.extend_from_slice(&chunk[(from - at) as usize..(to - at) as usize]);
            }
            at += chunk.len() as u64;
        }
        // A page ends on a character's boundary where the text is UTF-8, so that each page comes
        // as text, not base64 (found by a new-user trial: one `é` cut at 1 MiB made both pages
        // base64).
        let end = match std::str::from_utf8(&piece) {
            Err(error) if error.error_len().is_none() && error.valid_up_to() > 0 && end < size => {
                piece.truncate(error.valid_up_to());
                args.offset + piece.len() as u64
            }
            _ => end,
        };
        let next_offset = (end < size).then_some(end);
        let mut answer = serde_json::json!({
            "run_id": args.run_id,
            "path": args.path,
            "size": size,
            "offset": args.offset,
            "bytes": piece.len(),
            "next_offset": next_offset,
        });
        // A cut through a character leaves text that is not UTF-8: such a page comes as base64.
        match String::from_utf8(piece) {
            Ok(text) => answer["text"] = serde_json::Value::String(text),
            Err(error) => {
                answer["content_base64"] =
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(error.into_bytes()))
            }
        }
        structured(&answer)
    }

    #[tool(description = "List a directory of a sandbox's /workspace: names, kinds, sizes, modes and times.")]
    async fn sandbox_list_files(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<PathArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        let listed = self.operations.list_files(&principal, &args.sandbox_id, &args.path).await;
        answer(listed.map(|entries| serde_json::json!({ "path": args.path, "entries": entries })))
    }

    #[tool(description = "The accounting of a sandbox's last run: exit code, wall and CPU time, peak memory, output \
        sizes and which limit (if any) ended it.")]
    async fn sandbox_get_metrics(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<SandboxArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&parts)?;
        match self.operations.last_run_of(&principal, &args.sandbox_id).await {
            Ok(Some(run)) => structured(&run),
            Ok(None) => Ok(refused(OpError::NotFound(format!("sandbox {} has not run yet", args.sandbox_id)))),
            Err(error) => Ok(refused(error)),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bkg-agent", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Run untrusted Python and Node.js code in isolated sandboxes: sandbox_start, then sandbox_run_code \
                 or sandbox_run_command as often as needed, sandbox_get_metrics for the last run's resource use, \
                 and sandbox_stop when done.",
            )
    }
}

/// JSON-RPC's "method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC's "Invalid Request": not a request object as the specification has it.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "invalid params".
pub const INVALID_PARAMS: i64 = -32602;

/// The requests of the MCP specification a client may send a server; rmcp answers each (those
/// of capabilities this server lacks with -32601 itself).
const SPECIFIED_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "logging/setLevel",
    "completion/complete",
];

/// The names of this server's tools, in order.
fn tool_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<String> =
            SandboxTools::tool_router().list_all().into_iter().map(|tool| tool.name.into_owned()).collect();
        names.sort_unstable();
        names
    })
}

/// Whether `id` is one an MCP request may have: a string or an integer.
fn is_request_id(id: &serde_json::Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// Why the JSON-RPC request `message` is refused before rmcp reads it, with the request's id
/// and the error's code, so that the client learns what is wrong (found by new-user trials: rmcp
/// answers "tool not found", a bare method name for a method it does not know, and -32601 with
/// the method's name for params that do not fit the method, which are owed -32602). None for
/// anything else, which rmcp answers itself.
pub fn refused_request(message: &serde_json::Value) -> Option<(serde_json::Value, i64, String)> {
    use serde_json::Value;
    // Not a request rmcp could answer in JSON-RPC's terms: it said HTTP 400 "not JSON-RPC" (found
    // by a new-user trial). Batches left MCP with its 2025-06-18 revision.
    if message.is_array() {
        let why = "a batch of requests is not taken (MCP has none since its 2025-06-18 revision): send each in a POST of its own";
        return Some((Value::Null, INVALID_REQUEST, why.to_owned()));
    }
    let request = message.as_object()?;
    if request.contains_key("method") {
        if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Some((Value::Null, INVALID_REQUEST, "a request's jsonrpc must be \"2.0\"".to_owned()));
        }
        // MCP takes a string or an integer (found by a new-user trial: `1.5` had HTTP 400).
        if request.get("id").is_some_and(|id| !is_request_id(id)) {
            let why = "a request's id must be a string or an integer (a notification has none)";
            return Some((Value::Null, INVALID_REQUEST, why.to_owned()));
        }
    }
    let id = request.get("id").filter(|id| is_request_id(id))?.clone();
    let method = request.get("method")?.as_str()?;
    if !SPECIFIED_METHODS.contains(&method) {
        return Some((
            id,
            METHOD_NOT_FOUND,
            format!(
                "method `{method}` is not an MCP request; this server answers initialize, ping, tools/list and \
                 tools/call"
            ),
        ));
    }
    let params = request.get("params").filter(|params| !params.is_null());
    let fields = match params {
        None => None,
        Some(Value::Object(fields)) => Some(fields),
        Some(_) => return Some((id, INVALID_PARAMS, format!("{method}: params must be an object"))),
    };
    let text = |name: &str| fields.and_then(|fields| fields.get(name)).is_some_and(Value::is_string);
    let object = |name: &str| fields.and_then(|fields| fields.get(name)).is_some_and(Value::is_object);
    let why = match method {
        "tools/call" if !text("name") => "tools/call: params.name must be the name of a tool (tools/list lists them)",
        "tools/call"
            if fields
                .and_then(|fields| fields.get("arguments"))
                .is_some_and(|arguments| !(arguments.is_object() || arguments.is_null())) =>
        {
            "tools/call: params.arguments must be an object of the tool's arguments (its inputSchema)"
        }
        "initialize" if !(text("protocolVersion") && object("capabilities") && object("clientInfo")) => {
            "initialize: params must have protocolVersion (a string), capabilities and clientInfo (objects)"
        }
        "tools/call" => {
            let name = fields.and_then(|fields| fields.get("name")).and_then(Value::as_str).unwrap_or_default();
            if tool_names().iter().any(|tool| tool == name) {
                return None;
            }
            let tools = tool_names().join(", ");
            return Some((id, INVALID_PARAMS, format!("tools/call: there is no tool `{name}`; the tools are {tools}")));
        }
        _ => return None,
    };
    Some((id, INVALID_PARAMS, why.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{INVALID_PARAMS, METHOD_NOT_FOUND, refused_request};

    fn invalid_params(message: &serde_json::Value) -> Option<(serde_json::Value, String)> {
        refused_request(message).filter(|(_, code, _)| *code == INVALID_PARAMS).map(|(id, _, why)| (id, why))
    }

    #[test]
    fn params_a_method_cannot_take_are_named_with_the_request_s_id() {
        let call =
            |params: serde_json::Value| json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params });
        let why = |message: serde_json::Value| {
            invalid_params(&message).map(|(id, why)| (id, why.split(':').next().map(str::to_owned)))
        };
        assert_eq!(invalid_params(&call(json!({ "name": "sandbox_list_files" }))), None);
        assert_eq!(invalid_params(&call(json!({ "name": "sandbox_run_code", "arguments": { "code": "1" } }))), None);
        assert_eq!(invalid_params(&call(json!({ "name": "sandbox_stop", "arguments": null }))), None);
        for bad in
            [json!({}), json!({ "name": 5 }), json!({ "name": "sandbox_stop", "arguments": "x" }), json!(5), json!([1])]
        {
            assert_eq!(why(call(bad.clone())), Some((json!(7), Some("tools/call".to_owned()))), "{bad}");
        }
        let no_params = json!({ "jsonrpc": "2.0", "id": "a", "method": "tools/call" });
        assert!(invalid_params(&no_params).is_some_and(|(id, why)| id == "a" && why.contains("params.name")));
        let initialize = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize" });
        assert!(invalid_params(&initialize).is_some_and(|(_, why)| why.starts_with("initialize: ")));
        let good = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } });
        assert_eq!(invalid_params(&good), None);
        // Any method's params must be an object; a notification (no id) is answered by nobody.
        let listed = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": 5 });
        assert_eq!(why(listed), Some((json!(2), Some("tools/list".to_owned()))));
        assert_eq!(invalid_params(&json!({ "jsonrpc": "2.0", "method": "tools/call" })), None);
        assert_eq!(invalid_params(&json!([{ "jsonrpc": "2.0", "id": 1, "method": "tools/call" }])), None);
    }

    #[test]
    fn an_unknown_tool_or_method_is_named_with_what_there_is() {
        let unknown = json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": { "name": "run" } });
        let (id, code, why) = refused_request(&unknown).unwrap_or_default();
        assert_eq!((id, code), (json!(3), INVALID_PARAMS));
        assert!(why.starts_with("tools/call: there is no tool `run`; the tools are run_read_file, sandbox_download"));
        let typo = json!({ "jsonrpc": "2.0", "id": 4, "method": "tools/lists" });
        let (_, code, why) = refused_request(&typo).unwrap_or_default();
        assert_eq!(code, METHOD_NOT_FOUND);
        assert!(why.starts_with("method `tools/lists` is not an MCP request"), "{why}");
        // What the specification has is rmcp's to answer, known or not to this server.
        let prompts = json!({ "jsonrpc": "2.0", "id": 5, "method": "prompts/list" });
        assert_eq!(refused_request(&prompts), None);
    }
}
