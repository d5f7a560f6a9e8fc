//! Sync through the SQL surface: real `libpdb` in rusqlite hosts, a real witness over
//! HTTP. Push, pull, verification, dead letters, and every conflict strategy on the
//! classic cases of DESIGN §6.

use std::path::PathBuf;

use pdb_tests::device::Device;
use pdb_tests::witness::WitnessProc;
use rusqlite::types::Value;
use serde_json::json;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, a TEXT, b TEXT)";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdb-sync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A witness with group `g` of `DDL`.
fn witness(dir: &std::path::Path) -> WitnessProc {
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    w
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn two_devices_converge_with_verified_history() {
    let dir = scratch("converge");
    let w = witness(&dir);
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");

    a.sql("INSERT INTO notes VALUES (1, 'one', NULL), (2, 'two', NULL)");
    assert_eq!(a.commit(), Some(1));
    let s = a.sync();
    assert_eq!(
        (s["pushed"].as_u64(), s["pulled"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["head"]["seq"], 1);
    assert_eq!(
        a.status()["pending"],
        0,
        "certified commits leave the queue"
    );

    let s = b.sync();
    assert_eq!(
        (s["pushed"].as_u64(), s["pulled"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
    assert_eq!(b.dump("notes"), a.dump("notes"));
    // Pulled rows are the base, not local changes.
    assert_eq!(b.value("SELECT pdb_changeset() IS NULL"), Value::Integer(1));

    b.sql("UPDATE notes SET b = 'from b' WHERE id = 2; DELETE FROM notes WHERE id = 1");
    b.commit().unwrap();
    b.sync();
    a.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(
        a.rows("SELECT id, a, b FROM notes"),
        vec![vec![Value::Integer(2), text("two"), text("from b")]]
    );

    for d in [&a, &b] {
        let v = d.json("SELECT pdb_verify()");
        assert_eq!(
            (v["commits"].as_u64(), v["state"].as_str()),
            (Some(2), Some("ok")),
            "{v}"
        );
        assert_eq!(d.json("SELECT pdb_head()")["seq"], 2);
    }
    // A stored certificate is the witness's, and verifies with the pinned key.
    let cert = a.json("SELECT pdb_certificate(2)");
    let c = pdb_client::cert::Certificate::from_json(&cert).unwrap();
    c.verify_signature(&w.key).unwrap();
    assert_eq!(
        c.head,
        pdb_client::cert::parse_hash(b.json("SELECT pdb_head()")["head"].as_str().unwrap())
            .unwrap()
    );
    assert_eq!(a.value("SELECT pdb_certificate(3)"), Value::Null);
    let st = a.status();
    assert_eq!(
        (st["online"].as_bool(), st["last_error"].is_null()),
        (Some(true), true),
        "{st}"
    );
}

/// One classic case of DESIGN §6: starting from the committed `setup`, device A (the
/// remote side, synced first) runs `remote` and device B (the local side) runs `local`.
struct Case {
    name: &'static str,
    setup: &'static str,
    remote: &'static str,
    local: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "same-column",
        setup: "INSERT INTO notes VALUES (1, 'x', 'y')",
        remote: "UPDATE notes SET a = 'R' WHERE id = 1",
        local: "UPDATE notes SET a = 'L' WHERE id = 1",
    },
    Case {
        name: "other-column",
        setup: "INSERT INTO notes VALUES (1, 'x', 'y')",
        remote: "UPDATE notes SET a = 'R' WHERE id = 1",
        local: "UPDATE notes SET b = 'L' WHERE id = 1",
    },
    Case {
        name: "local-delete",
        setup: "INSERT INTO notes VALUES (1, 'x', 'y')",
        remote: "UPDATE notes SET a = 'R' WHERE id = 1",
        local: "DELETE FROM notes WHERE id = 1",
    },
    Case {
        name: "remote-delete",
        setup: "INSERT INTO notes VALUES (1, 'x', 'y')",
        remote: "DELETE FROM notes WHERE id = 1",
        local: "UPDATE notes SET a = 'L' WHERE id = 1",
    },
    Case {
        name: "insert-insert",
        setup: "",
        remote: "INSERT INTO notes VALUES (1, 'R', 'r')",
        local: "INSERT INTO notes VALUES (1, 'L', NULL)",
    },
];

/// Runs `case` under `strategy` on a fresh group; checks that both devices end equal
/// and returns B's rows (`id, a, b`) and B's conflicts.
fn run_case(
    w: &WitnessProc,
    dir: &std::path::Path,
    case: &Case,
    strategy: &str,
) -> (Vec<Vec<Value>>, Vec<serde_json::Value>) {
    let group = format!("{}-{}", case.name, strategy);
    assert_eq!(w.admin_client().create_group(&group, DDL).status, 201);
    let sub = dir.join(&group);
    std::fs::create_dir_all(&sub).unwrap();
    let a = Device::on(w, &sub, "a", DDL, &["notes"], &group);
    let b = Device::on(w, &sub, "b", DDL, &["notes"], &group);
    register_merge(&b);
    if !case.setup.is_empty() {
        a.sql(case.setup);
        a.commit().unwrap();
        a.sync();
    }
    b.sync();
    let set = if strategy == "custom" {
        "SELECT pdb_set_strategy('notes', 'custom', 'merge_notes')".to_string()
    } else {
        format!("SELECT pdb_set_strategy('notes', '{strategy}')")
    };
    assert_eq!(b.value(&set), text("notes"));
    a.sql(case.remote);
    a.commit().unwrap();
    a.sync();
    b.sql(case.local);
    b.commit().unwrap();
    b.sync();
    a.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"), "{group}: devices differ");
    for d in [&a, &b] {
        assert_eq!(d.json("SELECT pdb_verify()")["state"], "ok", "{group}");
        assert_eq!(d.status()["pending"], 0, "{group}");
    }
    (
        b.rows("SELECT id, a, b FROM notes ORDER BY id"),
        b.conflicts(),
    )
}

/// The custom strategy's function: the remote row with `a` = remote a + "+" + local a;
/// absent when either side deleted the row.
fn register_merge(d: &Device) {
    use rusqlite::functions::FunctionFlags;
    d.conn
        .create_scalar_function("merge_notes", 3, FunctionFlags::SQLITE_UTF8, |ctx| {
            let arg = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
                Ok(ctx
                    .get::<Option<String>>(i)?
                    .map(|s| serde_json::from_str(&s).unwrap()))
            };
            let (base, local, remote) = (arg(0)?, arg(1)?, arg(2)?);
            assert!(base.is_none() || base.as_ref().unwrap().is_object());
            Ok(match (local, remote) {
                (Some(l), Some(mut r)) => {
                    r["a"] = json!(format!(
                        "{}+{}",
                        r["a"].as_str().unwrap_or(""),
                        l["a"].as_str().unwrap_or("")
                    ));
                    Some(r.to_string())
                }
                _ => None,
            })
        })
        .unwrap();
}

fn row(id: i64, a: &str, b: Option<&str>) -> Vec<Value> {
    vec![Value::Integer(id), text(a), b.map_or(Value::Null, text)]
}

#[test]
fn every_strategy_on_every_classic_case() {
    let dir = scratch("strategies");
    let w = witness(&dir);
    // (case, strategy) -> (B's final rows, conflicts recorded, of which open)
    type Want = (Vec<Vec<Value>>, usize, usize);
    let r_row = || vec![row(1, "R", Some("y"))];
    let expect = |case: &str, strategy: &str| -> Want {
        match (case, strategy) {
            ("same-column", "remote-wins") => (r_row(), 1, 0),
            ("same-column", "local-wins" | "column-merge") => (vec![row(1, "L", Some("y"))], 0, 0),
            ("same-column", "manual") => (r_row(), 1, 1),
            ("same-column", "custom") => (vec![row(1, "R+L", Some("y"))], 1, 0),
            ("other-column", "remote-wins") => (r_row(), 1, 0),
            ("other-column", "local-wins") => (vec![row(1, "x", Some("L"))], 0, 0),
            ("other-column", "column-merge") => (vec![row(1, "R", Some("L"))], 0, 0),
            ("other-column", "manual") => (r_row(), 1, 1),
            ("other-column", "custom") => (vec![row(1, "R+x", Some("y"))], 1, 0),
            ("local-delete", "remote-wins") => (r_row(), 1, 0),
            ("local-delete", "local-wins" | "column-merge") => (vec![], 0, 0),
            ("local-delete", "manual") => (r_row(), 1, 1),
            ("local-delete", "custom") => (vec![], 0, 0),
            ("remote-delete", "remote-wins" | "column-merge" | "custom") => (vec![], 1, 0),
            ("remote-delete", "local-wins") => (vec![row(1, "L", Some("y"))], 0, 0),
            ("remote-delete", "manual") => (vec![], 1, 1),
            ("insert-insert", "remote-wins") => (vec![row(1, "R", Some("r"))], 1, 0),
            ("insert-insert", "local-wins") => (vec![row(1, "L", None)], 0, 0),
            // B taken as all-NULL: the local side set a, only the remote side set b.
            ("insert-insert", "column-merge") => (vec![row(1, "L", Some("r"))], 0, 0),
            ("insert-insert", "manual") => (vec![row(1, "R", Some("r"))], 1, 1),
            ("insert-insert", "custom") => (vec![row(1, "R+L", Some("r"))], 1, 0),
            _ => unreachable!("{case} {strategy}"),
        }
    };
    let mut failures = Vec::new();
    for case in CASES {
        for strategy in [
            "remote-wins",
            "local-wins",
            "column-merge",
            "manual",
            "custom",
        ] {
            let (rows, conflicts) = run_case(&w, &dir, case, strategy);
            let open = conflicts.iter().filter(|c| c["status"] == "open").count();
            let want = expect(case.name, strategy);
            if (rows.clone(), conflicts.len(), open) != want {
                failures.push(format!(
                    "{} / {strategy}: got rows {rows:?}, {} conflicts ({open} open), want {want:?}; conflicts: {conflicts:?}",
                    case.name,
                    conflicts.len()
                ));
            }
            // Every recorded conflict names the table, key and the three rows.
            for c in &conflicts {
                assert_eq!(
                    (c["table"].as_str(), c["pk"].clone()),
                    (Some("notes"), json!([1])),
                    "{c}"
                );
                assert_eq!(c["strategy"], strategy, "{c}");
                assert!(c["local"].is_object() || case.name == "local-delete", "{c}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
