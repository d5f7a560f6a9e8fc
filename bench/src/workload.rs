//! The workload of the apply benchmarks: a seeded series of changesets over two tables
//! (`notes`, a rowid table, and `pairs`, WITHOUT ROWID with a composite key), recorded
//! by the session extension, with the source's final contents to check targets against.

use std::collections::HashSet;

use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::session::{ChangesetIter, Session};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crate::Res;

/// Seed of all generated data, so every run applies the same changesets.
pub const SEED: u64 = 0x5044_4241_5050_4c59;
/// Rows in `notes` before the first commit.
pub const INITIAL_NOTES: i64 = 2000;
/// Rows in `pairs` before the first commit.
pub const INITIAL_PAIRS: i64 = 500;

/// The two tables every changeset of this workload writes.
pub const DDL: &str = "
    CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT, stars INTEGER);
    CREATE TABLE pairs(a TEXT NOT NULL, b INTEGER NOT NULL, v TEXT, n INTEGER,
                       PRIMARY KEY(a, b)) WITHOUT ROWID;";

/// The tables and their dump queries, ordered by key.
pub const DUMPS: [&str; 2] = [
    "SELECT id, title, body, stars FROM notes ORDER BY id",
    "SELECT a, b, v, n FROM pairs ORDER BY a, b",
];

/// Xorshift64*: small, seedable, deterministic.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Text of `min..min + spread` characters from a small alphabet.
    pub fn text(&mut self, min: usize, spread: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
        let len = min + self.below(spread);
        (0..len)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }

    /// A `stars` value: an integer below 1000, or NULL one time in eight.
    pub fn stars(&mut self) -> Option<i64> {
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
pub struct Initial {
    /// `notes` rows: id, title, body, stars.
    pub notes: Vec<(i64, String, String, Option<i64>)>,
    /// `pairs` rows: a, b, v, n.
    pub pairs: Vec<(String, i64, String, Option<i64>)>,
}

impl Initial {
    /// Generates the initial rows from `rng`.
    pub fn generate(rng: &mut Rng) -> Initial {
        let notes = (1..=INITIAL_NOTES)
            .map(|id| (id, rng.text(20, 20), rng.text(100, 200), rng.stars()))
            .collect();
        let pairs = (0..INITIAL_PAIRS)
            .map(|i| (format!("k{:03}", i % 50), i, rng.text(10, 30), rng.stars()))
            .collect();
        Initial { notes, pairs }
    }

    /// Inserts the initial rows into `conn` (which holds [`DDL`]), in one transaction.
    pub fn load(&self, conn: &Connection) -> Res<()> {
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
pub fn record(
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

/// The number of changes in a changeset.
pub fn count_changes(cs: &[u8]) -> Res<usize> {
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
pub fn dump(conn: &Connection) -> Res<Vec<String>> {
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

/// The initial rows as one changeset of inserts, recorded by the session extension (the
/// first commit of a group whose later commits are [`record`]'s).
pub fn initial_changeset(init: &Initial) -> Res<Vec<u8>> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(DDL)?;
    let mut session = Session::new(&conn)?;
    session.attach::<&str>(None)?;
    init.load(&conn)?;
    let mut cs = Vec::new();
    session.changeset_strm(&mut cs)?;
    Ok(cs)
}
