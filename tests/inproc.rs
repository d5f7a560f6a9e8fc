//! An in-process witness: the real `pdb-witness` library answering a device's
//! [`pdb_client::transport::Witness`] calls directly, with no HTTP and no process, so
//! that sync, rebase and bootstrap scenarios run in milliseconds. The process tests
//! (`tests/tests/sync.rs`, `bootstrap.rs`, ...) stay the proof over the wire; this one
//! only skips the wire.
//!
//! Every answer is the one `server-min/src/http.rs` gives, in its order of checks and
//! with its problem documents: the sequencing, history, snapshots and objects are the
//! witness library's own. What it leaves out is what lives only in HTTP: tokens (every
//! call may read and write), connection limits and timeouts.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pdb_client::cert::{hex, Certificate};
use pdb_client::snapshot::Manifest;
use pdb_client::transport::{Download, GroupInfo, Page, Pulled, Submission};
use pdb_client::{Rejection, TransportError};
use pdb_witness::group::{Accepted, CommitRequest, Group};
use pdb_witness::log::Log;
use pdb_witness::problem::{Code, Problem};

/// Most commits one pull returns (`http::MAX_LIMIT`).
const MAX_LIMIT: usize = 1000;
/// Changeset bytes one pull returns at most (`http::PAGE_BYTES`).
const PAGE_BYTES: usize = 4 << 20;
/// Longest long-poll, seconds (`http::MAX_WAIT`).
const MAX_WAIT: u64 = 60;
/// `--max-body`'s default.
const MAX_BODY: usize = 16 << 20;

struct Inner {
    witness: pdb_witness::witness::Witness,
    /// Drives the sequencer's async answer and long-poll waits; the witness's own
    /// threads do the work.
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    max_body: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.witness.flush();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A witness running inside the test process, on its own data directory.
#[derive(Clone)]
pub struct InProcess {
    inner: Arc<Inner>,
}

impl InProcess {
    /// Opens a fresh witness in a new directory named after `name` under the temp dir.
    pub fn start(name: &str) -> InProcess {
        InProcess::start_with(name, pdb_witness::snapshot::Policy::default(), MAX_BODY)
    }

