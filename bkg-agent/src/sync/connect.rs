//! Connecting to bkg_db: the URL, its `sslmode`, and rustls for remote servers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SyncError;

/// A server that does not answer must not hold the worker (or `bkg db migrate`) forever; under
/// the 10 s a client waits for the agent (`BKG_CLIENT_TIMEOUT`), so the client hears that bkg_db
/// did not answer rather than giving up on the agent.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens one connection to bkg_db and drives it on the current tokio runtime.
///
/// `db_url` is a libpq-style URL, `postgres://user:password@host:port/dbname?sslmode=…`.
/// `sslmode=disable` is plain TCP (loopback); `prefer` (the default), `require`, `verify-ca` and
/// `verify-full` use TLS whenever the server offers it (`require` and `verify-*` insist on it),
/// and TLS always verifies the server's certificate and name, against the system's roots or the
/// PEM file given as `sslrootcert=PATH`.
pub async fn connect(db_url: &str) -> Result<Client, SyncError> {
    let (config, root_cert) = parse_url(db_url)?;
    let tls = tls_connector(config.get_ssl_mode(), root_cert.as_deref())?;
    let (client, connection) = within_connect_timeout(&config, config.connect(tls)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "bkg_db connection ended");
        }
    });
    Ok(client)
}

/// Whether `db_url` could ever connect: it parses, its `sslmode` is known, its `sslrootcert`
/// is read. Checked at start, so that a URL that never can is refused then, not retried for
/// ever; a server that is down or refuses the login is the sync's to retry.
pub fn check_url(db_url: &str) -> Result<(), SyncError> {
    let (config, root_cert) = parse_url(db_url)?;
    tls_connector(config.get_ssl_mode(), root_cert.as_deref()).map(drop)
}

/// Which database `db_url` names, and where: `database bkg_db at db.example:5432`, never its
/// login or password.
pub fn describe_target(db_url: &str) -> String {
    let Ok((config, _)) = parse_url(db_url) else { return "the URL given".to_owned() };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("database {} at {host}:{port}", config.get_dbname().unwrap_or("postgres"))
}

/// Whether `db_url` holds a password: on the command line every local user can read it.
pub fn has_password(db_url: &str) -> bool {
    parse_url(db_url).is_ok_and(|(config, _)| config.get_password().is_some())
}

/// Like [`connect`], for a connection that LISTENs: `notified` is called for every notification
/// the server sends. The returned task ends when the connection does.
pub async fn connect_notified(
    db_url: &str,
    notified: impl Fn() + Send + 'static,
) -> Result<(Client, tokio::task::JoinHandle<()>), SyncError> {
    let (config, root_cert) = parse_url(db_url)?;
    let tls = tls_connector(config.get_ssl_mode(), root_cert.as_deref())?;
    let (client, mut connection) = within_connect_timeout(&config, config.connect(tls)).await?;
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |context| connection.poll_message(context));
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => notified(),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "bkg_db listening connection ended");
                    break;
                }
            }
        }
    });
    Ok((client, driver))
}

/// `connecting` bounded by the URL's `connect_timeout` (or `DEFAULT_CONNECT_TIMEOUT`) as a whole,
/// as libpq bounds it: tokio-postgres bounds only the TCP connect with it, so a server that
/// accepts and never answers (TLS, the login) held the connection's caller for minutes.
async fn within_connect_timeout<T>(
    config: &Config,
    connecting: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, SyncError> {
    let limit = config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    match tokio::time::timeout(limit, connecting).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(SyncError::Timeout(limit)),
    }
}

