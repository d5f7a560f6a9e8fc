//! The background worker of `pdb_sync_start()` (DESIGN §6): a thread with its own
//! connection that syncs whenever there is something to do, and sleeps otherwise.
//!
//! Two threads per database file:
//! - the **worker** runs [`super::sync`] on its connection, then waits on a condition
//!   variable until it is woken (a local commit, new remote commits, a stop) or a
//!   timeout passes: the poll interval when all went well (which catches commits made
//!   by other processes), a backoff that doubles with jitter while the witness cannot
//!   be reached or is busy (or its `Retry-After`). An error no retry can fix
//!   ([`Retry::Never`]) halts it, its reason in `pdb_status()`, until it is started
//!   again; one only the application's connection can get past ([`Retry::Application`])
//!   makes it wait for the applied head to move;
//! - the **watcher** long-polls the witness for commits after the applied head and
//!   wakes the worker when some arrive. It holds no database connection; on
//!   `pdb_sync_stop()` it ends when its current long-poll returns.
//!
//! Neither thread loops without blocking. The worker finishes the sync it is in before
//! stopping, so a stop never leaves a transaction half done; if the process exits
//! first, SQLite rolls back whatever transaction was open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::db::Db;
use crate::sync::{config, remote, status};
use crate::transport::Witness;
use crate::{Error, Retry};

/// Settings of a worker (`pdb_sync_start(options_json)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How long one long-poll for new remote commits waits.
    pub wait: Duration,
    /// How often an idle worker checks for commits made by other processes.
    pub poll: Duration,
    /// First delay after a failed sync.
    pub min_backoff: Duration,
    /// Longest delay between attempts while failing.
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wait: Duration::from_secs(20),
            poll: Duration::from_secs(2),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl Options {
    /// Reads `{"wait_ms":…, "poll_ms":…, "min_backoff_ms":…, "max_backoff_ms":…}`; every
    /// key is optional, unknown keys are refused.
    pub fn from_json(json: Option<&str>) -> Result<Options, Error> {
        let mut o = Options::default();
        let Some(json) = json else { return Ok(o) };
        let bad = |why: String| Error::Argument(format!("argument 1 (options_json): {why}"));
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("must be a JSON object".into()))?;
        for (k, v) in obj {
            let ms = v
                .as_u64()
                .filter(|&ms| ms > 0 && ms <= 3_600_000)
                .ok_or_else(|| {
                    bad(format!(
                        "\"{k}\" must be a number of milliseconds from 1 to 3600000"
                    ))
                })?;
            let d = Duration::from_millis(ms);
            match k.as_str() {
                "wait_ms" => o.wait = d,
                "poll_ms" => o.poll = d,
                "min_backoff_ms" => o.min_backoff = d,
                "max_backoff_ms" => o.max_backoff = d,
                _ => {
                    return Err(bad(format!(
                    "unknown key \"{k}\" (known: wait_ms, poll_ms, min_backoff_ms, max_backoff_ms)"
                )))
                }
            }
        }
        if o.min_backoff > o.max_backoff {
            return Err(bad("min_backoff_ms is larger than max_backoff_ms".into()));
        }
        Ok(o)
    }
}

/// What wakes a sleeping worker.
#[derive(Default)]
struct Signal {
    state: Mutex<Flags>,
    cond: Condvar,
}

#[derive(Default)]
struct Flags {
    wake: bool,
    stop: bool,
    /// The worker stopped by itself, on an error no retry fixes.
    halted: bool,
}

impl Signal {
    fn set(&self, f: impl FnOnce(&mut Flags)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.cond.notify_all();
    }

    fn stopped(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop
    }

