//! The convergence simulation (DESIGN §7, invariants 1, 2 and 4).
//!
//! Three or four devices, each its own SQLite file with the real `libpdb`, write at
//! random into two tables with a small key space (`tags` has a composite key and no
//! rowid), so that they collide often. They commit at random, go offline, sync in random
//! order and sometimes lose a sync to a crash, while the real `pdb-witness` is stopped or
//! killed and restarted on its data directory (on a new port, so the devices are
//! re-pointed with `pdb_open`). Conflict strategies are drawn per device and table.
//! Bare devices (no tables, nothing tracked) join mid-run, up to [`MAX_DEVICES`]:
//! `pdb_open` installs the newest snapshot if there is one, else their first sync
//! creates the group's tables and replays the history; then they take part like the
//! others.
//!
//! Half the seeds run the witness with retention (`--retain-snapshots 1` or `2`, no
//! policy snapshots, whose timing would race the checker) and take admin snapshots
//! (`POST …/snapshots`) now and then, each of which compacts the commits before the
//! oldest kept snapshot before it answers. Devices behind that point get `410
//! compacted` on their next sync and start again from the newest snapshot, their queued
//! commits and uncommitted edits rebased onto it; a device that goes offline with
//! changes pending is the usual way there. Some of the other seeds take admin
//! snapshots without compaction, so devices join from a snapshot while the whole
//! history is kept. Because compaction deletes commits, the checker reads every commit
//! it has not seen yet before each admin snapshot, and all checks use the history it
//! recorded that way (checked as one chain), never a re-read at the end.
//!
//! At the end every device commits and syncs until nothing moves, and then:
//!
//! 1. **Convergence**: every device's tables equal the witness's replica row for row, and
//!    `pdb_verify()` finds each device at its head's certified state.
//! 2. **No lost write**: every row change of every local commit is in the certified
//!    commit that carries its idempotency key, or in that device's `pdb_conflicts` with
//!    its commit id, or already done: a delete of a row that some certified commit
//!    deleted or that is gone at the end, or values that certified commits wrote into
//!    that row. Uncommitted edits are checked around every sync (a re-bootstrap
//!    included) the same way.
//! 4. **Exactly-once**: the recorded history has seqs 1..n and no idempotency key
//!    twice, compactions notwithstanding; every device holds exactly those certificates from its chain root
//!    (`pdb_local.root_seq` after a bootstrap, else seq 1) to the head, and
//!    `pdb_commits.local_id` names its own after the root.
//!
//! Every row a write changes gets a value no other write stores (`d<device>w<counter>`,
//! or the counter as a number), so that "already done" cannot excuse a lost write: a
//! change whose values the group's row already holds is a copy of that very write, a
//! delete, or the leftover of a merge (column-merge and custom mix both sides' values
//! and NULLs into the pending edit, which another merge may produce too).
//!
//! Each seed decides the whole run (splitmix64); idempotency keys and ports differ
//! between runs, but no decision depends on them, so a seed replays exactly.
//!
//! - Default (CI): seeds 0..200, `cargo test -p pdb-tests --test convergence`.
//! - Long run: `PDB_SIM_SEEDS=10000 cargo test -p pdb-tests --test convergence` runs
//!   seeds 0..10000 (`PDB_SIM_FIRST=n` starts at seed n instead of 0).
//! - One seed, printing every step:
//!   `PDB_SIM_SEED=1234 cargo test -p pdb-tests --test convergence -- --nocapture`.
//!   A failing seed prints exactly this command.
//! - `PDB_SIM_THREADS=n` runs n seeds at a time (default 2; each has its own witness).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use pdb_tests::device::Device;
use pdb_tests::witness::{changeset_of, WitnessClient, WitnessProc};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value as Json};

/// The group's tables, the same on every device and on the witness.
const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT, n INTEGER);
CREATE TABLE tags(note INTEGER NOT NULL, tag TEXT NOT NULL, weight REAL, PRIMARY KEY(note, tag)) WITHOUT ROWID;";
/// A tracked table, with SQL that spells a row's key and values as JSON arrays, the way
/// `pdb_changeset_rows` spells them.
struct Table {
    name: &'static str,
    key: &'static str,
    row: &'static str,
}

/// The tracked tables.
const TABLES: [Table; 2] = [
    Table {
        name: "notes",
        key: "json_array(id)",
        row: "json_array(id, title, body, n)",
    },
    Table {
        name: "tags",
        key: "json_array(note, tag)",
        row: "json_array(note, tag, weight)",
    },
];
/// Keys 1..=6 of `notes`: small, so that devices write the same rows.
const NOTE_IDS: usize = 6;
/// `tags` keys: notes 1..=3 times these tags.
const TAG_NOTES: usize = 3;
const TAG_NAMES: [&str; 3] = ["a", "b", "c"];
const STRATEGIES: [&str; 5] = [
    "remote-wins",
    "local-wins",
    "column-merge",
    "manual",
    "custom",
];
const GROUP: &str = "sim";
/// An address nothing listens on: where an offline device points.
const DEAD_URL: &str = "http://127.0.0.1:9";
/// Seeds of the default run.
const DEFAULT_SEEDS: u64 = 200;
/// A progress line after every this many seeds.
const PROGRESS_EVERY: usize = 500;
/// Random steps per seed (inclusive range).
const STEPS: (usize, usize) = (60, 120);
/// Devices per seed (inclusive range).
const DEVICES: (usize, usize) = (3, 4);
/// Devices at most, those that join included.
const MAX_DEVICES: usize = 5;
/// Per mille of steps where a bare device joins (while fewer than [`MAX_DEVICES`]).
const JOIN_PERMILLE: usize = 6;
/// Per mille of steps that take an admin snapshot, in seeds whose witness compacts.
const COMPACTING_SNAPSHOT_PERMILLE: usize = 50;
/// The same in the other seeds that take snapshots (half of them), without compaction.
const PLAIN_SNAPSHOT_PERMILLE: usize = 10;
/// Rounds of "everyone commits and syncs" allowed before the end counts as stuck.
const FINAL_ROUNDS: usize = 10;
/// Percent of syncs that snapshot the device first, to lose the sync to a crash.
const CRASH_PERCENT: u64 = 15;