    /// [`InProcess::start`] with a snapshot policy and a `--max-body`.
    pub fn start_with(
        name: &str,
        policy: pdb_witness::snapshot::Policy,
        max_body: usize,
    ) -> InProcess {
        // In memory where the system has a tmpfs: the witness's fsyncs (synchronous=FULL
        // on every batch) are then free, and they are most of a fast test's time.
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = root.join(format!("pdb-inproc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let witness = pdb_witness::witness::Witness::open_with(
            &dir,
            Arc::new(pdb_witness::metrics::Metrics::default()),
            policy,
        )
        .expect("open the in-process witness");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        InProcess {
            inner: Arc::new(Inner {
                witness,
                rt,
                dir,
                max_body,
            }),
        }
    }

    /// The witness library itself, for what a test checks behind the API.
    pub fn witness(&self) -> &pdb_witness::witness::Witness {
        &self.inner.witness
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The public key devices pin.
    pub fn key(&self) -> [u8; 32] {
        self.inner.witness.public_key()
    }

    /// Creates group `name` with `ddl` (`PUT /v1/groups/{g}`); panics on a refusal.
    pub fn create_group(&self, name: &str, ddl: &str) {
        self.inner
            .witness
            .create_group(name, ddl)
            .unwrap_or_else(|p| panic!("create group {name}: {p}"));
    }

    /// An admin's snapshot of `group` at its head now (`POST …/snapshots`).
    pub fn snapshot(&self, group: &str) -> Manifest {
        let g = self.inner.witness.group(group).expect("group exists");
        self.inner
            .witness
            .snapshots()
            .make(&g, pdb_witness::snapshot::Kind::Admin)
            .unwrap_or_else(|p| panic!("snapshot of {group}: {p}"))
    }

    /// The group's durable head seq.
    pub fn head(&self, group: &str) -> u64 {
        self.inner
            .witness
            .group(group)
            .expect("group exists")
            .head()
            .seq
    }

    /// How many times the witness refused a request with `code` (its `/metrics`).
    pub fn rejections(&self, code: Code) -> u64 {
        let text = self.inner.witness.metrics().render(0, 0);
        let needle = format!("code=\"{}\"}} ", code.as_str());
        text.lines()
            .find(|l| l.starts_with("pdb_rejections_total") && l.contains(&needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// What one device sees: the [`pdb_client::transport::Witness`] of `group`.
    pub fn link(&self, group: &str) -> Link {
        Link {
            inner: self.inner.clone(),
            group: group.to_string(),
        }
    }
}

/// A device's view of one group of an [`InProcess`] witness.
pub struct Link {
    inner: Arc<Inner>,
    group: String,
}

type Answer<T> = Result<Result<T, Rejection>, TransportError>;

impl Link {
    /// A problem as the device receives it over HTTP, counted as the witness counts it.
    fn refuse<T>(&self, p: Problem) -> Answer<T> {
        self.inner.witness.metrics().rejected(p.code);
        Ok(Err(Rejection {
            status: p.code.status(),
            code: p.code.as_str().to_string(),
            detail: p.detail.clone(),
            body: p.to_json(),
            retry_after: None,
        }))
    }

    fn find(&self) -> Result<Arc<Group>, Problem> {
        self.inner
            .witness
            .group(&self.group)
            .ok_or_else(|| Problem::new(Code::NotFound, format!("no group \"{}\"", self.group)))
    }

    /// Runs `f`, turning its problem into the HTTP answer.
    fn answer<T>(&self, f: impl FnOnce() -> Result<T, Problem>) -> Answer<T> {
        match f() {
            Ok(v) => Ok(Ok(v)),
            Err(p) => self.refuse(p),
        }
    }

    /// `get_commits`: the head first, then the page below it, `410` when the commit
    /// after `after` is gone.
    fn page(&self, after: u64, limit: usize, wait: Duration) -> Result<Page, Problem> {
        let w = &self.inner.witness;
        let group = self.find()?;
        let limit = limit.clamp(1, MAX_LIMIT);
        // As the client sends it: whole seconds, rounded up.
        let wait = (wait.as_millis().div_ceil(1000) as u64).min(MAX_WAIT);
        if wait > 0 && group.head().seq <= after {
            let mut rx = group.info.head.subscribe();
            self.inner.rt.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(wait), rx.wait_for(|h| h.seq > after))
                        .await;
            });
        }
        let head = group.head();
        let mut commits = w.commits_after(&group, after, limit, PAGE_BYTES)?;
        commits.retain(|c| c.cert.seq <= head.seq);
        if after < head.seq && commits.first().map(|c| c.cert.seq) != Some(after + 1) {
            let oldest = group.info.oldest_head();
            let latest = w.snapshots().latest(&group).ok().flatten();
            return Err(Problem::new(
                Code::Compacted,
                format!(
                    "commits after seq {after} were compacted (the oldest head kept is seq {oldest}): \
                     bootstrap from a snapshot"
                ),
            )
            .with("oldest_seq", oldest)
            .with("snapshot_seq", latest.as_ref().map(|m| m.seq))
            .with(
                "snapshot",
                latest.map(|m| serde_json::Value::Object(m.to_json())),
            ));
        }
        Ok(Page {
            head: (head.seq, head.head),
            commits: commits
                .into_iter()
                .map(|c| Pulled {
                    cert: c.cert,
                    changeset: c.changeset.to_vec(),
                })
                .collect(),
        })
    }

    /// `post_commit`: group, headers (parsed by the witness's own parser, from the
    /// headers `Remote` would send), body size, then the sequencer.
    fn commit(&self, s: &Submission<'_>) -> Result<(Certificate, bool), Problem> {
        let group = self.find()?;
        let mut headers: Vec<(&str, String)> = vec![
            ("Pdb-Base", format!("{}:{}", s.base.0, hex(&s.base.1))),
            ("Idempotency-Key", s.idempotency_key.to_string()),
            ("Pdb-Schema", hex(&s.schema_hash)),
        ];
        if let Some(c) = s.client {
            headers.push(("Pdb-Client", c.to_string()));
        }
        if let Some(m) = s.meta {
            headers.push(("Pdb-Meta", m.to_string()));
        }
        if s.fast_forward {
            headers.push(("Pdb-Policy", "fast-forward".to_string()));
        }
        let h = pdb_witness::request::commit_headers(|name| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        })?;
        let max = self.inner.max_body;
        if s.changeset.len() > max {
            return Err(
                Problem::new(Code::TooLarge, format!("the body exceeds {max} bytes"))
                    .with("limit", max),
            );
        }
        let outcome = self.inner.rt.block_on(group.commit(CommitRequest {
            headers: h,
            changeset: bytes::Bytes::copy_from_slice(s.changeset),
        }))?;
        Ok(match outcome {
            Accepted::New(c) => (c.cert, false),
            Accepted::Duplicate(c) => {
                let m = self.inner.witness.metrics();
                m.duplicates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (c.cert, true)
            }
        })
    }

    /// `get_object`: the object file, from `from` on; `416` past its end.
    fn object(&self, object: &str, from: u64) -> Result<Download, Problem> {
        let snapshots = self.inner.witness.snapshots();
        let name = object.strip_prefix("/v1/objects/").unwrap_or(object);
        let missing = || Problem::new(Code::NotFound, format!("no object {name}"));
        let hash = pdb_client::cert::parse_hash(name).ok_or_else(missing)?;
        snapshots.object_readable(&hash, |_| Ok(()))?;
        let mut file = std::fs::File::open(snapshots.object_path(&hash)).map_err(|_| missing())?;
        let size = file
            .metadata()
            .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))?
            .len();
        if from > 0 {
            if from >= size {
                return Err(Problem::new(
                    Code::RangeNotSatisfiable,
                    format!("range {from}- is outside the object's {size} bytes"),
                )
                .with("size", size));
            }
            file.seek(SeekFrom::Start(from))
                .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))?;
        }
        Ok(Download {
            start: from,
            body: Box::new(file),
        })
    }
}

