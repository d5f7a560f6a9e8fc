//! The state digest of DESIGN §4: a homomorphic set hash (LtHash) over every row of the
//! tracked tables, so a commit updates it in O(rows changed) and any two databases with
//! the same rows have the same digest whatever their file layout.

use crate::cert::Hash;
use crate::db::{Db, Stmt};
use crate::schema::{put_str, quote, TableInfo};
use crate::value::ValueRef;
use crate::Error;

/// Number of 16-bit lanes in the vector.
pub const LANES: usize = 1024;

/// The state vector: the lane-wise sum (mod 2^16) of the elements of all rows.
#[derive(Clone, PartialEq, Eq)]
pub struct StateVector {
    lanes: Box<[u16; LANES]>,
}

impl Default for StateVector {
    fn default() -> Self {
        StateVector {
            lanes: Box::new([0; LANES]),
        }
    }
}

impl std::fmt::Debug for StateVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateVector({})", crate::cert::hex(&self.digest()))
    }
}

/// The encoding a row's element is derived from: `str(table)` then each value in
/// changeset record format.
pub fn row_encoding(table: &str, values: &[ValueRef<'_>]) -> Vec<u8> {
    let mut enc = Vec::with_capacity(64);
    put_str(&mut enc, table);
    for v in values {
        v.encode(&mut enc);
    }
    enc
}

/// Appends a row's encoding (see [`row_encoding`]) to `out`.
pub fn encode_row_into(out: &mut Vec<u8>, table: &str, values: &[ValueRef<'_>]) {
    put_str(out, table);
    for v in values {
        v.encode(out);
    }
}

/// A row's element: 2048 bytes of BLAKE3 output over `"pdb/v1 row" || encoding`.
fn element(table: &str, values: &[ValueRef<'_>]) -> [u8; 2 * LANES] {
    element_of(&row_encoding(table, values))
}

fn element_of(encoding: &[u8]) -> [u8; 2 * LANES] {
    let mut h = blake3::Hasher::new();
    h.update(b"pdb/v1 row");
    h.update(encoding);
    let mut out = [0u8; 2 * LANES];
    h.finalize_xof().fill(&mut out);
    out
}

/// Rows handed to a hashing thread at a time (bytes of encodings, about).
const BATCH: usize = 256 << 10;

impl StateVector {
    /// The empty database's vector (all zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a row that now exists.
    pub fn add_row(&mut self, table: &str, values: &[ValueRef<'_>]) {
        self.add_element(&element(table, values));
    }

    fn add_element(&mut self, e: &[u8; 2 * LANES]) {
        for (lane, pair) in self.lanes.iter_mut().zip(e.chunks_exact(2)) {
            *lane = lane.wrapping_add(u16::from_le_bytes([pair[0], pair[1]]));
        }
    }

    fn add_vector(&mut self, other: &StateVector) {
        for (a, b) in self.lanes.iter_mut().zip(other.lanes.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Adds every row `feed` encodes (with [`encode_row_into`]), hashing them on worker
    /// threads while `feed` runs on this one, where the database connection is: a full
    /// count is mostly hashing, which then runs beside the reading.
    pub fn add_rows_parallel<E>(
        &mut self,
        feed: impl FnOnce(&mut dyn FnMut(&[u8])) -> Result<(), E>,
    ) -> Result<(), E> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2 * threads);
        let rx = std::sync::Mutex::new(rx);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut sum = StateVector::new();
                        loop {
                            let batch = match rx.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => break,
                            };
                            let Ok(batch) = batch else { break };
                            let mut rest = batch.as_slice();
                            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                                let len = u32::from_le_bytes(*len) as usize;
                                let (enc, tail) = tail.split_at(len.min(tail.len()));
                                sum.add_element(&element_of(enc));
                                rest = tail;
                            }
                        }
                        sum
                    })
                })
                .collect();
            let mut batch = Vec::with_capacity(BATCH + 4096);
            let mut send = |enc: &[u8]| {
                batch.extend_from_slice(&(enc.len() as u32).to_le_bytes());
                batch.extend_from_slice(enc);
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH + 4096));
                    let _ = tx.send(full);
                }
            };
            let fed = feed(&mut send);
            if !batch.is_empty() {
                let _ = tx.send(std::mem::take(&mut batch));
            }
            drop(tx);
            for w in workers {
                // A worker only panics if hashing does; then the sum is wrong: re-raise.
                match w.join() {
                    Ok(v) => self.add_vector(&v),
                    Err(p) => std::panic::resume_unwind(p),
                }
            }
            fed
        })
    }

    /// Removes a row that no longer exists.
    pub fn remove_row(&mut self, table: &str, values: &[ValueRef<'_>]) {
        let e = element(table, values);
        for (lane, pair) in self.lanes.iter_mut().zip(e.chunks_exact(2)) {
            *lane = lane.wrapping_sub(u16::from_le_bytes([pair[0], pair[1]]));
        }
    }

    /// The vector as 2048 little-endian bytes (how it is hashed and stored).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lanes.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    /// Reads [`StateVector::to_bytes`]; `None` unless exactly 2048 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 2 * LANES {
            return None;
        }
        let mut v = Self::new();
        for (lane, pair) in v.lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(v)
    }

    /// `state(n) = BLAKE3("pdb/v1 state" || vector as 2048 LE bytes)`.
    pub fn digest(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"pdb/v1 state");
        h.update(&self.to_bytes());
        *h.finalize().as_bytes()
    }
}

