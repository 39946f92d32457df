//! The PostgreSQL audit writer: one task and one connection per store, group commit, and ONE
//! chain (`AuditSettings::chain`, the broker's) shared by every replica on the database.
//!
//! Each batch is one transaction that first takes the chain's transaction-scoped advisory lock,
//! then reads the chain's end from `audit_chain_heads` (seq, hash, Merkle frontier, last
//! checkpoint), applies each queued exchange or record in its own savepoint, seals the records
//! onto that end, cuts checkpoints exactly as the SQLite writer does, writes the new end back and
//! commits. Only then does each caller hear back.
//!
//! INVARIANT (one-chain): the head is read and written only under the advisory lock, inside the
//! transaction that inserts the records it describes; the lock is held until that transaction
//! ends, so replicas append strictly one after another: gap-free and fork-free. The
//! `(chain, seq)` primary key refuses a fork even if that were ever broken.
//! INVARIANT (record-with-act): an exchange's session, token and replay rows and its audit record
//! commit in the same transaction or not at all; a caller never gets `Ok` for either alone.

use std::time::Duration;

use firebreak_audit::merkle::CompactTree;
use firebreak_audit::{ChainHead, seal, sign_checkpoint};
use firebreak_core::UnixTime;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Transaction;

use super::pool::{Pool, StmtCache};
use super::{apply_exchange, chain_lock, corrupt, db_err, to_u64};
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
    tx: mpsc::Sender<Item>,
}

impl WriterHandle {
    /// Queues an item; a full queue is refused at once.
    pub(super) fn send(&self, item: Item) -> Result<(), StoreError> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::WriterGone),
        }
    }
}

/// The chain's end as read under the lock.
#[derive(Clone)]
pub(super) struct Chain {
    head: ChainHead,
    tree: CompactTree,
    last_checkpoint_size: u64,
    last_checkpoint_at: UnixTime,
}

impl Chain {
    fn checkpoint_due_by_time(&self, settings: &AuditSettings, now: UnixTime) -> bool {
        self.head.seq > self.last_checkpoint_size
            && now.as_millis()
                >= self.last_checkpoint_at.as_millis().saturating_add(
                    i64::try_from(settings.checkpoint_interval_ms).unwrap_or(i64::MAX),
                )
    }
}