impl pdb_client::transport::Witness for Link {
    fn group_info(&self) -> Answer<GroupInfo> {
        self.answer(|| {
            let g = self.find()?;
            let head = g.head();
            Ok(GroupInfo {
                head: (head.seq, head.head),
                state: head.state,
                schema_hash: g.info.schema_hash,
                witness_key: self.inner.witness.public_key(),
                ddl: g.info.ddl.clone(),
            })
        })
    }

    fn push(&self, s: &Submission<'_>) -> Answer<(Certificate, bool)> {
        self.answer(|| self.commit(s))
    }

    fn certificate(&self, key: &str) -> Answer<Option<Certificate>> {
        let w = &self.inner.witness;
        let found = self.answer(|| {
            let g = self.find()?;
            w.store()
                .by_key(g.info.id, &g.info.name, w.public_key(), key)
                .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))
        })?;
        match found {
            Ok(Some(c)) => Ok(Ok(Some(c.cert))),
            // HTTP answers 404 not_found, which the client reads as "none".
            Ok(None) => {
                w.metrics().rejected(Code::NotFound);
                Ok(Ok(None))
            }
            Err(r) => Ok(Err(r)),
        }
    }

    fn pull(&self, after: u64, limit: usize, wait: Duration) -> Answer<Page> {
        self.answer(|| self.page(after, limit, wait))
    }

    fn latest_snapshot(&self) -> Answer<Option<Manifest>> {
        let w = &self.inner.witness;
        let m = self.answer(|| w.snapshots().latest(&*self.find()?))?;
        if matches!(m, Ok(None)) {
            w.metrics().rejected(Code::NotFound);
        }
        Ok(m)
    }

    fn snapshot_at(&self, seq: u64) -> Answer<Option<Manifest>> {
        let w = &self.inner.witness;
        match self.find().and_then(|g| w.snapshots().at(&g, seq)) {
            Ok(m) => Ok(Ok(Some(m))),
            // The client reads a 404 here as "no such snapshot".
            Err(p) if p.code == Code::NotFound => {
                w.metrics().rejected(p.code);
                Ok(Ok(None))
            }
            Err(p) => self.refuse(p),
        }
    }

    fn download(&self, object: &str, from: u64) -> Answer<Download> {
        self.answer(|| self.object(object, from))
    }
}

/// A connection that counts how often sync reads the tracked tables and checks for the
/// PersonalDB schema, by the statements that do it: the measure of what a sync cycle
/// re-reads.
pub struct Counted {
    /// The connection.
    pub conn: rusqlite::Connection,
    tracked: std::cell::Cell<usize>,
    schema: std::cell::Cell<usize>,
}

/// The statement `capture::tracked` reads the tracked tables with.
const TRACKED_SQL: &str = "SELECT name, id, columns FROM pdb_tracked ORDER BY name";
/// The statement `capture::has_schema` checks with.
const HAS_SCHEMA_SQL: &str =
    "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = 'pdb_tracked'";

impl Counted {
    /// `(capture::tracked, capture::has_schema)` calls since the last [`Counted::reset`].
    pub fn reads(&self) -> (usize, usize) {
        (self.tracked.get(), self.schema.get())
    }

    /// Starts counting again from zero.
    pub fn reset(&self) {
        self.tracked.set(0);
        self.schema.set(0);
    }
}

impl pdb_client::Db for Counted {
    type Stmt<'c> = rusqlite::CachedStatement<'c>;

    fn prepare(&self, sql: &str) -> Result<Self::Stmt<'_>, pdb_client::DbError> {
        if sql == TRACKED_SQL {
            self.tracked.set(self.tracked.get() + 1);
        } else if sql == HAS_SCHEMA_SQL {
            self.schema.set(self.schema.get() + 1);
        }
        pdb_client::Db::prepare(&self.conn, sql)
    }

    fn execute_batch(&self, sql: &str) -> Result<(), pdb_client::DbError> {
        pdb_client::Db::execute_batch(&self.conn, sql)
    }

    fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }
}

