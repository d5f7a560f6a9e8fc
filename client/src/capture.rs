//! Change capture: shadow tables filled by plain-SQL triggers, diffed at commit time.
//!
//! For a tracked table with id `N`, `pdb_shadow_N` holds, for every row touched since
//! the last local commit, the row's **original image**: its values at the last commit
//! (`existed = 1`), or a marker that the row did not exist then (`existed = 0`, values
//! NULL). Triggers write it with an UPSERT that does nothing when an image is already
//! saved for the key, so the first touch wins and later writes to the same row cost one
//! index lookup. Because the triggers are ordinary SQL
//! stored in the database, capture works for connections that never loaded the
//! extension, and it commits or rolls back with the application's own transaction.
//!
//! The pending changeset is the diff of each shadow row against the live row, which
//! gives the session extension's consolidation rules for free: INSERT then UPDATE is an
//! INSERT of the final values, INSERT then DELETE is nothing, DELETE then INSERT is an
//! UPDATE (or nothing), and an UPDATE back to the original values is nothing.
//!
//! Triggers per table (all skip while `pdb_apply_guard` holds a row):
//! - `pdb_N_bi` BEFORE INSERT and `pdb_N_bu` BEFORE UPDATE OF key or unique columns:
//!   save the rows the write may replace (`OR REPLACE` deletes them without firing
//!   delete triggers unless `recursive_triggers` is on). Saving a row that is not in
//!   fact replaced is harmless: its diff is empty.
//! - `pdb_N_ai` AFTER INSERT: marker for the new key.
//! - `pdb_N_au` AFTER UPDATE: the old image; `pdb_N_ak` AFTER UPDATE OF key columns: a
//!   marker for the new key when the key changed (the session extension's DELETE+INSERT).
//! - `pdb_N_ad` AFTER DELETE: the old image.

use crate::changeset::{Op, Writer};
use crate::db::{transaction, Db, Stmt};
use crate::schema::{quote, table_info, TableInfo};
use crate::value::{Value, ValueRef};
use crate::{Error, CLIENT_SQL};

/// A tracked table: its id and live description.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// Suffix of the shadow table and trigger names.
    pub id: i64,
    /// The table as it is now.
    pub info: TableInfo,
}

/// Whether this database has the PersonalDB tables.
pub fn has_schema<D: Db>(db: &D) -> Result<bool, Error> {
    Ok(db
        .query_value(
            "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = 'pdb_tracked'",
            &[],
        )?
        .is_some())
}

/// Creates the PersonalDB tables if they are missing.
pub fn ensure_schema<D: Db>(db: &D) -> Result<(), Error> {
    if !has_schema(db)? {
        db.execute_batch(CLIENT_SQL)?;
    }
    Ok(())
}

fn shadow(id: i64) -> String {
    format!("main.pdb_shadow_{id}")
}

/// Starts capturing `name` (or picks up columns added since it was tracked). Rows
/// already in the table become pending inserts. Returns the name as stored.
pub fn track<D: Db>(db: &D, name: &str) -> Result<String, Error> {
    transaction(db, "pdb_track", || {
        ensure_schema(db)?;
        let info = table_info(db, name)?;
        let mut existing = None;
        {
            let mut stmt = db.prepare("SELECT id, columns FROM pdb_tracked WHERE name = ?1")?;
            stmt.bind(1, ValueRef::Text(info.name.as_bytes()))?;
            stmt.query::<Error>(&mut |row| {
                if let (ValueRef::Integer(id), ValueRef::Text(cols)) = (row[0], row[1]) {
                    existing = Some((id, String::from_utf8_lossy(cols).into_owned()));
                }
                Ok(())
            })?;
        }
        let id = match existing {
            Some((id, shape)) if shape == info.shape_json() => id,
            Some((id, shape)) => {
                retrack(db, id, &info, &shape)?;
                id
            }
            None => {
                let id = match db
                    .query_value("SELECT coalesce(max(id), 0) + 1 FROM pdb_tracked", &[])?
                {
                    Some(Value::Integer(i)) => i,
                    _ => 1,
                };
                db.execute_batch(&shadow_ddl(&info, id))?;
                db.execute_batch(&format!(
                    "INSERT OR IGNORE INTO {shadow}({keys}, existed) SELECT {cols}, 0 FROM main.{t}",
                    shadow = shadow(id),
                    keys = shadow_cols(&info.pk_columns()),
                    cols = table_cols(&info, &info.pk_columns(), ""),
                    t = quote(&info.name),
                ))?;
                id
            }
        };
        db.execute(
            "INSERT OR REPLACE INTO pdb_tracked(name, id, columns, tracked_at) VALUES (?1, ?2, ?3, ?4)",
            &[
                ValueRef::Text(info.name.as_bytes()),
                ValueRef::Integer(id),
                ValueRef::Text(info.shape_json().as_bytes()),
                ValueRef::Integer(now_ms()),
            ],
        )?;
        db.execute_batch(&drop_triggers(id))?;
        db.execute_batch(&trigger_ddl(&info, id))?;
        Ok(info.name.clone())
    })
}

