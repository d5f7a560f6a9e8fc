//! Projections (DESIGN §5, issue 13) against a real `pdb-witness` process over
//! loopback HTTP.
//!
//! What a service relies on when it asks the witness instead of replicating a group:
//! a projection read at seq N holds exactly the rows the same spec computes from
//! scratch over the group's tables at seq N, whatever the history did (updates of key
//! and non-key columns, rows moving between groups, deletes, NULLs, unicode); it is
//! kept off the commit path and exactly once across kills of the witness; specs
//! outside the allowed subset are refused by field; client text never becomes SQL
//! (hostile search text is searched literally or refused); pages cover every row
//! once and cursors are good for their own read only; and only the roles and grants
//! that may read a projection can.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pdb_client::cert::{parse_hash, Hash};
use pdb_tests::witness::{Client, Commit, Reply, WitnessClient, WitnessProc};
use pdb_witness::projection::compile::recompute_sql;
use pdb_witness::projection::spec::{Plan, PlanBody, Spec};
use rusqlite::Connection;
use serde_json::{json, Value};

const DDL: &str = "CREATE TABLE events(id INTEGER PRIMARY KEY, title TEXT, starts_at TEXT, duration INTEGER, owner TEXT);\
                   CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT, body TEXT, owner TEXT) WITHOUT ROWID;";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdb-proj-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A writer of a group: a model database that holds what the group should hold, whose
/// changes are committed to the witness one statement batch at a time.
struct Writer {
    model: Connection,
    c: Client,
    group: String,
    seq: u64,
    head: Hash,
    schema: Hash,
    n: u64,
}

impl Writer {
    fn new(c: &Client, group: &str) -> Writer {
        let r = c.create_group(group, DDL);
        assert_eq!(r.status, 201, "{:?}", r.body);
        let model = Connection::open_in_memory().expect("model");
        model.execute_batch(DDL).expect("ddl");
        let ((seq, head), schema) = c.head(group);
        Writer {
            model,
            c: c.clone(),
            group: group.into(),
            seq,
            head,
            schema,
            n: 0,
        }
    }

    /// Runs `sql` on the model and commits what it changed; the seq after it.
    fn exec(&mut self, sql: &str) -> u64 {
        let mut s = rusqlite::session::Session::new(&self.model).expect("session");
        s.attach(None::<&str>).expect("attach");
        self.model.execute_batch(sql).expect("sql");
        let mut cs = Vec::new();
        s.changeset_strm(&mut cs).expect("changeset");
        drop(s);
        if cs.is_empty() {
            return self.seq;
        }
        self.n += 1;
        let key = format!("w{}", self.n);
        let r = self.c.commit(
            &self.group,
            &Commit {
                changeset: &cs,
                base_seq: self.seq,
                base_head: self.head,
                key: &key,
                schema: self.schema,
                policy: None,
            },
        );
        assert_eq!(r.status, 201, "{sql}: {:?}", r.body);
        self.seq = r.body["seq"].as_u64().expect("seq");
        self.head = parse_hash(r.body["head"].as_str().expect("head")).expect("head");
        self.seq
    }
}

fn put(c: &Client, group: &str, name: &str, spec: &Value) -> Reply {
    c.send(
        "PUT",
        &format!("/v1/groups/{group}/projections/{name}"),
        &[],
        Some(spec.to_string().into_bytes()),
    )
    .expect("witness reachable")
}

fn get(c: &Client, path: &str) -> Reply {
    c.send("GET", path, &[], None).expect("witness reachable")
}

/// Reads every page of a projection at `min_seq`, following `next`.
fn read_all(c: &Client, group: &str, name: &str, query: &str, min_seq: u64) -> (u64, Vec<Value>) {
    let mut rows = Vec::new();
    let mut next: Option<String> = None;
    let mut seq = None;
    loop {
        let mut q = format!("min_seq={min_seq}&limit=7");
        if !query.is_empty() {
            q.push('&');
            q.push_str(query);
        }
        if let Some(n) = &next {
            q.push_str(&format!("&next={n}"));
        }
        let r = get(c, &format!("/v1/groups/{group}/projections/{name}?{q}"));
        assert_eq!(r.status, 200, "{name}?{q}: {:?}", r.body);
        let s = r.body["seq"].as_u64().expect("seq");
        assert!(s >= min_seq, "read at {s} below min_seq {min_seq}");
        seq.get_or_insert(s);
        rows.extend(r.body["rows"].as_array().expect("rows").iter().cloned());
        match r.body["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => return (seq.unwrap_or(0), rows),
        }
    }
}

fn tables() -> Vec<pdb_client::schema::TableInfo> {
    let conn = Connection::open_in_memory().expect("scratch");
    conn.execute_batch(DDL).expect("ddl");
    ["events", "notes"]
        .iter()
        .map(|t| pdb_client::schema::table_info(&conn, t).expect("table"))
        .collect()
}

