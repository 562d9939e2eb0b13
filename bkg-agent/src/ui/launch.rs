//! `bkg ui`: a one-time login URL for the person at the machine, on the agent's TCP listener or,
//! when it has none, on a loopback listener started for the purpose (plain HTTP, 127.0.0.1, a
//! port the kernel picks) that lives as long as the agent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bkg_schema::auth::UiLaunch;
use tokio::sync::watch;

use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::server::{AppState, Failure, listen};

/// How the agent listens, told to the UI by the daemon once its listeners are up.
pub struct Listening {
    /// The agent's own TCP listener and whether it serves TLS.
    pub tcp: Option<(SocketAddr, bool)>,
    pub app: Router,
    pub metrics: Arc<Metrics>,
    pub header_timeout: Duration,
    pub stopping: watch::Receiver<bool>,
}

/// Connections the loopback listener takes at once: one person's browser.
const LOOPBACK_CONNECTIONS: usize = 64;

fn base_url(address: SocketAddr, tls: bool) -> String {
    let host = if address.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { address.ip() };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(host, address.port()))
}

/// Issue a one-time login URL for the socket's peer (never over TCP, not even with an admin key:
/// the token logs in as the machine's administrator).
pub async fn launch(State(state): State<AppState>, principal: Option<Extension<Principal>>) -> Response {
    let Some(Extension(principal)) = principal else {
        return Failure::unauthorized("ask for a login URL over the agent's unix socket").into_response();
    };
    let launched = match super::ops::ui_login_grant(&state, &principal) {
        Ok(uid) => launch_url(&state, uid).await,
        Err(failure) => Err(failure),
    };
    match launched {
        Ok(launch) => Json(launch).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn launch_url(state: &AppState, uid: u32) -> Result<UiLaunch, Failure> {
    let Some(listening) = state.ui.listening.get() else {
        return Err(Failure::unavailable("the agent is still starting"));
    };
    let (base, started_listener) = match listening.tcp {
        Some((address, tls)) => (base_url(address, tls), false),
        None => {
            let mut started = state.ui.started_loopback.lock().await;
            match *started {
                Some(address) => (base_url(address, false), false),
                None => {
                    let address = start_loopback(listening).await?;
                    *started = Some(address);
                    super::ops::note_listener(state, base_url(address, false), "bkg ui");
                    (base_url(address, false), true)
                }
            }
        }
    };
    let token = state.ui.issue_token(uid).map_err(|error| Failure::internal(error.to_string()))?;
    Ok(UiLaunch { url: format!("{base}/ui/login#token={token}"), started_listener })
}

async fn start_loopback(listening: &Listening) -> Result<SocketAddr, Failure> {
    let tcp = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|error| Failure::internal(format!("cannot listen on loopback: {error}")))?;
    let address = tcp.local_addr().map_err(|error| Failure::internal(error.to_string()))?;
    tracing::info!(%address, "serving the Web UI (and the API, with keys) on a loopback listener for `bkg ui`");
    let config = listen::ListenerConfig {
        name: "tcp",
        max_connections: LOOPBACK_CONNECTIONS,
        header_timeout: listening.header_timeout,
        tls: None,
    };
    tokio::spawn(listen::serve(
        tcp,
        listening.app.clone(),
        config,
        Arc::clone(&listening.metrics),
        |peer: SocketAddr| peer,
        listening.stopping.clone(),
    ));
    Ok(address)
}
