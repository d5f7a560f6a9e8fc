//! `libpdb`: the PersonalDB SQLite loadable extension.
//!
//! This crate is only the SQL surface: it names the functions, converts arguments and
//! results, and maps errors. The work is done by `pdb-client`; all `unsafe` code and
//! FFI live in the [`ffi`] module.
//!
//! ```sql
//! .load ./target/release/libpdb
//! select pdb_track('notes');
//! insert into notes(title) values ('hello');
//! select pdb_commit();
//! select * from pdb_changeset_rows((select changeset from pdb_upload_queue));
//! ```
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod ffi;

use pdb_client::apply::{self, OnConflict};
use pdb_client::changeset::{self, ChangeJson};
use pdb_client::sync::{self, config, strategy::Strategy};
use pdb_client::{capture, queue, Db, Error, ValueRef};

pub use ffi::{Conn, OwnedConn};

/// Oldest SQLite the extension accepts (3.37.0: STRICT tables; every API entry used).
pub const MIN_SQLITE_VERSION: i32 = 3_037_000;

/// The message an SQL function fails with: `[code] function: what went wrong`. The
/// stable code comes first (`Error::code`: the witness's problem code, or the local
/// cause) so a host tells "retry later" from "fix the call" without parsing prose.
pub fn failure(function: &str, e: &Error) -> String {
    format!("[{}] {function}: {e}", e.code())
}

/// The message of a panic caught at the FFI boundary, under the code `internal`.
pub fn internal_failure(place: &str, panic: &str) -> String {
    format!("[internal] {place}: internal error (panic: {panic}); nothing was changed")
}

/// A function's result, handed back to SQLite.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// SQL NULL.
    Null,
    /// An INTEGER.
    Integer(i64),
    /// TEXT.
    Text(String),
    /// A BLOB.
    Blob(Vec<u8>),
}

/// One registered SQL function (one arity of it).
pub struct Function {
    /// SQL name.
    pub name: &'static str,
    /// Number of arguments.
    pub n_arg: i32,
    /// Pure function of its arguments (no database access).
    pub deterministic: bool,
    /// The implementation.
    pub run: fn(&Conn, &[ValueRef<'_>]) -> Result<Output, Error>,
}

/// Every SQL function the extension registers; a test pins this set.
pub static FUNCTIONS: &[Function] = &[
    Function {
        name: "pdb_version",
        n_arg: 0,
        deterministic: true,
        run: version,
    },
    Function {
        name: "pdb_track",
        n_arg: 1,
        deterministic: false,
        run: track,
    },
    Function {
        name: "pdb_untrack",
        n_arg: 1,
        deterministic: false,
        run: untrack,
    },
    Function {
        name: "pdb_changeset",
        n_arg: 0,
        deterministic: false,
        run: pending,
    },
    Function {
        name: "pdb_commit",
        n_arg: 0,
        deterministic: false,
        run: commit,
    },
    Function {
        name: "pdb_commit",
        n_arg: 1,
        deterministic: false,
        run: commit,
    },
    Function {
        name: "pdb_apply",
        n_arg: 1,
        deterministic: false,
        run: apply_changeset,
    },
    Function {
        name: "pdb_apply",
        n_arg: 2,
        deterministic: false,
        run: apply_changeset,
    },
    Function {
        name: "pdb_invert",
        n_arg: 1,
        deterministic: true,
        run: invert,
    },
    Function {
        name: "pdb_concat",
        n_arg: 2,
        deterministic: true,
        run: concat,
    },
    Function {
        name: "pdb_open",
        n_arg: 4,
        deterministic: false,
        run: open,
    },
    Function {
        name: "pdb_sync",
        n_arg: 0,
        deterministic: false,
        run: sync_once,
    },
    Function {
        name: "pdb_push",
        n_arg: 0,
        deterministic: false,
        run: push,
    },
    Function {
        name: "pdb_pull",
        n_arg: 0,
        deterministic: false,
        run: pull,
    },
    Function {
        name: "pdb_bootstrap",
        n_arg: 0,
        deterministic: false,
        run: bootstrap,
    },
    Function {
        name: "pdb_status",
        n_arg: 0,
        deterministic: false,
        run: status,
    },
    Function {
        name: "pdb_head",
        n_arg: 0,
        deterministic: false,
        run: head,
    },
    Function {
        name: "pdb_certificate",
        n_arg: 1,
        deterministic: false,
        run: certificate,
    },
    Function {
        name: "pdb_verify",
        n_arg: 0,
        deterministic: false,
        run: verify,
    },
    Function {
        name: "pdb_set_strategy",
        n_arg: 2,
        deterministic: false,
        run: set_strategy,
    },
    Function {
        name: "pdb_set_strategy",
        n_arg: 3,
        deterministic: false,
        run: set_strategy,
    },
    Function {
        name: "pdb_resolve",
        n_arg: 2,
        deterministic: false,
        run: resolve,
    },
    Function {
        name: "pdb_sync_start",
        n_arg: 0,
        deterministic: false,
        run: sync_start,
    },
    Function {
        name: "pdb_sync_start",
        n_arg: 1,
        deterministic: false,
        run: sync_start,
    },
    Function {
        name: "pdb_sync_stop",
        n_arg: 0,
        deterministic: false,
        run: sync_stop,
    },
];

fn text_arg<'a>(args: &[ValueRef<'a>], i: usize, what: &str) -> Result<&'a str, Error> {
    match args[i] {
        ValueRef::Text(t) => std::str::from_utf8(t).map_err(|_| {
            Error::Argument(format!("argument {} ({what}) is not valid UTF-8", i + 1))
        }),
        _ => Err(Error::Argument(format!(
            "argument {} ({what}) must be TEXT",
            i + 1
        ))),
    }
}