fn plan(spec: &Value) -> Plan {
    Spec::from_json(spec.to_string().as_bytes())
        .expect("spec")
        .plan(&tables())
        .expect("plan")
}

/// A value as reads write it: typed JSON, blobs as `{"blob": hex}`.
fn json_of(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => Value::Null,
        V::Integer(i) => json!(i),
        V::Real(r) => json!(r),
        V::Text(t) => json!(String::from_utf8_lossy(t)),
        V::Blob(b) => json!({"blob": b.iter().map(|x| format!("{x:02x}")).collect::<String>()}),
    }
}

/// The rows `spec` computes from scratch over `db`, as a read returns them.
fn recompute(db: &Connection, spec: &Value) -> Vec<Value> {
    let p = plan(spec);
    let t = &p.table;
    let mut names: Vec<String> = Vec::new();
    match &p.body {
        PlanBody::Index { key, columns } => {
            names.extend(key.iter().map(|f| f.name.clone()));
            names.extend(columns.iter().map(|&c| t.columns[c].name.clone()));
        }
        PlanBody::Aggregate { group_by, measures } => {
            names.extend(group_by.iter().map(|f| f.name.clone()));
            if let Some(c) = p.scope_column() {
                names.push(c.name.clone());
            }
            names.extend(measures.iter().map(|m| m.name.clone()));
        }
        PlanBody::Search { columns, .. } => {
            names.extend(t.pk_columns().iter().map(|&c| t.columns[c].name.clone()));
            names.extend(
                columns
                    .iter()
                    .filter(|&&c| t.columns[c].pk == 0)
                    .map(|&c| t.columns[c].name.clone()),
            );
        }
    }
    let sql = recompute_sql(&p);
    let mut stmt = db.prepare(&sql).expect("recompute");
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next().expect("row") {
        let mut m = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            m.insert(n.clone(), json_of(r.get_ref(i).expect("value")));
        }
        out.push(Value::Object(m));
    }
    out
}

/// Compares two row sets as multisets; REAL values within a relative 1e-9 (sums kept
/// incrementally round differently from a recomputation's).
fn same_rows(mut got: Vec<Value>, mut want: Vec<Value>, what: &str) {
    let strip = |v: &mut Vec<Value>| {
        for r in v.iter_mut() {
            if let Some(o) = r.as_object_mut() {
                o.remove("snippet");
                o.remove("rank");
            }
        }
    };
    strip(&mut got);
    strip(&mut want);
    let key = |v: &Value| v.to_string();
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} rows, recomputation has {}\n got {got:?}\nwant {want:?}",
        got.len(),
        want.len()
    );
    for (g, w) in got.iter().zip(&want) {
        assert!(
            close(g, w),
            "{what}: row {g} differs from the recomputation's {w}"
        );
    }
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

