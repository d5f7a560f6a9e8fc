//! Everything `unsafe` in PersonalDB: the entry point, the host's API table, a [`Db`]
//! over the host connection, and the trampolines that SQLite calls. Every callback runs
//! inside `catch_unwind`, so a Rust panic becomes an SQLite error and never unwinds
//! into the host.

mod api;
mod types;

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use pdb_client::{Db, DbError, Error, Stmt, ValueRef};

use crate::{Function, Output, RowsCursor, FUNCTIONS, MIN_SQLITE_VERSION};
use api::ApiRoutines;
use types::*;

/// The host's API table, set once by the entry point. Every host in a process hands
/// over the same table, so later loads store the same pointer again.
static API: AtomicPtr<ApiRoutines> = AtomicPtr::new(ptr::null_mut());

/// Calls an entry of the host's API table.
macro_rules! call {
    ($name:ident($($arg:expr),* $(,)?)) => {{
        let f = api().$name.expect(concat!("SQLite API entry ", stringify!($name), " is missing"));
        // Safety: the entry has the C signature it is typed with in `api`, and callers
        // pass handles that SQLite gave them for this call.
        #[allow(unused_unsafe)]
        let r = unsafe { f($($arg),*) };
        r
    }};
}

fn api() -> &'static ApiRoutines {
    let api = API.load(Ordering::Acquire);
    // Safety: set in the entry point before any function is registered, to the host's
    // static table, which outlives every connection; checked non-null there.
    unsafe { &*api }
}

/// `SQLITE_TRANSIENT`: SQLite copies the bytes before the call returns.
fn transient() -> Destructor {
    // Safety: SQLite defines SQLITE_TRANSIENT as the destructor pointer value -1 and
    // never calls it; this is the documented way to spell it.
    Some(unsafe { std::mem::transmute::<isize, unsafe extern "C" fn(*mut c_void)>(-1) })
}

/// Copies `s` into memory from `sqlite3_malloc`, as error-message out-parameters need.
fn sqlite_string(s: &str) -> *mut c_char {
    let bytes = s.replace('\0', " ");
    let p = call!(malloc64(bytes.len() as u64 + 1)) as *mut u8;
    if !p.is_null() {
        // Safety: p has room for len + 1 bytes; the regions do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
    }
    p as *mut c_char
}

/// A test hook: `PDB_TEST_PANIC=<function>` makes that SQL function panic, so tests
/// can prove a panic reaches the host as an ordinary error.
fn panic_hook_target() -> Option<&'static str> {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    TARGET
        .get_or_init(|| std::env::var("PDB_TEST_PANIC").ok())
        .as_deref()
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The entry point SQLite looks for when loading `libpdb` (named after the file).
///
/// # Safety
/// Called by SQLite's extension loader with a valid connection, error-message slot
/// and API table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_pdb_init(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ApiRoutines,
) -> c_int {
    if p_api.is_null() {
        return SQLITE_ERROR;
    }
    API.store(p_api, Ordering::Release);
    // Safety: SQLite hands the connection it is loading into; the table is stored.
    let result = catch_unwind(|| unsafe { register(db) });
    let message = match result {
        Ok(Ok(())) => return SQLITE_OK,
        Ok(Err(m)) => m,
        Err(panic) => format!("panic while loading: {}", panic_message(&*panic)),
    };
    if !pz_err_msg.is_null() {
        // Safety: SQLite hands a writable slot and frees what we put there with sqlite3_free.
        unsafe { *pz_err_msg = sqlite_string(&format!("libpdb: {message}")) };
    }
    SQLITE_ERROR
}

