//! Apply benchmark: the time libpdb's `pdb_apply` takes to apply a series of pulled
//! commits to a tracked table, against the session extension's `sqlite3changeset_apply`
//! (rusqlite's `apply_strm`) on the same changesets, one transaction per commit in both.
//!
//! Settings via the environment: `PDB_APPLY_COMMITS` (default 1000), `PDB_APPLY_CHANGES`
//! (changes per commit, default 100), `PDB_APPLY_REPS` (default 3), `PDB_LIB` (default
//! `<workspace>/target/release/libpdb.so`).

use pdb_bench::{env_num, load_pdb, loadavg, median, print_machine, remove_db, run, verdict, Res};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::session::{ChangesetIter, ConflictAction, Session};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

/// Target: `pdb_apply` time at most this multiple of the session extension's.
const MAX_APPLY_RATIO: f64 = 1.3;
/// Seed of all generated data, so every run applies the same changesets.
const SEED: u64 = 0x5044_4241_5050_4c59;
/// Rows in `notes` before the first commit.
const INITIAL_NOTES: i64 = 2000;
/// Rows in `pairs` before the first commit.
const INITIAL_PAIRS: i64 = 500;

const DDL: &str = "
    CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT, stars INTEGER);
    CREATE TABLE pairs(a TEXT NOT NULL, b INTEGER NOT NULL, v TEXT, n INTEGER,
                       PRIMARY KEY(a, b)) WITHOUT ROWID;";

/// The tables and their dump queries, ordered by key.
const DUMPS: [&str; 2] = [
    "SELECT id, title, body, stars FROM notes ORDER BY id",
    "SELECT a, b, v, n FROM pairs ORDER BY a, b",
];

/// Xorshift64*: small, seedable, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    fn text(&mut self, min: usize, spread: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
        let len = min + self.below(spread);
        (0..len)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }

    fn stars(&mut self) -> Option<i64> {
        // Some NULLs, so the changesets carry them too.
        match self.below(8) {
            0 => None,
            _ => Some(self.below(1000) as i64),
        }
    }
}

/// A row key of either table.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Note(i64),
    Pair(String, i64),
}

/// The initial content, generated once and inserted into every database.
struct Initial {
    notes: Vec<(i64, String, String, Option<i64>)>,
    pairs: Vec<(String, i64, String, Option<i64>)>,
}

impl Initial {
    fn generate(rng: &mut Rng) -> Initial {
        let notes = (1..=INITIAL_NOTES)
            .map(|id| (id, rng.text(20, 20), rng.text(100, 200), rng.stars()))
            .collect();
        let pairs = (0..INITIAL_PAIRS)
            .map(|i| (format!("k{:03}", i % 50), i, rng.text(10, 30), rng.stars()))
            .collect();
        Initial { notes, pairs }
    }

    fn load(&self, conn: &Connection) -> Res<()> {
        conn.execute_batch("BEGIN")?;
        {
            let mut ins = conn.prepare("INSERT INTO notes VALUES (?1, ?2, ?3, ?4)")?;
            for (id, t, b, s) in &self.notes {
                ins.execute(params![id, t, b, s])?;
            }
            let mut ins = conn.prepare("INSERT INTO pairs VALUES (?1, ?2, ?3, ?4)")?;
            for (a, b, v, n) in &self.pairs {
                ins.execute(params![a, b, v, n])?;
            }
        }
        conn.execute_batch("COMMIT")?;
        Ok(())
    }
}

