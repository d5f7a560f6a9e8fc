//! What the client knows of a user table: its columns, primary key and unique
//! constraints, read from SQLite's own pragmas; and the schema hash of DESIGN §4.

use crate::db::{Db, Stmt};
use crate::value::{Value, ValueRef};
use crate::Error;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name as declared.
    pub name: String,
    /// Declared type as written (may be empty).
    pub decl_type: String,
    /// 1-based position in the PRIMARY KEY, 0 if not part of it.
    pub pk: u8,
    /// Declared NOT NULL.
    pub notnull: bool,
    /// The DEFAULT expression as written, if any (not part of the shape or hash).
    pub default: Option<String>,
}

/// A user table as PersonalDB sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Name as stored in `sqlite_schema`.
    pub name: String,
    /// Columns in declaration order.
    pub columns: Vec<Column>,
    /// The key is an `INTEGER PRIMARY KEY` (an alias of the rowid).
    pub integer_pk: bool,
    /// Column sets of UNIQUE constraints and unique indexes on plain columns.
    pub unique: Vec<Vec<usize>>,
}

impl TableInfo {
    /// PK flags as written in a changeset header.
    pub fn pk_flags(&self) -> Vec<u8> {
        self.columns.iter().map(|c| c.pk).collect()
    }

    /// Indexes of the PK columns, in primary-key order.
    pub fn pk_columns(&self) -> Vec<usize> {
        let mut cols: Vec<usize> = (0..self.columns.len())
            .filter(|&i| self.columns[i].pk != 0)
            .collect();
        cols.sort_by_key(|&i| self.columns[i].pk);
        cols
    }

    /// The JSON shape stored in `pdb_tracked.columns`.
    pub fn shape_json(&self) -> String {
        let cols: Vec<serde_json::Value> = self
            .columns
            .iter()
            .map(|c| {
                serde_json::json!({"name": c.name, "type": c.decl_type, "pk": c.pk, "notnull": c.notnull})
            })
            .collect();
        serde_json::Value::Array(cols).to_string()
    }

    /// This table's part of the schema hash input (DESIGN §4).
    pub fn hash_input(&self, out: &mut Vec<u8>) {
        put_str(out, &self.name);
        out.extend_from_slice(&(self.columns.len() as u16).to_be_bytes());
        for c in &self.columns {
            put_str(out, &c.name);
            put_str(out, &c.decl_type.to_uppercase());
            out.push(c.pk);
            out.push(u8::from(c.notnull));
        }
    }
}

/// `str(x)` of DESIGN §4: a 2-byte big-endian length, then the UTF-8 bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The schema hash of DESIGN §4 over `tables`, which must be in name order.
pub fn schema_hash(tables: &[TableInfo]) -> [u8; 32] {
    let mut input = b"pdb/v1 schema".to_vec();
    for t in tables {
        t.hash_input(&mut input);
    }
    *blake3::hash(&input).as_bytes()
}

/// Quotes an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn text(v: &ValueRef<'_>) -> String {
    match v {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(i) => i.to_string(),
        _ => String::new(),
    }
}

fn int(v: &ValueRef<'_>) -> i64 {
    match v {
        ValueRef::Integer(i) => *i,
        _ => 0,
    }
}

/// Reads a table of the `main` schema, refusing what PersonalDB cannot track; `name` is
/// matched case-insensitively, as SQL does.
pub fn table_info<D: Db>(db: &D, name: &str) -> Result<TableInfo, Error> {
    table_info_in(db, "main", name)
}