/// Registers every function and the `pdb_changeset_rows` module on `db`.
///
/// # Safety
/// `db` must be the live connection SQLite is loading the extension into, and the
/// API table must already be stored.
unsafe fn register(db: *mut sqlite3) -> Result<(), String> {
    let version = call!(libversion_number());
    if version < MIN_SQLITE_VERSION {
        return Err(format!(
            "PersonalDB needs SQLite 3.37.0 or newer; this host is {}.{}.{}",
            version / 1_000_000,
            version / 1000 % 1000,
            version % 1000
        ));
    }
    for f in FUNCTIONS {
        let name = CString::new(f.name).expect("function names have no NUL");
        let mut flags = SQLITE_UTF8;
        if f.deterministic {
            flags |= SQLITE_DETERMINISTIC;
        } else {
            // Side effects: never callable from a view or trigger an attacker planted.
            flags |= SQLITE_DIRECTONLY;
        }
        let rc = call!(create_function_v2(
            db,
            name.as_ptr(),
            f.n_arg,
            flags,
            f as *const Function as *mut c_void,
            Some(function_trampoline),
            None,
            None,
            None
        ));
        if rc != SQLITE_OK {
            return Err(format!("could not register {} (code {rc})", f.name));
        }
    }
    let rc = call!(create_module_v2(
        db,
        c"pdb_changeset_rows".as_ptr(),
        &ROWS_MODULE,
        ptr::null_mut(),
        None
    ));
    if rc != SQLITE_OK {
        return Err(format!("could not register pdb_changeset_rows (code {rc})"));
    }
    if threadsafe() {
        // A bootstrap may then check a snapshot on a connection of its own while the
        // application's connection installs it.
        pdb_client::sync::bootstrap::set_file_state(crate::file_state);
    }
    Ok(())
}

/// Reads an argument without copying; valid until the function returns.
///
/// # Safety
/// `v` must be a live `sqlite3_value` of the current call.
unsafe fn value_ref<'a>(v: *mut sqlite3_value) -> ValueRef<'a> {
    match call!(value_type(v)) {
        SQLITE_INTEGER => ValueRef::Integer(call!(value_int64(v))),
        SQLITE_FLOAT => ValueRef::Real(call!(value_double(v))),
        SQLITE_TEXT => {
            let p = call!(value_text(v));
            let n = call!(value_bytes(v)) as usize;
            // Safety: SQLite keeps the text valid for the duration of the call.
            ValueRef::Text(if p.is_null() {
                &[]
            } else {
                unsafe { std::slice::from_raw_parts(p, n) }
            })
        }
        SQLITE_BLOB => {
            let p = call!(value_blob(v)) as *const u8;
            let n = call!(value_bytes(v)) as usize;
            // Safety: as above; a zero-length BLOB may come back as NULL.
            ValueRef::Blob(if p.is_null() {
                &[]
            } else {
                unsafe { std::slice::from_raw_parts(p, n) }
            })
        }
        _ => ValueRef::Null,
    }
}

/// Sets a function's (or a virtual table column's) result; SQLite copies it.
///
/// # Safety
/// `ctx` must be the live context of the call being answered.
unsafe fn set_result(ctx: *mut sqlite3_context, out: Output) {
    match out {
        Output::Null => call!(result_null(ctx)),
        Output::Integer(i) => call!(result_int64(ctx, i)),
        Output::Text(s) => {
            call!(result_text64(
                ctx,
                s.as_ptr() as *const c_char,
                s.len() as u64,
                transient(),
                SQLITE_UTF8 as u8
            ))
        }
        Output::Blob(b) => call!(result_blob64(
            ctx,
            b.as_ptr() as *const c_void,
            b.len() as u64,
            transient()
        )),
    }
}

/// Makes the call being answered fail with `message` and `code`.
///
/// # Safety
/// `ctx` must be the live context of the call being answered.
unsafe fn set_error(ctx: *mut sqlite3_context, message: &str, code: c_int) {
    call!(result_error(
        ctx,
        message.as_ptr() as *const c_char,
        message.len() as c_int
    ));
    call!(result_error_code(ctx, code));
}

