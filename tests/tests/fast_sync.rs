//! Sync, rebase and bootstrap against the witness library in this process
//! (`pdb_tests::inproc`): the scenarios of `sync.rs` and `bootstrap.rs` without HTTP or
//! a witness process, driven through `pdb-client`'s API on rusqlite connections. The
//! process tests stay the proof over the wire; these run in milliseconds, so a change
//! to the sync logic is checked at once.

use pdb_client::problem::Code;
use pdb_tests::inproc::{Device, InProcess};
use rusqlite::types::Value;
use serde_json::json;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, a TEXT, b TEXT)";

fn witness(name: &str) -> InProcess {
    let w = InProcess::start(name);
    w.create_group("g", DDL);
    w
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn row(id: i64, a: &str, b: Option<&str>) -> Vec<Value> {
    vec![Value::Integer(id), text(a), b.map_or(Value::Null, text)]
}

#[test]
fn two_devices_converge_with_verified_history() {
    let w = witness("converge");
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    let b = Device::new(&w, "b", DDL, &["notes"], "g");

    a.sql("INSERT INTO notes VALUES (1, 'one', NULL), (2, 'two', NULL)");
    assert_eq!(a.commit(), Some(1));
    let s = a.sync();
    assert_eq!((s.pushed, s.pulled, s.head.0), (1, 1, 1), "{s:?}");
    assert_eq!(
        a.status()["pending"],
        0,
        "certified commits leave the queue"
    );

    let s = b.sync();
    assert_eq!((s.pushed, s.pulled), (0, 1), "{s:?}");
    assert_eq!(b.dump("notes"), a.dump("notes"));
    assert_eq!(
        b.status()["uncommitted"],
        false,
        "pulled rows are not local changes"
    );

    b.sql("UPDATE notes SET b = 'from b' WHERE id = 2; DELETE FROM notes WHERE id = 1");
    b.commit().unwrap();
    b.sync();
    a.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(
        a.rows("SELECT id, a, b FROM notes"),
        vec![row(2, "two", Some("from b"))]
    );
    for d in [&a, &b] {
        let v = d.verify();
        assert_eq!(
            (v["commits"].as_u64(), v["state"].as_str()),
            (Some(2), Some("ok")),
            "{v}"
        );
        let st = d.status();
        assert_eq!(st["head"]["seq"], 2, "{st}");
        assert_eq!(
            (st["online"].as_bool(), st["last_error"].is_null()),
            (Some(true), true),
            "{st}"
        );
    }
    assert_eq!(w.head("g"), 2);
}

/// One classic case of DESIGN §6 (as in `sync.rs`): A (the remote side, synced first)
/// runs `remote`, B (the local side) runs `local`, both from the committed `setup`.
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

/// The custom strategy's function of `sync.rs`: the remote row with `a` = remote a +
/// "+" + local a; absent when either side deleted the row.
fn register_merge(d: &Device) {
    use rusqlite::functions::FunctionFlags;
    d.db.conn
        .create_scalar_function("merge_notes", 3, FunctionFlags::SQLITE_UTF8, |ctx| {
            let arg = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
                Ok(ctx
                    .get::<Option<String>>(i)?
                    .map(|s| serde_json::from_str(&s).unwrap()))
            };
            let (local, remote) = (arg(1)?, arg(2)?);
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

#[test]
fn every_strategy_on_every_classic_case_converges() {
    let w = InProcess::start("strategies");
    type Want = (Vec<Vec<Value>>, usize, usize);
    let r_row = || vec![row(1, "R", Some("y"))];
    // The same table as `sync.rs`: (B's final rows, conflicts recorded, of which open).
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
            let group = format!("{}-{strategy}", case.name);
            w.create_group(&group, DDL);
            let a = Device::new(&w, &format!("{group}-a"), DDL, &["notes"], &group);
            let b = Device::new(&w, &format!("{group}-b"), DDL, &["notes"], &group);
            register_merge(&b);
            if !case.setup.is_empty() {
                a.sql(case.setup);
                a.commit().unwrap();
                a.sync();
            }
            b.sync();
            if strategy == "custom" {
                let s = pdb_client::sync::strategy::Strategy::parse("custom", Some("merge_notes"))
                    .unwrap();
                pdb_client::sync::strategy::set(&b.db, "notes", &s).unwrap();
            } else {
                b.set_strategy("notes", strategy);
            }
            a.sql(case.remote);
            a.commit().unwrap();
            a.sync();
            b.sql(case.local);
            b.commit().unwrap();
            b.sync();
            a.sync();
            assert_eq!(a.dump("notes"), b.dump("notes"), "{group}: devices differ");
            for d in [&a, &b] {
                assert_eq!(d.verify()["state"], "ok", "{group}");
                assert_eq!(d.status()["pending"], 0, "{group}");
            }
            let rows = b.rows("SELECT id, a, b FROM notes ORDER BY id");
            let conflicts = b.conflicts();
            let open = conflicts.iter().filter(|c| c["status"] == "open").count();
            let want = expect(case.name, strategy);
            if (rows.clone(), conflicts.len(), open) != want {
                failures.push(format!(
                    "{group}: got rows {rows:?}, {} conflicts ({open} open), want {want:?}",
                    conflicts.len()
                ));
            }
            for c in &conflicts {
                assert_eq!(
                    (c["table"].as_str(), c["pk"].clone()),
                    (Some("notes"), json!([1])),
                    "{c}"
                );
                assert_eq!(c["strategy"], strategy, "{c}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_stale_base_is_pulled_rebased_and_pushed_again() {
    let w = witness("stale");
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    let b = Device::new(&w, "b", DDL, &["notes"], "g");
    a.sql("INSERT INTO notes VALUES (1, 'x', 'y'), (2, 'p', 'q')");
    a.commit();
    a.sync();
    b.sync();
    b.set_strategy("notes", "local-wins");
    a.sql("UPDATE notes SET a = 'r' WHERE id = 1");
    a.commit();
    a.sync();
    // B's commit is on seq 1, the group is at 2: local-wins sends fast-forward, so the
    // witness answers stale_base; B pulls, rebases, and pushes the rebased commit.
    b.sql("UPDATE notes SET a = 'l' WHERE id = 1; UPDATE notes SET b = 'l' WHERE id = 2");
    b.commit();
    let stale = w.rejections(Code::StaleBase);
    let s = b.push();
    assert_eq!(
        w.rejections(Code::StaleBase),
        stale + 1,
        "one stale_base answer"
    );
    // pdb_push pulls only what the witness asked for (seq 2); its own commit, rebased
    // onto seq 2 and certified as seq 3, comes back with the next pull.
    assert_eq!((s.pushed, s.pulled, s.head.0), (1, 1, 2), "{s:?}");
    let q = b.rows("SELECT base_seq, pushed_seq FROM pdb_upload_queue");
    assert_eq!(q, vec![vec![Value::Integer(2), Value::Integer(3)]]);
    let s = b.sync();
    assert_eq!((s.pushed, s.pulled, s.head.0), (0, 1, 3), "{s:?}");
    assert_eq!(
        b.status()["pending"],
        0,
        "the rebased commit came back certified"
    );
    a.sync();
    let want = vec![row(1, "l", Some("y")), row(2, "p", Some("l"))];
    assert_eq!(a.rows("SELECT id, a, b FROM notes ORDER BY id"), want);
    assert_eq!(b.rows("SELECT id, a, b FROM notes ORDER BY id"), want);
    assert_eq!(b.verify()["state"], "ok");
    assert_eq!(b.conflicts().len(), 0, "local-wins kept the local write");
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
            5,
        ),
    ] {
        let w = witness(&format!("chain-{strategy}"));
        let a = Device::new(&w, "a", DDL, &["notes"], "g");
        let b = Device::new(&w, "b", DDL, &["notes"], "g");
        a.sql("INSERT INTO notes VALUES (1, 'x', 'y'), (2, 'p', 'q')");
        a.commit();
        a.sync();
        b.sync();
        b.set_strategy("notes", strategy);
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
        b.sql("INSERT INTO notes VALUES (12, 'uncommitted', NULL)");
        let s = b.sync();
        assert_eq!(s.head.0, head, "{strategy}: {s:?}");
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
        let st = b.status();
        assert_eq!(
            (st["pending"].as_i64(), st["uncommitted"].as_bool()),
            (Some(0), Some(true)),
            "{st}"
        );
        a.sync();
        assert_eq!(
            a.rows("SELECT id, a, b FROM notes ORDER BY id"),
            want,
            "{strategy}"
        );
        assert_eq!(a.verify()["state"], "ok");
        assert_eq!(b.verify()["state"], "skipped: local changes are pending");
    }
}

#[test]
fn a_pull_page_is_verified_and_applied_in_order() {
    let w = witness("page");
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    for i in 1..=30 {
        a.sql(&format!("INSERT INTO notes VALUES ({i}, 'v{i}', NULL)"));
        a.commit();
    }
    assert_eq!(a.push().pushed, 30);
    let b = Device::new(&w, "b", DDL, &["notes"], "g");
    let s = b.pull();
    assert_eq!((s.pulled, s.head.0), (30, 30), "{s:?}");
    assert_eq!(b.dump("notes"), a.dump("notes"));
    let v = b.verify();
    assert_eq!(
        (v["commits"].as_u64(), v["state"].as_str()),
        (Some(30), Some("ok")),
        "{v}"
    );
    // The stored certificates are the witness's own, chained.
    assert_eq!(
        b.rows("SELECT count(*) FROM pdb_commits"),
        vec![vec![Value::Integer(30)]]
    );
}

#[test]
fn commits_the_witness_refuses_are_dead_lettered_never_dropped() {
    let w = InProcess::start_with("dead", Default::default(), 4096);
    w.create_group("g", DDL);
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    let b = Device::new(&w, "b", DDL, &["notes"], "g");
    a.sql("INSERT INTO notes VALUES (1, 'small', NULL)");
    a.commit().unwrap();
    a.sql("INSERT INTO notes VALUES (7, 'x', NULL)");
    let invalid = a.commit().unwrap();
    // The witness takes only integer rowid keys: the same insert with key '7' as TEXT.
    let mut forged = vec![b'T', 3, 1, 0, 0];
    forged.extend_from_slice(b"notes\0");
    forged.extend_from_slice(&[18, 0, 3, 1, b'7', 3, 1, b'x', 5]);
    a.db.conn
        .execute(
            "UPDATE pdb_upload_queue SET changeset = ?2, hash = ?3 WHERE id = ?1",
            (
                invalid,
                &forged,
                pdb_client::cert::hex(blake3::hash(&forged).as_bytes()),
            ),
        )
        .unwrap();
    let big = "x".repeat(10_000);
    a.sql(&format!("INSERT INTO notes VALUES (2, '{big}', NULL)"));
    let too_large = a.commit().unwrap();
    a.sql("INSERT INTO notes VALUES (3, 'after', NULL)");
    a.commit().unwrap();

    let s = a.sync();
    assert_eq!((s.pushed, s.dead), (2, 2), "{s:?}");
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
    b.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(a.verify()["state"], "ok");
}

#[test]
fn a_bare_device_starts_from_the_snapshot_and_pulls_only_what_came_after() {
    let w = witness("bootstrap");
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    for i in 1..=5 {
        a.sql(&format!("INSERT INTO notes VALUES ({i}, 'v{i}', NULL)"));
        a.commit();
    }
    a.sync();
    let m = w.snapshot("g");
    assert_eq!(m.seq, 5);
    a.sql("UPDATE notes SET b = 'later' WHERE id = 1");
    a.commit();
    a.sync();
    // Bare: no tables of its own; pdb_open installs the image at once.
    let b = Device::new(&w, "b", "", &[], "g");
    let st = b.status();
    assert_eq!(st["head"]["seq"], 5, "{st}");
    assert_eq!(st["snapshot"]["seq"], 5, "{st}");
    let s = b.sync();
    assert_eq!(
        (s.pulled, s.head.0),
        (1, 6),
        "only the commit after the snapshot: {s:?}"
    );
    assert_eq!(b.dump("notes"), a.dump("notes"));
    assert_eq!(b.verify()["state"], "ok");
    // Without a snapshot, a bare device takes the group's tables and replays.
    w.create_group("fresh", DDL);
    let c = Device::new(&w, "c", DDL, &["notes"], "fresh");
    c.sql("INSERT INTO notes VALUES (1, 'only', NULL)");
    c.commit();
    c.sync();
    let d = Device::new(&w, "d", "", &[], "fresh");
    let s = d.sync();
    assert_eq!((s.pulled, s.bootstrapped.is_none()), (1, true), "{s:?}");
    assert_eq!(d.dump("notes"), c.dump("notes"));
}

/// How often one `pdb_sync()` reads the tracked tables (`capture::tracked`) and checks
/// for the PersonalDB schema (`capture::has_schema`), counted by the statements that do
/// it, in four kinds of cycle: the per-cycle cost the sync context bounds.
#[test]
fn one_sync_cycle_reads_the_tracked_tables_a_bounded_number_of_times() {
    let w = witness("reads");
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    let b = Device::new(&w, "b", DDL, &["notes"], "g");
    let bare = Device::new(&w, "bare", "", &[], "g");
    a.sql("INSERT INTO notes VALUES (1, 'x', 'y')");
    a.commit();
    a.sync();
    b.sync();
    a.sql("UPDATE notes SET a = 'r' WHERE id = 1");
    a.commit();
    a.sync();
    let mut counts = Vec::new();

    // Push one commit, pull two (one remote to rebase over, one's own).
    b.sql("UPDATE notes SET b = 'l' WHERE id = 1");
    b.commit();
    b.db.reset();
    let s = b.sync();
    assert_eq!((s.pushed, s.pulled), (1, 2), "{s:?}");
    counts.push(("push 1, pull 2", b.db.reads()));

    // A dead letter taken back, then one commit pushed and pulled.
    b.sql("INSERT INTO notes VALUES (7, 'x', NULL)");
    let forged_id = b.commit().unwrap();
    let mut forged = vec![b'T', 3, 1, 0, 0];
    forged.extend_from_slice(b"notes\0");
    forged.extend_from_slice(&[18, 0, 3, 1, b'7', 3, 1, b'x', 5]);
    b.db.conn
        .execute(
            "UPDATE pdb_upload_queue SET changeset = ?2 WHERE id = ?1",
            (forged_id, &forged),
        )
        .unwrap();
    b.sql("INSERT INTO notes VALUES (9, 'z', NULL)");
    b.commit();
    b.db.reset();
    let s = b.sync();
    assert_eq!((s.pushed, s.dead, s.pulled), (1, 1, 1), "{s:?}");
    counts.push(("1 dead, push 1, pull 1", b.db.reads()));

    // A bare device's first sync installs a snapshot, then pulls what came after.
    w.snapshot("g");
    a.sync();
    bare.db.reset();
    let s = bare.sync();
    assert!(s.bootstrapped.is_some(), "{s:?}");
    assert_eq!(bare.dump("notes"), b.dump("notes"));
    counts.push(("bootstrap from a snapshot", bare.db.reads()));

    // A bare device on a group without snapshot takes the DDL and replays.
    w.create_group("plain", DDL);
    let c = Device::new(&w, "c", DDL, &["notes"], "plain");
    c.sql("INSERT INTO notes VALUES (1, 'x', 'y')");
    c.commit();
    c.sync();
    let d = Device::new(&w, "d", "", &[], "plain");
    d.db.reset();
    let s = d.sync();
    assert_eq!(s.pulled, 1, "{s:?}");
    counts.push(("bare, group DDL, pull 1", d.db.reads()));

    // Three pages, each one commit of 4.5 MiB (a page holds about 4 MiB, and any page
    // over 64 KiB is applied with the triggers muted), under an uncommitted edit.
    let big = "x".repeat(9 << 19);
    for i in 0..3 {
        c.sql(&format!(
            "INSERT INTO notes VALUES ({}, '{big}', NULL)",
            i + 10
        ));
        c.commit();
    }
    assert_eq!(c.push().pushed, 3);
    d.sql("UPDATE notes SET b = 'mine' WHERE id = 1");
    d.db.reset();
    let s = d.pull();
    assert_eq!(s.pulled, 3, "{s:?}");
    counts.push(("pull 3 pages", d.db.reads()));
    assert_eq!(d.status()["uncommitted"], true, "the edit rode along");

    for (what, (tracked, schema)) in &counts {
        eprintln!("{what}: capture::tracked {tracked}, has_schema {schema}");
    }
    // Before the sync context: (1, 3), (2, 4), (4, 9), (4, 8), (3, 5). A bootstrap
    // creates and tracks tables, so it reads them once more after the install.
    let reads: Vec<(usize, usize)> = counts.iter().map(|c| c.1).collect();
    assert_eq!(
        reads,
        [(1, 1), (1, 1), (2, 4), (2, 4), (1, 1)],
        "{counts:?}"
    );
}

#[test]
fn a_device_behind_the_compacted_history_starts_again_keeping_its_pending_changes() {
    use pdb_client::transport::Witness;
    let policy = pdb_witness::snapshot::Policy {
        every_commits: 4,
        every_bytes: 64 << 20,
        retain: 1,
    };
    let w = InProcess::start_with("compacted", policy, 16 << 20);
    w.create_group("g", DDL);
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    let c = Device::new(&w, "c", DDL, &["notes"], "g");
    for i in 1..3 {
        a.sql(&format!(
            "INSERT INTO notes VALUES ({i}, 'note {i}', 'first')"
        ));
        a.commit();
    }
    a.sync();
    c.sync();
    assert_eq!(c.status()["head"]["seq"], 2);
    // c goes offline with a queued commit on a row a also changes, and an uncommitted
    // edit of its own row.
    c.sql("UPDATE notes SET a = 'c title' WHERE id = 1");
    c.commit().unwrap();
    c.sql("INSERT INTO notes VALUES (100, 'c only', NULL)");
    a.sql("UPDATE notes SET b = 'a body' WHERE id = 1");
    a.commit().unwrap();
    for i in 3..14 {
        a.sql(&format!(
            "INSERT INTO notes VALUES ({i}, 'note {i}', 'second')"
        ));
        a.commit();
    }
    a.sync();
    // The witness snapshots and compacts on its own thread.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let oldest = loop {
        match w.link("g").pull(0, 1, std::time::Duration::ZERO).unwrap() {
            Err(r) if r.code() == Some(Code::Compacted) => {
                break r.body["oldest_seq"].as_u64().unwrap();
            }
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "never compacted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        oldest > 2,
        "c's head must be compacted away, oldest kept is {oldest}"
    );

    // c's sync gets 410, starts again from the snapshot, and rebases its changes.
    let s = c.sync();
    assert!(s.bootstrapped.is_some(), "{s:?}");
    assert_eq!(s.pushed, 1, "{s:?}");
    let st = c.status();
    assert_eq!(
        (st["pending"].as_i64(), st["uncommitted"].as_bool()),
        (Some(0), Some(true)),
        "{st}"
    );
    assert_eq!(
        c.rows("SELECT a FROM notes WHERE id = 100"),
        vec![vec![text("c only")]]
    );
    c.commit().unwrap();
    c.sync();
    a.sync();
    assert_eq!(a.dump("notes"), c.dump("notes"));
    // Column merge (the default): c's title and a's body both survive.
    assert_eq!(
        a.rows("SELECT a, b FROM notes WHERE id = 1"),
        vec![vec![text("c title"), text("a body")]]
    );
    assert_eq!(a.verify()["state"], "ok");
    assert_eq!(c.verify()["state"], "ok");
}

/// Polls `done` for up to 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_worker_keeps_a_device_in_sync_without_pdb_sync_calls() {
    use pdb_client::sync::worker;
    use std::time::Duration;
    let w = witness("worker");
    let a = Device::new(&w, "a", DDL, &["notes"], "g");
    let b = Device::new(&w, "b", DDL, &["notes"], "g");
    let key = pdb_client::sync::status::db_path(&b.db).unwrap();
    let file = b.path.clone();
    let options = worker::Options {
        wait: Duration::from_secs(1),
        poll: Duration::from_millis(50),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
    };
    let link = std::sync::Arc::new(w.link("g"));
    let open = move || {
        let conn = rusqlite::Connection::open(&file).expect("worker's connection");
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        Ok(conn)
    };
    assert!(worker::start_with(&key, options, open, link.clone()).unwrap());
    assert_eq!(b.status()["worker"], true);

    // A remote commit reaches B through the watcher's long-poll.
    a.sql("INSERT INTO notes VALUES (1, 'from a', NULL)");
    a.commit();
    a.sync();
    eventually("b has a's row", || {
        b.rows("SELECT id, a, b FROM notes") == vec![row(1, "from a", None)]
    });
    // A local commit goes out when the worker is woken (pdb_commit does it).
    b.sql("UPDATE notes SET b = 'from b' WHERE id = 1");
    b.commit();
    worker::notify(&key);
    eventually("the witness has b's commit", || w.head("g") == 2);
    eventually("b's commit came back certified", || {
        b.status()["pending"] == 0
    });
    a.sync();
    assert_eq!(
        a.rows("SELECT id, a, b FROM notes"),
        vec![row(1, "from a", Some("from b"))]
    );
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert!(worker::stop(&key));
    assert_eq!(b.status()["worker"], false);
    // The watcher ends with its current long-poll; then the witness (and its data
    // directory) can go.
    eventually("the watcher let go of the witness", || {
        std::sync::Arc::strong_count(&link) == 1
    });
    assert_eq!(b.verify()["state"], "ok");
}