/// A changeset argument: a BLOB, or NULL for "no changes".
fn changeset_arg<'a>(args: &[ValueRef<'a>], i: usize) -> Result<Option<&'a [u8]>, Error> {
    match args[i] {
        ValueRef::Blob(b) => Ok(Some(b)),
        ValueRef::Null => Ok(None),
        _ => Err(Error::Argument(format!(
            "argument {} must be a changeset BLOB",
            i + 1
        ))),
    }
}

fn version(_: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(Output::Text(pdb_client::VERSION.to_string()))
}

fn track(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    capture::track(db, text_arg(args, 0, "table name")?).map(Output::Text)
}

fn untrack(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let name = text_arg(args, 0, "table name")?;
    capture::untrack(db, name)?;
    Ok(Output::Text(name.to_string()))
}

fn pending(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(queue::pending_changeset(db)?.map_or(Output::Null, Output::Blob))
}

fn commit(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let meta = match args.first() {
        None | Some(ValueRef::Null) => None,
        Some(_) => Some(text_arg(args, 0, "meta_json")?),
    };
    let id = queue::commit(db, meta)?;
    if id.is_some() {
        sync::worker::notify(&sync::status::db_path(db)?);
    }
    Ok(id.map_or(Output::Null, Output::Integer))
}

fn apply_changeset(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let blob = changeset_arg(args, 0)?.unwrap_or_default();
    let policy = match args.get(1) {
        None | Some(ValueRef::Null) => OnConflict::Abort,
        Some(_) => OnConflict::parse(text_arg(args, 1, "on_conflict")?)?,
    };
    let stats = apply::apply(db, blob, policy)?;
    Ok(Output::Text(format!(
        r#"{{"applied":{},"replaced":{},"skipped":{}}}"#,
        stats.applied, stats.replaced, stats.skipped
    )))
}

fn invert(_: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    match changeset_arg(args, 0)? {
        None => Ok(Output::Null),
        Some(b) => Ok(Output::Blob(changeset::invert(b)?)),
    }
}

fn concat(_: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    match (changeset_arg(args, 0)?, changeset_arg(args, 1)?) {
        (None, None) => Ok(Output::Null),
        (a, b) => Ok(Output::Blob(changeset::concat(
            a.unwrap_or_default(),
            b.unwrap_or_default(),
        )?)),
    }
}

fn open(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let url = text_arg(args, 0, "url")?;
    let group = text_arg(args, 1, "group")?;
    let token = text_arg(args, 2, "token")?;
    let key = text_arg(args, 3, "witness_key")?;
    sync::open(db, url, group, token, key)?;
    // A worker halted by a refusal (an expired token, say) runs again with the new target.
    if let Some(options) = sync::worker::halted(&sync::status::db_path(db)?) {
        start_worker(db, options)?;
    }
    Ok(Output::Text(group.to_string()))
}

fn sync_start(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let options = match args.first() {
        None | Some(ValueRef::Null) => None,
        Some(_) => Some(text_arg(args, 0, "options_json")?),
    };
    let options = sync::worker::Options::from_json(options)?;
    let started = start_worker(db, options)?;
    Ok(Output::Text(
        if started { "started" } else { "running" }.into(),
    ))
}

/// Starts the worker of `db`'s file; false when one already runs.
fn start_worker(db: &Conn, options: sync::worker::Options) -> Result<bool, Error> {
    config::load(db)?;
    if !ffi::threadsafe() {
        return Err(Error::Argument(
            "this SQLite is built without thread support (SQLITE_THREADSAFE=0), so no worker \
             thread can use it: call pdb_sync() instead"
                .into(),
        ));
    }
    // WAL, so that the application's reads never wait for the worker's writes.
    let mode = db.query_value("PRAGMA journal_mode", &[])?;
    if !matches!(&mode, Some(pdb_client::Value::Text(m)) if m.eq_ignore_ascii_case(b"wal")) {
        db.execute_batch("PRAGMA journal_mode = WAL")?;
    }
    let path = sync::status::db_path(db)?;
    let p = path.clone();
    sync::worker::start(&path, options, move || OwnedConn::open(&p))
}

