//! Whole rows of a tracked table: read and written by primary key, compared, shown as
//! JSON, and diffed into canonical changesets. Rebase (DESIGN §6) decides on whole rows
//! (the base B, the local L, the remote R), so it needs them in full, which a changeset's
//! UPDATE record does not carry.

use std::collections::BTreeMap;

use crate::changeset::{Op, Writer};
use crate::db::{Db, Stmt};
use crate::schema::{quote, TableInfo};
use crate::value::{Value, ValueRef, UNDEFINED};
use crate::Error;

/// A row: every column of its table in declaration order.
pub type Row = Vec<Value>;

/// Whether two rows (or absences) are the same: same storage classes and values.
pub fn same_row(a: Option<&Row>, b: Option<&Row>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.as_ref().same(y.as_ref()))
        }
        _ => false,
    }
}

/// The key columns of `info` in declaration order: the order of canonical sort keys.
pub fn key_columns(info: &TableInfo) -> Vec<usize> {
    (0..info.columns.len())
        .filter(|&i| info.columns[i].pk != 0)
        .collect()
}

/// The key of a row (declaration order).
pub fn key_of(info: &TableInfo, row: &[Value]) -> Vec<Value> {
    key_columns(info).iter().map(|&i| row[i].clone()).collect()
}

/// A key's canonical sort bytes: its values in record format, concatenated.
pub fn key_bytes(key: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in key {
        v.as_ref().encode(&mut out);
    }
    out
}

/// A value as JSON, with the mapping of `pdb_changeset_rows` (BLOBs as `{"blob": hex}`,
/// non-finite REALs as `{"real": "nan"|"inf"|"-inf"}`).
pub fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => json!(i),
        Value::Real(r) if r.is_nan() => json!({"real": "nan"}),
        Value::Real(r) if r.is_infinite() => json!({"real": if *r > 0.0 { "inf" } else { "-inf" }}),
        Value::Real(r) => json!(r),
        Value::Text(t) => json!(String::from_utf8_lossy(t)),
        Value::Blob(b) => json!({"blob": crate::cert::hex(b)}),
    }
}

/// The inverse of [`value_to_json`]; `None` for JSON that maps to no value.
pub fn value_from_json(j: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Integer(i64::from(*b)),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64()?),
        },
        J::String(s) => Value::Text(s.as_bytes().to_vec()),
        J::Object(o) if o.len() == 1 => {
            if let Some(h) = o.get("blob").and_then(|h| h.as_str()) {
                if h.len() % 2 != 0 {
                    return None;
                }
                let bytes: Option<Vec<u8>> = (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                    .collect();
                Value::Blob(bytes?)
            } else {
                match o.get("real").and_then(|r| r.as_str())? {
                    "nan" => Value::Real(f64::NAN),
                    "inf" => Value::Real(f64::INFINITY),
                    "-inf" => Value::Real(f64::NEG_INFINITY),
                    _ => return None,
                }
            }
        }
        _ => return None,
    })
}

/// A row as a JSON object by column name; `null` when absent.
pub fn row_to_json(info: &TableInfo, row: Option<&Row>) -> serde_json::Value {
    match row {
        None => serde_json::Value::Null,
        Some(r) => serde_json::Value::Object(
            info.columns
                .iter()
                .zip(r)
                .map(|(c, v)| (c.name.clone(), value_to_json(v)))
                .collect(),
        ),
    }
}

/// The key of a row as a JSON array.
pub fn key_to_json(key: &[Value]) -> serde_json::Value {
    serde_json::Value::Array(key.iter().map(value_to_json).collect())
}

