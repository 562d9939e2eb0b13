//! Talking to the agent over its unix socket (starting one when none answers), or to a remote
//! agent over TCP (`--remote URL`, http or https) with an API key. No call waits on the agent
//! forever: each has a bound (`BKG_CLIENT_TIMEOUT`, 10 s by default), and a streamed run checks
//! that the agent still answers whenever its stream is silent that long.

use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bkg_schema::{ApiError, ErrorCode};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::exit::{BKG_FAILED, CliError, RUNTIME_NOT_EXECUTABLE};
use crate::settings::{Endpoint, Place, TIMEOUT_ENV};

/// The host part is ignored on a unix socket; it only makes the URL well-formed.
const BASE_URL: &str = "http://bkg-agent";

/// No body: for the calls that send none.
const NO_BODY: Option<&()> = None;

/// What an agent that answers shows a caller of itself (`AgentClient::agent_view`).
pub enum AgentView {
    Shown(Box<bkg_schema::AgentInfo>),
    /// Its configuration is its admins' to see: the caller, as the agent knows them.
    AdminsOnly(bkg_schema::auth::Principal),
}

/// A client of one agent. `bkgr` defines and runs sandboxes with it (`new`, `ensure_running`,
/// `put_json`, `post_json`); the other calls are `bkg`'s.
#[derive(Clone)]
pub struct AgentClient {
    place: Place,
    http: reqwest::Client,
    /// How long a call waits for the agent's answer.
    patience: Duration,
    /// Whether a key refused says how to get another (`bkg login`): not when the key refused is
    /// the one being logged in with or out of.
    login_hint: bool,
}

impl AgentClient {
    pub fn new(endpoint: &Endpoint) -> Result<Self, CliError> {
        let patience = endpoint.patience;
        // No idle connection is kept for a later call: the agent closes idle connections after
        // its header timeout (10 s, as long as the client's patience), and a call sent on one just
        // as it closes fails with a broken pipe. A call is one request on a fresh connection.
        let builder = reqwest::Client::builder().connect_timeout(patience).pool_max_idle_per_host(0);
        let builder = match &endpoint.place {
            Place::Socket(socket) => builder
                .tls_backend_preconfigured(tls_config(rustls::RootCertStore::empty())?)
                .unix_socket(socket.clone()),
            Place::Remote { url, key, cacert } => {
                let mut headers = reqwest::header::HeaderMap::new();
                if let Some(key) = key {
                    let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                        .map_err(|_| CliError::usage("the API key contains characters a header cannot carry"))?;
                    bearer.set_sensitive(true);
                    headers.insert(reqwest::header::AUTHORIZATION, bearer);
                }
                let roots = match (url.scheme(), cacert) {
                    ("https", Some(path)) => read_cacert(path)?,
                    ("https", None) => {
                        let mut roots = rustls::RootCertStore::empty();
                        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                        roots
                    }
                    _ => rustls::RootCertStore::empty(),
                };
                builder
                    .tls_backend_preconfigured(tls_config(roots)?)
                    .https_only(url.scheme() == "https")
                    .default_headers(headers)
            }
        };
        let http =
            builder.build().map_err(|error| CliError::internal(format!("cannot build the HTTP client: {error}")))?;
        Ok(Self { place: endpoint.place.clone(), http, patience, login_hint: true })
    }

    /// A client whose key refused is said as the agent says it, without `log in again`: the one
    /// `bkg login` checks and `bkg logout` revokes (found by a new-user trial: `bkg login` with a
    /// wrong key said to run `bkg login`).
    pub(crate) fn checking_its_key(self) -> Self {
        Self { login_hint: false, ..self }
    }

