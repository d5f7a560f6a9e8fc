//! Integrating certified remote commits under pending local changes (DESIGN §6), in one
//! transaction per batch:
//!
//! 1. **Undo** every pending local step, newest first (the uncommitted edits, then the
//!    queued commits), keeping for each row a step touched its whole image before (B)
//!    and after (L) the step. The tables are then exactly at the applied head.
//! 2. **Apply** the remote commits in order, keeping the state vector current and
//!    checking it against every certificate. A commit carrying a queued commit's
//!    idempotency key is that commit, certified: it leaves the queue.
//! 3. **Redo** the remaining steps, oldest first. A row the remote commits left at B takes
//!    L; a row already at L needs nothing; any other row (R) is a conflict, settled by the
//!    table's strategy and recorded in `pdb_conflicts` whenever L does not survive.
//!    Queued commits are rewritten to what was redone, against the new head, keeping
//!    their idempotency keys; the uncommitted edits are redone with capture on, so they
//!    stay uncommitted.
//!
//! Capture is muted (`pdb_apply_guard`) for steps 1–3 except the redo of uncommitted
//! edits, so nothing from the group is ever recorded as a local change.

use std::collections::{BTreeMap, HashMap};

use crate::apply::{Applier, Groups, OnConflict};
use crate::capture::{self, Tracked};
use crate::cert::{hex, Certificate, Hash};
use crate::changeset::{self, Op, TableHeader};
use crate::db::{transaction, Db, Stmt};
use crate::rows::{
    key_bytes, key_columns, key_of, key_to_json, row_to_json, same_row, ChangesetBuilder, Row, Rows,
};
use crate::schema::{affinity, kept_as_is, quote, Affinity};
use crate::state::StateVector;
use crate::sync::config::{self, Config};
use crate::sync::cycle::LocalView;
use crate::sync::strategy::{self, Strategy};
use crate::transport::Pulled;
use crate::value::{decode_field, Value, ValueRef};
use crate::Error;

/// Changeset bytes in a page above which the capture triggers are dropped for its
/// transaction instead of muted.
const MUTE_ABOVE: usize = 64 << 10;

/// What one integration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integrated {
    /// Remote commits applied.
    pub pulled: usize,
    /// Of those, this device's own queued commits, now certified.
    pub confirmed: usize,
    /// Conflicts recorded in `pdb_conflicts`.
    pub conflicts: usize,
    /// The applied head afterwards.
    pub head: (u64, Hash),
}

/// A queued local commit, as read for a rebase.
struct Queued {
    id: i64,
    changeset: Vec<u8>,
    key: String,
    pushed_seq: Option<u64>,
}

/// One undone local step: a queued commit (`queued` set) or the uncommitted edits.
struct Step {
    queued: Option<Queued>,
    rows: Vec<StepRow>,
}

/// A row a changeset names: its table, its key as written, and its kinds of change.
struct Touched {
    table: usize,
    key: Vec<Value>,
    ops: u8,
    /// How many changes name it (under this spelling of its key).
    changes: u32,
    /// The last change's new record: a value per column, `None` where undefined.
    new: Vec<Option<Value>>,
}

const INSERTS: u8 = 1;
const UPDATES: u8 = 2;
const DELETES: u8 = 4;

/// A row a step touched: its table (index into the tracked tables), key, B and L.
struct StepRow {
    table: usize,
    key: Vec<Value>,
    base: Option<Row>,
    local: Option<Row>,
}

/// Applies `commits` (verified here first) over the pending local changes, rebasing
/// them. `dead`, if given, is a queued commit the witness refused for good: it is undone
/// and not redone, and its rows go to `pdb_conflicts` with the reason.
pub fn integrate<D: Db>(
    db: &D,
    cfg: &Config,
    commits: &[Pulled],
    dead: Option<(i64, &str)>,
) -> Result<Integrated, Error> {
    integrate_incoming(db, cfg, Incoming::Commits(commits), dead)
}

/// What [`integrate_incoming`] lays under the pending local changes.
pub enum Incoming<'a> {
    /// Certified commits after the applied head, in order (verified as a chain first).
    Commits(&'a [Pulled]),
    /// The tables of a verified snapshot, attached as schema [`SNAPSHOT_SCHEMA`]: every
    /// tracked table's rows are replaced by its rows, at `cert`'s head.
    Snapshot {
        /// The certificate of the snapshot's seq (its head and state).
        cert: &'a Certificate,
        /// The state vector of the snapshot's tables, computed from their rows.
        state: StateVector,
    },
}

/// The schema name a snapshot being installed is attached as.
pub const SNAPSHOT_SCHEMA: &str = "pdb_snapshot";

/// [`integrate`] for commits or a snapshot.
pub fn integrate_incoming<D: Db>(
    db: &D,
    cfg: &Config,
    incoming: Incoming<'_>,
    dead: Option<(i64, &str)>,
) -> Result<Integrated, Error> {
    integrate_in(db, cfg, &mut LocalView::default(), incoming, dead)
}