/// Re-tracks a table whose columns changed. Appended columns (ALTER TABLE ADD COLUMN)
/// keep pending changes: saved images get the column's default, which is the value
/// every existing row took. Any other change is only allowed with nothing pending.
fn retrack<D: Db>(db: &D, id: i64, info: &TableInfo, old_shape: &str) -> Result<(), Error> {
    let old = crate::schema::shape_from_json(&info.name, old_shape)
        .ok_or_else(|| Error::Table(format!("pdb_tracked row of \"{}\" is corrupt", info.name)))?;
    let appended = old.len() < info.columns.len()
        && old.iter().zip(&info.columns).all(|(a, b)| {
            a.name == b.name && a.decl_type == b.decl_type && a.pk == b.pk && a.notnull == b.notnull
        });
    if appended {
        for (i, col) in info.columns.iter().enumerate().skip(old.len()) {
            let default = col
                .default
                .as_deref()
                .map(|d| format!(" DEFAULT {d}"))
                .unwrap_or_default();
            db.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN c{}{default}",
                shadow(id),
                i + 1
            ))?;
        }
        return Ok(());
    }
    let pending = db.query_value(&format!("SELECT 1 FROM {} LIMIT 1", shadow(id)), &[])?;
    if pending.is_some() {
        return Err(Error::Table(format!(
            "table \"{}\" changed shape (columns dropped, renamed or retyped) while it has \
             uncommitted changes; pdb_untrack() discards them, or restore the old shape and pdb_commit() first",
            info.name
        )));
    }
    db.execute_batch(&format!(
        "DROP TABLE {}; {}",
        shadow(id),
        shadow_ddl(info, id)
    ))?;
    Ok(())
}

/// Stops capturing `name` and discards its uncommitted changes.
pub fn untrack<D: Db>(db: &D, name: &str) -> Result<(), Error> {
    if !has_schema(db)? {
        return Err(Error::Table(format!("table \"{name}\" is not tracked")));
    }
    transaction(db, "pdb_untrack", || {
        let row = {
            let mut stmt =
                db.prepare("SELECT id, name FROM pdb_tracked WHERE name = ?1 COLLATE NOCASE")?;
            stmt.bind(1, ValueRef::Text(name.as_bytes()))?;
            let mut row = None;
            stmt.query::<Error>(&mut |r| {
                if let (ValueRef::Integer(id), ValueRef::Text(n)) = (r[0], r[1]) {
                    row = Some((id, String::from_utf8_lossy(n).into_owned()));
                }
                Ok(())
            })?;
            row
        };
        let Some((id, stored)) = row else {
            return Err(Error::Table(format!("table \"{name}\" is not tracked")));
        };
        db.execute_batch(&drop_triggers(id))?;
        db.execute_batch(&format!("DROP TABLE IF EXISTS {}", shadow(id)))?;
        db.execute(
            "DELETE FROM pdb_tracked WHERE name = ?1",
            &[ValueRef::Text(stored.as_bytes())],
        )?;
        Ok(())
    })
}

/// The tracked tables in name order, checked against their shape at `pdb_track` time.
pub fn tracked<D: Db>(db: &D) -> Result<Vec<Tracked>, Error> {
    if !has_schema(db)? {
        return Ok(Vec::new());
    }
    read_tracked(db)
}