/// The state vector of `tables` as they are in `db` (every row, O(rows)).
pub fn state_of<D: Db>(db: &D, tables: &[TableInfo]) -> Result<StateVector, Error> {
    state_in(db, "main", tables)
}

/// [`state_of`] for the tables of the attached database `schema`. Rows are read here
/// and hashed on worker threads.
pub fn state_in<D: Db>(db: &D, schema: &str, tables: &[TableInfo]) -> Result<StateVector, Error> {
    let mut state = StateVector::new();
    state.add_rows_parallel(|push| {
        let mut enc = Vec::with_capacity(256);
        for t in tables {
            let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
            let sql = format!(
                "SELECT {} FROM {}.{}",
                cols.join(", "),
                quote(schema),
                quote(&t.name)
            );
            let mut stmt = db.prepare(&sql)?;
            stmt.query::<Error>(&mut |row| {
                enc.clear();
                encode_row_into(&mut enc, &t.name, row);
                push(&enc);
                Ok(())
            })?;
        }
        Ok::<(), Error>(())
    })?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(i: i64) -> Vec<ValueRef<'static>> {
        vec![ValueRef::Integer(i), ValueRef::Text(b"x")]
    }

    #[test]
    fn empty_vector_is_zero_and_remove_undoes_add() {
        let zero = StateVector::new();
        assert_eq!(zero.to_bytes(), vec![0; 2048]);
        let mut v = StateVector::new();
        v.add_row("t", &row(1));
        assert_ne!(v, zero);
        v.remove_row("t", &row(1));
        assert_eq!(v, zero);
        assert_eq!(StateVector::from_bytes(&v.to_bytes()), Some(v));
        assert_eq!(StateVector::from_bytes(&[0; 3]), None);
    }

    #[test]
    fn table_name_is_part_of_the_row() {
        let mut a = StateVector::new();
        a.add_row("t", &row(1));
        let mut b = StateVector::new();
        b.add_row("u", &row(1));
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn parallel_sum_equals_row_by_row() {
        let mut one = StateVector::new();
        let mut par = StateVector::new();
        par.add_rows_parallel(|push| {
            let mut enc = Vec::new();
            for i in 0..20_000 {
                one.add_row("t", &row(i));
                enc.clear();
                encode_row_into(&mut enc, "t", &row(i));
                push(&enc);
            }
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(par, one);
        let mut none = StateVector::new();
        none.add_rows_parallel(|_| Ok::<(), ()>(())).unwrap();
        assert_eq!(none, StateVector::new());
    }

    proptest! {
        /// The digest depends only on the set of rows, not on the order they arrived in
        /// or on rows that came and went.
        #[test]
        fn digest_is_order_independent(rows in proptest::collection::vec(0i64..50, 0..30),
                                       transient in proptest::collection::vec(50i64..99, 0..10)) {
            let mut a = StateVector::new();
            for r in &rows { a.add_row("t", &row(*r)); }
            let mut b = StateVector::new();
            for r in &transient { b.add_row("t", &row(*r)); }
            for r in rows.iter().rev() { b.add_row("t", &row(*r)); }
            for r in &transient { b.remove_row("t", &row(*r)); }
            prop_assert_eq!(a.digest(), b.digest());
        }
    }
}
