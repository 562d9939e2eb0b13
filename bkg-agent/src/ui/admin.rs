//! The admins' pages: the agent at a glance (health, load, the warm pool, limits, policy), every
//! namespace, and the bkg_db sync with its parked events. The operations refuse everyone else
//! (403).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use bkg_schema::Limits;
use bkg_schema::units::count;
use maud::html;
use serde::Deserialize;

use super::UiForm;
use super::view::{bytes, csrf_field, maybe_time, millis, page, time};
use super::{Viewer, ops, refusal};
use crate::server::AppState;

fn limits_table(default: &Limits, max: &Limits) -> maud::Markup {
    let rows = [
        (
            "CPU",
            format!("{:.2} vCPU", default.cpu_millis as f64 / 1000.0),
            format!("{:.2} vCPU", max.cpu_millis as f64 / 1000.0),
        ),
        ("Memory", bytes(default.memory_bytes), bytes(max.memory_bytes)),
        ("Timeout", millis(default.timeout_ms), millis(max.timeout_ms)),
        ("Disk", bytes(default.disk_bytes), bytes(max.disk_bytes)),
        ("Processes", default.pids.to_string(), max.pids.to_string()),
    ];
    html! {
        table {
            caption { "Limits of a run" }
            thead { tr { th scope="col" { "Limit" } th scope="col" { "Default" } th scope="col" { "Most a caller may ask" } } }
            tbody { @for (name, default, max) in rows { tr { th scope="row" { (name) } td { (default) } td { (max) } } } }
        }
    }
}