/// A row from a JSON object by column name (`null` = absent). Columns the object leaves
/// out come from `fill` (NULL without one); the key must stay `key`, since a row cannot
/// move to another key by conflict resolution. `what` names the source in errors.
pub fn row_from_json(
    info: &TableInfo,
    j: &serde_json::Value,
    key: &[Value],
    fill: Option<&Row>,
    what: &str,
) -> Result<Option<Row>, Error> {
    let obj = match j {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(o) => o,
        _ => {
            return Err(Error::Argument(format!(
                "{what} must be a JSON object of the row or null, not {j}"
            )))
        }
    };
    for name in obj.keys() {
        if !info
            .columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(name))
        {
            return Err(Error::Argument(format!(
                "{what}: table \"{}\" has no column \"{name}\"",
                info.name
            )));
        }
    }
    let mut row = Vec::with_capacity(info.columns.len());
    for (i, c) in info.columns.iter().enumerate() {
        let given = obj
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&c.name))
            .map(|(_, v)| v);
        let v = match given {
            Some(v) => value_from_json(v).ok_or_else(|| {
                Error::Argument(format!(
                    "{what}: column \"{}\" has no SQLite value: {v}",
                    c.name
                ))
            })?,
            None => fill.map_or(Value::Null, |f| f[i].clone()),
        };
        row.push(v);
    }
    let keys = key_columns(info);
    for (k, &i) in key.iter().zip(&keys) {
        if !row[i].as_ref().same(k.as_ref()) {
            return Err(Error::Argument(format!(
                "{what}: column \"{}\" is part of the primary key and must stay {}",
                info.columns[i].name,
                value_to_json(k)
            )));
        }
    }
    Ok(Some(row))
}

/// Reads and writes the rows of one table by key, with statements prepared once.
pub struct Rows<'d, D: Db + 'd> {
    db: &'d D,
    info: TableInfo,
    keys: Vec<usize>,
    select: Option<D::Stmt<'d>>,
    insert: Option<D::Stmt<'d>>,
    update: Option<D::Stmt<'d>>,
    delete: Option<D::Stmt<'d>>,
}

