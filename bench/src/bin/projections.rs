//! Projection benchmark: what projections cost a witness, measured on the real
//! `pdb-witness` over loopback HTTP, with plain SQLite as the reference where one
//! exists.
//!
//! - **Commit throughput, three projections vs none.** Two fresh witnesses, the same
//!   closed-loop load (16 clients on one group, one-row commits of a notes table),
//!   one with a search, an index and an aggregate on the group. Projections are
//!   built off the commit path, so the ratio should stay near 1 (target >= 0.9x).
//!   The builder shares the machine's cores, so its lag at the end of the window is
//!   printed too.
//! - **Lag from certificate to visible at 1,000 commits/s.** Commits are sent on a
//!   fixed schedule; after every fifth answer, a read of the aggregate with
//!   `min_seq=<its seq>` is sent at once, and the time from the commit's answer to the
//!   read's is the lag a read-your-writes client sees (targets p50 <= 20 ms, p99 <=
//!   100 ms).
//! - **Backfill of a 1M-row group into a search projection**, against plain SQLite
//!   building an FTS5 table from the same rows in one statement (`INSERT INTO fts
//!   SELECT ...`) in a file database with the same pragmas (target <= 1.5x). The
//!   first projection of a group also copies the group's tables into its mirror and
//!   checks their state digest; that time is printed apart, and the ratio is for a
//!   second search projection, which finds the mirror in place.
//! - **A search read over 1M rows**: p50 and p99 of reads for a word in about 1,000
//!   rows and for a word in one row (target p50 <= 5 ms).
//!
//! Run: `cargo build --release -p personaldb-witness && cargo run --release -p
//! pdb-bench --bin projections`. Environment: `PDB_BENCH_SECS` (throughput window,
//! default 8), `PDB_BENCH_LAG_SECS` (the 1,000 commits/s run, default 5),
//! `PDB_BENCH_ROWS` (rows of the backfill group, default 1,000,000), `PDB_BENCH_ROUNDS`
//! (throughput runs of each kind, alternating, default 3),
//! `PDB_BENCH_DIR` (temporary directories, default the system's), `PDB_WITNESS_BIN`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdb_bench::{
    clock_ticks, env_num, median, prebuilt_artifact, print_machine, remove_db, run, thread_ticks,
    verdict, Res,
};
use pdb_testkit::WitnessProc;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)";
const TOKENIZER: &str = "unicode61 remove_diacritics 2";
const WORDS: &[&str] = &[
    "milk", "eggs", "bread", "plan", "meeting", "tokyo", "garden", "invoice", "travel", "recipe",
    "music", "review", "budget", "school", "doctor", "train", "coffee", "letter", "window",
    "river",
];
const CLIENTS: usize = 16;

/// The text of note `id`: a unique word, a word shared by about 1,000 notes, and three
/// common words.
fn body(id: i64) -> String {
    let w = |k: i64| {
        WORDS[(id.wrapping_mul(2654435761).wrapping_add(k * 97) as usize >> 3) % WORDS.len()]
    };
    format!(
        "note n{id} about {} {} and {} tag{}",
        w(1),
        w(2),
        w(3),
        id % 1000
    )
}

/// The changeset of inserting notes `ids` (the session extension's format).
fn changeset(ids: impl Iterator<Item = i64>) -> Vec<u8> {
    let mut b = vec![b'T', 2, 1, 0];
    b.extend_from_slice(b"notes\0");
    for id in ids {
        b.extend_from_slice(&[18, 0, 1]);
        b.extend_from_slice(&id.to_be_bytes());
        let text = body(id);
        b.push(3);
        let mut n = text.len() as u64;
        let mut len = Vec::new();
        loop {
            // SQLite varint, big-endian 7-bit groups.
            len.insert(0, (n & 0x7f) as u8 | if len.is_empty() { 0 } else { 0x80 });
            n >>= 7;
            if n == 0 {
                break;
            }
        }
        b.extend_from_slice(&len);
        b.extend_from_slice(text.as_bytes());
    }
    b
}

