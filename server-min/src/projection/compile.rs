//! The SQL of one projection version inside a group's projection file: its tables, the
//! triggers on the mirror's table that keep them current, the statements that fill
//! them from the mirror (backfill), and the recomputation tests compare them with.
//! Every name is ours (`pdb_p<version>_<name>...`) or a quoted catalog name; every
//! literal comes from [`super::expr`]'s one writer.
//!
//! Layout, with `P` = `pdb_p<version>_<name>`, `s*` the source key columns, `k*` the
//! key or group fields, `v*` the returned columns and `sc` the scope column:
//! - index: `P(s*, k*, v*, sc)`, keyed by `s*`, indexed by `(k*, s*)`;
//! - aggregate: `P(k*, sc, n, <accumulators>)` plus a value multiset `P_m<j>(k*, sc, v, c)`
//!   per min/max measure;
//! - search: a docs table `P_d(docid, s*, v*, sc)` and an FTS5 table `P_f` whose
//!   external content it is, so a 'delete' always sends the values that were indexed.

use pdb_core::schema::{quote, TableInfo};

use super::expr::{Expr, Measure};
use super::spec::{Field, Plan, PlanBody};

/// The SQL of one projection version.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Table name prefix.
    pub prefix: String,
    /// CREATE TABLE / INDEX statements.
    pub create: Vec<String>,
    /// CREATE TRIGGER statements.
    pub triggers: Vec<String>,
    /// Names of the triggers.
    pub trigger_names: Vec<String>,
    /// Names of the tables (dropped with the version).
    pub tables: Vec<String>,
    /// Fills the tables from the mirror. When `whole` is set, the first statement
    /// takes a rowid range (`?1 < rowid <= ?2`), so a large table is filled in steps
    /// whose progress can be shown.
    pub backfill: Vec<String>,
    /// The first backfill statement over the whole table at once, for a table without
    /// a rowid (WITHOUT ROWID); `None` when the first statement is already that.
    pub whole: Option<String>,
}

/// Name prefix of a version's objects. The version first: versions are unique in
/// the witness, so `pdb_p<version>_` names the objects of one version and no other
/// (with the name first, `a` version 1 and `a_1` version 2 would share a prefix).
pub fn prefix(name: &str, version: u64) -> String {
    format!("pdb_p{version}_{name}")
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

fn names(p: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{p}{i}")).collect()
}

/// `a IS b AND ...` over pairs; `1` for none.
fn same(pairs: impl IntoIterator<Item = (String, String)>) -> String {
    let v: Vec<String> = pairs
        .into_iter()
        .map(|(a, b)| format!("{a} IS {b}"))
        .collect();
    if v.is_empty() {
        "1".into()
    } else {
        v.join(" AND ")
    }
}

struct Ctx<'a> {
    t: &'a TableInfo,
    plan: &'a Plan,
    table: String,
}

