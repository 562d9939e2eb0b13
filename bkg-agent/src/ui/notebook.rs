//! A sandbox's notebook: cells of Python or Node run one after another in the sandbox's
//! interpreter session (service/sessions.rs, the one `bkg repl` and MCP use), so what a cell
//! defines the next can use. The cells live in the page; the session lives in the agent until
//! it is ended (or its sandbox's maximum timeout passes). A cell's events stream back as
//! server-sent events of `SessionEvent` JSON, which the page's script shows as text.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use bkg_schema::Language;
use bkg_schema::files::SessionInfo;
use maud::html;
use serde::Deserialize;

use super::UiForm;
use super::user::{event, json_text, refused_stream};
use super::view::{csrf_field, page};
use super::{Viewer, ops, refusal};
use crate::server::{AppState, Failure};

fn notebook_path(id: &str) -> String {
    format!("/ui/sandboxes/{id}/notebook")
}

pub async fn notebook(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let info = match ops::get_sandbox(&state, &viewer.principal, &id).await {
        Ok(info) => info,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let session = match ops::sandbox_session(&state, &viewer.principal, &id).await {
        Ok(session) => session,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let base = notebook_path(&info.id);
    let python = info.language == Language::Python;
    let body = html! {
        p { a href={ "/ui/sandboxes/" (info.id) } { "Back to sandbox " (info.name) } }
        section.card {
            @match &session {
                None => {
                    p { "No session is running in this sandbox. A session is an interpreter that keeps its \
                         variables between cells; while it lives it holds the sandbox, so runs and terminals \
                         wait until it is ended." }
                    form method="post" action={ (base) "/start" } {
                        (csrf_field(&viewer))
                        label for="session-language" { "Language" }
                        select #session-language name="language" {
                            option value="python" selected[python] { "Python" }
                            option value="node" selected[!python] { "Node" }
                        }
                        button type="submit" { "Start a session" }
                    }
                },
                Some(session) => (session_controls(&viewer, &base, session)),
            }
        }
        @if let Some(session) = &session {
            div #notebook data-execute={ (base) "/execute" } data-session=(session.name) {
                div #cells {}
                button #add-cell type="button" { "Add a cell" }
            }
            template #cell-template {
                section.card.cell {
                    div.cell-head {
                        label.cell-label { "Cell" }
                        span.cell-status.muted {}
                    }
                    textarea.cell-code rows="4" spellcheck="false" autocapitalize="off" {}
                    div.actions {
                        button.cell-run type="button" { "Run" }
                        small.muted { "Ctrl+Enter runs; Tab indents (Esc, then Tab, moves on)" }
                    }
                    pre.output.cell-output tabindex="0" aria-live="polite" hidden {}
                }
            }
        }
    };
    page(Some(&viewer), &format!("Notebook of {}", info.name), body).into_response()
}

fn session_controls(viewer: &Viewer, base: &str, session: &SessionInfo) -> maud::Markup {
    html! {
        dl.facts {
            dt { "Session" } dd { (session.name) }
            dt { "Language" } dd { (session.language.as_str()) }
            dt { "Cells run" } dd { (session.executions) }
            dt { "Its run" } dd { a href={ "/ui/runs/" (session.run_id) } { (session.run_id) } }
        }
        div.actions {
            form method="post" action={ (base) "/interrupt" } data-fetch="Interrupted the running cell." {
                (csrf_field(viewer))
                input type="hidden" name="session" value=(session.name);
                button.small type="submit" { "Interrupt" }
            }
            form method="post" action={ (base) "/restart" } data-fetch="Restarted: a fresh interpreter, its variables are gone." {
                (csrf_field(viewer))
                input type="hidden" name="session" value=(session.name);
                button.small type="submit" { "Restart" }
            }
            form method="post" action={ (base) "/end" } data-confirm="End the session? Its variables are gone." {
                (csrf_field(viewer))
                input type="hidden" name="session" value=(session.name);
                button.small.danger type="submit" { "End session" }
            }
        }
        p #notebook-status role="status" {}
    }
}

#[derive(Deserialize)]
pub struct StartForm {
    language: String,
}

pub async fn start(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<StartForm>,
) -> Response {
    let Some(language) = Language::parse(&form.language) else {
        return refusal(Some(&viewer), Failure::invalid(format!("unknown language `{}`", form.language)));
    };
    match ops::create_session(&state, &viewer.principal, &id, language).await {
        Ok(_) => Redirect::to(&notebook_path(&id)).into_response(),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

#[derive(Deserialize)]
pub struct SessionForm {
    session: String,
}

pub async fn interrupt(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<SessionForm>,
) -> Response {
    match ops::interrupt_session(&state, &viewer.principal, &id, &form.session).await {
        Ok(()) => Redirect::to(&notebook_path(&id)).into_response(),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

pub async fn restart(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<SessionForm>,
) -> Response {
    match ops::restart_session(&state, &viewer.principal, &id, &form.session).await {
        Ok(()) => Redirect::to(&notebook_path(&id)).into_response(),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

pub async fn end(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<SessionForm>,
) -> Response {
    match ops::delete_session(&state, &viewer.principal, &id, &form.session).await {
        Ok(()) => Redirect::to(&notebook_path(&id)).into_response(),
        Err(failure) => refusal(Some(&viewer), failure),
    }
}

#[derive(Deserialize)]
pub struct CellForm {
    session: String,
    code: String,
}

/// Runs a cell and answers with its events as they happen: `session` events carrying a
/// `SessionEvent` each (output, display, result, error, and last `end`), or one `error`.
pub async fn execute(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    UiForm(form): UiForm<CellForm>,
) -> Response {
    let events = match ops::execute_in_session(&state, &viewer.principal, &id, &form.session, form.code).await {
        Ok(events) => events,
        Err(failure) => return refused_stream(failure),
    };
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let next = events.recv().await?;
        Some((Ok::<_, Infallible>(event("session", &json_text(&next))), events))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}
