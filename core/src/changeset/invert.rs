//! Inverting a changeset: the change that undoes it, with the session extension's
//! semantics, order and bytes: headers and INSERT/DELETE records are copied as they
//! are, UPDATE values are written afresh (so a value whose length varint was longer
//! than needed comes out in the shortest form, as `sqlite3changeset_invert` does).

use super::{FormatError, Item, Op, Reader, Writer};
use crate::value;

/// Returns the changeset that undoes `buf`: INSERT and DELETE swap; an UPDATE keeps its
/// PK in the old record and swaps the other old and new values.
pub fn invert(buf: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = Writer::new();
    let mut pk: &[u8] = &[];
    for item in Reader::new(buf) {
        match item? {
            Item::Table(h) => {
                pk = h.pk;
                out.buf().push(b'T');
                out.buf().extend_from_slice(h.raw);
            }
            Item::Change(c) => match c.op {
                Op::Insert | Op::Delete => {
                    let op = if c.op == Op::Insert {
                        Op::Delete
                    } else {
                        Op::Insert
                    };
                    out.begin(op, c.indirect);
                    for f in c.old.iter().chain(c.new.iter()) {
                        out.buf().extend_from_slice(f);
                    }
                }
                Op::Update => {
                    out.begin(Op::Update, c.indirect);
                    for (i, &flag) in pk.iter().enumerate() {
                        put(out.buf(), if flag != 0 { c.old[i] } else { c.new[i] });
                    }
                    for (i, &flag) in pk.iter().enumerate() {
                        if flag != 0 {
                            out.buf().push(value::UNDEFINED);
                        } else {
                            put(out.buf(), c.old[i]);
                        }
                    }
                }
            },
        }
    }
    Ok(out.finish())
}

/// Writes a field in its shortest encoding (undefined stays undefined).
fn put(out: &mut Vec<u8>, field: &[u8]) {
    match value::decode_field(field) {
        Some(v) => v.encode(out),
        None => out.push(value::UNDEFINED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `changeset_decode` fuzz target (`regressions/changeset_decode/
    /// invert-header-varint`): a header whose column count is spelled `80 80 01` (1).
    /// `sqlite3changeset_invert` copies headers unchanged; `invert` re-encoded them with
    /// the shortest varint, so `invert(invert(x))` was not `x` byte for byte.
    #[test]
    fn headers_are_copied_verbatim() {
        // T t(k PRIMARY KEY), column count 80 80 01 | INSERT (NULL)
        let cs = [b'T', 0x80, 0x80, 0x01, 1, b't', 0, 18, 0, 5];
        let inverse = invert(&cs).unwrap();
        assert_eq!(inverse, [b'T', 0x80, 0x80, 0x01, 1, b't', 0, 9, 0, 5]);
        assert_eq!(invert(&inverse).unwrap(), cs);
    }

    /// The other half of SQLite's bytes, from the same finding and the seed
    /// `regression-invert-update-key-varint`: UPDATE values (the key included) are
    /// written afresh in their shortest form, while INSERT and DELETE records are copied
    /// as they are.
    #[test]
    fn update_values_are_re_encoded_and_other_records_copied() {
        // T t(k TEXT PRIMARY KEY, v) | UPDATE old ('a', 'x') new (-, 'y'), every TEXT
        // length spelled 80 01.
        let mut cs = vec![b'T', 2, 1, 0, b't', 0, 23, 1];
        cs.extend_from_slice(&[3, 0x80, 1, b'a', 3, 0x80, 1, b'x', 0, 3, 0x80, 1, b'y']);
        let mut want = vec![b'T', 2, 1, 0, b't', 0, 23, 1];
        want.extend_from_slice(&[3, 1, b'a', 3, 1, b'y', 0, 3, 1, b'x']);
        assert_eq!(invert(&cs).unwrap(), want);

        // DELETE ('a', 'x') spelled long becomes an INSERT of the very same bytes.
        let record = [3, 0x80, 1, b'a', 3, 0x80, 1, b'x'];
        let del = [[b'T', 2, 1, 0, b't', 0, 9, 0].as_slice(), &record].concat();
        let ins = [[b'T', 2, 1, 0, b't', 0, 18, 0].as_slice(), &record].concat();
        assert_eq!(invert(&del).unwrap(), ins);
        assert_eq!(invert(&ins).unwrap(), del);
    }

    #[test]
    fn a_malformed_input_is_an_error_not_a_partial_inverse() {
        // A good INSERT, then a truncated one.
        let cs = [b'T', 1, 1, b't', 0, 18, 0, 5, 18, 0];
        let e = invert(&cs).unwrap_err();
        assert_eq!(
            (e.offset, e.reason.as_str()),
            (10, "truncated: expected a value")
        );
    }
}