unsafe extern "C" fn function_trampoline(
    ctx: *mut sqlite3_context,
    argc: c_int,
    argv: *mut *mut sqlite3_value,
) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // Safety: user data is the &'static Function given at registration.
        let f = unsafe { &*(call!(user_data(ctx)) as *const Function) };
        if panic_hook_target() == Some(f.name) {
            panic!("PDB_TEST_PANIC asked {} to panic", f.name);
        }
        let args: Vec<ValueRef<'_>> = (0..argc as usize)
            // Safety: SQLite passes argc live values.
            .map(|i| unsafe { value_ref(*argv.add(i)) })
            .collect();
        let conn = Conn {
            db: call!(context_db_handle(ctx)),
        };
        (f, (f.run)(&conn, &args))
    }));
    // Safety: `ctx` is this call's live context.
    match outcome {
        Ok((_, Ok(out))) => unsafe { set_result(ctx, out) },
        Ok((f, Err(e))) => unsafe { set_error(ctx, &crate::failure(f.name, &e), e.sqlite_code()) },
        Err(panic) => unsafe {
            set_error(
                ctx,
                &crate::internal_failure("libpdb", &panic_message(&*panic)),
                // SQLITE_ERROR, not SQLITE_INTERNAL: hosts report it as an ordinary
                // operational error (Python's OperationalError) that callers already handle.
                SQLITE_ERROR,
            )
        },
    }
}

/// The host connection a function was called on.
pub struct Conn {
    db: *mut sqlite3,
}

impl Conn {
    fn error(&self, context: Option<&str>) -> DbError {
        let code = call!(extended_errcode(self.db));
        let msg = call!(errmsg(self.db));
        let msg = if msg.is_null() {
            format!("SQLite error {code}")
        } else {
            // Safety: errmsg returns a NUL-terminated string valid until the next call.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        let message = match context {
            Some(sql) if !sql.starts_with("SAVEPOINT") => format!("{msg} (while running: {sql})"),
            _ => msg,
        };
        DbError { code, message }
    }
}

/// Whether the host's SQLite lets connections be used from other threads.
pub fn threadsafe() -> bool {
    call!(xthreadsafe()) != 0
}

/// A connection the extension opened itself, with the host's SQLite (the sync worker's:
/// a second copy of SQLite in one process would break its file locks). Closed on drop.
pub struct OwnedConn {
    conn: Conn,
}

impl OwnedConn {
    /// Opens the database file `path` for reading and writing.
    pub fn open(path: &str) -> Result<OwnedConn, Error> {
        let c =
            CString::new(path).map_err(|_| Error::Argument("database path contains NUL".into()))?;
        let mut db = ptr::null_mut();
        let rc = call!(open_v2(
            c.as_ptr(),
            &mut db,
            SQLITE_OPEN_READWRITE,
            ptr::null()
        ));
        let conn = OwnedConn { conn: Conn { db } };
        if rc != SQLITE_OK {
            return Err(Error::Db(if db.is_null() {
                DbError {
                    code: rc,
                    message: format!("cannot open {path}"),
                }
            } else {
                conn.conn.error(None)
            }));
        }
        // The application's connection writes too; wait for it rather than fail.
        call!(busy_timeout(db, 10_000));
        Ok(conn)
    }
}

impl Db for OwnedConn {
    type Stmt<'c> = RawStmt<'c>;

    fn prepare(&self, sql: &str) -> Result<RawStmt<'_>, DbError> {
        self.conn.prepare(sql)
    }

    fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql)
    }

    fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }
}

impl Drop for OwnedConn {
    fn drop(&mut self) {
        if !self.conn.db.is_null() {
            // close_v2 defers the close until statements still open are finalized.
            call!(close_v2(self.conn.db));
        }
    }
}

/// A statement prepared on the host connection; finalized on drop.
pub struct RawStmt<'c> {
    stmt: *mut sqlite3_stmt,
    db: *mut sqlite3,
    _conn: PhantomData<&'c Conn>,
}

