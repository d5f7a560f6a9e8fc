//! `pdb_resolve(id, 'local' | 'remote' | json_row)`: the application settles a conflict
//! the `manual` strategy left open (or revisits any recorded one). The chosen row is
//! written as an ordinary local write, captured like any other, and goes out with the
//! next `pdb_commit()`.

use crate::capture;
use crate::db::{transaction, Db, Stmt};
use crate::rows::{key_columns, row_from_json, row_to_json, Rows};
use crate::value::{Value, ValueRef};
use crate::Error;

/// Settles conflict `id` with `choice`; returns the row kept as JSON (`null`: absent).
pub fn resolve<D: Db>(db: &D, id: i64, choice: &str) -> Result<String, Error> {
    if !capture::has_schema(db)? {
        return Err(Error::Argument(format!(
            "argument 1: there is no conflict with id {id}"
        )));
    }
    transaction(db, "pdb_resolve", || {
        let mut found: Option<(String, String, Option<String>)> = None;
        {
            let mut stmt =
                db.prepare("SELECT table_name, pk, local FROM pdb_conflicts WHERE id = ?1")?;
            stmt.bind(1, ValueRef::Integer(id))?;
            stmt.query::<Error>(&mut |r| {
                let text = |v: ValueRef<'_>| match v {
                    ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    _ => None,
                };
                if let (Some(t), Some(pk)) = (text(r[0]), text(r[1])) {
                    found = Some((t, pk, text(r[2])));
                }
                Ok(())
            })?;
        }
        let Some((table, pk, local)) = found else {
            return Err(Error::Argument(format!(
                "argument 1: there is no conflict with id {id}"
            )));
        };
        let tracked = capture::tracked(db)?;
        let info = tracked
            .iter()
            .find(|t| t.info.name == table)
            .map(|t| t.info.clone())
            .ok_or_else(|| {
                Error::Table(format!(
                    "conflict {id} is on table \"{table}\", which is no longer tracked"
                ))
            })?;
        let pk: serde_json::Value = serde_json::from_str(&pk).map_err(|e| {
            Error::Diverged(format!("pdb_conflicts row {id} has a corrupt key: {e}"))
        })?;
        let key: Option<Vec<Value>> = pk
            .as_array()
            .filter(|a| a.len() == key_columns(&info).len())
            .and_then(|a| a.iter().map(crate::rows::value_from_json).collect());
        let key = key
            .ok_or_else(|| Error::Diverged(format!("pdb_conflicts row {id} has a corrupt key")))?;
        let mut rows = Rows::new(db, &info);
        let current = rows.get(&key)?;
        let target = match choice {
            "remote" => current.clone(),
            "local" => {
                let j: serde_json::Value = match &local {
                    None => serde_json::Value::Null,
                    Some(l) => serde_json::from_str(l).map_err(|e| {
                        Error::Diverged(format!(
                            "pdb_conflicts row {id} has a corrupt local row: {e}"
                        ))
                    })?,
                };
                row_from_json(&info, &j, &key, None, &format!("conflict {id}'s local row"))?
            }
            other => {
                let j: serde_json::Value = serde_json::from_str(other).map_err(|e| {
                    Error::Argument(format!(
                        "argument 2 must be 'local', 'remote' or the row as a JSON object (or null), not {other:?}: {e}"
                    ))
                })?;
                row_from_json(&info, &j, &key, current.as_ref(), "argument 2")?
            }
        };
        rows.put(&key, current.as_ref(), target.as_ref())?;
        let outcome = target
            .as_ref()
            .map(|r| row_to_json(&info, Some(r)).to_string());
        db.execute(
            "UPDATE pdb_conflicts SET status = CASE status WHEN 'open' THEN 'resolved' ELSE status END, \
             outcome = ?2, resolved_at = ?3 WHERE id = ?1",
            &[
                ValueRef::Integer(id),
                outcome.as_deref().map_or(ValueRef::Null, |o| ValueRef::Text(o.as_bytes())),
                ValueRef::Integer(capture::now_ms()),
            ],
        )?;
        Ok(outcome.unwrap_or_else(|| "null".into()))
    })
}
