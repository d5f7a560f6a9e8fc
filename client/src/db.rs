//! The client's view of [`pdb_core::db`], plus the transaction helper its writes run in.

pub use pdb_core::db::*;

use crate::Error;

/// Runs `f` inside a transaction that commits on success and rolls back on error: a
/// `BEGIN IMMEDIATE` when the connection is in autocommit mode, else a savepoint nested
/// in the application's transaction. A panic inside `f` rolls back too (the guard's
/// drop runs while unwinding), so no half-done work is ever left open.
pub fn transaction<D: Db, T>(
    db: &D,
    name: &str,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let outer = db.is_autocommit();
    db.execute_batch(&if outer {
        "BEGIN IMMEDIATE".to_string()
    } else {
        format!("SAVEPOINT {name}")
    })?;
    let mut guard = Rollback {
        db,
        outer,
        name,
        armed: true,
    };
    let value = f()?;
    let done = if outer {
        "COMMIT".to_string()
    } else {
        format!("RELEASE {name}")
    };
    db.execute_batch(&done)?;
    guard.armed = false;
    Ok(value)
}

/// Rolls the transaction of [`transaction`] back unless disarmed.
struct Rollback<'a, D: Db> {
    db: &'a D,
    outer: bool,
    name: &'a str,
    armed: bool,
}

impl<D: Db> Drop for Rollback<'_, D> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let sql = if self.outer {
            "ROLLBACK".to_string()
        } else {
            format!("ROLLBACK TO {n}; RELEASE {n}", n = self.name)
        };
        // The error that got us here is what the caller needs; a failed rollback can
        // only mean SQLite already ended the transaction itself.
        let _ = self.db.execute_batch(&sql);
    }
}