/// Splits off what tokio-postgres does not parse itself (`sslrootcert`, the `verify-*` modes) and
/// fills in the agent's defaults.
fn parse_url(db_url: &str) -> Result<(Config, Option<String>), SyncError> {
    let (base, query) = match db_url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (db_url, ""),
    };
    if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
        return Err(SyncError::Config("expected postgres://user:password@host:port/dbname[?sslmode=…]".into()));
    }
    let mut kept = Vec::new();
    let mut root_cert = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslrootcert" => root_cert = Some(percent_decode(value)?),
            "sslmode" => {
                let mode = match value {
                    "disable" => "disable",
                    "allow" | "prefer" => "prefer",
                    "require" | "verify-ca" | "verify-full" => "require",
                    other => return Err(SyncError::Config(format!("unknown sslmode {other:?}"))),
                };
                kept.push(format!("sslmode={mode}"));
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    let mut config = Config::from_str(&url).map_err(|error| SyncError::Config(super::describe(&error)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("bkg-agent");
    }
    Ok((config, root_cert))
}

fn tls_connector(mode: SslMode, root_cert: Option<&str>) -> Result<MakeRustlsConnect, SyncError> {
    let mut roots = rustls::RootCertStore::empty();
    // With sslmode=disable the connector is never asked for a handshake: no roots to load.
    if mode != SslMode::Disable {
        match root_cert {
            Some(path) => {
                for cert in
                    CertificateDer::pem_file_iter(path).map_err(|error| SyncError::Tls(format!("{path}: {error}")))?
                {
                    let cert = cert.map_err(|error| SyncError::Tls(format!("{path}: {error}")))?;
                    roots.add(cert).map_err(|error| SyncError::Tls(format!("{path}: {error}")))?;
                }
                // An empty file, or one of other text (found by a new-user trial: the agent
                // started, then every handshake failed as if no CA had been given).
                if roots.is_empty() {
                    return Err(SyncError::Tls(format!(
                        "{path}: no certificate in it: give a PEM file of the CA's certificates as sslrootcert"
                    )));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| SyncError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn percent_decode(value: &str) -> Result<String, SyncError> {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = value.get(index + 1..index + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok());
            let byte = hex.ok_or_else(|| SyncError::Config(format!("bad percent-encoding in {value:?}")))?;
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| SyncError::Config(format!("{value:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), SyncError>;

    #[test]
    fn libpq_modes_map_onto_verified_tls() -> TestResult {
        let (config, root) =
            parse_url("postgres://u:p@db.example:5433/bkg?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem")?;
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(root.as_deref(), Some("/etc/ca x.pem"));
        assert_eq!(config.get_dbname(), Some("bkg"));
        assert_eq!(config.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));

        let (config, root) = parse_url("postgresql://u@127.0.0.1/bkg?sslmode=disable&connect_timeout=2")?;
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert!(root.is_none());

        assert_eq!(parse_url("postgres://h/db")?.0.get_ssl_mode(), SslMode::Prefer);
        Ok(())
    }

    /// Found by a new-user trial: a server that accepts and never answers held `bkg db migrate`
    /// past any client's patience, though the URL said `connect_timeout=2`.
    #[tokio::test]
    async fn connect_timeout_bounds_the_whole_connection_not_only_its_tcp_connect() -> std::io::Result<()> {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = silent.local_addr()?.port();
        let held = tokio::spawn(async move {
            // Accepted, then never answered, until the test ends.
            let accepted = silent.accept().await;
            std::future::pending::<()>().await;
            drop(accepted);
        });
        let url = format!("postgres://u:p@127.0.0.1:{port}/bkg?sslmode=disable&connect_timeout=1");
        let outcome = tokio::time::timeout(Duration::from_secs(30), connect(&url)).await;
        held.abort();
        assert!(
            matches!(outcome, Ok(Err(SyncError::Timeout(limit))) if limit == Duration::from_secs(1)),
            "{outcome:?}"
        );
        Ok(())
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(parse_url("host=db user=x"), Err(SyncError::Config(_))));
        assert!(matches!(parse_url("postgres://h/db?sslmode=sometimes"), Err(SyncError::Config(_))));
        assert!(matches!(parse_url("postgres://h/db?sslrootcert=%zz"), Err(SyncError::Config(_))));
        assert!(matches!(parse_url("postgres://h/db?nonsense=1"), Err(SyncError::Config(_))));
    }

    #[test]
    fn a_missing_root_certificate_is_an_error() {
        assert!(matches!(tls_connector(SslMode::Require, Some("/nonexistent/ca.pem")), Err(SyncError::Tls(_))));
        assert!(tls_connector(SslMode::Disable, Some("/nonexistent/ca.pem")).is_ok());
    }
}
