//! The SQLite session extension's changeset format, read and written byte for byte.
//!
//! A changeset is a sequence of table groups with no global header, length or checksum.
//! A table group starts with a header:
//!
//! ```text
//! 'T' (0x54) | varint nCol | nCol bytes of PK flags | table name, UTF-8, NUL-terminated
//! ```
//!
//! A PK flag is 0 for a column outside the primary key and otherwise the column's
//! 1-based position in the PRIMARY KEY clause: `PRIMARY KEY(b, a)` over columns `a, b, c`
//! gives `02 01 00`. Changes of that table follow until the next header:
//!
//! ```text
//! op byte (INSERT 0x12 | UPDATE 0x17 | DELETE 0x09) | indirect byte (0 or 1) | records
//! ```
//!
//! Each record is nCol fields in the value encoding of [`crate::value`]:
//! - INSERT carries the new row, every field defined;
//! - DELETE carries the old row, every field defined;
//! - UPDATE carries an old record (PK columns and changed columns defined, the rest
//!   undefined) and then a new record (changed columns defined, PK and the rest
//!   undefined). An UPDATE that changes nothing is never written.
//!
//! The format has no order. PersonalDB writes **canonical** changesets: tables in
//! byte order of their names, and within a table changes ordered by the byte-wise
//! concatenation of their PK fields taken in column declaration order (see
//! [`Change::key`]). The same logical change therefore always has the same bytes.

mod concat;
mod invert;
mod json;
mod reader;
mod writer;

pub use concat::{concat, ConcatError};
pub use invert::invert;
pub use json::{change_to_json, value_json, ChangeJson};
pub use reader::{parse, Item, Reader};
pub use writer::Writer;

/// The operation of one change; the byte values are SQLite's authorizer codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new row (`SQLITE_INSERT`, 18).
    Insert,
    /// A changed row (`SQLITE_UPDATE`, 23).
    Update,
    /// A removed row (`SQLITE_DELETE`, 9).
    Delete,
}

impl Op {
    /// The op byte in a changeset.
    pub fn byte(self) -> u8 {
        match self {
            Op::Insert => 18,
            Op::Update => 23,
            Op::Delete => 9,
        }
    }

    /// The op for an op byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Op> {
        match b {
            18 => Some(Op::Insert),
            23 => Some(Op::Update),
            9 => Some(Op::Delete),
            _ => None,
        }
    }

    /// The SQL keyword, as `pdb_changeset_rows` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// A table header: name, column count and PK flags.
#[derive(Debug, Clone)]
pub struct TableHeader<'a> {
    /// Table name as stored in `sqlite_schema`.
    pub name: &'a str,
    /// One flag per column: 0, or the column's 1-based position in the primary key.
    pub pk: &'a [u8],
    /// The header's bytes after the `'T'`, exactly as read (its column count varint may
    /// be longer than needed; `invert` copies headers verbatim, as SQLite does).
    pub raw: &'a [u8],
}

/// Headers are equal when they mean the same: the spelling of the varint in `raw` is
/// not part of a header's meaning.
impl PartialEq for TableHeader<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.pk == other.pk
    }
}

impl Eq for TableHeader<'_> {}

impl TableHeader<'_> {
    /// Number of columns.
    pub fn n_col(&self) -> usize {
        self.pk.len()
    }

    /// Indexes of the PK columns in primary-key order.
    pub fn pk_columns(&self) -> Vec<usize> {
        let mut cols: Vec<usize> = (0..self.pk.len()).filter(|&i| self.pk[i] != 0).collect();
        cols.sort_by_key(|&i| self.pk[i]);
        cols
    }
}

/// One change to one row, with each field still in its encoded form (a type byte and
/// payload, `[0]` for undefined), which is what merging and comparing need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    /// The operation.
    pub op: Op,
    /// Whether the change was indirect (made by a trigger or foreign key action).
    pub indirect: bool,
    /// The old record (DELETE, UPDATE); empty for INSERT.
    pub old: Vec<&'a [u8]>,
    /// The new record (INSERT, UPDATE); empty for DELETE.
    pub new: Vec<&'a [u8]>,
}

impl Change<'_> {
    /// The record that holds this change's primary key: `new` for INSERT, else `old`.
    pub fn key_record(&self) -> &[&[u8]] {
        if self.op == Op::Insert {
            &self.new
        } else {
            &self.old
        }
    }

    /// The canonical sort key: the PK fields in column declaration order, concatenated,
    /// each in its shortest encoding (so a key whose length varint is spelled longer
    /// than needed still names the same row).
    pub fn key(&self, pk: &[u8]) -> Vec<u8> {
        let rec = self.key_record();
        let mut key = Vec::new();
        for (i, flag) in pk.iter().enumerate() {
            if *flag != 0 {
                match crate::value::decode_field(rec[i]) {
                    Some(v) => v.encode(&mut key),
                    None => key.push(crate::value::UNDEFINED),
                }
            }
        }
        key
    }
}

/// Why a changeset could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed changeset at byte {offset}: {reason}")]
pub struct FormatError {
    /// Byte offset where reading failed.
    pub offset: usize,
    /// What was wrong there.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `changeset_decode` fuzz target (seed
    /// `regression-invert-update-key-varint`): a key whose TEXT length varint is spelled
    /// longer than needed (`80 01` for 1) names the same row as its shortest spelling,
    /// which is how `invert` writes it back; with byte-wise keys a change and its
    /// inverse named two rows and did not cancel in `concat`.
    #[test]
    fn a_key_spelled_with_a_long_length_varint_is_the_same_row() {
        // T t(k TEXT PRIMARY KEY) | DELETE ('a'), once as 03 01 61, once as 03 80 01 61.
        let short = [b'T', 1, 1, b't', 0, 9, 0, 3, 1, b'a'];
        let long = [b'T', 1, 1, b't', 0, 9, 0, 3, 0x80, 0x01, b'a'];
        let key = |buf: &[u8]| {
            let groups = parse(buf).unwrap();
            groups[0].1[0].key(groups[0].0.pk)
        };
        assert_eq!(key(&long), vec![3, 1, b'a']);
        assert_eq!(key(&long), key(&short));
    }

    /// Found by the `changeset_decode` fuzz target (`regressions/.../invert-header-varint`):
    /// a header's column count spelled `80 80 01` means the same header as `01`; the
    /// spelling lives in `raw` only, which `invert` copies as SQLite does.
    #[test]
    fn headers_are_equal_whatever_the_spelling_of_their_column_count() {
        let long = [b'T', 0x80, 0x80, 0x01, 1, b't', 0];
        let short = [b'T', 1, 1, b't', 0];
        let (a, b) = (parse(&long).unwrap(), parse(&short).unwrap());
        assert_eq!(a[0].0.raw, &long[1..]);
        assert_eq!(b[0].0.raw, &short[1..]);
        assert_eq!(a[0].0, b[0].0);
        // Another key or name is another header.
        let other = parse(&[b'T', 1, 1, b'u', 0]).unwrap();
        assert_ne!(a[0].0, other[0].0);
    }
}