/// Records `commits` changesets of `per` changes each on an in-memory copy of the
/// initial content. Returns the changesets and the final dump of the source.
fn record(
    init: &Initial,
    rng: &mut Rng,
    commits: usize,
    per: usize,
) -> Res<(Vec<Vec<u8>>, Vec<String>)> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(DDL)?;
    init.load(&conn)?;
    let mut live: Vec<Key> = init
        .notes
        .iter()
        .map(|r| Key::Note(r.0))
        .chain(init.pairs.iter().map(|r| Key::Pair(r.0.clone(), r.1)))
        .collect();
    let mut next_note = INITIAL_NOTES + 1;
    let mut next_pair = INITIAL_PAIRS;
    let mut out = Vec::with_capacity(commits);
    for _ in 0..commits {
        let mut session = Session::new(&conn)?;
        session.attach::<&str>(None)?;
        conn.execute_batch("BEGIN")?;
        // Rows this commit touched: each is touched once, so nothing consolidates and
        // every commit carries exactly `per` changes.
        let mut touched: HashSet<Key> = HashSet::new();
        let mut done = 0;
        while done < per {
            let roll = rng.below(10);
            if roll < 6 || live.len() <= touched.len() + 1 {
                // Insert: four in five into notes, the rest into pairs.
                let key = if rng.below(5) < 4 {
                    let id = next_note;
                    next_note += 1;
                    conn.execute(
                        "INSERT INTO notes VALUES (?1, ?2, ?3, ?4)",
                        params![id, rng.text(20, 20), rng.text(100, 200), rng.stars()],
                    )?;
                    Key::Note(id)
                } else {
                    let (a, b) = (format!("k{:03}", rng.below(50)), next_pair);
                    next_pair += 1;
                    conn.execute(
                        "INSERT INTO pairs VALUES (?1, ?2, ?3, ?4)",
                        params![a, b, rng.text(10, 30), rng.stars()],
                    )?;
                    Key::Pair(a, b)
                };
                touched.insert(key.clone());
                live.push(key);
                done += 1;
                continue;
            }
            let i = rng.below(live.len());
            if touched.contains(&live[i]) {
                continue;
            }
            let key = if roll < 9 {
                // Update one or two columns.
                let two = rng.below(2) == 1;
                let changed = match &live[i] {
                    Key::Note(id) => {
                        let first = rng.below(3);
                        let cols: Vec<usize> = if two {
                            vec![first, (first + 1 + rng.below(2)) % 3]
                        } else {
                            vec![first]
                        };
                        let mut n = 0;
                        for c in cols {
                            n += match c {
                                0 => conn.execute(
                                    "UPDATE notes SET title = ?2 WHERE id = ?1",
                                    params![id, rng.text(20, 20)],
                                )?,
                                1 => conn.execute(
                                    "UPDATE notes SET body = ?2 WHERE id = ?1",
                                    params![id, rng.text(100, 200)],
                                )?,
                                _ => conn.execute(
                                    "UPDATE notes SET stars = coalesce(stars, 0) + ?2 WHERE id = ?1",
                                    params![id, rng.below(1000) as i64 + 1],
                                )?,
                            };
                        }
                        n > 0
                    }
                    Key::Pair(a, b) => {
                        // NULL leaves a column alone.
                        let (set_v, set_n) = match (two, rng.below(2)) {
                            (true, _) => (true, true),
                            (false, 0) => (true, false),
                            _ => (false, true),
                        };
                        let v = set_v.then(|| rng.text(10, 30));
                        let n = set_n.then(|| rng.below(1000) as i64 + 1);
                        let sql = "UPDATE pairs SET v = coalesce(?3, v), \
                                   n = CASE WHEN ?4 IS NULL THEN n ELSE coalesce(n, 0) + ?4 END \
                                   WHERE a = ?1 AND b = ?2";
                        conn.execute(sql, params![a, b, v, n])? == 1
                    }
                };
                if !changed {
                    return Err("an update found no row".into());
                }
                live[i].clone()
            } else {
                let key = live.swap_remove(i);
                let n = match &key {
                    Key::Note(id) => conn.execute("DELETE FROM notes WHERE id = ?1", [id])?,
                    Key::Pair(a, b) => {
                        conn.execute("DELETE FROM pairs WHERE a = ?1 AND b = ?2", params![a, b])?
                    }
                };
                if n != 1 {
                    return Err("a delete found no row".into());
                }
                key
            };
            touched.insert(key);
            done += 1;
        }
        conn.execute_batch("COMMIT")?;
        let mut cs = Vec::new();
        session.changeset_strm(&mut cs)?;
        let n = count_changes(&cs)?;
        if n != per {
            return Err(format!("a recorded changeset holds {n} changes, not {per}").into());
        }
        out.push(cs);
    }
    Ok((out, dump(&conn)?))
}

fn count_changes(cs: &[u8]) -> Res<usize> {
    let mut input = cs;
    let reader: &mut dyn std::io::Read = &mut input;
    let mut it = ChangesetIter::start_strm(&reader)?;
    let mut n = 0;
    while it.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Every row of both tables, ordered by key, one string each.
fn dump(conn: &Connection) -> Res<Vec<String>> {
    let mut out = Vec::new();
    for (t, sql) in DUMPS.iter().enumerate() {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let mut s = format!("{t}:");
            for i in 0..4 {
                s.push_str(&format!(" {:?}", Value::from(r.get_ref(i)?)));
            }
            out.push(s);
        }
    }
    Ok(out)
}

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
    let lib = match std::env::var_os("PDB_LIB") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("bench crate lives inside the workspace")
            .join("target/release/libpdb.so"),
    };
    if !lib.exists() {
        return Err(format!(
            "{} not found; run `cargo build --release -p pdb` first or set PDB_LIB",
            lib.display()
        )
        .into());
    }
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