impl Drop for RawStmt<'_> {
    fn drop(&mut self) {
        call!(finalize(self.stmt));
    }
}

impl Db for Conn {
    type Stmt<'c> = RawStmt<'c>;

    fn prepare(&self, sql: &str) -> Result<RawStmt<'_>, DbError> {
        let mut stmt = ptr::null_mut();
        let rc = call!(prepare_v2(
            self.db,
            sql.as_ptr() as *const c_char,
            sql.len() as c_int,
            &mut stmt,
            ptr::null_mut()
        ));
        if rc != SQLITE_OK {
            return Err(self.error(Some(sql)));
        }
        if stmt.is_null() {
            return Err(DbError {
                code: SQLITE_ERROR,
                message: format!("empty SQL statement: {sql:?}"),
            });
        }
        Ok(RawStmt {
            stmt,
            db: self.db,
            _conn: PhantomData,
        })
    }

    fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
        let c = CString::new(sql).map_err(|_| DbError {
            code: SQLITE_ERROR,
            message: "SQL contains NUL".into(),
        })?;
        let mut err: *mut c_char = ptr::null_mut();
        let rc = call!(exec(
            self.db,
            c.as_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut err
        ));
        if !err.is_null() {
            call!(free(err as *mut c_void));
        }
        if rc != SQLITE_OK {
            return Err(self.error(Some(sql)));
        }
        Ok(())
    }

    fn is_autocommit(&self) -> bool {
        call!(get_autocommit(self.db)) != 0
    }
}

impl RawStmt<'_> {
    fn step(&mut self) -> Result<bool, DbError> {
        match call!(step(self.stmt)) {
            SQLITE_ROW => Ok(true),
            SQLITE_DONE => Ok(false),
            _ => {
                let e = Conn { db: self.db }.error(None);
                call!(reset(self.stmt));
                Err(e)
            }
        }
    }

    fn column(&self, i: c_int) -> ValueRef<'_> {
        let s = self.stmt;
        match call!(column_type(s, i)) {
            SQLITE_INTEGER => ValueRef::Integer(call!(column_int64(s, i))),
            SQLITE_FLOAT => ValueRef::Real(call!(column_double(s, i))),
            SQLITE_TEXT => {
                let p = call!(column_text(s, i));
                let n = call!(column_bytes(s, i)) as usize;
                // Safety: valid until the next step/reset, which needs &mut self.
                ValueRef::Text(if p.is_null() {
                    &[]
                } else {
                    unsafe { std::slice::from_raw_parts(p, n) }
                })
            }
            SQLITE_BLOB => {
                let p = call!(column_blob(s, i)) as *const u8;
                let n = call!(column_bytes(s, i)) as usize;
                // Safety: as above.
                ValueRef::Blob(if p.is_null() {
                    &[]
                } else {
                    unsafe { std::slice::from_raw_parts(p, n) }
                })
            }
            _ => ValueRef::Null,
        }
    }
}

impl Stmt for RawStmt<'_> {
    fn bind(&mut self, index: usize, value: ValueRef<'_>) -> Result<(), DbError> {
        let (s, i) = (self.stmt, index as c_int);
        let rc = match value {
            ValueRef::Null => call!(bind_null(s, i)),
            ValueRef::Integer(v) => call!(bind_int64(s, i, v)),
            ValueRef::Real(v) => call!(bind_double(s, i, v)),
            // Empty slices have a dangling non-null pointer, which SQLite reads as a
            // zero-length value (a null pointer would bind NULL).
            ValueRef::Text(t) => {
                call!(bind_text64(
                    s,
                    i,
                    t.as_ptr() as *const c_char,
                    t.len() as u64,
                    transient(),
                    SQLITE_UTF8 as u8
                ))
            }
            ValueRef::Blob(b) => call!(bind_blob64(
                s,
                i,
                b.as_ptr() as *const c_void,
                b.len() as u64,
                transient()
            )),
        };
        if rc != SQLITE_OK {
            return Err(Conn { db: self.db }.error(None));
        }
        Ok(())
    }

    fn execute(&mut self) -> Result<usize, DbError> {
        while self.step()? {}
        let changes = call!(changes(self.db));
        call!(reset(self.stmt));
        Ok(changes.max(0) as usize)
    }

    fn query<E: From<DbError>>(
        &mut self,
        f: &mut dyn FnMut(&[ValueRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = call!(column_count(self.stmt));
        loop {
            match self.step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(e.into()),
            }
            // Column values are only valid until the next step, hence a fresh row each time.
            let row: Vec<ValueRef<'_>> = (0..n).map(|i| self.column(i)).collect();
            if let Err(e) = f(&row) {
                call!(reset(self.stmt));
                return Err(e);
            }
        }
        call!(reset(self.stmt));
        Ok(())
    }
}

