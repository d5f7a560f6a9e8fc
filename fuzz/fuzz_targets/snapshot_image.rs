//! Fuzz target: installing a snapshot image (`pdb_client::sync::bootstrap::
//! install_attached`, DESIGN §4, §6), the file a new device (or one whose history was
//! compacted away) downloads from the witness, checks, and installs under its pending
//! local changes.
//!
//! Input: the bytes of a would-be snapshot file, a SQLite database, possibly corrupt
//! or hostile (views, triggers, tables without a primary key, generated columns,
//! WITHOUT ROWID, odd types and indexes). Byte 63 (the low byte of the header's
//! `user_version`, which nothing reads) picks the device and the witness: bit 0 the
//! device, 0 = bare (schema and `pdb_open` only), 1 = tracking
//! `t(id INTEGER PRIMARY KEY, v)` with the uncommitted row `(1, 'local')`; bit 1 = the
//! manifest's state digest is off by a bit, bit 2 = its schema hash is.
//!
//! Each input: the device (an in-memory main database, restored from its template by
//! page copy when the last input changed it) attaches the bytes, written to a temporary
//! file, as `pdb_snapshot`. The target plays a witness that is honest but maybe buggy:
//! it reads the image's tables with the client's own functions (`table_info_in`,
//! `schema_hash`, `history::state_in`) and signs, with the key the device pins, a
//! manifest of seq 1 with their schema hash and state digest, the file's size and
//! BLAKE3, and the matching certificate (same head and state). When its own reading
//! fails, it signs arbitrary hashes instead. Then `install_attached`.
//!
//! What must hold (DESIGN §7: 5 nothing unverified is installed, 6 the host survives,
//! 2 no lost write):
//! - `install_attached` never panics, leaves no transaction open and the image
//!   detachable (no statement left reading it).
//! - It fails when the target's reading of the image failed, when the image holds
//!   anything but tables and indexes (a view, a trigger), or when the manifest was
//!   bent; when it fails, every row of every table of the main database (its
//!   `sqlite_schema`, the `pdb_*` bookkeeping, the user tables) and the temp schema is
//!   exactly as before.
//! - When it succeeds:
//!   - the head is (1, the manifest's head), `pdb_commits` holds just the snapshot's
//!     certificate, `pdb_verify()` passes, the stored state vector has the manifest's
//!     digest;
//!   - the tracked tables are exactly the image's tables, with its schema hash; the
//!     main database holds everything it held before and nothing new but the image's
//!     tables and indexes (same type, name and table) and PersonalDB's own (shadow
//!     tables, capture triggers, SQLite's autoindexes);
//!   - the tables minus the pending changes (undone in a transaction rolled back
//!     after) hold exactly the image's rows, value for value, and have the manifest's
//!     state digest;
//!   - on the bare device nothing is pending, queued or in conflict; on the other, the
//!     uncommitted row `(1, 'local')` survives as written or is in `pdb_conflicts`.
//!
//! `PDB_FUZZ_STATS=1` prints outcome counts every 10,000 inputs; `PDB_FUZZ_STATS=each`
//! prints every input's outcome. `PDB_FUZZ_WRITE_SEEDS=<dir>` writes the seeds
//! (`fuzz/seeds/snapshot_image/`) when the target starts: run the built target on one
//! input file, an empty one for instance.
#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use pdb_client::apply::{apply, OnConflict};
use pdb_client::cert::{genesis, hex, next_head, Certificate, Hash};
use pdb_client::changeset::invert;
use pdb_client::rows::{key_to_json, Row};
use pdb_client::schema::{quote, schema_hash, table_info_in, TableInfo};
use pdb_client::snapshot::Manifest;
use pdb_client::state::StateVector;
use pdb_client::sync::bootstrap::install_attached;
use pdb_client::sync::config::{self, Config};
use pdb_client::sync::rebase::{survived, SNAPSHOT_SCHEMA};
use pdb_client::{capture, history, queue, Value};
use pdb_fuzz::{
    dump, dump_queries, encode_row, error_kind, from_rusqlite, open, restore, show, show_statement,
    stats_level, Conn, Dump, Tables,
};
use rusqlite::types::ValueRef as SqlRef;
use rusqlite::OptionalExtension;

