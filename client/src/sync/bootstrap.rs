//! Starting from a snapshot (DESIGN §4, §6): download the witness's newest database
//! image, check it, and install it under whatever is pending locally, instead of
//! replaying the whole history.
//!
//! Nothing local changes until the image has passed every check: its manifest's
//! signature (pinned key), that its head is the certified head of its seq, its size and
//! BLAKE3, its schema, and the state digest of its rows. The download goes to a file
//! beside the database and resumes from what that file holds after an interruption.
//! The install is one transaction: the tables are created and tracked if new, the
//! pending local changes are undone, every table takes the image's rows, and the local
//! changes are redone over them with the tables' strategies (as a pull rebases), so a
//! failure at any point leaves the database as it was.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::capture;
use crate::cert::{hex, Certificate};
use crate::db::{transaction, Db, Stmt};
use crate::error::TransportError;
use crate::problem::Code;
use crate::schema::{quote, schema_hash, TableInfo};
use crate::snapshot::Manifest;
use crate::state::StateVector;
use crate::sync::config::{self, Config};
use crate::sync::cycle::{Cycle, LocalView};
use crate::sync::rebase::{self, Incoming, SNAPSHOT_SCHEMA};
use crate::sync::status;
use crate::transport::Witness;
use crate::value::{Value, ValueRef};
use crate::Error;

/// Download attempts in one bootstrap while each one makes progress.
const ATTEMPTS: usize = 5;

/// Bytes between two progress reports.
const REPORT_EVERY: u64 = 1 << 20;

/// Why a bootstrap runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `pdb_bootstrap()`, or a device with nothing of the group yet.
    Asked,
    /// The witness compacted the commits this device still needs.
    Compacted,
}

/// What a bootstrap installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrapped {
    /// The snapshot's seq, now the applied head.
    pub seq: u64,
    /// Size of the image.
    pub bytes: u64,
    /// Bytes of an interrupted download that were kept (0 when the witness sent the
    /// whole object again).
    pub resumed: u64,
    /// Local changes that did not survive as written (in `pdb_conflicts`).
    pub conflicts: usize,
}

impl Bootstrapped {
    /// As JSON, for `pdb_bootstrap()` and the sync summary.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"seq": self.seq, "bytes": self.bytes, "resumed": self.resumed, "conflicts": self.conflicts})
    }
}

fn refused(why: impl std::fmt::Display) -> Error {
    Error::Snapshot(why.to_string())
}

fn progress(path: &str, value: serde_json::Value) {
    status::update(path, |s| s.progress = Some(value));
}

/// Whether this database has nothing of its group yet: no applied commit, nothing
/// pending, and every tracked table (if any) empty. Such a device starts from a
/// snapshot when there is one.
pub fn is_empty<D: Db>(db: &D) -> Result<bool, Error> {
    is_empty_in(db, &mut LocalView::default())
}

