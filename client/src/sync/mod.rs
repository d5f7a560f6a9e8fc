//! Sync with a witness (DESIGN §6): push the upload queue, pull and verify certified
//! commits, rebase what is still pending over them.
//!
//! - [`config`]: `pdb_open`, the applied head and state vector.
//! - [`bootstrap`]: starting from a verified snapshot instead of the whole history.
//! - [`rebase`]: one transaction that applies remote commits under pending local ones.
//! - [`strategy`]: how conflicting rows are settled.
//! - [`resolve`]: `pdb_resolve` for conflicts left to the application.
//! - [`status`]: the in-memory part of `pdb_status()`.
//! - [`worker`]: the background worker of `pdb_sync_start()`.

pub mod bootstrap;
pub mod config;
pub mod cycle;
pub mod rebase;
pub mod resolve;
pub mod status;
pub mod strategy;
pub mod worker;

use std::time::Duration;

use serde_json::json;

use crate::capture;
use crate::cert::{genesis, hex, next_head, parse_hash, Certificate, Hash};
use crate::db::{Db, Stmt};
use crate::error::TransportError;
use crate::problem::Code;
use crate::schema::schema_hash;
use crate::transport::{Remote, Submission, Witness};
use crate::value::{Value, ValueRef};
use crate::Error;
use config::Config;
use cycle::{Cycle, LocalView};
use rebase::Incoming;

/// Commits asked for per pull page (the witness also caps a page at a few MiB).
const PAGE: usize = 1000;

/// Push/pull rounds one sync runs at most: a round ends early when nothing is left.
const ROUNDS: usize = 5;

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Local commits the witness certified.
    pub pushed: usize,
    /// Remote commits applied (this device's own included, once certified).
    pub pulled: usize,
    /// Conflicts recorded in `pdb_conflicts`.
    pub conflicts: usize,
    /// Local commits the witness refused for good (dead letters).
    pub dead: usize,
    /// The snapshot installed on the way, if any.
    pub bootstrapped: Option<bootstrap::Bootstrapped>,
    /// The applied head afterwards.
    pub head: (u64, String),
}

impl Summary {
    /// Counts what a push did.
    fn add_push(&mut self, p: &Pushed) {
        self.pushed += p.pushed;
        self.dead += p.dead;
    }

    /// Counts what a pull did.
    fn add_pull(&mut self, r: &Pull) {
        self.pulled += r.pulled;
        self.conflicts += r.conflicts;
        if let Some(b) = &r.bootstrapped {
            self.conflicts += b.conflicts;
            self.bootstrapped = Some(b.clone());
        }
    }

    /// The JSON `pdb_sync()` returns.
    pub fn to_json(&self) -> String {
        let mut j = json!({
            "pushed": self.pushed,
            "pulled": self.pulled,
            "conflicts": self.conflicts,
            "dead": self.dead,
            "head": {"seq": self.head.0, "head": self.head.1},
        });
        if let Some(b) = &self.bootstrapped {
            j["bootstrapped"] = b.to_json();
        }
        j.to_string()
    }
}

/// A connection to the database's witness.
pub fn remote(cfg: &Config) -> Result<Remote, Error> {
    Ok(Remote::new(&cfg.url, &cfg.group, &cfg.token)?)
}

/// Records the outcome of a sync step in the live status, then passes it on. Whether
/// the witness answered and the last error are also kept in `pdb_local` when they
/// change, so that a later process (the next sqlite3 shell) still reports them.
fn note<D: Db, T>(db: &D, path: &str, r: Result<T, Error>) -> Result<T, Error> {
    let now = capture::now_ms();
    let (online, error) = match &r {
        Ok(_) => (true, None),
        // A garbled answer is still an answer: only no answer at all is offline.
        Err(e) => (
            !matches!(e, Error::Transport(TransportError::Unreachable(_))),
            Some(e.to_string()),
        ),
    };
    let before = status::get(path);
    status::update(path, |s| {
        s.online = Some(online);
        s.last_error = error.clone();
        if r.is_ok() {
            s.last_sync_at = Some(now);
        }
    });
    if before.online != Some(online) || before.last_error != error {
        // Best effort: a locked or read-only database keeps only the live status.
        let _ = persist_status(db, online, error.as_deref(), r.is_ok().then_some(now));
    }
    r
}