/// splitmix64: a tiny seeded generator, so that a seed replays the same run anywhere.
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
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A row as `pdb_changeset_rows` and `pdb_conflicts` name it: table and key (JSON array,
/// normalized so that both spellings compare equal).
type RowRef = (String, String);

/// Normalizes a JSON key array.
fn norm(pk: &str) -> String {
    serde_json::from_str::<Json>(pk).map_or_else(|_| pk.to_string(), |v| v.to_string())
}

/// One row change of a changeset.
#[derive(Debug)]
struct Change {
    /// `INSERT`, `UPDATE` or `DELETE`.
    op: String,
    row: RowRef,
    /// The values it writes, by column; `None` for columns it leaves as they are (and
    /// every column of a delete).
    new: Vec<Option<Json>>,
}

impl Change {
    /// Whether `values` (a whole row) already holds every value this change writes.
    fn holds_in(&self, values: &[Json]) -> bool {
        self.op != "DELETE"
            && self
                .new
                .iter()
                .zip(values)
                .all(|(n, v)| n.as_ref().map_or(true, |n| n == v))
    }
}

/// The row changes of a changeset (NULL: none).
fn changeset_rows(conn: &Connection, blob: Option<&[u8]>) -> Vec<Change> {
    let mut stmt = conn
        .prepare("SELECT op, tbl, pk, new FROM pdb_changeset_rows(?1)")
        .expect("prepare pdb_changeset_rows");
    stmt.query_map([blob], |r| {
        let new: Option<String> = r.get(3)?;
        let new = new.map_or_else(Vec::new, |n| {
            let n: Vec<Json> = serde_json::from_str(&n).expect("new values are a JSON array");
            n.into_iter()
                .map(|v| (v != json!({"undefined": true})).then_some(v))
                .collect()
        });
        Ok(Change {
            op: r.get(0)?,
            row: (r.get(1)?, norm(&r.get::<_, String>(2)?)),
            new,
        })
    })
    .expect("pdb_changeset_rows")
    .collect::<Result<_, _>>()
    .expect("changeset rows")
}

/// A row's values, `None` when it is absent.
fn row_values(conn: &Connection, (table, pk): &RowRef) -> Option<Vec<Json>> {
    let t = TABLES
        .iter()
        .find(|t| t.name == table)
        .expect("a tracked table");
    let sql = format!("SELECT {} FROM {} WHERE {} = ?1", t.row, t.name, t.key);
    let row: Option<String> = conn
        .query_row(&sql, [pk], |r| r.get(0))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.map(|r| serde_json::from_str(&r).expect("a JSON row"))
}

/// The uncommitted edits of a device, as row changes.
fn uncommitted(conn: &Connection) -> Vec<Change> {
    let blob: Option<Vec<u8>> = conn
        .query_row("SELECT pdb_changeset()", [], |r| r.get(0))
        .expect("pdb_changeset");
    changeset_rows(conn, blob.as_deref())
}

/// The keys of the rows each table holds.
fn present(conn: &Connection) -> HashSet<RowRef> {
    let mut out = HashSet::new();
    for t in &TABLES {
        let mut stmt = conn
            .prepare(&format!("SELECT {} FROM {}", t.key, t.name))
            .unwrap();
        for pk in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            out.insert((t.name.to_string(), norm(&pk.unwrap())));
        }
    }
    out
}

/// A table's rows in readable form, for failure messages.
fn readable(conn: &Connection, table: &str) -> BTreeSet<String> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, Value>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    rows.map(|r| format!("{:?}", r.unwrap())).collect()
}

