//! Fuzz target: the client's pull path, `pdb_client::sync::rebase::integrate`, fed 1–4
//! remote commits whose payloads come from the input, on a device database with local
//! changes pending, so that the rebase's undo, apply and redo all run (DESIGN §6).
//!
//! The device (built once; restored by page copy after an input that integrate
//! applied, a refused one must leave it as it was): the tables of
//! `fuzz/pulled/base.sql`, both tracked, whose rows arrived as the group's certified
//! commit 1 (this device's own first commit, confirmed by its idempotency key); then
//! the edits of `fuzz/pulled/local.sql`: two queued local commits and uncommitted
//! edits, on disjoint rows.
//!
//! Input: byte 0 says, two bits per commit (commit i: bits 2i and 2i+1), whose
//! idempotency key the commit carries: 1 = queued commit 1's, 2 = queued commit 2's
//! (the witness certified that local commit: it leaves the queue), 0 or 3 = a key of its
//! own. Byte 1 picks the conflict strategies: bits 0–1 for `t`, bits 2–3 for `w`, each
//! 0 = default (column-merge), 1 = remote-wins, 2 = local-wins, 3 = manual. The rest
//! is split at the first three `|next|` into the payloads of commits 2, 3, ... (a
//! missing byte reads as 0; an input of two bytes or fewer is one empty payload).
//!
//! The target certifies the commits itself with a fixed Ed25519 key that the device
//! pins, with correct heads and changeset hashes, so that verification passes and the
//! payloads are what gets tested. Each certificate's `state` is the digest of a scratch
//! copy of the device's tables at head 1 (base.sql alone, checked to equal them) after
//! `apply`ing the payloads so far under `abort`, in a transaction rolled back after the
//! input; once a payload fails to apply there, this and later commits carry a fixed
//! state no table content has (all zero).
//!
//! What must hold (DESIGN §7: 5 nothing unverified is applied, 6 the host survives,
//! 2 no lost write, 1 convergence), each exact, so that a failure is a defect:
//! - integrate never panics, and leaves the connection in autocommit mode with
//!   `defer_foreign_keys` off.
//! - It never refuses the certificates (they are valid), and SQLite never refuses a
//!   statement integrate writes itself (`SQLITE_ERROR`, `MISUSE`, `RANGE`).
//! - When the scratch apply failed, integrate fails (its certified state can only
//!   match if the device applied what the scratch copy could not).
//! - When it fails, every row of every table (the main and temp schemas, the
//!   user tables, `pdb_shadow_*`, `pdb_upload_queue`, `pdb_commits`, `pdb_local`,
//!   `pdb_conflicts`, sqlite_sequence, ...) is exactly as before.
//! - Where the scratch apply succeeded, integrate may still refuse what no witness
//!   certifies (a table spelled otherwise than the tracked one, a narrower table, a
//!   change without its key): such refusals are only counted.
//! - When it succeeds:
//!   - the result and `pdb_local` name the last commit as head; `pdb_commits` holds
//!     exactly commits 1..=last, each the certificate sent, with `local_id` set where
//!     a commit first confirmed a queued one; `pdb_verify()` passes;
//!   - the stored state vector is the scratch copy's;
//!   - confirmed queued commits left the queue; the others are gone (nothing left to
//!     send) or rebased: on the new head, hash of their changeset, same key;
//!   - the pending changes are exactly the difference between the certified head and
//!     the tables: undoing the uncommitted edits, then the queued commits newest first
//!     (each inverted and applied under `abort`), leaves the user tables row for row,
//!     value for value (by their record encoding, as the state digest reads them)
//!     equal to the scratch copy. Every pending or queued change names a row of its
//!     own step: nothing remote shows up as a local change;
//!   - no lost write: each local step's row (B → L) that is not confirmed either
//!     survives in the tables as rebase's own test has it (the row exists if and only
//!     if L does, and every column the write changed has L's value) or is recorded in
//!     `pdb_conflicts`; the number of conflict rows is the number integrate reports.
//!
//! `PDB_FUZZ_STATS=1` prints outcome counts every 10,000 inputs; `PDB_FUZZ_STATS=each`
//! prints every input's outcome.
#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use pdb_client::apply::{apply, OnConflict};
use pdb_client::cert::{genesis, hex, next_head, Certificate, Hash};
use pdb_client::changeset::{invert, parse};
use pdb_client::rows::{key_bytes, key_columns, key_of, key_to_json, Row, Rows};
use pdb_client::schema::TableInfo;
use pdb_client::sync::config::{self, Config};
use pdb_client::sync::rebase::{integrate, survived};
use pdb_client::sync::strategy::{self, Strategy};
use pdb_client::transport::Pulled;
use pdb_client::value::decode_field;
use pdb_client::{capture, history, queue, Error, Value, ValueRef};
use pdb_fuzz::{
    dump, dump_queries, error_kind, open, pragma, refused_statement, restore, show, stats_level,
    Conn, Dump, Tables,
};
use rusqlite::OptionalExtension;