impl Ctx<'_> {
    fn col(&self, row: &str, i: usize) -> String {
        format!("{row}{}", quote(&self.t.columns[i].name))
    }

    fn pk(&self, row: &str) -> Vec<String> {
        self.t
            .pk_columns()
            .iter()
            .map(|&c| self.col(row, c))
            .collect()
    }

    fn cond(&self, row: &str) -> String {
        self.plan
            .filter
            .as_ref()
            .map_or("1".into(), |w| format!("({})", w.sql(self.t, row)))
    }

    fn fields(&self, f: &[Field], row: &str) -> Vec<String> {
        f.iter().map(|f| f.expr.sql(self.t, row)).collect()
    }

    fn scope(&self, row: &str) -> Option<String> {
        self.plan.scope.as_ref().map(|(c, _)| self.col(row, *c))
    }

    /// The declared type of column `i`, so that a copy keeps its affinity.
    fn decl(&self, i: usize) -> String {
        let d = &self.t.columns[i].decl_type;
        if d.is_empty() {
            String::new()
        } else {
            format!(" {}", quote(d))
        }
    }

    /// The backfill of one output row per source row into `into`: in a rowid range
    /// (`?1 < rowid <= ?2`), and over the whole table.
    fn copy_rows(&self, into: &str, targets: &[String], values: &[String]) -> (String, String) {
        let head = format!(
            "INSERT INTO {into} ({}) SELECT {} FROM main.{} WHERE",
            list(targets.iter().cloned()),
            list(values.iter().cloned()),
            self.table
        );
        let cond = self.cond("");
        (
            format!("{head} rowid > ?1 AND rowid <= ?2 AND {cond}"),
            format!("{head} {cond}"),
        )
    }

    /// A version's three triggers on the source table (the update one removes the old
    /// row's entries, then adds the new one's) and their names.
    fn triggers(&self, p: &str, add: &[String], remove: &[String]) -> (Vec<String>, Vec<String>) {
        let (ai, ad, au) = (format!("{p}_ai"), format!("{p}_ad"), format!("{p}_au"));
        let update: Vec<String> = remove.iter().chain(add).cloned().collect();
        (
            vec![
                self.trigger(&ai, "INSERT", add),
                self.trigger(&ad, "DELETE", remove),
                self.trigger(&au, "UPDATE", &update),
            ],
            vec![ai, ad, au],
        )
    }

    fn trigger(&self, name: &str, event: &str, body: &[String]) -> String {
        format!(
            "CREATE TRIGGER {name} AFTER {event} ON main.{} BEGIN {}; END",
            self.table,
            body.join("; ")
        )
    }
}

/// The SQL of `plan` as version `version` of projection `name`.
pub fn compile(name: &str, version: u64, plan: &Plan) -> Compiled {
    let p = prefix(name, version);
    let cx = Ctx {
        t: &plan.table,
        plan,
        table: quote(&plan.table.name),
    };
    match &plan.body {
        PlanBody::Index { key, columns } => index(&cx, &p, key, columns),
        PlanBody::Aggregate { group_by, measures } => aggregate(
            &cx,
            &p,
            group_by,
            &measures
                .iter()
                .map(|m| m.measure.clone())
                .collect::<Vec<_>>(),
        ),
        PlanBody::Search { columns, tokenizer } => search(&cx, &p, columns, tokenizer),
    }
}

fn index(cx: &Ctx, p: &str, key: &[Field], columns: &[usize]) -> Compiled {
    let pkc = cx.t.pk_columns();
    let (s, k, v) = (
        names("s", pkc.len()),
        names("k", key.len()),
        names("v", columns.len()),
    );
    let mut cols: Vec<String> = pkc
        .iter()
        .zip(&s)
        .map(|(&c, n)| format!("{n}{} NOT NULL", cx.decl(c)))
        .collect();
    cols.extend(k.iter().cloned());
    cols.extend(
        columns
            .iter()
            .zip(&v)
            .map(|(&c, n)| format!("{n}{}", cx.decl(c))),
    );
    let scoped = cx.plan.scope.is_some();
    if let Some((c, _)) = &cx.plan.scope {
        cols.push(format!("sc{}", cx.decl(*c)));
    }
    let mut create = vec![
        format!(
            "CREATE TABLE {p} ({}, PRIMARY KEY ({}))",
            list(cols),
            list(s.clone())
        ),
        format!(
            "CREATE INDEX {p}_k ON {p} ({}, {})",
            list(k.clone()),
            list(s.clone())
        ),
    ];
    if scoped {
        create.push(format!(
            "CREATE INDEX {p}_sc ON {p} (sc, {}, {})",
            list(k.clone()),
            list(s.clone())
        ));
    }
    let mut targets: Vec<String> = s.iter().chain(&k).chain(&v).cloned().collect();
    let values = |row: &str| {
        let mut e = cx.pk(row);
        e.extend(cx.fields(key, row));
        e.extend(columns.iter().map(|&c| cx.col(row, c)));
        e.extend(cx.scope(row));
        e
    };
    if scoped {
        targets.push("sc".into());
    }
    let insert = |row: &str| {
        format!(
            "INSERT INTO {p} ({}) SELECT {} WHERE {}",
            list(targets.clone()),
            list(values(row)),
            cx.cond(row)
        )
    };
    let delete = |row: &str| {
        format!(
            "DELETE FROM {p} WHERE {}",
            same(s.iter().cloned().zip(cx.pk(row)))
        )
    };
    let (backfill, whole) = cx.copy_rows(p, &targets, &values(""));
    finish(
        cx,
        p,
        create,
        vec![p.to_string()],
        [insert("NEW.")],
        [delete("OLD.")],
        (backfill, whole),
    )
}

