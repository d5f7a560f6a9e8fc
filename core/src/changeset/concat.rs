//! Concatenating changesets with the semantics of `sqlite3changegroup`: changes to the
//! same row are merged into their net effect.

use std::collections::BTreeMap;

use super::{Change, FormatError, Item, Op, Reader, Writer};
use crate::value;

/// Why two changesets cannot be combined.
#[derive(Debug, thiserror::Error)]
pub enum ConcatError {
    /// One of the inputs is malformed.
    #[error("{which} changeset: {source}")]
    Format {
        /// "first" or "second".
        which: &'static str,
        /// The format error.
        source: FormatError,
    },
    /// The same table appears with different columns or keys.
    #[error("table \"{table}\" has different columns or primary key in the two changesets")]
    Schema {
        /// The table at fault.
        table: String,
    },
}

type Rows<'a> = BTreeMap<Vec<u8>, Change<'a>>;

/// Returns the changeset equal to applying `a` then `b`, in canonical order.
///
/// Merge rules per row, as SQLite's changegroup: INSERT+UPDATE → INSERT;
/// INSERT+DELETE → nothing; UPDATE+UPDATE → UPDATE (nothing if it cancels out);
/// UPDATE+DELETE → DELETE; DELETE+INSERT → UPDATE (nothing if identical); the
/// impossible pairs (INSERT+INSERT, UPDATE+INSERT, DELETE+UPDATE, DELETE+DELETE) keep
/// the first change.
pub fn concat(a: &[u8], b: &[u8]) -> Result<Vec<u8>, ConcatError> {
    // Keyed by the ASCII-lower-cased name: SQL table names are case-insensitive, as
    // SQLite's changegroup treats them. The first spelling seen is the one written.
    let mut tables: BTreeMap<String, (&str, &[u8], Rows<'_>)> = BTreeMap::new();
    for (which, buf) in [("first", a), ("second", b)] {
        let mut current: Option<String> = None;
        for item in Reader::new(buf) {
            match item.map_err(|source| ConcatError::Format { which, source })? {
                Item::Table(h) => {
                    let folded = h.name.to_ascii_lowercase();
                    let entry =
                        tables
                            .entry(folded.clone())
                            .or_insert((h.name, h.pk, BTreeMap::new()));
                    if entry.1 != h.pk {
                        return Err(ConcatError::Schema {
                            table: h.name.to_string(),
                        });
                    }
                    current = Some(folded);
                }
                Item::Change(c) => {
                    let folded = current.as_ref().expect("reader checks order");
                    let (_, pk, rows) = tables.get_mut(folded).expect("header seen");
                    let key = c.key(pk);
                    match rows.remove(&key) {
                        None => {
                            rows.insert(key, c);
                        }
                        Some(prev) => {
                            if let Some(merged) = merge(pk, prev, c) {
                                rows.insert(key, merged);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut groups: Vec<_> = tables.into_values().collect();
    groups.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    let mut out = Writer::new();
    for (name, pk, rows) in &groups {
        if rows.is_empty() {
            continue;
        }
        out.table(name, pk);
        for change in rows.values() {
            out.change(change);
        }
    }
    Ok(out.finish())
}

/// Merges two changes to the same row; `None` when they cancel out.
fn merge<'a>(pk: &[u8], first: Change<'a>, second: Change<'a>) -> Option<Change<'a>> {
    let indirect = first.indirect && second.indirect;
    match (first.op, second.op) {
        (Op::Insert, Op::Insert)
        | (Op::Update, Op::Insert)
        | (Op::Delete, Op::Update)
        | (Op::Delete, Op::Delete) => Some(first),
        (Op::Insert, Op::Delete) => None,
        (Op::Insert, Op::Update) => {
            let new = prefer(&second.new, &first.new);
            Some(Change {
                op: Op::Insert,
                indirect,
                old: Vec::new(),
                new,
            })
        }
        (Op::Delete, Op::Insert) => net_update(pk, indirect, &first.old, &second.new),
        (Op::Update, Op::Update) => {
            let old = prefer(&first.old, &second.old);
            let new = prefer(&second.new, &first.new);
            net_update(pk, indirect, &old, &new)
        }
        (Op::Update, Op::Delete) => {
            let old = prefer(&first.old, &second.old);
            Some(Change {
                op: Op::Delete,
                indirect,
                old,
                new: Vec::new(),
            })
        }
    }
}

/// Per column, the field of `primary` if defined, else that of `fallback`.
fn prefer<'a>(primary: &[&'a [u8]], fallback: &[&'a [u8]]) -> Vec<&'a [u8]> {
    primary
        .iter()
        .zip(fallback)
        .map(|(p, f)| if p[0] == value::UNDEFINED { *f } else { *p })
        .collect()
}

/// The UPDATE from `old` to `new` values: PK and differing columns in the old record,
/// differing columns in the new one; `None` if no non-PK column differs.
fn net_update<'a>(
    pk: &[u8],
    indirect: bool,
    old: &[&'a [u8]],
    new: &[&'a [u8]],
) -> Option<Change<'a>> {
    const UNDEF: &[u8] = &[value::UNDEFINED];
    let mut changed = false;
    let mut o = Vec::with_capacity(pk.len());
    let mut n = Vec::with_capacity(pk.len());
    for i in 0..pk.len() {
        let differs = !same_field(old[i], new[i]);
        changed |= differs && pk[i] == 0;
        o.push(if pk[i] != 0 || differs { old[i] } else { UNDEF });
        n.push(if pk[i] == 0 && differs { new[i] } else { UNDEF });
    }
    changed.then_some(Change {
        op: Op::Update,
        indirect,
        old: o,
        new: n,
    })
}

/// Whether two encoded fields hold the same value. Bytes decide, except that a length
/// varint may be spelled longer than needed: such a field equals its shortest form.
fn same_field(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    match (value::decode_field(a), value::decode_field(b)) {
        (Some(x), Some(y)) => {
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            x.encode(&mut ea);
            y.encode(&mut eb);
            ea == eb
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_1: [u8; 9] = [1, 0, 0, 0, 0, 0, 0, 0, 1];

    /// `T <name>(id INTEGER PRIMARY KEY, v)` followed by `changes`.
    fn group(name: &[u8], changes: &[u8]) -> Vec<u8> {
        [&[b'T', 2, 1, 0], name, &[0], changes].concat()
    }

    /// Found by the `changeset_decode` fuzz target (`regressions/changeset_decode/
    /// concat-table-name-case`): an INSERT into `c` and a DELETE of the same row from `C`.
    /// SQL names are case-insensitive and SQLite's changegroup merges the two into
    /// nothing; keyed by exact name, `concat` kept both and wrote `C`'s DELETE first.
    #[test]
    fn table_names_match_case_insensitively() {
        let row = [KEY_1.as_slice(), &[3, 1, b'a']].concat();
        let ins = group(b"c", &[[18, 0].as_slice(), &row].concat());
        let del = group(b"C", &[[9, 0].as_slice(), &row].concat());
        assert_eq!(concat(&ins, &del).unwrap(), Vec::<u8>::new());
        // Changes that do not cancel land in one group, under the first spelling seen.
        let upd = group(
            b"C",
            &[[23, 0].as_slice(), &KEY_1, &[3, 1, b'a'], &[0, 3, 1, b'b']].concat(),
        );
        let want = group(b"c", &[[18, 0].as_slice(), &KEY_1, &[3, 1, b'b']].concat());
        assert_eq!(concat(&ins, &upd).unwrap(), want);
    }

    /// Found by the `changeset_decode` fuzz target (seed
    /// `regression-concat-long-length-varint`): values whose length varint is spelled
    /// longer than needed. An UPDATE 'a' → 'b' then 'b' → 'a', with the first 'a' spelled
    /// `03 80 01 61`, is no change at all; compared byte-wise it stayed an UPDATE of
    /// 'a' to 'a'.
    #[test]
    fn values_that_differ_only_in_their_length_varint_are_equal() {
        let first = group(
            b"t",
            &[
                [23, 0].as_slice(),
                &KEY_1,
                &[3, 0x80, 1, b'a'],
                &[0, 3, 1, b'b'],
            ]
            .concat(),
        );
        let second = group(
            b"t",
            &[[23, 0].as_slice(), &KEY_1, &[3, 1, b'b'], &[0, 3, 1, b'a']].concat(),
        );
        assert_eq!(concat(&first, &second).unwrap(), Vec::<u8>::new());
        // A DELETE and the INSERT of the same row back, the key spelled long in one.
        // T t(k TEXT PRIMARY KEY)
        let del = [b'T', 1, 1, b't', 0, 9, 0, 3, 0x80, 1, b'k'];
        let ins = [b'T', 1, 1, b't', 0, 18, 0, 3, 1, b'k'];
        assert_eq!(concat(&del, &ins).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn another_key_or_a_malformed_input_is_an_error_naming_it() {
        let a = group(b"t", &[[9, 0].as_slice(), &KEY_1, &[5]].concat());
        // `T` has the key on its second column.
        let b = [b'T', 2, 0, 1, b'T', 0, 9, 0, 5, 1, 0, 0, 0, 0, 0, 0, 0, 1].to_vec();
        match concat(&a, &b) {
            Err(ConcatError::Schema { table }) => assert_eq!(table, "T"),
            other => panic!("{other:?}"),
        }
        match concat(&a, &[9]) {
            Err(ConcatError::Format { which, source }) => {
                assert_eq!((which, source.offset), ("second", 0));
            }
            other => panic!("{other:?}"),
        }
    }
}
