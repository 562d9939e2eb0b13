//! `bkg exe`: one run in a temporary sandbox, streamed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use base64::Engine as _;
use bkg_schema::frame::{self, FrameKind, STREAM_PROTOCOL};
use bkg_schema::units::{format_duration_ms, format_size};
use bkg_schema::{ApiError, FileUpload, KilledBy, Language, LimitOverrides, RunRequest, RunResult};
use reqwest::header::{CONNECTION, UPGRADE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::{ExeArgs, GlobalArgs};
use crate::client::{AgentClient, api_error, from_api_error};
use crate::exit::{BKG_FAILED, CliError, SCRIPT_NOT_FOUND};

pub async fn run(global: &GlobalArgs, args: ExeArgs) -> Result<i32, CliError> {
    let (request, stdin_is_code) = build_request(&args)?;
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;

    let response = client
        .http()
        .post(AgentClient::url("/api/v1/runs"))
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, STREAM_PROTOCOL)
        .json(&request)
        .send()
        .await
        .map_err(|error| client.unreachable(error))?;
    if response.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        return Err(api_error(response).await);
    }
    let upgraded = response
        .upgrade()
        .await
        .map_err(|error| CliError::new(BKG_FAILED, format!("the agent did not open the run stream: {error}")))?;
    let (mut reader, writer) = tokio::io::split(upgraded);
    let writer = std::sync::Arc::new(tokio::sync::Mutex::new(writer));

    let stdin_task = tokio::spawn(relay_stdin(std::sync::Arc::clone(&writer), stdin_is_code));
    let cancel_writer = std::sync::Arc::clone(&writer);
    let cancel_task = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let mut writer = cancel_writer.lock().await;
            let _ = send_frame(&mut *writer, FrameKind::Cancel, &[]).await;
        }
    });

    let outcome = receive(&mut reader, args.json).await;
    stdin_task.abort();
    cancel_task.abort();
    let result = outcome?;
    if args.json {
        let json = serde_json::to_string(&result).map_err(|error| CliError::internal(error.to_string()))?;
        println!("{json}");
    }
    if let Some(reason) = reason_line(&result) {
        eprintln!("bkg: {reason}");
    }
    Ok(result.cli_exit_code())
}

/// Why the run ended, when it was not the script's own doing.
fn reason_line(result: &RunResult) -> Option<String> {
    let limits = &result.limits;
    match result.killed_by {
        Some(KilledBy::Timeout) => {
            Some(format!("timed out after {} (--timeout)", format_duration_ms(limits.timeout_ms)))
        }
        Some(KilledBy::Memory) => {
            Some(format!("killed: memory limit of {} reached (--memory)", format_size(limits.memory_bytes)))
        }
        Some(KilledBy::Pids) => Some(format!("killed: process limit of {} reached", limits.pids)),
        Some(KilledBy::Disk) => {
            Some(format!("the script failed with its disk full ({} limit, --disk)", format_size(limits.disk_bytes)))
        }
        Some(KilledBy::Cancelled) => Some("cancelled".into()),
        None => result.signal.map(|signal| format!("the script was killed by signal {signal}")),
    }
}

async fn send_frame(writer: &mut (impl AsyncWriteExt + Unpin), kind: FrameKind, payload: &[u8]) -> std::io::Result<()> {
    let header = frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?;
    writer.write_all(&header).await?;
    writer.write_all(payload).await?;
    writer.flush().await
}

