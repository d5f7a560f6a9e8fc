//! Shared harness for the integration tests: locating and loading the real `libpdb`,
//! and comparing databases and changesets.
//!
//! The session extension of rusqlite's bundled SQLite is the oracle throughout: the
//! tests run the same writes under both and require the same changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pdb_client::changeset::{self, Writer};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

pub mod device;
pub mod fake;
pub mod witness;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Builds `package` in release mode (once per test process and package, so that tests
/// never run against a stale artifact) and returns `target/release/<file>`.
pub fn release_artifact(package: &'static str, file: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&package) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--release", "-p", package])
            .current_dir(root());
        // What cargo set for this test binary must not reach the build: `ring`'s build
        // script reruns when CARGO_PKG_NAME, CARGO_MANIFEST_DIR, OUT_DIR, … differ, so
        // the release tree would be rebuilt here and again by every plain `cargo build
        // --release` after it (README's commands, the host tests), minutes each time.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if crate_env_var(&name) {
                build.env_remove(&*name);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building {package} failed");
        built.push(package);
    }
    root().join("target/release").join(file)
}

/// Whether `name` is one of the variables cargo sets for the crate it runs (not the
/// user's own cargo settings such as CARGO_HOME or CARGO_TARGET_DIR).
fn crate_env_var(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// Path of the release `libpdb`.
pub fn libpdb() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| release_artifact("pdb", "libpdb.so"))
}

/// Loads `libpdb` into `conn`.
pub fn load(conn: &Connection) {
    // Safety: loading native code is inherently unchecked; this is the library built
    // from this workspace, loaded by its documented entry point.
    unsafe {
        conn.load_extension_enable()
            .expect("enable extension loading");
        conn.load_extension(libpdb(), Some("sqlite3_pdb_init"))
            .expect("load libpdb");
        conn.load_extension_disable()
            .expect("disable extension loading");
    }
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