fn exists(conn: &Connection, sql: &str) -> bool {
    conn.query_row(&format!("SELECT EXISTS ({sql})"), [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The custom strategy `sim_merge(base, local, remote)`: per column the greater value
/// as JSON text (deterministic, and different from both sides now and then); when a
/// side deleted the row, the remote version.
fn register_merge(conn: &Connection) {
    conn.create_scalar_function(
        "sim_merge",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let arg = |i: usize| -> rusqlite::Result<Option<Json>> {
                Ok(ctx
                    .get::<Option<String>>(i)?
                    .map(|s| serde_json::from_str(&s).expect("sim_merge gets JSON")))
            };
            Ok(match (arg(1)?, arg(2)?) {
                (Some(Json::Object(local)), Some(Json::Object(mut remote))) => {
                    for (k, l) in local {
                        let greater = match remote.get(&k) {
                            Some(r) => {
                                let (l, r) = (l.to_string(), r.to_string());
                                l > r
                            }
                            None => true,
                        };
                        if greater {
                            remote.insert(k, l);
                        }
                    }
                    Some(Json::Object(remote).to_string())
                }
                (_, remote) => remote.map(|r| r.to_string()),
            })
        },
    )
    .expect("register sim_merge");
}

/// One random write statement on `conn`: insert, update, delete, replace, or move a
/// row to another key, in either table; every value it stores contains `tag` (or `w`).
fn random_write(rng: &mut Rng, conn: &Connection, tag: &str, w: u64) -> String {
    if rng.chance(55) {
        let id = 1 + rng.below(NOTE_IDS);
        if !exists(conn, &format!("SELECT 1 FROM notes WHERE id = {id}")) {
            let body = if rng.chance(50) {
                format!("'{tag}b'")
            } else {
                "NULL".into()
            };
            let n = if rng.chance(50) {
                w.to_string()
            } else {
                "NULL".into()
            };
            return format!("INSERT INTO notes VALUES ({id}, '{tag}', {body}, {n})");
        }
        match rng.below(100) {
            0..=54 => {
                let mut sets = Vec::new();
                while sets.is_empty() {
                    if rng.chance(50) {
                        sets.push(format!("title = '{tag}'"));
                    }
                    if rng.chance(40) {
                        sets.push(format!("body = '{tag}b'"));
                    }
                    if rng.chance(40) {
                        sets.push(format!("n = {w}"));
                    }
                }
                format!("UPDATE notes SET {} WHERE id = {id}", sets.join(", "))
            }
            55..=74 => format!("DELETE FROM notes WHERE id = {id}"),
            75..=84 => {
                format!("INSERT OR REPLACE INTO notes VALUES ({id}, '{tag}', '{tag}b', NULL)")
            }
            85..=94 => {
                let to = 1 + rng.below(NOTE_IDS);
                if exists(conn, &format!("SELECT 1 FROM notes WHERE id = {to}")) {
                    format!("UPDATE notes SET title = '{tag}' WHERE id = {id}")
                } else {
                    format!("UPDATE notes SET id = {to}, title = '{tag}' WHERE id = {id}")
                }
            }
            // Several rows at once, each keeping a value no other write stores there.
            _ => format!("UPDATE notes SET n = {w} WHERE id % 2 = {}", w % 2),
        }
    } else {
        let note = 1 + rng.below(TAG_NOTES);
        let name = TAG_NAMES[rng.below(TAG_NAMES.len())];
        let at = |name: &str| format!("SELECT 1 FROM tags WHERE note = {note} AND tag = '{name}'");
        if !exists(conn, &at(name)) {
            return format!("INSERT INTO tags VALUES ({note}, '{name}', {w}.5)");
        }
        match rng.below(100) {
            0..=59 => {
                format!("UPDATE tags SET weight = {w}.5 WHERE note = {note} AND tag = '{name}'")
            }
            60..=79 => format!("DELETE FROM tags WHERE note = {note} AND tag = '{name}'"),
            80..=89 => {
                let to = TAG_NAMES[rng.below(TAG_NAMES.len())];
                if exists(conn, &at(to)) {
                    format!("UPDATE tags SET weight = {w}.5 WHERE note = {note} AND tag = '{name}'")
                } else {
                    format!(
                        "UPDATE tags SET tag = '{to}', weight = {w}.5 WHERE note = {note} AND tag = '{name}'"
                    )
                }
            }
            _ => format!("DELETE FROM tags WHERE note = {note}"),
        }
    }
}

/// A local commit as recorded when `pdb_commit()` made it.
struct Recorded {
    device: usize,
    id: i64,
    key: String,
    rows: Vec<Change>,
}

/// One simulated device.
struct Dev {
    dev: Device,
    /// Pointed at the witness; false while pointed at [`DEAD_URL`].
    online: bool,
    /// Holds the group's tables (a device that joined bare has none until a snapshot
    /// or its first sync brings them).
    ready: bool,
}

/// What the runs exercised, summed over seeds and printed at the end.
#[derive(Debug, Default)]
struct Stats {
    commits: u64,
    certified: u64,
    conflicts: u64,
    syncs: u64,
    unreachable_syncs: u64,
    stops: u64,
    kills: u64,
    device_crashes: u64,
    /// Seeds whose witness compacted (ran with `--retain-snapshots`).
    compacting_seeds: u64,
    /// Admin snapshots made (at a new seq).
    snapshots: u64,
    /// Admin snapshots that moved the compaction point.
    compactions: u64,
    /// Devices that joined bare mid-run.
    joins: u64,
    /// Of those, the ones `pdb_open` started from a snapshot.
    joins_from_snapshot: u64,
    /// Syncs whose summary has `bootstrapped` (after a `410 compacted`, or a device with
    /// nothing yet).
    rebootstraps: u64,
    /// Of those, the ones with queued commits to rebase.
    rebootstraps_queued: u64,
    /// Of those, the ones with uncommitted edits to rebase.
    rebootstraps_uncommitted: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.commits += o.commits;
        self.certified += o.certified;
        self.conflicts += o.conflicts;
        self.syncs += o.syncs;
        self.unreachable_syncs += o.unreachable_syncs;
        self.stops += o.stops;
        self.kills += o.kills;
        self.device_crashes += o.device_crashes;
        self.compacting_seeds += o.compacting_seeds;
        self.snapshots += o.snapshots;
        self.compactions += o.compactions;
        self.joins += o.joins;
        self.joins_from_snapshot += o.joins_from_snapshot;
        self.rebootstraps += o.rebootstraps;
        self.rebootstraps_queued += o.rebootstraps_queued;
        self.rebootstraps_uncommitted += o.rebootstraps_uncommitted;
    }
}

/// The extra `pdb-witness serve` arguments of a seed: with retention, only admin
/// snapshots (policy ones are made in the background and would race the checker).
fn witness_args(retain: Option<usize>) -> Vec<String> {
    match retain {
        Some(r) => [
            "--snapshot-commits",
            "0",
            "--snapshot-bytes",
            "0",
            "--retain-snapshots",
            &r.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        None => Vec::new(),
    }
}

/// Starts `pdb-witness serve` on `data` with a seed's arguments.
fn start_witness_proc(data: &Path, retain: Option<usize>) -> WitnessProc {
    let args = witness_args(retain);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    WitnessProc::start_with(data, &args, &[])
}

/// One seed's run.
struct Sim {
    seed: u64,
    rng: Rng,
    dir: PathBuf,
    data: PathBuf,
    token: String,
    key: [u8; 32],
    /// `None` while the witness is down.
    witness: Option<WitnessProc>,
    /// Steps until a downed witness starts again.
    down_for: usize,
    /// Where the witness listens (or last listened).
    url: String,
    devices: Vec<Dev>,
    commits: Vec<Recorded>,
    /// `--retain-snapshots` of this seed's witness; `None`: no retention, no compaction.
    retain: Option<usize>,
    /// Per mille of steps that take an admin snapshot.
    snapshot_permille: usize,
    /// Every commit certified so far, in order, as the checker read them (before each
    /// admin snapshot, and at the end).
    history: Vec<Json>,
    /// The seqs of the admin snapshots made, ascending.
    snapshot_seqs: Vec<u64>,
    /// The first seq the witness still keeps (1 until a compaction).
    first_kept: u64,
    /// Each compaction as (the head when it happened, the first seq kept after it).
    compacted: Vec<(u64, u64)>,
    /// Violations found along the way (reported with the final checks).
    bad: Vec<String>,
    /// Counter that makes every written value unique.
    writes: u64,
    trace: bool,
    step: usize,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, dir: &Path, trace: bool) -> Sim {
        let mut rng = Rng(seed);
        let data = dir.join("witness");
        // Retention 1 compacts at every snapshot; 2 keeps one snapshot more to pull from.
        let retain = rng.chance(50).then(|| if rng.chance(65) { 1 } else { 2 });
        let snapshot_permille = match retain {
            Some(_) => COMPACTING_SNAPSHOT_PERMILLE,
            None if rng.chance(50) => PLAIN_SNAPSHOT_PERMILLE,
            None => 0,
        };
        let w = start_witness_proc(&data, retain);
        let created = w.admin_client().create_group(GROUP, DDL);
        assert_eq!(created.status, 201, "{:?}", created.body);
        let token = w.token("sim", GROUP, "write", 7 * 24 * 3600);
        let n = rng.between(DEVICES.0, DEVICES.1);
        let tables: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        let mut devices = Vec::new();
        for i in 0..n {
            let dev = Device::new(
                dir,
                &format!("d{i}"),
                DDL,
                &tables,
                &w.url,
                GROUP,
                &token,
                &w.key,
            );
            register_merge(&dev.conn);
            devices.push(Dev {
                dev,
                online: true,
                ready: true,
            });
        }
        let mut sim = Sim {
            seed,
            rng,
            dir: dir.to_path_buf(),
            data,
            token,
            key: w.key,
            url: w.url.clone(),
            witness: Some(w),
            down_for: 0,
            devices,
            commits: Vec::new(),
            retain,
            snapshot_permille,
            history: Vec::new(),
            snapshot_seqs: Vec::new(),
            first_kept: 1,
            compacted: Vec::new(),
            bad: Vec::new(),
            writes: 0,
            trace,
            step: 0,
            stats: Stats {
                compacting_seeds: u64::from(retain.is_some()),
                ..Stats::default()
            },
        };
        sim.log(&format!(
            "{n} devices; witness retains {retain:?} snapshots; admin snapshots at {snapshot_permille} per mille of steps"
        ));
        for d in 0..n {
            for _ in 0..2 {
                if sim.rng.chance(60) {
                    sim.set_strategy(d);
                }
            }
        }
        sim
    }

    fn log(&self, what: &str) {
        if self.trace {
            println!("seed {} step {}: {what}", self.seed, self.step);
        }
    }

    fn conn(&self, d: usize) -> &Connection {
        &self.devices[d].dev.conn
    }

    /// The random steps, then the final syncs and the checks; returns the violations.
    fn run(&mut self) -> Vec<String> {
        let steps = self.rng.between(STEPS.0, STEPS.1);
        for step in 0..steps {
            self.step = step;
            if self.witness.is_none() {
                if self.down_for == 0 {
                    self.start_witness();
                } else {
                    self.down_for -= 1;
                }
            }
            if self.rng.below(1000) < self.snapshot_permille {
                self.admin_snapshot();
                continue;
            }
            let d = self.rng.below(self.devices.len());
            let join = 1000 - JOIN_PERMILLE;
            match self.rng.below(1000) {
                0..=409 => self.write(d),
                410..=589 => self.commit(d),
                590..=829 => {
                    self.sync(d, true);
                }
                830..=879 => self.toggle(d),
                880..=909 => self.set_strategy(d),
                910..=949 => self.resolve(d),
                r if r < join => self.restart_witness(),
                _ => self.join(),
            }
        }
        self.step = steps;
        self.finish()
    }

    /// One application transaction of one to three writes, rolled back now and then.
    fn write(&mut self, d: usize) {
        if !self.devices[d].ready {
            return;
        }
        let conn = &self.devices[d].dev.conn;
        conn.execute_batch("BEGIN").unwrap();
        let mut done = Vec::new();
        for _ in 0..self.rng.between(1, 3) {
            self.writes += 1;
            let tag = format!("d{d}w{}", self.writes);
            let sql = random_write(&mut self.rng, conn, &tag, self.writes);
            conn.execute_batch(&sql)
                .unwrap_or_else(|e| panic!("d{d}: {sql}: {e}"));
            done.push(sql);
        }
        let end = if self.rng.chance(5) {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        conn.execute_batch(end).unwrap();
        self.log(&format!("d{d} write: {}; {end}", done.join("; ")));
    }

    /// `pdb_commit()`, recording the commit's rows and key.
    fn commit(&mut self, d: usize) {
        if !self.devices[d].ready {
            return;
        }
        let dev = &self.devices[d].dev;
        let Some(id) = dev.commit() else { return };
        let (key, blob): (String, Vec<u8>) = dev
            .conn
            .query_row(
                "SELECT idempotency_key, changeset FROM pdb_upload_queue WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the new commit is queued");
        let rows = changeset_rows(&dev.conn, Some(&blob));
        self.stats.commits += 1;
        self.log(&format!("d{d} commit {id}: {rows:?}"));
        self.commits.push(Recorded {
            device: d,
            id,
            key,
            rows,
        });
    }

    /// `pdb_sync()` on device `d`; returns commits pushed plus pulled. It must fail when
    /// the device or the witness is down and succeed otherwise. With `may_crash`, the
    /// device may lose the sync to a crash (see [`Sim::crash_after`]).
    fn sync(&mut self, d: usize, may_crash: bool) -> u64 {
        let (seed, step) = (self.seed, self.step);
        if !self.devices[d].online || self.witness.is_none() {
            let r = self.devices[d].dev.try_json("SELECT pdb_sync()");
            self.log(&format!("d{d} sync while unreachable: {r:?}"));
            let err = r.expect_err("a sync with no witness to reach succeeded");
            self.stats.unreachable_syncs += 1;
            if !self.devices[d].online {
                assert!(err.contains("unreachable"), "d{d}: {err}");
            }
            return 0;
        }
        let ready = self.devices[d].ready;
        let snapshot =
            (ready && may_crash && self.rng.chance(CRASH_PERCENT)).then(|| self.snapshot(d));
        let conn = self.conn(d);
        let (before, last_conflict, queued) = if ready {
            let last_conflict: i64 = conn
                .query_row("SELECT coalesce(max(id), 0) FROM pdb_conflicts", [], |r| {
                    r.get(0)
                })
                .unwrap();
            let queued: i64 = conn
                .query_row(
                    "SELECT count(*) FROM pdb_upload_queue WHERE dead IS NULL",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            (uncommitted(conn), last_conflict, queued)
        } else {
            (Vec::new(), 0, 0)
        };
        let s = self.devices[d]
            .dev
            .try_json("SELECT pdb_sync()")
            .unwrap_or_else(|e| {
                panic!("seed {seed} step {step}: d{d}: pdb_sync failed with the witness up: {e}")
            });
        self.log(&format!("d{d} sync: {s}"));
        self.stats.syncs += 1;
        if s.get("bootstrapped").is_some() {
            self.stats.rebootstraps += 1;
            self.stats.rebootstraps_queued += u64::from(queued > 0);
            self.stats.rebootstraps_uncommitted += u64::from(!before.is_empty());
            self.log(&format!(
                "d{d} bootstrapped with {queued} queued commits and {} uncommitted row changes pending",
                before.len()
            ));
        }
        assert_eq!(s["dead"], 0, "d{d}: the witness refused a commit: {s}");
        let moved = s["pushed"].as_u64().unwrap() + s["pulled"].as_u64().unwrap();
        if !ready {
            self.became_ready(d);
            if !self.devices[d].ready {
                self.bad.push(format!(
                    "step {step}: d{d} synced ({s}) but holds none of the group's tables"
                ));
                return moved;
            }
        }
        if let Some(snapshot) = snapshot {
            if self.crash_after(d, &snapshot, &s) {
                return moved;
            }
        }
        // Every uncommitted edit is still pending, or recorded as a conflict, or was a
        // delete of a row that is gone anyway.
        let conn = self.conn(d);
        let after: HashSet<RowRef> = uncommitted(conn).into_iter().map(|c| c.row).collect();
        let mut stmt = conn
            .prepare("SELECT table_name, pk FROM pdb_conflicts WHERE id > ?1 AND local_id IS NULL")
            .unwrap();
        let recorded: HashSet<RowRef> = stmt
            .query_map([last_conflict], |r| {
                Ok((r.get(0)?, norm(&r.get::<_, String>(1)?)))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for c in before {
            // Or the change already holds: a merge can leave an edit whose values (a
            // NULL, another side's value) the group's row already has.
            let holds = match row_values(conn, &c.row) {
                None => c.op == "DELETE",
                Some(values) => c.holds_in(&values),
            };
            assert!(
                after.contains(&c.row) || recorded.contains(&c.row) || holds,
                "invariant 2: d{d}'s uncommitted {c:?} vanished in sync {s} \
                 (neither pending, nor in pdb_conflicts, nor in the row)"
            );
        }
        moved
    }

    /// Copies device `d`'s database before a sync that may be lost to a crash.
    fn snapshot(&self, d: usize) -> (PathBuf, Option<(i64, String)>) {
        let path = self.dir.join(format!("d{d}-snapshot.db"));
        self.devices[d].dev.copy_to(&path);
        let first = self
            .conn(d)
            .query_row(
                "SELECT id, hash FROM pdb_upload_queue WHERE dead IS NULL AND pushed_seq IS NULL \
                 ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        (path, first)
    }

    /// Puts device `d` back to its snapshot from before the sync `s`, as if it had
    /// crashed right after the witness certified its first queued commit and before it
    /// wrote anything down: the retry must get the same certificate, never a second
    /// commit. That is only a crash that can happen if the sync's one push was that
    /// commit, unchanged (the device commits its rebases before pushing them); otherwise
    /// nothing is restored. Returns whether the device was restored.
    fn crash_after(
        &mut self,
        d: usize,
        snapshot: &(PathBuf, Option<(i64, String)>),
        s: &Json,
    ) -> bool {
        let (path, first) = snapshot;
        let certified_as_sent = first.as_ref().is_some_and(|(id, hash)| {
            s["pushed"] == 1
                && self
                    .conn(d)
                    .query_row(
                        "SELECT changeset_hash FROM pdb_commits WHERE local_id = ?1",
                        [id],
                        |r| r.get::<_, String>(0),
                    )
                    .is_ok_and(|h| &h == hash)
        });
        if !certified_as_sent {
            std::fs::remove_file(path).unwrap();
            return false;
        }
        let dev = &mut self.devices[d].dev;
        dev.crash_back_to(path);
        register_merge(&dev.conn);
        self.stats.device_crashes += 1;
        self.log(&format!(
            "d{d} crashed before recording its push of commit {:?}: restored",
            first.as_ref().map(|f| f.0)
        ));
        true
    }

    /// Points device `d` at `url` with `pdb_open`.
    fn point(&self, d: usize, url: &str) {
        let _: String = self
            .conn(d)
            .query_row(
                "SELECT pdb_open(?1, ?2, ?3, ?4)",
                (url, GROUP, &self.token, pdb_client::cert::hex(&self.key)),
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("d{d}: pdb_open({url}): {e}"));
    }

    /// Takes device `d` offline (pointed at a dead address) or back online.
    fn toggle(&mut self, d: usize) {
        let online = !self.devices[d].online;
        let url = if online {
            self.url.clone()
        } else {
            DEAD_URL.into()
        };
        self.point(d, &url);
        self.devices[d].online = online;
        self.log(&format!(
            "d{d} {}",
            if online { "online" } else { "offline" }
        ));
    }

    /// Stops (SIGTERM) or kills the witness; it starts again now or a few steps later.
    fn restart_witness(&mut self) {
        let Some(mut w) = self.witness.take() else {
            return;
        };
        let graceful = self.rng.chance(50);
        if graceful {
            let status = w.stop();
            // A witness stopped right after it started may die of the signal: product bug,
            // reproduced by `a_witness_stopped_right_after_start_exits_cleanly`.
            assert!(
                status.success(),
                "pdb-witness asked to stop (SIGTERM) did not shut down gracefully: {status}"
            );
            self.stats.stops += 1;
        } else {
            w.kill();
            self.stats.kills += 1;
        }
        drop(w);
        self.down_for = if self.rng.chance(50) {
            0
        } else {
            self.rng.between(1, 6)
        };
        self.log(&format!(
            "witness {} for {} steps",
            if graceful { "stopped" } else { "killed" },
            self.down_for
        ));
        if self.down_for == 0 {
            self.start_witness();
        }
    }

    /// Starts the witness on its data directory and re-points the online devices.
    fn start_witness(&mut self) {
        let w = start_witness_proc(&self.data, self.retain);
        assert_eq!(w.key, self.key, "the witness kept its signing key");
        self.url = w.url.clone();
        self.witness = Some(w);
        for d in 0..self.devices.len() {
            if self.devices[d].online {
                self.point(d, &self.url);
            }
        }
        self.log(&format!("witness started at {}", self.url));
    }

    /// Marks device `d` ready once it holds the group's tables (a snapshot or its first
    /// sync brought them), and draws its strategies as the first devices had theirs.
    fn became_ready(&mut self, d: usize) {
        if !exists(
            self.conn(d),
            "SELECT 1 WHERE (SELECT count(*) FROM sqlite_schema \
             WHERE type = 'table' AND name IN ('notes', 'tags')) = 2",
        ) {
            return;
        }
        self.devices[d].ready = true;
        self.log(&format!("d{d} holds the group's tables"));
        for _ in 0..2 {
            if self.rng.chance(60) {
                self.set_strategy(d);
            }
        }
    }

    /// A bare device joins: no tables, nothing tracked, only `pdb_open`, which installs
    /// the newest snapshot if there is one (its first sync does the rest).
    fn join(&mut self) {
        let d = self.devices.len();
        if d >= MAX_DEVICES {
            return;
        }
        let dev = Device::new(
            &self.dir,
            &format!("d{d}"),
            "",
            &[],
            &self.url,
            GROUP,
            &self.token,
            &self.key,
        );
        register_merge(&dev.conn);
        let root = dev.rows("SELECT value FROM pdb_local WHERE key = 'root_seq'");
        self.devices.push(Dev {
            dev,
            online: true,
            ready: false,
        });
        self.stats.joins += 1;
        if !root.is_empty() {
            self.stats.joins_from_snapshot += 1;
        }
        self.log(&format!(
            "d{d} joins bare; pdb_open installed the snapshot at {root:?}"
        ));
        self.became_ready(d);
        // With the witness up and a snapshot ahead of genesis, pdb_open starts from it.
        let snapshot = self.snapshot_seqs.last().is_some_and(|&s| s > 0);
        if self.witness.is_some() && snapshot && !self.devices[d].ready {
            self.bad.push(format!(
                "d{d} joined with snapshots at {:?} but pdb_open installed none: {}",
                self.snapshot_seqs,
                self.devices[d].dev.status()
            ));
        }
    }

    /// Reads every certified commit the checker has not seen yet and appends it to the
    /// recorded history, checking that it continues the chain.
    fn record_history(&mut self) {
        let client = self
            .witness
            .as_ref()
            .expect("the witness runs")
            .admin_client();
        loop {
            let (after, prev) = self.history.last().map_or((0, None), |c| {
                (
                    c["seq"].as_u64().unwrap(),
                    c["head"].as_str().map(str::to_string),
                )
            });
            let r = client.pull(GROUP, after, 1000);
            if r.status != 200 {
                self.bad.push(format!(
                    "step {}: the commits after seq {after}, which the checker has not read yet, are gone: {} {}",
                    self.step, r.status, r.body
                ));
                return;
            }
            let page = r.body["commits"].as_array().expect("commits").clone();
            if page.is_empty() {
                return;
            }
            let mut prev = prev;
            for (i, c) in page.into_iter().enumerate() {
                let seq = c["seq"].as_u64().unwrap();
                let want = after + 1 + i as u64;
                let follows = match &prev {
                    Some(p) => c["prev"].as_str() == Some(p),
                    None => true,
                };
                if seq != want || !follows {
                    self.bad.push(format!(
                        "invariant 3: the witness served commit {seq} where seq {want} following head {prev:?} belongs: {c}"
                    ));
                }
                prev = c["head"].as_str().map(str::to_string);
                self.history.push(c);
            }
        }
    }

    /// `POST /v1/groups/g/snapshots` as an admin, after reading the history it may
    /// compact; then checks where the witness's history starts now.
    fn admin_snapshot(&mut self) {
        if self.witness.is_none() {
            return;
        }
        self.record_history();
        let head = self
            .history
            .last()
            .map_or(0, |c| c["seq"].as_u64().unwrap());
        if self.snapshot_seqs.last() == Some(&head) {
            // The witness would hand back the snapshot it has (checked by its own tests).
            self.log(&format!(
                "no admin snapshot: the last one is at the head {head}"
            ));
            return;
        }
        let client = self.witness.as_ref().unwrap().admin_client();
        let r = client.snapshot_make(GROUP);
        self.log(&format!("admin snapshot: {} {}", r.status, r.body));
        if r.status != 201 {
            self.bad.push(format!(
                "step {}: the admin snapshot at head {head} failed: {} {}",
                self.step, r.status, r.body
            ));
            return;
        }
        let seq = r.body["seq"].as_u64().expect("a manifest's seq");
        if seq != head {
            self.bad.push(format!(
                "step {}: the admin snapshot is at seq {seq}, not at the head {head}",
                self.step
            ));
        }
        if self.snapshot_seqs.last() != Some(&seq) {
            self.snapshot_seqs.push(seq);
            self.stats.snapshots += 1;
        }
        // Retention keeps the newest `retain` snapshots and the commits from the oldest
        // of them on.
        let expected = match self.retain {
            Some(k) if self.snapshot_seqs.len() >= k => {
                self.snapshot_seqs[self.snapshot_seqs.len() - k].max(1)
            }
            _ => 1,
        };
        let probe = client.pull(GROUP, 0, 1);
        let first = match (probe.status, probe.code()) {
            (410, Some("compacted")) => probe.body["oldest_seq"].as_u64().unwrap_or(0) + 1,
            // The first commit kept, or none yet.
            (200, _) => probe.body["commits"][0]["seq"].as_u64().unwrap_or(1),
            _ => {
                self.bad.push(format!(
                    "step {}: a pull after 0 answered {} {}",
                    self.step, probe.status, probe.body
                ));
                return;
            }
        };
        if first != expected {
            self.bad.push(format!(
                "step {}: after snapshots at {:?} with retention {:?}, the witness's history starts at seq {first}, not {expected}",
                self.step, self.snapshot_seqs, self.retain
            ));
        }
        if first > self.first_kept {
            self.stats.compactions += 1;
            self.compacted.push((head, first));
            self.log(&format!("compacted: the history starts at seq {first}"));
        }
        self.first_kept = first;
    }

    /// Draws a new strategy for one table of device `d`.
    fn set_strategy(&mut self, d: usize) {
        if !self.devices[d].ready {
            return;
        }
        let table = TABLES[self.rng.below(TABLES.len())].name;
        let strategy = STRATEGIES[self.rng.below(STRATEGIES.len())];
        let function = (strategy == "custom").then_some("sim_merge");
        let set: String = self
            .conn(d)
            .query_row(
                "SELECT CASE WHEN ?3 IS NULL THEN pdb_set_strategy(?1, ?2) \
                 ELSE pdb_set_strategy(?1, ?2, ?3) END",
                (table, strategy, function),
                |r| r.get(0),
            )
            .expect("pdb_set_strategy");
        assert_eq!(set, table);
        self.log(&format!("d{d} strategy {table} {strategy}"));
    }

    /// Settles one open conflict of device `d`: local, remote, or a new row.
    fn resolve(&mut self, d: usize) {
        if !self.devices[d].ready {
            return;
        }
        let conn = &self.devices[d].dev.conn;
        let mut stmt = conn
            .prepare(
                "SELECT id, table_name, pk FROM pdb_conflicts WHERE status = 'open' ORDER BY id",
            )
            .unwrap();
        let open: Vec<(i64, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        drop(stmt);
        if open.is_empty() {
            return;
        }
        let (id, table, pk) = &open[self.rng.below(open.len())];
        let pk: Json = serde_json::from_str(pk).unwrap();
        let choice = match self.rng.below(100) {
            0..=39 => "local".to_string(),
            40..=69 => "remote".to_string(),
            _ => {
                self.writes += 1;
                let w = self.writes;
                if table == "notes" {
                    json!({"id": pk[0], "title": format!("d{d}w{w}")}).to_string()
                } else {
                    json!({"note": pk[0], "tag": pk[1], "weight": w as f64 + 0.5}).to_string()
                }
            }
        };
        let kept: String = conn
            .query_row("SELECT pdb_resolve(?1, ?2)", (id, &choice), |r| r.get(0))
            .unwrap_or_else(|e| panic!("d{d}: pdb_resolve({id}, {choice}): {e}"));
        self.log(&format!("d{d} resolve {id} {choice}: {kept}"));
    }

    /// Everyone back online, committing and syncing until nothing moves; then checks.
    fn finish(&mut self) -> Vec<String> {
        if self.witness.is_none() {
            self.start_witness();
        }
        for d in 0..self.devices.len() {
            if !self.devices[d].online {
                self.toggle(d);
            }
        }
        let mut settled = false;
        for _ in 0..FINAL_ROUNDS {
            let mut order: Vec<usize> = (0..self.devices.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, self.rng.below(i + 1));
            }
            let mut moved = 0;
            for d in order {
                self.commit(d);
                moved += self.sync(d, false);
            }
            let quiet = self.devices.iter().all(|d| {
                let st = d.dev.status();
                st["pending"] == 0 && st["uncommitted"] == false
            });
            if moved == 0 && quiet {
                settled = true;
                break;
            }
        }
        if !settled {
            let st: Vec<Json> = self.devices.iter().map(|d| d.dev.status()).collect();
            return vec![format!(
                "the devices still push or pull after {FINAL_ROUNDS} rounds of commit and sync: {st:?}"
            )];
        }
        self.check()
    }

    /// Invariants 1, 2 and 4 on the settled devices, the stopped witness and the
    /// history the checker recorded.
    fn check(&mut self) -> Vec<String> {
        self.record_history();
        let mut bad = std::mem::take(&mut self.bad);
        let history = std::mem::take(&mut self.history);
        let mut w = self.witness.take().expect("the witness runs");
        let status = w.stop();
        assert!(
            status.success(),
            "pdb-witness asked to stop (SIGTERM) did not shut down gracefully: {status}"
        );
        let replica = Connection::open_with_flags(
            self.data.join("groups").join(format!("{GROUP}.db")),
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the witness replica");

        self.stats.certified = history.len() as u64;
        for dev in &self.devices {
            let n: i64 = dev
                .dev
                .conn
                .query_row("SELECT count(*) FROM pdb_conflicts", [], |r| r.get(0))
                .unwrap();
            self.stats.conflicts += n as u64;
        }

        // 1. Convergence.
        for t in TABLES.map(|t| t.name) {
            let want = pdb_tests::dump(&replica, t);
            for (d, dev) in self.devices.iter().enumerate() {
                if dev.dev.dump(t) != want {
                    let (mine, theirs) = (readable(&dev.dev.conn, t), readable(&replica, t));
                    bad.push(format!(
                        "invariant 1: d{d}'s {t} differs from the witness replica: only on d{d}: {:?}; only on the witness: {:?}",
                        mine.difference(&theirs).collect::<Vec<_>>(),
                        theirs.difference(&mine).collect::<Vec<_>>()
                    ));
                }
            }
        }
        for (d, dev) in self.devices.iter().enumerate() {
            match dev.dev.try_json("SELECT pdb_verify()") {
                Ok(v) if v["state"] == "ok" => {}
                other => bad.push(format!("invariant 1: d{d}'s pdb_verify(): {other:?}")),
            }
            let st = dev.dev.status();
            if st["pending"] != 0 || st["dead"] != json!([]) || st["uncommitted"] != false {
                bad.push(format!("d{d} is not settled: {st}"));
            }
        }

        // 4. Exactly-once: one history, seqs 1..n, each key once, on every device from
        // its chain root on.
        let mut certified: HashMap<String, Vec<(u64, Vec<u8>)>> = HashMap::new();
        let mut chain = Vec::new();
        for (i, c) in history.iter().enumerate() {
            let seq = c["seq"].as_u64().unwrap();
            let key = c["idempotency_key"].as_str().unwrap().to_string();
            if seq != i as u64 + 1 {
                bad.push(format!("invariant 4: history entry {i} has seq {seq}"));
            }
            let same_key = certified.entry(key.clone()).or_default();
            let blob = changeset_of(c);
            if let Some((first, earlier)) = same_key.last() {
                let conn = self.conn(0);
                let (was, now) = (
                    changeset_rows(conn, Some(earlier)),
                    changeset_rows(conn, Some(&blob)),
                );
                bad.push(format!(
                    "invariant 4: idempotency key {key} certified at seq {first} and {seq} \
                     (compactions as (head, first kept): {:?}): seq {first} wrote {was:?}; seq {seq} wrote {now:?}",
                    self.compacted
                ));
            }
            same_key.push((seq, blob));
            chain.push((seq as i64, c["head"].as_str().unwrap().to_string(), key));
        }
        // Where each device's chain starts: the snapshot it last installed, or seq 1.
        let roots: Vec<Option<i64>> = self
            .devices
            .iter()
            .map(|dev| {
                dev.dev
                    .conn
                    .query_row(
                        "SELECT value FROM pdb_local WHERE key = 'root_seq'",
                        [],
                        |r| r.get(0),
                    )
                    .ok()
            })
            .collect();
        let mine: HashMap<(usize, i64), &Recorded> =
            self.commits.iter().map(|c| ((c.device, c.id), c)).collect();
        for (d, dev) in self.devices.iter().enumerate() {
            let rows = dev
                .dev
                .rows("SELECT seq, head, idempotency_key, local_id FROM pdb_commits ORDER BY seq");
            let mut got = Vec::new();
            for r in &rows {
                let (Value::Integer(seq), Value::Text(head), Value::Text(key)) =
                    (&r[0], &r[1], &r[2])
                else {
                    panic!("pdb_commits row {r:?}");
                };
                // A commit this device says it wrote must be one it recorded, by key.
                if let Value::Integer(local) = r[3] {
                    if !matches!(mine.get(&(d, local)), Some(c) if &c.key == key) {
                        bad.push(format!(
                            "invariant 4: d{d}'s pdb_commits says seq {seq} ({key}) is its local commit {local}, which had another key"
                        ));
                    }
                }
                got.push((*seq, head.clone(), key.clone()));
            }
            let from = roots[d].unwrap_or(1).max(1) as usize;
            let want = chain.get(from - 1..).unwrap_or(&[]);
            if got != want {
                bad.push(format!(
                    "invariant 4: d{d}'s pdb_commits ({} rows from seq {:?}) is not the recorded history from its root {from} ({} commits)",
                    got.len(),
                    got.first().map(|c| c.0),
                    want.len()
                ));
            }
        }
        for c in &self.commits {
            let Some((seq, _)) = certified.get(&c.key).and_then(|v| v.last()) else {
                continue;
            };
            // A commit at or before the device's root came with the snapshot: the
            // device keeps no certificate of it, or only the root's, with no local id.
            if roots[c.device].is_some_and(|root| *seq as i64 <= root) {
                continue;
            }
            let local: Option<i64> = self
                .conn(c.device)
                .query_row(
                    "SELECT local_id FROM pdb_commits WHERE seq = ?1",
                    [*seq as i64],
                    |r| r.get(0),
                )
                .unwrap_or(None);
            if local != Some(c.id) {
                bad.push(format!(
                    "d{}'s commit {} is certified at seq {seq}, but its pdb_commits row has local_id {local:?}",
                    c.device, c.id
                ));
            }
        }

        // 2. No lost write. A row change of a local commit is in the certified commit
        // with its key, or in pdb_conflicts, or already done: a delete of a row that a
        // certified commit deleted or that is gone, or values that certified commits
        // wrote into that row (only merges produce such values: see the module doc).
        let conn = self.conn(0);
        let mut in_commit: HashMap<&str, HashSet<RowRef>> = HashMap::new();
        let mut deleted: HashSet<RowRef> = HashSet::new();
        let mut written: HashMap<RowRef, Vec<Vec<Option<Json>>>> = HashMap::new();
        for (key, blob) in certified
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |(_, b)| (k, b)))
        {
            for c in changeset_rows(conn, Some(blob)) {
                in_commit
                    .entry(key.as_str())
                    .or_default()
                    .insert(c.row.clone());
                if c.op == "DELETE" {
                    deleted.insert(c.row);
                } else {
                    written.entry(c.row).or_default().push(c.new);
                }
            }
        }
        let at_end = present(&replica);
        let mut conflicts: HashMap<usize, HashSet<(i64, RowRef)>> = HashMap::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let mut stmt = dev
                .dev
                .conn
                .prepare(
                    "SELECT local_id, table_name, pk FROM pdb_conflicts WHERE local_id IS NOT NULL",
                )
                .unwrap();
            let set = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, (r.get(1)?, norm(&r.get::<_, String>(2)?))))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            conflicts.insert(d, set);
        }
        for commit in &self.commits {
            let is_certified = certified.contains_key(&commit.key);
            for c in &commit.rows {
                let already_done = if c.op == "DELETE" {
                    deleted.contains(&c.row) || !at_end.contains(&c.row)
                } else {
                    let writes = written.get(&c.row).map_or(&[][..], Vec::as_slice);
                    c.new
                        .iter()
                        .enumerate()
                        .all(|(i, v)| v.is_none() || writes.iter().any(|w| w.get(i) == Some(v)))
                };
                let accounted = in_commit
                    .get(commit.key.as_str())
                    .is_some_and(|r| r.contains(&c.row))
                    || conflicts[&commit.device].contains(&(commit.id, c.row.clone()))
                    || already_done;
                if !accounted {
                    bad.push(format!(
                        "invariant 2: d{}'s commit {} ({}) lost its {c:?}: not in {}, not in pdb_conflicts, not done by another commit",
                        commit.device,
                        commit.id,
                        commit.key,
                        if is_certified {
                            "the certified commit with its key"
                        } else {
                            "the history (the commit was never certified)"
                        }
                    ));
                }
            }
        }
        bad
    }
}

/// The message of a caught panic.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs one seed in `root/seed-N`; `Err` carries what failed and how to replay it.
fn run_seed(seed: u64, root: &Path, trace: bool) -> Result<Stats, String> {
    let dir = root.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, &dir, trace);
        let violations = sim.run();
        (violations, std::mem::take(&mut sim.stats))
    }));
    let why = match outcome {
        Ok((v, stats)) if v.is_empty() => {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(stats);
        }
        Ok((v, _)) => v.join("\n  "),
        Err(p) => panic_message(p),
    };
    Err(format!(
        "seed {seed} failed (its files are in {}):\n  {why}\n  replay: PDB_SIM_SEED={seed} cargo test -p pdb-tests --test convergence -- --nocapture",
        dir.display()
    ))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[test]
