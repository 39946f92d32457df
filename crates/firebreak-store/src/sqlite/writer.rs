//! The audit writer: one thread, one connection, group commit. Concurrent exchanges and audit
//! appends queue here; the writer takes everything waiting (up to `MAX_BATCH`), applies each in
//! its own savepoint inside one transaction, seals its audit record onto the chain, adds a
//! signed checkpoint when one is due, and commits once: one fsync for the whole batch. Only then
//! does each caller hear back, so a reply means durable.
//!
//! INVARIANT (record-with-act): an exchange's session, token and replay rows and its audit record
//! commit in the same transaction or not at all; a caller never gets `Ok` for either alone.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use firebreak_audit::merkle::CompactTree;
use firebreak_audit::{ChainHead, seal, sign_checkpoint};
use firebreak_core::UnixTime;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{apply_exchange, db_err};
use crate::{AuditDraft, AuditReceipt, AuditSettings, NewExchange, StoreError};

/// At most this many writes per transaction.
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<AuditReceipt, StoreError>>;

/// One queued write.
pub(super) enum Item {
    /// An exchange and its record.
    Exchange(Box<NewExchange>, AuditDraft, Reply),
    /// A record alone.
    Audit(AuditDraft, Reply),
    /// A no-op that still needs a commit.
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

/// The sending side, held by the store.
#[derive(Debug, Clone)]
pub(super) struct WriterHandle {
    tx: SyncSender<Item>,
}

impl WriterHandle {
    /// Queues an item; a full queue is refused at once.
    pub(super) fn send(&self, item: Item) -> Result<(), StoreError> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::WriterGone),
        }
    }
}

/// The chain's state as the writer keeps it.
#[derive(Clone)]
struct Chain {
    head: ChainHead,
    tree: CompactTree,
    last_checkpoint_size: u64,
    last_checkpoint_at: UnixTime,
}

fn load_chain(conn: &Connection, name: &str, now: UnixTime) -> Result<Chain, StoreError> {
    let mut tree = CompactTree::default();
    let mut head = ChainHead::genesis();
    {
        let mut stmt = conn
            .prepare("SELECT seq, hash, leaf_hash FROM audit_records WHERE chain = ?1 ORDER BY seq")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![name], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (seq, hash, leaf) = row.map_err(db_err)?;
            let leaf: [u8; 32] = leaf.try_into().map_err(|_| StoreError::Corrupt {
                table: "audit_records",
                detail: format!("leaf hash of seq {seq}"),
            })?;
            let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt {
                table: "audit_records",
                detail: format!("seq {seq}"),
            })?;
            if seq != head.seq + 1 {
                return Err(StoreError::Corrupt {
                    table: "audit_records",
                    detail: format!("gap before seq {seq}"),
                });
            }
            tree.push(leaf);
            head = ChainHead { seq, hash };
        }
    }
    let last: Option<i64> = conn
        .query_row(
            "SELECT MAX(tree_size) FROM audit_checkpoints WHERE chain = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?
        .flatten();
    Ok(Chain {
        head,
        tree,
        last_checkpoint_size: last.and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
        last_checkpoint_at: now,
    })
}

/// Starts the writer thread on its own connection.
pub(super) fn start(
    conn: Connection,
    checkpointer: Connection,
    settings: AuditSettings,
) -> Result<WriterHandle, StoreError> {
    let chain = load_chain(&conn, &settings.chain, settings.clock.now())?;
    // WAL checkpoints copy pages back into the database file; done inline they stall a group
    // commit (and every request in it). A separate connection does them in the background.
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
        .map_err(db_err)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_cp = std::sync::Arc::clone(&stop);
    std::thread::Builder::new()
        .name("firebreak-wal-checkpoint".into())
        .spawn(move || wal_checkpoints(checkpointer, &stop_cp))
        .map_err(|e| StoreError::Open(format!("wal checkpointer: {e}")))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue.max(1));
    std::thread::Builder::new()
        .name("firebreak-audit-writer".into())
        .spawn(move || {
            run(conn, rx, settings, chain);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
        .map_err(|e| StoreError::Open(format!("audit writer: {e}")))?;
    Ok(WriterHandle { tx })
}

/// Passive WAL checkpoints twice a second; never blocks writers. Ends with the writer.
fn wal_checkpoints(conn: Connection, stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
        }
    }
}