fn persist_status<D: Db>(
    db: &D,
    online: bool,
    error: Option<&str>,
    synced_at: Option<i64>,
) -> Result<(), Error> {
    if !capture::has_schema(db)? {
        return Ok(());
    }
    config::set(db, "online", ValueRef::Integer(i64::from(online)))?;
    config::set(db, "last_error", ValueRef::text_or_null(error))?;
    if let Some(t) = synced_at {
        config::set(db, "last_sync_at", ValueRef::Integer(t))?;
    }
    Ok(())
}

/// Checks once per process that the group is signed by the pinned key and has this
/// device's schema, so a mismatch is named before any commit is sent or pulled.
fn check_group<D: Db>(db: &D, c: &mut Cycle<'_>) -> Result<(), Error> {
    if status::get(&c.path).checked {
        return Ok(());
    }
    let cfg = &c.cfg;
    let info = c.witness.group_info()?.map_err(Error::Rejected)?;
    if info.witness_key != cfg.witness_key {
        return Err(Error::WitnessKey(format!(
            "the witness at {} signs with key {}, not the pinned {}: refusing to sync",
            cfg.url,
            hex(&info.witness_key),
            hex(&cfg.witness_key)
        )));
    }
    let tables: Vec<_> = c.local.tables(db)?.iter().map(|t| t.info.clone()).collect();
    let ours = schema_hash(&tables);
    // A device tracking nothing takes the group's tables from a snapshot or its DDL.
    if !tables.is_empty() && info.schema_hash != ours {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        return Err(Error::Schema(format!(
            "schema_mismatch: group \"{}\" has schema {} but this device tracks {:?} with schema {}; \
             nothing was sent or applied",
            c.cfg.group,
            hex(&info.schema_hash),
            names,
            hex(&ours)
        )));
    }
    status::update(&c.path, |s| s.checked = true);
    Ok(())
}

/// One queued commit to send.
struct Outgoing {
    id: i64,
    changeset: Vec<u8>,
    key: String,
    base_seq: u64,
    base_head: Option<String>,
    schema_hash: String,
    meta: Option<String>,
}

