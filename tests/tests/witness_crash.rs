//! The witness under SIGKILL (DESIGN §7, invariants 3 and 4): clients commit
//! concurrently into several groups while a controller kills the real `pdb-witness` at
//! random moments and restarts it on the same data directory. Afterwards every
//! certificate a client received must be in the one history of its group, the chain
//! must verify, the replica must equal a replay of the history, and no commit may have
//! been applied twice, even though clients retried every commit whose reply was lost.
//!
//! `PDB_CRASH_KILLS` overrides the number of kills, `PDB_CRASH_SEED` the random seed
//! (printed at the start, so a failing run can be repeated).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pdb_client::cert::{genesis, hex, parse_hash, Certificate, Hash};
use pdb_client::state::StateVector;
use pdb_tests::witness::{changeset_of, record, Client, Commit, WitnessClient, WitnessProc};
use pdb_tests::{dump, session_apply, to_client};
use rusqlite::Connection;
use serde_json::Value;

/// Kills per run, at least 20 (`PDB_CRASH_KILLS` overrides).
const KILLS: usize = 30;
/// Groups the clients commit into.
const GROUPS: usize = 4;
/// Client threads, each with its own range of row ids.
const CLIENTS: usize = 6;
/// Width of each client's id range.
const ID_RANGE: i64 = 1_000_000;
/// Longest pause of a client between two commits, µs: short, to keep the witness busy.
const THINK_US: u64 = 1_000;
/// Random delay before each kill, ms.
const KILL_AFTER_MS: (u64, u64) = (50, 400);
/// Longest a client may take to get its last commit certified once the kills are over.
const FINISH_WITHIN: Duration = Duration::from_secs(45);
/// Most 409s one commit may get before the test calls it a failure (with
/// `rebase-if-clean` and disjoint ids there should be none at all).
const MAX_409: u32 = 20;

const DDL: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, client INTEGER NOT NULL, n INTEGER NOT NULL, body TEXT)";

/// xorshift64*: small, seeded, good enough for timings and choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

fn group_name(g: usize) -> String {
    format!("crash{g}")
}

/// Where the witness listens now: a generation that grows with each restart (so a client
/// that failed against one process can wait for the next) and the URL, `None` while the
/// witness is down.
#[derive(Default)]
struct Endpoint {
    now: Mutex<(u64, Option<String>)>,
    changed: Condvar,
}

impl Endpoint {
    fn set(&self, url: Option<String>) {
        let mut now = self.now.lock().unwrap();
        if url.is_some() {
            now.0 += 1;
        }
        now.1 = url;
        self.changed.notify_all();
    }

    /// The current `(generation, url)`, waiting (up to `timeout`) while the witness is down.
    fn current(&self, timeout: Duration) -> Option<(u64, String)> {
        let now = self.now.lock().unwrap();
        let (now, _) = self
            .changed
            .wait_timeout_while(now, timeout, |n| n.1.is_none())
            .unwrap();
        now.1.clone().map(|u| (now.0, u))
    }

    /// Waits (up to `timeout`) until a witness newer than `generation` listens.
    fn wait_newer(&self, generation: u64, timeout: Duration) {
        let now = self.now.lock().unwrap();
        let _ = self
            .changed
            .wait_timeout_while(now, timeout, |n| n.0 <= generation || n.1.is_none())
            .unwrap();
    }
}

/// What the clients and the controller share.
struct Shared {
    endpoint: Endpoint,
    token: String,
    schema: Hash,
    /// Set once the last restart is done: clients finish their pending commit and stop.
    stopping: AtomicBool,
    /// When `stopping` was set, ms since `start`.
    stopping_at: AtomicU64,
    /// Set if the test already failed: clients give up at once.
    abort: AtomicBool,
    /// Highest seq of a certificate any client received, per group.
    max_certified: [AtomicU64; GROUPS],
    start: Instant,
}

impl Shared {
    fn finish_deadline_passed(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
            && self.start.elapsed()
                > Duration::from_millis(self.stopping_at.load(Ordering::SeqCst)) + FINISH_WITHIN
    }
}

/// One commit a client made (whether or not it was ever acknowledged).
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    group: usize,
    id: i64,
    changeset: Vec<u8>,
}