/// Adds the three triggers (the update one deletes the old row's entries, then adds
/// the new one's) and the backfill to a version's SQL.
fn finish<const A: usize, const D: usize>(
    cx: &Ctx,
    p: &str,
    create: Vec<String>,
    tables: Vec<String>,
    add: [String; A],
    remove: [String; D],
    (chunk, whole): (String, String),
) -> Compiled {
    let (triggers, trigger_names) = cx.triggers(p, &add, &remove);
    Compiled {
        prefix: p.to_string(),
        create,
        triggers,
        trigger_names,
        tables,
        backfill: vec![chunk],
        whole: Some(whole),
    }
}

/// Accumulator columns of measure `j`: (name, initial value).
fn accumulators(j: usize, m: &Measure) -> Vec<String> {
    match m {
        Measure::CountRows => vec![],
        Measure::Count(_) => vec![format!("nn{j}")],
        Measure::Sum(_) | Measure::Avg(_) => {
            vec![
                format!("i{j}"),
                format!("r{j}"),
                format!("nn{j}"),
                format!("nr{j}"),
            ]
        }
        Measure::Min(_) | Measure::Max(_) => vec![],
    }
}

/// `typeof(x)` is one SQLite sums as a double.
fn inexact(x: &str) -> String {
    format!("typeof({x}) IN ('real', 'text', 'blob')")
}