    /// Whether the agent is reached over TCP (`--remote`) rather than the local socket.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self.place, Place::Remote { .. })
    }

    /// Where the agent is, for messages: its socket or its URL.
    pub(crate) fn location(&self) -> String {
        match &self.place {
            Place::Remote { url, .. } => url.as_str().trim_end_matches('/').to_owned(),
            Place::Socket(socket) => socket.display().to_string(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        match &self.place {
            Place::Remote { url, .. } => format!("{}{path}", url.as_str().trim_end_matches('/')),
            Place::Socket(_) => format!("{BASE_URL}{path}"),
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Whether something accepts connections on the socket (or the remote address).
    /// A socket this user may not connect to is an error with the fix, not "no agent".
    pub(crate) fn is_up(&self) -> Result<bool, CliError> {
        match &self.place {
            Place::Remote { url, .. } => Ok(url
                .socket_addrs(|| None)
                .ok()
                .and_then(|addrs| addrs.into_iter().next())
                .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok())),
            Place::Socket(socket) => match std::os::unix::net::UnixStream::connect(socket) {
                Ok(_) => Ok(true),
                Err(error) if error.kind() == ErrorKind::PermissionDenied => {
                    Err(CliError::new(BKG_FAILED, access_hint(socket)))
                }
                Err(_) => Ok(false),
            },
        }
    }

    /// The pid of the agent that holds this socket's path while nothing answers on it: one that
    /// stopped listening and disposes of its sandboxes, known by the lock it holds for its whole
    /// life (bkg-agent/src/engine/lock.rs, `lock_socket`). None for a remote agent, an agent that
    /// has ended, or a lock this user may not see.
    pub(crate) fn stopping_agent(&self) -> Option<u32> {
        let Place::Socket(socket) = &self.place else { return None };
        let lock = bkg_schema::paths::socket_lock_file(std::path::Path::new(bkg_schema::paths::LOCK_DIR), socket);
        bkg_schema::paths::flock_holder(&std::fs::metadata(lock).ok()?)
    }

    /// Whether the local agent's socket file is there: an agent that made it removes it as its
    /// stop ends, so one left without an agent answering is a stop going on or an agent that
    /// ended otherwise (killed, crashed).
    pub(crate) fn socket_file_remains(&self) -> bool {
        matches!(&self.place, Place::Socket(socket) if socket.exists())
    }

    /// That no agent answers, for messages: none runs, or, when its socket file is still there,
    /// one is stopping or ended without removing it.
    pub(crate) fn not_running(&self) -> String {
        if let Some(pid) = self.stopping_agent() {
            return format!(
                "the agent on {} (pid {pid}) is stopping: it disposes of its sandboxes first",
                self.location()
            );
        }
        let kind = match &self.place {
            Place::Socket(socket) => std::fs::symlink_metadata(socket).ok().map(|meta| meta.file_type()),
            Place::Remote { .. } => None,
        };
        match kind {
            Some(kind) if std::os::unix::fs::FileTypeExt::is_socket(&kind) => format!(
                "no agent is running on {}: its socket file is left by one that ended without removing it (the \
                 next agent replaces it)",
                self.location()
            ),
            // Found by a new-user trial: a BKG_SOCKET naming a file was said to be an agent stopping.
            Some(_) => format!("{} is not a socket: BKG_SOCKET (or --socket) names something else", self.location()),
            None => format!("no agent is running on {}", self.location()),
        }
    }

    /// Makes sure an agent answers, starting one in the background unless BKG_NO_AUTOSTART=1.
    /// A remote agent is never started: an unreachable one shows in the first request.
    pub async fn ensure_running(&self) -> Result<(), CliError> {
        let Place::Socket(socket) = &self.place else {
            return Ok(());
        };
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => return Ok(()),
            Err(error) if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {}
            Err(error) if error.kind() == ErrorKind::PermissionDenied => {
                return Err(CliError::new(BKG_FAILED, access_hint(socket)));
            }
            Err(error) => {
                return Err(CliError::new(
                    BKG_FAILED,
                    format!("cannot reach the agent at {}: {error}", socket.display()),
                ));
            }
        }
        // One that is stopping holds the socket's path until it has ended: none can start there
        // meanwhile (found by a new-user trial: told to start one, which was then refused).
        if let Some(pid) = self.stopping_agent() {
            return Err(CliError::new(
                BKG_FAILED,
                format!(
                    "the agent on {} (pid {pid}) is stopping: run this again once it has ended (`bkg agent stop` \
                     waits for that)",
                    socket.display()
                ),
            ));
        }
        // Only root starts an agent: everyone else's comes from the service manager (the unit
        // packaging/bkg-agent.socket).
        let is_root = nix::unistd::geteuid().is_root();
        // Another socket than the default is named in the command, and only root's `bkg agent
        // start` serves it: the service manager serves the default. Root's own command keeps
        // BKG_SOCKET; `sudo` leaves it behind, so for others only the machine's socket goes
        // unnamed (found by a new-user trial: `sudo bkg agent start` was given for a BKG_SOCKET).
        let unnamed = match is_root {
            true => bkg_schema::paths::default_socket(),
            false => PathBuf::from(bkg_schema::paths::MACHINE_SOCKET),
        };
        let on_socket = match *socket == unnamed {
            true => String::new(),
            false => format!(" --socket {}", socket.display()),
        };
        let start =
            if is_root { format!("bkg{on_socket} agent start") } else { format!("sudo bkg{on_socket} agent start") };
        if std::env::var("BKG_NO_AUTOSTART").is_ok_and(|value| !value.is_empty() && value != "0") {
            return Err(CliError::new(
                BKG_FAILED,
                format!(
                    "no agent is running at {} (BKG_NO_AUTOSTART is set): start one with `{start}`",
                    socket.display()
                ),
            ));
        }
        if !is_root {
            let message = match on_socket.is_empty() {
                true => format!(
                    "no agent is running at {}: the service manager starts it (`sudo systemctl start bkg-agent.socket`), \
                     or root does (`{start}`)",
                    socket.display()
                ),
                false => format!("no agent is running at {}: root starts one on it (`{start}`)", socket.display()),
            };
            return Err(CliError::new(BKG_FAILED, message));
        }
        let state_dir = std::env::var_os(bkg_schema::paths::STATE_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(bkg_schema::paths::default_state_dir);
        let pid = start_agent(socket, &state_dir).await?;
        // Said by `bkg` under bkgr too: it is bkg's agent that was started.
        crate::out::Printer::new("bkg", false)
            .note(format_args!("started an agent (pid {pid}) on {}; stop it with `bkg agent stop`", socket.display()));
        Ok(())
    }

    /// What the agent says of itself (`GET /api/v1/agent`), or, to a caller it serves but shows
    /// its configuration to admins only (a member of its socket's group, a key that is not an
    /// admin's), who that caller is; the refusal itself when the caller is not served at all.
    pub(crate) async fn agent_view(&self) -> Result<AgentView, CliError> {
        // Within one wait: an agent that does not answer is not asked twice.
        self.bounded(async {
            let response = self.send(self.request(Method::GET, "/api/v1/agent", NO_BODY)).await?;
            if response.status() != StatusCode::FORBIDDEN {
                return decode(response).await.map(|info| AgentView::Shown(Box::new(info)));
            }
            let refused = api_error(response).await;
            let caller = self.send(self.request(Method::GET, "/api/v1/auth/whoami", NO_BODY)).await?;
            decode::<bkg_schema::auth::Principal>(caller).await.map(AgentView::AdminsOnly).map_err(|_| refused)
        })
        .await
    }

    /// `GET path`, its JSON answer decoded.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::GET, path, NO_BODY).await
    }

    /// `GET path`, its JSON answer decoded; `None` when the agent has no such thing (404).
    pub async fn get_found<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, CliError> {
        self.call_found(Method::GET, path, NO_BODY).await
    }

    /// `POST path` without a body, its JSON answer decoded.
    pub(crate) async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::POST, path, NO_BODY).await
    }

    /// `POST path` without a body, its JSON answer decoded; `None` when the agent has no such
    /// thing (404).
    pub(crate) async fn post_found<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, CliError> {
        self.call_found(Method::POST, path, NO_BODY).await
    }

    /// `DELETE path`, its JSON answer decoded.
    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::DELETE, path, NO_BODY).await
    }

    /// `DELETE path` of what the agent removes without an answer (204 No Content).
    pub(crate) async fn delete_empty(&self, path: &str) -> Result<(), CliError> {
        self.bounded(async {
            let response = self.send(self.request(Method::DELETE, path, NO_BODY)).await?;
            match response.status().is_success() {
                true => Ok(()),
                false => Err(api_error(response).await),
            }
        })
        .await
    }

    /// `PUT path` with `body` as JSON, its JSON answer decoded.
    pub async fn put_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, CliError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// `POST path` with `body` as JSON, its JSON answer decoded.
    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, CliError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `METHOD path`, `body` as JSON when there is one, the JSON answer decoded.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        self.bounded(async {
            let response = self.send(self.request(method, path, body)).await?;
            decode(response).await
        })
        .await
    }

    /// As [`call`](Self::call), with `None` when the agent has no such thing (404).
    async fn call_found<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, CliError> {
        self.bounded(async {
            let response = self.send(self.request(method, path, body)).await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            decode(response).await.map(Some)
        })
        .await
    }

    /// `GET path` as a stream the caller reads (a followed log may rightly stay open); `None`
    /// when the agent has no such thing (404).
    pub(crate) async fn open_found(&self, path: &str) -> Result<Option<reqwest::Response>, CliError> {
        let response = self.send(self.http.get(self.url(path))).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        Ok(Some(response))
    }

    fn request(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match body {
            Some(body) => request.json(body),
            None => request,
        }
    }

    /// A text answer (audit lines).
    pub(crate) async fn get_text(&self, path: &str) -> Result<String, CliError> {
        self.bounded(async {
            let response = self.send(self.http.get(self.url(path))).await?;
            if !response.status().is_success() {
                return Err(api_error(response).await);
            }
            response.text().await.map_err(|error| self.unreachable(error))
        })
        .await
    }

    /// `POST path`, its answer's body left unread.
    pub(crate) async fn post_empty(&self, path: &str) -> Result<(), CliError> {
        self.bounded(async {
            let response = self.send(self.http.post(self.url(path))).await?;
            if response.status().is_success() {
                return Ok(());
            }
            Err(api_error(response).await)
        })
        .await
    }

    /// Sends `request` and waits for the answer's head at most the client's patience; the body
    /// is the caller's to read (a followed log may rightly stay open).
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let response = self.bounded(async { request.send().await.map_err(|error| self.unreachable(error)) }).await?;
        // A key the agent no longer takes (revoked, expired, rotated away): say how to get one.
        if response.status() == StatusCode::UNAUTHORIZED
            && self.login_hint
            && let Place::Remote { url, key: Some(_), .. } = &self.place
        {
            let refused = api_error(response).await;
            let fix = match crate::credentials::key_from_env() {
                Some(_) => format!("{} holds that key: give it one the agent takes", crate::credentials::API_KEY_ENV),
                None => format!(
                    "log in again: `bkg login --remote {} --user NAME` (or `--key-stdin` with a key)",
                    url.origin().ascii_serialization()
                ),
            };
            return Err(CliError::new(refused.code, format!("{}; {fix}", refused.message)));
        }
        Ok(response)
    }

    /// `work` if it ends within the client's patience; else the agent does not answer.
    pub(crate) async fn bounded<T>(&self, work: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
        tokio::time::timeout(self.patience, work).await.unwrap_or_else(|_| Err(self.not_answering()))
    }

    /// Whether the agent still answers a call, asked while a stream of it is open and quiet:
    /// any answer at all, a 429 of a key over its rate too (the probe's keyless view costs no
    /// allowance, but the key goes along); only silence means it does not. A refused connection
    /// does not either: a stopping agent closes its listener first and still ends the stream's
    /// run within its grace, and one that died would have closed the stream.
    pub(crate) async fn check_alive(&self) -> Result<(), CliError> {
        let answer = async {
            match self.http().get(self.url("/healthz")).send().await {
                Err(error) if error.is_connect() => Ok(()),
                other => other.map(drop).map_err(|error| self.unreachable(error)),
            }
        };
        self.bounded(answer).await
    }

    /// How long a call waits for the agent.
    pub(crate) fn patience(&self) -> Duration {
        self.patience
    }

    /// Whether `error` is [`not_answering`](Self::not_answering)'s: the agent was silent.
    pub(crate) fn is_not_answering(&self, error: &CliError) -> bool {
        error.message == self.not_answering().message
    }

    pub(crate) fn not_answering(&self) -> CliError {
        CliError::new(
            BKG_FAILED,
            format!(
                "the agent at {} does not answer (nothing within {} s; {TIMEOUT_ENV} sets the wait): is it stopped or overloaded?",
                self.location(),
                self.patience.as_secs_f64()
            ),
        )
    }

    pub(crate) fn unreachable(&self, error: reqwest::Error) -> CliError {
        if error.is_timeout() {
            return self.not_answering();
        }
        // The URL could not be made: hyper takes none over 64 KiB (found by a new-user trial: a
        // 100,000-character id was said to keep the agent out of reach).
        if error.is_builder() {
            return CliError::usage(
                "a name or id given is too long to send to the agent (a URL of at most 64KiB): check what was given",
            );
        }
        let mut causes = vec![error.to_string()];
        let (mut certificate, mut refused, mut denied) = (false, false, false);
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !causes.iter().any(|known| known.contains(&text)) {
                causes.push(text);
            }
            certificate |= is_certificate_error(cause);
            let kind = cause.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
            refused |= kind == Some(std::io::ErrorKind::ConnectionRefused);
            denied |= kind == Some(std::io::ErrorKind::PermissionDenied);
            source = cause.source();
        }
        // A socket this user may not use, reached without `ensure_running` first (found by a
        // new-user trial: `bkg keys ls` said hyper's "client error (Connect): Permission denied").
        if let (true, Place::Socket(socket)) = (denied, &self.place) {
            return CliError::new(BKG_FAILED, access_hint(socket));
        }
        // A socket's file with nobody behind it: the agent stopped (or died) after it was found.
        if let (true, Place::Socket(socket)) = (refused, &self.place) {
            return CliError::new(
                BKG_FAILED,
                format!(
                    "no agent answers at {} any more (connection refused: it stopped, or left the file behind); `bkg agent status` says which",
                    socket.display()
                ),
            );
        }
        // hyper's chain for it (client error (Connect): tcp connect error: …) says no more.
        if refused {
            return CliError::new(
                BKG_FAILED,
                format!(
                    "cannot reach the agent at {}: connection refused (nothing listens there: check the address and \
                     port, and that the agent serves them, `bkg-agent --listen ADDRESS:PORT`)",
                    self.location()
                ),
            );
        }
        // reqwest's own line repeats the URL: what went wrong is in the causes, when there are any.
        if causes.len() > 1 {
            causes.remove(0);
        }
        // rustls reading a plain HTTP answer as a TLS record.
        let plain_http = causes.iter().any(|cause| cause.contains("InvalidContentType"));
        // hyper reading a TLS record (the agent's alert) as an HTTP answer.
        let tls_answer = matches!(&self.place, Place::Remote { url, .. } if url.scheme() == "http")
            && causes.iter().any(|cause| cause.contains("invalid HTTP version"));
        let given_cacert = matches!(&self.place, Place::Remote { cacert: Some(_), .. });
        let hint = if certificate && given_cacert {
            " (the certificate does not verify against --cacert's CA, or does not name this host)"
        } else if certificate {
            " (give the agent's CA with --cacert FILE or BKG_CACERT)"
        } else if plain_http {
            " (the agent there speaks plain http, not https: it was started without --tls-cert)"
        } else if tls_answer {
            " (the agent there speaks https: give --remote https://…)"
        } else {
            ""
        };
        CliError::new(BKG_FAILED, format!("cannot reach the agent at {}: {}{hint}", self.location(), causes.join(": ")))
    }
}

