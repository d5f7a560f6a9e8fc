//! Capture benchmark: write workloads on plain SQLite, with libpdb's trigger capture,
//! and with the SQLite session extension, all in one process on the same bundled
//! SQLite, reported as medians and ratios against the plain run.

use pdb_bench::{load_pdb, loadavg, median, print_machine, remove_db, run, verdict, Res};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::Instant;

use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::hooks::Action;
use rusqlite::session::{ChangesetIter, Session};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

/// Rows per transaction in every workload.
const BATCH: usize = 1000;
/// Seed of all generated data, so every run writes the same rows in the same order.
const SEED: u64 = 0x0050_4442_5345_4544;
/// Target: capture write time at most this multiple of the untracked write time.
const MAX_CAPTURE_RATIO: f64 = 1.5;
/// Target: minimum `pdb_commit()` throughput, in MB/s (10^6 bytes).
const MIN_COMMIT_MBPS: f64 = 50.0;

/// Command-line settings.
struct Opts {
    rows: usize,
    reps: usize,
    lib: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: pdb-bench [--rows N] [--reps N] [--lib PATH]\n  \
         --rows N   rows inserted by W1 (default 100000; W2 updates all, W3 deletes half)\n  \
         --reps N   repetitions, medians reported (default 5)\n  \
         --lib PATH libpdb shared library (default <workspace>/target/release/libpdb.so)"
    );
    exit(2)
}

fn parse_opts() -> Opts {
    let mut opts = Opts {
        rows: 100_000,
        reps: 5,
        lib: pdb_testkit::root().join("target/release/libpdb.so"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--rows" => opts.rows = value().parse().unwrap_or_else(|_| usage()),
            "--reps" => opts.reps = value().parse().unwrap_or_else(|_| usage()),
            "--lib" => opts.lib = PathBuf::from(value()),
            _ => usage(),
        }
    }
    if opts.rows < 2 || opts.reps == 0 {
        usage();
    }
    opts
}

/// SplitMix64: tiny, seedable, and good enough to make text and shuffles.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
        (0..len)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Everything the workloads write, generated before any timing.
struct Data {
    /// `(title, body, n)` of the row with id `index + 1`.
    rows: Vec<(String, String, i64)>,
    /// W2's ids, every row once, shuffled.
    update_ids: Vec<i64>,
    /// W3's ids, a shuffled half of the rows.
    delete_ids: Vec<i64>,
}

impl Data {
    fn generate(n: usize) -> Data {
        let mut rng = Rng(SEED);
        let rows = (0..n)
            .map(|_| {
                let title_len = 25 + rng.below(11);
                let body_len = 180 + rng.below(41);
                let title = rng.text(title_len);
                let body = rng.text(body_len);
                // Bounded so that `n + 1` can never overflow into a REAL.
                (title, body, rng.below(1 << 40) as i64)
            })
            .collect();
        let mut update_ids: Vec<i64> = (1..=n as i64).collect();
        rng.shuffle(&mut update_ids);
        let mut delete_ids: Vec<i64> = (1..=n as i64).collect();
        rng.shuffle(&mut delete_ids);
        delete_ids.truncate(n / 2);
        Data {
            rows,
            update_ids,
            delete_ids,
        }
    }
}

/// The three workloads, run in this order on one database.
#[derive(Clone, Copy)]
enum Workload {
    Insert,
    Update,
    Delete,
}

const WORKLOADS: [Workload; 3] = [Workload::Insert, Workload::Update, Workload::Delete];

impl Workload {
    fn label(self, data: &Data) -> String {
        match self {
            Workload::Insert => format!("W1 insert {}", data.rows.len()),
            Workload::Update => format!("W2 update {}", data.update_ids.len()),
            Workload::Delete => format!("W3 delete {}", data.delete_ids.len()),
        }
    }

    /// Changes the workload leaves in a changeset: one per row it touched.
    fn changes(self, data: &Data) -> usize {
        match self {
            Workload::Insert => data.rows.len(),
            Workload::Update => data.update_ids.len(),
            Workload::Delete => data.delete_ids.len(),
        }
    }