/// A certificate a client received: status 201, or 200 with `"duplicate": true`.
#[derive(Debug, Clone)]
struct Got {
    key: String,
    group: usize,
    status: u16,
    cert: Value,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    created: u64,
    duplicates: u64,
    unreachable: u64,
    unavailable: u64,
    rejected_409: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.created += o.created;
        self.duplicates += o.duplicates;
        self.unreachable += o.unreachable;
        self.unavailable += o.unavailable;
        self.rejected_409 += o.rejected_409;
    }
}

#[derive(Default)]
struct ClientLog {
    sent: Vec<Sent>,
    got: Vec<Got>,
    failures: Vec<String>,
    stats: Stats,
}

/// A client thread: commits one-row inserts until told to stop, each retried with the
/// same key and changeset until the witness certifies it.
fn client_thread(me: usize, seed: u64, shared: Arc<Shared>) -> ClientLog {
    let mut rng = Rng::new(seed ^ (me as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut log = ClientLog::default();
    let mut http = Client::new("http://127.0.0.1:1", Some(&shared.token));
    let mut n: i64 = 0;
    while !shared.stopping.load(Ordering::SeqCst) && !shared.abort.load(Ordering::SeqCst) {
        if n > 0 {
            std::thread::sleep(Duration::from_micros(rng.below(THINK_US)));
        }
        n += 1;
        let group = rng.below(GROUPS as u64) as usize;
        let id = me as i64 * ID_RANGE + n;
        let body: String = (0..rng.below(64))
            .map(|i| char::from(b'a' + ((i + rng.next()) % 26) as u8))
            .collect();
        let sql = format!("INSERT INTO t(id, client, n, body) VALUES ({id}, {me}, {n}, '{body}')");
        let sent = Sent {
            key: format!("crash-c{me}-{n}"),
            group,
            id,
            changeset: record(DDL, "", &sql),
        };
        log.sent.push(sent.clone());
        match submit(&shared, &mut http, &sent, &mut log.stats) {
            Ok(got) => log.got.push(got),
            Err(why) => {
                log.failures
                    .push(format!("client {me}, {}: {why}", sent.key));
                break;
            }
        }
    }
    log
}

/// Points `http` at the current witness; `None` if it is down (after a short wait).
fn connect(shared: &Shared, http: &mut Client) -> Option<u64> {
    let (generation, url) = shared.endpoint.current(Duration::from_millis(200))?;
    if http.url != url {
        http.url = url;
    }
    Some(generation)
}

/// `(seq, head)` from a JSON object with `seq` and `head` fields.
fn seq_head(v: &Value) -> Option<(u64, Hash)> {
    Some((v["seq"].as_u64()?, parse_hash(v["head"].as_str()?)?))
}

/// Submits one commit until a certificate comes back, retrying with the same key and
/// changeset whenever the witness is unreachable or unavailable.
fn submit(shared: &Shared, http: &mut Client, c: &Sent, stats: &mut Stats) -> Result<Got, String> {
    let g = group_name(c.group);
    let mut base: Option<(u64, Hash)> = None;
    let mut conflicts = 0;
    loop {
        if shared.abort.load(Ordering::SeqCst) {
            return Err("aborted".into());
        }
        if shared.finish_deadline_passed() {
            return Err(format!(
                "not certified within {FINISH_WITHIN:?} after the last restart"
            ));
        }
        let Some(generation) = connect(shared, http) else {
            continue;
        };
        let retry_later = |stats: &mut Stats, unreachable: bool| {
            if unreachable {
                stats.unreachable += 1;
            } else {
                stats.unavailable += 1;
            }
            shared
                .endpoint
                .wait_newer(generation, Duration::from_millis(300));
        };
        // Pdb-Base: the group's head as of now (kept for the retries of this commit).
        let (base_seq, base_head) = match base {
            Some(b) => b,
            None => match http.send("GET", &format!("/v1/groups/{g}"), &[], None) {
                Err(_) => {
                    retry_later(stats, true);
                    continue;
                }
                Ok(r) if r.status == 503 => {
                    retry_later(stats, false);
                    continue;
                }
                Ok(r) if r.status == 200 => {
                    let b = seq_head(&r.body).ok_or(format!("bad group info {}", r.body))?;
                    base = Some(b);
                    b
                }
                Ok(r) => return Err(format!("GET group: {} {}", r.status, r.body)),
            },
        };
        let commit = Commit {
            changeset: &c.changeset,
            base_seq,
            base_head,
            key: &c.key,
            schema: shared.schema,
            policy: None,
        };
        let reply = match http.try_commit(&g, &commit) {
            Err(_) => {
                retry_later(stats, true);
                continue;
            }
            Ok(r) => r,
        };
        match reply.status {
            201 | 200 => {
                let duplicate = reply.body.get("duplicate") == Some(&Value::Bool(true));
                if duplicate != (reply.status == 200) {
                    return Err(format!(
                        "status {} with duplicate = {duplicate}: {}",
                        reply.status, reply.body
                    ));
                }
                if duplicate {
                    stats.duplicates += 1;
                } else {
                    stats.created += 1;
                }
                let seq = reply.body["seq"]
                    .as_u64()
                    .ok_or(format!("certificate without seq: {}", reply.body))?;
                shared.max_certified[c.group].fetch_max(seq, Ordering::SeqCst);
                return Ok(Got {
                    key: c.key.clone(),
                    group: c.group,
                    status: reply.status,
                    cert: reply.body,
                });
            }
            503 => retry_later(stats, false),
            409 if matches!(reply.code(), Some("stale_base" | "conflict")) => {
                stats.rejected_409 += 1;
                conflicts += 1;
                if conflicts > MAX_409 {
                    return Err(format!("{conflicts} rejections, last: {}", reply.body));
                }
                base = Some(
                    seq_head(&reply.body)
                        .ok_or(format!("409 without the current head: {}", reply.body))?,
                );
            }
            _ => return Err(format!("commit: {} {}", reply.status, reply.body)),
        }
    }
}

/// Removes the data directory at the end, or keeps it (and says where) if the test failed.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("witness_crash: data directory kept at {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Tells the clients to give up if the controller panics.
struct AbortOnUnwind(Arc<Shared>);

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abort.store(true, Ordering::SeqCst);
            self.0.endpoint.set(None);
        }
    }
}

