//! The API's accept loops, one per listener (the unix socket, TCP): each has its own cap on
//! open connections, so clients of the network can never take the sockets the local `bkg` needs;
//! a connection over the cap is closed at once. Every connection must send a complete request
//! head within the header timeout, which also ends connections idle between requests; on TCP
//! the TLS handshake has the same bound. Bodies are bounded in the gatekeeper (server.rs).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// File descriptors kept out of the connection caps: runs' pipes and disks, the store, logs.
const FD_RESERVE: u64 = 512;

/// How one listener takes connections.
pub struct ListenerConfig {
    /// `unix` or `tcp`: the label of logs and metrics.
    pub name: &'static str,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub tls: Option<TlsAcceptor>,
}

/// Accepts connections on `listener` until `stopping` turns true, then lets the open ones finish
/// their requests and returns when they have. Each request carries `ConnectInfo(connect_info(addr))`.
pub async fn serve<L, A>(
    mut listener: L,
    app: Router,
    config: ListenerConfig,
    metrics: Arc<Metrics>,
    connect_info: impl Fn(L::Addr) -> A,
    mut stopping: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    A: Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(config.max_connections));
    // Every connection task holds a sender: the channel closes once the last one has ended.
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stopping) => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.connection_refused(config.name);
            tracing::debug!(
                listener = config.name,
                cap = config.max_connections,
                "at the connection cap: closed a new one"
            );
            continue;
        };
        let info = ConnectInfo(connect_info(addr));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            let answered = tower_service::Service::call(&mut app.clone(), request);
            async move { answered.await.map(super::telling_nothing_of_routes_when_refused) }
        });
        let (tls, header_timeout, stopping, alive) =
            (config.tls.clone(), config.header_timeout, stopping.clone(), alive.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _alive = alive;
            match tls {
                None => connection(io, service, header_timeout, stopping).await,
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => connection(stream, service, header_timeout, stopping).await,
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake not done within the header timeout"),
                },
            }
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_ended.recv().await;
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

async fn connection<I, S>(io: I, service: S, header_timeout: Duration, mut stopping: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = axum::response::Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    // Upgrades carry streamed runs (bkg-stream/1); an upgraded stream leaves the connection cap.
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        () = stopped(&mut stopping) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Raises the soft limit of open files to the hard one, and fits the TCP connection cap under it
/// with the unix socket's cap and a reserve for runs beside it. Returns the TCP cap to use.
pub fn fit_connection_caps(tcp_cap: usize, unix_cap: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft, hard, "could not raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(error) => {
            tracing::warn!(%error, "could not read the open-files limit");
            return tcp_cap;
        }
    };
    let room = soft.saturating_sub(unix_cap as u64 + FD_RESERVE).max(1);
    if tcp_cap as u64 > room {
        tracing::warn!(
            open_files = soft,
            asked = tcp_cap,
            used = room,
            "--max-connections lowered to fit the open-files limit beside the unix socket's connections"
        );
        return room as usize;
    }
    tcp_cap
}
