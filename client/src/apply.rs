//! Applying a changeset with the semantics of `sqlite3changeset_apply`, in plain SQL
//! (a loadable extension cannot reach the host's session module).
//!
//! Per change, the outcome follows the session extension:
//! - DELETE removes the row whose every column equals the old record. A row with the key
//!   but other values is a **DATA** conflict; no row with the key is **NOTFOUND**.
//! - UPDATE changes the row whose key and old changed values match; otherwise DATA or
//!   NOTFOUND as for DELETE.
//! - INSERT adds the row; an existing row with the key is a **CONFLICT**.
//! - A change that violates another constraint (NOT NULL, UNIQUE, CHECK) is a
//!   **CONSTRAINT** conflict. Such changes are retried after the rest of their table,
//!   repeatedly while retries make progress, and only then reported.
//! - Foreign keys are checked once, after everything (`defer_foreign_keys`): any
//!   violation is a **FOREIGN_KEY** conflict.
//!
//! Policies: `abort` (default) rolls everything back and names the first conflicting
//! row; `replace` forces DATA (write by key alone) and CONFLICT (replace the existing
//! row), skips NOTFOUND, and aborts on CONSTRAINT and FOREIGN_KEY, which no write can
//! repair; `skip` omits every conflicting change.
//!
//! Unlike the session extension, a table that is missing or whose columns or key do not
//! match the changeset is an error, not a silent skip. As there, the target may have
//! extra trailing non-key columns; inserted rows give them their defaults.
//!
//! What is applied is not captured as a local change: the capture triggers are muted by
//! a row in `pdb_apply_guard` for the duration. Rows with uncommitted local changes
//! keep them: their saved original image moves forward with what was applied, so the
//! pending diff still shows only the local edits.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::capture;
use crate::changeset::{self, Change, Op, TableHeader};
use crate::db::{transaction, Db, DbError, Stmt, SQLITE_CONSTRAINT};
use crate::schema::{quote, table_info, TableInfo};
use crate::value::{decode_field, Value, ValueRef};
use crate::Error;

/// What to do with a conflicting change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Roll back everything and report the first conflict.
    Abort,
    /// Force the change where that is meaningful (DATA, CONFLICT).
    Replace,
    /// Omit the conflicting change and go on.
    Skip,
}

impl OnConflict {
    /// Parses the SQL argument: `abort`, `replace` or `skip`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "abort" => Ok(OnConflict::Abort),
            "replace" => Ok(OnConflict::Replace),
            "skip" => Ok(OnConflict::Skip),
            _ => Err(Error::Argument(format!(
                "on_conflict must be 'abort', 'replace' or 'skip', not '{s}'"
            ))),
        }
    }
}

/// Counts of what an apply did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    /// Changes applied as written.
    pub applied: u64,
    /// Conflicting changes forced by `replace`.
    pub replaced: u64,
    /// Conflicting changes omitted.
    pub skipped: u64,
}

/// The kinds of conflict of `sqlite3changeset_apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// The row exists with other values than the change expects.
    Data,
    /// The row the change expects does not exist.
    NotFound,
    /// An INSERT meets an existing row with its key.
    Conflict,
    /// Another constraint fails.
    Constraint,
    /// A foreign key is violated once everything is applied.
    ForeignKey,
}

impl ConflictKind {
    fn name(self) -> &'static str {
        match self {
            ConflictKind::Data => "DATA",
            ConflictKind::NotFound => "NOTFOUND",
            ConflictKind::Conflict => "CONFLICT",
            ConflictKind::Constraint => "CONSTRAINT",
            ConflictKind::ForeignKey => "FOREIGN_KEY",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            ConflictKind::Data => "the row's current values differ from the changeset's old values",
            ConflictKind::NotFound => "the row does not exist",
            ConflictKind::Conflict => "a row with this primary key already exists",
            ConflictKind::Constraint => "the change violates a constraint",
            ConflictKind::ForeignKey => "a foreign key is violated",
        }
    }
}

/// A parsed changeset: its table groups in order.
pub(crate) type Groups<'a> = [(TableHeader<'a>, Vec<Change<'a>>)];

/// Applies many changesets, in order, for a caller that holds the transaction and the
/// apply guard and has no saved images to carry forward (a rebase): table descriptions
/// and statements are read and prepared once for all of them, not per changeset. A
/// failed changeset leaves its partial writes to the caller's rollback.
pub(crate) struct Applier<'d, D: Db + 'd> {
    db: &'d D,
    fk_on: bool,
    /// By table name and the changeset's column count (a header may have fewer).
    tables: HashMap<(String, usize), TableApply<'d, D>>,
    _restore: Option<RestoreDefer<'d, D>>,
}