pub async fn overview(State(state): State<AppState>, viewer: Viewer) -> Response {
    let info = match ops::agent_info(&state, &viewer.principal).await {
        Ok(info) => info,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let (healthy, health) = match ops::health(&state, &viewer.principal).await {
        Ok(health) => health,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let sync = ops::sync_status(&state, &viewer.principal).await.ok();
    let policy = match ops::key_policy(&state, &viewer.principal) {
        Ok(policy) => policy,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let body = html! {
        (admin_nav("/ui/admin"))
        div.tiles {
            div.tile { span.label { "Health" } span class={ "value " (if healthy { "ok" } else { "failed" }) } { (health) } }
            div.tile { span.label { "Runs going on" } span.value { (info.active_runs) } }
            div.tile { span.label { "Warm sandboxes" } span.value { (info.warm_sandboxes) } }
            div.tile { span.label { "Cleanups pending" } span.value { (info.pending_cleanups) } }
            @if let Some(sync) = &sync {
                div.tile { span.label { "Sync backlog" } span.value { (sync.status.backlog) } }
                div.tile { span.label { "Parked events" } span class={ "value " (if sync.status.parked > 0 { "failed" } else { "ok" }) } { (sync.status.parked) } }
            }
        }
        section.card {
            h2 { "The agent" }
            dl.facts {
                dt { "Version" } dd { (info.version) " (" (info.commit) ", " (info.build_date) ")" }
                dt { "Process" } dd { (info.pid) }
                dt { "Socket" } dd { code { (info.socket) } }
                dt { "State" } dd { code { (info.state_dir) } }
                dt { "cgroups" } dd { (info.cgroup_version) }
                dt { "Protections" } dd { (info.protections.join(", ")) }
            }
        }
        section.card {
            h2 { "Warm pool" }
            p.muted {
                (info.warm_sandboxes) " of " (info.warm_target) " prepared, " (bytes(info.warm_memory_bytes))
                " in all; " (info.prestarted_runs) " runs took an interpreter started ahead."
                @if let Some(zygote) = &info.zygote {
                    @match (zygote.generation, &zygote.reason) {
                        (Some(generation), _) => {
                            " Python's are forks of the zygote (generation " (generation) ", "
                            (bytes(zygote.memory_bytes)) "); "
                        }
                        (None, Some(reason)) if zygote.state == bkg_schema::ZygoteState::Starting => {
                            " The zygote is starting (" (reason) "); "
                        }
                        (None, Some(reason)) => { " No zygote: " (reason) "; " }
                        (None, None) => {}
                    }
                    (info.zygote_runs) " runs were forks of a zygote."
                }
            }
            @if !info.warm_pool.is_empty() {
                div.table-wrap tabindex="0" {
                    table {
                        caption.visually-hidden { "Prepared sandboxes" }
                        thead { tr { th scope="col" { "Sandbox" } th scope="col" { "Memory now" } th scope="col" { "Started ahead" } } }
                        tbody {
                            @for sandbox in &info.warm_pool {
                                tr {
                                    th scope="row" { code { (sandbox.id) } }
                                    td { (bytes(sandbox.memory_bytes)) }
                                    td { (sandbox.started_ahead.map_or("nothing", |language| language.as_str())) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Limits and policy" }
            div.table-wrap tabindex="0" { (limits_table(&info.default_limits, &info.max_limits)) }
            div.table-wrap tabindex="0" {
                table {
                    caption { "Keys by role" }
                    thead { tr { th scope="col" { "Role" } th scope="col" { "Lifetime" } th scope="col" { "Requests a minute" } } }
                    tbody {
                        @for role in &policy {
                            tr {
                                th scope="row" { (role.role.as_str()) }
                                td { (millis(role.ttl_ms)) }
                                td { (role.rate_per_minute) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(Some(&viewer), "Admin", body).into_response()
}

pub async fn namespaces(State(state): State<AppState>, viewer: Viewer) -> Response {
    let namespaces = match ops::namespaces(&state, &viewer.principal).await {
        Ok(namespaces) => namespaces,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let body = html! {
        (admin_nav("/ui/admin/namespaces"))
        p.muted { "Runs are counted among the newest 1000." }
        @if namespaces.is_empty() {
            p.empty { "No namespace has anything yet." }
        } @else {
            div.table-wrap tabindex="0" {
                table {
                    caption.visually-hidden { "Namespaces" }
                    thead { tr { th scope="col" { "Namespace" } th scope="col" { "Sandboxes" } th scope="col" { "Keys" } th scope="col" { "Recent runs" } th scope="col" { "Last run" } } }
                    tbody {
                        @for (name, namespace) in &namespaces {
                            tr {
                                th scope="row" { (name) }
                                td { (namespace.sandboxes) }
                                td { (namespace.keys) }
                                td { a href={ "/ui/runs?namespace=" (name) } { (namespace.recent_runs) } }
                                td { (maybe_time(namespace.last_run_ms)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(Some(&viewer), "Namespaces", body).into_response()
}

pub async fn sync(State(state): State<AppState>, viewer: Viewer) -> Response {
    let view = match ops::sync_status(&state, &viewer.principal).await {
        Ok(view) => view,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let status = &view.status;
    let body = html! {
        (admin_nav("/ui/admin/sync"))
        @if !view.configured { p.muted { "No bkg_db is configured: the outbox keeps every event for one." } }
        div.tiles {
            div.tile { span.label { "Backlog" } span.value { (status.backlog) } }
            div.tile { span.label { "Lag" } span.value { (status.lag_ms.map(millis).unwrap_or_else(|| "none".to_owned())) } }
            div.tile { span.label { "Parked" } span class={ "value " (if status.parked > 0 { "failed" } else { "ok" }) } { (status.parked) } }
            div.tile { span.label { "Failures in a row" } span.value { (status.failures) } }
        }
        section.card {
            dl.facts {
                dt { "Last success" } dd { (maybe_time(status.last_success_ms)) }
                dt { "Last error" } dd { (status.last_error.as_deref().unwrap_or("none")) " " (maybe_time(status.last_error_ms)) }
            }
        }
        section.card {
            h2 { "Parked events" }
            @if view.parked_events.is_empty() {
                p.empty { "Nothing is parked." }
            } @else {
                form method="post" action="/ui/admin/sync/retry" {
                    (csrf_field(&viewer))
                    button type="submit" { "Retry all" }
                }
                div.table-wrap tabindex="0" {
                    table {
                        thead { tr { th scope="col" { "Event" } th scope="col" { "Action" } th scope="col" { "Attempts" } th scope="col" { "Reason" } th scope="col" { "Parked" } th scope="col" { "" } } }
                        tbody {
                            @for event in &view.parked_events {
                                tr {
                                    td { (event.seq) } td { (event.action) } td { (event.attempts) } td { (event.reason) }
                                    td { (time(event.parked_at_ms)) }
                                    td { form method="post" action="/ui/admin/sync/retry" {
                                        (csrf_field(&viewer)) input type="hidden" name="seq" value=(event.seq);
                                        button.small type="submit" aria-label={ "Retry event " (event.seq) } { "Retry" } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(Some(&viewer), "Sync to bkg_db", body).into_response()
}

#[derive(Deserialize)]
pub struct RetryForm {
    seq: Option<u64>,
}

pub async fn sync_retry(State(state): State<AppState>, viewer: Viewer, UiForm(form): UiForm<RetryForm>) -> Response {
    match ops::sync_retry(&state, &viewer.principal, form.seq).await {
        Ok(_) => Redirect::to("/ui/admin/sync").into_response(),
        Err(failure) if failure.status == StatusCode::NOT_FOUND => Redirect::to("/ui/admin/sync").into_response(),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    /// Any value: check the chain and signatures now.
    #[serde(default)]
    verify: String,
}

fn nonempty(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|text| !text.is_empty())
}

pub async fn audit(State(state): State<AppState>, viewer: Viewer, Query(query): Query<AuditQuery>) -> Response {
    let filter = ops::AuditFilter {
        namespace: nonempty(&query.namespace),
        actor: nonempty(&query.actor),
        action: nonempty(&query.action),
        limit: 200,
    };
    let records = match ops::audit_records(&state, &viewer.principal, filter).await {
        Ok(records) => records,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let verified = if query.verify.is_empty() {
        None
    } else {
        match ops::audit_verify(&state, &viewer.principal).await {
            Ok(report) => Some(Ok(report)),
            Err(failure) => Some(Err(failure.message)),
        }
    };
    let body = html! {
        (admin_nav("/ui/admin/audit"))
        section.card {
            h2 { "Verification" }
            @match &verified {
                None => p { "The chain of hashes and signatures is checked when you ask." },
                Some(Ok(report)) => @match &report.first_bad {
                    None => p #audit-verdict.ok-text role="status" {
                        "Intact: " (count(report.records as usize, "record", "records")) " in "
                        (count(report.files, "file", "files")) ", every signature and link good."
                    },
                    Some(bad) => p #audit-verdict.error role="alert" { "Broken at " (bad.file.display()) " line " (bad.line) ": " (bad.reason.as_str()) ": " (bad.detail) },
                },
                Some(Err(message)) => p #audit-verdict.error role="alert" { "Could not verify: " (message) },
            }
            form method="get" action="/ui/admin/audit" {
                input type="hidden" name="namespace" value=(query.namespace);
                input type="hidden" name="actor" value=(query.actor);
                input type="hidden" name="action" value=(query.action);
                button type="submit" name="verify" value="1" { "Verify now" }
            }
        }
        form.filters method="get" action="/ui/admin/audit" {
            div { label for="a-namespace" { "Namespace" } input #a-namespace name="namespace" value=(query.namespace); }
            div { label for="a-actor" { "Actor" } input #a-actor name="actor" value=(query.actor) placeholder="key:… or uid:0"; }
            div { label for="a-action" { "Action" } input #a-action name="action" value=(query.action) placeholder="run.finished"; }
            div { button type="submit" { "Filter" } }
        }
        @if records.is_empty() {
            p.empty { "No records match." }
        } @else {
            p.muted { "The newest " (records.len()) " matching records." }
            div.table-wrap tabindex="0" {
                table {
                    caption.visually-hidden { "Audit records, newest first" }
                    thead { tr { th scope="col" { "Seq" } th scope="col" { "When" } th scope="col" { "Action" } th scope="col" { "Actor" } th scope="col" { "Namespace" } th scope="col" { "Subject" } } }
                    tbody {
                        @for record in &records {
                            tr {
                                td { (record.seq) }
                                td { (time(record.ts_ms)) }
                                td { code { (record.action) } }
                                td { (record.actor) }
                                td { (record.namespace.as_deref().unwrap_or("")) }
                                td { (record.subject().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(Some(&viewer), "Audit log", body).into_response()
}

/// The admin pages' own navigation, `current` marked.
fn admin_nav(current: &str) -> maud::Markup {
    html! {
        nav.subnav aria-label="Admin" {
            @for (href, label) in [("/ui/admin", "Overview"), ("/ui/admin/namespaces", "Namespaces"), ("/ui/keys", "Keys"), ("/ui/admin/audit", "Audit log"), ("/ui/admin/sync", "Sync")] {
                @if href == current { a href=(href) aria-current="page" { (label) } } @else { a href=(href) { (label) } }
            }
        }
    }
}