/// [`integrate_incoming`] with a sync cycle's view of the tracked tables and
/// strategies, read in its transaction if the schema changed since the cycle read them.
pub(crate) fn integrate_in<D: Db>(
    db: &D,
    cfg: &Config,
    view: &mut LocalView,
    incoming: Incoming<'_>,
    dead: Option<(i64, &str)>,
) -> Result<Integrated, Error> {
    let trusted = config::head(db, &cfg.group)?;
    if let Incoming::Commits(commits) = &incoming {
        crate::history::verify_chain(
            &cfg.witness_key,
            &cfg.group,
            trusted,
            commits.iter().map(|p| (&p.cert, p.changeset.as_slice())),
        )?;
    }
    let result = transaction(db, "pdb_pull", || {
        let tables = view.tables(db)?;
        let strategies = view.strategies(db)?;
        let mut rebase = Rebase {
            db,
            tables: &tables,
            by_name: tables
                .iter()
                .enumerate()
                .map(|(i, t)| (t.info.name.clone(), i))
                .collect(),
            rows: HashMap::new(),
            affinities: tables
                .iter()
                .map(|t| {
                    t.info
                        .columns
                        .iter()
                        .map(|c| affinity(&c.decl_type))
                        .collect()
                })
                .collect(),
            applier: Applier::new(db)?,
            strategies,
            conflicts: 0,
        };
        let queue = queued(db)?;
        let uncommitted = capture::pending(db, &tables)?;
        db.execute_batch("INSERT OR REPLACE INTO pdb_apply_guard(active) VALUES (1)")?;
        // Emptied before the undo, so the apply does not carry saved images forward: the
        // redo captures the uncommitted edits afresh.
        capture::clear(db, &tables)?;
        // A large page is applied without the capture triggers at all (back before the
        // uncommitted edits are redone, and before the commit): they are muted anyway,
        // but cost a compile per statement and a WHEN per row. A small one keeps them,
        // as re-creating them costs more than it saves.
        let mut muted = match &incoming {
            Incoming::Commits(commits) => {
                commits.iter().map(|p| p.changeset.len()).sum::<usize>() > MUTE_ABOVE
            }
            // Without triggers SQLite copies a snapshot's records as they are.
            Incoming::Snapshot { .. } => true,
        };
        if muted {
            capture::mute(db, &tables)?;
        }

        let mut steps: Vec<Step> = Vec::new();
        if !uncommitted.is_empty() {
            let rows = rebase.undo(&uncommitted, "the uncommitted changes")?;
            steps.push(Step { queued: None, rows });
        }
        for q in queue.into_iter().rev() {
            let rows = rebase.undo(&q.changeset, &format!("local commit {}", q.id))?;
            steps.push(Step {
                queued: Some(q),
                rows,
            });
        }
        steps.reverse();

        let (mut seq, mut head) = trusted;
        let mut confirmed = 0;
        let commits = match incoming {
            Incoming::Commits(commits) => commits,
            Incoming::Snapshot { cert, state } => {
                rebase.replace_tables()?;
                // A queued commit certified at or before the snapshot is in it.
                let mut i = 0;
                while i < steps.len() {
                    match &steps[i].queued {
                        Some(q) if q.pushed_seq.is_some_and(|s| s <= cert.seq) => {
                            db.execute(
                                "DELETE FROM pdb_upload_queue WHERE id = ?1",
                                &[ValueRef::Integer(q.id)],
                            )?;
                            steps.remove(i);
                            confirmed += 1;
                        }
                        _ => i += 1,
                    }
                }
                // The history before the snapshot is no longer this device's to check:
                // its chain starts again at the snapshot's certificate.
                db.execute_batch("DELETE FROM pdb_commits")?;
                record_commit(db, cert, None)?;
                (seq, head) = (cert.seq, cert.head);
                config::set_head(db, seq, &head, &state)?;
                &[]
            }
        };
        let mut state = config::state(db)?;
        for p in commits {
            rebase.apply_remote(p, &mut state)?;
            let mine = steps.iter().position(|s| {
                s.queued
                    .as_ref()
                    .is_some_and(|q| q.key == p.cert.idempotency_key)
            });
            let local_id = mine.map(|i| {
                let q = steps.remove(i).queued.expect("found by its queue row");
                q.id
            });
            if let Some(id) = local_id {
                db.execute(
                    "DELETE FROM pdb_upload_queue WHERE id = ?1",
                    &[ValueRef::Integer(id)],
                )?;
                confirmed += 1;
            }
            record_commit(db, &p.cert, local_id)?;
            (seq, head) = (p.cert.seq, p.cert.head);
        }

        for step in &mut steps {
            let is_dead = matches!((&step.queued, dead), (Some(q), Some((id, _))) if q.id == id);
            if is_dead {
                let reason = dead.map(|d| d.1).unwrap_or_default();
                rebase.reject(step, reason, seq)?;
                continue;
            }
            if step.queued.is_none() {
                // Uncommitted edits are redone as the application's own writes.
                if muted {
                    capture::unmute(db, &tables)?;
                    muted = false;
                }
                db.execute_batch("DELETE FROM pdb_apply_guard")?;
            }
            let changeset = rebase.redo(step, seq)?;
            if let Some(q) = &step.queued {
                requeue(db, q, &changeset, (seq, &head))?;
            }
        }
        if muted {
            capture::unmute(db, &tables)?;
        }
        db.execute_batch("DELETE FROM pdb_apply_guard")?;
        config::set_head(db, seq, &head, &state)?;
        // Muting and unmuting the triggers changed the schema, not the tables.
        view.keep(db)?;
        Ok(Integrated {
            pulled: commits.len(),
            confirmed,
            conflicts: rebase.conflicts,
            head: (seq, head),
        })
    });
    if result.is_err() {
        view.forget();
    }
    result
}