impl<'d, D: Db + 'd> Applier<'d, D> {
    /// An applier on `db`.
    pub(crate) fn new(db: &'d D) -> Result<Self, Error> {
        let fk_on = foreign_keys_enforced(db)?;
        let defer = fk_on
            && !matches!(
                db.query_value("PRAGMA defer_foreign_keys", &[])?,
                Some(Value::Integer(1))
            );
        if defer {
            db.execute_batch("PRAGMA defer_foreign_keys = ON")?;
        }
        Ok(Applier {
            db,
            fk_on,
            tables: HashMap::new(),
            _restore: defer.then_some(RestoreDefer { db }),
        })
    }

    /// Applies one parsed changeset under `policy`.
    pub(crate) fn apply(
        &mut self,
        groups: &Groups<'_>,
        policy: OnConflict,
    ) -> Result<ApplyStats, Error> {
        let mut stats = ApplyStats::default();
        for (header, changes) in groups {
            let key = (header.name.to_string(), header.n_col());
            let table = match self.tables.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let info = table_info(self.db, header.name)
                        .map_err(|err| not_a_target(header, err))?;
                    e.insert(TableApply::new(self.db, info, header, None)?)
                }
            };
            check_fit(&table.info, header)?;
            table.run(changes, policy, &mut stats)?;
        }
        if self.fk_on {
            check_foreign_keys(self.db, policy, &mut stats)?;
        }
        Ok(stats)
    }
}

/// Applies `changeset` to `db` under `policy`, atomically: on error nothing changes.
pub fn apply<D: Db>(db: &D, changeset: &[u8], policy: OnConflict) -> Result<ApplyStats, Error> {
    // Read everything before writing anything, so a malformed tail changes nothing.
    let groups = changeset::parse(changeset)?;
    let has_schema = capture::has_schema(db)?;
    let shadows: HashMap<String, i64> = if has_schema {
        tracked_ids(db)?
    } else {
        HashMap::new()
    };
    let fk_on = foreign_keys_enforced(db)?;
    // Deferring matters only when foreign keys are enforced, and setting the pragma
    // expires every prepared statement of the connection (the application's too), so
    // it is left alone otherwise, and when it is already on.
    let defer_fk = fk_on
        && !matches!(
            db.query_value("PRAGMA defer_foreign_keys", &[])?,
            Some(Value::Integer(1))
        );

    // Put the application's setting back however this ends (error or panic included);
    // in autocommit mode the end of the transaction would reset it anyway.
    let _restore = defer_fk.then_some(RestoreDefer { db });
    transaction(db, "pdb_apply", || {
        if has_schema {
            db.execute_batch("INSERT OR REPLACE INTO pdb_apply_guard(active) VALUES (1)")?;
        }
        if defer_fk {
            db.execute_batch("PRAGMA defer_foreign_keys = ON")?;
        }
        let mut stats = ApplyStats::default();
        let mut infos: HashMap<&str, TableInfo> = HashMap::new();
        for (header, changes) in &groups {
            if !infos.contains_key(header.name) {
                infos.insert(
                    header.name,
                    table_info(db, header.name).map_err(|e| not_a_target(header, e))?,
                );
            }
            let info = &infos[header.name];
            // Every header is checked, not just the first for a name: a changeset may
            // name the same table again with another shape.
            check_fit(info, header)?;
            let mut table =
                TableApply::new(db, info.clone(), header, shadows.get(&info.name).copied())?;
            table.run(changes, policy, &mut stats)?;
        }
        if fk_on {
            check_foreign_keys(db, policy, &mut stats)?;
        }
        if has_schema {
            db.execute_batch("DELETE FROM pdb_apply_guard")?;
        }
        Ok(stats)
    })
}

/// Turns `PRAGMA defer_foreign_keys` back off when dropped (it was off before).
struct RestoreDefer<'a, D: Db> {
    db: &'a D,
}

impl<D: Db> Drop for RestoreDefer<'_, D> {
    fn drop(&mut self) {
        // Setting a pragma flag cannot fail on a live connection; nothing to report.
        let _ = self.db.execute_batch("PRAGMA defer_foreign_keys = OFF");
    }
}

fn tracked_ids<D: Db>(db: &D) -> Result<HashMap<String, i64>, Error> {
    let mut out = HashMap::new();
    let mut stmt = db.prepare("SELECT name, id FROM pdb_tracked")?;
    stmt.query::<Error>(&mut |r| {
        if let (ValueRef::Text(n), ValueRef::Integer(id)) = (r[0], r[1]) {
            out.insert(String::from_utf8_lossy(n).into_owned(), id);
        }
        Ok(())
    })?;
    Ok(out)
}

fn not_a_target(header: &TableHeader<'_>, e: pdb_core::Error) -> Error {
    match e.into() {
        Error::Table(msg) => {
            Error::Schema(format!("changeset names table \"{}\": {msg}", header.name))
        }
        e => e,
    }
}

