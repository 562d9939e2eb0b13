//! A minimal HTTP/1.1 client over loopback TCP for the API tests: one request per connection,
//! `Connection: close`, chunked answers decoded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("answer {} is not JSON ({error}): {}", self.status, self.text()))
    }

    /// The `error.code` of an API error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one request to `address` (HOST:PORT) and reads the whole answer.
pub fn request(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|error| panic!("connect {address}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    stream.write_all(body).expect("send body");
    let mut raw = Vec::new();
    // A server that answers before reading the whole body may reset the connection; what was
    // read until then is the answer.
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

/// Sends `raw` bytes as they are (a request the client above would not make) and reads the
/// answer until the agent closes the connection.
pub fn exchange(address: &str, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|error| panic!("connect {address}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    stream.write_all(raw).expect("send the request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    parse(&answer)
}

/// Reads an answer that has arrived on `stream` (which may still be sending), up to the end of
/// its head and as much body as came with it.
pub fn read_answer(stream: &mut TcpStream) -> Answer {
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    while !raw.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buffer[..n]),
        }
    }
    parse(&raw)
}

/// Sends one request to the agent's unix socket (a local admin, no key) and reads the answer.
pub fn unix_request(socket: &std::path::Path, method: &str, path: &str, body: Option<&serde_json::Value>) -> Answer {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|error| panic!("connect {}: {error}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    let body = body.map(|value| value.to_string().into_bytes()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    stream.write_all(&body).expect("send body");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let split = raw.windows(4).position(|window| window == b"\r\n\r\n").expect("an HTTP answer head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked =
        headers.iter().any(|(name, value)| name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|window| window == b"\r\n") else { return out };
        let size_text = String::from_utf8_lossy(&data[..end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        let stop = (start + size).min(data.len());
        out.extend_from_slice(&data[start..stop]);
        data = data.get(stop + 2..).unwrap_or_default();
    }
}

/// A client for one agent and one key.
#[derive(Debug, Clone)]
pub struct Client {
    pub address: String,
    pub key: Option<String>,
}

impl Client {
    pub fn new(address: &str, key: Option<&str>) -> Self {
        Self { address: address.to_owned(), key: key.map(str::to_owned) }
    }

    pub fn send(&self, method: &str, path: &str, body: Option<&serde_json::Value>, extra: &[(&str, &str)]) -> Answer {
        let authorization = self.key.as_ref().map(|key| format!("Bearer {key}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(value) = &authorization {
            headers.push(("Authorization", value));
        }
        let bytes = body.map(|value| value.to_string().into_bytes()).unwrap_or_default();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        request(&self.address, method, path, &headers, &bytes)
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.send("POST", path, Some(body), &[])
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.send("DELETE", path, None, &[])
    }
}

/// A request a `Receiver` got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// An HTTP server on 127.0.0.1 that records what it is sent (a webhook, an OTLP collector) and
/// answers each request with the next status of its script (200 once the script is used up).
pub struct Receiver {
    pub address: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(statuses: Vec<u16>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a receiver");
        let address = listener.local_addr().expect("receiver address").to_string();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else { continue };
                log.lock().expect("receiver log").push(request);
                let status = statuses.next().unwrap_or(200);
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Self { address, received }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("receiver log").clone()
    }

    /// Waits up to `patience` for at least `count` requests.
    pub fn wait_for(&self, count: usize, patience: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let requests = self.requests();
            if requests.len() >= count || std::time::Instant::now() > deadline {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buffer[..n]);
        if let Some(end) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (request_line.next()?.to_owned(), request_line.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buffer[..n]);
    }
    Some(Received { method, path, headers, body })
}