/// The state vector of a database file's tables, read on a connection of its own (a
/// snapshot being installed, checked beside the install).
fn file_state(
    path: &std::path::Path,
    tables: &[pdb_client::schema::TableInfo],
) -> Result<pdb_client::state::StateVector, Error> {
    let path = path
        .to_str()
        .ok_or_else(|| Error::Argument(format!("{} is not UTF-8", path.display())))?;
    let conn = OwnedConn::open(path)?;
    Ok(pdb_client::history::state_of(&conn, tables)?)
}

fn sync_stop(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    let stopped = sync::worker::stop(&sync::status::db_path(db)?);
    Ok(Output::Text(
        if stopped { "stopped" } else { "not running" }.into(),
    ))
}

fn sync_once(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(Output::Text(sync::sync(db)?.to_json()))
}

fn push(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(Output::Text(sync::push_now(db)?.to_json()))
}

fn pull(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(Output::Text(sync::pull_now(db)?.to_json()))
}

fn bootstrap(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(Output::Text(sync::bootstrap_now(db)?.to_json()))
}

fn status(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(Output::Text(sync::status_json(db)?))
}

fn head(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    let cfg = config::load(db)?;
    let (seq, head) = config::head(db, &cfg.group)?;
    Ok(Output::Text(format!(
        r#"{{"seq":{seq},"head":"{}"}}"#,
        pdb_client::cert::hex(&head)
    )))
}

fn certificate(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let ValueRef::Integer(seq) = args[0] else {
        return Err(Error::Argument(
            "argument 1 (seq) must be an INTEGER".into(),
        ));
    };
    Ok(sync::certificate(db, seq)?.map_or(Output::Null, |c| {
        Output::Text(serde_json::Value::Object(c.to_json()).to_string())
    }))
}

fn verify(db: &Conn, _: &[ValueRef<'_>]) -> Result<Output, Error> {
    Ok(Output::Text(sync::verify(db)?))
}

fn set_strategy(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let table = text_arg(args, 0, "table")?;
    let function = match args.get(2) {
        None | Some(ValueRef::Null) => None,
        Some(_) => Some(text_arg(args, 2, "sql_function")?),
    };
    let strategy = Strategy::parse(text_arg(args, 1, "strategy")?, function)?;
    Ok(Output::Text(sync::strategy::set(db, table, &strategy)?))
}

fn resolve(db: &Conn, args: &[ValueRef<'_>]) -> Result<Output, Error> {
    let ValueRef::Integer(id) = args[0] else {
        return Err(Error::Argument(
            "argument 1 (conflict_id) must be an INTEGER".into(),
        ));
    };
    let choice = text_arg(args, 1, "'local', 'remote' or a JSON row")?;
    Ok(Output::Text(sync::resolve::resolve(db, id, choice)?))
}

/// The safe half of the `pdb_changeset_rows` cursor: the decoded rows and a position.
#[derive(Debug, Default)]
pub struct RowsCursor {
    rows: Vec<ChangeJson>,
    i: usize,
    /// The argument, read back through the hidden `changeset` column: SQLite checks any
    /// further `changeset = ?` constraint against it, as for its own table-valued functions.
    changeset: Option<Vec<u8>>,
}

impl RowsCursor {
    /// Decodes the changeset argument (`None` when the query gave none).
    pub fn filter(&mut self, arg: Option<ValueRef<'_>>) -> Result<(), Error> {
        self.i = 0;
        self.rows.clear();
        self.changeset = None;
        let blob = match arg {
            None => {
                return Err(Error::Argument(
                    "needs a changeset argument: select * from pdb_changeset_rows(?)".into(),
                ))
            }
            Some(ValueRef::Null) => return Ok(()),
            Some(ValueRef::Blob(b)) => b,
            Some(_) => return Err(Error::Argument("argument must be a changeset BLOB".into())),
        };
        for (table, changes) in changeset::parse(blob)? {
            self.rows
                .extend(changes.iter().map(|c| changeset::change_to_json(&table, c)));
        }
        self.changeset = Some(blob.to_vec());
        Ok(())
    }

    /// Moves to the next row.
    pub fn next(&mut self) {
        self.i += 1;
    }

    /// Whether the cursor is past the last row.
    pub fn eof(&self) -> bool {
        self.i >= self.rows.len()
    }

    /// Row number, from 1.
    pub fn rowid(&self) -> i64 {
        self.i as i64 + 1
    }

    /// Value of column `col` of the current row.
    pub fn column(&self, col: usize) -> Output {
        let Some(row) = self.rows.get(self.i) else {
            return Output::Null;
        };
        match col {
            0 => Output::Text(row.tbl.clone()),
            1 => Output::Text(row.op.to_string()),
            2 => Output::Integer(i64::from(row.indirect)),
            3 => Output::Text(row.pk.clone()),
            4 => row.old.clone().map_or(Output::Null, Output::Text),
            5 => row.new.clone().map_or(Output::Null, Output::Text),
            6 => self.changeset.clone().map_or(Output::Null, Output::Blob),
            _ => Output::Null,
        }
    }
}
