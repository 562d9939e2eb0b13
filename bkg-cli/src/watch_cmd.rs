//! `bkg watch`: the agent's change feed (`GET /api/v1/changes`, server-sent events), one line per
//! change, until interrupted, `--count` changes, the agent ends the stream, or (`--no-follow`) the
//! feed has caught up.

use std::time::{Duration, UNIX_EPOCH};

use crate::args::WatchArgs;
use crate::client::{AgentClient, api_error};
use crate::exit::{BKG_FAILED, CliError};
use crate::settings::Settings;
use bkg_schema::changes::{CAUGHT_UP, CHANGE_EVENT, Change, RESUME_EVENT, Resume};

/// One server-sent event, as far as the feed uses them.
#[derive(Debug, Default)]
struct Event {
    name: String,
    data: String,
}

pub async fn run(settings: &Settings, args: WatchArgs) -> Result<i32, CliError> {
    if args.count == Some(0) {
        return Ok(0);
    }
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let mut url = reqwest::Url::parse(&client.url("/api/v1/changes"))
        .map_err(|error| CliError::internal(format!("cannot build the feed's URL: {error}")))?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("since", &args.since.unwrap_or(0).to_string());
        if let Some(kinds) = &args.kinds {
            // `runs, keys` as people type it; the agent takes `runs,keys`.
            let tidy: Vec<&str> = kinds.split(',').map(str::trim).filter(|kind| !kind.is_empty()).collect();
            // None given is not every kind (found by a new-user trial: `--kinds ''` followed all).
            if tidy.is_empty() {
                return Err(CliError::usage("--kinds: give one or more of runs, sandboxes, keys, audit"));
            }
            query.append_pair("kinds", &tidy.join(","));
        }
        if let Some(namespace) = &args.namespace {
            query.append_pair("namespace", namespace);
        }
        if args.no_follow {
            query.append_pair("follow", "false");
        }
    }
    let request = client.http().get(url).header(reqwest::header::ACCEPT, "text/event-stream");
    let mut response = client.send(request).await?;
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    let mut last = args.since.unwrap_or(0);
    let mut delivered = 0;
    let mut pending = Vec::new();
    let reader_gone = crate::out::stdout_closed();
    tokio::pin!(reader_gone);
    loop {
        let next = tokio::select! {
            next = response.chunk() => next,
            // As `head` leaves it: quietly, with 0 (docs/cli.md).
            () = &mut reader_gone => return Ok(0),
        };
        let chunk = match next {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => {
                return Err(CliError::new(
                    BKG_FAILED,
                    format!("the agent closed the change feed; resume with --since {last}"),
                ));
            }
        };
        pending.extend_from_slice(&chunk);
        while let Some(event) = take_event(&mut pending) {
            match event.name.as_str() {
                CHANGE_EVENT => {
                    let change: Change = serde_json::from_str(&event.data)
                        .map_err(|error| CliError::internal(format!("the agent sent an unreadable change: {error}")))?;
                    // A change stdout did not take ends the watch, resuming from the last one it
                    // took (found by a new-user trial: `bkg watch > /dev/full` went on silently,
                    // and a later resume position skipped what was never written).
                    let written = crate::out::stdout_bytes(format!("{}\n", line(&change, args.json)?).as_bytes());
                    match written {
                        Ok(()) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
                        Err(error) => {
                            return Err(CliError::new(
                                BKG_FAILED,
                                format!("cannot write to stdout ({error}); resume with --since {last}"),
                            ));
                        }
                    }
                    last = change.position;
                    delivered += 1;
                    if args.count.is_some_and(|count| delivered >= count) {
                        return Ok(0);
                    }
                }
                RESUME_EVENT => {
                    let resume: Resume = serde_json::from_str(&event.data)
                        .map_err(|error| CliError::internal(format!("the agent sent an unreadable event: {error}")))?;
                    if args.no_follow && resume.reason == CAUGHT_UP {
                        settings.out.note(format_args!("caught up; resume with --since {}", resume.resume_from));
                        return Ok(0);
                    }
                    return Err(CliError::new(
                        BKG_FAILED,
                        format!("{}; resume with --since {}", resume.reason, resume.resume_from),
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Takes the first complete event (ended by a blank line) off `pending`, skipping comments.
fn take_event(pending: &mut Vec<u8>) -> Option<Event> {
    loop {
        let end = pending.windows(2).position(|pair| pair == b"\n\n")?;
        let block: Vec<u8> = pending.drain(..end + 2).collect();
        let mut event = Event::default();
        for line in String::from_utf8_lossy(&block).lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.name = value.to_owned(),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                _ => {}
            }
        }
        if !event.name.is_empty() || !event.data.is_empty() {
            return Some(event);
        }
    }
}

fn line(change: &Change, json: bool) -> Result<String, CliError> {
    if json {
        return crate::out::json_text(change);
    }
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(change.ts_ms));
    Ok(format!(
        "{at}  {:>6}  {:<10} {:<16} {:<14} {}",
        change.position,
        change.kind.as_str(),
        change.action,
        change.namespace.as_deref().unwrap_or("-"),
        change.object_id.as_deref().unwrap_or("-"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_and_comments_skipped() {
        let mut pending = b": keep-alive\n\nevent: change\nid: 3\ndata: {\"a\":1}\n\nevent: res".to_vec();
        let event = take_event(&mut pending).map(|event| (event.name, event.data));
        assert_eq!(event, Some(("change".into(), "{\"a\":1}".into())));
        assert!(take_event(&mut pending).is_none(), "an unfinished event waits for the rest");
        assert_eq!(pending, b"event: res");
    }
}