const GROUP: &str = "g";
/// Where `pdb_open` points the device: nothing listens there, nothing connects.
const URL: &str = "http://127.0.0.1:9";
/// The fixed witness key (any 32 bytes are an Ed25519 secret key).
const WITNESS_SECRET: [u8; 32] = [0x5a; 32];
const CREATED_AT: i64 = 1_700_000_000_000;
/// The uncommitted row of device 1.
const LOCAL_ID: i64 = 1;
const LOCAL_V: &str = "local";

/// A `sqlite_schema` entry: type, name, tbl_name.
type Object = (String, String, String);

/// A device the input is installed on, as built.
struct Device {
    tpl: Conn,
    /// One query per table of main (and the two schemas).
    queries: Vec<String>,
    before: Dump,
    objects: BTreeSet<Object>,
}

#[derive(Default)]
struct Stats {
    runs: u64,
    attach_failed: u64,
    /// Refused where the target expected it (its reading failed, a view or trigger,
    /// a bent manifest).
    refused_expected: u64,
    /// Installed, by device.
    installed: [u64; 2],
    /// Refused although the target's own reading succeeded, by error (digits as #).
    refused_honest: BTreeMap<String, u64>,
}

struct Target {
    key: SigningKey,
    cfg: Config,
    devices: [Device; 2],
    db: Conn,
    /// Which device `db` is as built, `None` after an install changed it.
    holds: Option<usize>,
    dir: PathBuf,
    file: PathBuf,
    stats: Stats,
    /// `PDB_FUZZ_STATS`: 0 unset, 1 counts, 2 each input.
    print_stats: u8,
}

thread_local! {
    static TARGET: RefCell<Option<Target>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    TARGET.with(|t| {
        let mut t = t.borrow_mut();
        t.get_or_insert_with(Target::new).check(data);
    })
});