fn next_outgoing<D: Db>(db: &D) -> Result<Option<Outgoing>, Error> {
    let mut stmt = db.prepare(
        "SELECT id, changeset, idempotency_key, base_seq, base_head, schema_hash, meta \
         FROM pdb_upload_queue WHERE dead IS NULL AND pushed_seq IS NULL ORDER BY id LIMIT 1",
    )?;
    let mut out = None;
    stmt.query::<Error>(&mut |r| {
        let text = |v: ValueRef<'_>| match v {
            ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        };
        if let (ValueRef::Integer(id), ValueRef::Blob(cs), ValueRef::Integer(base_seq)) =
            (r[0], r[1], r[3])
        {
            out = Some(Outgoing {
                id,
                changeset: cs.to_vec(),
                key: text(r[2]).unwrap_or_default(),
                base_seq: base_seq.max(0) as u64,
                base_head: text(r[4]),
                schema_hash: text(r[5]).unwrap_or_default(),
                meta: text(r[6]),
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// Whether a commit must only be accepted on the current head. The witness's
/// `rebase-if-clean` merges updates of different columns of a row by itself, which is
/// column-merge's answer; a table with any other strategy must see every concurrent
/// change in its own rebase, so its commits go `fast-forward`.
fn needs_fast_forward(
    changeset: &[u8],
    strategies: &std::collections::HashMap<String, strategy::Strategy>,
) -> Result<bool, Error> {
    Ok(crate::changeset::parse(changeset)?.iter().any(|(h, _)| {
        strategies
            .get(h.name)
            .is_some_and(|s| *s != strategy::DEFAULT)
    }))
}

/// What a push did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Commits certified.
    pub pushed: usize,
    /// Commits dead-lettered.
    pub dead: usize,
    /// The witness's head moved past the queue's base: pull, then push again.
    pub need_pull: bool,
}

/// Sends queued commits in order until the queue is sent or the witness asks for a
/// pull first. Retries send the same idempotency key, so a commit whose answer was
/// lost is never certified twice.
pub fn push<D: Db>(db: &D, c: &mut Cycle<'_>) -> Result<Pushed, Error> {
    let mut done = Pushed::default();
    let client = config::client_id(db)?;
    let strategies = c.local.strategies(db)?;
    let remote = c.witness;
    // Queued commits made on one head were each made on top of the one before. When
    // the witness certifies one right on that head, the next can claim the new head as
    // its base, so a `fast-forward` queue goes out in one pass, not a pull per commit.
    let mut moved: Option<((u64, Hash), (u64, Hash))> = None;
    while let Some(q) = next_outgoing(db)? {
        let stored_base = (
            q.base_seq,
            match &q.base_head {
                Some(h) => parse_hash(h).ok_or_else(|| {
                    Error::Diverged(format!("local commit {} has a corrupt base head", q.id))
                })?,
                None => genesis(&c.cfg.group),
            },
        );
        let base = match moved {
            Some((from, to)) if from == stored_base => to,
            _ => stored_base,
        };
        let schema = parse_hash(&q.schema_hash).ok_or_else(|| {
            Error::Diverged(format!("local commit {} has a corrupt schema hash", q.id))
        })?;
        let answer = remote.push(&Submission {
            changeset: &q.changeset,
            base,
            idempotency_key: &q.key,
            schema_hash: schema,
            client: client.as_deref(),
            meta: q.meta.as_deref(),
            fast_forward: needs_fast_forward(&q.changeset, &strategies)?,
        })?;
        match answer {
            Ok((cert, _duplicate)) => {
                let refused = |why: String| Error::PushCertificate {
                    id: q.id,
                    key: q.key.clone(),
                    why,
                };
                if cert.group != c.cfg.group {
                    return Err(refused(format!(
                        "it is for group \"{}\", not \"{}\"",
                        cert.group, c.cfg.group
                    )));
                }
                if cert.idempotency_key != q.key {
                    return Err(refused(format!(
                        "it is of key \"{}\"",
                        cert.idempotency_key
                    )));
                }
                cert.verify_signature(&c.cfg.witness_key)
                    .map_err(|e| refused(e.to_string()))?;
                db.execute(
                    "UPDATE pdb_upload_queue SET pushed_seq = ?2 WHERE id = ?1",
                    &[ValueRef::Integer(q.id), ValueRef::Integer(cert.seq as i64)],
                )?;
                done.pushed += 1;
                moved = (cert.prev == base.1 && cert.seq == base.0 + 1)
                    .then_some((stored_base, (cert.seq, cert.head)));
            }
            Err(rej) => match rej.code() {
                // The group moved on, or an earlier form of this commit was certified
                // after all: the pull shows which, and rebases the rest.
                Some(
                    Code::StaleBase | Code::Conflict | Code::IdempotencyConflict | Code::Compacted,
                ) => {
                    done.need_pull = true;
                    return Ok(done);
                }
                // The witness will never take this commit: take it back locally and
                // keep it visible as a dead letter, its rows in pdb_conflicts.
                Some(Code::InvalidChangeset | Code::TooLarge) => {
                    let reason = format!("{} {}: {}", rej.status, rej.code, rej.detail);
                    rebase::integrate_in(
                        db,
                        &c.cfg,
                        &mut c.local,
                        Incoming::Commits(&[]),
                        Some((q.id, &reason)),
                    )?;
                    done.dead += 1;
                }
                _ => return Err(Error::Rejected(rej)),
            },
        }
    }
    Ok(done)
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pull {
    /// Remote commits applied.
    pub pulled: usize,
    /// Of those, this device's own queued commits.
    pub confirmed: usize,
    /// Conflicts recorded in `pdb_conflicts`.
    pub conflicts: usize,
    /// The snapshot installed first, if any.
    pub bootstrapped: Option<bootstrap::Bootstrapped>,
}

/// Pulls, verifies and applies every commit after the applied head, a page per
/// transaction. A device with nothing of the group starts from the newest snapshot;
/// one whose head the witness compacted away starts again from it, its pending
/// changes rebased. While it runs, `pdb_status()` shows its progress.
pub fn pull<D: Db>(db: &D, c: &mut Cycle<'_>) -> Result<Pull, Error> {
    let result = pull_pages(db, c);
    status::update(&c.path, |s| s.progress = None);
    result
}

/// Creates and tracks the group's tables from its DDL, for a device that tracks none
/// and found no snapshot: it then replays the history from the start.
fn create_group_tables<D: Db>(db: &D, c: &mut Cycle<'_>) -> Result<(), Error> {
    let info = c.witness.group_info()?.map_err(Error::Rejected)?;
    let result = crate::db::transaction(db, "pdb_pull", || {
        capture::ensure_schema(db)?;
        crate::group_ddl::run(db, &info.ddl)?;
        let mut names = Vec::new();
        let mut stmt = db.prepare(
            "SELECT name FROM main.sqlite_schema WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'pdb\\_%' ESCAPE '\\'",
        )?;
        stmt.query::<Error>(&mut |r| {
            if let ValueRef::Text(t) = r[0] {
                names.push(String::from_utf8_lossy(t).into_owned());
            }
            Ok(())
        })?;
        drop(stmt);
        for n in names {
            capture::track(db, &n)?;
        }
        let tables: Vec<_> = c.local.tables(db)?.iter().map(|t| t.info.clone()).collect();
        if schema_hash(&tables) != info.schema_hash {
            return Err(Error::Schema(format!(
                "schema_mismatch: the group's DDL made tables with schema {}, not the group's {}",
                hex(&schema_hash(&tables)),
                hex(&info.schema_hash)
            )));
        }
        Ok(())
    });
    if result.is_err() {
        c.local.forget();
    }
    result
}

fn pull_pages<D: Db>(db: &D, c: &mut Cycle<'_>) -> Result<Pull, Error> {
    let mut total = Pull::default();
    if bootstrap::is_empty_in(db, &mut c.local)? {
        total.bootstrapped = bootstrap::bootstrap(db, c, bootstrap::Reason::Asked)?;
        if total.bootstrapped.is_none() && c.local.tables(db)?.is_empty() {
            create_group_tables(db, c)?;
        }
    }
    // Each 410 means the witness compacted past this device; a few in a row can happen
    // while it snapshots and compacts faster than the device catches up.
    let mut rebootstraps = 0;
    loop {
        let (seq, _) = config::head(db, &c.cfg.group)?;
        let page = match c.witness.pull(seq, PAGE, Duration::ZERO)? {
            Ok(page) => page,
            Err(r) if r.code() == Some(Code::Compacted) && rebootstraps < 3 => {
                rebootstraps += 1;
                total.bootstrapped = bootstrap::bootstrap(db, c, bootstrap::Reason::Compacted)?;
                continue;
            }
            Err(r) => return Err(Error::Rejected(r)),
        };
        if page.commits.is_empty() {
            if page.head.0 > seq {
                // Accepting it would leave this device behind for good, believing
                // itself up to date.
                return Err(Error::Transport(TransportError::Protocol(format!(
                    "the pull page after seq {seq} holds no commit, but its head claims seq {}",
                    page.head.0
                ))));
            }
            break;
        }
        let r = rebase::integrate_in(
            db,
            &c.cfg,
            &mut c.local,
            Incoming::Commits(&page.commits),
            None,
        )?;
        total.pulled += r.pulled;
        total.confirmed += r.confirmed;
        total.conflicts += r.conflicts;
        status::update(&c.path, |s| {
            s.progress = Some(json!({"phase": "pull", "seq": r.head.0, "target_seq": page.head.0}))
        });
        if r.head.0 >= page.head.0 {
            break;
        }
    }
    Ok(total)
}

fn count<D: Db>(db: &D, sql: &str) -> Result<i64, Error> {
    Ok(match db.query_value(sql, &[])? {
        Some(Value::Integer(n)) => n,
        _ => 0,
    })
}

/// Queued commits the witness has not certified yet.
fn unsent<D: Db>(db: &D) -> Result<i64, Error> {
    count(
        db,
        "SELECT count(*) FROM pdb_upload_queue WHERE dead IS NULL AND pushed_seq IS NULL",
    )
}

/// `pdb_push()`: sends the queue; pulls and rebases when the witness asks for it.
pub fn push_now<D: Db>(db: &D) -> Result<Summary, Error> {
    run(db, None, push_rounds)
}

/// [`push_now`] through `witness` instead of the stored target's HTTP witness.
pub fn push_now_with<D: Db>(db: &D, witness: &dyn Witness) -> Result<Summary, Error> {
    run(db, Some(witness), push_rounds)
}

fn push_rounds<D: Db>(db: &D, c: &mut Cycle<'_>, sum: &mut Summary) -> Result<(), Error> {
    for _ in 0..ROUNDS {
        let p = push(db, c)?;
        sum.add_push(&p);
        if !p.need_pull {
            break;
        }
        sum.add_pull(&pull(db, c)?);
    }
    Ok(())
}

/// `pdb_pull()`: applies what the group has that this device has not.
pub fn pull_now<D: Db>(db: &D) -> Result<Summary, Error> {
    run(db, None, pull_once)
}

/// [`pull_now`] through `witness` instead of the stored target's HTTP witness.
pub fn pull_now_with<D: Db>(db: &D, witness: &dyn Witness) -> Result<Summary, Error> {
    run(db, Some(witness), pull_once)
}

fn pull_once<D: Db>(db: &D, c: &mut Cycle<'_>, sum: &mut Summary) -> Result<(), Error> {
    sum.add_pull(&pull(db, c)?);
    Ok(())
}

/// `pdb_bootstrap()`: installs the witness's newest snapshot if it is ahead of this
/// device (pending local changes are rebased onto it), then pulls what came after.
pub fn bootstrap_now<D: Db>(db: &D) -> Result<Summary, Error> {
    run(db, None, bootstrap_then_pull)
}

/// [`bootstrap_now`] through `witness` instead of the stored target's HTTP witness.
pub fn bootstrap_now_with<D: Db>(db: &D, witness: &dyn Witness) -> Result<Summary, Error> {
    run(db, Some(witness), bootstrap_then_pull)
}

fn bootstrap_then_pull<D: Db>(db: &D, c: &mut Cycle<'_>, sum: &mut Summary) -> Result<(), Error> {
    let b = bootstrap::bootstrap(db, c, bootstrap::Reason::Asked);
    sum.add_pull(&Pull {
        bootstrapped: b?,
        ..Pull::default()
    });
    sum.add_pull(&pull(db, c)?);
    Ok(())
}

/// `pdb_open(...)`: stores the sync target; a database with nothing of the group yet
/// then installs the newest snapshot right away. That part is best effort (offline
/// is normal): its outcome shows in `pdb_status()`, and the next sync tries again.
pub fn open<D: Db>(db: &D, url: &str, group: &str, token: &str, key: &str) -> Result<(), Error> {
    open_via(db, url, group, token, key, None)
}

/// [`open`] with its first bootstrap through `witness`, whatever `url` says.
pub fn open_with<D: Db>(
    db: &D,
    url: &str,
    group: &str,
    token: &str,
    key: &str,
    witness: &dyn Witness,
) -> Result<(), Error> {
    open_via(db, url, group, token, key, Some(witness))
}

fn open_via<D: Db>(
    db: &D,
    url: &str,
    group: &str,
    token: &str,
    key: &str,
    witness: Option<&dyn Witness>,
) -> Result<(), Error> {
    config::open(db, url, group, token, key)?;
    if db.is_autocommit() && bootstrap::is_empty(db)? {
        let _ = run(db, witness, |db, c, sum| {
            let b = bootstrap::bootstrap(db, c, bootstrap::Reason::Asked)?;
            sum.bootstrapped = b;
            Ok(())
        });
    }
    Ok(())
}

/// `pdb_sync()`: push, pull, and again while rebased commits wait to be sent.
pub fn sync<D: Db>(db: &D) -> Result<Summary, Error> {
    run(db, None, sync_rounds)
}

/// [`sync`] through `witness` instead of the stored target's HTTP witness.
pub fn sync_with<D: Db>(db: &D, witness: &dyn Witness) -> Result<Summary, Error> {
    run(db, Some(witness), sync_rounds)
}

fn sync_rounds<D: Db>(db: &D, c: &mut Cycle<'_>, sum: &mut Summary) -> Result<(), Error> {
    for _ in 0..ROUNDS {
        let p = push(db, c)?;
        sum.add_push(&p);
        sum.add_pull(&pull(db, c)?);
        if unsent(db)? == 0 {
            break;
        }
    }
    Ok(())
}

/// Runs a sync step with the stored config, noting its outcome in the live status.
/// `witness` replaces the stored target's HTTP witness (the only place one is made).
fn run<D: Db>(
    db: &D,
    witness: Option<&dyn Witness>,
    f: impl FnOnce(&D, &mut Cycle<'_>, &mut Summary) -> Result<(), Error>,
) -> Result<Summary, Error> {
    let path = status::db_path(db)?;
    if !db.is_autocommit() {
        // What is sent cannot be taken back: a rollback of the application's
        // transaction would leave certified commits it believes undone.
        return Err(Error::Argument(
            "sync talks to the witness and commits what it pulls: call it outside a transaction"
                .into(),
        ));
    }
    let result = (|| {
        // The one read of the target, schema and tables this cycle starts from.
        let mut local = LocalView::default();
        if !local.has_schema(db)? {
            return Err(Error::NotOpen);
        }
        let cfg = config::read(db)?;
        let http;
        let witness: &dyn Witness = match witness {
            Some(w) => w,
            None => {
                http = remote(&cfg)?;
                &http
            }
        };
        let mut c = Cycle {
            cfg,
            witness,
            path: path.clone(),
            local,
        };
        check_group(db, &mut c)?;
        let mut sum = Summary::default();
        f(db, &mut c, &mut sum)?;
        let (seq, head) = config::head(db, &c.cfg.group)?;
        sum.head = (seq, hex(&head));
        Ok(sum)
    })();
    note(db, &path, result)
}

/// `pdb_status()` as JSON.
pub fn status_json<D: Db>(db: &D) -> Result<String, Error> {
    let path = status::db_path(db)?;
    let live = status::get(&path);
    let cfg = config::load(db).ok();
    // This process's own record when it synced; else what an earlier one left.
    let stored = |key: &str| -> Result<serde_json::Value, Error> {
        if !capture::has_schema(db)? {
            return Ok(serde_json::Value::Null);
        }
        Ok(match config::get(db, key)? {
            Some(Value::Integer(i)) if key == "online" => json!(i != 0),
            Some(Value::Integer(i)) => json!(i),
            Some(Value::Text(t)) => json!(String::from_utf8_lossy(&t)),
            _ => serde_json::Value::Null,
        })
    };
    let (online, last_error) = match live.online {
        Some(o) => (json!(o), json!(live.last_error)),
        None => (stored("online")?, stored("last_error")?),
    };
    let last_sync_at = match live.last_sync_at {
        Some(t) => json!(t),
        None => stored("last_sync_at")?,
    };
    let mut out = json!({
        "open": cfg.is_some(),
        "online": online,
        "last_error": last_error,
        "last_sync_at": last_sync_at,
        "worker": live.worker,
        "halted": live.halted,
        "progress": live.progress,
    });
    if !capture::has_schema(db)? {
        return Ok(out.to_string());
    }
    if let Some(cfg) = &cfg {
        let (seq, head) = config::head(db, &cfg.group)?;
        out["url"] = json!(cfg.url);
        out["group"] = json!(cfg.group);
        out["head"] = json!({"seq": seq, "head": hex(&head)});
        // The snapshot this device started from, if it did (its chain starts there).
        out["snapshot"] = match (config::get(db, "root_seq")?, config::get(db, "root_head")?) {
            (Some(Value::Integer(s)), Some(Value::Text(h))) => {
                json!({"seq": s, "head": String::from_utf8_lossy(&h)})
            }
            _ => serde_json::Value::Null,
        };
    }
    out["pending"] = json!(count(
        db,
        "SELECT count(*) FROM pdb_upload_queue WHERE dead IS NULL"
    )?);
    out["unsent"] = json!(unsent(db)?);
    out["uncommitted"] = json!(crate::queue::pending_changeset(db)?.is_some());
    out["conflicts_open"] = json!(count(
        db,
        "SELECT count(*) FROM pdb_conflicts WHERE status = 'open'"
    )?);
    let mut dead = Vec::new();
    let mut stmt = db.prepare(
        "SELECT id, dead, created_at FROM pdb_upload_queue WHERE dead IS NOT NULL ORDER BY id",
    )?;
    stmt.query::<Error>(&mut |r| {
        if let (ValueRef::Integer(id), ValueRef::Text(reason), ValueRef::Integer(at)) =
            (r[0], r[1], r[2])
        {
            dead.push(
                json!({"id": id, "reason": String::from_utf8_lossy(reason), "created_at": at}),
            );
        }
        Ok(())
    })?;
    out["dead"] = serde_json::Value::Array(dead);
    Ok(out.to_string())
}

/// A stored certificate, rebuilt from `pdb_commits`.
pub fn certificate<D: Db>(db: &D, seq: i64) -> Result<Option<Certificate>, Error> {
    let cfg = config::load(db)?;
    let mut stmt = db.prepare(
        "SELECT seq, prev, head, state, changeset_hash, idempotency_key, committed_at, signature \
         FROM pdb_commits WHERE seq = ?1",
    )?;
    stmt.bind(1, ValueRef::Integer(seq))?;
    let mut row: Option<Vec<Value>> = None;
    stmt.query::<Error>(&mut |r| {
        row = Some(r.iter().map(|v| ValueRef::to_owned(*v)).collect());
        Ok(())
    })?;
    let Some(r) = row else { return Ok(None) };
    let text = |i: usize| match &r[i] {
        Value::Text(t) => String::from_utf8_lossy(t).into_owned(),
        _ => String::new(),
    };
    let j = json!({
        "group": cfg.group,
        "seq": seq,
        "prev": text(1),
        "head": text(2),
        "state": text(3),
        "changeset_hash": text(4),
        "idempotency_key": text(5),
        "committed_at": match r[6] { Value::Integer(t) => t, _ => 0 },
        "witness_key": hex(&cfg.witness_key),
        "signature": text(7),
    });
    Certificate::from_json(&j)
        .map(Some)
        .map_err(|e| Error::Diverged(format!("pdb_commits row {seq} is corrupt: {e}")))
}

/// `pdb_verify()`: re-checks the stored chain (heads and signatures) and, when nothing
/// is pending, the tables' state digest against the head's certificate.
pub fn verify<D: Db>(db: &D) -> Result<String, Error> {
    let cfg = config::load(db)?;
    let (head_seq, head) = config::head(db, &cfg.group)?;
    let mut prev = genesis(&cfg.group);
    let mut last_state = None;
    let mut n: u64 = 0;
    // A device that started from a snapshot holds the chain from the snapshot's
    // certificate on; that certificate vouches for the head it was installed at.
    let mut first = 1;
    if let Some(Value::Integer(root)) = config::get(db, "root_seq")? {
        let root = root.max(0) as u64;
        let root_head = match config::get(db, "root_head")? {
            Some(Value::Text(t)) => parse_hash(&String::from_utf8_lossy(&t)),
            _ => None,
        };
        let c = certificate(db, root as i64)?.ok_or_else(|| {
            Error::Diverged(format!(
                "pdb_commits has no certificate for the snapshot's seq {root}"
            ))
        })?;
        if Some(c.head) != root_head {
            return Err(Error::Diverged(format!(
                "stored certificate {root} is not the head the snapshot was installed at"
            )));
        }
        c.verify_signature(&cfg.witness_key)
            .map_err(|e| Error::Diverged(format!("stored certificate {root}: {e}")))?;
        (prev, last_state, first, n) = (c.head, Some(c.state), root + 1, 1);
    }
    for seq in first..=head_seq {
        let c = certificate(db, seq as i64)?.ok_or_else(|| {
            Error::Diverged(format!("pdb_commits has no certificate for seq {seq}"))
        })?;
        let broken = |why: &str| Error::Diverged(format!("stored certificate {seq}: {why}"));
        if c.prev != prev {
            return Err(broken("does not follow the one before it"));
        }
        if next_head(&c.prev, c.seq, &c.changeset_hash) != c.head {
            return Err(broken("its head is not BLAKE3(prev, seq, changeset hash)"));
        }
        c.verify_signature(&cfg.witness_key)
            .map_err(|e| broken(&e.to_string()))?;
        prev = c.head;
        last_state = Some(c.state);
        n += 1;
    }
    if prev != head {
        return Err(Error::Diverged(format!(
            "the applied head {head_seq} is not the last stored certificate's"
        )));
    }
    let pending = count(
        db,
        "SELECT count(*) FROM pdb_upload_queue WHERE dead IS NULL",
    )? > 0
        || crate::queue::pending_changeset(db)?.is_some();
    let state = if pending {
        "skipped: local changes are pending"
    } else {
        let tables: Vec<_> = capture::tracked(db)?.into_iter().map(|t| t.info).collect();
        let digest = crate::history::state_of(db, &tables)?.digest();
        let expected = last_state.unwrap_or_else(|| crate::state::StateVector::new().digest());
        if digest != expected {
            return Err(Error::Diverged(format!(
                "the tracked tables' state digest {} is not the certified {} of head {head_seq}",
                hex(&digest),
                hex(&expected)
            )));
        }
        "ok"
    };
    Ok(json!({"ok": true, "commits": n, "head": {"seq": head_seq, "head": hex(&head)}, "state": state}).to_string())
}