/// [`table_info`] of a table in the attached database `schema` (an identifier the
/// caller chose, never user input).
pub fn table_info_in<D: Db>(db: &D, schema: &str, name: &str) -> Result<TableInfo, Error> {
    let found = {
        let mut stmt = db.prepare(&format!(
            "SELECT name, type, sql FROM {}.sqlite_schema \
             WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE",
            quote(schema)
        ))?;
        stmt.bind(1, ValueRef::Text(name.as_bytes()))?;
        let mut found = None;
        stmt.query::<Error>(&mut |row| {
            found = Some((text(&row[0]), text(&row[1]), text(&row[2])));
            Ok(())
        })?;
        found
    };
    let Some((name, kind, sql)) = found else {
        return Err(Error::Table(format!("no such table: \"{name}\"")));
    };
    if kind == "view" {
        return Err(Error::Table(format!(
            "\"{name}\" is a view; only tables can be tracked"
        )));
    }
    let lower = name.to_lowercase();
    if lower.starts_with("sqlite_") || lower.starts_with("pdb_") {
        return Err(Error::Table(format!(
            "\"{name}\" is an internal table and cannot be tracked"
        )));
    }
    if sql
        .trim_start()
        .get(..14)
        .is_some_and(|s| s.eq_ignore_ascii_case("CREATE VIRTUAL"))
    {
        return Err(Error::Table(format!(
            "\"{name}\" is a virtual table and cannot be tracked"
        )));
    }
    let without_rowid = table_options(&sql).contains("WITHOUT");

    let mut columns = Vec::new();
    let mut generated = None;
    let mut not_utf8 = None;
    {
        let mut stmt = db.prepare(
            "SELECT name, type, \"notnull\", pk, hidden, dflt_value FROM pragma_table_xinfo(?1, ?2) \
             ORDER BY cid",
        )?;
        stmt.bind(1, ValueRef::Text(name.as_bytes()))?;
        stmt.bind(2, ValueRef::Text(schema.as_bytes()))?;
        stmt.query::<Error>(&mut |row| {
            let col = Column {
                name: text(&row[0]),
                decl_type: text(&row[1]),
                notnull: int(&row[2]) != 0,
                pk: u8::try_from(int(&row[3])).unwrap_or(u8::MAX),
                default: match row[5] {
                    ValueRef::Null => None,
                    ref v => Some(text(v)),
                },
            };
            if int(&row[4]) != 0 {
                generated.get_or_insert(col.name.clone());
            }
            if matches!(row[0], ValueRef::Text(t) if std::str::from_utf8(t).is_err()) {
                not_utf8.get_or_insert(col.name.clone());
            }
            columns.push(col);
            Ok(())
        })?;
    }
    // Its name as read here (U+FFFD for the bad bytes) names no column, and SQLite
    // would take the quoted name in a query for a string literal.
    if let Some(col) = not_utf8 {
        return Err(Error::Table(format!(
            "table \"{name}\": column name \"{col}\" is not valid UTF-8"
        )));
    }
    if let Some(col) = generated {
        return Err(Error::Table(format!(
            "table \"{name}\": generated column \"{col}\" is not supported"
        )));
    }
    let pk: Vec<&Column> = columns.iter().filter(|c| c.pk != 0).collect();
    if pk.is_empty() {
        return Err(Error::Table(format!(
            "table \"{name}\" has no PRIMARY KEY; declare one (INTEGER PRIMARY KEY, a composite key, or WITHOUT ROWID)"
        )));
    }
    if pk.len() > 255 || columns.len() > 2000 {
        return Err(Error::Table(format!(
            "table \"{name}\" has too many columns"
        )));
    }
    let integer_pk =
        !without_rowid && pk.len() == 1 && pk[0].decl_type.eq_ignore_ascii_case("INTEGER");
    if !without_rowid && !integer_pk {
        if let Some(c) = pk.iter().find(|c| !c.notnull) {
            return Err(Error::Table(format!(
                "table \"{name}\": primary key column \"{}\" allows NULL; declare it NOT NULL \
                 (or use INTEGER PRIMARY KEY or WITHOUT ROWID)",
                c.name
            )));
        }
    }

    let unique = unique_constraints(db, schema, &name, &columns)?;
    Ok(TableInfo {
        name,
        columns,
        integer_pk,
        unique,
    })
}

/// The table options after the column list (`WITHOUT ROWID`, `STRICT`), upper-cased.
fn table_options(sql: &str) -> String {
    sql.rfind(')')
        .map(|i| sql[i + 1..].to_uppercase())
        .unwrap_or_default()
}