    fn run(self, conn: &Connection, data: &Data) -> Res<()> {
        match self {
            Workload::Insert => {
                let mut stmt =
                    conn.prepare("INSERT INTO items(id, title, body, n) VALUES (?1, ?2, ?3, ?4)")?;
                for (b, chunk) in data.rows.chunks(BATCH).enumerate() {
                    conn.execute_batch("BEGIN")?;
                    for (j, (title, body, n)) in chunk.iter().enumerate() {
                        let id = (b * BATCH + j + 1) as i64;
                        expect_one(stmt.execute(params![id, title, body, n])?)?;
                    }
                    conn.execute_batch("COMMIT")?;
                }
                Ok(())
            }
            Workload::Update => by_id(
                conn,
                "UPDATE items SET n = n + 1 WHERE id = ?1",
                &data.update_ids,
            ),
            Workload::Delete => by_id(conn, "DELETE FROM items WHERE id = ?1", &data.delete_ids),
        }
    }
}

fn expect_one(changed: usize) -> Res<()> {
    if changed != 1 {
        return Err(format!("a write changed {changed} rows instead of 1").into());
    }
    Ok(())
}

fn by_id(conn: &Connection, sql: &str, ids: &[i64]) -> Res<()> {
    let mut stmt = conn.prepare(sql)?;
    for chunk in ids.chunks(BATCH) {
        conn.execute_batch("BEGIN")?;
        for id in chunk {
            expect_one(stmt.execute([id])?)?;
        }
        conn.execute_batch("COMMIT")?;
    }
    Ok(())
}

/// How changes are captured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    Pdb,
    Session,
}

const VARIANTS: [Variant; 3] = [Variant::Plain, Variant::Pdb, Variant::Session];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Pdb => "pdb",
            Variant::Session => "session",
        }
    }
}

/// One workload's numbers for one variant in one repetition.
#[derive(Default, Clone)]
struct Measured {
    /// Seconds spent writing (and, for the session, creating it).
    write: f64,
    /// Seconds of `pdb_commit()` or of session changeset generation.
    post: f64,
    /// Changeset size.
    bytes: usize,
    /// The changeset itself, kept only when it is to be checked.
    changeset: Option<Vec<u8>>,
}

/// One variant's run over the three workloads.
struct Run {
    work: Vec<Measured>,
    /// Row count and hash of the final `items` contents.
    digest: (usize, u64),
}

fn open(path: &Path) -> Res<Connection> {
    let conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not wal").into());
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE items(id INTEGER PRIMARY KEY, title TEXT, body TEXT, n INTEGER);",
    )?;
    Ok(conn)
}

fn digest(conn: &Connection) -> Res<(usize, u64)> {
    let mut stmt = conn.prepare("SELECT id, title, body, n FROM items ORDER BY id")?;
    let mut rows = stmt.query([])?;
    let mut h = DefaultHasher::new();
    let mut count = 0;
    while let Some(r) = rows.next()? {
        for i in 0..4 {
            format!("{:?}", Value::from(r.get_ref(i)?)).hash(&mut h);
        }
        count += 1;
    }
    Ok((count, h.finish()))
}