/// [`is_empty`] with a cycle's view of the tracked tables.
pub(crate) fn is_empty_in<D: Db>(db: &D, local: &mut LocalView) -> Result<bool, Error> {
    if !local.has_schema(db)? {
        return Ok(true);
    }
    if !matches!(config::get(db, "head_seq")?, None | Some(Value::Integer(0))) {
        return Ok(false);
    }
    if db
        .query_value("SELECT 1 FROM pdb_upload_queue LIMIT 1", &[])?
        .is_some()
    {
        return Ok(false);
    }
    for t in local.tables(db)?.iter() {
        let sql = format!("SELECT 1 FROM main.{} LIMIT 1", quote(&t.info.name));
        if db.query_value(&sql, &[])?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where the image of `m` is downloaded to: beside the database, so it lives as long
/// as the database does and survives a restart (temporary folder for an in-memory one).
fn download_path(db_path: &str, m: &Manifest) -> PathBuf {
    let name = format!("-pdb-{}.snapshot", &hex(&m.blake3)[..16]);
    if db_path.is_empty() {
        // Nothing outlives the process there: the name is the process's own.
        std::env::temp_dir().join(format!("memory-{}{name}", std::process::id()))
    } else {
        PathBuf::from(format!("{db_path}{name}"))
    }
}

/// Removes images of other snapshots an earlier bootstrap left beside the database.
fn remove_stale(keep: &Path) {
    let (Some(dir), Some(name)) = (keep.parent(), keep.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let Some(prefix) = name.get(..name.len().saturating_sub("0123456789abcdef.snapshot".len()))
    else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != name && n.starts_with(prefix) && n.ends_with(".snapshot") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn io_error(file: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("snapshot download file {}: {e}", file.display()))
}

/// Downloads the image of `m` into `file`, resuming from what it already holds, and
/// checks its size and BLAKE3. Returns how many bytes already there were kept.
fn download(remote: &dyn Witness, m: &Manifest, file: &Path, db_path: &str) -> Result<u64, Error> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(file)
        .map_err(|e| io_error(file, e))?;
    let mut have = f.metadata().map_err(|e| io_error(file, e))?.len();
    if have > m.size {
        f.set_len(0).map_err(|e| io_error(file, e))?;
        have = 0;
    }
    // The bytes already there count towards the hash: read them once more.
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut left = have;
    while left > 0 {
        let n = f
            .read(&mut buf[..left.min(256 << 10) as usize])
            .map_err(|e| io_error(file, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut resumed = have;
    progress(
        db_path,
        json!({"phase": "download", "bytes": have, "total": m.size, "seq": m.seq}),
    );
    let mut attempts = 0;
    let mut last_error = None;
    while have < m.size && attempts < ATTEMPTS {
        attempts += 1;
        let d = match remote.download(&m.object_path(), have) {
            Ok(Ok(d)) => d,
            Ok(Err(r)) => return Err(Error::Rejected(r)),
            // No answer (a stalled witness among them): the bytes so far are kept,
            // and the error below says where the next try resumes.
            Err(TransportError::Unreachable(why)) => {
                last_error = Some(why);
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if d.start == 0 && have > 0 {
            // The witness sent the whole object instead of the rest.
            f.set_len(0).map_err(|e| io_error(file, e))?;
            hasher = blake3::Hasher::new();
            have = 0;
            resumed = 0;
        }
        f.seek(std::io::SeekFrom::Start(have))
            .map_err(|e| io_error(file, e))?;
        let mut body = d.body;
        let before = have;
        let mut reported = have;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    last_error = Some(e.to_string());
                    break;
                }
            };
            if have + n as u64 > m.size {
                drop(f);
                let _ = std::fs::remove_file(file);
                return Err(refused(format!(
                    "object {} is larger than its manifest's {} bytes; nothing installed",
                    hex(&m.blake3),
                    m.size
                )));
            }
            f.write_all(&buf[..n]).map_err(|e| io_error(file, e))?;
            hasher.update(&buf[..n]);
            have += n as u64;
            if have - reported >= REPORT_EVERY || have == m.size {
                reported = have;
                progress(
                    db_path,
                    json!({"phase": "download", "bytes": have, "total": m.size, "seq": m.seq}),
                );
            }
        }
        if have == before {
            // No progress: another attempt now would fail the same way.
            break;
        }
    }
    f.flush().map_err(|e| io_error(file, e))?;
    if have < m.size {
        // What arrived stays on disk: the next bootstrap asks only for the rest.
        return Err(Error::Transport(TransportError::Unreachable(format!(
            "snapshot download stopped at {have} of {} bytes ({}); it resumes from there",
            m.size,
            last_error.as_deref().unwrap_or("connection closed")
        ))));
    }
    if *hasher.finalize().as_bytes() != m.blake3 {
        drop(f);
        let _ = std::fs::remove_file(file);
        return Err(refused(format!(
            "object {}: the downloaded bytes hash to something else (tampered or corrupt); nothing installed",
            hex(&m.blake3)
        )));
    }
    Ok(resumed)
}

/// The certificate of `m.seq`, checked against the pinned key, and the manifest's head
/// and state checked against it: the image must be of a head in the certified history.
fn certificate_of(remote: &dyn Witness, cfg: &Config, m: &Manifest) -> Result<Certificate, Error> {
    if m.seq == 0 {
        return Err(refused("a snapshot at seq 0 holds nothing to start from"));
    }
    let page = remote
        .pull(m.seq - 1, 1, std::time::Duration::ZERO)?
        .map_err(Error::Rejected)?;
    let Some(c) = page.commits.into_iter().find(|c| c.cert.seq == m.seq) else {
        return Err(refused(format!(
            "the witness serves no certificate for the snapshot's seq {}",
            m.seq
        )));
    };
    if c.cert.group != cfg.group {
        return Err(refused(format!(
            "the certificate of seq {} is for group \"{}\"",
            m.seq, c.cert.group
        )));
    }
    c.cert
        .verify(&cfg.witness_key, &c.changeset)
        .map_err(|e| refused(format!("the certificate of seq {}: {e}", m.seq)))?;
    if c.cert.head != m.head || c.cert.state != m.state {
        return Err(refused(format!(
            "the manifest's head {} at seq {} is not the certified head {} (not in the history this device trusts); nothing installed",
            hex(&m.head),
            m.seq,
            hex(&c.cert.head)
        )));
    }
    Ok(c.cert)
}

/// The tables of the attached image, checked: only tables and their indexes, each one
/// trackable, with the manifest's schema hash.
/// One entry of the image's schema to run on the device: its kind, its name and its
/// SQL text.
type Entry = (String, String, String);

fn image_tables<D: Db>(db: &D, m: &Manifest) -> Result<Vec<(TableInfo, Vec<Entry>)>, Error> {
    let mut objects: Vec<(String, String, String, String)> = Vec::new();
    // SQLite writes every field of its schema table as text; anything else was
    // written by hand, and a lossy reading could make the check and the install see
    // two different schemas.
    let mut odd = None;
    let mut stmt = db.prepare(&format!(
        "SELECT type, name, tbl_name, coalesce(sql, '') FROM {}.sqlite_schema \
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type DESC, name",
        quote(SNAPSHOT_SCHEMA)
    ))?;
    stmt.query::<Error>(&mut |r| {
        let t = |i: usize| match r[i] {
            ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_string),
            _ => None,
        };
        match (t(0), t(1), t(2), t(3)) {
            (Some(kind), Some(name), Some(table), Some(sql)) => {
                if kind == "table" && table != name {
                    odd.get_or_insert(format!("table \"{name}\" names table \"{table}\""));
                }
                objects.push((kind, name, table, sql));
            }
            fields => {
                let column = match fields {
                    (None, ..) => "type",
                    (_, None, ..) => "name",
                    (_, _, None, _) => "tbl_name",
                    _ => "sql",
                };
                let name = t(1).unwrap_or_default();
                odd.get_or_insert(format!(
                    "the {column} of entry \"{name}\" is not UTF-8 text"
                ));
            }
        }
        Ok(())
    })?;
    drop(stmt);
    if let Some(why) = odd {
        return Err(refused(format!(
            "the image's schema is not one SQLite wrote: {why}; nothing installed"
        )));
    }
    let mut tables: Vec<(TableInfo, Vec<Entry>)> = Vec::new();
    for (kind, name, _, sql) in &objects {
        match kind.as_str() {
            "table" => {
                let info = crate::schema::table_info_in(db, SNAPSHOT_SCHEMA, name)
                    .map_err(|e| refused(format!("the image's table \"{name}\": {e}")))?;
                tables.push((info, vec![(kind.clone(), name.clone(), sql.clone())]));
            }
            "index" => {}
            other => {
                return Err(refused(format!(
                    "the image holds {other} \"{name}\"; a snapshot holds only tables and indexes"
                )))
            }
        }
    }
    for (kind, name, table, sql) in &objects {
        if kind == "index" && !sql.is_empty() {
            if let Some(t) = tables.iter_mut().find(|(t, _)| &t.name == table) {
                t.1.push((kind.clone(), name.clone(), sql.clone()));
            }
        }
    }
    tables.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let infos: Vec<TableInfo> = tables.iter().map(|t| t.0.clone()).collect();
    if schema_hash(&infos) != m.schema_hash {
        return Err(refused(format!(
            "the image's tables have schema {}, not the manifest's {}",
            hex(&schema_hash(&infos)),
            hex(&m.schema_hash)
        )));
    }
    Ok(tables)
}

/// Runs one entry of the image's schema for `table`, refusing text that makes something
/// other than the entry names: the name and table columns of `sqlite_schema` and its
/// SQL text are separate fields of the file, and only the text is run.
fn run_entry<D: Db>(db: &D, table: &str, (kind, name, sql): &Entry) -> Result<(), Error> {
    db.execute(sql, &[])?;
    let made = db
        .query_value(
            "SELECT 1 FROM main.sqlite_schema WHERE type = ?1 AND name = ?2 AND tbl_name = ?3",
            &[
                ValueRef::Text(kind.as_bytes()),
                ValueRef::Text(name.as_bytes()),
                ValueRef::Text(table.as_bytes()),
            ],
        )?
        .is_some();
    if made {
        Ok(())
    } else {
        Err(refused(format!(
            "the SQL of the image's {kind} \"{name}\" of table \"{table}\" makes something else; nothing installed"
        )))
    }
}

/// Whether a table exists in the main database.
fn exists<D: Db>(db: &D, name: &str) -> Result<bool, Error> {
    Ok(db
        .query_value(
            "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            &[ValueRef::Text(name.as_bytes())],
        )?
        .is_some())
}

/// Checks the image attached as [`SNAPSHOT_SCHEMA`] against `m` (tables, schema, state
/// digest) and installs it in one transaction at `cert`'s head, rebasing pending local
/// changes; returns the conflicts recorded. `cert` must already be checked against `m`
/// (the bootstrap does it before downloading). Nothing changes unless it succeeds.
pub fn install_attached<D: Db>(
    db: &D,
    cfg: &Config,
    m: &Manifest,
    cert: &Certificate,
    db_path: &str,
) -> Result<usize, Error> {
    install_attached_in(db, cfg, &mut LocalView::default(), m, cert, db_path)
}

/// [`install_attached`] with a cycle's view of the tracked tables, which it changes.
fn install_attached_in<D: Db>(
    db: &D,
    cfg: &Config,
    view: &mut LocalView,
    m: &Manifest,
    cert: &Certificate,
    db_path: &str,
) -> Result<usize, Error> {
    let tables = image_tables(db, m)?;
    let local: Vec<TableInfo> = view.tables(db)?.iter().map(|t| t.info.clone()).collect();
    if !local.is_empty() && schema_hash(&local) != m.schema_hash {
        let names: Vec<&str> = local.iter().map(|t| t.name.as_str()).collect();
        return Err(Error::Schema(format!(
            "schema_mismatch: the snapshot of group \"{}\" has schema {} but this device tracks {:?} with schema {}; nothing installed",
            cfg.group,
            hex(&m.schema_hash),
            names,
            hex(&schema_hash(&local))
        )));
    }
    let infos: Vec<TableInfo> = tables.iter().map(|t| t.0.clone()).collect();
    let wrong_state = |state: &StateVector| {
        refused(format!(
            "the image's rows have state digest {}, not the certified {} of seq {}; nothing installed",
            hex(&state.digest()),
            hex(&m.state),
            m.seq
        ))
    };
    let file = attached_file(db)?;
    let reader = FILE_STATE.get().copied().filter(|_| !file.is_empty());
    let result = std::thread::scope(|scope| {
        // With a connection of its own, the image's rows are hashed while this one
        // installs them; the transaction commits only if they hash to the certified
        // state. Without one, they are hashed first.
        let checking = reader.map(|f| {
            let (path, infos) = (PathBuf::from(&file), &infos);
            scope.spawn(move || f(&path, infos))
        });
        let early = match checking {
            Some(_) => None,
            None => {
                progress(db_path, json!({"phase": "verify", "seq": m.seq}));
                let state = crate::history::state_in(db, SNAPSHOT_SCHEMA, &infos)?;
                if state.digest() != m.state {
                    return Err(wrong_state(&state));
                }
                Some(state)
            }
        };
        progress(db_path, json!({"phase": "install", "seq": m.seq}));
        let mut checking = checking;
        transaction(db, "pdb_bootstrap", || {
            capture::ensure_schema(db)?;
            for (info, ddl) in &tables {
                if !exists(db, &info.name)? {
                    for entry in ddl {
                        // One statement: SQLite reads only the first of an entry's text,
                        // so a second one there is no part of the image's schema.
                        run_entry(db, &info.name, entry)?;
                    }
                }
                capture::track(db, &info.name)?;
            }
            let tracked: Vec<TableInfo> = view.tables(db)?.iter().map(|t| t.info.clone()).collect();
            if schema_hash(&tracked) != m.schema_hash {
                return Err(Error::Schema(format!(
                    "schema_mismatch: this device's tables \"{}\" differ from the snapshot's (schema {}); nothing installed",
                    tracked.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join("\", \""),
                    hex(&m.schema_hash)
                )));
            }
            // Until the check is done, the head's state vector is a stand-in; it is
            // replaced by the real one below, before the transaction commits.
            let state = early.clone().unwrap_or_default();
            let done =
                rebase::integrate_in(db, cfg, view, Incoming::Snapshot { cert, state }, None)?;
            if let Some(handle) = checking.take() {
                let state = match handle.join() {
                    Ok(r) => r?,
                    Err(p) => std::panic::resume_unwind(p),
                };
                if state.digest() != m.state {
                    return Err(wrong_state(&state));
                }
                config::set_head(db, m.seq, &m.head, &state)?;
            }
            config::set(db, "root_seq", ValueRef::Integer(m.seq as i64))?;
            config::set(db, "root_head", ValueRef::Text(hex(&m.head).as_bytes()))?;
            Ok(done.conflicts)
        })
    });
    if result.is_err() {
        view.forget();
    }
    result
}

/// The file the image is attached from ("" for an in-memory or temporary one).
fn attached_file<D: Db>(db: &D) -> Result<String, Error> {
    Ok(
        match db.query_value(
            "SELECT file FROM pragma_database_list WHERE name = ?1",
            &[ValueRef::Text(SNAPSHOT_SCHEMA.as_bytes())],
        )? {
            Some(Value::Text(t)) => String::from_utf8_lossy(&t).into_owned(),
            _ => String::new(),
        },
    )
}

/// Computes the state vector of a database file's tables on a connection of its own.
pub type FileState = fn(&Path, &[TableInfo]) -> Result<StateVector, Error>;

static FILE_STATE: std::sync::OnceLock<FileState> = std::sync::OnceLock::new();

/// Lets a bootstrap check an image on another thread while it installs it: the host
/// that can open connections of its own (the extension, with a thread-safe SQLite)
/// registers how. Without it the check runs first, on the calling connection.
pub fn set_file_state(f: FileState) {
    let _ = FILE_STATE.set(f);
}

/// Installs the witness's newest snapshot if it is ahead of this device; `None` when
/// there is none, or it would not move the device forward.
pub fn bootstrap<D: Db>(
    db: &D,
    c: &mut Cycle<'_>,
    reason: Reason,
) -> Result<Option<Bootstrapped>, Error> {
    let db_path = c.path.clone();
    let db_path = db_path.as_str();
    let mut busy = false;
    status::update(db_path, |s| {
        busy = s.bootstrapping;
        s.bootstrapping = true;
    });
    if busy {
        // The other one writes the same download file.
        return Err(Error::Busy(
            "a bootstrap of this database is already running in this process".into(),
        ));
    }
    let result = run(db, c, reason);
    status::update(db_path, |s| {
        s.progress = None;
        s.bootstrapping = false;
    });
    result
}

/// Asks the witness whether the first unsent queued commit was certified after all,
/// and records its seq if so. A push sends one commit at a time and records each
/// certificate before sending the next, so only that one can have been certified with
/// its answer lost. Laid under a snapshot that already holds it, it must leave the
/// queue as confirmed rather than be rebased and sent again; after the compaction of
/// its seq no pull would show it.
fn settle_in_flight<D: Db>(db: &D, c: &mut Cycle<'_>) -> Result<(), Error> {
    if !c.local.has_schema(db)? {
        return Ok(());
    }
    let (cfg, remote) = (&c.cfg, c.witness);
    // The one a push would send next.
    let Some(super::Outgoing { id, key, .. }) = super::next_outgoing(db)? else {
        return Ok(());
    };
    let Some(cert) = remote.certificate(&key)?.map_err(Error::Rejected)? else {
        return Ok(());
    };
    if cert.group != cfg.group || cert.idempotency_key != key {
        return Err(refused(format!(
            "asked for key \"{key}\" of group \"{}\", the witness answered with the certificate of key \"{}\" of group \"{}\"; nothing installed",
            cfg.group, cert.idempotency_key, cert.group
        )));
    }
    cert.verify_signature(&cfg.witness_key).map_err(|e| {
        refused(format!(
            "the certificate of local commit {id}: {e}; nothing installed"
        ))
    })?;
    db.execute(
        "UPDATE pdb_upload_queue SET pushed_seq = ?2 WHERE id = ?1",
        &[ValueRef::Integer(id), ValueRef::Integer(cert.seq as i64)],
    )?;
    Ok(())
}

/// The newest manifest, checked, with its certificate and its image downloaded and
/// checked (size, BLAKE3): `None` when there is nothing to install.
fn fetch<D: Db>(
    db: &D,
    cfg: &Config,
    remote: &dyn Witness,
    db_path: &str,
    reason: Reason,
) -> Result<Option<(Manifest, Certificate, PathBuf, u64)>, Error> {
    progress(db_path, json!({"phase": "manifest"}));
    let latest = match remote.latest_snapshot() {
        // The witness answered, with something that is not a manifest.
        Err(TransportError::Protocol(why)) => {
            return Err(refused(format!(
                "the witness's manifest: {why}; nothing installed"
            )))
        }
        other => other?,
    };
    let Some(m) = latest.map_err(Error::Rejected)? else {
        return match reason {
            Reason::Asked => Ok(None),
            Reason::Compacted => Err(refused(
                "the witness compacted the commits this device needs but has no snapshot",
            )),
        };
    };
    if m.group != cfg.group {
        return Err(refused(format!(
            "the manifest is for group \"{}\", not \"{}\"",
            m.group, cfg.group
        )));
    }
    m.verify(&cfg.witness_key)
        .map_err(|e| refused(format!("{e}; nothing installed")))?;
    let (seq, _) = config::head(db, &cfg.group)?;
    if m.seq <= seq {
        return match reason {
            Reason::Asked => Ok(None),
            Reason::Compacted => Err(refused(format!(
                "the witness compacted the commits after this device's head {seq}, but its newest snapshot is at seq {}",
                m.seq
            ))),
        };
    }
    let cert = certificate_of(remote, cfg, &m)?;
    let file = download_path(db_path, &m);
    remove_stale(&file);
    let resumed = download(remote, &m, &file, db_path)?;
    Ok(Some((m, cert, file, resumed)))
}

fn run<D: Db>(db: &D, c: &mut Cycle<'_>, reason: Reason) -> Result<Option<Bootstrapped>, Error> {
    let db_path = c.path.clone();
    let db_path = db_path.as_str();
    if !db.is_autocommit() {
        return Err(Error::Argument(
            "a bootstrap replaces the group's tables in its own transaction: call it outside one"
                .into(),
        ));
    }
    // A snapshot can be superseded and its object and certificate compacted away
    // while a device fetches it: then the newest one is fetched instead.
    let mut attempts = 0;
    let (m, cert, file, resumed) = loop {
        attempts += 1;
        match fetch(db, &c.cfg, c.witness, db_path, reason) {
            Ok(Some(fetched)) => break fetched,
            Ok(None) => return Ok(None),
            Err(Error::Rejected(r))
                if attempts < 3 && matches!(r.code(), Some(Code::Compacted | Code::NotFound)) => {}
            Err(e) => return Err(e),
        }
    };
    settle_in_flight(db, c)?;
    db.execute(
        &format!("ATTACH ?1 AS {}", quote(SNAPSHOT_SCHEMA)),
        &[ValueRef::Text(file.to_string_lossy().as_bytes())],
    )?;
    let installed = install_attached_in(db, &c.cfg, &mut c.local, &m, &cert, db_path);
    let detached = db.execute_batch(&format!("DETACH {}", quote(SNAPSHOT_SCHEMA)));
    // A refused image would be refused again: only a local failure (a busy
    // database, say) keeps it for the next try.
    if matches!(installed, Ok(_) | Err(Error::Snapshot(_))) {
        let _ = std::fs::remove_file(&file);
    }
    let conflicts = installed?;
    detached?;
    // The install went through the WAL (if the database uses one): give the disk back
    // now rather than keep a log as large as the image. Best effort; a busy reader
    // only delays it to a later checkpoint.
    let _ = db.query_value("PRAGMA main.wal_checkpoint(TRUNCATE)", &[]);
    Ok(Some(Bootstrapped {
        seq: m.seq,
        bytes: m.size,
        resumed,
        conflicts,
    }))
}

/// The image checks the `snapshot_image` fuzz target's findings brought
/// (`fuzz/regressions/snapshot_image/`), on an in-memory image attached as
/// [`SNAPSHOT_SCHEMA`] whose schema table is edited by hand.
#[cfg(all(test, feature = "rusqlite"))]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A device with an image holding `p(id INTEGER PRIMARY KEY)` attached, after
    /// `edit` (bound to `param`) ran on its schema table with `writable_schema` on.
    fn image(edit: &str, param: &[u8]) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(&format!(
            "ATTACH ':memory:' AS {s}; CREATE TABLE {s}.p(id INTEGER PRIMARY KEY); \
             PRAGMA writable_schema = ON;",
            s = SNAPSHOT_SCHEMA
        ))
        .unwrap();
        // Not reloaded: the check reads the schema table's rows as they are.
        c.execute(edit, [param]).unwrap();
        c
    }

    fn manifest() -> Manifest {
        Manifest {
            group: "g".into(),
            seq: 1,
            head: [0; 32],
            state: [0; 32],
            size: 0,
            blake3: [0; 32],
            schema_hash: [0; 32],
            created_at: 0,
            witness_key: [0; 32],
            signature: [0; 64],
        }
    }

    fn refusal(c: &Connection) -> String {
        match image_tables(c, &manifest()) {
            Err(Error::Snapshot(m)) => m,
            Err(e) => panic!("another error: {e}"),
            Ok(t) => panic!(
                "accepted: {:?}",
                t.iter().map(|t| &t.0.name).collect::<Vec<_>>()
            ),
        }
    }

    /// `blob-tbl-name` (fixed in 1164323): `p`'s `tbl_name` is the blob `x'70'`. Read
    /// lossily as "", the check's picture of the image differed from what the install
    /// creates; a field SQLite would not write, or a table entry naming another table,
    /// is refused.
    #[test]
    fn a_schema_entry_sqlite_would_not_write_is_refused() {
        let edit =
            "UPDATE pdb_snapshot.sqlite_schema SET tbl_name = CAST(?1 AS TEXT) WHERE name = 'p'";
        // Untouched, the image gets as far as the schema hash (the manifest's is zero).
        let untouched = refusal(&image(edit, b"p"));
        assert!(
            untouched.starts_with("the image's tables have schema ")
                && untouched.ends_with(&format!("not the manifest's {}", hex(&[0; 32]))),
            "{untouched}"
        );
        let blob =
            "UPDATE pdb_snapshot.sqlite_schema SET tbl_name = CAST(?1 AS BLOB) WHERE name = 'p'";
        assert_eq!(
            refusal(&image(blob, b"p")),
            "the image's schema is not one SQLite wrote: the tbl_name of entry \"p\" is not UTF-8 \
             text; nothing installed"
        );
        // `non-utf8-column-name`: a column named by a byte that is not UTF-8. Before the
        // schema table was checked, `table_info`'s refusal of such a name stopped it
        // (pdb-core's schema tests); now the entry's text stops it first.
        let bad_sql =
            "UPDATE pdb_snapshot.sqlite_schema SET sql = CAST(?1 AS TEXT) WHERE name = 'p'";
        assert_eq!(
            refusal(&image(
                bad_sql,
                b"CREATE TABLE p(id INTEGER PRIMARY KEY, \"\xff\")"
            )),
            "the image's schema is not one SQLite wrote: the sql of entry \"p\" is not UTF-8 \
             text; nothing installed"
        );
        assert_eq!(
            refusal(&image(edit, b"q")),
            "the image's schema is not one SQLite wrote: table \"p\" names table \"q\"; nothing \
             installed"
        );
    }

    /// Plants an image (built by `plant` in the attached schema, then bent with
    /// `writable_schema` by `bend`), signs it honestly as the witness would from its own
    /// reading of table `table`, installs it, and returns the result with those of
    /// `names` that the main schema holds afterwards (compared without case).
    fn install_bent(
        plant: &str,
        bend: &str,
        table: &str,
        names: &[&str],
    ) -> (Result<usize, Error>, Vec<String>) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let db = Connection::open_in_memory().unwrap();
        let pin = hex(&key.verifying_key().to_bytes());
        config::open(&db, "http://127.0.0.1:9", "g", "token", &pin).unwrap();
        let cfg = config::load(&db).unwrap();
        let s = SNAPSHOT_SCHEMA;
        db.execute_batch(&format!(
            "ATTACH ':memory:' AS {s}; {plant}; PRAGMA writable_schema = ON; {bend}; \
             PRAGMA writable_schema = OFF;",
            plant = plant.replace("{s}", s),
            bend = bend.replace("{s}", s),
        ))
        .unwrap();
        let infos = vec![crate::schema::table_info_in(&db, s, table).unwrap()];
        let state = crate::history::state_in(&db, s, &infos).unwrap().digest();
        let head = crate::cert::next_head(&crate::cert::genesis("g"), 1, &[1; 32]);
        let m = Manifest {
            head,
            state,
            schema_hash: schema_hash(&infos),
            ..manifest()
        };
        let genesis = crate::cert::genesis("g");
        let cert = Certificate::sign(&key, "g", 1, genesis, head, state, [1; 32], "k", 0);
        let installed = install_attached(&db, &cfg, &m, &cert, "");
        let mut found = Vec::new();
        for name in names {
            let sql = "SELECT name FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE";
            let mut rows = db.prepare(sql).unwrap();
            let hits = rows.query_map([name], |r| r.get::<_, String>(0)).unwrap();
            found.extend(hits.map(Result::unwrap));
        }
        assert_eq!(config::head(&db, "g").unwrap().0, 0, "nothing installed");
        (installed, found)
    }

    /// `ddl-tail` (fixed in 4eb993c): a table whose stored DDL reads `CREATE TABLE
    /// a(...); CREATE TABLE zz(x)`. SQLite reads only an entry's first statement, so the
    /// tail is no part of the image's schema and no check sees it; the install ran the
    /// whole text and created `zz` on the device. It now runs one statement per entry.
    #[test]
    fn an_entry_s_ddl_tail_does_not_run_on_the_device() {
        let (installed, names) = install_bent(
            "CREATE TABLE {s}.a(id INTEGER PRIMARY KEY, v); INSERT INTO {s}.a VALUES (1, 'x')",
            "UPDATE {s}.sqlite_schema SET sql = 'CREATE TABLE a(id INTEGER PRIMARY KEY, v); \
             CREATE TABLE zz(x)' WHERE name = 'a'",
            "a",
            &["a", "zz"],
        );
        // The entry is run as one prepared statement. rusqlite's `Db` refuses a text
        // with a tail outright, so here the install fails as a whole; the extension's
        // prepares the first statement and ignores the tail. Either way `zz` never runs.
        match installed {
            Err(Error::Db(e)) => assert_eq!(e.message, "Multiple statements provided"),
            other => panic!("{other:?}"),
        }
        assert!(names.is_empty(), "{names:?}");
    }

    /// `index-name-differs` (found by CI's short fuzz run): an index entry named
    /// `notes_bodx` whose SQL text creates `NOTES_BODX`. SQLite loads it (names match
    /// without case); the checks read the entry's name, the install ran its text, so
    /// the device got an index the image does not list. The install now checks that
    /// each entry's text makes exactly what the entry names.
    #[test]
    fn an_index_entry_whose_text_makes_another_index_is_refused() {
        let (installed, names) = install_bent(
            "CREATE TABLE {s}.notes(id INTEGER PRIMARY KEY, body); \
             CREATE INDEX {s}.notes_bodx ON notes(body); INSERT INTO {s}.notes VALUES (1, 'x')",
            "UPDATE {s}.sqlite_schema SET sql = 'CREATE INDEX NOTES_BODX ON notes(body)' \
             WHERE name = 'notes_bodx'",
            "notes",
            &["notes", "notes_bodx"],
        );
        match installed {
            Err(Error::Snapshot(why)) => assert!(why.contains("\"notes_bodx\""), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(names.is_empty(), "{names:?}");
    }
}