/// The local write B → L laid over the row as it is now: the columns the write changed
/// take L's values, the others keep the current ones. Equal to L except where a value
/// compares equal without being the same bits (0.0 and -0.0), which must not change.
fn overlay(base: Option<&Row>, local: Option<&Row>, current: Option<&Row>) -> Option<Row> {
    let (Some(l), Some(c)) = (local, current) else {
        return local.cloned();
    };
    Some(
        (0..l.len())
            .map(|i| match base {
                Some(b) if b[i].as_ref().same(l[i].as_ref()) => c[i].clone(),
                _ => l[i].clone(),
            })
            .collect(),
    )
}

/// Whether the local write B → L survives in `kept`: the row is there if and only if L
/// has it, and every column the write changed (all of them for an insert, against an
/// all-NULL B as column-merge reads it) has L's value. Public so that the fuzz targets
/// check a rebase against this very rule, not a copy that could drift from it.
pub fn survived(base: Option<&Row>, local: Option<&Row>, kept: Option<&Row>) -> bool {
    match (local, kept) {
        (None, None) => true,
        (Some(l), Some(k)) => (0..l.len()).all(|i| {
            let changed = base.map_or(!matches!(l[i], Value::Null), |b| {
                !b[i].as_ref().same(l[i].as_ref())
            });
            !changed || k[i].as_ref().same(l[i].as_ref())
        }),
        _ => false,
    }
}

/// The live queued commits, oldest first.
fn queued<D: Db>(db: &D) -> Result<Vec<Queued>, Error> {
    let mut out = Vec::new();
    let mut stmt = db.prepare(
        "SELECT id, changeset, idempotency_key, pushed_seq FROM pdb_upload_queue \
         WHERE dead IS NULL ORDER BY id",
    )?;
    stmt.query::<Error>(&mut |row| {
        if let (ValueRef::Integer(id), ValueRef::Blob(cs), ValueRef::Text(key)) =
            (row[0], row[1], row[2])
        {
            out.push(Queued {
                id,
                changeset: cs.to_vec(),
                key: String::from_utf8_lossy(key).into_owned(),
                pushed_seq: match row[3] {
                    ValueRef::Integer(s) if s > 0 => Some(s as u64),
                    _ => None,
                },
            });
        }
        Ok(())
    })?;
    Ok(out)
}

fn record_commit<D: Db>(db: &D, c: &Certificate, local_id: Option<i64>) -> Result<(), Error> {
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD.encode(c.signature);
    db.execute(
        "INSERT INTO pdb_commits(seq, prev, head, state, changeset_hash, idempotency_key, committed_at, signature, local_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        &[
            ValueRef::Integer(c.seq as i64),
            ValueRef::Text(hex(&c.prev).as_bytes()),
            ValueRef::Text(hex(&c.head).as_bytes()),
            ValueRef::Text(hex(&c.state).as_bytes()),
            ValueRef::Text(hex(&c.changeset_hash).as_bytes()),
            ValueRef::Text(c.idempotency_key.as_bytes()),
            ValueRef::Integer(c.committed_at),
            ValueRef::Text(sig.as_bytes()),
            local_id.map_or(ValueRef::Null, ValueRef::Integer),
        ],
    )?;
    Ok(())
}

/// Rewrites a queued commit to its rebased changeset (or drops it when nothing of it
/// is left to send). Its idempotency key stays: if the original was certified after
/// all, the witness answers `idempotency_conflict` instead of applying it twice.
fn requeue<D: Db>(db: &D, q: &Queued, changeset: &[u8], head: (u64, &Hash)) -> Result<(), Error> {
    if q.pushed_seq.is_some() {
        return Ok(());
    }
    if changeset.is_empty() {
        db.execute(
            "DELETE FROM pdb_upload_queue WHERE id = ?1",
            &[ValueRef::Integer(q.id)],
        )?;
        return Ok(());
    }
    let hash = hex(blake3::hash(changeset).as_bytes());
    db.execute(
        "UPDATE pdb_upload_queue SET changeset = ?2, hash = ?3, base_seq = ?4, base_head = ?5 WHERE id = ?1",
        &[
            ValueRef::Integer(q.id),
            ValueRef::Blob(changeset),
            ValueRef::Text(hash.as_bytes()),
            ValueRef::Integer(head.0 as i64),
            ValueRef::Text(hex(head.1).as_bytes()),
        ],
    )?;
    Ok(())
}

