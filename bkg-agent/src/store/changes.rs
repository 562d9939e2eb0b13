//! The local change feed: the outbox read by seq, for an agent without bkg_db. The outbox holds
//! every audit line in seq order with no gap (see `Store::open`), so a seq is a position.

use bkg_schema::changes::ChangeKind;
use rusqlite::params;

use super::{OutboxRow, Store, StoreError};

impl Store {
    /// Up to `limit` outbox events after seq `after`, in order; only those of `namespace` when
    /// one is given (the agent's own records, without a namespace, then never come).
    pub async fn outbox_after(
        &self,
        after: u64,
        namespace: Option<String>,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.with(move |db| {
            let mut statement = db.prepare(
                "SELECT seq, agent_id, namespace, action, ts_ms, line FROM outbox
                 WHERE seq > ?1 AND (?2 IS NULL OR namespace = ?2) ORDER BY seq LIMIT ?3",
            )?;
            let rows = statement.query_map(params![after as i64, namespace, limit as i64], OutboxRow::read)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The seq of the newest outbox event (of `namespace`'s, when one is given), 0 when there is
    /// none (the outbox is never pruned).
    pub async fn outbox_newest(&self, namespace: Option<String>) -> Result<u64, StoreError> {
        self.with(move |db| {
            let newest: i64 = db.query_row(
                "SELECT coalesce(max(seq), 0) FROM outbox WHERE ?1 IS NULL OR namespace = ?1",
                params![namespace],
                |row| row.get(0),
            )?;
            Ok(newest.max(0) as u64)
        })
        .await
    }

    /// Changes whenever events were added to the outbox.
    pub fn outbox_bumps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.outbox_bumped.subscribe()
    }
}

impl OutboxRow {
    pub fn kind(&self) -> ChangeKind {
        ChangeKind::of_action(&self.action)
    }
}