    fn halted(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).halted
    }

    /// Waits up to `timeout` for a stop, or also for a wake (which it consumes) when
    /// `wake_too`.
    fn wait(&self, timeout: Duration, wake_too: bool) -> Woke {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.stop {
                return Woke::Stop;
            }
            if wake_too && s.wake {
                s.wake = false;
                return Woke::Wake;
            }
            let now = Instant::now();
            if now >= deadline {
                return Woke::Timeout;
            }
            s = self
                .cond
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Why [`Signal::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Stop,
    Wake,
    Timeout,
}

/// A running worker.
struct Running {
    signal: Arc<Signal>,
    thread: JoinHandle<()>,
    options: Options,
}

fn workers() -> &'static Mutex<HashMap<String, Running>> {
    static W: OnceLock<Mutex<HashMap<String, Running>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Starts a worker for the database file `path`, whose connection `open` makes on the
/// worker's thread. Returns false when one already runs for that file; a halted one is
/// replaced.
pub fn start<C, F>(path: &str, options: Options, open: F) -> Result<bool, Error>
where
    C: Db,
    F: FnOnce() -> Result<C, Error> + Send + 'static,
{
    start_via(path, options, open, None)
}

/// The witness a worker talks to instead of the stored target's HTTP witness.
pub type SharedWitness = Arc<dyn Witness + Send + Sync>;

/// [`start`] with a worker (and its watcher) talking to `witness`.
pub fn start_with<C, F>(
    path: &str,
    options: Options,
    open: F,
    witness: SharedWitness,
) -> Result<bool, Error>
where
    C: Db,
    F: FnOnce() -> Result<C, Error> + Send + 'static,
{
    start_via(path, options, open, Some(witness))
}

fn start_via<C, F>(
    path: &str,
    options: Options,
    open: F,
    witness: Option<SharedWitness>,
) -> Result<bool, Error>
where
    C: Db,
    F: FnOnce() -> Result<C, Error> + Send + 'static,
{
    if path.is_empty() {
        return Err(Error::Argument(
            "pdb_sync_start() needs a database file: the worker opens its own connection to it"
                .into(),
        ));
    }
    let mut all = workers().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = all.get(path) {
        if !r.thread.is_finished() && !r.signal.halted() {
            return Ok(false);
        }
    }
    // A halted worker's thread is on its way out: it must be gone before the new one
    // reports itself, or its last status update would land after the new one's.
    if let Some(old) = all.remove(path) {
        let _ = old.thread.join();
    }
    status::update(path, |s| {
        s.worker = true;
        s.halted = None;
    });
    let signal = Arc::new(Signal::default());
    let (sig, p) = (signal.clone(), path.to_string());
    let thread = std::thread::Builder::new()
        .name("pdb-sync".into())
        .spawn(move || {
            let outcome = open().map(|conn| run(&conn, &sig, options, &p, witness));
            status::update(&p, |s| {
                s.worker = false;
                if let Err(e) = outcome {
                    s.last_error =
                        Some(format!("the sync worker could not open the database: {e}"));
                }
            });
        })
        .map_err(|e| {
            status::update(path, |s| s.worker = false);
            Error::Busy(format!("cannot start the sync worker thread: {e}"))
        })?;
    all.insert(
        path.to_string(),
        Running {
            signal,
            thread,
            options,
        },
    );
    Ok(true)
}

/// Stops the worker of `path` and waits for it to finish its current sync. Returns
/// false when none was running (a halted one is forgotten, its reason cleared).
pub fn stop(path: &str) -> bool {
    let running = workers()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(path);
    let Some(r) = running else { return false };
    let halted = r.signal.halted();
    r.signal.set(|f| f.stop = true);
    let _ = r.thread.join();
    status::update(path, |s| s.halted = None);
    !halted
}

/// The options of the worker of `path` if it halted (so that `pdb_open` with a new
/// token can start it again as it was).
pub fn halted(path: &str) -> Option<Options> {
    let all = workers().lock().unwrap_or_else(|e| e.into_inner());
    all.get(path)
        .filter(|r| r.signal.halted())
        .map(|r| r.options)
}

/// Wakes the worker of `path`, if any (after a local commit).
pub fn notify(path: &str) {
    if let Some(r) = workers()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
    {
        r.signal.set(|f| f.wake = true);
    }
}

/// A pseudo-random factor in [0.5, 1.5) for backoff jitter, without a dependency: the
/// low bits of the clock are noise enough to keep devices from retrying in lockstep.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = (u64::from(nanos)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    0.5 + (mixed as f64) / ((1u64 << 24) as f64)
}

/// How long an idle worker sleeps when nothing wakes it: a heartbeat sync.
const HEARTBEAT: Duration = Duration::from_secs(300);

/// The longest `Retry-After` obeyed: a witness asking for more still gets a try then.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The applied seq, read fresh: it moves when another connection synced.
fn applied_seq<C: Db>(conn: &C) -> Option<u64> {
    let cfg = config::load(conn).ok()?;
    config::head(conn, &cfg.group).ok().map(|(seq, _)| seq)
}

/// Records why the worker of `path` halts, for `pdb_status()`.
fn record_halt(path: &str, e: &Error) {
    let why = serde_json::json!({
        "code": e.code(),
        "error": e.to_string(),
        "at": crate::capture::now_ms(),
    });
    status::update(path, |s| {
        s.worker = false;
        s.halted = Some(why);
    });
}

fn run<C: Db>(
    conn: &C,
    signal: &Arc<Signal>,
    o: Options,
    path: &str,
    witness: Option<SharedWitness>,
) {
    let head = Arc::new(AtomicU64::new(0));
    let mut watcher: Option<JoinHandle<()>> = None;
    let mut backoff = o.min_backoff;
    loop {
        let result = match &witness {
            Some(w) => super::sync_with(conn, &**w),
            None => super::sync(conn),
        };
        // Set while only the application's connection can get past the error: the
        // applied seq then, which moves when it did.
        let mut waiting_at = None;
        let delay = match &result {
            Ok(sum) => {
                head.store(sum.head.0, Ordering::Release);
                backoff = o.min_backoff;
                HEARTBEAT
            }
            Err(e) => match e.retry() {
                Retry::Never => {
                    // Flag first: a start that sees it replaces this thread.
                    signal.set(|f| {
                        f.halted = true;
                        f.stop = true;
                    });
                    record_halt(path, e);
                    return;
                }
                Retry::Later(after) => {
                    let d = match after {
                        Some(after) => after.min(MAX_RETRY_AFTER),
                        None => backoff.mul_f64(jitter()),
                    };
                    backoff = (backoff * 2).min(o.max_backoff);
                    d
                }
                Retry::Application => {
                    waiting_at = Some(applied_seq(conn));
                    HEARTBEAT
                }
            },
        };
        // The watcher needs the stored target, which may appear only after pdb_open.
        if !watcher.as_ref().is_some_and(|w| !w.is_finished()) {
            if let Ok(cfg) = config::load(conn) {
                let (sig, h, w) = (signal.clone(), head.clone(), witness.clone());
                watcher = std::thread::Builder::new()
                    .name("pdb-watch".into())
                    .spawn(move || match w {
                        Some(w) => watch_with(&*w, &sig, &h, o),
                        None => watch(&cfg, &sig, &h, o),
                    })
                    .ok();
            }
        }
        // While failing, only a stop cuts the backoff short: an application committing
        // in a loop must not turn an offline worker into a retry loop. While healthy,
        // a wake ends the sleep, and every `poll` the queue is checked for commits made
        // by other processes, which cannot wake this thread. Waiting for the
        // application, only the applied seq moving (its sync went through) ends it early.
        let healthy = result.is_ok();
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match signal.wait(left.min(o.poll), healthy) {
                Woke::Stop => return,
                Woke::Wake => break,
                Woke::Timeout if healthy && has_unsent(conn) => break,
                Woke::Timeout if waiting_at.is_some_and(|at| at != applied_seq(conn)) => break,
                Woke::Timeout => {}
            }
        }
    }
}

/// Whether local commits wait to be sent (cheap: one indexed count).
fn has_unsent<C: Db>(conn: &C) -> bool {
    super::unsent(conn).is_ok_and(|n| n > 0)
}

/// Long-polls for commits after the applied head and wakes the worker when some come.
fn watch(cfg: &config::Config, signal: &Signal, head: &AtomicU64, o: Options) {
    // The worker reports a bad CA file; without a client there is nothing to watch.
    let Ok(remote) = remote(cfg) else { return };
    watch_with(&remote, signal, head, o);
}

/// [`watch`] on any witness.
fn watch_with(remote: &dyn Witness, signal: &Signal, head: &AtomicU64, o: Options) {
    let mut seen = 0;
    let mut backoff = o.min_backoff;
    while !signal.stopped() {
        let after = head.load(Ordering::Acquire).max(seen);
        let failed = match remote.pull(after, 1, o.wait) {
            Ok(Ok(page)) => {
                backoff = o.min_backoff;
                if !page.commits.is_empty() {
                    seen = page.head.0;
                    signal.set(|f| f.wake = true);
                }
                continue;
            }
            Ok(Err(r)) => Error::Rejected(r),
            Err(e) => Error::Transport(e),
        };
        // The worker reports errors; the watcher only waits and retries.
        let delay = match failed.retry() {
            // The worker meets the same refusal and halts; if not, its next good sync
            // starts a new watcher with the stored (maybe new) token.
            Retry::Never => return,
            Retry::Later(Some(after)) => after.min(MAX_RETRY_AFTER),
            Retry::Later(None) | Retry::Application => backoff.mul_f64(jitter()),
        };
        if signal.wait(delay, false) == Woke::Stop {
            return;
        }
        backoff = (backoff * 2).min(o.max_backoff);
    }
}
