//! The pages of every user: sandboxes (list, create, delete), running code in one with its
//! output streamed live, run history, one run with its output, and keys.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use bkg_schema::auth::{CreateKeyRequest, IssuedKey, KeyInfo, Role};
use bkg_schema::sandbox::{NewSandbox, SandboxInfo, SandboxState};
use bkg_schema::{Language, LimitOverrides, Limits, RunRecord, RunResult};
use maud::{Markup, html};
use serde::Deserialize;

use super::UiForm;
use super::view::{bytes, copyable, csrf_field, maybe_time, millis, page, time};
use super::{Viewer, ansi, ops, refusal};
use crate::server::{AppState, Failure};

fn limits_cells(limits: &Limits) -> Markup {
    html! {
        dl.limits {
            dt { "CPU" } dd { (format!("{:.2}", limits.cpu_millis as f64 / 1000.0)) " vCPU" }
            dt { "Memory" } dd { (bytes(limits.memory_bytes)) }
            dt { "Timeout" } dd { (millis(limits.timeout_ms)) }
            dt { "Disk" } dd { (bytes(limits.disk_bytes)) }
            dt { "Processes" } dd { (limits.pids) }
        }
    }
}

fn state_badge(state: SandboxState) -> Markup {
    match state {
        SandboxState::Idle => html! { span.badge { "idle" } },
        SandboxState::Running => html! { span.badge.running { "running" } },
    }
}