fn unique_constraints<D: Db>(
    db: &D,
    schema: &str,
    table: &str,
    columns: &[Column],
) -> Result<Vec<Vec<usize>>, Error> {
    let mut indexes = Vec::new();
    {
        let mut stmt = db.prepare(
            "SELECT name FROM pragma_index_list(?1, ?2) WHERE \"unique\" AND origin <> 'pk'",
        )?;
        stmt.bind(1, ValueRef::Text(table.as_bytes()))?;
        stmt.bind(2, ValueRef::Text(schema.as_bytes()))?;
        stmt.query::<Error>(&mut |row| {
            indexes.push(text(&row[0]));
            Ok(())
        })?;
    }
    let mut out = Vec::new();
    for index in indexes {
        let mut cols = Vec::new();
        let mut plain = true;
        let mut stmt =
            db.prepare("SELECT cid, name FROM pragma_index_info(?1, ?2) ORDER BY seqno")?;
        stmt.bind(1, ValueRef::Text(index.as_bytes()))?;
        stmt.bind(2, ValueRef::Text(schema.as_bytes()))?;
        stmt.query::<Error>(&mut |row| {
            // cid < 0 is the rowid or an expression: such an index cannot be probed
            // with NEW.column values, so it is left out (see ARCHITECTURE.md).
            match usize::try_from(int(&row[0])) {
                Ok(cid) if cid < columns.len() => cols.push(cid),
                _ => plain = false,
            }
            Ok(())
        })?;
        if plain && !cols.is_empty() {
            out.push(cols);
        }
    }
    Ok(out)
}

/// Reads a stored JSON shape back (for comparing with the live table).
pub fn shape_from_json(name: &str, json: &str) -> Option<Vec<Column>> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.as_array()?
        .iter()
        .map(|c| {
            Some(Column {
                name: c.get("name")?.as_str()?.to_string(),
                decl_type: c.get("type")?.as_str()?.to_string(),
                pk: u8::try_from(c.get("pk")?.as_u64()?).ok()?,
                notnull: c.get("notnull")?.as_bool()?,
                default: None,
            })
        })
        .collect::<Option<Vec<_>>>()
        .filter(|cols| !cols.is_empty() && !name.is_empty())
}

/// Converts an owned value for display in error messages.
pub fn display_value(v: &Value) -> String {
    let mut s = String::new();
    crate::changeset::value_json(&mut s, v.as_ref());
    s
}

/// A column's type affinity (SQLite's "Determination Of Column Affinity").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// INTEGER.
    Integer,
    /// TEXT.
    Text,
    /// BLOB (none).
    Blob,
    /// REAL.
    Real,
    /// NUMERIC.
    Numeric,
}

/// The affinity of a declared type (SQLite's rules, in order).
pub fn affinity(decl: &str) -> Affinity {
    let t = decl.to_ascii_uppercase();
    if t.contains("INT") {
        Affinity::Integer
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        Affinity::Text
    } else if t.contains("BLOB") || t.is_empty() {
        Affinity::Blob
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// Whether storing `v` in a column of affinity `a` keeps it exactly (type and bits).
/// Conservative: `false` only costs a read of the row after the apply.
pub fn kept_as_is(a: Affinity, v: &Value) -> bool {
    match v {
        Value::Null | Value::Blob(_) => true,
        Value::Integer(_) => matches!(a, Affinity::Integer | Affinity::Numeric | Affinity::Blob),
        Value::Text(_) => matches!(a, Affinity::Text | Affinity::Blob),
        // NaN is stored as NULL, and integral reals may be stored as integers (which
        // loses the sign of -0.0).
        Value::Real(r) => {
            matches!(a, Affinity::Real | Affinity::Blob)
                && r.is_finite()
                && (*r != 0.0 || r.is_sign_positive())
        }
    }
}

#[cfg(all(test, feature = "rusqlite"))]
mod tests {
    use super::*;

    /// Found by the `snapshot_image` fuzz target (`fuzz/regressions/snapshot_image/
    /// non-utf8-column-name`): a column whose name is not UTF-8. Read lossily it named no
    /// column, and SQLite took the quoted name in the state query for a string literal,
    /// so the digest covered that literal instead of the column's values.
    #[test]
    fn a_column_name_that_is_not_utf8_is_refused() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, x); PRAGMA writable_schema = ON;")
            .unwrap();
        let sql: &[u8] = b"CREATE TABLE t(id INTEGER PRIMARY KEY, \"\xff\")";
        c.execute(
            "UPDATE sqlite_schema SET sql = CAST(?1 AS TEXT) WHERE name = 't'",
            [sql],
        )
        .unwrap();
        c.execute_batch("PRAGMA writable_schema = RESET").unwrap();
        match table_info(&c, "t") {
            Err(Error::Table(m)) => assert_eq!(
                m,
                "table \"t\": column name \"\u{fffd}\" is not valid UTF-8"
            ),
            other => panic!("{other:?}"),
        }
        // The same table with a UTF-8 name is one like any other.
        c.execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY, \"é\")")
            .unwrap();
        assert_eq!(table_info(&c, "u").unwrap().columns[1].name, "é");
    }
}