/// [`tracked`] in a database known to have the PersonalDB tables.
pub(crate) fn read_tracked<D: Db>(db: &D) -> Result<Vec<Tracked>, Error> {
    let mut rows = Vec::new();
    {
        let mut stmt = db.prepare("SELECT name, id, columns FROM pdb_tracked ORDER BY name")?;
        stmt.query::<Error>(&mut |r| {
            if let (ValueRef::Text(n), ValueRef::Integer(id), ValueRef::Text(c)) =
                (r[0], r[1], r[2])
            {
                rows.push((
                    String::from_utf8_lossy(n).into_owned(),
                    id,
                    String::from_utf8_lossy(c).into_owned(),
                ));
            }
            Ok(())
        })?;
    }
    let mut out = Vec::with_capacity(rows.len());
    for (name, id, shape) in rows {
        let info = match table_info(db, &name) {
            Ok(info) if info.name == name => info,
            _ => {
                return Err(Error::Table(format!(
                    "tracked table \"{name}\" no longer exists (dropped or renamed); \
                     select pdb_untrack('{}') to stop tracking it",
                    name.replace('\'', "''")
                )))
            }
        };
        if info.shape_json() != shape {
            return Err(Error::Table(format!(
                "table \"{name}\" changed shape since pdb_track (ALTER TABLE?); \
                 select pdb_track('{}') to capture its current columns",
                name.replace('\'', "''")
            )));
        }
        out.push(Tracked { id, info });
    }
    Ok(out)
}

/// The canonical changeset of everything not yet committed, or empty if nothing changed.
pub fn pending<D: Db>(db: &D, tables: &[Tracked]) -> Result<Vec<u8>, Error> {
    let mut out = Writer::new();
    for t in tables {
        diff_table(db, t, &mut out)?;
    }
    Ok(out.finish())
}

/// Forgets the captured original images (after they went into a commit).
pub fn clear<D: Db>(db: &D, tables: &[Tracked]) -> Result<(), Error> {
    for t in tables {
        db.execute_batch(&format!("DELETE FROM {}", shadow(t.id)))?;
    }
    Ok(())
}