/// Whether `error` is rustls refusing the agent's certificate. A boxed error and an io::Error both
/// hide what they wrap from `source()`, so each layer is opened here.
fn is_certificate_error(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return matches!(tls, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented);
    }
    if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
        return is_certificate_error(inner);
    }
    false
}

/// The CA certificates of `--cacert`: only they verify the agent, not the system's roots.
fn read_cacert(path: &Path) -> Result<rustls::RootCertStore, CliError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| CliError::usage(format!("--cacert {}: {reason}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|error| bad(error.to_string()))? {
        roots.add(cert.map_err(|error| bad(error.to_string()))?).map_err(|error| bad(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(roots)
}

/// rustls with ring (the provider the agent builds too), trusting `roots`.
fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, CliError> {
    // reqwest has no provider of its own here (no aws-lc): any other client of this process gets
    // ring too instead of a panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| CliError::internal(format!("cannot set up TLS: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn decode<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, CliError> {
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    response.json().await.map_err(|error| CliError::internal(format!("unexpected answer from the agent: {error}")))
}

/// Turns an error response into the CLI error with its exit code.
pub async fn api_error(response: reqwest::Response) -> CliError {
    let status = response.status();
    match response.json::<ApiError>().await {
        Ok(error) => from_api_error(&error),
        Err(_) => CliError::new(BKG_FAILED, format!("the agent answered {status}")),
    }
}

pub fn from_api_error(error: &ApiError) -> CliError {
    let code = match error.error.code {
        ErrorCode::RuntimeNotExecutable => RUNTIME_NOT_EXECUTABLE,
        _ => BKG_FAILED,
    };
    CliError::new(code, error.error.message.clone())
}

/// The `bkg-agent` command for `socket` and `state_dir`; the binary is found beside this one,
/// else on PATH. Without `--foreground` it detaches and returns once the agent serves.
pub fn agent_command(socket: &Path, state_dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(agent_program());
    command.arg("--socket").arg(socket).arg("--state-dir").arg(state_dir);
    command
}

/// The bkg-agent beside this bkg, else the one on PATH.
pub fn agent_program() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("bkg-agent")));
    beside.filter(|path| path.exists()).unwrap_or_else(|| PathBuf::from("bkg-agent"))
}