fn wait_ready(c: &Client, group: &str, name: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(c, &format!("/v1/groups/{group}/projections/{name}/status"));
        assert_eq!(r.status, 200, "{:?}", r.body);
        match r.body["state"].as_str() {
            Some("ready") => return r.body,
            Some("failed") => panic!("projection {name} failed: {:?}", r.body),
            _ => {}
        }
        assert!(Instant::now() < until, "{name} not ready: {:?}", r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn by_month() -> Value {
    json!({"kind": "aggregate", "table": "events",
           "group_by": {"month": "substr(starts_at, 1, 7)"},
           "measures": {"n": "count(*)", "minutes": "sum(duration)", "longest": "max(duration)",
                        "shortest": "min(duration)", "mean": "avg(duration)", "timed": "count(duration)"}})
}

fn events_index() -> Value {
    json!({"kind": "index", "table": "events", "key": {"month": "substr(starts_at, 1, 7)"},
           "columns": ["id", "title", "starts_at"], "where": "duration IS NOT NULL"})
}

fn notes_search() -> Value {
    json!({"kind": "search", "table": "notes", "columns": ["title", "body"]})
}

#[test]
fn aggregate_index_and_search_follow_the_history() {
    let w = WitnessProc::start(&temp_dir("follow")).removing_data();
    let admin = w.admin_client();
    let mut wr = Writer::new(&admin, "cal");
    wr.exec(
        "INSERT INTO events VALUES (1, 'standup', '2026-11-02T09:00', 15, 'ann');
         INSERT INTO events VALUES (2, 'review', '2026-11-20T14:00', 60, 'bob');
         INSERT INTO events VALUES (3, 'party', '2026-12-24T19:00', 240, 'ann');
         INSERT INTO notes VALUES ('n1', 'Shopping', 'milk and eggs', 'ann');
         INSERT INTO notes VALUES ('n2', 'Ideas', 'a milkshake bar', 'bob');",
    );
    // Declared on a group with history: backfilled, then followed.
    for (name, spec) in [
        ("by_month", by_month()),
        ("events", events_index()),
        ("search", notes_search()),
    ] {
        let r = put(&admin, "cal", name, &spec);
        assert_eq!(r.status, 201, "{name}: {:?}", r.body);
        assert!(r.body["version"].as_u64().is_some());
        // The same spec again changes nothing.
        let again = put(&admin, "cal", name, &spec);
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(again.body["version"], r.body["version"]);
    }
    for name in ["by_month", "events", "search"] {
        let s = wait_ready(&admin, "cal", name);
        assert_eq!(s["lag"], 0, "{s}");
    }
    let check = |wr: &Writer, seq: u64| {
        for (name, spec) in [("by_month", by_month()), ("events", events_index())] {
            let (at, rows) = read_all(&admin, "cal", name, "", seq);
            assert_eq!(
                at, wr.seq,
                "{name} read at {at}, the writer is at {}",
                wr.seq
            );
            same_rows(rows, recompute(&wr.model, &spec), name);
        }
    };
    check(&wr, wr.seq);
    // Rows move between months, durations become NULL (leaving the index), min and
    // max lose their holders, a month empties, unicode arrives.
    wr.exec("UPDATE events SET starts_at = '2026-12-01T10:00' WHERE id = 1");
    wr.exec("UPDATE events SET duration = NULL WHERE id = 2");
    wr.exec("DELETE FROM events WHERE id = 3");
    wr.exec("INSERT INTO events VALUES (4, 'Café ☕', '2027-01-05T08:00', 5, 'ann'); UPDATE events SET duration = 90 WHERE id = 1");
    wr.exec("UPDATE events SET id = 10 WHERE id = 4");
    check(&wr, wr.seq);
    // Search: words, prefixes, ranking, snippets; updates and deletes reindex.
    let search = |q: &str, seq: u64| {
        let r = get(
            &admin,
            &format!("/v1/groups/cal/projections/search?min_seq={seq}&q={q}"),
        );
        assert_eq!(r.status, 200, "{q}: {:?}", r.body);
        r.body["rows"].as_array().expect("rows").clone()
    };
    let ids = |rows: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = rows
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&search("milk", wr.seq)), ["n1"]);
    assert_eq!(ids(&search("milk*", wr.seq)), ["n1", "n2"]);
    let hit = &search("eggs", wr.seq)[0];
    assert!(
        hit["snippet"]
            .as_str()
            .unwrap()
            .contains("<mark>eggs</mark>"),
        "{hit}"
    );
    assert!(hit["rank"].is_number());
    wr.exec("UPDATE notes SET body = 'bread' WHERE id = 'n1'; DELETE FROM notes WHERE id = 'n2'");
    assert!(search("milk*", wr.seq).is_empty());
    assert_eq!(ids(&search("bread", wr.seq)), ["n1"]);
    // Lists and status say where each projection is.
    let list = get(&admin, "/v1/groups/cal/projections");
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["by_month", "events", "search"]);
    let s = wait_ready(&admin, "cal", "by_month");
    assert_eq!(s["seq"], wr.seq);
    assert_eq!(s["kind"], "aggregate");
    // Filters on key fields, typed; keyset pages in key order.
    let r = get(
        &admin,
        &format!(
            "/v1/groups/cal/projections/events?min_seq={}&month=2026-12",
            wr.seq
        ),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"].as_array().unwrap().len(), 1);
    let r = get(
        &admin,
        &format!(
            "/v1/groups/cal/projections/by_month?min_seq={}&month.gte=2026-12&month.lt=2027-02",
            wr.seq
        ),
    );
    let months: Vec<&str> = r.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["month"].as_str().unwrap())
        .collect();
    assert_eq!(months, ["2026-12", "2027-01"]);
    // Redefining rebuilds as a new version; deleting removes it.
    let v1 = s["version"].as_u64().unwrap();
    let mut spec = by_month();
    spec["where"] = json!("duration > 10");
    let r = put(&admin, "cal", "by_month", &spec);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(r.body["version"].as_u64().unwrap() > v1);
    wait_ready(&admin, "cal", "by_month");
    let (_, rows) = read_all(&admin, "cal", "by_month", "", wr.seq);
    same_rows(rows, recompute(&wr.model, &spec), "redefined by_month");
    let del = admin
        .send("DELETE", "/v1/groups/cal/projections/by_month", &[], None)
        .unwrap();
    assert_eq!(del.status, 204);
    let gone = get(&admin, "/v1/groups/cal/projections/by_month");
    assert_eq!(gone.status, 404, "{:?}", gone.body);
}

/// A small deterministic generator, so that a failing history can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "milk",
    "eggs",
    "bread",
    "milkshake",
    "café",
    "tokyo",
    "Ünïcode",
    "plan",
    "plans",
    "x",
];

