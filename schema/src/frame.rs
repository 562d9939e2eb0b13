//! Framing of a streamed run. After `POST /api/v1/runs` with `Upgrade: bkg-stream/1` the
//! connection carries frames both ways: `[kind: u8][length: u32 big-endian][payload]`.

use thiserror::Error;

/// The value of the `Upgrade` header that asks for a streamed run.
pub const STREAM_PROTOCOL: &str = "bkg-stream/1";

/// The header of the upgrade's answer that names the run, so that a caller whose connection is
/// cut before the result can still say which run it was.
pub const RUN_ID_HEADER: &str = "bkg-run-id";

/// Largest payload one frame may carry. Output frames are far smaller; a `Result` frame holds
/// up to two capped streams, JSON-escaped (at worst six bytes per byte), in one frame.
pub const MAX_FRAME_PAYLOAD: usize = 16 * 1024 * 1024;

pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// client → agent: bytes for the script's stdin.
    Stdin = 1,
    /// client → agent: the script's stdin is at its end.
    StdinEnd = 2,
    /// client → agent: stop the run now (Ctrl-C).
    Cancel = 3,
    /// client → agent: the client's stdout is closed (its reader went away, as `| head` does).
    /// The code's stdout is closed too, so that its next write fails (EPIPE, SIGPIPE) as it
    /// would in a pipeline; the run goes on to its end as the code decides.
    StdoutClosed = 4,
    /// agent → client: the run started; payload is its id.
    Started = 10,
    /// agent → client: bytes the script wrote to stdout.
    Stdout = 11,
    /// agent → client: bytes the script wrote to stderr.
    Stderr = 12,
    /// agent → client: the run's `RunResult` as JSON; the last frame.
    Result = 13,
    /// agent → client: the run failed before it had a result; `ApiError` JSON; the last frame.
    Error = 14,
    /// agent → client: a line of progress from a step before the code runs (installing the
    /// run's packages), UTF-8. Only a run that needs such a step gets these.
    Progress = 15,
    /// agent → client: a piece of the tar stream of /workspace/out/ (`return_out_dir`), after
    /// the output and before the result.
    Archive = 16,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Stdin,
            2 => Self::StdinEnd,
            3 => Self::Cancel,
            4 => Self::StdoutClosed,
            10 => Self::Started,
            11 => Self::Stdout,
            12 => Self::Stderr,
            13 => Self::Result,
            14 => Self::Error,
            15 => Self::Progress,
            16 => Self::Archive,
            _ => return None,
        })
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes is over the {MAX_FRAME_PAYLOAD}-byte limit")]
    TooLong(usize),
}

/// Encodes one frame's header; the payload follows it on the wire.
pub fn encode_header(kind: FrameKind, payload_len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if payload_len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong(payload_len));
    }
    let mut header = [0u8; HEADER_LEN];
    header[0] = kind as u8;
    // The bound above keeps the length within u32.
    header[1..].copy_from_slice(&(payload_len as u32).to_be_bytes());
    Ok(header)
}

/// Decodes a frame header into its kind and payload length.
pub fn decode_header(header: [u8; HEADER_LEN]) -> Result<(FrameKind, usize), FrameError> {
    let kind = FrameKind::from_byte(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    Ok((kind, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for kind in [
            FrameKind::Stdin,
            FrameKind::StdinEnd,
            FrameKind::Cancel,
            FrameKind::StdoutClosed,
            FrameKind::Started,
            FrameKind::Stdout,
            FrameKind::Stderr,
            FrameKind::Result,
            FrameKind::Error,
            FrameKind::Progress,
            FrameKind::Archive,
        ] {
            let header = encode_header(kind, 1234).unwrap_or_default();
            assert_eq!(decode_header(header), Ok((kind, 1234)));
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        assert_eq!(
            encode_header(FrameKind::Stdout, MAX_FRAME_PAYLOAD + 1),
            Err(FrameError::TooLong(MAX_FRAME_PAYLOAD + 1))
        );
        assert_eq!(decode_header([99, 0, 0, 0, 0]), Err(FrameError::UnknownKind(99)));
        assert_eq!(decode_header([11, 0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLong(u32::MAX as usize)));
    }
}
