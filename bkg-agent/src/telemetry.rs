//! Traces: one span per API request, sampled by `CAVE_OTEL_SAMPLING_RATE` and exported as
//! OTLP/HTTP JSON to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` +
//! `/v1/traces`, over http or https (server/tls.rs's client); OTLP/gRPC is left out to keep the
//! agent's build small.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::ids::fill_random;

pub const SAMPLING_RATE_ENV: &str = "CAVE_OTEL_SAMPLING_RATE";
/// Spans waiting for export; beyond this, new spans are dropped rather than slowing requests.
const QUEUE: usize = 4096;
const BATCH: usize = 256;
const FLUSH_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TelemetryError {
    #[error("{SAMPLING_RATE_ENV} must be a number from 0.0 to 1.0, not `{0}`")]
    BadSamplingRate(String),
}

/// Reads `CAVE_OTEL_SAMPLING_RATE`: 0.0–1.0, 1.0 when unset.
pub fn sampling_rate_from(value: Option<&str>) -> Result<f64, TelemetryError> {
    let Some(text) = value else {
        return Ok(1.0);
    };
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(TelemetryError::BadSamplingRate(text.to_owned())),
    }
}

/// A finished span.
#[derive(Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

/// Where spans start: decides sampling and hands sampled spans to the exporter.
#[derive(Clone)]
pub struct Tracer {
    rate: f64,
    exporter: Option<mpsc::Sender<Span>>,
}

/// The trace a request belongs to: from its `traceparent` header, or new.
#[derive(Debug, Clone, Copy)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl Tracer {
    /// A tracer that exports to `endpoint` when one is given; it must be called inside the
    /// agent's runtime.
    fn new(rate: f64, endpoint: Option<String>, headers: Vec<(String, String)>) -> Self {
        let exporter = endpoint.map(|endpoint| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(export(endpoint, headers, receiver));
            sender
        });
        Self { rate, exporter }
    }

    /// Reads the OTEL_* variables; `rate` is the already checked sampling rate.
    pub fn from_env(rate: f64) -> Self {
        let endpoint =
            std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok().filter(|e| !e.is_empty()).or_else(|| {
                std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .ok()
                    .filter(|e| !e.is_empty())
                    .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
            });
        let headers = std::env::var("OTEL_EXPORTER_OTLP_HEADERS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        Self::new(rate, endpoint, headers)
    }

    /// The context of a request with this `traceparent` (W3C), sampled by trace id so every
    /// service that sees the same trace decides the same way.
    pub fn context(&self, traceparent: Option<&str>) -> TraceContext {
        if self.exporter.is_none() {
            return TraceContext { trace_id: [0; 16], parent_span_id: None, sampled: false };
        }
        let (trace_id, parent_span_id) = traceparent.and_then(parse_traceparent).map_or_else(
            || {
                let mut trace_id = [0u8; 16];
                // A failed random source leaves the id zero, which OTLP treats as invalid; the
                // span is then simply not sampled.
                let _ = fill_random(&mut trace_id);
                (trace_id, None)
            },
            |(trace_id, parent)| (trace_id, Some(parent)),
        );
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8]));
        let sampled = trace_id != [0; 16] && (self.rate >= 1.0 || (low as f64) < self.rate * u64::MAX as f64);
        TraceContext { trace_id, parent_span_id, sampled }
    }

    /// Queues a finished span of a sampled context; a full queue drops it.
    pub fn record(&self, span: Span) {
        if let Some(exporter) = &self.exporter {
            let _ = exporter.try_send(span);
        }
    }
}

fn parse_traceparent(header: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = header.trim().split('-');
    let (_version, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
    let trace: [u8; 16] = hex::decode(trace).ok()?.try_into().ok()?;
    let parent: [u8; 8] = hex::decode(parent).ok()?.try_into().ok()?;
    (trace != [0; 16] && parent != [0; 8]).then_some((trace, parent))
}

pub fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    let _ = fill_random(&mut id);
    id
}