/// One random statement on the events or notes table of the writer's model.
fn random_statement(rng: &mut Rng) -> String {
    let id = rng.below(25) + 1;
    let month = || ["2026-10", "2026-11", "2026-12", "2027-01"];
    match rng.below(10) {
        0..=2 => {
            let starts = if rng.below(8) == 0 {
                "NULL".to_string()
            } else {
                format!(
                    "'{}-{:02}T10:00'",
                    month()[rng.below(4) as usize],
                    rng.below(28) + 1
                )
            };
            let duration = match rng.below(8) {
                0 => "NULL".to_string(),
                1 => format!("{}.5", rng.below(100)),
                _ => rng.below(300).to_string(),
            };
            let owner = rng.pick(&["'ann'", "'bob'", "NULL"]);
            format!(
                "INSERT OR REPLACE INTO events VALUES ({id}, '{} {}', {starts}, {duration}, {owner})",
                rng.pick(WORDS),
                rng.pick(WORDS)
            )
        }
        // A key column: the row moves to another month.
        3 => format!(
            "UPDATE events SET starts_at = '{}-15' WHERE id = {id}",
            month()[rng.below(4) as usize]
        ),
        // A non-key column only.
        4 => format!(
            "UPDATE events SET duration = {} WHERE id = {id}",
            if rng.below(5) == 0 {
                "NULL".to_string()
            } else {
                rng.below(500).to_string()
            }
        ),
        5 => format!("DELETE FROM events WHERE id = {id}"),
        // The primary key itself.
        6 => format!(
            "UPDATE OR IGNORE events SET id = {} WHERE id = {id}",
            rng.below(25) + 1
        ),
        7 => format!(
            "UPDATE events SET owner = '{}' WHERE id = {id}",
            rng.pick(&["ann", "bob"])
        ),
        8 => format!(
            "INSERT OR REPLACE INTO notes VALUES ('n{id}', '{}', '{} {} {}', '{}')",
            rng.pick(WORDS),
            rng.pick(WORDS),
            rng.pick(WORDS),
            rng.pick(WORDS),
            rng.pick(&["ann", "bob"])
        ),
        _ => format!("DELETE FROM notes WHERE id = 'n{id}'"),
    }
}

fn by_owner_scoped() -> Value {
    json!({"kind": "aggregate", "table": "events", "group_by": {"month": "substr(starts_at, 1, 7)"},
           "measures": {"n": "count(*)", "minutes": "sum(duration)"},
           "where": "duration IS NOT NULL AND duration > 3", "scope": {"column": "owner", "claim": "sub"}})
}

fn all_kinds() -> Vec<(&'static str, Value)> {
    vec![
        ("by_month", by_month()),
        ("events", events_index()),
        ("by_owner", by_owner_scoped()),
        ("search", notes_search()),
    ]
}

/// The ids of the model's notes holding `word` (a prefix when it ends in `*`) as a
/// token, as FTS5's unicode61 tokenizer with diacritics removed would split them.
fn notes_with(model: &Connection, word: &str) -> Vec<String> {
    let fold = |s: &str| -> String {
        s.to_lowercase()
            .chars()
            .map(|c| match c {
                'é' => 'e',
                'ü' => 'u',
                'ï' => 'i',
                c => c,
            })
            .collect()
    };
    let (stem, prefix) = match word.strip_suffix('*') {
        Some(s) => (fold(s), true),
        None => (fold(word), false),
    };
    let mut stmt = model
        .prepare("SELECT id, title || ' ' || body FROM notes")
        .unwrap();
    let mut ids: Vec<String> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .filter(|(_, text)| {
            fold(text).split(|c: char| !c.is_alphanumeric()).any(|t| {
                if prefix {
                    t.starts_with(&stem)
                } else {
                    t == stem
                }
            })
        })
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids
}

/// Every projection read at the writer's seq equals its recomputation over the model.
fn check_all(c: &Client, wr: &Writer) {
    for (name, spec) in all_kinds() {
        if name == "search" {
            for word in ["milk", "milk*", "cafe", "plan*", "unicode", "tokyo"] {
                let (at, rows) = read_all(c, &wr.group, name, &format!("q={word}"), wr.seq);
                assert_eq!(at, wr.seq);
                let mut ids: Vec<String> = rows
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().to_string())
                    .collect();
                ids.sort();
                assert_eq!(
                    ids,
                    notes_with(&wr.model, word),
                    "search {word:?} at seq {}",
                    wr.seq
                );
            }
            continue;
        }
        let (at, rows) = read_all(c, &wr.group, name, "", wr.seq);
        assert_eq!(at, wr.seq, "{name}");
        same_rows(
            rows,
            recompute(&wr.model, &spec),
            &format!("{name} at seq {}", wr.seq),
        );
    }
}

fn define_all(c: &Client, group: &str) {
    for (name, spec) in all_kinds() {
        let r = put(c, group, name, &spec);
        assert_eq!(r.status, 201, "{name}: {:?}", r.body);
    }
    for (name, _) in all_kinds() {
        wait_ready(c, group, name);
    }
}