/// Checks the hand-made changeset against what the session extension records.
fn check_changeset() -> Res<()> {
    let conn = rusqlite::Connection::open_in_memory()?;
    conn.execute_batch(DDL)?;
    let mut s = rusqlite::session::Session::new(&conn)?;
    s.attach(None::<&str>)?;
    // One row: the session extension orders several by its hash table, not by key.
    conn.execute(
        "INSERT INTO notes VALUES (?1, ?2)",
        rusqlite::params![300, body(300)],
    )?;
    let mut real = Vec::new();
    s.changeset_strm(&mut real)?;
    if real != changeset(std::iter::once(300)) {
        return Err("the benchmark's changesets differ from the session extension's".into());
    }
    Ok(())
}

struct Witness {
    /// The process (killed on drop).
    proc: WitnessProc,
    http: reqwest::Client,
    url: String,
}

impl Witness {
    fn start(bin: &Path, dir: &Path) -> Res<Witness> {
        let _ = std::fs::remove_dir_all(dir);
        let proc = WitnessProc::spawn(bin, dir, "127.0.0.1:0", &["--max-body", "67108864"], &[])?
            .removing_data();
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", proc.admin_token()?))?,
        );
        let http = reqwest::Client::builder()
            .default_headers(h)
            .pool_max_idle_per_host(64)
            .build()?;
        let url = proc.url.clone();
        Ok(Witness { proc, http, url })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Res<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Creates group `g`; its schema hash.
    async fn group(&self, g: &str) -> Res<String> {
        let (s, b) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/groups/{g}"),
                Some(json!({"ddl": DDL})),
            )
            .await?;
        if s != 201 {
            return Err(format!("creating {g}: {s} {b}").into());
        }
        Ok(b["schema_hash"].as_str().unwrap_or_default().to_string())
    }

    async fn commit(
        &self,
        g: &str,
        schema: &str,
        base: &str,
        key: &str,
        cs: Vec<u8>,
    ) -> Res<(u64, String)> {
        let resp = self
            .http
            .post(format!("{}/v1/groups/{g}/commits", self.url))
            .header("Pdb-Base", base)
            .header("Pdb-Schema", schema)
            .header("Idempotency-Key", key)
            .header(CONTENT_TYPE, "application/vnd.sqlite.changeset")
            .body(cs)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let b: Value = serde_json::from_str(&resp.text().await?).unwrap_or(Value::Null);
        if status != 201 {
            return Err(format!("commit {key}: {status} {b}").into());
        }
        Ok((
            b["seq"].as_u64().unwrap_or(0),
            b["head"].as_str().unwrap_or_default().to_string(),
        ))
    }

    async fn define(&self, g: &str, name: &str, spec: Value) -> Res<()> {
        let (s, b) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/groups/{g}/projections/{name}"),
                Some(spec),
            )
            .await?;
        if s != 201 {
            return Err(format!("defining {name}: {s} {b}").into());
        }
        Ok(())
    }

    async fn status(&self, g: &str, name: &str) -> Res<Value> {
        let (_, b) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/groups/{g}/projections/{name}/status"),
                None,
            )
            .await?;
        Ok(b)
    }

    /// Waits until `name` is ready; how long that took.
    async fn ready(&self, g: &str, name: &str) -> Res<Duration> {
        let t = Instant::now();
        loop {
            let s = self.status(g, name).await?;
            match s["state"].as_str() {
                Some("ready") => return Ok(t.elapsed()),
                Some("failed") => return Err(format!("{name} failed: {s}").into()),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

fn genesis_base(g: &str) -> String {
    format!("0:{}", pdb_client::cert::hex(&pdb_client::cert::genesis(g)))
}

fn three_projections() -> Vec<(&'static str, Value)> {
    vec![
        (
            "search",
            json!({"kind": "search", "table": "notes", "columns": ["body"], "tokenizer": TOKENIZER}),
        ),
        (
            "by_tag",
            json!({"kind": "index", "table": "notes", "key": {"tag": "id % 1000"}, "columns": ["id"]}),
        ),
        (
            "counts",
            json!({"kind": "aggregate", "table": "notes", "group_by": {"b": "id % 16"},
                          "measures": {"n": "count(*)", "total": "sum(id)", "top": "max(id)"}}),
        ),
    ]
}

/// Closed-loop commits by `CLIENTS` clients for `secs`; commits per second.
async fn throughput(w: &Arc<Witness>, g: &str, schema: &str, secs: f64) -> Res<f64> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (w, g, schema) = (w.clone(), g.to_string(), schema.to_string());
        tasks.push(tokio::spawn(async move {
            let mut base = genesis_base(&g);
            let mut n = 0u64;
            let mut id = 1_000_000_000 * (c as i64 + 1);
            while Instant::now() < end {
                id += 1;
                let (seq, head) = w
                    .commit(
                        &g,
                        &schema,
                        &base,
                        &format!("c{c}-{id}"),
                        changeset(std::iter::once(id)),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                base = format!("{seq}:{head}");
                n += 1;
            }
            Ok::<u64, String>(n)
        }));
    }
    let t = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await?.map_err(|e| e.to_string())?;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// The witness's CPU over a window, in cores, by kind of thread.
fn cpu_split(
    before: &std::collections::HashMap<String, (String, u64)>,
    after: &std::collections::HashMap<String, (String, u64)>,
    secs: f64,
) -> String {
    let mut by = [0u64; 4];
    for (tid, (comm, t)) in after {
        let was = before.get(tid).map_or(0, |(_, b)| *b);
        let class = if comm.starts_with("pdb-proj-") {
            0
        } else if comm.starts_with("pdb-group-") {
            1
        } else if comm == "pdb-log-writer" {
            2
        } else {
            3
        };
        by[class] += t.saturating_sub(was);
    }
    let c = |t: u64| t as f64 / clock_ticks() / secs;
    format!(
        "builders {:.2}, sequencers {:.2}, history writer {:.2}, http and other {:.2}",
        c(by[0]),
        c(by[1]),
        c(by[2]),
        c(by[3])
    )
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Commits at `rate` per second for `secs`; every fifth is followed by a read at its
/// seq. The read latencies, ms.
async fn lag(
    w: &Arc<Witness>,
    g: &str,
    schema: &str,
    rate: f64,
    secs: f64,
) -> Res<(Vec<f64>, f64)> {
    let n = (rate * secs) as u64;
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Option<f64>, String>>();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    // Enough connections that the schedule, not one answer at a time, sets the rate.
    for c in 0..8u64 {
        let (w, g, schema, tx, next) = (
            w.clone(),
            g.to_string(),
            schema.to_string(),
            tx.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut base = genesis_base(&g);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let id = 5_000_000_000 + i as i64;
                let (seq, head) = match w
                    .commit(
                        &g,
                        &schema,
                        &base,
                        &format!("l{c}-{i}"),
                        changeset(std::iter::once(id)),
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                base = format!("{seq}:{head}");
                if i % 5 != 0 {
                    continue;
                }
                let answered = Instant::now();
                let (w, g, tx) = (w.clone(), g.clone(), tx.clone());
                tokio::spawn(async move {
                    let r = w
                        .call(
                            reqwest::Method::GET,
                            &format!(
                                "/v1/groups/{g}/projections/counts?min_seq={seq}&wait=5&limit=1"
                            ),
                            None,
                        )
                        .await;
                    let _ = tx.send(match r {
                        Ok((200, _)) => Ok(Some(answered.elapsed().as_secs_f64() * 1e3)),
                        Ok((s, b)) => Err(format!("read at {seq}: {s} {b}")),
                        Err(e) => Err(e.to_string()),
                    });
                });
            }
        }));
    }
    drop(tx);
    for wk in workers {
        wk.await?;
    }
    let achieved = n as f64 / start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    while let Some(m) = rx.recv().await {
        if let Some(ms) = m? {
            lat.push(ms);
        }
    }
    Ok((lat, achieved))
}

/// Loads `rows` notes into group `g`, 20,000 per commit.
async fn load(w: &Witness, g: &str, schema: &str, rows: i64) -> Res<()> {
    let mut base = genesis_base(g);
    let mut id = 1;
    while id <= rows {
        let to = (id + 20_000).min(rows + 1);
        let (seq, head) = w
            .commit(g, schema, &base, &format!("load{id}"), changeset(id..to))
            .await?;
        base = format!("{seq}:{head}");
        id = to;
    }
    Ok(())
}

/// Plain SQLite: the same rows in a file database, then one statement that builds
/// the FTS5 table from them; the seconds of that statement.
fn reference_fts(dir: &Path, rows: i64) -> Res<f64> {
    let path = dir.join("reference.db");
    remove_db(&path);
    let conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -8192)?;
    conn.execute_batch(DDL)?;
    conn.execute_batch("BEGIN")?;
    {
        let mut ins = conn.prepare("INSERT INTO notes VALUES (?1, ?2)")?;
        for id in 1..=rows {
            ins.execute(rusqlite::params![id, body(id)])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    let t = Instant::now();
    conn.execute_batch(&format!(
        "BEGIN; CREATE VIRTUAL TABLE fts USING fts5(body, tokenize='{TOKENIZER}');\
         INSERT INTO fts(rowid, body) SELECT id, body FROM notes; COMMIT;"
    ))?;
    let secs = t.elapsed().as_secs_f64();
    drop(conn);
    remove_db(&path);
    Ok(secs)
}

async fn read_latencies(w: &Witness, g: &str, name: &str, words: &[String]) -> Res<Vec<f64>> {
    let mut v = Vec::new();
    for q in words {
        let t = Instant::now();
        let (s, b) = w
            .call(
                reqwest::Method::GET,
                &format!("/v1/groups/{g}/projections/{name}?q={q}&limit=20"),
                None,
            )
            .await?;
        if s != 200 || !b["rows"].as_array().is_some_and(|r| !r.is_empty()) {
            return Err(format!("search {q}: {s} {b}").into());
        }
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(v)
}

fn main() {
    run(|| {
        print_machine();
        check_changeset()?;
        let secs: f64 = env_num("PDB_BENCH_SECS", 8.0)?;
        let rows: i64 = env_num("PDB_BENCH_ROWS", 1_000_000)?;
        let lag_secs: f64 = env_num("PDB_BENCH_LAG_SECS", 5.0)?;
        let rounds: usize = env_num("PDB_BENCH_ROUNDS", 3)?;
        let dir = std::env::var("PDB_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let dir = dir.join(format!("pdb-bench-proj-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let bin = prebuilt_artifact("PDB_WITNESS_BIN", "personaldb-witness", "pdb-witness")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let out = rt.block_on(async {
            // 1. Throughput with and without projections, alternating, medians: runs of
            // the same load vary by a third on this machine.
            let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
            for with in (0..rounds).flat_map(|_| [false, true]) {
                let w = Arc::new(Witness::start(&bin, &dir.join(format!("tp-{with}")))?);
                let schema = w.group("g").await?;
                if with {
                    for (name, spec) in three_projections() {
                        w.define("g", name, spec).await?;
                    }
                    for (name, _) in three_projections() {
                        w.ready("g", name).await?;
                    }
                }
                let before = thread_ticks(w.proc.pid());
                let rate = throughput(&w, "g", &schema, secs).await?;
                let cpu = cpu_split(&before, &thread_ticks(w.proc.pid()), secs);
                let mut lag_end = String::new();
                if with {
                    let s = w.status("g", "search").await?;
                    let t = Instant::now();
                    for (name, _) in three_projections() {
                        while w.status("g", name).await?["lag"].as_u64().unwrap_or(0) > 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    lag_end = format!(
                        " (builder {} commits behind at the end, caught up {:.2} s later)",
                        s["lag"],
                        t.elapsed().as_secs_f64()
                    );
                }
                println!(
                    "commit throughput, 16 clients, one group, {} projections: {rate:.0} commits/s{lag_end}; \
                     witness CPU (cores) {cpu}",
                    if with { 3 } else { 0 }
                );
                rates[usize::from(with)].push(rate);
                drop(w);
            }
            let ratio = median(rates[1].clone()) / median(rates[0].clone());
            println!(
                "  medians of {rounds} runs each: {:.0} commits/s without, {:.0} with",
                median(rates[0].clone()),
                median(rates[1].clone())
            );
            println!(
                "  ratio with 3 projections / none: {ratio:.2}x (target >= 0.90x): {}",
                verdict(ratio >= 0.9)
            );
            // 2. Lag at 1,000 commits/s.
            let w = Arc::new(Witness::start(&bin, &dir.join("lag"))?);
            let schema = w.group("g").await?;
            for (name, spec) in three_projections() {
                w.define("g", name, spec).await?;
                w.ready("g", name).await?;
            }
            let (lat, achieved) = lag(&w, "g", &schema, 1000.0, lag_secs).await?;
            let (p50, p99) = (pct(lat.clone(), 0.5), pct(lat.clone(), 0.99));
            println!(
                "lag from certificate to visible in a projection read, {achieved:.0} commits/s sent, {} reads: \
                 p50 {p50:.1} ms (target <= 20), p99 {p99:.1} ms (target <= 100): {}",
                lat.len(),
                verdict(p50 <= 20.0 && p99 <= 100.0)
            );
            drop(w);
            // 3. Backfill of a large group, and 4. search reads over it.
            let w = Witness::start(&bin, &dir.join("backfill"))?;
            let schema = w.group("big").await?;
            let t = Instant::now();
            load(&w, "big", &schema, rows).await?;
            println!("loaded {rows} rows into a group in {:.1} s (commits of 20,000 rows)", t.elapsed().as_secs_f64());
            let spec = json!({"kind": "search", "table": "notes", "columns": ["body"], "tokenizer": TOKENIZER});
            w.define("big", "first", spec.clone()).await?;
            let first = w.ready("big", "first").await?.as_secs_f64();
            w.define("big", "second", spec).await?;
            let second = w.ready("big", "second").await?.as_secs_f64();
            let reference = tokio::task::block_in_place(|| reference_fts(&dir, rows))?;
            let ratio = second / reference;
            println!(
                "search backfill of {rows} rows: {second:.2} s; plain SQLite INSERT INTO fts SELECT: {reference:.2} s; \
                 ratio {ratio:.2}x (target <= 1.5x): {}",
                verdict(ratio <= 1.5)
            );
            println!("  the group's first projection, which also copies and checks the mirror: {first:.2} s");
            let mb = |p: &Path| {
                ["", "-wal"].iter().map(|x| std::fs::metadata(format!("{}{x}", p.display())).map_or(0, |m| m.len())).sum::<u64>() as f64 / 1e6
            };
            let replica = mb(&w.proc.data.join("groups").join("big.db"));
            let files: Vec<PathBuf> = std::fs::read_dir(w.proc.data.join("projections").join("big"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "db"))
                .collect();
            let projection_file: f64 = files.iter().map(|p| mb(p)).sum();
            println!(
                "  disk: the group's replica {replica:.0} MB; its projection file (a mirror of the \
                 replica and two search projections) {projection_file:.0} MB"
            );
            let shared: Vec<String> = (0..200).map(|i| format!("tag{}", i * 7 % 1000)).collect();
            let unique: Vec<String> = (0..200).map(|i| format!("n{}", 1 + i * 4999 % rows)).collect();
            let a = read_latencies(&w, "big", "second", &shared).await?;
            let b = read_latencies(&w, "big", "second", &unique).await?;
            println!(
                "search read over {rows} rows, limit 20: a word in ~{} rows p50 {:.2} ms p99 {:.2} ms; \
                 a word in 1 row p50 {:.2} ms p99 {:.2} ms (target p50 <= 5 ms): {}",
                rows / 1000,
                median(a.clone()),
                pct(a.clone(), 0.99),
                median(b.clone()),
                pct(b.clone(), 0.99),
                verdict(median(a) <= 5.0 && median(b) <= 5.0)
            );
            Ok::<(), Box<dyn std::error::Error>>(())
        });
        let _ = std::fs::remove_dir_all(&dir);
        out
    });
}
