//! Apply benchmark: the time libpdb's `pdb_apply` takes to apply a series of pulled
//! commits to a tracked table, against the session extension's `sqlite3changeset_apply`
//! (rusqlite's `apply_strm`) on the same changesets, one transaction per commit in both.
//!
//! Settings via the environment: `PDB_APPLY_COMMITS` (default 1000), `PDB_APPLY_CHANGES`
//! (changes per commit, default 100), `PDB_APPLY_REPS` (default 3), `PDB_LIB` (default
//! `<workspace>/target/release/libpdb.so`).

use pdb_bench::workload::{
    count_changes, dump, record, Initial, Rng, DDL, INITIAL_NOTES, INITIAL_PAIRS, SEED,
};
use pdb_bench::{
    env_num, load_pdb, loadavg, median, prebuilt_artifact, print_machine, remove_db, run, verdict,
    Res,
};
use std::path::Path;
use std::time::Instant;

use rusqlite::session::ConflictAction;
use rusqlite::Connection;

/// Target: `pdb_apply` time at most this multiple of the session extension's.
const MAX_APPLY_RATIO: f64 = 1.3;

/// Changes in libpdb's pending (uncommitted local) changeset.
fn pending_changes(conn: &Connection) -> Res<usize> {
    let pending: Option<Vec<u8>> = conn.query_row("SELECT pdb_changeset()", [], |r| r.get(0))?;
    pending.map_or(Ok(0), |p| count_changes(&p))
}

/// A fresh target database with the DDL and the initial rows.
fn open_target(path: &Path, init: &Initial) -> Res<Connection> {
    remove_db(path);
    let conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not wal").into());
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
    conn.execute_batch(DDL)?;
    init.load(&conn)?;
    Ok(conn)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Pdb,
    Session,
}

const VARIANTS: [Variant; 2] = [Variant::Pdb, Variant::Session];

/// Applies every changeset to a fresh target; returns the seconds and the final dump.
fn run_variant(
    v: Variant,
    lib: &Path,
    dir: &Path,
    init: &Initial,
    changesets: &[Vec<u8>],
) -> Res<(f64, Vec<String>)> {
    let name = match v {
        Variant::Pdb => "pdb",
        Variant::Session => "session",
    };
    let path = dir.join(format!("{name}.db"));
    let conn = open_target(&path, init)?;
    let secs = match v {
        Variant::Pdb => {
            load_pdb(&conn, lib)?;
            conn.query_row("SELECT pdb_track('notes')", [], |_| Ok(()))?;
            conn.query_row("SELECT pdb_track('pairs')", [], |_| Ok(()))?;
            // pdb_track counts the rows already there as pending local inserts; commit
            // them, as a device would have, so the applies meet no local edits.
            conn.query_row("SELECT pdb_commit()", [], |_| Ok(()))?;
            if pending_changes(&conn)? != 0 {
                return Err("changes still pending after pdb_commit()".into());
            }
            let mut stmt = conn.prepare("SELECT pdb_apply(?1)")?;
            let mut stats = Vec::with_capacity(changesets.len());
            let t = Instant::now();
            for cs in changesets {
                stats.push(stmt.query_row([cs], |r| r.get::<_, String>(0))?);
            }
            let secs = t.elapsed().as_secs_f64();
            for (i, (s, cs)) in stats.iter().zip(changesets).enumerate() {
                let want = format!(
                    r#"{{"applied":{},"replaced":0,"skipped":0}}"#,
                    count_changes(cs)?
                );
                if *s != want {
                    return Err(format!("pdb_apply of commit {i} returned {s}, not {want}").into());
                }
            }
            // Applied changes must not be captured as local edits.
            let pending = pending_changes(&conn)?;
            if pending != 0 {
                return Err(format!(
                    "pdb_apply's changes were captured as local edits: {pending} pending changes"
                )
                .into());
            }
            secs
        }
        Variant::Session => {
            let t = Instant::now();
            for cs in changesets {
                conn.execute_batch("BEGIN")?;
                conn.apply_strm(&mut &cs[..], None::<fn(&str) -> bool>, |_, _| {
                    ConflictAction::SQLITE_CHANGESET_ABORT
                })?;
                conn.execute_batch("COMMIT")?;
            }
            t.elapsed().as_secs_f64()
        }
    };
    let d = dump(&conn)?;
    drop(conn);
    remove_db(&path);
    Ok((secs, d))
}