/// A device driven through `pdb-client`'s API (what each SQL function calls) on its own
/// database file, syncing with an [`InProcess`] witness.
pub struct Device {
    /// The device's connection.
    pub db: Counted,
    /// What it talks to.
    pub link: Link,
    /// The database file.
    pub path: PathBuf,
}

impl Device {
    /// A device named `name` with `ddl` run and `tables` tracked, opened on `group`.
    pub fn new(w: &InProcess, name: &str, ddl: &str, tables: &[&str], group: &str) -> Device {
        let dir = w.dir().join("devices");
        std::fs::create_dir_all(&dir).expect("device dir");
        let path = dir.join(format!("{name}.db"));
        let conn = rusqlite::Connection::open(&path).expect("open device db");
        // A fast device never survives a crash it did not stage, so it skips the fsyncs.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF")
            .expect("wal");
        conn.execute_batch(ddl).expect("device DDL");
        let d = Device {
            db: Counted {
                conn,
                tracked: Default::default(),
                schema: Default::default(),
            },
            link: w.link(group),
            path,
        };
        for t in tables {
            pdb_client::capture::track(&d.db, t).expect("pdb_track");
        }
        pdb_client::sync::open_with(
            &d.db,
            "http://in-process",
            group,
            "no token",
            &hex(&w.key()),
            &d.link,
        )
        .expect("pdb_open");
        d
    }

    /// Runs SQL as the application does.
    pub fn sql(&self, sql: &str) {
        self.db
            .conn
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of a query.
    pub fn rows(&self, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = self.db.conn.prepare(sql).expect("prepare");
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// `pdb_commit()`.
    pub fn commit(&self) -> Option<i64> {
        pdb_client::queue::commit(&self.db, None).expect("pdb_commit")
    }

    /// `pdb_sync()`.
    pub fn try_sync(&self) -> Result<pdb_client::sync::Summary, pdb_client::Error> {
        pdb_client::sync::sync_with(&self.db, &self.link)
    }

    /// `pdb_sync()`, which must succeed.
    pub fn sync(&self) -> pdb_client::sync::Summary {
        self.try_sync().unwrap_or_else(|e| panic!("pdb_sync: {e}"))
    }

    /// `pdb_push()`.
    pub fn push(&self) -> pdb_client::sync::Summary {
        pdb_client::sync::push_now_with(&self.db, &self.link).expect("pdb_push")
    }

    /// `pdb_pull()`.
    pub fn pull(&self) -> pdb_client::sync::Summary {
        pdb_client::sync::pull_now_with(&self.db, &self.link).expect("pdb_pull")
    }

    /// `pdb_status()`.
    pub fn status(&self) -> serde_json::Value {
        let s = pdb_client::sync::status_json(&self.db).expect("pdb_status");
        serde_json::from_str(&s).expect("status is JSON")
    }

    /// `pdb_verify()`.
    pub fn verify(&self) -> serde_json::Value {
        let s = pdb_client::sync::verify(&self.db).expect("pdb_verify");
        serde_json::from_str(&s).expect("verify is JSON")
    }

    /// `pdb_conflicts`, a JSON object per row (as `device::Device::conflicts`).
    pub fn conflicts(&self) -> Vec<serde_json::Value> {
        let mut stmt = self
            .db
            .conn
            .prepare(
                "SELECT json_object('id', id, 'table', table_name, 'pk', json(pk), 'base', json(base), \
                 'local', json(local), 'remote', json(remote), 'strategy', strategy, 'outcome', json(outcome), \
                 'status', status, 'reason', reason, 'local_id', local_id) FROM pdb_conflicts ORDER BY id",
            )
            .expect("conflicts query");
        stmt.query_map([], |r| r.get::<_, String>(0))
            .expect("conflicts")
            .map(|s| serde_json::from_str(&s.expect("row")).expect("json"))
            .collect()
    }

    /// Every row of `table`, exactly (`crate::dump`).
    pub fn dump(&self, table: &str) -> Vec<Vec<Vec<u8>>> {
        crate::dump(&self.db.conn, table)
    }

    /// `pdb_set_strategy(table, strategy)`.
    pub fn set_strategy(&self, table: &str, strategy: &str) {
        let s = pdb_client::sync::strategy::Strategy::parse(strategy, None)
            .unwrap_or_else(|e| panic!("strategy {strategy}: {e}"));
        pdb_client::sync::strategy::set(&self.db, table, &s).expect("pdb_set_strategy");
    }
}
