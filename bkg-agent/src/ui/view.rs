//! The frame of every page (header, navigation, main) and the small pieces pages share: times,
//! sizes, durations, copy buttons. maud escapes every value put in, so what a user or a sandbox
//! wrote is always text.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use bkg_schema::KilledBy;
use maud::{DOCTYPE, Markup, html};

use super::{CSRF_FIELD, Viewer};

/// A whole page: `title`, the navigation for `viewer` (none on the login page), `body`.
pub fn page(viewer: Option<&Viewer>, title: &str, body: Markup) -> Html<String> {
    Html(frame(viewer, title, body).into_string())
}

fn frame(viewer: Option<&Viewer>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · bkg" }
                link rel="stylesheet" href="/ui/assets/app.css";
                // Named, so that a browser does not ask for /favicon.ico, which the API refuses
                // without a key (found by a new-user trial: a 401 in every page's console).
                link rel="icon" type="image/svg+xml" href="/ui/assets/favicon.svg";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/sandboxes" { "bkg" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Main" {
                            a href="/ui/sandboxes" { "Sandboxes" }
                            a href="/ui/runs" { "Runs" }
                            a href="/ui/keys" { "Keys" }
                            @if super::ops::administers(&viewer.principal) {
                                a href="/ui/admin" { "Admin" }
                                a href="/ui/admin/audit" { "Audit" }
                            }
                        }
                        div.who {
                            span.muted { (who(viewer)) }
                            form method="post" action="/ui/logout" {
                                (csrf_field(viewer))
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main #main { h1 { (title) } (body) }
            }
        }
    }
}

fn who(viewer: &Viewer) -> String {
    match &viewer.principal {
        crate::auth::Principal::Local { .. } => "admin · this machine".to_owned(),
        crate::auth::Principal::User(user) => format!("{} · {}", user.name, user.namespace),
        crate::auth::Principal::Key(key) => {
            let name = key.user.as_deref().or(key.name.as_deref()).unwrap_or(&key.id);
            match viewer.principal.namespace() {
                Some(namespace) => format!("{name} · {namespace}"),
                None => format!("{name} · {}", key.role.as_str()),
            }
        }
    }
}

pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf); }
}

/// An error page with its status.
pub fn error_page(viewer: Option<&Viewer>, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        p.error role="alert" { (message) }
        p { a href="/ui/sandboxes" { "Back to your sandboxes" } }
    };
    (status, page(viewer, title, body)).into_response()
}

/// The page for an address whose query a page cannot read (`?limit=abc`, typed or edited by
/// hand; the page's own forms never make one): the error page, saying which value.
pub fn unreadable_query(viewer: &Viewer, rejection: &axum::extract::rejection::QueryRejection) -> Response {
    let said = rejection.body_text();
    let what = said.strip_prefix("Failed to deserialize query string: ").unwrap_or(&said);
    error_page(
        Some(viewer),
        StatusCode::BAD_REQUEST,
        &format!("This page's address has a value it cannot read ({what}): set the filters with the page's form."),
    )
}

pub fn login(csrf: &str, error: Option<&str>) -> Html<String> {
    let body = html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        div.cards {
            section.card {
                h2 { "User and password" }
                form method="post" action="/ui/login" {
                    input type="hidden" name=(CSRF_FIELD) value=(csrf);
                    label for="username" { "User" }
                    input #username name="username" autocomplete="username" required;
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { "Log in" }
                }
            }
            section.card {
                h2 { "API key" }
                form method="post" action="/ui/login/key" {
                    input type="hidden" name=(CSRF_FIELD) value=(csrf);
                    label for="key" { "Key" }
                    input #key name="key" type="password" autocomplete="off" required;
                    button type="submit" { "Log in with the key" }
                }
            }
        }
        form #token-form method="post" action="/ui/login/token" hidden {
            input type="hidden" name=(CSRF_FIELD) value=(csrf);
            input type="hidden" name="token";
        }
        p.muted { "On the agent's machine, " code { "bkg ui" } " opens this page logged in." }
    };
    page(None, "Log in", body)
}

/// A time: exact (UTC) on hover, relative in the text once the script has run.
pub fn time(ms: u64) -> Markup {
    let exact = utc(ms);
    html! { time datetime=(exact) title=(exact) data-rel { (exact) } }
}

pub fn maybe_time(ms: Option<u64>) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { span.muted { "never" } },
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of milliseconds since the epoch.
pub fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{count} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

pub fn millis(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.2} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000),
        3_600_000..86_400_000 => format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
        _ => format!("{}d {}h", ms / 86_400_000, ms % 86_400_000 / 3_600_000),
    }
}

/// A value with a button that copies it.
/// How a run the agent ended ended, in the UI's words (found by a new-user trial: "killed by
/// cancelled"). The terminal's script reads them from its page (`killed_words_json`).
pub fn killed_words(killed_by: KilledBy) -> &'static str {
    match killed_by {
        KilledBy::Timeout => "stopped at its time limit",
        KilledBy::Memory => "killed at its memory limit",
        KilledBy::Pids => "killed at its process limit",
        KilledBy::Disk => "ended with its disk full",
        KilledBy::Cancelled => "cancelled",
        KilledBy::Shutdown => "stopped as the agent stopped",
        KilledBy::Interrupted => "interrupted: the agent stopped before it ended",
    }
}

/// [`killed_words`] of every way, by `killed_by`'s JSON name, for a page's script.
pub fn killed_words_json() -> String {
    let words: serde_json::Map<String, serde_json::Value> =
        KilledBy::ALL.iter().map(|way| (way.as_str().to_owned(), killed_words(*way).into())).collect();
    serde_json::Value::Object(words).to_string()
}

pub fn copyable(value: &str) -> Markup {
    html! {
        span.copyable {
            code { (value) }
            button.copy type="button" data-copy=(value) aria-label={ "Copy " (value) } { "Copy" }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_writes_calendar_times() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_709_210_096_000), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn durations_read_in_their_largest_units() {
        assert_eq!(super::millis(54), "54 ms");
        assert_eq!(super::millis(60_000), "1m 0s");
        assert_eq!(super::millis(3_600_000), "1h 0m");
        assert_eq!(super::millis(90 * 86_400_000), "90d 0h");
    }
}