pub async fn sandboxes(State(state): State<AppState>, viewer: Viewer) -> Response {
    let list = match ops::list_sandboxes(&state, &viewer.principal).await {
        Ok(list) => list,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    sandboxes_page(&viewer, &list, None, None, StatusCode::OK)
}

fn sandboxes_page(
    viewer: &Viewer,
    list: &[SandboxInfo],
    error: Option<&str>,
    refill: Option<&NewSandboxForm>,
    status: StatusCode,
) -> Response {
    // A refused form comes back as it was sent (found by a new-user trial: it came back empty).
    let sent = refill.cloned().unwrap_or_default();
    let body = html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        @if list.is_empty() {
            p.empty { "No sandboxes yet. Create one below to run Python or Node code in it." }
        } @else {
            div.table-wrap tabindex="0" {
                table {
                    caption.visually-hidden { "Your sandboxes" }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Namespace" } th scope="col" { "Language" }
                        th scope="col" { "State" } th scope="col" { "Limits" } th scope="col" { "Last run" } } }
                    tbody {
                        @for sandbox in list {
                            tr {
                                td { a href={ "/ui/sandboxes/" (sandbox.id) } { (sandbox.name) } }
                                td { (sandbox.namespace) }
                                td { (sandbox.language.as_str()) }
                                td { (state_badge(sandbox.state)) }
                                td { (limits_cells(&sandbox.limits)) }
                                td { (maybe_time(sandbox.last_run.as_ref().map(|run| run.started_at_ms))) }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Create a sandbox" }
            form method="post" action="/ui/sandboxes" {
                (csrf_field(viewer))
                div.grid {
                    div { label for="name" { "Name" }
                        input #name name="name" required pattern="[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?"
                            aria-describedby="name-help" value=(sent.name);
                        small #name-help { "Lowercase letters, digits and dashes." } }
                    div { label for="language" { "Language" }
                        select #language name="language" {
                            option value="python" { "Python" }
                            option value="node" selected[sent.language == "node"] { "Node" }
                        } }
                    @if ops::administers(&viewer.principal) {
                        div { label for="namespace" { "Namespace" } input #namespace name="namespace" placeholder="default" value=(sent.namespace); }
                    }
                    div { label for="cpus" { "CPUs" } input #cpus name="cpus" placeholder="1" inputmode="decimal" value=(sent.cpus); }
                    div { label for="memory" { "Memory" } input #memory name="memory" placeholder="512MiB" value=(sent.memory); }
                    div { label for="timeout" { "Timeout" } input #timeout name="timeout" placeholder="60s" value=(sent.timeout); }
                    div { label for="disk" { "Disk" } input #disk name="disk" placeholder="500MiB" value=(sent.disk); }
                }
                label for="env" { "Environment (NAME=value, one a line)" }
                textarea #env name="env" rows="3" spellcheck="false" { (sent.env) }
                button type="submit" { "Create" }
            }
        }
    };
    (status, page(Some(viewer), "Sandboxes", body)).into_response()
}

#[derive(Deserialize, Clone, Default)]
pub struct NewSandboxForm {
    name: String,
    language: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    cpus: String,
    #[serde(default)]
    memory: String,
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    disk: String,
    #[serde(default)]
    env: String,
}

fn optional<T>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, bkg_schema::UnitError>,
    what: &str,
) -> Result<Option<T>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    parse(text).map(Some).map_err(|error| format!("{what}: {error}"))
}

fn new_sandbox(form: &NewSandboxForm) -> Result<NewSandbox, String> {
    let language =
        Language::parse(form.language.trim()).ok_or_else(|| format!("unknown language `{}`", form.language))?;
    let limits = LimitOverrides {
        cpu_millis: optional(&form.cpus, bkg_schema::parse_cpus, "CPUs")?,
        memory_bytes: optional(&form.memory, bkg_schema::parse_size, "memory")?,
        timeout_ms: optional(&form.timeout, bkg_schema::parse_duration_ms, "timeout")?,
        disk_bytes: optional(&form.disk, bkg_schema::parse_size, "disk")?,
        pids: None,
    };
    let mut env = BTreeMap::new();
    for line in form.env.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (name, value) =
            line.split_once('=').ok_or_else(|| format!("environment line `{line}` is not NAME=value"))?;
        env.insert(name.trim().to_owned(), value.to_owned());
    }
    let namespace = Some(form.namespace.trim().to_owned()).filter(|namespace| !namespace.is_empty());
    Ok(NewSandbox {
        name: form.name.trim().to_owned(),
        namespace,
        language,
        limits,
        env,
        scripts: BTreeMap::new(),
        restart: Default::default(),
    })
}

pub async fn create_sandbox(
    State(state): State<AppState>,
    viewer: Viewer,
    UiForm(form): UiForm<NewSandboxForm>,
) -> Response {
    let created = match new_sandbox(&form) {
        Ok(new) => ops::create_sandbox(&state, &viewer.principal, new)
            .await
            .map_err(|failure| (failure.status, failure.message)),
        Err(message) => Err((StatusCode::UNPROCESSABLE_ENTITY, message)),
    };
    match created {
        Ok(info) => Redirect::to(&format!("/ui/sandboxes/{}", info.id)).into_response(),
        Err((status, message)) => {
            let list = ops::list_sandboxes(&state, &viewer.principal).await.unwrap_or_default();
            sandboxes_page(&viewer, &list, Some(&message), Some(&form), status)
        }
    }
}

pub async fn sandbox(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let info = match ops::get_sandbox(&state, &viewer.principal, &id).await {
        Ok(info) => info,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let python = info.language == Language::Python;
    let sample = if python { "print(6*7)\n" } else { "console.log(6*7)\n" };
    let body = html! {
        section.card {
            dl.facts {
                dt { "Id" } dd { (copyable(&info.id)) }
                dt { "Namespace" } dd { (info.namespace) }
                dt { "State" } dd { (state_badge(info.state)) }
                dt { "Created" } dd { (time(info.created_at_ms)) }
                dt { "Disk in use" } dd { (bytes(info.disk_bytes_allocated)) }
            }
            h2 { "Limits" }
            (limits_cells(&info.limits))
        }
        section.card {
            h2 { "Run code" }
            form #run-form method="post" action={ "/ui/sandboxes/" (info.id) "/run" } {
                (csrf_field(&viewer))
                label for="run-language" { "Language" }
                select #run-language name="language" {
                    option value="python" selected[python] { "Python" }
                    option value="node" selected[!python] { "Node" }
                }
                label for="code" { "Code" }
                textarea #code name="code" rows="10" spellcheck="false" autocapitalize="off" { (sample) }
                div.actions {
                    button #run-button type="submit" { "Run" } small.muted { "Ctrl+Enter runs; Tab indents (Esc, then Tab, moves on)" }
                }
            }
            div #run-live hidden {
                h3 { "Output" }
                pre #run-output.output aria-live="polite" tabindex="0" {}
                p #run-summary role="status" {}
            }
        }
        nav.links aria-label="This sandbox" {
            a href={ "/ui/sandboxes/" (info.id) "/notebook" } { "Notebook" }
            a href={ "/ui/sandboxes/" (info.id) "/terminal" } { "Terminal" }
            a href={ "/ui/runs?sandbox=" (info.id) } { "Runs of this sandbox" }
        }
        section.card.danger {
            h2 { "Delete" }
            form method="post" action={ "/ui/sandboxes/" (info.id) "/delete" } data-confirm={ "Delete sandbox " (info.name) " with its disk and logs?" } {
                (csrf_field(&viewer))
                button.danger type="submit" { "Delete this sandbox" }
            }
        }
    };
    page(Some(&viewer), &format!("Sandbox {}", info.name), body).into_response()
}

pub async fn delete_sandbox(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    match ops::delete_sandbox(&state, &viewer.principal, &id).await {
        Ok(()) => Redirect::to("/ui/sandboxes").into_response(),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

#[derive(Deserialize)]
pub struct RunForm {
    language: String,
    code: String,
}

/// One server-sent event.
pub(super) fn event(name: &str, data: &str) -> Bytes {
    let mut text = format!("event: {name}\n");
    for line in data.split('\n') {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

pub(super) fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// What the run page shows when a run ends: its result without the output it already showed.
#[derive(serde::Serialize)]
struct Ended<'a> {
    id: &'a str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// How the agent ended it, in words; none when it ended by itself.
    killed: Option<&'static str>,
    wall: String,
    cpu: String,
    peak_memory: String,
}

fn ended(result: &RunResult) -> Ended<'_> {
    Ended {
        id: &result.id,
        exit_code: result.exit_code,
        signal: result.signal,
        killed: result.killed_by.map(crate::ui::view::killed_words),
        wall: millis(result.wall_ms),
        cpu: millis(result.cpu_ms),
        peak_memory: bytes(result.peak_memory_bytes),
    }
}

/// A refused streamed request: its status, and its message as the stream's one `error` event,
/// which the page's script shows where the output would have been.
pub(super) fn refused_stream(failure: Failure) -> Response {
    let mut response = (failure.status, event("error", &json_text(&failure.message))).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// Runs code and answers with its output as server-sent events (`started`, `stdout`, `stderr`
/// with JSON strings, then `result` or `error`), read by the page's script as they come.
pub async fn run_code(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<RunForm>,
) -> Response {
    let Some(language) = Language::parse(&form.language) else {
        return refusal(Some(&viewer), Failure::invalid(format!("unknown language `{}`", form.language)));
    };
    let run = match ops::run_code(&state, &viewer.principal, &id, language, &form.code).await {
        Ok(run) => run,
        Err(failure) => return refused_stream(failure),
    };
    let ops::CodeRun { output, result } = run;
    let streams = Streams { output, result: Some(result), stdout: Vec::new(), stderr: Vec::new() };
    let events = futures_util::stream::unfold(streams, |mut streams| async move {
        if let Some(event_out) = streams.output.recv().await {
            let chunk = match event_out {
                ops::RunOutput::Started(run_id) => event("started", &json_text(&run_id)),
                ops::RunOutput::Stdout(bytes) => event("stdout", &json_text(&whole_chars(&mut streams.stdout, &bytes))),
                ops::RunOutput::Stderr(bytes) => event("stderr", &json_text(&whole_chars(&mut streams.stderr, &bytes))),
                ops::RunOutput::Progress(line) => event("progress", &json_text(&line)),
                // A page's run never asks for /workspace/out/ back.
                ops::RunOutput::Archive(_) => axum::body::Bytes::new(),
            };
            return Some((Ok::<_, Infallible>(chunk), streams));
        }
        let result = streams.result.take()?;
        let mut chunk = Vec::new();
        // What is left of a character cut short is shown as it is (U+FFFD).
        for (name, rest) in [("stdout", &streams.stdout), ("stderr", &streams.stderr)] {
            if !rest.is_empty() {
                chunk.extend_from_slice(&event(name, &json_text(&String::from_utf8_lossy(rest))));
            }
        }
        chunk.extend_from_slice(&match result.await {
            Ok(Ok(result)) => event("result", &json_text(&ended(&result))),
            Ok(Err(error)) => event("error", &json_text(&error.to_string())),
            Err(_) => event("error", &json_text(&"the run's task failed")),
        });
        Some((Ok(Bytes::from(chunk)), streams))
    });
    let mut response = Response::new(Body::from_stream(events));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// A run's output on its way to the page: a character split between two reads waits for its
/// other half, so multi-byte text arrives whole.
struct Streams {
    output: tokio::sync::mpsc::Receiver<ops::RunOutput>,
    result: Option<ops::RunTask>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// The text of `carry` + `bytes` up to the last whole UTF-8 character; the rest stays in `carry`.
/// Bytes that can never be UTF-8 become U+FFFD.
fn whole_chars(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    carry.extend_from_slice(bytes);
    let cut = match std::str::from_utf8(carry) {
        Ok(_) => carry.len(),
        // An incomplete character at the very end (at most 3 bytes) waits for the next read.
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        Err(_) => carry.len(),
    };
    let rest = carry.split_off(cut);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

#[derive(Deserialize, Default)]
pub struct RunsQuery {
    /// A sandbox's name or id.
    #[serde(default)]
    sandbox: String,
    /// The runs older than this one: the next page.
    #[serde(default)]
    before: String,
    #[serde(default)]
    namespace: String,
    /// `ok`, `failed` or `killed`.
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    language: String,
    limit: Option<u32>,
}

fn outcome(run: &RunRecord) -> &'static str {
    match (run.finished_at_ms, run.killed_by, run.exit_code) {
        (None, _, _) => "running",
        (_, Some(_), _) => "killed",
        (_, None, Some(0)) => "ok",
        _ => "failed",
    }
}

fn outcome_badge(run: &RunRecord) -> Markup {
    let outcome = outcome(run);
    // As `bkg runs` says it, the limit in words (found by a new-user trial: "failed" for a
    // segfault, and "killed at its memory limit" for a script that exited 3).
    let label = match outcome {
        _ if run.queued => "queued".to_owned(),
        "running" => outcome.to_owned(),
        _ => bkg_schema::run_ending(run.killed_by, run.exit_code, run.signal, crate::ui::view::killed_words)
            .unwrap_or_else(|| outcome.to_owned()),
    };
    html! { span class={ "badge " (outcome) } { (label) } }
}

pub async fn runs(
    State(state): State<AppState>,
    viewer: Viewer,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return super::view::unreadable_query(&viewer, &rejection),
    };
    let known = |value: &str, allowed: &[&str]| value.is_empty() || allowed.contains(&value);
    if !known(&query.outcome, &["ok", "failed", "killed", "running"]) || !known(&query.language, &["python", "node"]) {
        return super::view::error_page(
            Some(&viewer),
            StatusCode::BAD_REQUEST,
            "This page's address asks for an outcome or a language there is none of: set the filters with the \
             page's form.",
        );
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let sandbox = match sandbox_by_name_or_id(&state, &viewer, query.sandbox.trim()).await {
        Ok(sandbox) => sandbox,
        Err(refused) => return refused,
    };
    let filter = ops::RunFilter {
        namespace: Some(query.namespace.trim().to_owned()).filter(|text| !text.is_empty()),
        sandbox,
        before: Some(query.before.trim().to_owned()).filter(|text| !text.is_empty()),
        limit,
    };
    let list = match ops::list_runs(&state, &viewer.principal, filter).await {
        Ok(list) => list,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let shown: Vec<&RunRecord> = list
        .iter()
        .filter(|run| query.outcome.is_empty() || outcome(run) == query.outcome)
        .filter(|run| query.language.is_empty() || run.language.as_str() == query.language)
        .collect();
    let body = html! {
        form.filters method="get" action="/ui/runs" {
            div { label for="f-sandbox" { "Sandbox" } input #f-sandbox name="sandbox" value=(query.sandbox) placeholder="name or id"; }
            @if ops::administers(&viewer.principal) {
                div { label for="f-namespace" { "Namespace" } input #f-namespace name="namespace" value=(query.namespace); }
            }
            div { label for="f-outcome" { "Outcome" }
                select #f-outcome name="outcome" {
                    @for (value, label) in [("", "any"), ("ok", "ok"), ("failed", "failed"), ("killed", "killed"), ("running", "running")] {
                        option value=(value) selected[query.outcome == value] { (label) }
                    }
                } }
            div { label for="f-language" { "Language" }
                select #f-language name="language" {
                    @for (value, label) in [("", "any"), ("python", "Python"), ("node", "Node")] {
                        option value=(value) selected[query.language == value] { (label) }
                    }
                } }
            div { button type="submit" { "Filter" } }
        }
        @if shown.is_empty() {
            p.empty { "No runs match. Run code in a sandbox and it shows up here." }
        } @else {
            div.table-wrap tabindex="0" {
                table {
                    caption.visually-hidden { "Runs, newest first" }
                    thead { tr { th scope="col" { "Run" } th scope="col" { "Started" } th scope="col" { "Namespace" }
                        th scope="col" { "Language" } th scope="col" { "Outcome" } th scope="col" { "Wall" } th scope="col" { "Peak memory" } } }
                    tbody {
                        @for run in &shown {
                            tr {
                                td { a href={ "/ui/runs/" (run.id) } { code { (run.id) } } }
                                td { (time(run.started_at_ms)) }
                                td { (run.namespace) }
                                td { (run.language.as_str()) }
                                td { (outcome_badge(run)) }
                                td { (run.wall_ms.map(millis).unwrap_or_default()) }
                                td { (run.peak_memory_bytes.map(bytes).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
        // A full page may have older runs behind it (the filters above hold for it too).
        @if let Some(last) = list.last().filter(|_| list.len() as u32 == limit) {
            p { a href={ "/ui/runs?" (older_runs_query(&query, &last.id)) } { "Older runs" } }
        }
    };
    page(Some(&viewer), "Runs", body).into_response()
}

/// The runs page's query for the page of runs older than `last`, with the same filters.
fn older_runs_query(query: &RunsQuery, last: &str) -> String {
    let limit = query.limit.map(|limit| limit.to_string()).unwrap_or_default();
    let pairs = [
        ("sandbox", query.sandbox.as_str()),
        ("namespace", query.namespace.as_str()),
        ("outcome", query.outcome.as_str()),
        ("language", query.language.as_str()),
        ("limit", limit.as_str()),
        ("before", last),
    ];
    let given: Vec<(&str, &str)> = pairs.into_iter().filter(|(_, value)| !value.is_empty()).collect();
    serde_urlencoded::to_string(given).unwrap_or_default()
}

/// The sandbox id a runs filter names: an id the caller sees, else the one sandbox of that name
/// (found by a new-user trial: the filter took ids only, which nobody types). A name several
/// sandboxes share is refused with the fix; a name of none filters to nothing.
async fn sandbox_by_name_or_id(state: &AppState, viewer: &Viewer, text: &str) -> Result<Option<String>, Response> {
    if text.is_empty() {
        return Ok(None);
    }
    let sandboxes =
        ops::list_sandboxes(state, &viewer.principal).await.map_err(|failure| refusal(Some(viewer), failure))?;
    if sandboxes.iter().any(|info| info.id == text) {
        return Ok(Some(text.to_owned()));
    }
    let named: Vec<&SandboxInfo> = sandboxes.iter().filter(|info| info.name == text).collect();
    match named.as_slice() {
        [one] => Ok(Some(one.id.clone())),
        [] => Ok(Some(text.to_owned())),
        several => {
            let ids: Vec<&str> = several.iter().map(|info| info.id.as_str()).collect();
            Err(super::view::error_page(
                Some(viewer),
                StatusCode::BAD_REQUEST,
                &format!(
                    "Several sandboxes are named {text}: filter by the id of the one you mean ({}).",
                    ids.join(", ")
                ),
            ))
        }
    }
}

pub async fn run(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let record = match ops::get_run(&state, &viewer.principal, &id).await {
        Ok(record) => record,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let output = match ops::run_output(&state, &viewer.principal, &record).await {
        Ok(output) => output,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let session = state.service.session_of_run(&record.id);
    let body = html! {
        section.card {
            dl.facts {
                dt { "Id" } dd { (copyable(&record.id)) }
                dt { "Outcome" } dd { (outcome_badge(&record)) }
                dt { "Namespace" } dd { (record.namespace) }
                @if let Some(sandbox) = &record.sandbox_id {
                    dt { "Sandbox" } dd { a href={ "/ui/sandboxes/" (sandbox) } { (sandbox) } }
                }
                dt { "Language" } dd { (record.language.as_str()) }
                dt { "Started" } dd { (time(record.started_at_ms)) }
                dt { "Finished" } dd { @if record.finished_at_ms.is_some() { (maybe_time(record.finished_at_ms)) } @else { "not yet" } }
                dt { "Wall" } dd { (record.wall_ms.map(millis).unwrap_or_default()) }
                dt { "CPU" } dd { (record.cpu_ms.map(millis).unwrap_or_default()) }
                dt { "Peak memory" } dd { (record.peak_memory_bytes.map(bytes).unwrap_or_default()) }
                dt { "Output" } dd {
                    @if record.finished_at_ms.is_some() {
                        (bytes(record.stdout_bytes.unwrap_or(0))) " stdout, " (bytes(record.stderr_bytes.unwrap_or(0))) " stderr"
                    } @else { "counted when the run ends" }
                }
                @if let Some(error) = &record.error { dt { "Error" } dd { (error) } }
            }
            h2 { "Limits" }
            (limits_cells(&record.limits))
        }
        @if record.finished_at_ms.is_none() {
            @if let Some((sandbox_id, session)) = &session {
                // Cancelling is refused (service/runs.rs, `cancel_run`): it would lose the
                // session's variables.
                section.card {
                    h2 { "Session" }
                    p {
                        "This run is the interpreter of session " code { (session) } " of sandbox "
                        a href={ "/ui/sandboxes/" (sandbox_id) } { (bkg_schema::sandbox::sandbox_name_of(sandbox_id)) }
                        ", which holds its variables: it is not cancelled. Interrupt its execution (Ctrl-C on "
                        code { "bkg exec" } "), or end the session by stopping the sandbox."
                    }
                }
            } @else {
                section.card.danger {
                    h2 { "Cancel" }
                    form method="post" action={ "/ui/runs/" (record.id) "/cancel" } data-confirm={ "Cancel run " (record.id) "? Its code gets SIGTERM, and SIGKILL " (bkg_schema::STOP_GRACE.as_secs()) " s later." } {
                        (csrf_field(&viewer))
                        button.danger type="submit" { "Cancel this run" }
                    }
                }
            }
        }
        section.card {
            h2 { "Output" }
            @match &output {
                Some(output) if output.is_empty() => p.empty { "The run wrote nothing." },
                Some(output) => {
                    pre.output tabindex="0" { (ansi::render(output)) }
                    @if output.len() as u64 >= ops::MAX_SHOWN_OUTPUT_BYTES { p.muted { "Only the first " (bytes(ops::MAX_SHOWN_OUTPUT_BYTES)) " are shown." } }
                },
                None if record.sandbox_id.is_none() => p.empty { "The output of a run in a sandbox of its own (" code { "bkg exe" } ") went to its caller: the agent keeps none of it beyond its size and, past 1 MiB, a copy among its files (" code { "bkg runs files " (record.id) } ")." },
                None => p.empty { "The agent keeps the output of the newest runs of each sandbox; this run's is not kept." },
            }
        }
    };
    page(Some(&viewer), &format!("Run {}", record.id), body).into_response()
}

/// Ends a run going on, then shows it; one that had ended already is shown as it ended.
pub async fn cancel_run(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    match ops::cancel_run(&state, &viewer.principal, &id).await {
        Ok(record) => Redirect::to(&format!("/ui/runs/{}", record.id)).into_response(),
        // Ended meanwhile: the run is shown as it ended (a session's interpreter, refused, is not).
        Err(failure) if failure.status == StatusCode::CONFLICT => {
            match ops::get_run(&state, &viewer.principal, &id).await {
                Ok(record) if record.finished_at_ms.is_some() => {
                    Redirect::to(&format!("/ui/runs/{}", record.id)).into_response()
                }
                _ => refusal(Some(&viewer), failure),
            }
        }
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

fn key_status(key: &KeyInfo) -> Markup {
    if key.revoked_at_ms.is_some() {
        html! { span.badge.killed { "revoked" } }
    } else if !key.is_active(crate::ids::now_ms()) {
        html! { span.badge.failed { "expired" } }
    } else {
        html! { span.badge.ok { "active" } }
    }
}

/// A key's new secret, shown once.
fn new_secret(issued: &IssuedKey) -> Markup {
    html! {
        section.card.secret role="status" {
            h2 { "The new secret of " (issued.info.id) }
            p { "Copy it now: it is shown only this once." }
            (copyable(&issued.key))
        }
    }
}

fn keys_page(
    viewer: &Viewer,
    keys: &[KeyInfo],
    issued: Option<&IssuedKey>,
    error: Option<&str>,
    refill: Option<&NewKeyForm>,
    status: StatusCode,
) -> Response {
    let admin = ops::administers(&viewer.principal);
    // A refused form comes back as it was sent (found by a new-user trial: it came back empty).
    let sent = refill.cloned().unwrap_or_default();
    let chosen_role = if sent.role.is_empty() && admin { "namespace" } else { sent.role.as_str() };
    let may_issue = matches!(viewer.principal.role(), Role::Admin | Role::Namespace);
    let body = html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        @if let Some(issued) = issued { (new_secret(issued)) }
        @if keys.is_empty() {
            p.empty { "No keys to show." }
        } @else {
            div.table-wrap tabindex="0" {
                table {
                    caption.visually-hidden { "Keys" }
                    thead { tr { th scope="col" { "Key" } th scope="col" { "Role" } th scope="col" { "Namespace" } th scope="col" { "Name" }
                        th scope="col" { "Status" } th scope="col" { "Expires" } th scope="col" { "Last used" } th scope="col" { "Actions" } } }
                    tbody {
                        @for key in keys {
                            tr {
                                td { (copyable(&key.id)) }
                                td { (key.role.as_str()) }
                                td { (key.namespace.as_deref().unwrap_or("all")) }
                                td { (key.name.as_deref().or(key.user.as_deref()).unwrap_or("")) }
                                td { (key_status(key)) }
                                // A revoked key's expiry means nothing any more (found by a new-user trial).
                                td { @if key.revoked_at_ms.is_some() { span.muted { "—" } } @else { (time(key.expires_at_ms)) } }
                                td { (maybe_time(key.last_used_at_ms)) }
                                td.actions {
                                    // An expired key cannot be rotated (409), and revoking it changes
                                    // nothing (found by a new-user trial).
                                    @if key.is_active(crate::ids::now_ms()) {
                                        @let own = viewer.principal.key_id() == Some(key.id.as_str());
                                        @let warning = if own { " It is the key you are signed in with: this session ends, and you sign in again with the new secret." } else { "" };
                                        form method="post" action={ "/ui/keys/" (key.id) "/rotate" } data-confirm={ "Rotate " (key.id) "? Its old secret stops working at once." (warning) } {
                                            (csrf_field(viewer)) button.small type="submit" aria-label={ "Rotate " (key.id) } { "Rotate" }
                                        }
                                        form method="post" action={ "/ui/keys/" (key.id) "/revoke" } data-confirm={ "Revoke " (key.id) "? It stops working at once." } {
                                            (csrf_field(viewer)) button.small.danger type="submit" aria-label={ "Revoke " (key.id) } { "Revoke" }
                                        }
                                    } @else {
                                        span.muted { "—" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if may_issue {
            section.card {
                h2 { "Issue a key" }
                form method="post" action="/ui/keys" {
                    (csrf_field(viewer))
                    div.grid {
                        div { label for="role" { "Role" }
                            select #role name="role" {
                                @for role in ["admin", "namespace", "session", "model-access"] {
                                    @if admin || !matches!(role, "admin" | "namespace") {
                                        option value=(role) selected[role == chosen_role] { (role) }
                                    }
                                }
                            } }
                        @if admin { div { label for="key-namespace" { "Namespace" } input #key-namespace name="namespace" placeholder="team-a" value=(sent.namespace); } }
                        div { label for="key-name" { "Name" } input #key-name name="name" placeholder="ci" value=(sent.name); }
                        div { label for="ttl" { "Lifetime" } input #ttl name="ttl" placeholder="the role's" value=(sent.ttl); }
                    }
                    button type="submit" { "Issue" }
                }
            }
        }
    };
    (status, page(Some(viewer), "Keys", body)).into_response()
}

pub async fn keys(State(state): State<AppState>, viewer: Viewer) -> Response {
    let issued = state.ui.take_shown_once(&viewer.session_id);
    match ops::list_keys(&state, &viewer.principal).await {
        Ok(keys) => keys_page(&viewer, &keys, issued.as_ref(), None, None, StatusCode::OK),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

#[derive(Deserialize, Clone, Default)]
pub struct NewKeyForm {
    role: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ttl: String,
}

fn key_request(form: &NewKeyForm) -> Result<CreateKeyRequest, String> {
    let role: Role = serde_json::from_value(serde_json::Value::String(form.role.trim().to_owned()))
        .map_err(|_| format!("unknown role `{}`", form.role))?;
    // A key's lifetime is hours or days: examples of those, not a run's seconds (found by a
    // new-user trial).
    let ttl_ms = optional(&form.ttl, bkg_schema::parse_duration_ms, "lifetime")
        .map_err(|_| format!("lifetime: `{}` is not a duration: use one like 12h, 7d or 30d", form.ttl.trim()))?;
    Ok(CreateKeyRequest {
        role,
        namespace: Some(form.namespace.trim().to_owned()).filter(|text| !text.is_empty()),
        name: Some(form.name.trim().to_owned()).filter(|text| !text.is_empty()),
        ttl_seconds: ttl_ms.map(|ms| ms.div_ceil(1000)),
    })
}

async fn after_key_change(
    state: &AppState,
    viewer: &Viewer,
    outcome: Result<IssuedKey, (StatusCode, String)>,
    refill: Option<&NewKeyForm>,
) -> Response {
    match outcome {
        // The keys page shows the secret, reached by a redirect, so that a reload issues nothing
        // again (found by a new-user trial: it issued, or rotated, once more). The key of this
        // very session is the exception: its rotation ended the session, so this answer shows
        // the secret on a signed-out page and clears the session's cookie (found by a new-user
        // trial: the page still looked signed in).
        Ok(issued) if viewer.principal.key_id() == Some(issued.info.id.as_str()) => {
            let body = html! {
                (new_secret(&issued))
                p { "It was the key of this session, which has ended: " a href="/ui/login" { "sign in again" } " with the new secret." }
            };
            super::auth_pages::signed_out(state, &viewer.session_id, page(None, "Key rotated", body).into_response()).1
        }
        Ok(issued) => {
            state.ui.show_once(&viewer.session_id, issued);
            Redirect::to("/ui/keys").into_response()
        }
        Err((status, message)) => {
            let keys = ops::list_keys(state, &viewer.principal).await.unwrap_or_default();
            keys_page(viewer, &keys, None, Some(&message), refill, status)
        }
    }
}

pub async fn create_key(State(state): State<AppState>, viewer: Viewer, UiForm(form): UiForm<NewKeyForm>) -> Response {
    let outcome = match key_request(&form) {
        Ok(request) => ops::create_key(&state, &viewer.principal, request).await.map_err(|f| (f.status, f.message)),
        Err(message) => Err((StatusCode::UNPROCESSABLE_ENTITY, message)),
    };
    after_key_change(&state, &viewer, outcome, Some(&form)).await
}

pub async fn rotate_key(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let outcome = ops::rotate_key(&state, &viewer.principal, &id).await.map_err(|f| (f.status, f.message));
    after_key_change(&state, &viewer, outcome, None).await
}

pub async fn revoke_key(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    match ops::revoke_key(&state, &viewer.principal, &id).await {
        Ok(_) => Redirect::to("/ui/keys").into_response(),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

#[cfg(test)]
mod tests {
    use super::whole_chars;

    #[test]
    fn a_character_split_between_reads_arrives_whole() {
        let mut carry = Vec::new();
        let euro = "€".as_bytes();
        assert_eq!(whole_chars(&mut carry, &[b'a', euro[0]]), "a");
        assert_eq!(whole_chars(&mut carry, &euro[1..]), "€");
        assert!(carry.is_empty());
        assert_eq!(whole_chars(&mut carry, &[0xff, b'b']), "\u{fffd}b");
    }
}