// ---- pdb_changeset_rows: an eponymous table-valued function ----

const ROWS_SCHEMA: &CStr =
    c"CREATE TABLE x(tbl TEXT, op TEXT, indirect INTEGER, pk TEXT, old TEXT, new TEXT, changeset BLOB HIDDEN)";
/// Index of the hidden argument column.
const ROWS_ARG: c_int = 6;

static ROWS_MODULE: sqlite3_module = sqlite3_module {
    i_version: 1,
    x_create: None, // eponymous only: no CREATE VIRTUAL TABLE
    x_connect: Some(rows_connect),
    x_best_index: Some(rows_best_index),
    x_disconnect: Some(rows_disconnect),
    x_destroy: None,
    x_open: Some(rows_open),
    x_close: Some(rows_close),
    x_filter: Some(rows_filter),
    x_next: Some(rows_next),
    x_eof: Some(rows_eof),
    x_column: Some(rows_column),
    x_rowid: Some(rows_rowid),
    x_update: ptr::null(),
    x_begin: ptr::null(),
    x_sync: ptr::null(),
    x_commit: ptr::null(),
    x_rollback: ptr::null(),
    x_find_function: ptr::null(),
    x_rename: ptr::null(),
    x_savepoint: ptr::null(),
    x_release: ptr::null(),
    x_rollback_to: ptr::null(),
    x_shadow_name: ptr::null(),
};

#[repr(C)]
struct RowsTable {
    base: sqlite3_vtab,
}

#[repr(C)]
struct RowsCursorC {
    base: sqlite3_vtab_cursor,
    inner: RowsCursor,
}

/// The error of a panic in a `pdb_changeset_rows` callback: named, so the user can tell
/// which statement part failed (SQLite's own text for a bare code names nothing).
fn rows_panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    crate::internal_failure("libpdb: pdb_changeset_rows", &panic_message(panic))
}

/// Sets `vtab`'s error message, which SQLite reports for the failing callback.
///
/// # Safety
/// `vtab` must be the live table.
unsafe fn set_vtab_error(vtab: *mut sqlite3_vtab, message: &str) {
    if vtab.is_null() {
        return;
    }
    // Safety: the caller's promise; SQLite frees z_err_msg with sqlite3_free.
    unsafe {
        if !(*vtab).z_err_msg.is_null() {
            call!(free((*vtab).z_err_msg as *mut c_void));
        }
        (*vtab).z_err_msg = sqlite_string(message);
    }
}

/// Runs a vtab callback body; a panic becomes `SQLITE_ERROR` with a message on `vtab`
/// (null when there is no table yet), as a panic in an SQL function does.
///
/// # Safety
/// `vtab` must be null or the live table.
unsafe fn guarded(vtab: *mut sqlite3_vtab, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        // Safety: the caller's promise.
        unsafe { set_vtab_error(vtab, &rows_panic_message(&*panic)) };
        SQLITE_ERROR
    })
}