/// Checks that a table can take the changes of a header.
fn check_fit(info: &TableInfo, header: &TableHeader<'_>) -> Result<(), Error> {
    let n = header.n_col();
    let fits = info.columns.len() >= n
        && info.columns.iter().enumerate().all(|(i, c)| {
            let want = header.pk.get(i).copied().unwrap_or(0) != 0;
            (c.pk != 0) == want
        });
    if !fits {
        let flags = |f: &mut dyn Iterator<Item = u8>| {
            f.map(|b| b.to_string()).collect::<Vec<_>>().join(" ")
        };
        return Err(Error::Schema(format!(
            "table \"{}\" does not match the changeset: the changeset has {n} columns with key flags [{}], \
             the table has {} columns with key flags [{}]",
            info.name,
            flags(&mut header.pk.iter().copied()),
            info.columns.len(),
            flags(&mut info.columns.iter().map(|c| c.pk)),
        )));
    }
    Ok(())
}

/// Prepared statements and state for applying one table group.
struct TableApply<'d, D: Db + 'd> {
    db: &'d D,
    info: TableInfo,
    n: usize,
    pk: Vec<usize>,
    /// Shadow table id when the table is tracked and has uncommitted changes.
    shadow: Option<i64>,
    /// Statements by shape: built and prepared on first use, then only re-bound, so
    /// no SQL text is formatted per change.
    stmts: HashMap<Shape, D::Stmt<'d>>,
}

/// The shape of a statement apply runs; its SQL follows from the shape and the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shape {
    /// DELETE of the row whose every column matches `?1..?n`.
    Delete,
    /// DELETE of the row with key `?1..`.
    DeleteKey,
    /// SELECT 1 for the key `?1..`.
    Exists,
    /// SELECT the key columns as stored, for the key `?1..`.
    StoredKey,
    /// INSERT of all `n` columns.
    Insert,
    /// UPDATE of the `set` columns (`?k+1..`) of the row with key `?1..?k`, also
    /// requiring the old values of `check` (the `?` after those) when given.
    Update {
        set: Vec<usize>,
        check: Option<Vec<usize>>,
    },
    /// In the shadow: mark the image of a deleted row (stored key `?1..`) as gone.
    ShadowDelete,
    /// In the shadow: copy `cols` of the row with key `?1..` into its saved image.
    ShadowForward { op: Op, cols: Vec<usize> },
}