fn aggregate(cx: &Ctx, p: &str, group_by: &[Field], measures: &[Measure]) -> Compiled {
    let k = names("k", group_by.len());
    let mut keycols = k.clone();
    if cx.plan.scope.is_some() {
        keycols.push("sc".into());
    }
    let keyvals = |row: &str| {
        let mut v = cx.fields(group_by, row);
        v.extend(cx.scope(row));
        v
    };
    let mut accs = vec!["n".to_string()];
    for (j, m) in measures.iter().enumerate() {
        accs.extend(accumulators(j, m));
    }
    let mut cols = keycols.clone();
    cols.extend(accs.iter().map(|a| format!("{a} NOT NULL DEFAULT 0")));
    let mut create = vec![format!("CREATE TABLE {p} ({})", list(cols))];
    if !keycols.is_empty() {
        create.push(format!(
            "CREATE INDEX {p}_k ON {p} ({})",
            list(keycols.clone())
        ));
    }
    let mut tables = vec![p.to_string()];
    let multisets: Vec<(usize, &Expr)> = measures
        .iter()
        .enumerate()
        .filter_map(|(j, m)| match m {
            Measure::Min(e) | Measure::Max(e) => Some((j, e)),
            _ => None,
        })
        .collect();
    for (j, _) in &multisets {
        let m = format!("{p}_m{j}");
        let mut mc = keycols.clone();
        mc.push("v".into());
        create.push(format!(
            "CREATE TABLE {m} ({}, c NOT NULL)",
            list(mc.clone())
        ));
        create.push(format!("CREATE INDEX {m}_k ON {m} ({})", list(mc)));
        tables.push(m);
    }
    let this_group = |row: &str| same(keycols.iter().cloned().zip(keyvals(row)));
    let step = |row: &str, sign: &str| -> Vec<String> {
        let w = cx.cond(row);
        let grp = this_group(row);
        let mut out = Vec::new();
        if sign == "+" {
            out.push(format!(
                "INSERT INTO {p} ({}) SELECT {} WHERE {w} AND NOT EXISTS (SELECT 1 FROM {p} WHERE {grp})",
                list(keycols.clone()),
                list(keyvals(row)),
            ));
        }
        let mut sets = vec![format!("n = n {sign} 1")];
        let mut overflow = Vec::new();
        for (j, m) in measures.iter().enumerate() {
            match m {
                Measure::Count(e) => sets.push(format!(
                    "nn{j} = nn{j} {sign} ({} IS NOT NULL)",
                    e.sql(cx.t, row)
                )),
                Measure::Sum(e) | Measure::Avg(e) => {
                    let x = e.sql(cx.t, row);
                    sets.push(format!(
                        "i{j} = i{j} {sign} (CASE WHEN typeof({x}) = 'integer' THEN {x} ELSE 0 END)"
                    ));
                    sets.push(format!(
                        "r{j} = r{j} {sign} (CASE WHEN {} THEN CAST({x} AS REAL) ELSE 0.0 END)",
                        inexact(&x)
                    ));
                    sets.push(format!("nn{j} = nn{j} {sign} ({x} IS NOT NULL)"));
                    sets.push(format!("nr{j} = nr{j} {sign} ({})", inexact(&x)));
                    overflow.push(format!("typeof(i{j}) != 'integer'"));
                }
                _ => {}
            }
        }
        out.push(format!("UPDATE {p} SET {} WHERE {w} AND {grp}", list(sets)));
        if !overflow.is_empty() {
            // Adding integers past 64 bits gives a double in SQL arithmetic, where sum()
            // fails: fail the same way rather than serve a rounded sum as exact.
            out.push(format!(
                "SELECT RAISE(ABORT, 'pdb projection: an integer sum overflows 64 bits') \
                 WHERE EXISTS (SELECT 1 FROM {p} WHERE {grp} AND ({}))",
                overflow.join(" OR ")
            ));
        }
        for (j, e) in &multisets {
            let m = format!("{p}_m{j}");
            let x = e.sql(cx.t, row);
            let this = format!("{} AND v IS {x} AND typeof(v) = typeof({x})", grp);
            if sign == "+" {
                let mut mc = keycols.clone();
                mc.push("v".into());
                mc.push("c".into());
                let mut vals = keyvals(row);
                vals.push(x.clone());
                vals.push("0".into());
                out.push(format!(
                    "INSERT INTO {m} ({}) SELECT {} WHERE {w} AND {x} IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM {m} WHERE {this})",
                    list(mc),
                    list(vals)
                ));
            }
            out.push(format!(
                "UPDATE {m} SET c = c {sign} 1 WHERE {w} AND {x} IS NOT NULL AND {this}"
            ));
            if sign == "-" {
                out.push(format!("DELETE FROM {m} WHERE {this} AND c = 0"));
            }
        }
        if sign == "-" {
            out.push(format!("DELETE FROM {p} WHERE {grp} AND n = 0"));
        }
        out
    };
    let add = step("NEW.", "+");
    let remove = step("OLD.", "-");
    // The backfill groups as the triggers do: by value with BINARY collation (a key
    // column's own collation would merge what `IS` keeps apart).
    let group_terms: Vec<String> = keyvals("")
        .iter()
        .map(|v| format!("{v} COLLATE BINARY"))
        .collect();
    let group_clause = |extra: &[String]| {
        let mut g = group_terms.clone();
        g.extend(extra.iter().cloned());
        if g.is_empty() {
            // One group of everything; none while no row counts.
            " HAVING count(*) > 0".to_string()
        } else {
            format!(" GROUP BY {}", list(g))
        }
    };
    let mut sel = keyvals("");
    sel.push("count(*)".into());
    for m in measures {
        match m {
            Measure::Count(e) => sel.push(format!("count({})", e.sql(cx.t, ""))),
            Measure::Sum(e) | Measure::Avg(e) => {
                let x = e.sql(cx.t, "");
                sel.push(format!(
                    "sum(CASE WHEN typeof({x}) = 'integer' THEN {x} ELSE 0 END)"
                ));
                sel.push(format!(
                    "total(CASE WHEN {} THEN CAST({x} AS REAL) END)",
                    inexact(&x)
                ));
                sel.push(format!("count({x})"));
                sel.push(format!("sum({})", inexact(&x)));
            }
            _ => {}
        }
    }
    let mut fill = vec![format!(
        "INSERT INTO {p} ({}) SELECT {} FROM main.{} WHERE {}{}",
        list(keycols.iter().cloned().chain(accs.iter().cloned())),
        list(sel),
        cx.table,
        cx.cond(""),
        group_clause(&[])
    )];
    for (j, e) in &multisets {
        let x = e.sql(cx.t, "");
        let mut mc = keycols.clone();
        mc.push("v".into());
        mc.push("c".into());
        let mut vals = keyvals("");
        vals.push(x.clone());
        vals.push("count(*)".into());
        fill.push(format!(
            "INSERT INTO {p}_m{j} ({}) SELECT {} FROM main.{} WHERE {} AND {x} IS NOT NULL{}",
            list(mc),
            list(vals),
            cx.table,
            cx.cond(""),
            group_clause(&[format!("{x} COLLATE BINARY"), format!("typeof({x})")])
        ));
    }
    let (triggers, trigger_names) = cx.triggers(p, &add, &remove);
    Compiled {
        prefix: p.to_string(),
        create,
        triggers,
        trigger_names,
        tables,
        backfill: fill,
        whole: None,
    }
}

