//! End-to-end tests of `bkg exe` against a real agent, as root. Each test starts its own agent.

mod activation;
mod api;
mod artefacts;
mod bkg_db;
mod changes;
mod cli_habits;
mod compat;
mod denials;
mod deps;
mod docs_bkg_db;
mod egress;
mod exe_basics;
mod host;
mod inputs;
mod isolation;
mod lifecycle;
mod limits;
mod net;
mod ownership;
mod projects;
mod reliability;
mod retention;
mod services;
mod signals;
mod terminals;
mod ui;