/// What the target, as witness, read from the image.
struct Reading {
    /// The image's tables in name order.
    infos: Vec<TableInfo>,
    state: StateVector,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Target {
    fn new() -> Target {
        let key = SigningKey::from_bytes(&WITNESS_SECRET);
        let key_hex = hex(&key.verifying_key().to_bytes());
        let devices = [device(0, &key_hex), device(1, &key_hex)];
        let mut db = open();
        restore(&devices[0].tpl, &mut db);
        let cfg = config::load(&db).expect("config");
        let dir =
            std::env::temp_dir().join(format!("pdb-fuzz-snapshot-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let file = dir.join("image.db");
        let print_stats = stats_level();
        if let Some(seeds) = std::env::var_os("PDB_FUZZ_WRITE_SEEDS") {
            write_seeds(Path::new(&seeds), &dir);
        }
        Target {
            key,
            cfg,
            devices,
            db,
            holds: Some(0),
            dir,
            file,
            stats: Stats::default(),
            print_stats,
        }
    }

    fn remove_files(&self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.file.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }

    fn check(&mut self, data: &[u8]) {
        let flags = data.get(63).copied().unwrap_or(0);
        let case = usize::from(flags & 1);
        let bent = (flags >> 1) & 3;
        if self.holds != Some(case) {
            restore(&self.devices[case].tpl, &mut self.db);
            self.holds = Some(case);
        }
        self.remove_files();
        std::fs::write(&self.file, data).expect("write the image");
        let attached = self.db.execute(
            &format!("ATTACH ?1 AS {}", quote(SNAPSHOT_SCHEMA)),
            [self.file.to_str().expect("UTF-8 path")],
        );
        self.stats.runs += 1;
        if attached.is_err() {
            self.stats.attach_failed += 1;
            if self.print_stats == 2 {
                eprintln!("snapshot_image: attach failed: {attached:?}");
            }
            self.remove_files();
            return;
        }
        self.install(data, case, bent);
        let detached = self
            .db
            .execute_batch(&format!("DETACH {}", quote(SNAPSHOT_SCHEMA)));
        assert!(
            detached.is_ok(),
            "the image cannot be detached after install_attached: {detached:?}"
        );
        self.remove_files();
        if self.print_stats == 1 && self.stats.runs.is_multiple_of(10_000) {
            let s = &self.stats;
            eprintln!(
                "snapshot_image: {} runs, {} not attachable, {} refused as expected, installed {:?}, \
                 refused though read: {:?}",
                s.runs, s.attach_failed, s.refused_expected, s.installed, s.refused_honest
            );
        }
    }

    /// The target's own reading of the attached image, as an honest witness does it.
    fn read_image(&self) -> Result<Reading, String> {
        let names: Vec<String> = self
            .db
            .prepare(&format!(
                "SELECT name FROM {}.sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                quote(SNAPSHOT_SCHEMA)
            ))
            .and_then(|mut s| s.query_map([], |r| Ok(text(r.get_ref(0)?)))?.collect())
            .map_err(|e| e.to_string())?;
        let mut infos = Vec::new();
        for n in names {
            infos.push(table_info_in(&self.db, SNAPSHOT_SCHEMA, &n).map_err(|e| e.to_string())?);
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let state =
            history::state_in(&self.db, SNAPSHOT_SCHEMA, &infos).map_err(|e| e.to_string())?;
        Ok(Reading { infos, state })
    }

    fn install(&mut self, data: &[u8], case: usize, bent: u8) {
        let reading = self.read_image();
        let image_objects = objects(&self.db, SNAPSHOT_SCHEMA);
        // Anything but tables and indexes must be refused: SQLite's own (named
        // sqlite_...) excepted, and entries without a name, which SQLite loads as nothing
        // (it refuses one with SQL text).
        let foreign: Vec<Object> = self
            .db
            .prepare(&format!(
                "SELECT type, name, tbl_name FROM {}.sqlite_schema \
                 WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                 AND type IS NOT 'table' AND type IS NOT 'index'",
                quote(SNAPSHOT_SCHEMA)
            ))
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        text(r.get_ref(0)?),
                        text(r.get_ref(1)?),
                        text(r.get_ref(2)?),
                    ))
                })?
                .collect()
            })
            .unwrap_or_default();
        let (mut schema, mut state): (Hash, Hash) = match &reading {
            Ok(r) => (schema_hash(&r.infos), r.state.digest()),
            Err(_) => ([0xee; 32], [0xdd; 32]),
        };
        if bent & 1 != 0 {
            state[0] ^= 1;
        }
        if bent & 2 != 0 {
            schema[0] ^= 1;
        }
        let file_hash = *blake3::hash(data).as_bytes();
        let changeset_hash = *blake3::hash(b"").as_bytes();
        let prev = genesis(GROUP);
        let head = next_head(&prev, 1, &changeset_hash);
        let m = Manifest::sign(
            &self.key,
            GROUP,
            1,
            head,
            state,
            data.len() as u64,
            file_hash,
            schema,
            CREATED_AT,
        );
        let cert = Certificate::sign(
            &self.key,
            GROUP,
            1,
            prev,
            head,
            state,
            changeset_hash,
            "snapshot",
            CREATED_AT,
        );
        let must_fail =
            reading.is_err() || image_objects.is_err() || bent != 0 || !foreign.is_empty();

        let result = install_attached(&self.db, &self.cfg, &m, &cert, "");
        let ctx = format!(
            "device {case}, manifest {}, reading {}, foreign objects {foreign:?}, result {result:?}",
            match bent {
                0 => "honest",
                1 => "with a bent state",
                2 => "with a bent schema hash",
                _ => "with a bent state and schema hash",
            },
            match &reading {
                Ok(r) => format!(
                    "ok ({} tables: {:?})",
                    r.infos.len(),
                    r.infos.iter().map(|i| &i.name).collect::<Vec<_>>()
                ),
                Err(e) => format!("failed ({e})"),
            }
        );
        if self.print_stats == 2 {
            eprintln!("snapshot_image: {ctx}");
        }
        assert!(self.db.is_autocommit(), "{ctx}: left a transaction open");
        match result {
            Err(e) => {
                let after = dump(&self.db, &self.devices[case].queries);
                if after != self.devices[case].before {
                    panic!(
                        "{ctx}: refused but changed the database:\n{}\nwas\n{}",
                        show(&self.db, &self.devices[case].queries),
                        show(&self.devices[case].tpl, &self.devices[case].queries)
                    );
                }
                if must_fail {
                    self.stats.refused_expected += 1;
                } else {
                    let kind = error_kind(&e, 60);
                    *self.stats.refused_honest.entry(kind).or_default() += 1;
                }
            }
            Ok(conflicts) => {
                self.holds = None;
                assert!(!must_fail, "{ctx}: installed an image it had to refuse");
                let reading = reading.expect("checked above");
                let image_objects = image_objects.expect("checked above");
                self.check_ok(case, &m, &cert, &reading, &image_objects, conflicts, &ctx);
                self.stats.installed[case] += 1;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_ok(
        &self,
        case: usize,
        m: &Manifest,
        cert: &Certificate,
        reading: &Reading,
        image_objects: &BTreeSet<Object>,
        conflicts: usize,
        ctx: &str,
    ) {
        let db = &self.db;
        assert_eq!(
            config::head(db, GROUP).expect("head"),
            (1, m.head),
            "{ctx}: head"
        );
        let commits: i64 = db
            .query_row("SELECT count(*) FROM main.pdb_commits", [], |r| r.get(0))
            .expect("pdb_commits");
        assert_eq!(commits, 1, "{ctx}: rows of pdb_commits");
        assert_eq!(
            pdb_client::sync::certificate(db, 1).expect("certificate"),
            Some(cert.clone()),
            "{ctx}: stored certificate"
        );
        if let Err(e) = pdb_client::sync::verify(db) {
            panic!("{ctx}: pdb_verify fails after the install: {e}");
        }
        assert_eq!(
            config::state(db).expect("state vector").digest(),
            m.state,
            "{ctx}: stored state vector"
        );

        // The tracked tables are the image's.
        let tracked: Vec<TableInfo> = capture::tracked(db)
            .unwrap_or_else(|e| panic!("{ctx}: tracked tables: {e}"))
            .into_iter()
            .map(|t| t.info)
            .collect();
        let names = |infos: &[TableInfo]| infos.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&tracked),
            names(&reading.infos),
            "{ctx}: tracked tables"
        );
        assert_eq!(
            schema_hash(&tracked),
            m.schema_hash,
            "{ctx}: schema of the tracked tables"
        );

        // Nothing dropped, nothing new but the image's tables and indexes and
        // PersonalDB's own.
        let before = &self.devices[case].objects;
        let after = objects(db, "main").expect("main.sqlite_schema");
        if let Some(gone) = before.difference(&after).next() {
            panic!("{ctx}: {gone:?} is gone from the main database");
        }
        // PersonalDB's own: each tracked table's shadow table and capture triggers.
        let ids: Vec<(i64, String)> = db
            .prepare("SELECT id, name FROM main.pdb_tracked")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("pdb_tracked");
        let mut pdb: BTreeSet<Object> = BTreeSet::new();
        for (id, table) in &ids {
            let shadow = format!("pdb_shadow_{id}");
            pdb.insert(("table".into(), shadow.clone(), shadow));
            for t in ["bi", "bu", "ai", "au", "ak", "ad"] {
                pdb.insert(("trigger".into(), format!("pdb_{id}_{t}"), table.clone()));
            }
        }
        for o in after.difference(before) {
            let (kind, name, _) = o;
            let image_own = (kind == "table" || kind == "index") && image_objects.contains(o);
            let pdb_own = pdb.contains(o)
                || (kind == "index" && name.starts_with("sqlite_autoindex_"))
                || (kind == "table" && name == "sqlite_sequence");
            assert!(
                image_own || pdb_own,
                "{ctx}: the install created {o:?}, which is no table or index of the image"
            );
        }
        let temp: i64 = db
            .query_row("SELECT count(*) FROM temp.sqlite_schema", [], |r| r.get(0))
            .expect("temp.sqlite_schema");
        assert_eq!(temp, 0, "{ctx}: the install created temp objects");

        // Under the pending changes, the image's rows.
        let pending =
            queue::pending_changeset(db).unwrap_or_else(|e| panic!("{ctx}: pending: {e}"));
        db.execute_batch("BEGIN").expect("BEGIN");
        if let Some(cs) = &pending {
            let inverse =
                invert(cs).unwrap_or_else(|e| panic!("{ctx}: invert the pending changes: {e}"));
            if let Err(e) = apply(db, &inverse, OnConflict::Abort) {
                panic!("{ctx}: the pending changes cannot be undone: {e}");
            }
        }
        for info in &reading.infos {
            let here = rows(db, "main", info);
            let there = rows(db, SNAPSHOT_SCHEMA, info);
            assert!(
                here == there,
                "{ctx}: table {} (minus the pending changes) holds {} rows, not the image's {} \
                 (or other values):\n{}\nimage:\n{}",
                info.name,
                here.len(),
                there.len(),
                show_rows(db, "main", info),
                show_rows(db, SNAPSHOT_SCHEMA, info)
            );
        }
        let state = history::state_of(db, &reading.infos).expect("state of the tables");
        assert_eq!(
            hex(&state.digest()),
            hex(&m.state),
            "{ctx}: state digest of the tables (minus the pending changes)"
        );
        db.execute_batch("ROLLBACK").expect("ROLLBACK");

        let count = |table: &str| -> i64 {
            db.query_row(&format!("SELECT count(*) FROM main.{table}"), [], |r| {
                r.get(0)
            })
            .expect("count")
        };
        assert_eq!(count("pdb_upload_queue"), 0, "{ctx}: queued commits");
        assert_eq!(
            count("pdb_conflicts") as usize,
            conflicts,
            "{ctx}: conflicts reported"
        );
        if case == 0 {
            assert_eq!(pending, None, "{ctx}: pending changes on the bare device");
            assert_eq!(conflicts, 0, "{ctx}: conflicts on the bare device");
            return;
        }
        // No lost write: (1, 'local') is there as written, or in pdb_conflicts. As
        // written by rebase's own rule: an insert, so against no base row.
        let now: Option<Row> = db
            .query_row("SELECT id, v FROM main.t WHERE id = ?1", [LOCAL_ID], |r| {
                Ok(vec![
                    from_rusqlite(r.get_ref(0)?).to_owned(),
                    from_rusqlite(r.get_ref(1)?).to_owned(),
                ])
            })
            .optional()
            .expect("read the local row");
        let local: Row = vec![
            Value::Integer(LOCAL_ID),
            Value::Text(LOCAL_V.as_bytes().to_vec()),
        ];
        let survived = survived(None, Some(&local), now.as_ref());
        if !survived {
            let pk = key_to_json(&[Value::Integer(LOCAL_ID)]).to_string();
            let recorded: Option<i64> = db
                .query_row(
                    "SELECT id FROM main.pdb_conflicts WHERE table_name = 't' AND pk = ?1",
                    [pk.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .expect("pdb_conflicts");
            assert!(
                recorded.is_some(),
                "{ctx}: the uncommitted row (1, 'local') was lost: the row is {now:?} and pdb_conflicts has nothing"
            );
        }
    }
}

/// A device as built: 0 bare, 1 tracking `t` with an uncommitted row.
fn device(case: usize, key_hex: &str) -> Device {
    let db = open();
    capture::ensure_schema(&db).expect("ensure_schema");
    config::open(&db, URL, GROUP, "t", key_hex).expect("pdb_open");
    if case == 1 {
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            .expect("create t");
        capture::track(&db, "t").expect("track t");
        db.execute("INSERT INTO t VALUES (?1, ?2)", (LOCAL_ID, LOCAL_V))
            .expect("the local row");
        assert!(
            queue::pending_changeset(&db).expect("pending").is_some(),
            "the local row is not pending"
        );
    }
    let queries = dump_queries(
        &db,
        Tables::All {
            schema: Some("main"),
            temp: true,
        },
    );
    let before = dump(&db, &queries);
    let objects = objects(&db, "main").expect("main.sqlite_schema");
    Device {
        tpl: db,
        queries,
        before,
        objects,
    }
}

fn text(v: SqlRef<'_>) -> String {
    match v {
        SqlRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        _ => String::new(),
    }
}

/// The entries of `schema`'s `sqlite_schema`.
fn objects(db: &Conn, schema: &str) -> Result<BTreeSet<Object>, rusqlite::Error> {
    db.prepare(&format!(
        "SELECT type, name, tbl_name FROM {}.sqlite_schema",
        quote(schema)
    ))?
    .query_map([], |r| {
        Ok((
            text(r.get_ref(0)?),
            text(r.get_ref(1)?),
            text(r.get_ref(2)?),
        ))
    })?
    .collect()
}

fn rows_query(schema: &str, info: &TableInfo) -> String {
    let cols: Vec<String> = info.columns.iter().map(|c| quote(&c.name)).collect();
    format!(
        "SELECT {} FROM {}.{}",
        cols.join(", "),
        quote(schema),
        quote(&info.name)
    )
}

/// The rows of `schema.table`, each in record format, sorted bytewise (not by the
/// columns' collations, which the schema hash does not cover).
fn rows(db: &Conn, schema: &str, info: &TableInfo) -> Vec<Vec<u8>> {
    let mut stmt = db
        .prepare(&rows_query(schema, info))
        .unwrap_or_else(|e| panic!("read {schema}.{}: {e}", info.name));
    let mut out: Vec<Vec<u8>> = stmt
        .query_map([], |r| {
            let mut row = Vec::new();
            encode_row(r, &mut row)?;
            Ok(row)
        })
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| panic!("read {schema}.{}: {e}", info.name));
    out.sort();
    out
}