fn unix_nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or(0).to_string()
}

fn attribute_value(value: &Value) -> Value {
    match value {
        Value::Bool(flag) => json!({ "boolValue": flag }),
        Value::Number(number) if number.is_i64() || number.is_u64() => json!({ "intValue": number.to_string() }),
        Value::Number(number) => json!({ "doubleValue": number }),
        Value::String(text) => json!({ "stringValue": text }),
        other => json!({ "stringValue": other.to_string() }),
    }
}

/// The OTLP/JSON `ExportTraceServiceRequest` of `spans`.
pub fn export_request(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            json!({
                "traceId": hex::encode(span.trace_id),
                "spanId": hex::encode(span.span_id),
                "parentSpanId": span.parent_span_id.map(hex::encode).unwrap_or_default(),
                "name": span.name,
                // SPAN_KIND_SERVER
                "kind": 2,
                "startTimeUnixNano": unix_nanos(span.start),
                "endTimeUnixNano": unix_nanos(span.end),
                "attributes": span.attributes.iter().map(|(key, value)| json!({ "key": key, "value": attribute_value(value) })).collect::<Vec<_>>(),
                // STATUS_CODE_ERROR or STATUS_CODE_UNSET
                "status": { "code": if span.error { 2 } else { 0 } },
            })
        })
        .collect();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "bkg-agent".into());
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": service } }] },
            "scopeSpans": [{
                "scope": { "name": "bkg-agent", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

async fn export(endpoint: String, headers: Vec<(String, String)>, mut receiver: mpsc::Receiver<Span>) {
    let built = crate::server::tls::client_builder()
        .map_err(|error| error.to_string())
        .and_then(|builder| builder.timeout(Duration::from_secs(10)).build().map_err(|error| error.to_string()));
    let http = match built {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot build the OTLP client; traces are not exported");
            return;
        }
    };
    tracing::info!(%endpoint, "exporting traces over OTLP/HTTP JSON");
    let mut batch = Vec::new();
    loop {
        let closed = tokio::select! {
            span = receiver.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    false
                }
                None => true,
            },
            () = tokio::time::sleep(FLUSH_EVERY), if !batch.is_empty() => false,
        };
        let due = closed || batch.len() >= BATCH || (!batch.is_empty() && receiver.is_empty());
        if due && !batch.is_empty() {
            let mut request = http.post(&endpoint).json(&export_request(&batch));
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(status = %response.status(), spans = batch.len(), "OTLP endpoint refused spans")
                }
                Err(error) => tracing::warn!(%error, spans = batch.len(), "could not export spans"),
            }
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampling_rate_is_a_fraction_or_refused() {
        assert_eq!(sampling_rate_from(None), Ok(1.0));
        assert_eq!(sampling_rate_from(Some("0")), Ok(0.0));
        assert_eq!(sampling_rate_from(Some("0.25")), Ok(0.25));
        assert_eq!(sampling_rate_from(Some("1.0")), Ok(1.0));
        for bad in ["", "1.5", "-0.1", "NaN", "half", "inf"] {
            assert!(sampling_rate_from(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn traceparent_is_followed_and_spans_encode_as_otlp_json() {
        let trace = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(trace.map(|(trace, _)| hex::encode(trace)).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("garbage").is_none());

        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "GET /healthz".into(),
            start: UNIX_EPOCH + Duration::from_secs(1),
            end: UNIX_EPOCH + Duration::from_secs(2),
            attributes: vec![("http.response.status_code", json!(200))],
            error: false,
        };
        let request = export_request(&[span]);
        let encoded = &request["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(encoded["traceId"], "01010101010101010101010101010101");
        assert_eq!(encoded["startTimeUnixNano"], "1000000000");
        assert_eq!(encoded["attributes"][0]["value"]["intValue"], "200");
    }
}
