//! Fuzz target: arbitrary bytes applied with `pdb_client::apply::apply` to a small
//! database (`fuzz/apply/base.sql`, two of its tables tracked, with the uncommitted
//! local edits of `fuzz/apply/local.sql`), under every policy, both in autocommit mode
//! and inside an application transaction.
//!
//! Apply promises atomicity: when it fails, every row of every table (user tables,
//! shadow tables, the schema) must be exactly as before. When it succeeds, its counts
//! must add up, the policy must have been honoured, and nothing it wrote may show up
//! as a local change.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use pdb_client::apply::{apply, OnConflict};
use pdb_client::changeset::{parse, Change, Op, TableHeader, Writer};
use pdb_client::value::{decode_field, UNDEFINED};
use pdb_client::{capture, queue, schema, ValueRef};
use pdb_fuzz::{
    dump, dump_queries, encode_row, open, pragma, refused_statement, to_rusqlite, Conn, Dump,
    Tables,
};
use rusqlite::types::ToSqlOutput;
use rusqlite::{params_from_iter, Connection};

const BASE_SQL: &str = include_str!("../apply/base.sql");
const LOCAL_SQL: &str = include_str!("../apply/local.sql");

/// A row: lower-cased table name (SQL compares names case-insensitively) and the key
/// values as stored, encoded and concatenated in column order.
type RowKey = (String, Vec<u8>);

/// Pending local changes by row.
type Pending = BTreeMap<RowKey, PendingChange>;

/// One pending local change.
#[derive(Debug, PartialEq)]
struct PendingChange {
    op: Op,
    /// Per column, whether the new record defines it.
    changed: Vec<bool>,
    bytes: Vec<u8>,
}

/// Resolves the key a change names to the row SQL finds with it: through the key
/// columns' affinity, so that TEXT '1' names the row whose INTEGER key is 1.
struct Keys {
    /// One table per user table of the base, holding only its key columns, with their
    /// declared types; empty between uses.
    db: Connection,
    /// Lower-cased table name: (quoted name in `db`, number of key columns).
    tables: BTreeMap<String, (String, usize)>,
}

impl Keys {
    fn new(template: &Conn) -> Keys {
        let db = Connection::open_in_memory().expect("open");
        let names: Vec<String> = template
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite%' AND name NOT LIKE 'pdb%'",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("list tables");
        let mut tables = BTreeMap::new();
        for name in names {
            let info = schema::table_info(template, &name).expect("table_info");
            let cols: Vec<String> = info
                .columns
                .iter()
                .filter(|c| c.pk != 0)
                .enumerate()
                .map(|(i, c)| {
                    // An INTEGER PRIMARY KEY takes only integers, converting 1.0 and '1'.
                    let pk = if info.integer_pk { " PRIMARY KEY" } else { "" };
                    format!("k{i} {}{pk}", c.decl_type)
                })
                .collect();
            let quoted = schema::quote(&name);
            db.execute_batch(&format!("CREATE TABLE {quoted}({})", cols.join(", ")))
                .expect("key table");
            tables.insert(name.to_ascii_lowercase(), (quoted, cols.len()));
        }
        Keys { db, tables }
    }

    /// The row `c` names, or `None` where no stored key can equal its key (a NULL, or
    /// 1.5 for an INTEGER PRIMARY KEY) or the table is not one of the base.
    fn row(&self, h: &TableHeader<'_>, c: &Change<'_>) -> Option<RowKey> {
        let name = h.name.to_ascii_lowercase();
        let (quoted, n) = self.tables.get(&name)?;
        let rec = c.key_record();
        let values: Vec<ToSqlOutput<'_>> = (0..h.pk.len())
            .filter(|&i| h.pk[i] != 0)
            .map(|i| match decode_field(rec[i])? {
                // NULL (and NaN, which SQLite binds as NULL) equals no key, and an
                // INTEGER PRIMARY KEY turns it into a new rowid of its own.
                ValueRef::Null => None,
                ValueRef::Real(r) if r.is_nan() => None,
                v => Some(ToSqlOutput::Borrowed(to_rusqlite(v))),
            })
            .collect::<Option<_>>()?;
        if values.len() != *n {
            return None;
        }
        let params = vec!["?"; *n].join(", ");
        let stored = self
            .db
            .prepare_cached(&format!(
                "INSERT INTO {quoted} VALUES ({params}) RETURNING *"
            ))
            .and_then(|mut s| {
                s.query_row(params_from_iter(&values), |r| {
                    let mut key = Vec::new();
                    encode_row(r, &mut key)?;
                    Ok(key)
                })
            });
        self.db
            .execute_batch(&format!("DELETE FROM {quoted}"))
            .expect("empty key table");
        stored.ok().map(|key| (name, key))
    }
}

