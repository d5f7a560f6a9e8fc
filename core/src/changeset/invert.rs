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
