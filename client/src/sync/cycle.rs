//! One sync cycle's context: the stored target, the witness it talks to, and the
//! device's tracked tables and strategies, read once for the whole cycle and passed
//! down, instead of re-read by every step that needs them.
//!
//! The tables and strategies are read when a step first needs them (a table whose
//! shape changed fails the cycle where it always did, at the pull, after the push),
//! and read again only when the database's schema changed since (`PRAGMA
//! schema_version`): another connection tracking, untracking or altering a table
//! changes it, and so does this cycle's own bootstrap creating and tracking tables.
//! The cycle's own muting of the capture triggers also changes it without changing
//! the tables; [`LocalView::keep`] says so, inside the same transaction. A transaction
//! that read the view and rolled back forgets it (`LocalView::forget`).

use std::collections::HashMap;
use std::rc::Rc;

use crate::capture::{self, Tracked};
use crate::db::Db;
use crate::sync::config::Config;
use crate::sync::strategy::{self, Strategy};
use crate::transport::Witness;
use crate::value::Value;
use crate::Error;

/// What one cycle works with.
pub struct Cycle<'w> {
    /// The stored sync target (url, group, token, pinned key).
    pub cfg: Config,
    /// The witness of the group.
    pub witness: &'w dyn Witness,
    /// The database file, the key of the live status.
    pub path: String,
    /// The tracked tables and strategies, as of the last schema change.
    pub local: LocalView,
}

/// The device's side of a cycle, each part read on first use and kept until the
/// database's schema changes.
#[derive(Default)]
pub struct LocalView {
    /// `PRAGMA schema_version` when the parts below were read.
    stamp: Option<Value>,
    has_schema: Option<bool>,
    tables: Option<Rc<Vec<Tracked>>>,
    strategies: Option<Rc<HashMap<String, Strategy>>>,
}

fn schema_version<D: Db>(db: &D) -> Result<Option<Value>, Error> {
    Ok(db.query_value("PRAGMA main.schema_version", &[])?)
}

impl LocalView {
    /// Forgets every part if the schema changed since they were read.
    fn fresh<D: Db>(&mut self, db: &D) -> Result<(), Error> {
        let now = schema_version(db)?;
        if self.stamp != now {
            *self = LocalView {
                stamp: now,
                ..LocalView::default()
            };
        }
        Ok(())
    }

    /// Whether the PersonalDB tables exist ([`capture::has_schema`]).
    pub fn has_schema<D: Db>(&mut self, db: &D) -> Result<bool, Error> {
        self.fresh(db)?;
        if let Some(h) = self.has_schema {
            return Ok(h);
        }
        let h = capture::has_schema(db)?;
        self.has_schema = Some(h);
        Ok(h)
    }

    /// The tracked tables, checked against their tracked shape ([`capture::tracked`]).
    pub fn tables<D: Db>(&mut self, db: &D) -> Result<Rc<Vec<Tracked>>, Error> {
        if !self.has_schema(db)? {
            return Ok(Rc::new(Vec::new()));
        }
        if let Some(t) = &self.tables {
            return Ok(t.clone());
        }
        let t = Rc::new(capture::read_tracked(db)?);
        self.tables = Some(t.clone());
        Ok(t)
    }

    /// Each table's strategy where one is set ([`strategy::load`]).
    pub fn strategies<D: Db>(&mut self, db: &D) -> Result<Rc<HashMap<String, Strategy>>, Error> {
        self.fresh(db)?;
        if let Some(s) = &self.strategies {
            return Ok(s.clone());
        }
        let s = Rc::new(strategy::load(db)?);
        self.strategies = Some(s.clone());
        Ok(s)
    }

    /// Forgets every part: for a transaction that read them and then rolled back, whose
    /// schema version may come back later with other tables behind it.
    pub(crate) fn forget(&mut self) {
        *self = LocalView::default();
    }

    /// Keeps what was read, at the schema as it is now: for a transaction that read
    /// its parts and then changed the schema only in ways that leave them as they are
    /// (capture's triggers dropped and made again). Called before that transaction
    /// commits, so no other connection's change can slip in between.
    pub(crate) fn keep<D: Db>(&mut self, db: &D) -> Result<(), Error> {
        self.stamp = schema_version(db)?;
        Ok(())
    }
}