/// The SQL that reads measure `j` of an aggregate row of table `p` (aliased `a`).
pub fn measure_sql(p: &str, j: usize, m: &Measure, keycols: &[String]) -> String {
    let ms = || same(keycols.iter().map(|k| (format!("m.{k}"), format!("a.{k}"))));
    match m {
        Measure::CountRows => "a.n".into(),
        Measure::Count(_) => format!("a.nn{j}"),
        Measure::Sum(_) => format!(
            "(CASE WHEN a.nn{j} = 0 THEN NULL WHEN a.nr{j} = 0 THEN a.i{j} ELSE a.i{j} + a.r{j} END)"
        ),
        Measure::Avg(_) => format!(
            "(CASE WHEN a.nn{j} = 0 THEN NULL ELSE (CAST(a.i{j} AS REAL) + a.r{j}) / a.nn{j} END)"
        ),
        Measure::Min(_) => format!("(SELECT min(m.v) FROM {p}_m{j} AS m WHERE {})", ms()),
        Measure::Max(_) => format!("(SELECT max(m.v) FROM {p}_m{j} AS m WHERE {})", ms()),
    }
}

fn search(cx: &Ctx, p: &str, columns: &[usize], tokenizer: &str) -> Compiled {
    let pkc = cx.t.pk_columns();
    let (s, v) = (names("s", pkc.len()), names("v", columns.len()));
    let (d, f) = (format!("{p}_d"), format!("{p}_f"));
    let mut cols = vec!["docid INTEGER PRIMARY KEY".to_string()];
    cols.extend(
        pkc.iter()
            .zip(&s)
            .map(|(&c, n)| format!("{n}{} NOT NULL", cx.decl(c))),
    );
    cols.extend(
        columns
            .iter()
            .zip(&v)
            .map(|(&c, n)| format!("{n}{}", cx.decl(c))),
    );
    let scoped = cx.plan.scope.is_some();
    if let Some((c, _)) = &cx.plan.scope {
        cols.push(format!("sc{}", cx.decl(*c)));
    }
    let create = vec![
        format!("CREATE TABLE {d} ({})", list(cols)),
        format!("CREATE UNIQUE INDEX {d}_s ON {d} ({})", list(s.clone())),
        format!(
            "CREATE VIRTUAL TABLE {f} USING fts5({}, content='{d}', content_rowid='docid', tokenize='{}')",
            list(v.clone()),
            tokenizer.replace('\'', "''")
        ),
    ];
    let mut targets: Vec<String> = s.iter().chain(&v).cloned().collect();
    if scoped {
        targets.push("sc".into());
    }
    let values = |row: &str| {
        let mut e = cx.pk(row);
        e.extend(columns.iter().map(|&c| cx.col(row, c)));
        e.extend(cx.scope(row));
        e
    };
    let this_doc = |row: &str| same(s.iter().cloned().zip(cx.pk(row)));
    let add = [
        format!(
            "INSERT INTO {d} ({}) SELECT {} WHERE {}",
            list(targets.clone()),
            list(values("NEW.")),
            cx.cond("NEW.")
        ),
        format!(
            "INSERT INTO {f} (rowid, {}) SELECT docid, {} FROM {d} WHERE {}",
            list(v.clone()),
            list(v.clone()),
            this_doc("NEW.")
        ),
    ];
    let remove = [
        format!(
            "INSERT INTO {f} ({f}, rowid, {}) SELECT 'delete', docid, {} FROM {d} WHERE {}",
            list(v.clone()),
            list(v.clone()),
            this_doc("OLD.")
        ),
        format!("DELETE FROM {d} WHERE {}", this_doc("OLD.")),
    ];
    let (chunk, whole) = cx.copy_rows(&d, &targets, &values(""));
    let mut c = finish(
        cx,
        p,
        create,
        vec![f.clone(), d.clone()],
        add,
        remove,
        (chunk, whole),
    );
    // The index is built once from the docs table, after it is filled.
    c.backfill
        .push(format!("INSERT INTO {f} ({f}) VALUES ('rebuild')"));
    c
}