/// The state of one integration.
struct Rebase<'d, 't, D: Db + 'd> {
    db: &'d D,
    tables: &'t [Tracked],
    by_name: HashMap<String, usize>,
    rows: HashMap<usize, Rows<'d, D>>,
    /// Each tracked table's column affinities.
    affinities: Vec<Vec<Affinity>>,
    applier: Applier<'d, D>,
    strategies: std::rc::Rc<HashMap<String, Strategy>>,
    conflicts: usize,
}

impl<'d, D: Db + 'd> Rebase<'d, '_, D> {
    fn rows(&mut self, table: usize) -> &mut Rows<'d, D> {
        let (db, tables) = (self.db, self.tables);
        self.rows
            .entry(table)
            .or_insert_with(|| Rows::new(db, &tables[table].info))
    }

    /// The tracked table a changeset header names, checked to have its shape.
    fn table(&self, header: &TableHeader<'_>, what: &str) -> Result<usize, Error> {
        let Some(&i) = self.by_name.get(header.name) else {
            return Err(Error::Schema(format!(
                "{what} changes table \"{}\", which this device does not track",
                header.name
            )));
        };
        let info = &self.tables[i].info;
        if header.pk != info.pk_flags().as_slice() {
            return Err(Error::Schema(format!(
                "{what} has {} columns with key flags {:?} for table \"{}\", which here has {} with {:?}",
                header.n_col(),
                header.pk,
                info.name,
                info.columns.len(),
                info.pk_flags()
            )));
        }
        Ok(i)
    }

    /// The distinct rows a changeset names, with what it does to each.
    fn touched(&self, groups: &Groups<'_>, what: &str) -> Result<Vec<Touched>, Error> {
        let mut out: BTreeMap<(usize, Vec<u8>), Touched> = BTreeMap::new();
        for (header, changes) in groups {
            let t = self.table(header, what)?;
            let cols = key_columns(&self.tables[t].info);
            for c in changes {
                let key: Option<Vec<Value>> = cols
                    .iter()
                    .map(|&i| decode_field(c.key_record()[i]).map(ValueRef::to_owned))
                    .collect();
                let key = key.ok_or_else(|| {
                    Error::Schema(format!(
                        "{what} has a change to \"{}\" without its key",
                        header.name
                    ))
                })?;
                let op = match c.op {
                    Op::Insert => INSERTS,
                    Op::Update => UPDATES,
                    Op::Delete => DELETES,
                };
                let entry = out.entry((t, key_bytes(&key))).or_insert(Touched {
                    table: t,
                    key,
                    ops: 0,
                    changes: 0,
                    new: Vec::new(),
                });
                entry.ops |= op;
                entry.changes += 1;
                entry.new = c
                    .new
                    .iter()
                    .map(|f| decode_field(f).map(ValueRef::to_owned))
                    .collect();
            }
        }
        Ok(out.into_values().collect())
    }

    /// Undoes one local step; returns its rows with their images before and after it.
    fn undo(&mut self, changeset: &[u8], what: &str) -> Result<Vec<StepRow>, Error> {
        let touched = self.touched(&changeset::parse(changeset)?, what)?;
        let mut rows = Vec::with_capacity(touched.len());
        for Touched { table, key, .. } in touched {
            let local = self.rows(table).get(&key)?;
            rows.push(StepRow {
                table,
                key,
                base: None,
                local,
            });
        }
        let inverse = changeset::invert(changeset)?;
        let groups = changeset::parse(&inverse)?;
        self.applier.apply(&groups, OnConflict::Abort).map_err(|e| {
            Error::Diverged(format!(
                "{what} cannot be taken back to rebase it (the tables no longer hold what it wrote): {e}"
            ))
        })?;
        for r in &mut rows {
            r.base = self.rows(r.table).get(&r.key)?;
            // Name the row by its key as stored, however the changeset spelled it.
            if let Some(row) = r.local.as_ref().or(r.base.as_ref()) {
                r.key = key_of(&self.tables[r.table].info, row);
            }
        }
        Ok(rows)
    }

    /// Applies one verified remote commit to the tables (which are at its base) and
    /// moves the state vector by the rows it touched, as SQLite stored them.
    /// Replaces every tracked table's rows with those of the attached snapshot.
    fn replace_tables(&mut self) -> Result<(), Error> {
        for t in self.tables {
            let name = quote(&t.info.name);
            // Same columns, types and indexes, no triggers: SQLite's transfer
            // optimisation copies the records and index entries without decoding them.
            self.db.execute_batch(&format!(
                "DELETE FROM main.{name}; INSERT INTO main.{name} SELECT * FROM {}.{name};",
                quote(SNAPSHOT_SCHEMA)
            ))?;
        }
        Ok(())
    }

    fn apply_remote(&mut self, p: &Pulled, state: &mut StateVector) -> Result<(), Error> {
        let seq = p.cert.seq;
        let what = format!("commit {seq}");
        let groups = changeset::parse(&p.changeset)?;
        let touched = self.touched(&groups, &what)?;
        // A row only inserted did not exist before (the apply aborts otherwise), and a
        // row only deleted does not exist after: those reads are skipped.
        let mut before: BTreeMap<(usize, Vec<u8>), Row> = BTreeMap::new();
        let mut before_of: Vec<Option<Vec<u8>>> = vec![None; touched.len()];
        for (i, t) in touched.iter().enumerate() {
            if t.ops == INSERTS {
                continue;
            }
            if let Some(row) = self.rows(t.table).get(&t.key)? {
                let stored = key_bytes(&key_of(&self.tables[t.table].info, &row));
                before_of[i] = Some(stored.clone());
                before.insert((t.table, stored), row);
            }
        }
        self.applier
            .apply(&groups, OnConflict::Abort)
            .map_err(|e| {
                Error::Diverged(format!(
                    "commit {seq} does not apply to this device's copy of head {}: {e}",
                    seq - 1
                ))
            })?;
        // How many touched rows each stored key was read for: counted once here rather
        // than by a scan per row, which made a large commit quadratic.
        let mut readers: HashMap<&[u8], usize> = HashMap::new();
        for k in before_of.iter().flatten() {
            *readers.entry(k.as_slice()).or_default() += 1;
        }
        // Tables where every change is an INSERT: no other change can reach one of their
        // rows under another spelling of its key.
        let mut only_inserts: HashMap<usize, bool> = HashMap::new();
        for t in &touched {
            *only_inserts.entry(t.table).or_insert(true) &= t.ops == INSERTS;
        }
        let mut after: BTreeMap<(usize, Vec<u8>), Row> = BTreeMap::new();
        for (i, t) in touched.iter().enumerate() {
            if t.ops == DELETES {
                continue;
            }
            // The row as stored, known without reading it when the change wrote every
            // value as its column keeps it; otherwise read back.
            let info = &self.tables[t.table].info;
            let affinities = &self.affinities[t.table];
            let kept = |c: usize, v: &Option<Value>| match v {
                None => true,
                Some(v) => kept_as_is(affinities[c], v),
            };
            let known: Option<Row> = if t.changes != 1 || t.new.len() != info.columns.len() {
                None
            } else if t.ops == INSERTS && only_inserts[&t.table] {
                t.new
                    .iter()
                    .enumerate()
                    .map(|(c, v)| v.clone().filter(|v| kept_as_is(affinities[c], v)))
                    .collect()
            } else if t.ops == UPDATES && t.new.iter().enumerate().all(|(c, v)| kept(c, v)) {
                let unique = before_of[i].as_ref().filter(|k| readers[k.as_slice()] == 1);
                unique
                    .and_then(|k| before.get(&(t.table, k.clone())))
                    .map(|old| {
                        old.iter()
                            .zip(&t.new)
                            .map(|(o, n)| n.clone().unwrap_or_else(|| o.clone()))
                            .collect()
                    })
            } else {
                None
            };
            let row = match known {
                Some(row) => Some(row),
                None => self.rows(t.table).get(&t.key)?,
            };
            if let Some(row) = row {
                let stored = key_bytes(&key_of(&self.tables[t.table].info, &row));
                after.insert((t.table, stored), row);
            }
        }
        for ((t, _), row) in &before {
            let vals: Vec<ValueRef<'_>> = row.iter().map(Value::as_ref).collect();
            state.remove_row(&self.tables[*t].info.name, &vals);
        }
        for ((t, _), row) in &after {
            let vals: Vec<ValueRef<'_>> = row.iter().map(Value::as_ref).collect();
            state.add_row(&self.tables[*t].info.name, &vals);
        }
        if state.digest() != p.cert.state {
            return Err(Error::Diverged(format!(
                "after commit {seq} this device's tables do not have the state the witness certified \
                 ({} here, {} certified); nothing was applied",
                hex(&state.digest()),
                hex(&p.cert.state)
            )));
        }
        Ok(())
    }

    /// Redoes one step over the new head; returns the changeset of what it wrote.
    fn redo(&mut self, step: &Step, head_seq: u64) -> Result<Vec<u8>, Error> {
        let mut out = ChangesetBuilder::new();
        // A commit the witness already certified is redone as written: its own
        // certificate, still to be pulled, will put it in its place.
        let certified = step.queued.as_ref().is_some_and(|q| q.pushed_seq.is_some());
        for r in &step.rows {
            let current = self.rows(r.table).get(&r.key)?;
            let (keep, conflict) = if same_row(current.as_ref(), r.local.as_ref()) {
                // Already done: nothing to write (and L's spelling of a value equal to
                // the current one, say 0.0 for -0.0, must not replace it).
                (current.clone(), None)
            } else if certified || same_row(current.as_ref(), r.base.as_ref()) {
                (
                    overlay(r.base.as_ref(), r.local.as_ref(), current.as_ref()),
                    None,
                )
            } else {
                let info = &self.tables[r.table].info;
                let s = self
                    .strategies
                    .get(&info.name)
                    .cloned()
                    .unwrap_or(strategy::DEFAULT);
                let d = strategy::decide(
                    self.db,
                    &s,
                    info,
                    &r.key,
                    r.base.as_ref(),
                    r.local.as_ref(),
                    current.as_ref(),
                )?;
                (d.keep, Some((s, d.open)))
            };
            let mut kept = keep;
            let mut refused = None;
            if !same_row(current.as_ref(), kept.as_ref()) {
                let sp = "pdb_redo_row";
                self.db.execute_batch(&format!("SAVEPOINT {sp}"))?;
                match self
                    .rows(r.table)
                    .put(&r.key, current.as_ref(), kept.as_ref())
                {
                    Ok(()) => self.db.execute_batch(&format!("RELEASE {sp}"))?,
                    // A constraint the new head makes fail (a UNIQUE value taken, ...):
                    // the group's row stays and the local write is recorded.
                    Err(Error::Db(e)) if e.primary() == crate::db::SQLITE_CONSTRAINT => {
                        self.db
                            .execute_batch(&format!("ROLLBACK TO {sp}; RELEASE {sp}"))?;
                        refused = Some(e.message);
                        kept = current.clone();
                    }
                    Err(e) => return Err(e),
                }
            }
            out.add(
                &self.tables[r.table].info,
                &r.key,
                current.as_ref(),
                kept.as_ref(),
            );
            let survived = survived(r.base.as_ref(), r.local.as_ref(), kept.as_ref());
            if let Some(reason) = refused {
                self.record(
                    step,
                    r,
                    current.as_ref(),
                    kept.as_ref(),
                    "constraint",
                    "rejected",
                    Some(&reason),
                    head_seq,
                )?;
            } else if let Some((s, open)) = conflict {
                if open || !survived {
                    let status = if open { "open" } else { "resolved" };
                    self.record(
                        step,
                        r,
                        current.as_ref(),
                        kept.as_ref(),
                        s.name(),
                        status,
                        None,
                        head_seq,
                    )?;
                }
            }
        }
        Ok(out.finish())
    }

    /// Records every row of a refused commit as a rejected local write, leaving the rows
    /// as the group has them.
    fn reject(&mut self, step: &Step, reason: &str, head_seq: u64) -> Result<(), Error> {
        for r in &step.rows {
            let current = self.rows(r.table).get(&r.key)?;
            self.record(
                step,
                r,
                current.as_ref(),
                current.as_ref(),
                "rejected",
                "rejected",
                Some(reason),
                head_seq,
            )?;
        }
        if let Some(q) = &step.queued {
            self.db.execute(
                "UPDATE pdb_upload_queue SET dead = ?2 WHERE id = ?1",
                &[ValueRef::Integer(q.id), ValueRef::Text(reason.as_bytes())],
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        step: &Step,
        r: &StepRow,
        remote: Option<&Row>,
        outcome: Option<&Row>,
        strategy: &str,
        status: &str,
        reason: Option<&str>,
        head_seq: u64,
    ) -> Result<(), Error> {
        let info = &self.tables[r.table].info;
        let json = |row: Option<&Row>| row.map(|row| row_to_json(info, Some(row)).to_string());
        let (base, local, remote, outcome) = (
            json(r.base.as_ref()),
            json(r.local.as_ref()),
            json(remote),
            json(outcome),
        );
        let pk = key_to_json(&r.key).to_string();
        self.db.execute(
            "INSERT INTO pdb_conflicts(table_name, pk, base, local, remote, strategy, outcome, status, reason, \
             local_id, head_seq, created_at, resolved_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, CASE WHEN ?8 = 'resolved' THEN ?12 END)",
            &[
                ValueRef::Text(info.name.as_bytes()),
                ValueRef::Text(pk.as_bytes()),
                ValueRef::text_or_null(base.as_deref()),
                ValueRef::text_or_null(local.as_deref()),
                ValueRef::text_or_null(remote.as_deref()),
                ValueRef::Text(strategy.as_bytes()),
                ValueRef::text_or_null(outcome.as_deref()),
                ValueRef::Text(status.as_bytes()),
                ValueRef::text_or_null(reason),
                step.queued.as_ref().map_or(ValueRef::Null, |q| ValueRef::Integer(q.id)),
                ValueRef::Integer(head_seq as i64),
                ValueRef::Integer(capture::now_ms()),
            ],
        )?;
        self.conflicts += 1;
        Ok(())
    }
}

/// The rules the `pulled_history` fuzz target judges a rebase by, and its finding
/// (`fuzz/regressions/pulled_history/redo-overwrites-negative-zero`), on in-memory rows
/// and devices; `tests/tests/sync.rs` has the strategies through a real witness.
#[cfg(test)]
mod tests {
    use super::*;

    fn real(r: f64) -> Value {
        Value::Real(r)
    }

    fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }

    /// The bits of a row's values: `same` takes -0.0 for 0.0, this does not.
    fn bits(row: Option<&Row>) -> Option<Vec<(u8, Vec<u8>)>> {
        row.map(|r| {
            r.iter()
                .map(|v| {
                    let mut enc = Vec::new();
                    v.as_ref().encode(&mut enc);
                    (enc[0], enc[1..].to_vec())
                })
                .collect()
        })
    }

    /// The finding's rows: B = (1, 'one', 0.0), L = (1, 'uno', 0.0) (the local write
    /// changed `a`), R = (1, 'one', -0.0) (the remote changed `b`'s bits only). Redo
    /// wrote L whole, turning -0.0 back into 0.0 unrecorded; the overlay keeps R's `b`.
    #[test]
    fn overlay_keeps_the_current_bits_of_columns_the_local_write_left_alone() {
        let b = vec![Value::Integer(1), text("one"), real(0.0)];
        let l = vec![Value::Integer(1), text("uno"), real(0.0)];
        let r = vec![Value::Integer(1), text("one"), real(-0.0)];
        let want = vec![Value::Integer(1), text("uno"), real(-0.0)];
        let got = overlay(Some(&b), Some(&l), Some(&r));
        assert_eq!(bits(got.as_ref()), bits(Some(&want)));
        // An insert (no B) or a row now absent: L as it is; a delete: nothing.
        assert_eq!(
            bits(overlay(None, Some(&l), Some(&r)).as_ref()),
            bits(Some(&l))
        );
        assert_eq!(
            bits(overlay(Some(&b), Some(&l), None).as_ref()),
            bits(Some(&l))
        );
        assert_eq!(overlay(Some(&b), None, Some(&r)), None);
    }

    /// `survived` as the fuzz targets use it: the row exists iff L has it, and every
    /// column the write changed (against an all-NULL B for an insert) has L's value.
    #[test]
    fn survived_asks_only_for_the_columns_the_local_write_changed() {
        let row = |a: &str, b: Value| vec![Value::Integer(1), text(a), b];
        let (b, l) = (row("one", real(0.0)), row("uno", real(0.0)));
        // The change to `a` kept, `b` moved by the remote (even to other bits): survived.
        assert!(survived(Some(&b), Some(&l), Some(&row("uno", real(-0.0)))));
        assert!(survived(Some(&b), Some(&l), Some(&row("uno", Value::Null))));
        // `a` lost, or the row gone.
        assert!(!survived(Some(&b), Some(&l), Some(&row("one", real(0.0)))));
        assert!(!survived(Some(&b), Some(&l), None));
        // A delete survives exactly when the row is gone.
        assert!(survived(Some(&b), None, None));
        assert!(!survived(Some(&b), None, Some(&b)));
        // An insert changed every non-NULL column: here `a` and `b`, not a NULL one.
        let ins = row("new", real(2.5));
        assert!(!survived(None, Some(&ins), Some(&row("new", real(3.0)))));
        assert!(survived(
            None,
            Some(&row("new", Value::Null)),
            Some(&row("new", real(3.0)))
        ));
        // Storage class counts: INTEGER 2 is not REAL 2.0.
        let l2 = row("one", real(2.0));
        assert!(!survived(
            Some(&b),
            Some(&l2),
            Some(&row("one", Value::Integer(2)))
        ));
    }

    #[cfg(feature = "rusqlite")]
    mod device {
        use super::super::*;
        use crate::apply::apply;
        use crate::cert::{genesis, next_head};
        use crate::queue;
        use ed25519_dalek::SigningKey;
        use rusqlite::Connection;

        const GROUP: &str = "g";

        /// A device and the witness's copy of the group (a plain database the commits
        /// are applied to, which gives each certificate its state).
        struct Device {
            db: Connection,
            cfg: Config,
            key: SigningKey,
            witness: Connection,
            head: (u64, Hash),
        }

        impl Device {
            /// Tables `schema`, tracked, with `rows` certified as the device's commit 1.
            fn new(schema: &str, tables: &[&str], rows: &str) -> Device {
                let key = SigningKey::from_bytes(&[7; 32]);
                let db = Connection::open_in_memory().unwrap();
                db.execute_batch(schema).unwrap();
                for t in tables {
                    capture::track(&db, t).unwrap();
                }
                let pin = hex(&key.verifying_key().to_bytes());
                config::open(&db, "http://127.0.0.1:9", GROUP, "token", &pin).unwrap();
                let cfg = config::load(&db).unwrap();
                let witness = Connection::open_in_memory().unwrap();
                witness.execute_batch(schema).unwrap();
                let mut dev = Device {
                    db,
                    cfg,
                    key,
                    witness,
                    head: (0, genesis(GROUP)),
                };
                dev.db.execute_batch(rows).unwrap();
                let (changeset, idem) = dev.commit();
                let r = dev.certify(changeset, &idem).unwrap();
                assert_eq!((r.pulled, r.confirmed), (1, 1));
                dev
            }

            /// Closes the pending changes into a queued commit: its changeset and key.
            fn commit(&self) -> (Vec<u8>, String) {
                let id = queue::commit(&self.db, None).unwrap().unwrap();
                self.queued(id)
            }

            fn queued(&self, id: i64) -> (Vec<u8>, String) {
                self.db
                    .query_row(
                        "SELECT changeset, idempotency_key FROM pdb_upload_queue WHERE id = ?1",
                        [id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap()
            }

            /// The witness certifies `changeset` as the next commit; the device pulls it.
            fn certify(&mut self, changeset: Vec<u8>, idem: &str) -> Result<Integrated, Error> {
                apply(&self.witness, &changeset, OnConflict::Abort).unwrap();
                let infos: Vec<_> = capture::tracked(&self.db)
                    .unwrap()
                    .into_iter()
                    .map(|t| t.info)
                    .collect();
                let state = crate::history::state_of(&self.witness, &infos)
                    .unwrap()
                    .digest();
                let (seq, prev) = (self.head.0 + 1, self.head.1);
                let hash = *blake3::hash(&changeset).as_bytes();
                let head = next_head(&prev, seq, &hash);
                let cert =
                    Certificate::sign(&self.key, GROUP, seq, prev, head, state, hash, idem, 0);
                self.head = (seq, head);
                integrate(&self.db, &self.cfg, &[Pulled { cert, changeset }], None)
            }

            fn b_of_t1(&self) -> f64 {
                self.db
                    .query_row("SELECT b FROM t WHERE id = 1", [], |r| r.get(0))
                    .unwrap()
            }
        }

        /// `regressions/pulled_history/redo-overwrites-negative-zero` (fixed in
        /// 7713003): a remote commit turns `t` 1's `b` from 0.0 into -0.0 under a queued
        /// local commit that changed only its `a`. Redo wrote L whole and `b` became 0.0
        /// again, recorded nowhere; once the witness certified the rebased commit, the
        /// device's state no longer matched and every later pull was refused.
        #[test]
        fn a_remote_negative_zero_under_a_local_edit_of_another_column_stays() {
            let mut dev = Device::new(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT UNIQUE, b);",
                &["t"],
                "INSERT INTO t VALUES (1, 'one', 0.0);",
            );
            dev.db
                .execute_batch("UPDATE t SET a = 'uno' WHERE id = 1")
                .unwrap();
            let (_, idem) = dev.commit();
            // T t | UPDATE old (1, -, 0.0) new (-, -, -0.0)
            let mut remote = vec![b'T', 3, 1, 0, 0, b't', 0, 23, 0];
            remote.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
            remote.extend_from_slice(&[0, 0, 2, 0x80, 0, 0, 0, 0, 0, 0, 0]);
            let r = dev.certify(remote, "someone else").unwrap();
            assert_eq!((r.pulled, r.confirmed, r.conflicts), (1, 0, 0));
            let a: String = dev
                .db
                .query_row("SELECT a FROM t WHERE id = 1", [], |r| r.get(0))
                .unwrap();
            assert_eq!(a, "uno");
            assert_eq!(dev.b_of_t1().to_bits(), (-0.0f64).to_bits(), "b is -0.0");
            // The rebased commit still changes `a` only: UPDATE old (1, 'one', -) new (-, 'uno', -).
            let id: i64 = dev
                .db
                .query_row("SELECT id FROM pdb_upload_queue", [], |r| r.get(0))
                .unwrap();
            let (rebased, key) = dev.queued(id);
            assert_eq!(key, idem);
            let mut want = vec![b'T', 3, 1, 0, 0, b't', 0, 23, 0];
            want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, b'o', b'n', b'e', 0]);
            want.extend_from_slice(&[0, 3, 3, b'u', b'n', b'o', 0]);
            assert_eq!(rebased, want);
            // The witness certifies the rebased commit; the device's state matches it.
            let r = dev.certify(rebased, &idem).unwrap();
            assert_eq!((r.pulled, r.confirmed, r.conflicts), (1, 1, 0));
            assert_eq!(dev.b_of_t1().to_bits(), (-0.0f64).to_bits());
            assert!(queue::pending_changeset(&dev.db).unwrap().is_none());
        }
    }
}