struct State {
    /// The database as it must be before every apply.
    template: Conn,
    keys: Keys,
    /// Where the applies run; copied back from `template` after one changed it.
    db: Conn,
    queries: Vec<String>,
    base: Dump,
    base_pending: Pending,
}

thread_local! {
    // Building the database takes far longer than most inputs take to reject, so it is
    // built once and restored by page copy.
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let state = s.get_or_insert_with(State::new);
        for policy in [OnConflict::Abort, OnConflict::Replace, OnConflict::Skip] {
            for in_transaction in [false, true] {
                state.check(data, policy, in_transaction);
            }
        }
    })
});

impl State {
    fn new() -> State {
        let template = open();
        template.execute_batch(BASE_SQL).expect("base.sql");
        for table in ["t", "w"] {
            capture::track(&template, table).expect("track");
        }
        queue::commit(&template, None).expect("commit the base state");
        template.execute_batch(LOCAL_SQL).expect("local.sql");
        let keys = Keys::new(&template);
        let mut db = open();
        restore(&template, &mut db);
        let queries = dump_queries(
            &db,
            Tables::All {
                schema: None,
                temp: false,
            },
        );
        let base = dump(&db, &queries);
        let base_pending = pending(&db);
        assert!(!base_pending.is_empty(), "local.sql left nothing pending");
        State {
            template,
            keys,
            db,
            queries,
            base,
            base_pending,
        }
    }

    fn check(&mut self, data: &[u8], policy: OnConflict, in_transaction: bool) {
        let db = &self.db;
        if in_transaction {
            db.execute_batch("BEGIN").expect("BEGIN");
        }
        let result = apply(db, data, policy);
        let ctx = format!("{policy:?}, in transaction: {in_transaction}, result: {result:?}");
        assert_eq!(
            db.is_autocommit(),
            !in_transaction,
            "{ctx}: transaction state"
        );
        assert_eq!(
            pragma(db, "defer_foreign_keys"),
            0,
            "{ctx}: defer_foreign_keys"
        );
        assert_eq!(pragma(db, "foreign_keys"), 1, "{ctx}: foreign_keys");
        let after = dump(db, &self.queries);
        match &result {
            Err(e) => {
                assert!(after == self.base, "{ctx}: failed but changed the database");
                if let Some(code) = refused_statement(e) {
                    panic!("{ctx}: SQLite refused a statement of apply (code {code})");
                }
            }
            Ok(stats) => {
                let groups = parse(data).unwrap_or_else(|e| panic!("{ctx}: applied but {e}"));
                let n: u64 = groups.iter().map(|(_, cs)| cs.len() as u64).sum();
                let fk_violations = foreign_key_violations(db);
                let fk_skip = u64::from(policy == OnConflict::Skip && fk_violations > 0);
                assert_eq!(
                    stats.applied + stats.replaced + stats.skipped,
                    n + fk_skip,
                    "{ctx}: counts do not add up to the {n} changes"
                );
                if policy != OnConflict::Replace {
                    assert_eq!(stats.replaced, 0, "{ctx}: replaced without replace");
                }
                if policy == OnConflict::Abort {
                    assert_eq!(stats.skipped, 0, "{ctx}: skipped under abort");
                }
                if policy != OnConflict::Skip {
                    assert_eq!(fk_violations, 0, "{ctx}: left a foreign key violated");
                }
                if stats.applied + stats.replaced == 0 {
                    assert!(
                        after == self.base,
                        "{ctx}: wrote although it applied nothing"
                    );
                }
                let mut named: BTreeMap<RowKey, Vec<&Change<'_>>> = BTreeMap::new();
                for (h, changes) in &groups {
                    for c in changes {
                        if let Some(key) = self.keys.row(h, c) {
                            named.entry(key).or_default().push(c);
                        }
                    }
                }
                let after_pending = pending(db);
                check_pending(&self.base_pending, &after_pending, &named, &ctx);
                if policy == OnConflict::Abort {
                    check_carried_forward(&after_pending, &named, &ctx);
                }
            }
        }
        if in_transaction {
            db.execute_batch("ROLLBACK").expect("ROLLBACK");
        } else if after != self.base {
            restore(&self.template, &mut self.db);
        }
        if after != self.base {
            assert!(
                dump(&self.db, &self.queries) == self.base,
                "{ctx}: undoing the apply failed"
            );
        }
    }
}