/// The table of a live cursor.
///
/// # Safety
/// `cur` must be a live cursor of this module.
unsafe fn cursor_vtab(cur: *mut sqlite3_vtab_cursor) -> *mut sqlite3_vtab {
    // Safety: the caller's promise; SQLite sets p_vtab when it opens the cursor.
    unsafe { (*cur).p_vtab }
}

unsafe extern "C" fn rows_connect(
    db: *mut sqlite3,
    _aux: *mut c_void,
    _argc: c_int,
    _argv: *const *const c_char,
    pp_vtab: *mut *mut sqlite3_vtab,
    err: *mut *mut c_char,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let rc = call!(declare_vtab(db, ROWS_SCHEMA.as_ptr()));
        if rc != SQLITE_OK {
            return rc;
        }
        let table = Box::new(RowsTable {
            base: sqlite3_vtab {
                p_module: ptr::null(),
                n_ref: 0,
                z_err_msg: ptr::null_mut(),
            },
        });
        // Safety: SQLite hands a writable out-pointer; it owns the box until disconnect.
        unsafe { *pp_vtab = Box::into_raw(table) as *mut sqlite3_vtab };
        SQLITE_OK
    }));
    outcome.unwrap_or_else(|panic| {
        // Safety: SQLite hands a writable error out-pointer and frees it with sqlite3_free.
        unsafe { *err = sqlite_string(&rows_panic_message(&*panic)) };
        SQLITE_ERROR
    })
}

unsafe extern "C" fn rows_disconnect(vtab: *mut sqlite3_vtab) -> c_int {
    let body = || {
        // Safety: created by Box::into_raw in rows_connect; SQLite disconnects once.
        drop(unsafe { Box::from_raw(vtab as *mut RowsTable) });
        SQLITE_OK
    };
    // Safety: null (the table is going away: there is nowhere to put a message).
    unsafe { guarded(ptr::null_mut(), body) }
}

unsafe extern "C" fn rows_best_index(
    vtab: *mut sqlite3_vtab,
    info: *mut sqlite3_index_info,
) -> c_int {
    let body = || {
        // Safety: SQLite passes a valid index_info with n_constraint entries.
        let info = unsafe { &mut *info };
        let n = info.n_constraint.max(0) as usize;
        let mut unusable = false;
        for i in 0..n {
            // Safety: i < n_constraint.
            let c = unsafe { &*info.a_constraint.add(i) };
            if c.i_column != ROWS_ARG || c.op != SQLITE_INDEX_CONSTRAINT_EQ {
                continue;
            }
            if c.usable == 0 {
                // A later constraint may be usable in this plan (`changeset = ?` beside
                // a join's `changeset = q.cs`); only if none is must another join order
                // supply the argument.
                unusable = true;
                continue;
            }
            // Safety: the usage array has n_constraint entries too.
            let usage = unsafe { &mut *info.a_constraint_usage.add(i) };
            usage.argv_index = 1;
            // Rows hold exactly this argument; any other `changeset = ...` is left to
            // SQLite, which checks it against the hidden column.
            usage.omit = 1;
            info.idx_num = 1;
            info.estimated_cost = 1.0;
            return SQLITE_OK;
        }
        if unusable {
            return SQLITE_CONSTRAINT;
        }
        info.idx_num = 0;
        info.estimated_cost = 1e12;
        SQLITE_OK
    };
    // Safety: SQLite passes the live table.
    unsafe { guarded(vtab, body) }
}

unsafe extern "C" fn rows_open(
    vtab: *mut sqlite3_vtab,
    pp: *mut *mut sqlite3_vtab_cursor,
) -> c_int {
    let body = || {
        let cursor = Box::new(RowsCursorC {
            base: sqlite3_vtab_cursor {
                p_vtab: ptr::null_mut(),
            },
            inner: RowsCursor::default(),
        });
        // Safety: writable out-pointer; SQLite owns the cursor until close.
        unsafe { *pp = Box::into_raw(cursor) as *mut sqlite3_vtab_cursor };
        SQLITE_OK
    };
    // Safety: SQLite passes the live table.
    unsafe { guarded(vtab, body) }
}