fn main() {
    run(bench);
}

fn bench() -> Res<()> {
    let started = Instant::now();
    let commits = env_num::<usize>("PDB_APPLY_COMMITS", 1000)?;
    let per = env_num::<usize>("PDB_APPLY_CHANGES", 100)?;
    let reps = env_num::<usize>("PDB_APPLY_REPS", 3)?;
    if commits == 0 || per == 0 || reps == 0 {
        return Err("PDB_APPLY_COMMITS, PDB_APPLY_CHANGES and PDB_APPLY_REPS must be > 0".into());
    }
    let lib = prebuilt_artifact("PDB_LIB", "personaldb", "libpdb.so")?;
    let pdb_version: String = {
        let conn = Connection::open_in_memory()?;
        load_pdb(&conn, &lib)?;
        conn.query_row("SELECT pdb_version()", [], |r| r.get(0))?
    };
    print_machine();
    println!(
        "sqlite {} (rusqlite bundled, one library for both variants); libpdb {} ({})",
        rusqlite::version(),
        pdb_version,
        lib.display()
    );

    let mut rng = Rng(SEED);
    let init = Initial::generate(&mut rng);
    let (changesets, source) = record(&init, &mut rng, commits, per)?;
    let total = commits * per;
    let bytes: usize = changesets.iter().map(Vec::len).sum();
    println!(
        "{commits} commits x {per} changes ({total} changes, {:.1} MB of changesets; \
         ~60% insert, 30% update of 1-2 columns, 10% delete; notes {} + pairs {} initial rows, \
         pairs is WITHOUT ROWID with a composite key)",
        bytes as f64 / 1e6,
        INITIAL_NOTES,
        INITIAL_PAIRS
    );
    println!(
        "reps {reps} (medians; variant order rotated per rep), one transaction per commit, \
         WAL + synchronous=NORMAL"
    );

    let dir = std::env::temp_dir().join(format!("pdb-bench-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut times: Vec<Vec<f64>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        let mut dumps: Vec<Option<Vec<String>>> = vec![None; VARIANTS.len()];
        for k in 0..VARIANTS.len() {
            let vi = (rep + k) % VARIANTS.len();
            let (secs, d) = run_variant(VARIANTS[vi], &lib, &dir, &init, &changesets)?;
            times[vi].push(secs);
            dumps[vi] = Some(d);
        }
        let (p, s) = (dumps[0].as_deref(), dumps[1].as_deref());
        if p != s {
            return Err(format!(
                "rep {}: final contents differ between pdb and session",
                rep + 1
            )
            .into());
        }
        if s != Some(&source[..]) {
            return Err(format!("rep {}: final contents differ from the source", rep + 1).into());
        }
    }
    let _ = std::fs::remove_dir(&dir);

    let (p, s) = (median(times[0].clone()), median(times[1].clone()));
    let ratio = p / s;
    println!();
    println!(
        "{:<28} {:>9} {:>12} {:>12}",
        "apply", "time (s)", "changes/s", "commits/s"
    );
    for (label, t) in [("pdb_apply (tracked)", p), ("session changeset_apply", s)] {
        println!(
            "{label:<28} {t:>9.3} {:>12.0} {:>12.0}",
            total as f64 / t,
            commits as f64 / t
        );
    }
    println!(
        "ratio pdb/session {ratio:.2}x   target <= {MAX_APPLY_RATIO:.2}   {}",
        verdict(ratio <= MAX_APPLY_RATIO)
    );
    println!(
        "(pdb: SELECT pdb_apply(?1) per commit, notes and pairs tracked; session: BEGIN; \
         apply_strm with ABORT on conflict; COMMIT)"
    );
    println!();
    println!(
        "check: ok (every rep: final notes and pairs identical in pdb, session and the source, \
         {} rows; every pdb_apply applied all its changes; nothing captured as local edits)",
        source.len()
    );
    println!(
        "total {:.1} s, load average {} at end",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}
