//! Loads the release `libpdb` into SQLite 3.37.0, the oldest host PersonalDB supports,
//! and checks that capture, commit, decoding and apply work there. Run after
//! `cargo build --release -p personaldb`: `cargo run --manifest-path tests/hosts/sqlite-3.37/Cargo.toml`.

use rusqlite::Connection;

fn lib() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../..");
    format!("{root}/target/release/libpdb")
}

fn open() -> rusqlite::Result<Connection> {
    let c = Connection::open_in_memory()?;
    // Safety: loads the library built from this repository by its documented entry point.
    unsafe {
        c.load_extension_enable()?;
        c.load_extension(lib(), Some("sqlite3_pdb_init"))?;
    }
    c.execute_batch(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, n);
         CREATE TABLE tags(note INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY(tag, note)) WITHOUT ROWID;
         INSERT INTO notes VALUES (1, 'a', 1), (2, 'b', 2);",
    )?;
    Ok(c)
}

fn dump(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    for sql in [
        "SELECT quote(id)||quote(title)||quote(n) FROM notes ORDER BY id",
        "SELECT quote(note)||quote(tag) FROM tags ORDER BY tag, note",
    ] {
        let mut stmt = c.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for r in rows {
            out.push(r?);
        }
    }
    Ok(out)
}

fn main() {
    let mut results: Vec<(String, bool, String)> = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| results.push((name.into(), ok, detail));
    let mut run = || -> rusqlite::Result<()> {
        let a = open()?;
        let version: String = a.query_row("SELECT sqlite_version()", [], |r| r.get(0))?;
        check("host is SQLite 3.37.0", version == "3.37.0", version);
        let pdb: String = a.query_row("SELECT pdb_version()", [], |r| r.get(0))?;
        check("pdb_version() answers", !pdb.is_empty(), pdb);
        a.execute_batch(
            "SELECT pdb_track('notes'); SELECT pdb_track('tags'); SELECT pdb_commit();",
        )?;
        a.execute_batch(
            "INSERT INTO notes VALUES (3, 'c', x'00'); UPDATE notes SET n = -0.0 WHERE id = 1;
             DELETE FROM notes WHERE id = 2; INSERT INTO tags VALUES (3, 'x'), (1, 'y');
             INSERT OR REPLACE INTO notes VALUES (3, 'c2', NULL);",
        )?;
        let rows: Vec<String> = a
            .prepare("SELECT tbl||' '||op||' '||pk FROM pdb_changeset_rows(pdb_changeset())")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let want = [
            "notes UPDATE [1]",
            "notes DELETE [2]",
            "notes INSERT [3]",
            "tags INSERT [\"y\",1]",
            "tags INSERT [\"x\",3]",
        ];
        // Canonical order compares key fields in column order (note, then tag).
        check("pending changes decode", rows == want, format!("{rows:?}"));
        let id: i64 = a.query_row("SELECT pdb_commit()", [], |r| r.get(0))?;
        check(
            "pdb_commit returns the local commit id",
            id == 2,
            id.to_string(),
        );
        let cs: Vec<u8> = a.query_row(
            "SELECT changeset FROM pdb_upload_queue WHERE id = 2",
            [],
            |r| r.get(0),
        )?;
        let b = open()?;
        let applied: String = b.query_row("SELECT pdb_apply(?1)", [&cs], |r| r.get(0))?;
        check(
            "pdb_apply applies every change",
            applied == r#"{"applied":5,"replaced":0,"skipped":0}"#,
            applied,
        );
        check(
            "both databases hold the same rows",
            dump(&a)? == dump(&b)?,
            format!("{:?} vs {:?}", dump(&a)?, dump(&b)?),
        );
        let err = b
            .query_row("SELECT pdb_apply(x'54')", [], |_| Ok(()))
            .unwrap_err()
            .to_string();
        check(
            "bad input is a clear error",
            err.contains("malformed changeset"),
            err,
        );
        Ok(())
    };
    if let Err(e) = run() {
        results.push(("no unexpected error".into(), false, e.to_string()));
    }
    for (name, ok, detail) in &results {
        if *ok {
            println!("ok   - {name}");
        } else {
            println!("FAIL - {name}: {detail}");
        }
    }
    let failed = results.iter().filter(|r| !r.1).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    std::process::exit(i32::from(failed > 0));
}