fn random_schedules_converge_without_losing_writes() {
    let single = env_u64("PDB_SIM_SEED");
    let seeds: Vec<u64> = match single {
        Some(s) => vec![s],
        None => {
            let first = env_u64("PDB_SIM_FIRST").unwrap_or(0);
            (first..first + env_u64("PDB_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
        }
    };
    let threads = match single {
        Some(_) => 1,
        None => env_u64("PDB_SIM_THREADS").unwrap_or(2).max(1) as usize,
    };
    // Build both artifacts once, before the threads race for them.
    pdb_tests::libpdb();
    pdb_tests::witness::witness_bin();
    let root = std::env::temp_dir().join(format!("pdb-sim-{}", std::process::id()));
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let stats = Mutex::new(Stats::default());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else { break };
                match run_seed(seed, &root, single.is_some()) {
                    Ok(s) => stats.lock().unwrap().add(&s),
                    Err(e) => {
                        eprintln!("{e}");
                        failures.lock().unwrap().push((seed, e));
                    }
                }
                // Long runs report progress, so that an interrupted one still tells.
                let done = finished.fetch_add(1, Ordering::SeqCst) + 1;
                if done % PROGRESS_EVERY == 0 {
                    eprintln!(
                        "convergence: {done} of {} seeds done ({} failed) in {:.1?}",
                        seeds.len(),
                        failures.lock().unwrap().len(),
                        started.elapsed()
                    );
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    eprintln!(
        "convergence: {} of {} seeds passed in {:.1?}; the passing ones did {:?}",
        seeds.len() - failures.len(),
        seeds.len(),
        started.elapsed(),
        stats.into_inner().unwrap()
    );
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&root);
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures
            .into_iter()
            .map(|f| f.1)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Found by the simulation: a witness stopped with SIGTERM right after it printed
/// `listening:` died of the signal instead of shutting down gracefully, because
/// `pdb-witness serve` installed its SIGTERM handler only when the server future was
/// first polled, after announcing that it listens (about 3 seeds in 1000 hit it; under
/// load this test did most of the time). The handlers are now installed first.
#[test]
fn a_witness_stopped_right_after_start_exits_cleanly() {
    const TRIES: usize = 20;
    let dir = std::env::temp_dir().join(format!("pdb-sim-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Busy threads widen the window as the simulation's load did.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut killed = 0;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        for _ in 0..TRIES {
            let mut w = WitnessProc::start(&dir);
            if !w.stop().success() {
                killed += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(killed, 0, "{killed} of {TRIES} witnesses died of SIGTERM");
}