/// Our stdin becomes the script's, so pipes and `input()` work. With `bkg exe -` stdin held the
/// code, so the script gets an empty stdin.
async fn relay_stdin<W: AsyncWriteExt + Unpin>(writer: std::sync::Arc<tokio::sync::Mutex<W>>, stdin_is_code: bool) {
    if !stdin_is_code {
        let mut stdin = tokio::io::stdin();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut writer = writer.lock().await;
                    if send_frame(&mut *writer, FrameKind::Stdin, &buffer[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let mut writer = writer.lock().await;
    let _ = send_frame(&mut *writer, FrameKind::StdinEnd, &[]).await;
}

async fn receive(reader: &mut (impl AsyncReadExt + Unpin), json: bool) -> Result<RunResult, CliError> {
    let lost = |_| CliError::new(BKG_FAILED, "the agent closed the connection before the run ended");
    loop {
        let mut header = [0u8; frame::HEADER_LEN];
        reader.read_exact(&mut header).await.map_err(lost)?;
        let (kind, len) = frame::decode_header(header)
            .map_err(|error| CliError::new(BKG_FAILED, format!("garbled stream from the agent: {error}")))?;
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload).await.map_err(lost)?;
        match kind {
            FrameKind::Stdout if !json => write_through(&mut std::io::stdout().lock(), &payload),
            FrameKind::Stderr if !json => write_through(&mut std::io::stderr().lock(), &payload),
            FrameKind::Result => {
                return serde_json::from_slice(&payload)
                    .map_err(|error| CliError::new(BKG_FAILED, format!("unreadable result from the agent: {error}")));
            }
            FrameKind::Error => {
                let error: ApiError = serde_json::from_slice(&payload)
                    .map_err(|error| CliError::new(BKG_FAILED, format!("unreadable error from the agent: {error}")))?;
                return Err(from_api_error(&error));
            }
            _ => {}
        }
    }
}

fn write_through(out: &mut impl Write, bytes: &[u8]) {
    // A closed stdout (`bkg exe x.py | head`) must not end the run early; the bytes are dropped.
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// Turns the command line into a request, reading the script and uploads. The flag says whether
/// stdin was consumed as the code.
fn build_request(args: &ExeArgs) -> Result<(RunRequest, bool), CliError> {
    let named_language = match &args.language {
        Some(name) => Some(
            Language::parse(name)
                .ok_or_else(|| CliError::usage(format!("unknown type `{name}`: use --type python or --type node")))?,
        ),
        None => None,
    };

    let (code, script_name, stdin_is_code) = match (&args.code, args.script.as_deref()) {
        (Some(code), _) => (code.clone(), None, false),
        (None, Some("-")) => {
            if std::io::stdin().is_terminal() {
                return Err(CliError::usage(
                    "`bkg exe -` reads the code from stdin, but stdin is a terminal: pipe the code in",
                ));
            }
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .map_err(|error| CliError::usage(format!("cannot read the code from stdin: {error}")))?;
            (code, None, true)
        }
        (None, Some(path)) => {
            let code = match std::fs::read(path) {
                Ok(bytes) => {
                    String::from_utf8(bytes).map_err(|_| CliError::usage(format!("{path} is not UTF-8 text")))?
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CliError::new(SCRIPT_NOT_FOUND, format!("script not found: {path}")));
                }
                Err(error) => return Err(CliError::usage(format!("cannot read {path}: {error}"))),
            };
            let name = Path::new(path).file_name().map(|name| name.to_string_lossy().into_owned());
            (code, name, false)
        }
        (None, None) => return Err(CliError::usage("give a script, `-` for stdin, or -c CODE")),
    };

    let language = match (named_language, script_name.as_deref()) {
        (Some(language), _) => language,
        (None, Some(name)) => Language::from_file_name(name).ok_or_else(|| {
            CliError::usage(format!(
                "cannot tell the language of `{name}` from its extension: add --type python or --type node"
            ))
        })?,
        (None, None) => return Err(CliError::usage("-c and - need --type python or --type node")),
    };

    let limits = LimitOverrides {
        cpu_millis: parse_flag(&args.cpus, "--cpus", bkg_schema::parse_cpus)?,
        memory_bytes: parse_flag(&args.memory, "--memory", bkg_schema::parse_size)?,
        timeout_ms: parse_flag(&args.timeout, "--timeout", bkg_schema::parse_duration_ms)?,
        disk_bytes: parse_flag(&args.disk, "--disk", bkg_schema::parse_size)?,
        pids: None,
    };

    let mut env = BTreeMap::new();
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| CliError::usage(format!("--env `{pair}` must be KEY=VALUE")))?;
        env.insert(key.to_owned(), value.to_owned());
    }

    let files = args.files.iter().map(|spec| read_upload(spec)).collect::<Result<Vec<_>, _>>()?;

    Ok((
        RunRequest { language, code, script_name, args: args.args.clone(), env, files, limits, stdin_base64: None },
        stdin_is_code,
    ))
}

fn parse_flag(
    value: &Option<String>,
    flag: &str,
    parse: fn(&str) -> Result<u64, bkg_schema::UnitError>,
) -> Result<Option<u64>, CliError> {
    value.as_deref().map(|text| parse(text).map_err(|error| CliError::usage(format!("{flag}: {error}")))).transpose()
}

/// `SRC[:DEST]`: a host file and where it goes (default: its name, in /workspace).
fn read_upload(spec: &str) -> Result<FileUpload, CliError> {
    let (source, destination) = match spec.split_once(':') {
        Some((source, destination)) if !destination.is_empty() => (source, Some(destination)),
        _ => (spec, None),
    };
    let path = Path::new(source);
    let metadata = std::fs::metadata(path).map_err(|error| CliError::usage(format!("--file {source}: {error}")))?;
    if !metadata.is_file() {
        return Err(CliError::usage(format!("--file {source}: not a regular file")));
    }
    let content = std::fs::read(path).map_err(|error| CliError::usage(format!("--file {source}: {error}")))?;
    let destination = match destination {
        Some(destination) => destination.to_owned(),
        None => path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| CliError::usage(format!("--file {source}: has no file name")))?,
    };
    let executable = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o111 != 0;
    Ok(FileUpload {
        path: destination,
        content_base64: base64::engine::general_purpose::STANDARD.encode(content),
        executable,
    })
}
