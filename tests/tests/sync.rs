//! Sync through the SQL surface: real `libpdb` in rusqlite hosts, a real witness over
//! HTTP. Push, pull, verification, dead letters, and every conflict strategy on the
//! classic cases of DESIGN §6.

use std::path::PathBuf;

use pdb_tests::device::Device;
use pdb_tests::witness::{WitnessClient, WitnessProc};
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

#[test]
fn manual_conflicts_wait_for_pdb_resolve() {
    let dir = scratch("manual");
    let w = witness(&dir);
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");
    a.sql("INSERT INTO notes VALUES (1, 'x', 'y'), (2, 'p', 'q')");
    a.commit();
    a.sync();
    b.sync();
    b.value("SELECT pdb_set_strategy('notes', 'manual')");
    a.sql("UPDATE notes SET a = 'R' WHERE id = 1; UPDATE notes SET a = 'R2' WHERE id = 2");
    a.commit();
    a.sync();
    b.sql("UPDATE notes SET a = 'L' WHERE id = 1; UPDATE notes SET b = 'L2' WHERE id = 2");
    b.commit();
    b.sync();
    let open: Vec<_> = b
        .conflicts()
        .into_iter()
        .filter(|c| c["status"] == "open")
        .collect();
    assert_eq!(open.len(), 2, "{open:?}");
    assert_eq!(b.status()["conflicts_open"], 2);
    assert_eq!(open[0]["local"], json!({"id": 1, "a": "L", "b": "y"}));
    assert_eq!(open[0]["remote"], json!({"id": 1, "a": "R", "b": "y"}));
    assert_eq!(open[0]["base"], json!({"id": 1, "a": "x", "b": "y"}));
    // Until resolved, the group's version is what everyone sees.
    assert_eq!(b.dump("notes"), a.dump("notes"));

    let (id1, id2) = (
        open[0]["id"].as_i64().unwrap(),
        open[1]["id"].as_i64().unwrap(),
    );
    assert_eq!(
        b.json(&format!("SELECT pdb_resolve({id1}, 'local')")),
        json!({"id": 1, "a": "L", "b": "y"})
    );
    assert_eq!(
        b.json(&format!(
            r#"SELECT pdb_resolve({id2}, '{{"a": "both", "b": "L2"}}')"#
        )),
        json!({"id": 2, "a": "both", "b": "L2"})
    );
    let err = b
        .try_json(&format!(r#"SELECT pdb_resolve({id2}, '{{"id": 3}}')"#))
        .unwrap_err();
    assert!(err.contains("primary key"), "{err}");
    let err = b.try_json("SELECT pdb_resolve(999, 'local')").unwrap_err();
    assert!(err.contains("no conflict with id 999"), "{err}");
    assert_eq!(b.status()["conflicts_open"], 0);
    // The resolution is an ordinary local write: committed, pushed, pulled.
    b.commit().unwrap();
    b.sync();
    a.sync();
    assert_eq!(
        a.rows("SELECT id, a, b FROM notes ORDER BY id"),
        vec![row(1, "L", Some("y")), row(2, "both", Some("L2"))]
    );
    assert_eq!(a.dump("notes"), b.dump("notes"));
}

#[test]
fn a_chain_of_local_commits_rebases_over_remote_commits() {
    for (strategy, want, conflicts, head) in [
        (
            "column-merge",
            vec![
                row(1, "l2", Some("r1")),
                row(2, "l3", Some("q")),
                row(10, "l1", Some("l3")),
                row(11, "r2", None),
            ],
            0,
            6,
        ),
        (
            "remote-wins",
            vec![
                row(1, "x", Some("r1")),
                row(2, "r2", Some("q")),
                row(10, "l1", Some("l3")),
                row(11, "r2", None),
            ],
            2,
            // The second local commit lost its only change and was dropped.
            5,
        ),
    ] {
        let dir = scratch(&format!("chain-{strategy}"));
        let w = witness(&dir);
        let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
        let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");
        a.sql("INSERT INTO notes VALUES (1, 'x', 'y'), (2, 'p', 'q')");
        a.commit();
        a.sync();
        b.sync();
        b.value(&format!("SELECT pdb_set_strategy('notes', '{strategy}')"));
        a.sql("UPDATE notes SET b = 'r1' WHERE id = 1");
        a.commit();
        a.sql("INSERT INTO notes VALUES (11, 'r2', NULL); UPDATE notes SET a = 'r2' WHERE id = 2");
        a.commit();
        a.sync();
        b.sql("INSERT INTO notes VALUES (10, 'l1', NULL)");
        b.commit();
        b.sql("UPDATE notes SET a = 'l2' WHERE id = 1");
        b.commit();
        b.sql("UPDATE notes SET b = 'l3' WHERE id = 10; UPDATE notes SET a = 'l3' WHERE id = 2");
        b.commit();
        // Edits not yet committed ride along and stay uncommitted.
        b.sql("INSERT INTO notes VALUES (12, 'uncommitted', NULL)");
        let s = b.sync();
        assert_eq!(s["head"]["seq"], head, "{strategy}: {s}");
        assert_eq!(
            b.conflicts().len(),
            conflicts,
            "{strategy}: {:?}",
            b.conflicts()
        );
        let mut want_b = want.clone();
        want_b.push(row(12, "uncommitted", None));
        assert_eq!(
            b.rows("SELECT id, a, b FROM notes ORDER BY id"),
            want_b,
            "{strategy}"
        );
        assert_eq!(b.status()["pending"], 0);
        let pending = b.rows("SELECT tbl, op, pk FROM pdb_changeset_rows(pdb_changeset())");
        assert_eq!(
            pending,
            vec![vec![text("notes"), text("INSERT"), text("[12]")]],
            "{strategy}"
        );
        a.sync();
        assert_eq!(
            a.rows("SELECT id, a, b FROM notes ORDER BY id"),
            want,
            "{strategy}"
        );
        assert_eq!(a.json("SELECT pdb_verify()")["state"], "ok");
        assert_eq!(
            b.json("SELECT pdb_verify()")["state"],
            "skipped: local changes are pending"
        );
    }
}

/// `changeset` as a queue row's new content (a test forging what the witness will see).
fn replace_queued(d: &Device, id: i64, changeset: &[u8]) {
    d.conn
        .execute(
            "UPDATE pdb_upload_queue SET changeset = ?2, hash = ?3 WHERE id = ?1",
            (
                id,
                changeset,
                pdb_client::cert::hex(blake3::hash(changeset).as_bytes()),
            ),
        )
        .unwrap();
}

#[test]
fn commits_the_witness_refuses_are_dead_lettered_never_dropped() {
    let dir = scratch("dead");
    let w = WitnessProc::start_with(&dir.join("witness"), &["--max-body", "4096"], &[]);
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");

    a.sql("INSERT INTO notes VALUES (1, 'small', NULL)");
    let first = a.commit().unwrap();
    a.sql("INSERT INTO notes VALUES (7, 'x', NULL)");
    let invalid = a.commit().unwrap();
    // The witness takes only integer rowid keys: the same insert with key '7' as TEXT.
    // (Sent before anything is rebased: a rebase rewrites commits from the rows.)
    let mut forged = vec![b'T', 3, 1, 0, 0];
    forged.extend_from_slice(b"notes\0");
    forged.extend_from_slice(&[18, 0, 3, 1, b'7', 3, 1, b'x', 5]);
    replace_queued(&a, invalid, &forged);
    let big = "x".repeat(10_000);
    a.sql(&format!("INSERT INTO notes VALUES (2, '{big}', NULL)"));
    let too_large = a.commit().unwrap();
    a.sql("INSERT INTO notes VALUES (3, 'after', NULL)");
    a.commit().unwrap();

    let s = a.sync();
    assert_eq!(
        (s["pushed"].as_u64(), s["dead"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    let st = a.status();
    let dead = st["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 2, "{st}");
    assert_eq!(dead[0]["id"].as_i64(), Some(invalid));
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("422 invalid_changeset"),
        "{st}"
    );
    assert_eq!(dead[1]["id"].as_i64(), Some(too_large));
    assert!(
        dead[1]["reason"]
            .as_str()
            .unwrap()
            .contains("413 too_large"),
        "{st}"
    );
    assert_eq!(st["pending"], 0);
    // Their rows are taken back, so the device matches the group, and each write is in
    // pdb_conflicts with the witness's reason.
    assert_eq!(
        a.rows("SELECT id FROM notes ORDER BY id"),
        vec![vec![Value::Integer(1)], vec![Value::Integer(3)]]
    );
    let c = a.conflicts();
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0]["pk"], json!([7]));
    assert_eq!(
        (c[1]["status"].as_str(), c[1]["local_id"].as_i64()),
        (Some("rejected"), Some(too_large))
    );
    assert_eq!(c[1]["local"]["a"].as_str().map(str::len), Some(10_000));
    assert_eq!(c[1]["outcome"], serde_json::Value::Null);
    b.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(a.json("SELECT pdb_verify()")["state"], "ok");
    assert_eq!(
        a.value(&format!(
            "SELECT count(*) FROM pdb_commits WHERE local_id = {first}"
        )),
        Value::Integer(1)
    );
}

#[test]
fn refusals_stop_sync_with_the_queue_intact_and_bad_history_changes_nothing() {
    let dir = scratch("refusals");
    let w = witness(&dir);
    let other = {
        let w2 = WitnessProc::start(&dir.join("impostor"));
        w2.key
    };
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    a.sql("INSERT INTO notes VALUES (1, 'one', NULL)");
    a.commit();
    a.sync();

    let queued = |d: &Device| {
        d.rows("SELECT id, changeset, idempotency_key FROM pdb_upload_queue ORDER BY id")
    };
    let setup = |name: &str, token: &str, key: &[u8; 32], ddl: &str| {
        let d = Device::new(&dir, name, ddl, &["notes"], &w.url, "g", token, key);
        d.sql("INSERT INTO notes(id, a) VALUES (100, 'mine')");
        d.commit().unwrap();
        d
    };
    let cases: Vec<(Device, &str)> = vec![
        (setup("forged", "not.a.token", &w.key, DDL), "401"),
        (
            setup("reader", &w.token("x", "g", "read", 600), &w.key, DDL),
            "403",
        ),
        (
            setup(
                "stranger",
                &w.token("x", "other", "write", 600),
                &w.key,
                DDL,
            ),
            "403",
        ),
        (
            setup(
                "schema",
                &w.token("x", "g", "write", 600),
                &w.key,
                "CREATE TABLE notes(id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INT)",
            ),
            "schema_mismatch",
        ),
        (
            setup("pinned", &w.token("x", "g", "write", 600), &other, DDL),
            "signs with key",
        ),
    ];
    for (d, want) in &cases {
        let before = queued(d);
        let rows = d.dump("notes");
        let err = d.try_json("SELECT pdb_sync()").expect_err(want);
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(queued(d), before, "{want}: the queue is kept as it was");
        assert_eq!(d.dump("notes"), rows, "{want}: nothing applied");
        let st = d.status();
        assert!(st["last_error"].as_str().unwrap().contains(want), "{st}");
        assert_eq!(st["online"], true, "{st}");
        assert_eq!(d.json("SELECT pdb_head()")["seq"], 0);
    }

    // A witness that is not there: the status says offline, the queue waits.
    let gone = Device::new(
        &dir,
        "gone",
        DDL,
        &["notes"],
        "http://127.0.0.1:9",
        "g",
        "t",
        &w.key,
    );
    gone.sql("INSERT INTO notes VALUES (5, 'five', NULL)");
    gone.commit();
    let err = gone.try_json("SELECT pdb_sync()").unwrap_err();
    assert!(err.contains("unreachable"), "{err}");
    let st = gone.status();
    assert_eq!(
        (st["online"].as_bool(), st["pending"].as_i64()),
        (Some(false), Some(1)),
        "{st}"
    );
    assert!(gone
        .try_json("SELECT pdb_open('ftp://x', 'g', 't', 'aa')")
        .unwrap_err()
        .contains("http://"));
    let unopened = Device::new(&dir, "unopened", DDL, &["notes"], &w.url, "g", "t", &w.key);
    unopened.sql("DELETE FROM pdb_local WHERE key = 'url'");
    assert!(unopened
        .try_json("SELECT pdb_sync()")
        .unwrap_err()
        .contains("pdb_open"));
}

#[test]
fn a_long_queue_on_a_fast_forward_table_goes_out_in_one_sync() {
    let dir = scratch("fast-forward");
    let w = witness(&dir);
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    // Not column-merge: commits are sent `fast-forward`, each on the head before it.
    a.value("SELECT pdb_set_strategy('notes', 'remote-wins')");
    for i in 0..12 {
        a.sql(&format!("INSERT INTO notes VALUES ({i}, 'n{i}', NULL)"));
        a.commit().unwrap();
    }
    let s = a.sync();
    assert_eq!(
        (s["pushed"].as_u64(), s["head"]["seq"].as_u64()),
        (Some(12), Some(12)),
        "{s}"
    );
    assert_eq!(a.status()["pending"], 0);
    // Another device's commit in between makes the rest stale: pull, rebase, resend.
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");
    b.sync();
    for i in 100..104 {
        a.sql(&format!("INSERT INTO notes VALUES ({i}, 'a', NULL)"));
        a.commit().unwrap();
    }
    b.sql("UPDATE notes SET b = 'from b' WHERE id = 0");
    b.commit().unwrap();
    b.sync();
    let s = a.sync();
    assert_eq!(
        (s["pushed"].as_u64(), s["pulled"].as_u64()),
        (Some(4), Some(5)),
        "{s}"
    );
    b.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
}

#[test]
fn a_large_page_is_applied_with_capture_off_and_capture_comes_back() {
    let dir = scratch("large-page");
    let w = witness(&dir);
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");
    let triggers = |d: &Device| {
        d.rows("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name")
    };
    let before = triggers(&b);
    assert_eq!(before.len(), 6);
    // Over 64 KiB of changesets in one page: the triggers are dropped for the pull.
    let body = "x".repeat(200);
    a.sql(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
         INSERT INTO notes SELECT i, '{body}', NULL FROM n"
    ));
    a.commit().unwrap();
    a.sync();
    // B has a queued commit and an uncommitted edit, both on rows A also wrote.
    b.sql("INSERT INTO notes VALUES (5, 'b queued', NULL)");
    b.commit().unwrap();
    b.sql("INSERT INTO notes VALUES (2000, 'b uncommitted', NULL); INSERT INTO notes VALUES (7, 'b uncommitted too', NULL)");
    let s = b.sync();
    assert_eq!(
        (s["pulled"].as_u64(), s["pushed"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(
        triggers(&b),
        before,
        "the capture triggers are back, unchanged"
    );
    // Column-merge on insert/insert: B's `a` wins on rows 5 and 7, both keep A's NULL `b`.
    assert_eq!(
        b.rows("SELECT id, a FROM notes WHERE id IN (5, 7, 2000) ORDER BY id"),
        vec![
            vec![Value::Integer(5), text("b queued")],
            vec![Value::Integer(7), text("b uncommitted too")],
            vec![Value::Integer(2000), text("b uncommitted")],
        ]
    );
    let pending = b.rows("SELECT op, pk FROM pdb_changeset_rows(pdb_changeset())");
    assert_eq!(
        pending,
        vec![
            vec![text("UPDATE"), text("[7]")],
            vec![text("INSERT"), text("[2000]")]
        ]
    );
    // And capture works as before for the next write.
    b.sql("UPDATE notes SET b = 'later' WHERE id = 1");
    assert_eq!(
        b.rows("SELECT count(*) FROM pdb_changeset_rows(pdb_changeset())"),
        vec![vec![Value::Integer(3)]]
    );
    b.commit().unwrap();
    b.sync();
    a.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(a.json("SELECT pdb_verify()")["state"], "ok");
}

/// Found by the `pulled_history` fuzz target: a remote change from 0.0 to -0.0 (equal as
/// numbers, different as stored values) under a local edit of another column of the
/// row. Redo once wrote the local row back whole, turning -0.0 into 0.0 unrecorded, and
/// every later pull then failed its state check. Writing this test showed the witness
/// too counted such a row as unchanged in the state digest, so no device could ever
/// apply that commit.
#[test]
fn a_remote_negative_zero_survives_a_local_edit_of_another_column() {
    const M: &str = "CREATE TABLE m(id INTEGER PRIMARY KEY, a TEXT, b)";
    let dir = scratch("negative-zero");
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", M).status, 201);
    let a = Device::on(&w, &dir, "a", M, &["m"], "g");
    let b = Device::on(&w, &dir, "b", M, &["m"], "g");
    a.sql("INSERT INTO m VALUES (1, 'one', 0.0)");
    a.commit().unwrap();
    a.sync();
    b.sync();
    // Capture, like the session extension, sees no change from 0.0 to -0.0; another
    // writer of changesets may send one: an UPDATE of `b` alone, made by hand.
    let mut cs = vec![
        b'T', 3, 1, 0, 0, b'm', 0, 23, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2,
    ];
    cs.extend_from_slice(&0.0f64.to_bits().to_be_bytes());
    cs.extend_from_slice(&[0, 0, 2]);
    cs.extend_from_slice(&(-0.0f64).to_bits().to_be_bytes());
    let ((seq, head), schema) = w.admin_client().head("g");
    let r = w.admin_client().commit(
        "g",
        &pdb_tests::witness::Commit {
            changeset: &cs,
            base_seq: seq,
            base_head: head,
            key: "negative-zero",
            schema,
            policy: None,
        },
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    b.sql("UPDATE m SET a = 'uno' WHERE id = 1");
    b.commit().unwrap();
    b.sync();
    a.sync();
    let negative_zero = |d: &Device| matches!(d.value("SELECT b FROM m WHERE id = 1"), Value::Real(r) if r == 0.0 && r.is_sign_negative());
    assert!(negative_zero(&b), "B kept the group's -0.0");
    assert_eq!(b.value("SELECT a FROM m"), text("uno"));
    assert_eq!(a.dump("m"), b.dump("m"));
    for d in [&a, &b] {
        assert_eq!(d.json("SELECT pdb_verify()")["state"], "ok");
    }
}
