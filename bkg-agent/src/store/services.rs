//! Services to start again when the next agent starts (service/services.rs): a detached run
//! whose sandbox says `restart: on-failure` has a row from its start until it ends for good
//! (success, `bkg stop`, a failure it may not restart after); an agent's stop or crash leaves
//! it. One-off environment values are never stored (docs/operations.md), so a service given
//! any has no row.

use bkg_schema::egress::ServiceHealth;
use bkg_schema::sandbox::ExecRequest;
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

/// A service the last agent left running: its sandbox, its command and who started it
/// (`Principal::actor`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeftService {
    pub sandbox_id: String,
    pub exec: ExecRequest,
    pub actor: String,
}

impl Store {
    /// Records (or replaces) sandbox `sandbox_id`'s service; `exec` must have no environment.
    pub async fn service_started(&self, sandbox_id: &str, exec: &ExecRequest, actor: &str) -> Result<(), StoreError> {
        let (sandbox_id, actor, exec) = (sandbox_id.to_owned(), actor.to_owned(), serde_json::to_string(exec)?);
        self.with(move |db| {
            db.execute(
                "INSERT OR REPLACE INTO services (sandbox_id, exec, actor) VALUES (?1, ?2, ?3)",
                params![sandbox_id, exec, actor],
            )?;
            Ok(())
        })
        .await
    }

    /// Sandbox `sandbox_id`'s service ended for good: it is not started again.
    pub async fn service_ended(&self, sandbox_id: &str) -> Result<(), StoreError> {
        let sandbox_id = sandbox_id.to_owned();
        self.with(move |db| {
            db.execute("DELETE FROM services WHERE sandbox_id = ?1", params![sandbox_id])?;
            Ok(())
        })
        .await
    }

    /// Every service the last agent left, by sandbox id.
    pub async fn left_services(&self) -> Result<Vec<LeftService>, StoreError> {
        self.with(move |db| {
            let mut statement = db.prepare("SELECT sandbox_id, exec, actor FROM services ORDER BY sandbox_id")?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(sandbox_id, exec, actor)| {
                    Ok(LeftService { sandbox_id, exec: serde_json::from_str(&exec)?, actor })
                })
                .collect()
        })
        .await
    }

    /// Keeps how sandbox `sandbox_id`'s service stands now (its ports are not kept: they are
    /// probed when shown).
    pub async fn keep_service_health(&self, sandbox_id: &str, health: &ServiceHealth) -> Result<(), StoreError> {
        let kept = ServiceHealth { ports: Vec::new(), ..health.clone() };
        let (sandbox_id, health) = (sandbox_id.to_owned(), serde_json::to_string(&kept)?);
        self.with(move |db| {
            db.execute("UPDATE sandboxes SET last_service = ?2 WHERE id = ?1", params![sandbox_id, health])?;
            Ok(())
        })
        .await
    }

    /// How sandbox `sandbox_id`'s service stood when last kept, if it ever had one.
    pub async fn kept_service_health(&self, sandbox_id: &str) -> Result<Option<ServiceHealth>, StoreError> {
        let sandbox_id = sandbox_id.to_owned();
        self.with(move |db| {
            let kept: Option<Option<String>> = db
                .query_row("SELECT last_service FROM sandboxes WHERE id = ?1", params![sandbox_id], |row| row.get(0))
                .optional()?;
            kept.flatten().map(|text| serde_json::from_str(&text)).transpose().map_err(StoreError::from)
        })
        .await
    }
}