/// The projection's rows computed from scratch over the mirror (or any database with
/// the group's tables), in the shape reads return: what the incremental tables must
/// equal. Index: key fields, columns, scope; aggregate: group fields, scope, measures;
/// search: key columns, columns, scope, for the rows the filter keeps.
pub fn recompute_sql(plan: &Plan) -> String {
    let t = &plan.table;
    let cx = Ctx {
        t,
        plan,
        table: quote(&t.name),
    };
    let w = cx.cond("");
    match &plan.body {
        PlanBody::Index { key, columns } => {
            let mut sel = cx.fields(key, "");
            sel.extend(columns.iter().map(|&c| cx.col("", c)));
            sel.extend(cx.scope(""));
            sel.extend(cx.pk(""));
            format!("SELECT {} FROM main.{} WHERE {w}", list(sel), cx.table)
        }
        PlanBody::Aggregate { group_by, measures } => {
            let mut keys = cx.fields(group_by, "");
            keys.extend(cx.scope(""));
            let mut sel = keys.clone();
            sel.extend(measures.iter().map(|m| m.measure.sql(t, "")));
            let group = if keys.is_empty() {
                // Without group fields, an empty table has no group (as the
                // incremental table has no row), where plain SQL would give one.
                " HAVING count(*) > 0".to_string()
            } else {
                format!(
                    " GROUP BY {}",
                    list(keys.iter().map(|k| format!("{k} COLLATE BINARY")))
                )
            };
            format!(
                "SELECT {} FROM main.{} WHERE {w}{group}",
                list(sel),
                cx.table
            )
        }
        PlanBody::Search { columns, .. } => {
            let mut sel = cx.pk("");
            sel.extend(
                columns
                    .iter()
                    .filter(|&&c| t.columns[c].pk == 0)
                    .map(|&c| cx.col("", c)),
            );
            sel.extend(cx.scope(""));
            format!("SELECT {} FROM main.{} WHERE {w}", list(sel), cx.table)
        }
    }
}