/// Creates the head row of the writer's chain (`name`) if this is the first store on the
/// database to write it. The checkpoint timer starts now, as the SQLite writer's does at open.
pub(super) async fn init_head(
    client: &tokio_postgres::Client,
    name: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO audit_chain_heads
                 (chain, seq, hash, frontier, last_checkpoint_size, last_checkpoint_at)
             VALUES ($1, 0, $2, ''::BYTEA, 0, $3) ON CONFLICT (chain) DO NOTHING",
            &[&name, &ChainHead::genesis().hash, &now.as_millis()],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn load_chain(
    tx: &Transaction<'_>,
    cache: &mut StmtCache,
    name: &str,
) -> Result<Chain, StoreError> {
    let t = "audit_chain_heads";
    let st = cache
        .get(
            tx,
            "SELECT seq, hash, frontier, last_checkpoint_size, last_checkpoint_at
               FROM audit_chain_heads WHERE chain = $1",
        )
        .await?;
    let row = tx
        .query_opt(&st, &[&name])
        .await
        .map_err(db_err)?
        .ok_or_else(|| corrupt(t, format!("no head row for chain {name}")))?;
    let seq = to_u64(row.try_get(0).map_err(|e| corrupt(t, e))?, t)?;
    let frontier: Vec<u8> = row.try_get(2).map_err(|e| corrupt(t, e))?;
    let peaks = frontier
        .chunks(32)
        .map(<[u8; 32]>::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt(t, "frontier is not a list of 32-byte hashes"))?;
    let tree = CompactTree::from_frontier(seq, peaks)
        .ok_or_else(|| corrupt(t, format!("frontier does not fit tree size {seq}")))?;
    Ok(Chain {
        head: ChainHead {
            seq,
            hash: row.try_get(1).map_err(|e| corrupt(t, e))?,
        },
        tree,
        last_checkpoint_size: to_u64(row.try_get(3).map_err(|e| corrupt(t, e))?, t)?,
        last_checkpoint_at: UnixTime::from_millis(row.try_get(4).map_err(|e| corrupt(t, e))?),
    })
}

async fn store_chain(
    tx: &Transaction<'_>,
    cache: &mut StmtCache,
    name: &str,
    chain: &Chain,
) -> Result<(), StoreError> {
    let st = cache
        .get(
            tx,
            "UPDATE audit_chain_heads
                SET seq = $2, hash = $3, frontier = $4, last_checkpoint_size = $5,
                    last_checkpoint_at = $6
              WHERE chain = $1",
        )
        .await?;
    let frontier: Vec<u8> = chain.tree.frontier().concat();
    tx.execute(
        &st,
        &[
            &name,
            &i64::try_from(chain.head.seq).unwrap_or(i64::MAX),
            &chain.head.hash,
            &frontier,
            &i64::try_from(chain.last_checkpoint_size).unwrap_or(i64::MAX),
            &chain.last_checkpoint_at.as_millis(),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Starts the writer task on its own one-connection pool.
pub(super) fn start(pool: Pool, settings: AuditSettings) -> WriterHandle {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    tokio::spawn(run(pool, rx, settings));
    WriterHandle { tx }
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<Item>, settings: AuditSettings) {
    let interval = Duration::from_millis(settings.checkpoint_interval_ms.max(1));
    // The chain as this writer last saw it: only a hint for when to try a time checkpoint with
    // an empty batch. The batch itself re-reads the real end under the lock, so a replica that
    // checkpointed first makes this a no-op.
    let mut last: Option<Chain> = None;
    loop {
        let first = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => Some(item),
                None => return,
            },
            () = tokio::time::sleep(interval) => None,
        };
        let mut batch: Vec<Item> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let due = last
            .as_ref()
            .is_none_or(|c| c.checkpoint_due_by_time(&settings, settings.clock.now()));
        if batch.is_empty() && !due {
            continue;
        }
        if let Some(chain) = commit_batch(&pool, &settings, batch).await {
            last = Some(chain);
        }
    }
}

/// What one queued item needs, without its reply (the replies stay outside the transaction's
/// future, so that a timed-out batch still answers every caller).
enum Work {
    Exchange(Box<NewExchange>, AuditDraft),
    Audit(AuditDraft),
    Probe,
}

enum Answer {
    Record(Reply),
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

async fn commit_batch(pool: &Pool, settings: &AuditSettings, batch: Vec<Item>) -> Option<Chain> {
    let mut work = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    for item in batch {
        match item {
            Item::Exchange(ex, draft, reply) => {
                work.push(Work::Exchange(ex, draft));
                answers.push(Answer::Record(reply));
            }
            Item::Audit(draft, reply) => {
                work.push(Work::Audit(draft));
                answers.push(Answer::Record(reply));
            }
            Item::Probe(reply) => {
                work.push(Work::Probe);
                answers.push(Answer::Probe(reply));
            }
        }
    }
    // Each item's own outcome, in order; only meaningful once the commit succeeded.
    let mut outcomes: Vec<Result<Option<AuditReceipt>, StoreError>> =
        Vec::with_capacity(work.len());
    // A batch of many exchanges runs many statements, each bounded by the statement timeout;
    // the whole is bounded too, so a stalled database fails the batch instead of hanging it.
    let limit = pool.settings().statement_timeout.saturating_mul(2);
    let result = pool
        .run_within(limit, async |conn| {
            let tx = conn.client.transaction().await.map_err(db_err)?;
            let cache = &mut conn.cache;
            let lock = cache.get(&tx, chain_lock()).await?;
            let name = settings.chain.as_str();
            tx.execute(&lock, &[&name]).await.map_err(db_err)?;
            let mut chain = load_chain(&tx, cache, name).await?;
            let mut tx = tx;
            for w in work {
                match w {
                    Work::Exchange(ex, draft) => {
                        let before = chain.clone();
                        let sp = tx.savepoint("item").await.map_err(db_err)?;
                        let r = async {
                            apply_exchange(&sp, cache, &ex).await?;
                            append(&sp, cache, name, &mut chain, draft).await
                        }
                        .await;
                        sp_end(sp, &r).await?;
                        if r.is_ok() {
                            checkpoint_if_due(&tx, cache, settings, &mut chain, false).await?;
                        } else {
                            // The savepoint rolled back, so the chain must not have moved either.
                            chain = before;
                        }
                        outcomes.push(r.map(Some));
                    }
                    Work::Audit(draft) => {
                        // A failed statement aborts a PostgreSQL transaction, so even a single
                        // insert gets its own savepoint.
                        let before = chain.clone();
                        let sp = tx.savepoint("item").await.map_err(db_err)?;
                        let r = append(&sp, cache, name, &mut chain, draft).await;
                        sp_end(sp, &r).await?;
                        if r.is_ok() {
                            checkpoint_if_due(&tx, cache, settings, &mut chain, false).await?;
                        } else {
                            chain = before;
                        }
                        outcomes.push(r.map(Some));
                    }
                    Work::Probe => outcomes.push(Ok(None)),
                }
            }
            // Checkpoints by count were cut after each record; by time, one more covers the rest.
            checkpoint_if_due(&tx, cache, settings, &mut chain, true).await?;
            store_chain(&tx, cache, name, &chain).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(chain)
        })
        .await;
    match result {
        Ok(chain) => {
            let mut outcomes = outcomes.into_iter();
            for a in answers {
                let o = outcomes.next().unwrap_or(Err(StoreError::WriterGone));
                match a {
                    Answer::Record(reply) => {
                        let _ = reply.send(o.and_then(|r| r.ok_or(StoreError::WriterGone)));
                    }
                    Answer::Probe(reply) => {
                        let _ = reply.send(o.map(|_| ()));
                    }
                }
            }
            Some(chain)
        }
        Err(e) => {
            // Nothing of the batch is durable (PostgreSQL rolled it all back, head row
            // included), and every caller hears so; those refused inside the batch keep their
            // own cause.
            tracing::warn!(error = %e, "audit batch failed to commit");
            let msg = e.to_string();
            let mut outcomes = outcomes.into_iter();
            for a in answers {
                let own = match outcomes.next() {
                    Some(Err(own)) => own,
                    _ => StoreError::Database(msg.clone()),
                };
                match a {
                    Answer::Record(reply) => {
                        let _ = reply.send(Err(own));
                    }
                    Answer::Probe(reply) => {
                        let _ = reply.send(Err(StoreError::Database(msg.clone())));
                    }
                }
            }
            None
        }
    }
}

/// Releases the savepoint after a successful item, rolls back to it after a refused one. A
/// failure to do either means the connection or transaction is gone: the whole batch fails.
async fn sp_end<T>(sp: Transaction<'_>, r: &Result<T, StoreError>) -> Result<(), StoreError> {
    match r {
        Ok(_) => sp.commit().await.map_err(db_err),
        Err(e) => {
            tracing::debug!(error = %e, "audit batch item refused");
            sp.rollback().await.map_err(db_err)
        }
    }
}

/// Signs and stores a checkpoint when `checkpoint_every` records have passed since the last one
/// (exactly at that count), or, with `by_time`, when the interval has passed and records are
/// unanchored. The same rule as the SQLite writer, on the shared chain's state.
async fn checkpoint_if_due(
    tx: &Transaction<'_>,
    cache: &mut StmtCache,
    settings: &AuditSettings,
    chain: &mut Chain,
    by_time: bool,
) -> Result<(), StoreError> {
    let now = settings.clock.now();
    let pending = chain.head.seq.saturating_sub(chain.last_checkpoint_size);
    let count_due = pending >= settings.checkpoint_every;
    let time_due = by_time && chain.checkpoint_due_by_time(settings, now);
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
    let st = cache
        .get(
            tx,
            "INSERT INTO audit_checkpoints (chain, tree_size, json) VALUES ($1, $2, $3)",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &settings.chain,
            &i64::try_from(chain.head.seq).unwrap_or(i64::MAX),
            &cp.to_string(),
        ],
    )
    .await
    .map_err(db_err)?;
    chain.last_checkpoint_size = chain.head.seq;
    chain.last_checkpoint_at = now;
    Ok(())
}

/// Seals a record onto the chain and inserts it. The in-memory head moves only once the insert
/// succeeded; a failed savepoint or batch restores it.
async fn append(
    tx: &Transaction<'_>,
    cache: &mut StmtCache,
    name: &str,
    chain: &mut Chain,
    draft: AuditDraft,
) -> Result<AuditReceipt, StoreError> {
    #[cfg(feature = "danger-bench-no-audit")]
    {
        // Benchmark-only build: the exchange without its record. See Cargo.toml.
        let _ = (tx, cache, name, draft);
        Ok(AuditReceipt {
            seq: chain.head.seq,
            hash: chain.head.hash.clone(),
        })
    }
    #[cfg(not(feature = "danger-bench-no-audit"))]
    {
        let sealed = seal(draft.fields, name, draft.time, &chain.head)
            .map_err(|e| StoreError::Audit(e.to_string()))?;
        let st = cache
            .get(
                tx,
                "INSERT INTO audit_records (chain, seq, hash, leaf_hash, json, session, time)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        tx.execute(
            &st,
            &[
                &name,
                &i64::try_from(sealed.seq).unwrap_or(i64::MAX),
                &sealed.hash,
                &sealed.leaf_hash.as_slice(),
                &sealed.json,
                &draft
                    .session
                    .as_ref()
                    .map(firebreak_core::SessionId::as_str),
                &draft.time.as_millis(),
            ],
        )
        .await
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
}