/// What apply writes is not a local change: a row it does not name keeps exactly its
/// pending change, and no row becomes pending that was not before.
fn check_pending(
    before: &Pending,
    after: &Pending,
    named: &BTreeMap<RowKey, Vec<&Change<'_>>>,
    ctx: &str,
) {
    for (key, change) in after {
        assert!(
            before.contains_key(key),
            "{ctx}: apply made {key:?} a local change: {change:?}"
        );
    }
    for (key, change) in before {
        if !named.contains_key(key) {
            assert_eq!(
                after.get(key),
                Some(change),
                "{ctx}: apply changed the pending change of {key:?}, which it does not name"
            );
        }
    }
}

/// Under abort every change was applied as written, and the saved image of the row it
/// names moved with it: what the change wrote is no local edit. So a row it deleted or
/// inserted is not pending, and a row it updated is pending, if at all, as a local
/// insert or as an update of other columns than those it wrote.
fn check_carried_forward(after: &Pending, named: &BTreeMap<RowKey, Vec<&Change<'_>>>, ctx: &str) {
    for (key, changes) in named {
        // Constraint retries may reorder several changes to one row; one is certain.
        let [c] = changes[..] else { continue };
        let Some(p) = after.get(key) else { continue };
        match (c.op, p.op) {
            (Op::Update, Op::Insert) => {}
            (Op::Update, Op::Update) => {
                for (i, f) in c.new.iter().enumerate() {
                    assert!(
                        f[0] == UNDEFINED || !p.changed.get(i).copied().unwrap_or(false),
                        "{ctx}: {key:?} is pending with column {i}, which apply wrote: {p:?}"
                    );
                }
            }
            _ => panic!(
                "{ctx}: {key:?} is pending as {p:?} after apply's {:?}",
                c.op
            ),
        }
    }
}

fn restore(from: &Conn, to: &mut Conn) {
    pdb_fuzz::restore(from, to);
    // A per-connection setting: the copy does not carry it.
    to.execute_batch("PRAGMA foreign_keys = ON")
        .expect("foreign_keys");
}

fn foreign_key_violations(db: &Connection) -> usize {
    let mut stmt = db
        .prepare_cached("PRAGMA foreign_key_check")
        .expect("prepare");
    let rows = stmt.query_map([], |_| Ok(())).expect("foreign_key_check");
    rows.count()
}

fn pending(db: &Conn) -> Pending {
    let cs = queue::pending_changeset(db)
        .expect("pending changeset")
        .unwrap_or_default();
    let mut out = Pending::new();
    for (h, changes) in parse(&cs).expect("pending changeset parses") {
        for c in changes {
            let mut w = Writer::new();
            w.change(&c);
            let p = PendingChange {
                op: c.op,
                changed: c.new.iter().map(|f| f[0] != UNDEFINED).collect(),
                bytes: w.finish(),
            };
            // Pending keys are read from the tables, so they are already stored forms.
            out.insert((h.name.to_ascii_lowercase(), c.key(h.pk)), p);
        }
    }
    out
}