/// Seeds run by default; `PDB_PROJECTION_SEEDS=<n>` runs more (the long form).
fn seeds() -> u64 {
    std::env::var("PDB_PROJECTION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

#[test]
fn random_histories_equal_their_recomputation_at_every_checked_seq() {
    let w = WitnessProc::start(&temp_dir("equiv")).removing_data();
    let admin = w.admin_client();
    for seed in 1..=seeds() {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let group = format!("eq{seed}");
        let mut wr = Writer::new(&admin, &group);
        // Half the history before the projections exist (backfill), half after.
        for step in 0..80 {
            if step == 40 {
                define_all(&admin, &group);
                check_all(&admin, &wr);
            }
            let n = rng.below(3) + 1;
            let sql: Vec<String> = (0..n).map(|_| random_statement(&mut rng)).collect();
            wr.exec(&sql.join(";"));
            if step % 10 == 9 && step > 40 {
                check_all(&admin, &wr);
            }
        }
        check_all(&admin, &wr);
    }
}

#[test]
fn kills_during_backfill_and_follow_never_apply_a_commit_twice_or_skip_one() {
    let data = temp_dir("kill");
    let mut w = WitnessProc::start(&data);
    let mut admin = w.admin_client();
    let mut wr = Writer::new(&admin, "k");
    let mut rng = Rng(77);
    // Enough rows that a backfill takes a while.
    let mut bulk = String::from("WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < 12000) \
        INSERT INTO events SELECT i, 'bulk ' || i, '2026-' || printf('%02d', i % 12 + 1) || '-01', i % 97, \
        CASE i % 3 WHEN 0 THEN 'ann' WHEN 1 THEN 'bob' END FROM n;");
    bulk.push_str("INSERT INTO notes SELECT 'b' || i, 'bulk', 'milk ' || i, 'ann' FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) SELECT i FROM n);");
    wr.exec(&bulk);
    let listen = w.url.trim_start_matches("http://").to_string();
    for round in 0..30 {
        if round % 10 == 0 {
            // Redefine everything: the kill below lands in the backfill.
            for (name, spec) in all_kinds() {
                let mut s = spec.clone();
                s["where"] = json!(format!(
                    "{} AND {round} = {round}",
                    s.get("where").and_then(Value::as_str).unwrap_or("1")
                ));
                let r = put(&admin, "k", name, &s);
                assert_eq!(r.status, 201, "{:?}", r.body);
            }
        }
        for _ in 0..(rng.below(15) + 1) {
            let sql = random_statement(&mut rng);
            wr.exec(&sql);
        }
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        w.kill();
        w = WitnessProc::start_at(&data, &listen, &[], &[]);
        admin = w.admin_client();
        wr.c = admin.clone();
    }
    // Latest definitions, as the last redefinition left them.
    let list = get(&admin, "/v1/groups/k/projections");
    for p in list.body["projections"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let s = wait_ready(&admin, "k", name);
        let spec = s["spec"].clone();
        if name == "search" {
            let (_, rows) = read_all(&admin, "k", name, "q=milk", wr.seq);
            let mut ids: Vec<String> = rows
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            assert_eq!(ids, notes_with(&wr.model, "milk"));
        } else {
            let (_, rows) = read_all(&admin, "k", name, "", wr.seq);
            same_rows(
                rows,
                recompute(&wr.model, &spec),
                &format!("{name} after 30 kills"),
            );
        }
        let s = wait_ready(&admin, "k", name);
        let ((seq, head), _) = admin.head("k");
        assert_eq!(s["seq"], seq, "{name}: the cursor is the certified head");
        assert_eq!(s["head"], pdb_client::cert::hex(&head));
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn specs_outside_the_subset_are_refused_naming_the_field() {
    let w = WitnessProc::start(&temp_dir("refuse")).removing_data();
    let admin = w.admin_client();
    Writer::new(&admin, "r");
    let cases = [
        (
            json!({"kind": "index", "table": "nope", "key": {"m": "title"}, "columns": ["id"]}),
            "/table",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "nope"}, "columns": ["id"]}),
            "/key/m",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "title"}, "columns": ["nope"]}),
            "/columns/0",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "random()"}, "columns": ["id"]}),
            "/key/m",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "datetime('now')"}, "columns": ["id"]}),
            "/key/m",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "(SELECT max(id) FROM events)"}, "columns": ["id"]}),
            "/key/m",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "notes.title"}, "columns": ["id"]}),
            "/key/m",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "title"}, "columns": ["id"], "where": "id IN (SELECT id FROM notes)"}),
            "/where",
        ),
        (
            json!({"kind": "aggregate", "table": "events", "measures": {"n": "count(*) + 1"}}),
            "/measures/n",
        ),
        (
            json!({"kind": "aggregate", "table": "events", "measures": {"n": "group_concat(title)"}}),
            "/measures/n",
        ),
        (
            json!({"kind": "search", "table": "notes", "columns": ["title"], "tokenizer": "icu"}),
            "/tokenizer",
        ),
        (
            json!({"kind": "search", "table": "notes", "columns": ["title"], "scope": {"column": "owner"}}),
            "/scope/claim",
        ),
        (json!({"kind": "view", "table": "notes"}), "/kind"),
        (
            json!({"kind": "search", "table": "notes", "columns": ["title"], "sql": "DROP TABLE notes"}),
            "/sql",
        ),
        (
            json!({"kind": "index", "table": "events", "key": {"m": "title; DROP TABLE events"}, "columns": ["id"]}),
            "/key/m",
        ),
    ];
    for (spec, field) in cases {
        let r = put(&admin, "r", "p", &spec);
        assert_eq!(r.status, 422, "{spec}: {:?}", r.body);
        assert_eq!(r.code(), Some("invalid_projection"), "{spec}");
        assert_eq!(r.body["field"], field, "{spec}: {:?}", r.body);
    }
    let not_json = admin
        .send(
            "PUT",
            "/v1/groups/r/projections/p",
            &[],
            Some(b"{kind".to_vec()),
        )
        .unwrap();
    assert_eq!(not_json.code(), Some("invalid_projection"));
    let bad_name = put(&admin, "r", "Bad-Name", &notes_search());
    assert_eq!(bad_name.status, 400, "{:?}", bad_name.body);
    // Nothing was defined by any of them.
    let list = get(&admin, "/v1/groups/r/projections");
    assert_eq!(list.body["projections"], json!([]));
    assert_eq!(put(&admin, "nogroup", "p", &notes_search()).status, 404);
}