const BASE_SQL: &str = include_str!("../pulled/base.sql");
const LOCAL_SQL: &str = include_str!("../pulled/local.sql");

const GROUP: &str = "g";
/// The fixed witness key (any 32 bytes are an Ed25519 secret key).
const WITNESS_SECRET: [u8; 32] = [0x5a; 32];
/// Separates payloads in the input.
const SEP: &[u8] = b"|next|";
/// At most this many remote commits per input.
const MAX_COMMITS: usize = 4;
/// The state certified for a commit the scratch copy could not apply.
const NO_STATE: Hash = [0; 32];
const COMMITTED_AT: i64 = 1_700_000_000_000;

/// A row of `pdb_upload_queue`: id, changeset, hash, idempotency_key, base_seq,
/// base_head, pushed_seq, dead.
type QueueRow = (
    i64,
    Vec<u8>,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// A row one local step changed: B (at head 1) and L (after the step).
struct LocalRow {
    table: usize,
    /// Key as stored.
    key: Vec<Value>,
    base: Option<Row>,
    local: Option<Row>,
    /// Index into `Target::queued`, or `None` for the uncommitted edits.
    step: Option<usize>,
}

/// A queued local commit of the device template.
struct QueuedCommit {
    id: i64,
    key: String,
}

#[derive(Default)]
struct Stats {
    runs: u64,
    ok: u64,
    refused_scratch_failed: u64,
    refused_scratch_ok: BTreeMap<String, u64>,
    confirmed: u64,
    conflicts: u64,
}

struct Target {
    key: SigningKey,
    cfg: Config,
    infos: Vec<TableInfo>,
    /// Head of commit 1.
    head1: Hash,
    /// The device as integrate must find it.
    dev_tpl: Conn,
    db: Conn,
    /// `db` may differ from `dev_tpl` (integrate applied the last input).
    dirty: bool,
    /// The tables of base.sql, untracked: the device's tables at head 1.
    scratch: Conn,
    queued: Vec<QueuedCommit>,
    local_rows: Vec<LocalRow>,
    /// Every table of the device, the schemas (main and temp) first.
    all_queries: Vec<String>,
    /// The tracked tables.
    user_queries: Vec<String>,
    /// The device before integrate, by strategy byte.
    before: HashMap<u8, Dump>,
    stats: Stats,
    /// `PDB_FUZZ_STATS`: 0 unset, 1 counts, 2 each input.
    print_stats: u8,
}

thread_local! {
    static TARGET: RefCell<Option<Target>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    TARGET.with(|t| {
        let mut t = t.borrow_mut();
        t.get_or_insert_with(Target::new).check(data);
    })
});

/// The payloads of an input (after its two control bytes): 1 to [`MAX_COMMITS`].
fn split(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while out.len() < MAX_COMMITS - 1 {
        let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) else {
            break;
        };
        out.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    out.push(rest);
    out
}

fn strategy_of(bits: u8) -> Option<Strategy> {
    match bits & 3 {
        1 => Some(Strategy::RemoteWins),
        2 => Some(Strategy::LocalWins),
        3 => Some(Strategy::Manual),
        _ => None,
    }
}