unsafe extern "C" fn rows_close(cur: *mut sqlite3_vtab_cursor) -> c_int {
    // Safety: a live cursor; its table outlives it.
    let vtab = unsafe { cursor_vtab(cur) };
    let body = || {
        // Safety: created by Box::into_raw in rows_open; closed once.
        drop(unsafe { Box::from_raw(cur as *mut RowsCursorC) });
        SQLITE_OK
    };
    // Safety: the cursor's live table.
    unsafe { guarded(vtab, body) }
}

unsafe extern "C" fn rows_filter(
    cur: *mut sqlite3_vtab_cursor,
    idx_num: c_int,
    _idx_str: *const c_char,
    argc: c_int,
    argv: *mut *mut sqlite3_value,
) -> c_int {
    // Safety: cur is a live RowsCursorC (rows_open), and its base.p_vtab is set by SQLite.
    let cursor = unsafe { &mut *(cur as *mut RowsCursorC) };
    let vtab = cursor.base.p_vtab;
    let result = catch_unwind(AssertUnwindSafe(|| {
        if panic_hook_target() == Some("pdb_changeset_rows") {
            panic!("PDB_TEST_PANIC asked pdb_changeset_rows to panic");
        }
        let arg = if idx_num == 1 && argc >= 1 {
            // Safety: argc >= 1 live values.
            Some(unsafe { value_ref(*argv) })
        } else {
            None
        };
        cursor.inner.filter(arg)
    }));
    let message = match result {
        Ok(Ok(())) => return SQLITE_OK,
        Ok(Err(e)) => crate::failure("pdb_changeset_rows", &e),
        Err(panic) => rows_panic_message(&*panic),
    };
    // Safety: vtab is the live table.
    unsafe { set_vtab_error(vtab, &message) };
    SQLITE_ERROR
}

unsafe extern "C" fn rows_next(cur: *mut sqlite3_vtab_cursor) -> c_int {
    let body = || {
        // Safety: live cursor.
        unsafe { &mut *(cur as *mut RowsCursorC) }.inner.next();
        SQLITE_OK
    };
    // Safety: a live cursor and its live table.
    unsafe { guarded(cursor_vtab(cur), body) }
}

unsafe extern "C" fn rows_eof(cur: *mut sqlite3_vtab_cursor) -> c_int {
    // A panic here is impossible (a comparison); were there one, "at the end" (nonzero)
    // stops the scan.
    catch_unwind(AssertUnwindSafe(|| {
        // Safety: live cursor.
        c_int::from(unsafe { &*(cur as *mut RowsCursorC) }.inner.eof())
    }))
    .unwrap_or(1)
}

unsafe extern "C" fn rows_column(
    cur: *mut sqlite3_vtab_cursor,
    ctx: *mut sqlite3_context,
    col: c_int,
) -> c_int {
    let body = || {
        if panic_hook_target() == Some("pdb_changeset_rows:column") {
            panic!("PDB_TEST_PANIC asked pdb_changeset_rows:column to panic");
        }
        // Safety: live cursor.
        let cursor = unsafe { &*(cur as *mut RowsCursorC) };
        // Safety: `ctx` is the live context of this xColumn call.
        unsafe { set_result(ctx, cursor.inner.column(col as usize)) };
        SQLITE_OK
    };
    // Safety: a live cursor and its live table.
    unsafe { guarded(cursor_vtab(cur), body) }
}

unsafe extern "C" fn rows_rowid(cur: *mut sqlite3_vtab_cursor, rowid: *mut i64) -> c_int {
    let body = || {
        // Safety: live cursor and a writable out-pointer.
        unsafe { *rowid = (*(cur as *mut RowsCursorC)).inner.rowid() };
        SQLITE_OK
    };
    // Safety: a live cursor and its live table.
    unsafe { guarded(cursor_vtab(cur), body) }
}