/// Starts the witness, turning a failure to come up into a test failure with context
/// (its stderr is already inherited).
fn start_witness(data: &Path, what: &str) -> WitnessProc {
    match std::panic::catch_unwind(|| WitnessProc::start(data)) {
        Ok(w) => w,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{what}: the witness did not come up on {}: {msg}",
                data.display()
            );
        }
    }
}

#[test]
fn sigkill_never_forks_loses_or_duplicates_commits() {
    let kills: usize = std::env::var("PDB_CRASH_KILLS")
        .ok()
        .map(|v| v.parse().expect("PDB_CRASH_KILLS is a number"))
        .unwrap_or(KILLS);
    let seed: u64 = std::env::var("PDB_CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("PDB_CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("witness_crash: seed {seed} (PDB_CRASH_SEED), {kills} kills (PDB_CRASH_KILLS)");
    let mut rng = Rng::new(seed);

    let dir = TempDir(
        std::env::temp_dir().join(format!("pdb-witness-crash-{}-{seed}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("create data dir");
    let data = dir.0.clone();

    let mut witness = start_witness(&data, "first start");
    let key = witness.key;
    let admin_token = witness.admin.clone().expect("admin token printed");
    let admin = witness.admin_client();
    let mut schema = None;
    for g in 0..GROUPS {
        let r = admin.create_group(&group_name(g), DDL);
        assert_eq!(r.status, 201, "create group: {:?}", r.body);
        let ((seq, head), s) = admin.head(&group_name(g));
        assert_eq!((seq, head), (0, genesis(&group_name(g))));
        if let Some(x) = schema {
            assert_eq!(x, s, "the groups have the same schema");
        }
        schema = Some(s);
    }

    let shared = Arc::new(Shared {
        endpoint: Endpoint::default(),
        token: admin_token.clone(),
        schema: schema.expect("schema hash"),
        stopping: AtomicBool::new(false),
        stopping_at: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        max_certified: Default::default(),
        start: Instant::now(),
    });
    let _abort = AbortOnUnwind(shared.clone());
    shared.endpoint.set(Some(witness.url.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("crash-client-{me}"))
                .spawn(move || client_thread(me, seed, shared))
                .expect("spawn client")
        })
        .collect();

    // The controller: kill at random moments, restart on the same data directory, and
    // check after each restart that the witness kept its key and forgot no certificate.
    for k in 1..=kills {
        std::thread::sleep(Duration::from_millis(
            rng.between(KILL_AFTER_MS.0, KILL_AFTER_MS.1),
        ));
        shared.endpoint.set(None);
        witness.kill();
        let before: Vec<u64> = shared
            .max_certified
            .iter()
            .map(|m| m.load(Ordering::SeqCst))
            .collect();
        // Sometimes stay down a little, so that clients pile up retries.
        if rng.below(3) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(100)));
        }
        witness = start_witness(&data, &format!("restart after kill {k}"));
        assert_eq!(
            hex(&witness.key),
            hex(&key),
            "the witness key changed on restart {k}"
        );
        let admin = Client::new(&witness.url, Some(&admin_token));
        for (g, &certified) in before.iter().enumerate() {
            let ((seq, _), _) = admin.head(&group_name(g));
            assert!(
                seq >= certified,
                "after kill {k}, group {} is at seq {seq} but seq {certified} was certified \
                 before the kill: a certified commit was lost",
                group_name(g)
            );
        }
        shared.endpoint.set(Some(witness.url.clone()));
    }

    // Let every client finish its pending commit against the last witness.
    shared
        .stopping_at
        .store(shared.start.elapsed().as_millis() as u64, Ordering::SeqCst);
    shared.stopping.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut failures = Vec::new();
    let mut stats = Stats::default();
    for c in clients {
        let log = c.join().expect("client thread panicked");
        sent.extend(log.sent);
        got.extend(log.got);
        failures.extend(log.failures);
        stats.add(&log.stats);
    }
    eprintln!(
        "witness_crash: {} commits sent, {} certified (201), {} duplicates (200), \
         {} unreachable, {} unavailable (503), {} rejections (409), in {:?}",
        sent.len(),
        stats.created,
        stats.duplicates,
        stats.unreachable,
        stats.unavailable,
        stats.rejected_409,
        shared.start.elapsed()
    );
    assert!(failures.is_empty(), "clients failed: {failures:#?}");
    assert_eq!(sent.len(), got.len(), "every commit sent got a certificate");
    assert!(
        kills == 0 || stats.unreachable > 0,
        "no request ever failed to reach the witness: the kills did not hit any commit"
    );

    let admin = Client::new(&witness.url, Some(&admin_token));
    let histories: Vec<Vec<Value>> = (0..GROUPS).map(|g| admin.history(&group_name(g))).collect();
    let status = witness.stop();
    assert!(status.success(), "graceful stop failed: {status}");

    let sent_by_key: HashMap<&str, &Sent> = sent.iter().map(|s| (s.key.as_str(), s)).collect();
    assert_eq!(
        sent_by_key.len(),
        sent.len(),
        "test bug: idempotency keys reused"
    );
    // One checker per group, in parallel: verifying thousands of signatures is slow in
    // an unoptimized build.
    std::thread::scope(|s| {
        for (g, history) in histories.iter().enumerate() {
            let (key, sent_by_key, got, data) = (&key, &sent_by_key, &got, &data);
            s.spawn(move || {
                let name = group_name(g);
                let got = got.iter().filter(|x| x.group == g);
                check_group(&name, g, history, key, sent_by_key, got, data);
            });
        }
    });
    let total: usize = histories.iter().map(Vec::len).sum();
    assert_eq!(
        total,
        sent.len(),
        "the histories hold exactly the commits sent"
    );
}

