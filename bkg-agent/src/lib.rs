//! bkg-agent: the local privileged daemon that prepares and runs sandboxes, serves the API on a
//! unix socket and keeps the run store.

pub mod activation;
pub mod api_doc;
pub mod artefacts;
pub mod audit;
pub mod auth;
pub mod caller_fs;
pub mod daemon;
pub mod engine;
pub mod envs;
pub mod feed;
pub mod ids;
pub mod local_socket;
pub mod mcp;
pub mod metrics;
pub mod retention;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod ui;