fn diff_table<D: Db>(db: &D, t: &Tracked, out: &mut Writer) -> Result<(), Error> {
    let info = &t.info;
    let n = info.columns.len();
    let pk = info.pk_flags();
    let pk_cols = info.pk_columns();
    let all: Vec<usize> = (0..n).collect();
    let on: Vec<String> = pk_cols
        .iter()
        .map(|&i| format!("t.{} = s.c{}", quote(&info.columns[i].name), i + 1))
        .collect();
    // Two passes, so that neither table is read in random order. Pass 1 walks the
    // shadow's UNIQUE key index (covering: key and seq), so the probes into the table
    // go in key order, and keeps each current row encoded. Pass 2 reads the saved
    // images in log order and pairs them with pass 1 by seq. Read in one join, either
    // the table or the shadow is probed in random order, which costs a B-tree descent
    // with cold CPU caches per row (2-3x the whole commit for large random updates).
    let pass1 = format!(
        "SELECT s.seq, t.{first_pk} IS NOT NULL, {cur} FROM {shadow} AS s \
         LEFT JOIN main.{table} AS t ON {on} ORDER BY {keys}",
        cur = table_cols(info, &all, "t."),
        first_pk = quote(&info.columns[pk_cols[0]].name),
        shadow = shadow(t.id),
        table = quote(&info.name),
        on = on.join(" AND "),
        keys = pk_cols
            .iter()
            .map(|i| format!("s.c{}", i + 1))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // (seq, row exists now, start, end) of each current row encoded in `current`.
    let mut current: Vec<u8> = Vec::new();
    let mut rows: Vec<(i64, bool, usize, usize)> = Vec::new();
    {
        let mut stmt = db.prepare(&pass1)?;
        stmt.query::<Error>(&mut |row| {
            let ValueRef::Integer(seq) = row[0] else {
                return Ok(());
            };
            let exists = matches!(row[1], ValueRef::Integer(1));
            let start = current.len();
            if exists {
                row[2..].iter().for_each(|v| v.encode(&mut current));
            }
            rows.push((seq, exists, start, current.len()));
            Ok(())
        })?;
    }
    rows.sort_unstable_by_key(|r| r.0);
    let pass2 = format!(
        "SELECT seq, existed, {orig} FROM {shadow} ORDER BY seq",
        orig = all
            .iter()
            .map(|i| format!("c{}", i + 1))
            .collect::<Vec<_>>()
            .join(", "),
        shadow = shadow(t.id),
    );

    // Every change is encoded into one arena, its sort key right before it; `spans`
    // holds (key start, change start, change end). One allocation for all rows.
    let mut arena: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    let mut changed = vec![false; n];
    let mut cur: Vec<ValueRef<'_>> = Vec::with_capacity(n);
    let mut next = 0;
    let mut stmt = db.prepare(&pass2)?;
    stmt.query::<Error>(&mut |row| {
        let ValueRef::Integer(seq) = row[0] else {
            return Ok(());
        };
        let existed = matches!(row[1], ValueRef::Integer(1));
        let orig = &row[2..2 + n];
        // Both passes saw the same shadow rows inside one transaction.
        while next < rows.len() && rows[next].0 < seq {
            next += 1;
        }
        let Some(&(_, exists, start, end)) = rows.get(next).filter(|r| r.0 == seq) else {
            return Err(Error::Table(format!(
                "shadow of \"{}\" changed during pdb_commit",
                info.name
            )));
        };
        cur.clear();
        let mut fields = &current[start..end];
        while !fields.is_empty() {
            let len = crate::value::field_len(fields);
            cur.push(crate::value::decode_field(&fields[..len]).unwrap_or(ValueRef::Null));
            fields = &fields[len..];
        }
        let cur = &cur[..];
        let (op, key_src) = match (existed, exists) {
            (false, false) => return Ok(()),
            (false, true) => (Op::Insert, cur),
            (true, false) => (Op::Delete, orig),
            (true, true) => {
                for i in 0..n {
                    changed[i] = pk[i] == 0 && !orig[i].same(cur[i]);
                }
                if !changed.contains(&true) {
                    return Ok(());
                }
                (Op::Update, orig)
            }
        };
        let key_start = arena.len();
        for i in 0..n {
            if pk[i] != 0 {
                key_src[i].encode(&mut arena);
            }
        }
        let start = arena.len();
        arena.extend_from_slice(&[op.byte(), 0]);
        match op {
            Op::Insert => cur.iter().for_each(|v| v.encode(&mut arena)),
            Op::Delete => orig.iter().for_each(|v| v.encode(&mut arena)),
            Op::Update => {
                for i in 0..n {
                    if pk[i] != 0 || changed[i] {
                        orig[i].encode(&mut arena);
                    } else {
                        arena.push(crate::value::UNDEFINED);
                    }
                }
                for i in 0..n {
                    if changed[i] {
                        cur[i].encode(&mut arena);
                    } else {
                        arena.push(crate::value::UNDEFINED);
                    }
                }
            }
        }
        spans.push((key_start, start, arena.len()));
        Ok(())
    })?;
    if spans.is_empty() {
        return Ok(());
    }
    spans.sort_by(|a, b| arena[a.0..a.1].cmp(&arena[b.0..b.1]));
    out.table(&info.name, &pk);
    out.buf().reserve(arena.len());
    for (_, start, end) in spans {
        out.buf().extend_from_slice(&arena[start..end]);
    }
    Ok(())
}

fn shadow_cols(cols: &[usize]) -> String {
    cols.iter()
        .map(|i| format!("c{}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

fn table_cols(info: &TableInfo, cols: &[usize], prefix: &str) -> String {
    cols.iter()
        .map(|&i| format!("{prefix}{}", quote(&info.columns[i].name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shadow table is a log in arrival order (`seq`) with a UNIQUE index on the key:
/// saved images are appended to the end of the table's B-tree, and only the small index
/// takes the application's (often random) key order. Keyed by the row's key directly,
/// every saved 200-byte image would split pages all over a second copy of the table.
/// Columns carry no declared type, so values keep their storage class exactly.
fn shadow_ddl(info: &TableInfo, id: i64) -> String {
    let cols: Vec<String> = (0..info.columns.len())
        .map(|i| format!("c{}", i + 1))
        .collect();
    format!(
        "CREATE TABLE {}(seq INTEGER PRIMARY KEY, {}, existed INTEGER NOT NULL, UNIQUE({}))",
        shadow(id),
        cols.join(", "),
        shadow_cols(&info.pk_columns())
    )
}

/// Removes the capture triggers of `tables`, inside the caller's transaction, for
/// writes that must not be captured and are many: the guard mutes a trigger, but
/// SQLite still compiles it into every write statement and runs its WHEN clause for
/// every row. [`unmute`] puts them back before the transaction ends.
pub fn mute<D: Db>(db: &D, tables: &[Tracked]) -> Result<(), Error> {
    for t in tables {
        db.execute_batch(&drop_triggers(t.id))?;
    }
    Ok(())
}

/// Re-creates the capture triggers [`mute`] removed.
pub fn unmute<D: Db>(db: &D, tables: &[Tracked]) -> Result<(), Error> {
    for t in tables {
        db.execute_batch(&trigger_ddl(&t.info, t.id))?;
    }
    Ok(())
}

fn drop_triggers(id: i64) -> String {
    ["bi", "bu", "ai", "au", "ak", "ad"]
        .iter()
        .map(|k| format!("DROP TRIGGER IF EXISTS main.pdb_{id}_{k};"))
        .collect()
}

fn trigger_ddl(info: &TableInfo, id: i64) -> String {
    let n = info.columns.len();
    let all: Vec<usize> = (0..n).collect();
    let pk = info.pk_columns();
    // Trigger bodies may not qualify table names; they resolve in the trigger's schema.
    let table = quote(&info.name);
    let guard = "WHEN NOT EXISTS (SELECT 1 FROM pdb_apply_guard)";
    let shadow = format!("pdb_shadow_{id}");
    let col = |i: usize| quote(&info.columns[i].name);
    let cols = |prefix: &str, which: &[usize]| table_cols(info, which, prefix);
    // First image wins through the UNIQUE key index and an UPSERT. Not INSERT OR IGNORE:
    // an explicit conflict clause on the application's statement (INSERT OR REPLACE,
    // UPDATE OR ABORT) overrides the OR-policy of every statement in a trigger, and
    // would overwrite the first image or fail the write; an UPSERT is not overridden.
    let keep_first = format!("ON CONFLICT({}) DO NOTHING", shadow_cols(&pk));
    let save_old = format!(
        "INSERT INTO {shadow}({}, existed) VALUES ({}, 1) {keep_first};",
        shadow_cols(&all),
        cols("OLD.", &all)
    );
    let save_marker = format!(
        "INSERT INTO {shadow}({}, existed) VALUES ({}, 0) {keep_first};",
        shadow_cols(&pk),
        cols("NEW.", &pk)
    );

    // Rows the write could replace: same key, or same values of a unique constraint.
    let mut probes = vec![pk.clone()];
    probes.extend(info.unique.iter().cloned());
    let conflicts = probes
        .iter()
        .map(|c| {
            let eq: Vec<String> = c
                .iter()
                .map(|&i| format!("t.{} = NEW.{}", col(i), col(i)))
                .collect();
            format!("({})", eq.join(" AND "))
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let save_conflicts = format!(
        "INSERT INTO {shadow}({}, existed) SELECT {}, 1 FROM {table} AS t WHERE {conflicts} {keep_first};",
        shadow_cols(&all),
        cols("t.", &all),
    );
    let mut watched: Vec<usize> = probes.concat();
    watched.sort_unstable();
    watched.dedup();
    let watched = watched
        .iter()
        .map(|&i| col(i))
        .collect::<Vec<_>>()
        .join(", ");
    let pk_names = pk.iter().map(|&i| col(i)).collect::<Vec<_>>().join(", ");
    let key_changed = pk
        .iter()
        .map(|&i| format!("NEW.{c} IS NOT OLD.{c}", c = col(i)))
        .collect::<Vec<_>>()
        .join(" OR ");

    format!(
        "CREATE TRIGGER main.pdb_{id}_bi BEFORE INSERT ON {table} {guard} BEGIN {save_conflicts} END;
CREATE TRIGGER main.pdb_{id}_bu BEFORE UPDATE OF {watched} ON {table} {guard} BEGIN {save_conflicts} END;
CREATE TRIGGER main.pdb_{id}_ai AFTER INSERT ON {table} {guard} BEGIN {save_marker} END;
CREATE TRIGGER main.pdb_{id}_au AFTER UPDATE ON {table} {guard} BEGIN {save_old} END;
CREATE TRIGGER main.pdb_{id}_ak AFTER UPDATE OF {pk_names} ON {table} {guard} AND ({key_changed})
  BEGIN {save_marker} END;
CREATE TRIGGER main.pdb_{id}_ad AFTER DELETE ON {table} {guard} BEGIN {save_old} END;"
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
