//! Conflict strategies (DESIGN §6): what a rebase keeps for a row that both this device
//! and the group's history changed. Decisions are on whole rows: B (before the local
//! write), L (after it) and R (after the remote commits); `None` is an absent row.

use std::collections::HashMap;

use crate::db::{Db, Stmt};
use crate::rows::{row_from_json, row_to_json, Row};
use crate::schema::{quote, TableInfo};
use crate::value::{Value, ValueRef};
use crate::Error;

/// How conflicts on one table are settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// The group's version stays.
    RemoteWins,
    /// The local version is written over it.
    LocalWins,
    /// Per column, the side that changed it; both changed: local. Deletes win.
    ColumnMerge,
    /// An application SQL function `f(base, local, remote)` (JSON) returns the row.
    Custom(String),
    /// The group's version stays and the local one waits in `pdb_conflicts`.
    Manual,
}

/// The strategy of tables that have none set.
pub const DEFAULT: Strategy = Strategy::ColumnMerge;

impl Strategy {
    /// Parses `pdb_set_strategy`'s arguments.
    pub fn parse(name: &str, function: Option<&str>) -> Result<Strategy, Error> {
        let s = match name {
            "remote-wins" => Strategy::RemoteWins,
            "local-wins" => Strategy::LocalWins,
            "column-merge" => Strategy::ColumnMerge,
            "manual" => Strategy::Manual,
            "custom" => match function {
                Some(f) if !f.is_empty() => return Ok(Strategy::Custom(f.to_string())),
                _ => {
                    return Err(Error::Argument(
                        "strategy 'custom' needs argument 3: the name of an SQL function f(base, local, remote)"
                            .into(),
                    ))
                }
            },
            _ => {
                return Err(Error::Argument(format!(
                    "argument 2 (strategy) must be 'remote-wins', 'local-wins', 'column-merge', 'custom' or 'manual', not '{name}'"
                )))
            }
        };
        if function.is_some() {
            return Err(Error::Argument(format!(
                "argument 3 (sql_function) is only for strategy 'custom', not '{name}'"
            )));
        }
        Ok(s)
    }

    /// The name stored and reported.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::RemoteWins => "remote-wins",
            Strategy::LocalWins => "local-wins",
            Strategy::ColumnMerge => "column-merge",
            Strategy::Custom(_) => "custom",
            Strategy::Manual => "manual",
        }
    }

    fn function(&self) -> Option<&str> {
        match self {
            Strategy::Custom(f) => Some(f),
            _ => None,
        }
    }
}

/// `pdb_set_strategy(table, strategy [, function])`: `table` must be tracked.
pub fn set<D: Db>(db: &D, table: &str, strategy: &Strategy) -> Result<String, Error> {
    let tracked = crate::capture::tracked(db)?;
    let Some(t) = tracked
        .iter()
        .find(|t| t.info.name.eq_ignore_ascii_case(table))
    else {
        return Err(Error::Table(format!(
            "table \"{table}\" is not tracked: pdb_track('{table}') first"
        )));
    };
    db.execute(
        "INSERT OR REPLACE INTO pdb_strategies(table_name, strategy, function) VALUES (?1, ?2, ?3)",
        &[
            ValueRef::Text(t.info.name.as_bytes()),
            ValueRef::Text(strategy.name().as_bytes()),
            strategy
                .function()
                .map_or(ValueRef::Null, |f| ValueRef::Text(f.as_bytes())),
        ],
    )?;
    Ok(t.info.name.clone())
}

/// Every table's strategy that differs from [`DEFAULT`], by table name.
pub fn load<D: Db>(db: &D) -> Result<HashMap<String, Strategy>, Error> {
    let mut out = HashMap::new();
    let mut stmt = db.prepare("SELECT table_name, strategy, function FROM pdb_strategies")?;
    let mut bad = None;
    stmt.query::<Error>(&mut |row| {
        let text = |v: ValueRef<'_>| match v {
            ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        };
        let (Some(table), Some(name)) = (text(row[0]), text(row[1])) else {
            return Ok(());
        };
        match Strategy::parse(&name, text(row[2]).as_deref()) {
            Ok(s) => {
                out.insert(table, s);
            }
            Err(e) => bad = Some(e),
        }
        Ok(())
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// What a strategy decided for one conflicting row.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The row to keep (`None`: absent).
    pub keep: Option<Row>,
    /// The conflict waits for `pdb_resolve` (manual).
    pub open: bool,
}

/// Settles one row that both sides changed (`base` ≠ `remote` ≠ `local`).
pub fn decide<D: Db>(
    db: &D,
    strategy: &Strategy,
    info: &TableInfo,
    key: &[Value],
    base: Option<&Row>,
    local: Option<&Row>,
    remote: Option<&Row>,
) -> Result<Decision, Error> {
    let keep = match strategy {
        Strategy::RemoteWins | Strategy::Manual => remote.cloned(),
        Strategy::LocalWins => local.cloned(),
        Strategy::ColumnMerge => match (local, remote) {
            (Some(l), Some(r)) => {
                let nulls = vec![Value::Null; l.len()];
                let b = base.unwrap_or(&nulls);
                Some(
                    (0..l.len())
                        .map(|i| {
                            if l[i].as_ref().same(b[i].as_ref()) {
                                r[i].clone()
                            } else {
                                l[i].clone()
                            }
                        })
                        .collect(),
                )
            }
            // A delete on either side wins over an update on the other.
            _ => None,
        },
        Strategy::Custom(f) => custom(db, f, info, key, base, local, remote)?,
    };
    Ok(Decision {
        keep,
        open: *strategy == Strategy::Manual,
    })
}

/// Calls the application's function with B, L and R as JSON text (NULL when absent).
fn custom<D: Db>(
    db: &D,
    function: &str,
    info: &TableInfo,
    key: &[Value],
    base: Option<&Row>,
    local: Option<&Row>,
    remote: Option<&Row>,
) -> Result<Option<Row>, Error> {
    let json = |r: Option<&Row>| r.map(|r| row_to_json(info, Some(r)).to_string());
    let (b, l, r) = (json(base), json(local), json(remote));
    let mut stmt = db
        .prepare(&format!("SELECT {}(?1, ?2, ?3)", quote(function)))
        .map_err(|e| {
            Error::Custom(format!(
                "table \"{}\" resolves conflicts with custom function {function}(), which this connection cannot call: {e}",
                info.name
            ))
        })?;
    stmt.bind_all(&[
        ValueRef::text_or_null(b.as_deref()),
        ValueRef::text_or_null(l.as_deref()),
        ValueRef::text_or_null(r.as_deref()),
    ])?;
    let mut out: Option<Value> = None;
    stmt.query::<Error>(&mut |row| {
        out = Some(row[0].to_owned());
        Ok(())
    })
    .map_err(|e| {
        Error::Custom(format!(
            "custom function {function}() failed on a conflict in table \"{}\" (key {}); nothing was applied: {e}",
            info.name,
            crate::rows::key_to_json(key)
        ))
    })?;
    let what = format!("the result of {function}() for table \"{}\"", info.name);
    match out {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Text(t)) => {
            let j: serde_json::Value = serde_json::from_slice(&t)
                .map_err(|e| Error::Custom(format!("{what} is not JSON: {e}")))?;
            row_from_json(info, &j, key, local.or(remote), &what).map_err(|e| match e {
                Error::Argument(m) => Error::Custom(m),
                e => e,
            })
        }
        Some(_) => Err(Error::Custom(format!("{what} must be JSON text or NULL"))),
    }
}