fn run_variant(v: Variant, opts: &Opts, data: &Data, dir: &Path, keep: bool) -> Res<Run> {
    let path = dir.join(format!("{}.db", v.name()));
    remove_db(&path);
    let conn = open(&path)?;
    if v == Variant::Pdb {
        load_pdb(&conn, &opts.lib)?;
        conn.query_row("SELECT pdb_track('items')", [], |_| Ok(()))?;
    }
    let mut work = Vec::new();
    for w in WORKLOADS {
        let mut m = Measured::default();
        match v {
            Variant::Plain => {
                let t = Instant::now();
                w.run(&conn, data)?;
                m.write = t.elapsed().as_secs_f64();
            }
            Variant::Pdb => {
                let t = Instant::now();
                w.run(&conn, data)?;
                m.write = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let id: Option<i64> = conn.query_row("SELECT pdb_commit()", [], |r| r.get(0))?;
                m.post = t.elapsed().as_secs_f64();
                if id.is_none() {
                    return Err("pdb_commit() found nothing to commit".into());
                }
                let len: i64 = conn.query_row(
                    "SELECT length(changeset) FROM pdb_upload_queue ORDER BY id DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )?;
                m.bytes = len as usize;
                if keep {
                    m.changeset = Some(conn.query_row(
                        "SELECT changeset FROM pdb_upload_queue ORDER BY id DESC LIMIT 1",
                        [],
                        |r| r.get(0),
                    )?);
                }
            }
            Variant::Session => {
                let t = Instant::now();
                let mut session = Session::new(&conn)?;
                session.attach(Some("items"))?;
                w.run(&conn, data)?;
                m.write = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let mut cs = Vec::new();
                session.changeset_strm(&mut cs)?;
                m.post = t.elapsed().as_secs_f64();
                m.bytes = cs.len();
                if keep {
                    m.changeset = Some(cs);
                }
            }
        }
        work.push(m);
    }
    let digest = digest(&conn)?;
    drop(conn);
    remove_db(&path);
    Ok(Run { work, digest })
}

/// The changes of a changeset as SQLite's own reader sees them, one string each, sorted
/// so that two changesets compare as multisets whatever their row order.
fn decode(cs: &[u8]) -> Res<Vec<String>> {
    let mut input = cs;
    let reader: &mut dyn Read = &mut input;
    let mut it = ChangesetIter::start_strm(&reader)?;
    let mut out = Vec::new();
    let show = |v: rusqlite::Result<rusqlite::types::ValueRef<'_>>| match v {
        Ok(v) => format!("{:?}", Value::from(v)),
        // An absent value (an UPDATE's untouched column) is reported as an error.
        Err(_) => "-".to_string(),
    };
    while let Some(item) = it.next()? {
        let op = item.op()?;
        let n = op.number_of_columns() as usize;
        let mut s = format!(
            "{} {:?} indirect={} pk={:?}",
            op.table_name(),
            op.code(),
            op.indirect(),
            item.pk()?
        );
        if matches!(op.code(), Action::SQLITE_DELETE | Action::SQLITE_UPDATE) {
            s.push_str(" old:");
            for i in 0..n {
                s.push(' ');
                s.push_str(&show(item.old_value(i)));
            }
        }
        if matches!(op.code(), Action::SQLITE_INSERT | Action::SQLITE_UPDATE) {
            s.push_str(" new:");
            for i in 0..n {
                s.push(' ');
                s.push_str(&show(item.new_value(i)));
            }
        }
        out.push(s);
    }
    out.sort_unstable();
    Ok(out)
}

/// Compares the two changesets of a workload; `Err` describes the first difference.
fn same_changes(w: Workload, data: &Data, ours: &[u8], theirs: &[u8]) -> Res<()> {
    let label = w.label(data);
    let a =
        decode(ours).map_err(|e| format!("{label}: SQLite cannot read pdb's changeset: {e}"))?;
    let b = decode(theirs)?;
    if a.len() != w.changes(data) || b.len() != w.changes(data) {
        return Err(format!(
            "{label}: expected {} changes, pdb has {}, session has {}",
            w.changes(data),
            a.len(),
            b.len()
        )
        .into());
    }
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        return Err(format!("{label}: changes differ\n  pdb:     {x}\n  session: {y}").into());
    }
    Ok(())
}

fn main() {
    run(bench);
}

