//! What the agent remembers of each run: the store (and the audit log) hear of its start, its
//! end, and its cleanup, whoever asked for the run (socket, TCP, MCP).

use std::sync::Arc;

use bkg_schema::RunResult;
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::engine::run::{RunError, RunInput, RunOutput, ValidatedRun};
use crate::ids::now_ms;
use crate::store::Store;

/// Runs a validated run to its end and records it. Recording failures are logged, never turned
/// into a failed run: the caller's code did run.
pub async fn execute(
    engine: &Arc<Engine>,
    store: &Store,
    run_id: String,
    validated: ValidatedRun,
    input: mpsc::Receiver<RunInput>,
    output: Option<mpsc::Sender<RunOutput>>,
) -> Result<RunResult, RunError> {
    if let Err(error) =
        store.run_started(&run_id, validated.sandbox_id(), validated.language, validated.limits, now_ms()).await
    {
        tracing::error!(%error, run = %run_id, "could not record the run's start");
    }
    let outcome = engine.run(run_id.clone(), validated, input, output).await;
    let recorded = match &outcome {
        Ok(result) => store.run_finished(result, now_ms()).await,
        Err(error) => store.run_failed(&run_id, &error.to_string(), now_ms()).await,
    };
    if let Err(error) = recorded {
        tracing::error!(%error, run = %run_id, "could not record the run's end");
    }
    outcome
}