/// Checks one group's history, certificates and replica (DESIGN §7, invariants 3 and 4).
fn check_group<'a>(
    name: &str,
    g: usize,
    history: &[Value],
    key: &[u8; 32],
    sent_by_key: &HashMap<&str, &Sent>,
    got: impl Iterator<Item = &'a Got>,
    data: &Path,
) {
    // One history: seqs 1..=n, each once; each idempotency key at most once.
    let seqs: Vec<u64> = history.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "{name}: the history's seqs are not exactly 1..=n"
    );
    let mut keys = BTreeSet::new();
    for c in history {
        let k = c["idempotency_key"].as_str().expect("idempotency_key");
        assert!(
            keys.insert(k.to_string()),
            "{name}: idempotency key {k} appears twice in the history: a commit was applied twice"
        );
    }

    // The chain verifies, under the one witness key, from genesis on; and each commit
    // is one the clients sent to this group, with the changeset sent under its key.
    let mut certs = Vec::with_capacity(history.len());
    let mut prev = genesis(name);
    for c in history {
        let cert = Certificate::from_json(c).expect("certificate parses");
        let payload = changeset_of(c);
        if let Err(e) = cert.verify(key, &payload) {
            panic!("{name}: seq {} does not verify: {e}", cert.seq);
        }
        assert_eq!(
            cert.group, name,
            "{name}: seq {} names another group",
            cert.seq
        );
        assert_eq!(
            hex(&cert.prev),
            hex(&prev),
            "{name}: seq {} does not follow seq {}",
            cert.seq,
            cert.seq - 1
        );
        prev = cert.head;
        let sent = sent_by_key
            .get(cert.idempotency_key.as_str())
            .unwrap_or_else(|| panic!("{name}: seq {} has a key nobody sent", cert.seq));
        assert_eq!(
            sent.group, g,
            "{name}: seq {} was sent to another group",
            cert.seq
        );
        assert!(
            sent.changeset == payload,
            "{name}: seq {} holds another changeset than the one sent with its key",
            cert.seq
        );
        certs.push(cert);
    }

    // Every certificate a client received is in the history at its seq, identical.
    let mut acked = 0;
    for x in got {
        acked += 1;
        let cert = Certificate::from_json(&x.cert)
            .unwrap_or_else(|e| panic!("{name}: received certificate {}: {e}", x.cert));
        let Some(stored) = certs.get((cert.seq as usize).wrapping_sub(1)) else {
            panic!(
                "{name}: {} got seq {} (status {}), but the history ends at {}: \
                 a certified commit was lost",
                x.key,
                cert.seq,
                x.status,
                certs.len()
            );
        };
        assert_eq!(
            &cert, stored,
            "{name}: the certificate {} received (status {}) differs from the history's \
             seq {}: a fork",
            x.key, x.status, cert.seq
        );
        assert_eq!(
            cert.idempotency_key, x.key,
            "{name}: certificate for another key"
        );
    }
    // Exactly once: every acknowledged commit is in the history once, and nothing else.
    assert_eq!(
        acked,
        history.len(),
        "{name}: the history holds {} commits, the clients were acknowledged {acked}",
        history.len()
    );

    // The replica equals a replay of the history, and its digest the last certificate's.
    let replay = Connection::open_in_memory().expect("open");
    replay.execute_batch(DDL).expect("ddl");
    for c in history {
        session_apply(&replay, &changeset_of(c), "abort")
            .unwrap_or_else(|e| panic!("{name}: seq {} does not replay: {e}", c["seq"]));
    }
    let replica_path = data.join("groups").join(format!("{name}.db"));
    let replica = Connection::open(&replica_path).expect("open the replica");
    assert!(
        dump(&replica, "t") == dump(&replay, "t"),
        "{name}: the replica differs from the replay of its history"
    );
    let rows = |conn: &Connection| -> BTreeMap<i64, (i64, i64, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT id, client, n, body FROM t ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let replica_rows = rows(&replica);
    assert_eq!(replica_rows, rows(&replay), "{name}: replica != replay");
    assert_eq!(
        replica_rows.len(),
        history.len(),
        "{name}: {} rows for {} one-row commits",
        replica_rows.len(),
        history.len()
    );
    let expected_ids: BTreeSet<i64> = certs
        .iter()
        .map(|c| sent_by_key[c.idempotency_key.as_str()].id)
        .collect();
    assert_eq!(
        replica_rows.keys().copied().collect::<BTreeSet<_>>(),
        expected_ids,
        "{name}: the rows are not those of the certified commits"
    );

    let mut state = StateVector::new();
    {
        let mut stmt = replay
            .prepare("SELECT id, client, n, body FROM t ORDER BY id")
            .expect("prepare");
        let mut q = stmt.query([]).expect("query");
        while let Some(row) = q.next().expect("row") {
            let vals: Vec<_> = (0..4).map(|i| to_client(row.get_ref_unwrap(i))).collect();
            state.add_row("t", &vals);
        }
    }
    let last = certs
        .last()
        .map_or_else(|| StateVector::new().digest(), |c| c.state);
    assert_eq!(
        hex(&state.digest()),
        hex(&last),
        "{name}: the replayed rows' state digest differs from the last certificate's"
    );

    // The replica's own bookkeeping is at the head too.
    let pos: (i64, Vec<u8>) = replica
        .query_row("SELECT seq, head FROM pdb_replica WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("replica position");
    assert_eq!(pos.0 as usize, history.len(), "{name}: replica seq");
    assert_eq!(hex(&pos.1), hex(&prev), "{name}: replica head");
}