fn show_rows(db: &Conn, schema: &str, info: &TableInfo) -> String {
    show_statement(&mut db.prepare(&rows_query(schema, info)).expect("prepare"))
}

/// Writes the seeds: valid images (built with this SQLite, pages of 512 bytes so that
/// they stay small) and hostile ones. Byte 63 (user_version) picks the device.
fn write_seeds(seeds: &Path, scratch: &Path) {
    std::fs::create_dir_all(seeds).expect("seed dir");
    let make = |name: &str, user_version: u8, sql: &str| -> Vec<u8> {
        let path = scratch.join(format!("seed-{name}.db"));
        let _ = std::fs::remove_file(&path);
        {
            let c = Conn::open(&path).expect("open a seed");
            c.execute_batch(&format!(
                "PRAGMA page_size = 512; PRAGMA user_version = {user_version}; {sql}"
            ))
            .unwrap_or_else(|e| panic!("seed {name}: {e}"));
        }
        let bytes = std::fs::read(&path).expect("read a seed");
        std::fs::remove_file(&path).expect("remove a seed");
        std::fs::write(seeds.join(name), &bytes).expect("write a seed");
        bytes
    };
    let notes = make(
        "notes",
        0,
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, n REAL, b BLOB);
         CREATE INDEX notes_body ON notes(body);
         INSERT INTO notes VALUES (1, 'one', 1.5, x'00ff'), (2, NULL, -0.0, NULL),
           (3, 'three', 3, x''), (-7, 'négatif', 1e300, zeroblob(3));",
    );
    make(
        "without-rowid",
        0,
        "CREATE TABLE kv(a TEXT NOT NULL, b INTEGER NOT NULL, v BLOB, w ANY,
           PRIMARY KEY(a, b)) WITHOUT ROWID;
         CREATE INDEX kv_v ON kv(v);
         CREATE UNIQUE INDEX kv_w ON kv(w);
         INSERT INTO kv VALUES ('a', 1, x'01', 1), ('a', 2, NULL, 'two'), ('b', 1, 'text', 2.5);",
    );
    make(
        "two-tables",
        0,
        "CREATE TABLE p(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE COLLATE NOCASE);
         CREATE TABLE c(k TEXT PRIMARY KEY NOT NULL, p INTEGER REFERENCES p(id), amount NUMERIC DEFAULT 0);
         INSERT INTO p(name) VALUES ('x'), ('Y');
         INSERT INTO c VALUES ('k1', 1, 10), ('k2', 2, '2.50'), ('k3', NULL, NULL);",
    );
    make("empty", 0, "");
    // The table device 1 tracks: the image has the local row's key too, or not.
    make(
        "device-t-conflict",
        1,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
         INSERT INTO t VALUES (1, 'remote'), (2, 2), (3, x'03');",
    );
    make(
        "device-t",
        1,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
         INSERT INTO t VALUES (2, 'two'), (3, NULL), (4, 4.5);",
    );
    // Hostile.
    make(
        "view",
        0,
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v);
         INSERT INTO a VALUES (1, 'x');
         CREATE VIEW av AS SELECT * FROM a;",
    );
    make(
        "trigger",
        0,
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v);
         CREATE TRIGGER a_ai AFTER INSERT ON a BEGIN SELECT 1; END;
         INSERT INTO a VALUES (1, 'x');",
    );
    make(
        "no-primary-key",
        0,
        "CREATE TABLE a(x, y); INSERT INTO a VALUES (1, 2), (1, 2);",
    );
    make(
        "generated-column",
        0,
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v, w AS (v || 'w'));
         INSERT INTO a(id, v) VALUES (1, 'x');",
    );
    // A table whose stored definition carries a second statement after the first.
    make(
        "ddl-tail",
        0,
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v);
         INSERT INTO a VALUES (1, 'x');
         PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE TABLE a(id INTEGER PRIMARY KEY, v); CREATE TABLE zz(x)'
           WHERE name = 'a';
         PRAGMA writable_schema = OFF;",
    );
    // Without its last page: the schema reads, a page it names is missing.
    std::fs::write(seeds.join("truncated"), &notes[..notes.len() - 512]).expect("write a seed");
    // Cut short with its header's page count made to agree: the schema reads, the
    // table's later leaf pages are missing.
    let big = make(
        "big",
        0,
        "CREATE TABLE big(id INTEGER PRIMARY KEY, body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40)
         INSERT INTO big SELECT i, printf('%060d', i) FROM n;",
    );
    std::fs::remove_file(seeds.join("big")).expect("remove a seed");
    let pages = big.len() / 512 / 2;
    let mut cut = big[..pages * 512].to_vec();
    cut[28..32].copy_from_slice(&(pages as u32).to_be_bytes());
    std::fs::write(seeds.join("truncated-pages"), &cut).expect("write a seed");
    // A witness whose manifest has the wrong state digest (bit 1 of byte 63).
    make(
        "bent-state",
        2,
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v); INSERT INTO a VALUES (1, 'x');",
    );
}
