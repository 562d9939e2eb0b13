//! bkg-agent: the local privileged daemon that prepares and runs sandboxes, serves the API on a
//! unix socket and keeps the run store.

pub mod audit;
pub mod daemon;
pub mod engine;
pub mod ids;
pub mod records;
pub mod server;
pub mod store;