impl Target {
    fn new() -> Target {
        let key = SigningKey::from_bytes(&WITNESS_SECRET);
        let db = open();
        db.execute_batch(BASE_SQL).expect("base.sql");
        for table in ["t", "w"] {
            capture::track(&db, table).expect("track");
        }
        config::open(
            &db,
            "http://127.0.0.1:9",
            GROUP,
            "token",
            &hex(&key.verifying_key().to_bytes()),
        )
        .expect("pdb_open");
        let cfg = config::load(&db).expect("config");
        let infos: Vec<TableInfo> = capture::tracked(&db)
            .expect("tracked")
            .into_iter()
            .map(|t| t.info)
            .collect();

        // The base rows, tracked after they were written, are this device's first
        // commit; the witness certifies it as commit 1 and the pull confirms it.
        let id = queue::commit(&db, None)
            .expect("commit the base rows")
            .expect("base rows pending");
        let (changeset, idem): (Vec<u8>, String) = db
            .query_row(
                "SELECT changeset, idempotency_key FROM pdb_upload_queue WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("queued base commit");
        let state = history::state_of(&db, &infos).expect("state").digest();
        let prev = genesis(GROUP);
        let ch = *blake3::hash(&changeset).as_bytes();
        let head1 = next_head(&prev, 1, &ch);
        let cert = Certificate::sign(&key, GROUP, 1, prev, head1, state, ch, &idem, COMMITTED_AT);
        let r = integrate(&db, &cfg, &[Pulled { cert, changeset }], None).expect("commit 1");
        assert_eq!((r.confirmed, r.head), (1, (1, head1)), "commit 1: {r:?}");
        assert!(
            queue::pending_changeset(&db).expect("pending").is_none(),
            "commit 1 left changes pending"
        );
        let mut head_tpl = open();
        restore(&db, &mut head_tpl);

        let sections: Vec<&str> = LOCAL_SQL.split("-- pdb_commit()\n").collect();
        let mut queued = Vec::new();
        for (i, sql) in sections.iter().enumerate() {
            db.execute_batch(sql).expect("local.sql");
            if i + 1 < sections.len() {
                let id = queue::commit(&db, None)
                    .expect("pdb_commit")
                    .expect("local.sql section changed nothing");
                let key: String = db
                    .query_row(
                        "SELECT idempotency_key FROM pdb_upload_queue WHERE id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .expect("queued commit");
                queued.push(QueuedCommit { id, key });
            }
        }
        assert!(queued.len() >= 2, "local.sql has fewer than two commits");
        let uncommitted = queue::pending_changeset(&db)
            .expect("pending")
            .expect("local.sql left nothing uncommitted");

        // Each step's rows with their B (head 1) and L (the device now).
        let mut steps: Vec<(Option<usize>, Vec<u8>)> = Vec::new();
        for (i, q) in queued.iter().enumerate() {
            let cs: Vec<u8> = db
                .query_row(
                    "SELECT changeset FROM pdb_upload_queue WHERE id = ?1",
                    [q.id],
                    |r| r.get(0),
                )
                .expect("queued changeset");
            steps.push((Some(i), cs));
        }
        steps.push((None, uncommitted));
        let mut local_rows = Vec::new();
        let mut seen = BTreeSet::new();
        for (step, cs) in &steps {
            for (t, key) in touched(&infos, cs).expect("local changeset") {
                let base = row(&head_tpl, &infos[t], &key);
                let local = row(&db, &infos[t], &key);
                let stored = key_of(&infos[t], local.as_ref().or(base.as_ref()).expect("row"));
                assert!(
                    seen.insert((t, key_bytes(&stored))),
                    "local.sql: two steps change {} {stored:?}",
                    infos[t].name
                );
                local_rows.push(LocalRow {
                    table: t,
                    key: stored,
                    base,
                    local,
                    step: *step,
                });
            }
        }

        let dev_tpl = db;
        let mut db = open();
        restore(&dev_tpl, &mut db);
        let all_queries = dump_queries(
            &db,
            Tables::All {
                schema: None,
                temp: true,
            },
        );
        let user_queries = dump_queries(&db, Tables::Only(&["t", "w"]));
        let scratch = open();
        scratch.execute_batch(BASE_SQL).expect("base.sql");
        assert!(
            dump(&scratch, &user_queries) == dump(&head_tpl, &user_queries),
            "commit 1 did not leave the tables as base.sql has them"
        );
        Target {
            key,
            cfg,
            infos,
            head1,
            dev_tpl,
            db,
            dirty: false,
            scratch,
            queued,
            local_rows,
            all_queries,
            user_queries,
            before: HashMap::new(),
            stats: Stats::default(),
            print_stats: stats_level(),
        }
    }

    fn check(&mut self, data: &[u8]) {
        let keys_byte = data.first().copied().unwrap_or(0);
        let strategies = data.get(1).copied().unwrap_or(0) & 0x0f;
        let payloads = split(data.get(2..).unwrap_or_default());

        // The certified states, from the scratch copy.
        self.scratch.execute_batch("BEGIN").expect("BEGIN");
        let mut states = Vec::with_capacity(payloads.len());
        let mut scratch_ok = true;
        for p in &payloads {
            scratch_ok = scratch_ok && apply(&self.scratch, p, OnConflict::Abort).is_ok();
            states.push(if scratch_ok {
                history::state_of(&self.scratch, &self.infos)
                    .expect("scratch state")
                    .digest()
            } else {
                NO_STATE
            });
        }

        // The commits, certified; which queued commit each confirms.
        let mut commits = Vec::with_capacity(payloads.len());
        let mut claims: Vec<Option<usize>> = Vec::with_capacity(payloads.len());
        let mut prev = self.head1;
        for (i, p) in payloads.iter().enumerate() {
            let seq = 2 + i as u64;
            let claim = match (keys_byte >> (2 * i)) & 3 {
                1 => Some(0),
                2 => Some(1),
                _ => None,
            };
            let idem = match claim {
                Some(q) => self.queued[q].key.clone(),
                None => format!("remote-{seq}"),
            };
            let ch = *blake3::hash(p).as_bytes();
            let head = next_head(&prev, seq, &ch);
            let cert = Certificate::sign(
                &self.key,
                GROUP,
                seq,
                prev,
                head,
                states[i],
                ch,
                &idem,
                COMMITTED_AT + seq as i64,
            );
            commits.push(Pulled {
                cert,
                changeset: p.to_vec(),
            });
            claims.push(claim);
            prev = head;
        }

        if self.dirty {
            restore(&self.dev_tpl, &mut self.db);
            self.dirty = false;
        }
        self.db
            .execute_batch("DELETE FROM pdb_strategies")
            .expect("strategies");
        for (table, bits) in [("t", strategies), ("w", strategies >> 2)] {
            if let Some(s) = strategy_of(bits) {
                strategy::set(&self.db, table, &s).expect("pdb_set_strategy");
            }
        }
        if !self.before.contains_key(&strategies) {
            let d = dump(&self.db, &self.all_queries);
            self.before.insert(strategies, d);
        }

        let result = integrate(&self.db, &self.cfg, &commits, None);
        let ctx = format!(
            "{} commits, keys {keys_byte:#04x}, strategies {strategies:#03x}, scratch apply {}, result: {result:?}",
            commits.len(),
            if scratch_ok { "ok" } else { "failed" }
        );
        if self.print_stats == 2 {
            eprintln!("pulled_history: {ctx}");
        }
        assert!(self.db.is_autocommit(), "{ctx}: left a transaction open");
        assert_eq!(
            pragma(&self.db, "defer_foreign_keys"),
            0,
            "{ctx}: left defer_foreign_keys on"
        );
        match &result {
            Err(e) => {
                assert!(
                    !matches!(e, Error::Chain(_)),
                    "{ctx}: refused valid certificates"
                );
                if let Some(code) = refused_statement(e) {
                    panic!("{ctx}: SQLite refused a statement of integrate (code {code})");
                }
                let after = dump(&self.db, &self.all_queries);
                assert!(
                    after == self.before[&strategies],
                    "{ctx}: failed but changed the database"
                );
                if scratch_ok {
                    let kind = error_kind(e, 50);
                    *self.stats.refused_scratch_ok.entry(kind).or_default() += 1;
                } else {
                    self.stats.refused_scratch_failed += 1;
                }
            }
            Ok(r) => {
                self.dirty = true;
                assert!(
                    scratch_ok,
                    "{ctx}: applied commits that do not apply to head 1"
                );
                self.check_ok(r, &commits, &claims, &ctx);
                self.stats.ok += 1;
                self.stats.confirmed += r.confirmed as u64;
                self.stats.conflicts += r.conflicts as u64;
            }
        }
        self.scratch.execute_batch("ROLLBACK").expect("ROLLBACK");
        self.stats.runs += 1;
        if self.print_stats == 1 && self.stats.runs.is_multiple_of(10_000) {
            let s = &self.stats;
            eprintln!(
                "pulled_history: {} runs, {} applied ({} confirmed, {} conflicts), \
                 {} refused (scratch failed), refused with scratch ok: {:?}",
                s.runs,
                s.ok,
                s.confirmed,
                s.conflicts,
                s.refused_scratch_failed,
                s.refused_scratch_ok
            );
        }
    }

    fn check_ok(
        &self,
        r: &pdb_client::sync::rebase::Integrated,
        commits: &[Pulled],
        claims: &[Option<usize>],
        ctx: &str,
    ) {
        let db = &self.db;
        let last = commits.last().expect("one commit at least");
        let n = commits.len();
        let head = (last.cert.seq, last.cert.head);
        assert_eq!(r.pulled, n, "{ctx}: pulled");
        assert_eq!(r.head, head, "{ctx}: head in the result");
        assert_eq!(
            config::head(db, GROUP).expect("head"),
            head,
            "{ctx}: head in pdb_local"
        );

        // The certificates, and which queued commit each confirmed.
        let mut confirmed: BTreeMap<usize, u64> = BTreeMap::new();
        for (p, claim) in commits.iter().zip(claims) {
            if let Some(q) = claim {
                confirmed.entry(*q).or_insert(p.cert.seq);
            }
        }
        assert_eq!(r.confirmed, confirmed.len(), "{ctx}: confirmed");
        let count: i64 = db
            .query_row("SELECT count(*) FROM pdb_commits", [], |r| r.get(0))
            .expect("pdb_commits");
        assert_eq!(count as usize, n + 1, "{ctx}: rows of pdb_commits");
        for p in commits {
            let seq = p.cert.seq;
            let stored = pdb_client::sync::certificate(db, seq as i64).expect("certificate");
            assert_eq!(
                stored.as_ref(),
                Some(&p.cert),
                "{ctx}: stored certificate {seq}"
            );
            let local_id: Option<i64> = db
                .query_row(
                    "SELECT local_id FROM pdb_commits WHERE seq = ?1",
                    [seq as i64],
                    |r| r.get(0),
                )
                .expect("local_id");
            let expected = confirmed
                .iter()
                .find(|(_, s)| **s == seq)
                .map(|(q, _)| self.queued[*q].id);
            assert_eq!(local_id, expected, "{ctx}: local_id of commit {seq}");
        }
        if let Err(e) = pdb_client::sync::verify(db) {
            panic!("{ctx}: pdb_verify fails after the pull: {e}");
        }
        let state = config::state(db).expect("state vector");
        let scratch_state = history::state_of(&self.scratch, &self.infos).expect("state");
        assert!(
            state == scratch_state,
            "{ctx}: stored state vector {state:?} is not the head's {scratch_state:?}"
        );

        // The queue: confirmed commits gone, the others gone or rebased onto the head.
        let rows: Vec<QueueRow> = db
            .prepare(
                "SELECT id, changeset, hash, idempotency_key, base_seq, base_head, pushed_seq, dead \
                 FROM pdb_upload_queue ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                })?
                .collect()
            })
            .expect("pdb_upload_queue");
        let mut queued_after: Vec<(usize, Vec<u8>)> = Vec::new();
        for (id, cs, hash, idem, base_seq, base_head, pushed, dead) in rows {
            let Some(q) = self.queued.iter().position(|q| q.id == id) else {
                panic!("{ctx}: queue row {id} is new");
            };
            assert!(
                !confirmed.contains_key(&q),
                "{ctx}: queued commit {id} was confirmed but is still queued"
            );
            assert_eq!(idem, self.queued[q].key, "{ctx}: key of queued commit {id}");
            assert_eq!(
                (base_seq as u64, base_head.as_deref()),
                (head.0, Some(hex(&head.1).as_str())),
                "{ctx}: base of rebased commit {id}"
            );
            assert_eq!(
                hash,
                hex(blake3::hash(&cs).as_bytes()),
                "{ctx}: hash of rebased commit {id}"
            );
            assert_eq!((pushed, dead), (None, None), "{ctx}: queued commit {id}");
            assert!(!cs.is_empty(), "{ctx}: queued commit {id} is empty");
            queued_after.push((q, cs));
        }

        // No lost write.
        let conflicts: i64 = db
            .query_row("SELECT count(*) FROM pdb_conflicts", [], |r| r.get(0))
            .expect("pdb_conflicts");
        assert_eq!(conflicts as usize, r.conflicts, "{ctx}: conflict rows");
        for lr in &self.local_rows {
            if lr.step.is_some_and(|q| confirmed.contains_key(&q)) {
                continue;
            }
            let info = &self.infos[lr.table];
            let now = row(db, info, &lr.key);
            if survived(lr.base.as_ref(), lr.local.as_ref(), now.as_ref()) {
                continue;
            }
            let pk = key_to_json(&lr.key).to_string();
            let recorded: Option<i64> = db
                .query_row(
                    "SELECT id FROM pdb_conflicts WHERE table_name = ?1 AND pk = ?2",
                    [info.name.as_str(), pk.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .expect("pdb_conflicts");
            assert!(
                recorded.is_some(),
                "{ctx}: the local write {} {pk}: {:?} -> {:?} was lost: the row is {now:?} and pdb_conflicts has nothing",
                info.name,
                lr.base,
                lr.local
            );
        }

        // Pending changes name only their own step's rows, and undoing them leaves the
        // tables at the certified head.
        let uncommitted = queue::pending_changeset(db).expect("pending");
        let own = |step: Option<usize>, cs: &[u8], what: &str| {
            let rows = touched(&self.infos, cs)
                .unwrap_or_else(|e| panic!("{ctx}: {what} does not parse: {e}"));
            for (t, key) in rows {
                let stored = row(db, &self.infos[t], &key)
                    .or_else(|| row(&self.scratch, &self.infos[t], &key))
                    .map_or(key, |r| key_of(&self.infos[t], &r));
                let kb = key_bytes(&stored);
                assert!(
                    self.local_rows
                        .iter()
                        .any(|lr| lr.step == step && lr.table == t && key_bytes(&lr.key) == kb),
                    "{ctx}: {what} changes {} {stored:?}, which that step did not",
                    self.infos[t].name
                );
            }
        };
        if let Some(cs) = &uncommitted {
            own(None, cs, "the uncommitted changeset");
        }
        for (q, cs) in &queued_after {
            own(
                Some(*q),
                cs,
                &format!("queued commit {}", self.queued[*q].id),
            );
        }
        db.execute_batch("BEGIN").expect("BEGIN");
        let undo = |cs: &[u8], what: &str| {
            let inverse = invert(cs).unwrap_or_else(|e| panic!("{ctx}: {what}: {e}"));
            if let Err(e) = apply(db, &inverse, OnConflict::Abort) {
                panic!("{ctx}: {what} cannot be undone: {e}");
            }
        };
        if let Some(cs) = &uncommitted {
            undo(cs, "the uncommitted changeset");
        }
        for (q, cs) in queued_after.iter().rev() {
            undo(cs, &format!("queued commit {}", self.queued[*q].id));
        }
        let undone = dump(db, &self.user_queries);
        let expected = dump(&self.scratch, &self.user_queries);
        if undone != expected {
            panic!(
                "{ctx}: the tables minus the pending changes are not the certified head:\n{}\nexpected\n{}",
                show(db, &self.user_queries),
                show(&self.scratch, &self.user_queries)
            );
        }
        db.execute_batch("ROLLBACK").expect("ROLLBACK");
    }
}

/// The rows a changeset names: (index into `infos`, key as written). Errors for a
/// table not in `infos` or a change without its key.
fn touched(infos: &[TableInfo], cs: &[u8]) -> Result<Vec<(usize, Vec<Value>)>, String> {
    let mut out = Vec::new();
    for (h, changes) in parse(cs).map_err(|e| e.to_string())? {
        let t = infos
            .iter()
            .position(|i| i.name == h.name && i.pk_flags() == h.pk)
            .ok_or_else(|| format!("table {:?} with key flags {:?}", h.name, h.pk))?;
        let cols = key_columns(&infos[t]);
        for c in &changes {
            let key: Option<Vec<Value>> = cols
                .iter()
                .map(|&i| decode_field(c.key_record()[i]).map(ValueRef::to_owned))
                .collect();
            out.push((t, key.ok_or("a change without its key")?));
        }
    }
    Ok(out)
}

fn row(db: &Conn, info: &TableInfo, key: &[Value]) -> Option<Row> {
    Rows::new(db, info).get(key).expect("read a row")
}