fn run(mut conn: Connection, rx: Receiver<Item>, settings: AuditSettings, mut chain: Chain) {
    let interval = Duration::from_millis(settings.checkpoint_interval_ms.max(1));
    loop {
        let first = match rx.recv_timeout(interval) {
            Ok(item) => Some(item),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Item> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let due = chain.head.seq > chain.last_checkpoint_size
            && settings.clock.now().as_millis()
                >= chain.last_checkpoint_at.as_millis().saturating_add(
                    i64::try_from(settings.checkpoint_interval_ms).unwrap_or(i64::MAX),
                );
        if batch.is_empty() && !due {
            continue;
        }
        commit_batch(&mut conn, &settings, &mut chain, batch);
    }
}

enum Outcome {
    Record(Reply, Result<AuditReceipt, StoreError>),
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

fn commit_batch(
    conn: &mut Connection,
    settings: &AuditSettings,
    chain: &mut Chain,
    batch: Vec<Item>,
) {
    let before = chain.clone();
    let mut outcomes = Vec::with_capacity(batch.len());
    let result = (|| -> Result<(), StoreError> {
        let mut tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        for item in batch {
            match item {
                Item::Exchange(ex, draft, reply) => {
                    let snapshot = chain.clone();
                    let r = with_savepoint(&mut tx, |sp| {
                        apply_exchange(sp, &ex)?;
                        append(sp, &settings.chain, chain, draft)
                    });
                    if r.is_err() {
                        // The savepoint rolled back, so the chain must not have moved either.
                        *chain = snapshot;
                    } else {
                        checkpoint_if_due(&tx, settings, chain, false)?;
                    }
                    outcomes.push(Outcome::Record(reply, r));
                }
                Item::Audit(draft, reply) => {
                    // One INSERT: SQLite undoes a failed statement by itself, so no savepoint is
                    // needed, and `append` moves the chain only after the insert succeeded.
                    let r = append(&tx, &settings.chain, chain, draft);
                    if r.is_ok() {
                        checkpoint_if_due(&tx, settings, chain, false)?;
                    }
                    outcomes.push(Outcome::Record(reply, r));
                }
                Item::Probe(reply) => outcomes.push(Outcome::Probe(reply)),
            }
        }
        // Checkpoints by count were cut after each record; by time, one more covers the rest.
        checkpoint_if_due(&tx, settings, chain, true)?;
        tx.commit().map_err(db_err)
    })();
    match result {
        Ok(()) => {
            for o in outcomes {
                match o {
                    Outcome::Record(reply, r) => {
                        let _ = reply.send(r);
                    }
                    Outcome::Probe(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
        Err(e) => {
            // Nothing of the batch is durable: the chain goes back to where it was, and every
            // caller hears the failure (those refused inside the batch keep their own cause).
            tracing::warn!(error = %e, "audit batch failed to commit");
            *chain = before;
            let msg = e.to_string();
            for o in outcomes {
                match o {
                    Outcome::Record(reply, r) => {
                        let _ = reply.send(match r {
                            Ok(_) => Err(StoreError::Database(msg.clone())),
                            Err(own) => Err(own),
                        });
                    }
                    Outcome::Probe(reply) => {
                        let _ = reply.send(Err(StoreError::Database(msg.clone())));
                    }
                }
            }
        }
    }
}

/// Signs and stores a checkpoint when `checkpoint_every` records have passed since the last one
/// (exactly at that count), or, with `by_time`, when the interval has passed and records are
/// unanchored.
fn checkpoint_if_due(
    tx: &Connection,
    settings: &AuditSettings,
    chain: &mut Chain,
    by_time: bool,
) -> Result<(), StoreError> {
    let now = settings.clock.now();
    let pending = chain.head.seq.saturating_sub(chain.last_checkpoint_size);
    let count_due = pending >= settings.checkpoint_every;
    let time_due = by_time
        && pending > 0
        && now.as_millis()
            >= chain
                .last_checkpoint_at
                .as_millis()
                .saturating_add(i64::try_from(settings.checkpoint_interval_ms).unwrap_or(i64::MAX));
    if !(count_due || time_due) {
        return Ok(());
    }
    let cp = sign_checkpoint(
        &settings.chain,
        chain.head.seq,
        &chain.tree.root(),
        now,
        &settings.key,
    )
    .map_err(|e| StoreError::Audit(e.to_string()))?;
    tx.execute(
        "INSERT INTO audit_checkpoints (chain, tree_size, json) VALUES (?1, ?2, ?3)",
        params![
            settings.chain,
            i64::try_from(chain.head.seq).unwrap_or(i64::MAX),
            cp.to_string()
        ],
    )
    .map_err(db_err)?;
    chain.last_checkpoint_size = chain.head.seq;
    chain.last_checkpoint_at = now;
    Ok(())
}

/// Runs `f` in a savepoint; on error it rolls back and the chain state is restored.
fn with_savepoint<T>(
    tx: &mut rusqlite::Transaction<'_>,
    f: impl FnOnce(&rusqlite::Savepoint<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let sp = tx.savepoint().map_err(db_err)?;
    let r = f(&sp);
    match r {
        Ok(v) => {
            sp.commit().map_err(db_err)?;
            Ok(v)
        }
        Err(e) => {
            drop(sp); // rolls back
            Err(e)
        }
    }
}

/// Seals a record onto the chain and inserts it. The in-memory head moves only once the insert
/// succeeded; a later failure of the whole batch restores it from `before`.
fn append(
    conn: &Connection,
    name: &str,
    chain: &mut Chain,
    draft: AuditDraft,
) -> Result<AuditReceipt, StoreError> {
    #[cfg(feature = "danger-bench-no-audit")]
    {
        // Benchmark-only build: the exchange without its record. See Cargo.toml.
        let _ = (conn, name, draft);
        Ok(AuditReceipt {
            seq: chain.head.seq,
            hash: chain.head.hash.clone(),
        })
    }
    #[cfg(not(feature = "danger-bench-no-audit"))]
    append_record(conn, name, chain, draft)
}

#[cfg(not(feature = "danger-bench-no-audit"))]
fn append_record(
    conn: &Connection,
    name: &str,
    chain: &mut Chain,
    draft: AuditDraft,
) -> Result<AuditReceipt, StoreError> {
    let sealed = seal(draft.fields, name, draft.time, &chain.head)
        .map_err(|e| StoreError::Audit(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO audit_records (chain, seq, hash, leaf_hash, json, session, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            name,
            i64::try_from(sealed.seq).unwrap_or(i64::MAX),
            sealed.hash,
            sealed.leaf_hash.to_vec(),
            sealed.json,
            draft
                .session
                .as_ref()
                .map(firebreak_core::SessionId::as_str),
            draft.time.as_millis(),
        ])
    })
    .map_err(db_err)?;
    chain.tree.push(sealed.leaf_hash);
    chain.head = ChainHead {
        seq: sealed.seq,
        hash: sealed.hash.clone(),
    };
    Ok(AuditReceipt {
        seq: sealed.seq,
        hash: sealed.hash,
    })
}