impl<'d, D: Db + 'd> TableApply<'d, D> {
    fn new(
        db: &'d D,
        info: TableInfo,
        header: &TableHeader<'_>,
        shadow: Option<i64>,
    ) -> Result<Self, Error> {
        let n = header.n_col();
        let pk = (0..n).filter(|&i| header.pk[i] != 0).collect();
        // An empty shadow means no local edits to carry forward: skip that work.
        let shadow = match shadow {
            Some(id) => db
                .query_value(&format!("SELECT 1 FROM main.pdb_shadow_{id} LIMIT 1"), &[])?
                .map(|_| id),
            None => None,
        };
        Ok(TableApply {
            db,
            info,
            n,
            pk,
            shadow,
            stmts: HashMap::new(),
        })
    }

    /// The statement of `shape`, prepared once per apply, with `params` bound as `?1..`.
    fn prepared(
        &mut self,
        shape: Shape,
        params: &[ValueRef<'_>],
    ) -> Result<&mut D::Stmt<'d>, DbError> {
        let db = self.db;
        let stmt = match self.stmts.entry(shape) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let sql = sql_for(e.key(), &self.info, &self.pk, self.n, self.shadow);
                e.insert(db.prepare(&sql)?)
            }
        };
        stmt.bind_all(params)?;
        Ok(stmt)
    }

    /// Runs the statement of `shape` with `params` bound as `?1..`.
    fn exec(&mut self, shape: Shape, params: &[ValueRef<'_>]) -> Result<usize, DbError> {
        let stmt = self.prepared(shape, params)?;
        stmt.execute()
    }

    fn exists(&mut self, key: &[ValueRef<'_>]) -> Result<bool, Error> {
        Ok(self.first_row(Shape::Exists, key)?.is_some())
    }

    /// Runs a query and returns its first row.
    fn first_row(
        &mut self,
        shape: Shape,
        params: &[ValueRef<'_>],
    ) -> Result<Option<Vec<Value>>, Error> {
        let stmt = self.prepared(shape, params)?;
        let mut found = None;
        stmt.query::<Error>(&mut |row| {
            if found.is_none() {
                found = Some(row.iter().map(|v| ValueRef::to_owned(*v)).collect());
            }
            Ok(())
        })?;
        Ok(found)
    }

    fn run(
        &mut self,
        changes: &[Change<'_>],
        policy: OnConflict,
        stats: &mut ApplyStats,
    ) -> Result<(), Error> {
        let mut deferred: Vec<&Change<'_>> = Vec::new();
        for change in changes {
            if self.one(change, policy, stats)? == Outcome::ConstraintFailed {
                deferred.push(change);
            }
        }
        // Constraint failures may clear once other rows of the table are in place.
        while !deferred.is_empty() {
            let before = deferred.len();
            let mut still = Vec::new();
            for change in deferred {
                if self.one(change, policy, stats)? == Outcome::ConstraintFailed {
                    still.push(change);
                }
            }
            deferred = still;
            if deferred.len() == before {
                for change in &deferred {
                    self.conflict(ConflictKind::Constraint, change, policy)?;
                    stats.skipped += 1;
                }
                break;
            }
        }
        Ok(())
    }

    fn one(
        &mut self,
        c: &Change<'_>,
        policy: OnConflict,
        stats: &mut ApplyStats,
    ) -> Result<Outcome, Error> {
        let key: Vec<ValueRef<'_>> = self.pk.iter().map(|&i| field(c.key_record()[i])).collect();
        let stored_key = match (self.shadow, c.op) {
            (Some(_), Op::Delete) => self.stored_key(&key)?,
            _ => None,
        };
        let result = match c.op {
            Op::Delete => self.delete(c, &key, policy),
            Op::Update => self.update(c, &key, policy),
            Op::Insert => self.insert(c, &key, policy),
        };
        let outcome = match result {
            Ok(o) => o,
            Err(Error::Db(e)) if e.primary() == SQLITE_CONSTRAINT => Outcome::ConstraintFailed,
            Err(e) => return Err(e),
        };
        match outcome {
            Outcome::Applied => stats.applied += 1,
            Outcome::Replaced => stats.replaced += 1,
            Outcome::Skipped => stats.skipped += 1,
            Outcome::ConstraintFailed => return Ok(outcome),
        }
        if outcome != Outcome::Skipped {
            self.carry_forward(c, &key, stored_key)?;
        }
        Ok(outcome)
    }

    fn delete(
        &mut self,
        c: &Change<'_>,
        key: &[ValueRef<'_>],
        policy: OnConflict,
    ) -> Result<Outcome, Error> {
        let old: Vec<ValueRef<'_>> = c.old.iter().map(|f| field(f)).collect();
        if self.exec(Shape::Delete, &old)? > 0 {
            return Ok(Outcome::Applied);
        }
        if !self.exists(key)? {
            return self
                .conflict(ConflictKind::NotFound, c, policy)
                .map(|_| Outcome::Skipped);
        }
        if self.conflict(ConflictKind::Data, c, policy)? {
            self.exec(Shape::DeleteKey, key)?;
            return Ok(Outcome::Replaced);
        }
        Ok(Outcome::Skipped)
    }

    fn update(
        &mut self,
        c: &Change<'_>,
        key: &[ValueRef<'_>],
        policy: OnConflict,
    ) -> Result<Outcome, Error> {
        let set_cols: Vec<usize> = (0..self.n).filter(|&i| defined(c.new[i])).collect();
        let check_cols: Vec<usize> = (0..self.n)
            .filter(|&i| !self.pk.contains(&i) && defined(c.old[i]))
            .collect();
        let mut params: Vec<ValueRef<'_>> = key.to_vec();
        params.extend(set_cols.iter().map(|&i| field(c.new[i])));
        let mut checked_params = params.clone();
        checked_params.extend(check_cols.iter().map(|&i| field(c.old[i])));
        let checked = Shape::Update {
            set: set_cols.clone(),
            check: Some(check_cols),
        };
        if self.exec(checked, &checked_params)? > 0 {
            return Ok(Outcome::Applied);
        }
        if !self.exists(key)? {
            return self
                .conflict(ConflictKind::NotFound, c, policy)
                .map(|_| Outcome::Skipped);
        }
        if self.conflict(ConflictKind::Data, c, policy)? {
            let forced = Shape::Update {
                set: set_cols,
                check: None,
            };
            self.exec(forced, &params)?;
            return Ok(Outcome::Replaced);
        }
        Ok(Outcome::Skipped)
    }

    fn insert(
        &mut self,
        c: &Change<'_>,
        key: &[ValueRef<'_>],
        policy: OnConflict,
    ) -> Result<Outcome, Error> {
        let new: Vec<ValueRef<'_>> = c.new.iter().map(|f| field(f)).collect();
        match self.exec(Shape::Insert, &new) {
            Ok(_) => Ok(Outcome::Applied),
            Err(e) if e.primary() == SQLITE_CONSTRAINT => {
                if !self.exists(key)? {
                    return Ok(Outcome::ConstraintFailed);
                }
                if self.conflict(ConflictKind::Conflict, c, policy)? {
                    self.exec(Shape::DeleteKey, key)?;
                    self.exec(Shape::Insert, &new)?;
                    return Ok(Outcome::Replaced);
                }
                Ok(Outcome::Skipped)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Decides a conflict: `Ok(true)` to force the change, `Ok(false)` to omit it, or
    /// the error that aborts the apply.
    fn conflict(
        &self,
        kind: ConflictKind,
        c: &Change<'_>,
        policy: OnConflict,
    ) -> Result<bool, Error> {
        let forceable = matches!(kind, ConflictKind::Data | ConflictKind::Conflict);
        match policy {
            OnConflict::Skip => Ok(false),
            OnConflict::Replace if forceable => Ok(true),
            OnConflict::Replace if kind == ConflictKind::NotFound => Ok(false),
            _ => {
                let key: Vec<&[u8]> = self.pk.iter().map(|&i| c.key_record()[i]).collect();
                let mut pk = String::from("[");
                for (j, f) in key.iter().enumerate() {
                    if j > 0 {
                        pk.push(',');
                    }
                    changeset::value_json(&mut pk, field(f));
                }
                pk.push(']');
                Err(Error::Conflict(format!(
                    "{} conflict on table \"{}\", primary key {pk}: {} ({} of the changeset); nothing was applied",
                    kind.name(),
                    self.info.name,
                    kind.explain(),
                    c.op.name(),
                )))
            }
        }
    }

    /// Moves the saved original image of a row with local edits forward by the applied
    /// change, so the pending diff keeps showing only the local edits.
    fn carry_forward(
        &mut self,
        c: &Change<'_>,
        key: &[ValueRef<'_>],
        stored_key: Option<Vec<Value>>,
    ) -> Result<(), Error> {
        if self.shadow.is_none() {
            return Ok(());
        }
        if c.op == Op::Delete {
            // The key as the table stored it, read before the delete: the changeset may
            // spell it differently (TEXT '1' for INTEGER 1) and the shadow has no affinity.
            let Some(stored) = stored_key else {
                return Ok(());
            };
            let params: Vec<ValueRef<'_>> = stored.iter().map(Value::as_ref).collect();
            self.exec(Shape::ShadowDelete, &params)?;
            return Ok(());
        }
        let cols: Vec<usize> = match c.op {
            Op::Update => (0..self.n).filter(|&i| defined(c.new[i])).collect(),
            // All of the table's columns: trailing ones the changeset lacks took defaults.
            _ => (0..self.info.columns.len()).collect(),
        };
        if c.op == Op::Update && cols.is_empty() {
            return Ok(());
        }
        self.exec(Shape::ShadowForward { op: c.op, cols }, key)?;
        Ok(())
    }

    /// The key of the row matching `key` as the table stores it, if there is one.
    fn stored_key(&mut self, key: &[ValueRef<'_>]) -> Result<Option<Vec<Value>>, Error> {
        self.first_row(Shape::StoredKey, key)
    }
}

/// The SQL of a statement shape for table `info` (key columns `pk`, `n` columns in the
/// changeset, shadow table `shadow`).
fn sql_for(shape: &Shape, info: &TableInfo, pk: &[usize], n: usize, shadow: Option<i64>) -> String {
    let col = |i: usize| quote(&info.columns[i].name);
    let table = quote(&info.name);
    // `pk1 = ?first AND pk2 = ?first+1 ...`, optionally qualified by a table alias.
    let key_where = |first: usize, alias: &str| {
        pk.iter()
            .enumerate()
            .map(|(j, &i)| format!("{alias}{} = ?{}", col(i), first + j))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    match shape {
        Shape::Delete => {
            let conds: Vec<String> = (0..n)
                .map(|i| {
                    let op = if pk.contains(&i) { "=" } else { "IS" };
                    format!("{} {op} ?{}", col(i), i + 1)
                })
                .collect();
            format!("DELETE FROM main.{table} WHERE {}", conds.join(" AND "))
        }
        Shape::DeleteKey => format!("DELETE FROM main.{table} WHERE {}", key_where(1, "")),
        Shape::Exists => format!("SELECT 1 FROM main.{table} WHERE {}", key_where(1, "")),
        Shape::StoredKey => {
            let cols: Vec<String> = pk.iter().map(|&i| col(i)).collect();
            format!(
                "SELECT {} FROM main.{table} WHERE {}",
                cols.join(", "),
                key_where(1, "")
            )
        }
        Shape::Insert => {
            let cols: Vec<String> = (0..n).map(col).collect();
            let params: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
            format!(
                "INSERT INTO main.{table}({}) VALUES ({})",
                cols.join(", "),
                params.join(", ")
            )
        }
        Shape::Update { set, check } => {
            let k = pk.len();
            let mut assign: Vec<String> = set
                .iter()
                .enumerate()
                .map(|(j, &i)| format!("{} = ?{}", col(i), k + j + 1))
                .collect();
            // An UPDATE that sets nothing is a no-op that still checks its old values,
            // as in the session extension; SQL needs at least one assignment.
            if assign.is_empty() {
                let c = col(pk[0]);
                assign.push(format!("{c} = {c}"));
            }
            let mut sql = format!(
                "UPDATE main.{table} SET {} WHERE {}",
                assign.join(", "),
                key_where(1, "")
            );
            for (j, &i) in check.iter().flatten().enumerate() {
                let _ = write!(sql, " AND {} IS ?{}", col(i), k + set.len() + j + 1);
            }
            sql
        }
        Shape::ShadowDelete => {
            let cond: Vec<String> = pk
                .iter()
                .enumerate()
                .map(|(j, &i)| format!("c{} = ?{}", i + 1, j + 1))
                .collect();
            format!(
                "UPDATE main.pdb_shadow_{} SET existed = 0 WHERE {}",
                shadow.unwrap_or(0),
                cond.join(" AND ")
            )
        }
        Shape::ShadowForward { op, cols } => {
            // Values are copied from the table row as stored (its column affinities
            // applied), not from the changeset, so the saved image equals what a local
            // reader of the table would have seen. Qualified: user columns may be named
            // like the shadow's (c1, seq, existed).
            let t_key = key_where(1, "t.");
            let shadow_key: Vec<String> = pk.iter().map(|&i| format!("c{}", i + 1)).collect();
            let t_pk: Vec<String> = pk.iter().map(|&i| format!("t.{}", col(i))).collect();
            let t_cols: Vec<String> = cols.iter().map(|&i| format!("t.{}", col(i))).collect();
            let s_cols: Vec<String> = cols.iter().map(|i| format!("c{}", i + 1)).collect();
            let mut set = Vec::new();
            if *op == Op::Insert {
                set.push("existed = 1".to_string());
            }
            if !cols.is_empty() {
                set.push(format!(
                    "({}) = (SELECT {} FROM main.{table} AS t WHERE {t_key})",
                    s_cols.join(", "),
                    t_cols.join(", ")
                ));
            }
            // A row saved as "did not exist" has no image for an UPDATE to move forward.
            let guard = if *op == Op::Update {
                " AND existed = 1"
            } else {
                ""
            };
            format!(
                "UPDATE main.pdb_shadow_{} SET {} WHERE ({}) IN (SELECT {} FROM main.{table} AS t WHERE {t_key}){guard}",
                shadow.unwrap_or(0),
                set.join(", "),
                shadow_key.join(", "),
                t_pk.join(", "),
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Replaced,
    Skipped,
    ConstraintFailed,
}

fn defined(f: &[u8]) -> bool {
    f[0] != crate::value::UNDEFINED
}

/// A defined field's value (the parser guarantees it decodes).
fn field<'a>(f: &'a [u8]) -> ValueRef<'a> {
    decode_field(f).unwrap_or(ValueRef::Null)
}

/// Whether foreign keys are enforced on this connection and any table declares one:
/// only then is there anything to defer or check (rusqlite's bundled SQLite, for one,
/// turns enforcement on by default, schema or not).
fn foreign_keys_enforced<D: Db>(db: &D) -> Result<bool, Error> {
    if !matches!(
        db.query_value("PRAGMA foreign_keys", &[])?,
        Some(Value::Integer(1))
    ) {
        return Ok(false);
    }
    Ok(db
        .query_value(
            "SELECT 1 FROM main.sqlite_schema AS s, pragma_foreign_key_list(s.name) AS f \
             WHERE s.type = 'table' LIMIT 1",
            &[],
        )?
        .is_some())
}

fn check_foreign_keys<D: Db>(
    db: &D,
    policy: OnConflict,
    stats: &mut ApplyStats,
) -> Result<(), Error> {
    let mut violation = None;
    let mut stmt = db.prepare("PRAGMA main.foreign_key_check")?;
    stmt.query::<Error>(&mut |r| {
        if violation.is_none() {
            let text = |v: &ValueRef<'_>| match v {
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                ValueRef::Integer(i) => i.to_string(),
                _ => "NULL".into(),
            };
            violation = Some((text(&r[0]), text(&r[1]), text(&r[2])));
        }
        Ok(())
    })?;
    drop(stmt);
    match violation {
        None => Ok(()),
        Some(_) if policy == OnConflict::Skip => {
            stats.skipped += 1;
            Ok(())
        }
        Some((table, rowid, parent)) => Err(Error::Conflict(format!(
            "FOREIGN_KEY conflict: row {rowid} of table \"{table}\" refers to a missing row of \"{parent}\"; \
             nothing was applied"
        ))),
    }
}

/// The defects the `changeset_apply` fuzz target found (`fuzz/regressions/
/// changeset_apply/`), each on an in-memory database, with what the fix makes of it;
/// `tests/tests/apply.rs` has them through `pdb_apply` against the session extension.
#[cfg(all(test, feature = "rusqlite"))]
mod tests {
    use super::*;
    use crate::queue;
    use rusqlite::Connection;

    const KEY_1: [u8; 9] = [1, 0, 0, 0, 0, 0, 0, 0, 1];

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        c
    }

    /// Tracks `table` and commits its rows, so that only later edits are pending.
    fn track(c: &Connection, table: &str) {
        capture::track(c, table).unwrap();
        queue::commit(c, None).unwrap();
        assert!(pending(c).is_empty());
    }

    fn pending(c: &Connection) -> Vec<u8> {
        capture::pending(c, &capture::tracked(c).unwrap()).unwrap()
    }

    fn rows(c: &Connection, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = c.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn stats(applied: u64, replaced: u64, skipped: u64) -> ApplyStats {
        ApplyStats {
            applied,
            replaced,
            skipped,
        }
    }

    /// `regressions/changeset_apply/update-without-new-values`: an UPDATE whose new
    /// record defines no column. `sqlite3changeset_apply` takes it as a no-op that still
    /// checks its old values; apply built `UPDATE ... SET  WHERE` and failed the whole
    /// changeset with a syntax error under every policy (and carrying a saved image
    /// forward by no columns was the same empty SET).
    #[test]
    fn an_update_that_sets_nothing_is_a_no_op_that_checks_its_old_values() {
        // T t(id INTEGER PRIMARY KEY, v) | UPDATE old (1, 'a') new (-, -)
        let cs = [
            [b'T', 2, 1, 0, b't', 0, 23, 0].as_slice(),
            &KEY_1,
            &[3, 1, b'a', 0, 0],
        ]
        .concat();
        let c = db("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');");
        for policy in [OnConflict::Abort, OnConflict::Replace, OnConflict::Skip] {
            assert_eq!(
                apply(&c, &cs, policy).unwrap(),
                stats(1, 0, 0),
                "{policy:?}"
            );
        }
        // The old value is still checked: 'a' is no longer there.
        c.execute_batch("UPDATE t SET v = 'b'").unwrap();
        let e = apply(&c, &cs, OnConflict::Abort).unwrap_err();
        assert!(
            matches!(&e, Error::Conflict(m) if m.starts_with("DATA conflict on table \"t\", primary key [1]")),
            "{e}"
        );
        assert_eq!(apply(&c, &cs, OnConflict::Skip).unwrap(), stats(0, 0, 1));

        // On a tracked row with a local edit: applied, and the edit stays pending as it was.
        let c =
            db("CREATE TABLE t(id INTEGER PRIMARY KEY, v, u); INSERT INTO t VALUES (1, 'a', 0);");
        track(&c, "t");
        c.execute_batch("UPDATE t SET u = 1").unwrap();
        let before = pending(&c);
        let cs3 = [
            [b'T', 3, 1, 0, 0, b't', 0, 23, 0].as_slice(),
            &KEY_1,
            &[3, 1, b'a', 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(apply(&c, &cs3, OnConflict::Abort).unwrap(), stats(1, 0, 0));
        assert_eq!(pending(&c), before);
    }

    /// `regressions/changeset_apply/carry-forward-text-key` and `carry-forward-value-
    /// affinity`: a remote change the table converts by affinity (an INTEGER key spelled
    /// TEXT '1', an INTEGER 2 for a REAL column, stored 2.0) to a row with a local edit.
    /// The shadow's columns have no affinity: looked up by the changeset's key the saved
    /// image was not found, and copied from the changeset it kept INTEGER 2, so the
    /// remote change showed up in the pending changeset as a local edit.
    #[test]
    fn carried_forward_images_take_the_table_s_affinity() {
        let c = db("CREATE TABLE w(id INTEGER PRIMARY KEY, v TEXT, b REAL, u);
                    INSERT INTO w VALUES (1, 'x', 1.0, 'base');");
        track(&c, "w");
        c.execute_batch("UPDATE w SET u = 'local' WHERE id = 1")
            .unwrap();
        // T w | UPDATE old ('1', 'x', 1.0, -) new (-, 'z', 2, -)
        let mut cs = vec![b'T', 4, 1, 0, 0, 0, b'w', 0, 23, 0];
        cs.extend_from_slice(&[3, 1, b'1', 3, 1, b'x', 2, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0]);
        cs.extend_from_slice(&[0, 3, 1, b'z', 1, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(apply(&c, &cs, OnConflict::Abort).unwrap(), stats(1, 0, 0));
        use rusqlite::types::Value as V;
        assert_eq!(
            rows(&c, "SELECT id, v, b, u FROM w"),
            [[
                V::Integer(1),
                V::Text("z".into()),
                V::Real(2.0),
                V::Text("local".into())
            ]]
        );
        // Only the local edit is pending: UPDATE old (1, -, -, 'base') new (-, -, -, 'local').
        let mut want = vec![b'T', 4, 1, 0, 0, 0, b'w', 0, 23, 0];
        want.extend_from_slice(&KEY_1);
        want.extend_from_slice(&[0, 0, 3, 4, b'b', b'a', b's', b'e']);
        want.extend_from_slice(&[0, 0, 0, 3, 5, b'l', b'o', b'c', b'a', b'l']);
        assert_eq!(pending(&c), want);

        // A remote DELETE spelled with the TEXT key ends the local edit too.
        let mut del = vec![b'T', 4, 1, 0, 0, 0, b'w', 0, 9, 0];
        del.extend_from_slice(&[3, 1, b'1', 3, 1, b'z', 2, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        del.extend_from_slice(&[3, 5, b'l', b'o', b'c', b'a', b'l']);
        assert_eq!(apply(&c, &del, OnConflict::Abort).unwrap(), stats(1, 0, 0));
        assert_eq!(pending(&c), Vec::<u8>::new());
    }

    /// `regressions/changeset_apply/carry-forward-narrow-insert` (fixed in 962830d): an
    /// INSERT from a peer whose table has fewer columns, of a row with a saved image.
    /// The table gives the trailing columns their defaults, but the image moved forward
    /// in the changeset's columns only, so the pending changeset showed the defaults as
    /// a local UPDATE nobody made.
    #[test]
    fn a_narrow_insert_carries_forward_the_defaulted_trailing_columns() {
        let c = db("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b DEFAULT 'dflt', c DEFAULT 7);");
        track(&c, "t");
        c.execute_batch("INSERT INTO t VALUES (3, 'local', 'x', 1); DELETE FROM t WHERE id = 3;")
            .unwrap();
        // T t, two columns of four | INSERT (3, 'r')
        let cs = [
            b'T', 2, 1, 0, b't', 0, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 3, 1, b'r',
        ];
        assert_eq!(apply(&c, &cs, OnConflict::Abort).unwrap(), stats(1, 0, 0));
        use rusqlite::types::Value as V;
        assert_eq!(
            rows(&c, "SELECT * FROM t"),
            [[
                V::Integer(3),
                V::Text("r".into()),
                V::Text("dflt".into()),
                V::Integer(7)
            ]]
        );
        assert_eq!(pending(&c), Vec::<u8>::new());
    }

    /// The refusals apply makes where the session extension skips silently: a table
    /// missing, or of another shape than the changeset's header; every header is
    /// checked, a second group of a table included. Each leaves the database as it was.
    #[test]
    fn a_missing_table_or_one_of_another_shape_is_a_schema_error() {
        let c = db("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');");
        let ins2 = [b'T', 1, 1, b'u', 0, 18, 0, 5];
        let e = apply(&c, &ins2, OnConflict::Abort).unwrap_err();
        assert!(
            matches!(&e, Error::Schema(m) if m.starts_with("changeset names table \"u\": ")),
            "{e}"
        );
        // Key on the other column.
        let cs = [b'T', 2, 0, 1, b't', 0, 18, 0, 5, 5];
        let e = apply(&c, &cs, OnConflict::Replace).unwrap_err();
        assert!(
            matches!(&e, Error::Schema(m) if m == "table \"t\" does not match the changeset: \
                the changeset has 2 columns with key flags [0 1], the table has 2 columns \
                with key flags [1 0]"),
            "{e}"
        );
        // More columns than the table.
        let cs = [
            [b'T', 3, 1, 0, 0, b't', 0, 18, 0].as_slice(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 5, 5],
        ]
        .concat();
        let e = apply(&c, &cs, OnConflict::Skip).unwrap_err();
        assert!(
            matches!(&e, Error::Schema(m) if m.contains("the changeset has 3 columns")),
            "{e}"
        );
        // A good group of t (INSERT 2), then t again with a wrong key: nothing applied.
        let good = [
            [b'T', 2, 1, 0, b't', 0, 18, 0].as_slice(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 5],
        ]
        .concat();
        let bad = [b'T', 2, 0, 1, b't', 0, 9, 0, 5, 5];
        let e = apply(&c, &[good.as_slice(), &bad].concat(), OnConflict::Abort).unwrap_err();
        assert!(
            matches!(&e, Error::Schema(m) if m.contains("key flags [0 1]")),
            "{e}"
        );
        use rusqlite::types::Value as V;
        assert_eq!(
            rows(&c, "SELECT * FROM t"),
            [[V::Integer(1), V::Text("a".into())]]
        );
    }

    /// A malformed tail is found before anything is written (the parse comes first).
    #[test]
    fn a_malformed_changeset_changes_nothing() {
        let c = db("CREATE TABLE t(id INTEGER PRIMARY KEY, v);");
        let cs = [
            [b'T', 2, 1, 0, b't', 0, 18, 0].as_slice(),
            &KEY_1,
            &[5, 18, 0, 1],
        ]
        .concat();
        let e = apply(&c, &cs, OnConflict::Abort).unwrap_err();
        assert!(
            matches!(&e, Error::Format(f) if f.offset == 20 && f.reason == "truncated value"),
            "{e}"
        );
        assert!(rows(&c, "SELECT * FROM t").is_empty());
    }
}
