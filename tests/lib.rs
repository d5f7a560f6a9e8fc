//! Shared harness for the integration tests: locating and loading the real `libpdb`,
//! and comparing databases and changesets.
//!
//! The session extension of rusqlite's bundled SQLite is the oracle throughout: the
//! tests run the same writes under both and require the same changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pdb_client::changeset::{self, Writer};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

pub mod device;
pub mod fake;
pub mod inproc;
pub mod witness;

pub use pdb_testkit::{release_artifact, root};

/// Path of the release `libpdb`.
pub fn libpdb() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| release_artifact("personaldb", "libpdb.so"))
}

/// Loads `libpdb` into `conn`.
pub fn load(conn: &Connection) {
    pdb_testkit::load_pdb(conn, libpdb()).expect("load libpdb");
}

/// An in-memory database with `libpdb` loaded.
pub fn memory_with_pdb() -> Connection {
    let conn = Connection::open_in_memory().expect("open");
    load(&conn);
    conn
}

/// Every row of `table`, each value in changeset encoding, sorted: an exact,
/// layout-independent picture of the table (REAL compared bit for bit).
pub fn dump(conn: &Connection, table: &str) -> Vec<Vec<Vec<u8>>> {
    let sql = format!("SELECT * FROM \"{}\"", table.replace('"', "\"\""));
    let mut stmt = conn.prepare(&sql).expect("prepare dump");
    let n = stmt.column_count();
    let mut rows: Vec<Vec<Vec<u8>>> = stmt
        .query_map([], |row| {
            Ok((0..n)
                .map(|i| {
                    let mut out = Vec::new();
                    to_client(row.get_ref_unwrap(i)).encode(&mut out);
                    out
                })
                .collect())
        })
        .expect("query dump")
        .collect::<Result<_, _>>()
        .expect("read dump");
    rows.sort();
    rows
}

/// Converts a rusqlite value to the client's.
pub fn to_client(v: ValueRef<'_>) -> pdb_client::ValueRef<'_> {
    match v {
        ValueRef::Null => pdb_client::ValueRef::Null,
        ValueRef::Integer(i) => pdb_client::ValueRef::Integer(i),
        ValueRef::Real(r) => pdb_client::ValueRef::Real(r),
        ValueRef::Text(t) => pdb_client::ValueRef::Text(t),
        ValueRef::Blob(b) => pdb_client::ValueRef::Blob(b),
    }
}

/// One change, owned, for set comparisons: table, op byte, indirect, old and new fields.
pub type ChangeKey = (String, u8, bool, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The changes of a changeset as a sorted list (each table header's PK flags are
/// returned separately, keyed by table).
pub fn change_set(blob: &[u8]) -> (BTreeMap<String, Vec<u8>>, Vec<ChangeKey>) {
    let mut headers = BTreeMap::new();
    let mut out = Vec::new();
    for (h, changes) in changeset::parse(blob).expect("changeset parses") {
        headers.insert(h.name.to_string(), h.pk.to_vec());
        for c in changes {
            out.push((
                h.name.to_string(),
                c.op.byte(),
                c.indirect,
                c.old.iter().map(|f| f.to_vec()).collect(),
                c.new.iter().map(|f| f.to_vec()).collect(),
            ));
        }
    }
    out.sort();
    (headers, out)
}

/// Rewrites a changeset in canonical order (DESIGN §3), independently of the client's
/// own encoder: tables by name bytes, changes by their PK fields in column order.
pub fn canonical(blob: &[u8]) -> Vec<u8> {
    /// (sort key, encoded change) pairs of one table.
    type Changes = Vec<(Vec<u8>, Vec<u8>)>;
    let mut tables: BTreeMap<String, (Vec<u8>, Changes)> = BTreeMap::new();
    for (h, changes) in changeset::parse(blob).expect("changeset parses") {
        let entry = tables
            .entry(h.name.to_string())
            .or_insert_with(|| (h.pk.to_vec(), Vec::new()));
        for c in changes {
            let mut w = Writer::new();
            w.change(&c);
            entry.1.push((c.key(h.pk), w.finish()));
        }
    }
    let mut w = Writer::new();
    for (name, (pk, mut changes)) in tables {
        changes.sort();
        w.table(&name, &pk);
        for (_, bytes) in changes {
            w.buf().extend_from_slice(&bytes);
        }
    }
    w.finish()
}

/// `select pdb_changeset()` as bytes (empty when NULL).
pub fn pending(conn: &Connection) -> Vec<u8> {
    conn.query_row("SELECT pdb_changeset()", [], |r| {
        r.get::<_, Option<Vec<u8>>>(0)
    })
    .expect("pdb_changeset")
    .unwrap_or_default()
}

/// Applies `blob` with the real session extension (`sqlite3changeset_apply_strm`),
/// answering conflicts as `pdb_apply`'s policy of that name does: `abort` aborts on
/// everything; `replace` replaces DATA and CONFLICT, omits NOTFOUND, aborts otherwise;
/// `skip` omits everything.
pub fn session_apply(conn: &Connection, blob: &[u8], policy: &str) -> rusqlite::Result<()> {
    use rusqlite::session::{ConflictAction as A, ConflictType as T};
    let policy = policy.to_string();
    let mut input: &[u8] = blob;
    conn.apply_strm(&mut input, None::<fn(&str) -> bool>, move |kind, _| match (
        policy.as_str(),
        kind,
    ) {
        ("skip", _) => A::SQLITE_CHANGESET_OMIT,
        ("replace", T::SQLITE_CHANGESET_DATA | T::SQLITE_CHANGESET_CONFLICT) => {
            A::SQLITE_CHANGESET_REPLACE
        }
        ("replace", T::SQLITE_CHANGESET_NOTFOUND) => A::SQLITE_CHANGESET_OMIT,
        _ => A::SQLITE_CHANGESET_ABORT,
    })
}