#[test]
fn hostile_search_text_is_searched_literally_or_refused() {
    let w = WitnessProc::start(&temp_dir("hostile")).removing_data();
    let admin = w.admin_client();
    let mut wr = Writer::new(&admin, "h");
    wr.exec(
        "INSERT INTO notes VALUES ('n1', 'secret', 'plain words', 'ann');
         INSERT INTO notes VALUES ('n2', 'other', 'near far milk', 'bob');",
    );
    assert_eq!(put(&admin, "h", "s", &notes_search()).status, 201);
    wait_ready(&admin, "h", "s");
    let long = "milk ".repeat(2000);
    let huge = "x".repeat(10_000);
    for q in [
        "\"",
        "*",
        "**",
        "NEAR(near far)",
        "near OR secret",
        "title:secret",
        "{title}:secret",
        "\"unbalanced",
        "secret)",
        "(",
        "^secret",
        "-secret",
        "secret NOT plain",
        "secret AND",
        "a'b",
        "%00",
        "\\",
        long.as_str(),
        huge.as_str(),
        "😀",
        "title : secret",
    ] {
        let enc: String = url_encode(q);
        let r = get(&admin, &format!("/v1/groups/h/projections/s?q={enc}"));
        assert!(
            r.status == 200 || r.status == 400,
            "{q:.40}: {} {:?}",
            r.status,
            r.body
        );
        if r.status == 400 {
            assert_eq!(r.code(), Some("invalid_query"), "{q:.40}");
            continue;
        }
        let rows = r.body["rows"].as_array().unwrap();
        // FTS5 syntax would find n1 by its title column or by OR; literal words do not.
        if [
            "title:secret",
            "{title}:secret",
            "near OR secret",
            "secret NOT plain",
            "title : secret",
        ]
        .contains(&q)
        {
            assert!(rows.is_empty(), "{q}: {rows:?}");
        }
    }
    // Literal words still search.
    let r = get(&admin, "/v1/groups/h/projections/s?q=secret");
    assert_eq!(r.body["rows"].as_array().unwrap().len(), 1);
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn filters_pages_and_cursors_refuse_what_was_not_declared() {
    let w = WitnessProc::start(&temp_dir("pages")).removing_data();
    let admin = w.admin_client();
    let mut wr = Writer::new(&admin, "p");
    let mut sql = String::new();
    for i in 1..=53 {
        sql.push_str(&format!(
            "INSERT INTO events VALUES ({i}, 't{i}', '2026-{:02}-01', {}, 'ann');",
            i % 12 + 1,
            if i % 5 == 0 {
                "NULL".to_string()
            } else {
                (i * 7).to_string()
            }
        ));
    }
    wr.exec(&sql);
    // Key fields in the order given: as a list of one-member objects, since JSON
    // libraries (serde_json's `json!` among them) may sort an object's members.
    let spec = json!({"kind": "index", "table": "events", "key": [{"month": "substr(starts_at, 1, 7)"}, {"len": "duration"}],
                      "columns": ["id", "title"]});
    assert_eq!(put(&admin, "p", "ev", &spec).status, 201);
    assert_eq!(put(&admin, "p", "other", &notes_search()).status, 201);
    wait_ready(&admin, "p", "ev");
    // Pages of 7 give every row once, in key order (NULL keys first).
    let (_, rows) = read_all(&admin, "p", "ev", "", wr.seq);
    assert_eq!(rows.len(), 53);
    let keys: Vec<(String, Option<i64>, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["month"].as_str().unwrap().to_string(),
                r["len"].as_i64(),
                r["id"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let mut ids: Vec<i64> = keys.iter().map(|k| k.2).collect();
    ids.dedup();
    assert_eq!(ids.len(), 53);
    // Typed filters on declared fields.
    let r = get(
        &admin,
        "/v1/groups/p/projections/ev?month=2026-03&len.gte=100",
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    for row in r.body["rows"].as_array().unwrap() {
        assert_eq!(row["month"], "2026-03");
        assert!(row["len"].as_i64().unwrap() >= 100);
    }
    for (q, param) in [
        ("title=t1", "title"),
        ("nope.gte=1", "nope.gte"),
        ("month.like=2026%25", "month.like"),
        ("len=abc", "len"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("q=milk", "q"),
        ("limit=1&limit=2", "limit"),
    ] {
        let r = get(&admin, &format!("/v1/groups/p/projections/ev?{q}"));
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
        assert_eq!(r.code(), Some("invalid_query"), "{q}");
        assert_eq!(r.body["parameter"], param, "{q}: {:?}", r.body);
    }
    // A cursor is good for the read it came from only.
    let first = get(&admin, "/v1/groups/p/projections/ev?limit=5");
    let next = first.body["next"].as_str().unwrap().to_string();
    let mut tampered = next.clone().into_bytes();
    tampered[3] ^= 1;
    let tampered = String::from_utf8(tampered).unwrap();
    for (path, what) in [
        (
            format!("/v1/groups/p/projections/ev?limit=5&next={tampered}"),
            "tampered",
        ),
        (
            format!("/v1/groups/p/projections/ev?limit=5&month=2026-01&next={next}"),
            "other filters",
        ),
        (
            format!("/v1/groups/p/projections/other?q=milk&next={next}"),
            "other projection",
        ),
        (
            "/v1/groups/p/projections/ev?next=garbage".to_string(),
            "garbage",
        ),
    ] {
        let r = get(&admin, &path);
        assert_eq!(r.status, 400, "{what}: {:?}", r.body);
        assert_eq!(r.code(), Some("invalid_cursor"), "{what}");
    }
    // Read-your-writes: a seq not reached in time is 409 with where the projection is.
    let r = get(
        &admin,
        &format!("/v1/groups/p/projections/ev?min_seq={}&wait=1", wr.seq + 5),
    );
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.code(), Some("projection_lagging"));
    assert_eq!(r.body["seq"], wr.seq);
    // A write then a read at its seq sees it.
    let seq = wr.exec("INSERT INTO events VALUES (500, 'new', '2030-01-01', 1, 'ann')");
    let r = get(
        &admin,
        &format!("/v1/groups/p/projections/ev?min_seq={seq}&month=2030-01"),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0]["id"], 500);
    assert_eq!(r.body["seq"], seq);
    assert_eq!(get(&admin, "/v1/groups/p/projections/nope").status, 404);
}

fn projection_files(data: &std::path::Path, group: &str) -> Vec<PathBuf> {
    let dir = data.join("projections").join(group);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "db"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_mirror_that_diverges_stops_its_projections_and_a_redefinition_rebuilds() {
    let data = temp_dir("diverge");
    let mut w = WitnessProc::start(&data);
    let admin = w.admin_client();
    let mut wr = Writer::new(&admin, "d");
    wr.exec("INSERT INTO events VALUES (1, 'a', '2026-11-01', 10, 'ann'); INSERT INTO events VALUES (2, 'b', '2026-11-02', 20, 'ann')");
    assert_eq!(put(&admin, "d", "m", &by_month()).status, 201);
    wait_ready(&admin, "d", "m");
    let listen = w.url.trim_start_matches("http://").to_string();
    w.stop();
    // Someone edits the derived file behind the witness's back.
    let file = projection_files(&data, "d").pop().expect("projection file");
    let conn = Connection::open(&file).unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in &triggers {
        conn.execute_batch(&format!("DROP TRIGGER \"{t}\""))
            .unwrap();
    }
    conn.execute_batch("UPDATE events SET duration = 999 WHERE id = 2")
        .unwrap();
    drop(conn);
    let w = WitnessProc::start_at(&data, &listen, &[], &[]);
    let admin = w.admin_client();
    wr.c = admin.clone();
    // The next commit of that row does not reproduce the certified state there.
    wr.exec("UPDATE events SET title = 'bb', duration = 21 WHERE id = 2");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = get(&admin, "/v1/groups/d/projections/m/status");
        if s.body["state"] == "failed" {
            break s.body;
        }
        assert!(Instant::now() < until, "not failed: {:?}", s.body);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("certified state"),
        "{status}"
    );
    let r = get(&admin, "/v1/groups/d/projections/m");
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.code(), Some("projection_failed"));
    // Commits go on regardless.
    wr.exec("INSERT INTO events VALUES (3, 'c', '2026-12-01', 5, 'bob')");
    // Redefining starts over from the history, and the result is right again.
    let mut spec = by_month();
    spec["where"] = json!("1 = 1");
    assert_eq!(put(&admin, "d", "m", &spec).status, 201);
    wait_ready(&admin, "d", "m");
    let (_, rows) = read_all(&admin, "d", "m", "", wr.seq);
    same_rows(rows, recompute(&wr.model, &spec), "rebuilt");
    drop(w);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_failing_projection_stops_alone_and_commits_never_wait_for_it() {
    let w = WitnessProc::start(&temp_dir("alone")).removing_data();
    let admin = w.admin_client();
    let mut wr = Writer::new(&admin, "a");
    wr.exec("INSERT INTO events VALUES (1, 'a', '2026-11-01', 9223372036854775000, 'ann')");
    assert_eq!(put(&admin, "a", "sums", &by_month()).status, 201);
    assert_eq!(put(&admin, "a", "ev", &events_index()).status, 201);
    wait_ready(&admin, "a", "sums");
    wait_ready(&admin, "a", "ev");
    // A sum past 64 bits: SQL's sum() fails, and so does the projection, alone.
    wr.exec("INSERT INTO events VALUES (2, 'b', '2026-11-02', 1000, 'ann')");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = get(&admin, "/v1/groups/a/projections/sums/status");
        if s.body["state"] == "failed" {
            assert!(
                s.body["error"].as_str().unwrap().contains("64 bits"),
                "{:?}",
                s.body
            );
            break;
        }
        assert!(Instant::now() < until, "{:?}", s.body);
        std::thread::sleep(Duration::from_millis(20));
    }
    wr.exec("INSERT INTO events VALUES (3, 'c', '2026-12-02', 5, 'ann')");
    let (_, rows) = read_all(&admin, "a", "ev", "", wr.seq);
    same_rows(
        rows,
        recompute(&wr.model, &events_index()),
        "the index goes on",
    );
    // A definition that cannot be built fails at once, and the group stays writable.
    let r = put(&admin, "a", "sums2", &by_month());
    assert_eq!(r.status, 201);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = get(&admin, "/v1/groups/a/projections/sums2/status");
        if s.body["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < until, "{:?}", s.body);
        std::thread::sleep(Duration::from_millis(20));
    }
    wr.exec("DELETE FROM events WHERE id = 1");
}

#[test]
fn projections_survive_restart_compaction_and_restore() {
    let data = temp_dir("restore");
    let args = ["--snapshot-commits", "5", "--retain-snapshots", "1"];
    let mut w = WitnessProc::start_with(&data, &args, &[]);
    let admin = w.admin_client();
    let mut wr = Writer::new(&admin, "c");
    let mut rng = Rng(5);
    for _ in 0..12 {
        let s = random_statement(&mut rng);
        wr.exec(&s);
    }
    define_all(&admin, "c");
    for _ in 0..12 {
        let s = random_statement(&mut rng);
        wr.exec(&s);
    }
    check_all(&admin, &wr);
    let listen = w.url.trim_start_matches("http://").to_string();
    // Restart: the builder resumes from its file.
    w.stop();
    let mut w = WitnessProc::start_at(&data, &listen, &args, &[]);
    wr.c = w.admin_client();
    wr.exec("INSERT INTO events VALUES (99, 'after restart', '2026-11-30', 7, 'ann')");
    check_all(&wr.c.clone(), &wr);
    // The history is compacted by now; a lost projection file is rebuilt from the
    // newest snapshot and the commits after it.
    let pull = wr.c.pull("c", 0, 10);
    assert_eq!(
        pull.status, 410,
        "the history should be compacted: {:?}",
        pull.body
    );
    w.stop();
    let _ = std::fs::remove_dir_all(data.join("projections"));
    let mut w = WitnessProc::start_at(&data, &listen, &args, &[]);
    wr.c = w.admin_client();
    check_all(&wr.c.clone(), &wr);
    // A backup restored elsewhere carries the definitions; projections are rebuilt.
    let backup = temp_dir("restore-backup");
    let out = std::process::Command::new(pdb_tests::witness::witness_bin())
        .args(["backup", "--data"])
        .arg(&data)
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.stop();
    let restored = temp_dir("restore-into");
    let out = std::process::Command::new(pdb_tests::witness::witness_bin())
        .args(["restore", "--data"])
        .arg(&restored)
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = WitnessProc::start_with(&restored, &args, &[]);
    wr.c = w.admin_client();
    check_all(&wr.c.clone(), &wr);
    drop(w);
    for d in [data, backup, restored] {
        let _ = std::fs::remove_dir_all(d);
    }
}
