//! C types of the SQLite API that the extension touches, laid out as in `sqlite3.h`.
#![allow(non_camel_case_types, missing_docs)]

use std::os::raw::{c_char, c_int, c_uchar, c_void};

/// Opaque connection handle.
#[repr(C)]
pub struct sqlite3 {
    _private: [u8; 0],
}
/// Opaque prepared statement.
#[repr(C)]
pub struct sqlite3_stmt {
    _private: [u8; 0],
}
/// Opaque function-call context.
#[repr(C)]
pub struct sqlite3_context {
    _private: [u8; 0],
}
/// Opaque value.
#[repr(C)]
pub struct sqlite3_value {
    _private: [u8; 0],
}

/// A destructor argument: a real function, or one of the sentinel values below.
pub type Destructor = Option<unsafe extern "C" fn(*mut c_void)>;
/// A scalar function implementation.
pub type XFunc = unsafe extern "C" fn(*mut sqlite3_context, c_int, *mut *mut sqlite3_value);

/// Base of every virtual table object.
#[repr(C)]
pub struct sqlite3_vtab {
    pub p_module: *const sqlite3_module,
    pub n_ref: c_int,
    pub z_err_msg: *mut c_char,
}

/// Base of every virtual table cursor.
#[repr(C)]
pub struct sqlite3_vtab_cursor {
    pub p_vtab: *mut sqlite3_vtab,
}

#[repr(C)]
pub struct sqlite3_index_constraint {
    pub i_column: c_int,
    pub op: c_uchar,
    pub usable: c_uchar,
    pub i_term_offset: c_int,
}

#[repr(C)]
pub struct sqlite3_index_orderby {
    pub i_column: c_int,
    pub desc: c_uchar,
}

#[repr(C)]
pub struct sqlite3_index_constraint_usage {
    pub argv_index: c_int,
    pub omit: c_uchar,
}

#[repr(C)]
pub struct sqlite3_index_info {
    pub n_constraint: c_int,
    pub a_constraint: *mut sqlite3_index_constraint,
    pub n_order_by: c_int,
    pub a_order_by: *mut sqlite3_index_orderby,
    pub a_constraint_usage: *mut sqlite3_index_constraint_usage,
    pub idx_num: c_int,
    pub idx_str: *mut c_char,
    pub need_to_free_idx_str: c_int,
    pub order_by_consumed: c_int,
    pub estimated_cost: f64,
    pub estimated_rows: i64,
    pub idx_flags: c_int,
    pub col_used: u64,
}

type VtabCtor = unsafe extern "C" fn(
    *mut sqlite3,
    *mut c_void,
    c_int,
    *const *const c_char,
    *mut *mut sqlite3_vtab,
    *mut *mut c_char,
) -> c_int;

/// Version 1 of the module struct, plus the later members left empty.
#[repr(C)]
pub struct sqlite3_module {
    pub i_version: c_int,
    pub x_create: Option<VtabCtor>,
    pub x_connect: Option<VtabCtor>,
    pub x_best_index:
        Option<unsafe extern "C" fn(*mut sqlite3_vtab, *mut sqlite3_index_info) -> c_int>,
    pub x_disconnect: Option<unsafe extern "C" fn(*mut sqlite3_vtab) -> c_int>,
    pub x_destroy: Option<unsafe extern "C" fn(*mut sqlite3_vtab) -> c_int>,
    pub x_open:
        Option<unsafe extern "C" fn(*mut sqlite3_vtab, *mut *mut sqlite3_vtab_cursor) -> c_int>,
    pub x_close: Option<unsafe extern "C" fn(*mut sqlite3_vtab_cursor) -> c_int>,
    pub x_filter: Option<
        unsafe extern "C" fn(
            *mut sqlite3_vtab_cursor,
            c_int,
            *const c_char,
            c_int,
            *mut *mut sqlite3_value,
        ) -> c_int,
    >,
    pub x_next: Option<unsafe extern "C" fn(*mut sqlite3_vtab_cursor) -> c_int>,
    pub x_eof: Option<unsafe extern "C" fn(*mut sqlite3_vtab_cursor) -> c_int>,
    pub x_column: Option<
        unsafe extern "C" fn(*mut sqlite3_vtab_cursor, *mut sqlite3_context, c_int) -> c_int,
    >,
    pub x_rowid: Option<unsafe extern "C" fn(*mut sqlite3_vtab_cursor, *mut i64) -> c_int>,
    pub x_update: *const c_void,
    pub x_begin: *const c_void,
    pub x_sync: *const c_void,
    pub x_commit: *const c_void,
    pub x_rollback: *const c_void,
    pub x_find_function: *const c_void,
    pub x_rename: *const c_void,
    pub x_savepoint: *const c_void,
    pub x_release: *const c_void,
    pub x_rollback_to: *const c_void,
    pub x_shadow_name: *const c_void,
}

// Safety: the module is an immutable table of function pointers shared by all
// connections, as SQLite expects; nothing in it is ever written after construction.
unsafe impl Sync for sqlite3_module {}

pub const SQLITE_OK: c_int = 0;
pub const SQLITE_ERROR: c_int = 1;
pub const SQLITE_CONSTRAINT: c_int = 19;
pub const SQLITE_ROW: c_int = 100;
pub const SQLITE_DONE: c_int = 101;

pub const SQLITE_INTEGER: c_int = 1;
pub const SQLITE_FLOAT: c_int = 2;
pub const SQLITE_TEXT: c_int = 3;
pub const SQLITE_BLOB: c_int = 4;

pub const SQLITE_UTF8: c_int = 1;
pub const SQLITE_OPEN_READWRITE: c_int = 0x2;
pub const SQLITE_DETERMINISTIC: c_int = 0x800;
pub const SQLITE_DIRECTONLY: c_int = 0x80000;
pub const SQLITE_INDEX_CONSTRAINT_EQ: c_uchar = 2;