/// Starts the agent in the background (it detaches itself, logging to STATE_DIR/agent.log) and
/// returns its pid once it serves `socket`; an agent that cannot start gives its own one-line
/// reason.
pub async fn start_agent(socket: &Path, state_dir: &Path) -> Result<u32, CliError> {
    let _spinner = crate::progress::Spinner::start("waiting for the agent to start");
    let output = tokio::process::Command::from(agent_command(socket, state_dir))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|error| CliError::new(BKG_FAILED, format!("cannot start bkg-agent: {error}")))?;
    let said = String::from_utf8_lossy(&output.stderr);
    // Its own line, else the one clap's refusal of a flag starts with (the rest is advice).
    let reason = said
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("bkg-agent: "))
        .or_else(|| said.lines().find_map(|line| line.strip_prefix("error: ")))
        .unwrap_or_else(|| said.lines().find(|line| !line.trim().is_empty()).unwrap_or_default());
    let pid = String::from_utf8_lossy(&output.stdout).trim().parse::<u32>();
    match (output.status.success(), pid) {
        (true, Ok(pid)) => {
            // What it said before detaching (a host check's warning) is for this terminal.
            crate::out::Printer::new("bkg", false).error_text(&said);
            Ok(pid)
        }
        (true, Err(_)) => Err(CliError::new(BKG_FAILED, "bkg-agent started but did not say its pid")),
        (false, _) if reason.is_empty() => {
            Err(CliError::new(BKG_FAILED, format!("bkg-agent could not start ({})", output.status)))
        }
        (false, _) => Err(CliError::new(BKG_FAILED, reason.to_owned())),
    }
}