fn bench() -> Res<()> {
    let opts = parse_opts();
    let started = Instant::now();
    if !opts.lib.exists() {
        return Err(format!(
            "{} not found; run `cargo build --release -p personaldb` first or pass --lib",
            opts.lib.display()
        )
        .into());
    }
    let data = Data::generate(opts.rows);
    let dir = std::env::temp_dir().join(format!("pdb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let pdb_version: String = {
        let conn = Connection::open_in_memory()?;
        load_pdb(&conn, &opts.lib)?;
        conn.query_row("SELECT pdb_version()", [], |r| r.get(0))?
    };
    print_machine();
    println!(
        "sqlite {} (rusqlite bundled, one library for all variants); libpdb {} ({})",
        rusqlite::version(),
        pdb_version,
        opts.lib.display()
    );
    println!(
        "rows {}, reps {} (medians; variant order rotated per rep), {} rows/transaction, WAL + synchronous=NORMAL",
        opts.rows, opts.reps, BATCH
    );

    // runs[variant][rep]
    let mut runs: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for rep in 0..opts.reps {
        for k in 0..VARIANTS.len() {
            let vi = (rep + k) % VARIANTS.len();
            // Only the first repetition keeps its changesets: the check needs one run,
            // and holding every changeset would only cost memory.
            let run = run_variant(VARIANTS[vi], &opts, &data, &dir, rep == 0)?;
            runs[vi].push(run);
        }
    }
    let _ = std::fs::remove_dir(&dir);

    let (plain, pdb, session) = (&runs[0], &runs[1], &runs[2]);
    let med = |rs: &[Run], w: usize, f: fn(&Measured) -> f64| {
        median(rs.iter().map(|r| f(&r.work[w])).collect())
    };
    let write = |m: &Measured| m.write;
    let post = |m: &Measured| m.post;

    println!();
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>8} {:>9}   target pdb/plain <= {MAX_CAPTURE_RATIO:.2}",
        "write time (s)", "plain", "pdb", "pdb/plain", "session", "ses/plain"
    );
    for (wi, w) in WORKLOADS.iter().enumerate() {
        let (p, d, s) = (
            med(plain, wi, write),
            med(pdb, wi, write),
            med(session, wi, write),
        );
        println!(
            "{:<16} {p:>8.3} {d:>8.3} {:>8.2}x {s:>8.3} {:>8.2}x   {}",
            w.label(&data),
            d / p,
            s / p,
            verdict(d / p <= MAX_CAPTURE_RATIO)
        );
    }

    println!();
    println!(
        "{:<16} {:>10} {:>8} {:>10} {:>8} {:>11} {:>11} {:>6}   target commit >= {MIN_COMMIT_MBPS:.0} MB/s",
        "changeset", "commit (s)", "MB/s", "sess gen(s)", "MB/s", "pdb bytes", "sess bytes", "equal"
    );
    let mut sizes_equal = true;
    for (wi, w) in WORKLOADS.iter().enumerate() {
        let (c, g) = (med(pdb, wi, post), med(session, wi, post));
        let (ob, sb) = (pdb[0].work[wi].bytes, session[0].work[wi].bytes);
        // Sizes depend only on the data, so every repetition must agree with the first.
        let stable = pdb.iter().all(|r| r.work[wi].bytes == ob)
            && session.iter().all(|r| r.work[wi].bytes == sb);
        let equal = stable && ob == sb;
        sizes_equal &= equal;
        let mbps = ob as f64 / 1e6 / c;
        println!(
            "{:<16} {c:>10.3} {mbps:>8.1} {g:>11.3} {:>8.1} {ob:>11} {sb:>11} {:>6}   {}",
            w.label(&data),
            sb as f64 / 1e6 / g,
            if equal { "yes" } else { "NO" },
            verdict(mbps >= MIN_COMMIT_MBPS)
        );
    }
    println!("(commit = select pdb_commit(); sess gen = Session::changeset_strm into a Vec; MB = 10^6 bytes)");
    println!();

    for (wi, w) in WORKLOADS.iter().enumerate() {
        let ours = pdb[0].work[wi].changeset.as_deref().unwrap_or_default();
        let theirs = session[0].work[wi].changeset.as_deref().unwrap_or_default();
        same_changes(*w, &data, ours, theirs)?;
    }
    for rep in 0..opts.reps {
        let d = plain[rep].digest;
        if pdb[rep].digest != d || session[rep].digest != d {
            return Err(format!("rep {rep}: final items contents differ between variants").into());
        }
    }
    if plain[0].digest.0 != opts.rows - opts.rows / 2 {
        return Err(format!("items ends with {} rows", plain[0].digest.0).into());
    }
    println!(
        "check: ok (rep 1: pdb and session changesets decode to the same {} changes with SQLite's \
         changeset reader; final items identical in all variants and reps){}",
        WORKLOADS.iter().map(|w| w.changes(&data)).sum::<usize>(),
        if sizes_equal {
            ""
        } else {
            "; NOTE: changeset sizes differ"
        }
    );
    println!(
        "total {:.1} s, load average {} at end",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}