impl<'d, D: Db + 'd> Rows<'d, D> {
    /// Rows of `info`'s table.
    pub fn new(db: &'d D, info: &TableInfo) -> Self {
        Rows {
            db,
            keys: key_columns(info),
            info: info.clone(),
            select: None,
            insert: None,
            update: None,
            delete: None,
        }
    }

    /// The table.
    pub fn info(&self) -> &TableInfo {
        &self.info
    }

    fn key_where(&self, first_param: usize) -> String {
        self.keys
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                format!(
                    "{} = ?{}",
                    quote(&self.info.columns[i].name),
                    first_param + j
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn all_columns(&self) -> String {
        self.info
            .columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The row with `key` (declaration order), if there is one.
    pub fn get(&mut self, key: &[Value]) -> Result<Option<Row>, Error> {
        if self.select.is_none() {
            let sql = format!(
                "SELECT {} FROM main.{} WHERE {}",
                self.all_columns(),
                quote(&self.info.name),
                self.key_where(1)
            );
            self.select = Some(self.db.prepare(&sql)?);
        }
        let stmt = self.select.as_mut().expect("prepared above");
        let params: Vec<ValueRef<'_>> = key.iter().map(Value::as_ref).collect();
        stmt.bind_all(&params)?;
        let mut found = None;
        stmt.query::<Error>(&mut |row| {
            if found.is_none() {
                found = Some(row.iter().map(|v| ValueRef::to_owned(*v)).collect());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Makes the row with `key` be `target` (absent = deleted), given that it is now
    /// `current`. Plain INSERT, UPDATE or DELETE: capture records the write unless the
    /// apply guard is set.
    pub fn put(
        &mut self,
        key: &[Value],
        current: Option<&Row>,
        target: Option<&Row>,
    ) -> Result<(), Error> {
        match (current, target) {
            (None, None) => Ok(()),
            (Some(_), None) => {
                if self.delete.is_none() {
                    let sql = format!(
                        "DELETE FROM main.{} WHERE {}",
                        quote(&self.info.name),
                        self.key_where(1)
                    );
                    self.delete = Some(self.db.prepare(&sql)?);
                }
                let stmt = self.delete.as_mut().expect("prepared above");
                let params: Vec<ValueRef<'_>> = key.iter().map(Value::as_ref).collect();
                stmt.bind_all(&params)?;
                stmt.execute()?;
                Ok(())
            }
            (None, Some(row)) => {
                if self.insert.is_none() {
                    let params: Vec<String> = (1..=self.info.columns.len())
                        .map(|i| format!("?{i}"))
                        .collect();
                    let sql = format!(
                        "INSERT INTO main.{}({}) VALUES ({})",
                        quote(&self.info.name),
                        self.all_columns(),
                        params.join(", ")
                    );
                    self.insert = Some(self.db.prepare(&sql)?);
                }
                let stmt = self.insert.as_mut().expect("prepared above");
                let params: Vec<ValueRef<'_>> = row.iter().map(Value::as_ref).collect();
                stmt.bind_all(&params)?;
                stmt.execute()?;
                Ok(())
            }
            (Some(_), Some(row)) => {
                let others: Vec<usize> = (0..self.info.columns.len())
                    .filter(|i| !self.keys.contains(i))
                    .collect();
                if others.is_empty() {
                    return Ok(());
                }
                if self.update.is_none() {
                    let set: Vec<String> = others
                        .iter()
                        .enumerate()
                        .map(|(j, &i)| {
                            format!(
                                "{} = ?{}",
                                quote(&self.info.columns[i].name),
                                self.keys.len() + 1 + j
                            )
                        })
                        .collect();
                    let sql = format!(
                        "UPDATE main.{} SET {} WHERE {}",
                        quote(&self.info.name),
                        set.join(", "),
                        self.key_where(1)
                    );
                    self.update = Some(self.db.prepare(&sql)?);
                }
                let stmt = self.update.as_mut().expect("prepared above");
                let mut params: Vec<ValueRef<'_>> = key.iter().map(Value::as_ref).collect();
                params.extend(others.iter().map(|&i| row[i].as_ref()));
                stmt.bind_all(&params)?;
                stmt.execute()?;
                Ok(())
            }
        }
    }
}

/// One table's part of a [`ChangesetBuilder`]: its PK flags and encoded changes by key.
type TableChanges = (Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>);

/// Collects row changes of several tables and writes them as one canonical changeset
/// (tables in name order, changes in key order; DESIGN §3).
#[derive(Default)]
pub struct ChangesetBuilder {
    tables: BTreeMap<String, TableChanges>,
}

impl ChangesetBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the row with `key` of `info` goes from `old` to `new` (absent =
    /// no row). A row that does not change records nothing.
    pub fn add(&mut self, info: &TableInfo, key: &[Value], old: Option<&Row>, new: Option<&Row>) {
        let mut w = Writer::new();
        let n = info.columns.len();
        match (old, new) {
            (None, None) => return,
            (None, Some(row)) => {
                w.begin(Op::Insert, false);
                row.iter().for_each(|v| v.as_ref().encode(w.buf()));
            }
            (Some(row), None) => {
                w.begin(Op::Delete, false);
                row.iter().for_each(|v| v.as_ref().encode(w.buf()));
            }
            (Some(o), Some(nw)) => {
                let changed: Vec<bool> = (0..n)
                    .map(|i| info.columns[i].pk == 0 && !o[i].as_ref().same(nw[i].as_ref()))
                    .collect();
                if !changed.iter().any(|c| *c) {
                    return;
                }
                w.begin(Op::Update, false);
                for i in 0..n {
                    if info.columns[i].pk != 0 || changed[i] {
                        o[i].as_ref().encode(w.buf());
                    } else {
                        w.buf().push(UNDEFINED);
                    }
                }
                for i in 0..n {
                    if changed[i] {
                        nw[i].as_ref().encode(w.buf());
                    } else {
                        w.buf().push(UNDEFINED);
                    }
                }
            }
        }
        let entry = self
            .tables
            .entry(info.name.clone())
            .or_insert_with(|| (info.pk_flags(), BTreeMap::new()));
        entry.1.insert(key_bytes(key), w.finish());
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.tables.values().all(|(_, c)| c.is_empty())
    }

    /// The changeset (empty when nothing changed).
    pub fn finish(self) -> Vec<u8> {
        let mut w = Writer::new();
        for (name, (pk, changes)) in self.tables {
            if changes.is_empty() {
                continue;
            }
            w.table(&name, &pk);
            for bytes in changes.values() {
                w.buf().extend_from_slice(bytes);
            }
        }
        w.finish()
    }
}