/// The one line a user the socket refuses reads: who may use it, and the command that lets them.
fn access_hint(socket: &std::path::Path) -> String {
    let (problem, fix) = access_refusal(socket);
    format!("{problem}; {fix}")
}

/// Why this user may not use the agent at `socket`, and who can change that, how.
pub(crate) fn access_refusal(socket: &std::path::Path) -> (String, String) {
    use std::os::unix::fs::MetadataExt;
    if let Err(error) = std::fs::metadata(socket)
        && error.kind() == std::io::ErrorKind::PermissionDenied
    {
        return (
            format!(
                "you may not reach the agent's socket {}: a directory on its way is closed to you",
                socket.display()
            ),
            "an administrator opens it to the socket's group, or starts the agent with its socket elsewhere".to_owned(),
        );
    }
    let group = std::fs::metadata(socket)
        .ok()
        .map(|meta| meta.gid())
        .filter(|gid| *gid != 0)
        .and_then(|gid| nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten());
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten();
    let name = user.as_ref().map_or_else(|| nix::unistd::getuid().to_string(), |user| user.name.clone());
    // Listed in the group, yet refused: this login session began before the listing (found by
    // a new-user trial: a member was told to have an administrator add them).
    if let (Some(group), Some(user)) = (&group, &user)
        && (group.mem.contains(&user.name) || group.gid == user.gid)
    {
        return (
            format!(
                "you may not use the agent at {} yet: you are in group `{}`, but this login session is not",
                socket.display(),
                group.name
            ),
            format!("log in again (or run `newgrp {}`)", group.name),
        );
    }
    let Some(group) = group.map(|group| group.name) else {
        // Root's group (or none readable): the agent was started without --socket-group.
        return (
            format!(
                "you may not use the agent at {}: only root may, the agent having no --socket-group",
                socket.display()
            ),
            format!(
                "an administrator starts it with `--socket-group GROUP` and adds you with `sudo usermod -aG GROUP {name}`"
            ),
        );
    };
    (
        format!("you may not use the agent at {}: only members of group `{group}` may", socket.display()),
        format!("an administrator adds you with `sudo usermod -aG {group} {name}` (then log in again)"),
    )
}
