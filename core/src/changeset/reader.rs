//! Reading changesets: a validating, allocation-light iterator over headers and changes.

use super::{Change, FormatError, Op, TableHeader};
use crate::{value, varint};

/// SQLite's own limit on columns per table (`SQLITE_MAX_COLUMN` can be raised to 32767).
const MAX_COLUMNS: u64 = 32767;

/// One item of a changeset, in the order it appears.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// The start of a table group.
    Table(TableHeader<'a>),
    /// A change to a row of the most recent table.
    Change(Change<'a>),
}

/// Iterates over a changeset, checking every byte; stops after the first error.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    pk: Option<&'a [u8]>,
    failed: bool,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            pk: None,
            failed: false,
        }
    }

    fn err<T>(&mut self, offset: usize, reason: impl Into<String>) -> Result<T, FormatError> {
        self.failed = true;
        Err(FormatError {
            offset,
            reason: reason.into(),
        })
    }

    fn byte(&mut self, what: &str) -> Result<u8, FormatError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err(self.pos, format!("truncated: expected {what}")),
        }
    }

    fn varint(&mut self, what: &str) -> Result<u64, FormatError> {
        match varint::read(&self.buf[self.pos..]) {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => self.err(self.pos, format!("truncated varint ({what})")),
        }
    }

    fn header(&mut self) -> Result<TableHeader<'a>, FormatError> {
        let start = self.pos - 1;
        let n_col = self.varint("column count")?;
        if n_col == 0 || n_col > MAX_COLUMNS {
            return self.err(start + 1, format!("table header has {n_col} columns"));
        }
        let n_col = n_col as usize;
        let Some(pk) = self.buf.get(self.pos..self.pos + n_col) else {
            return self.err(self.pos, "truncated: expected primary key flags");
        };
        if pk.iter().all(|&f| f == 0) {
            return self.err(self.pos, "table header has no primary key column");
        }
        self.pos += n_col;
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return self.err(self.pos, "truncated: table name is not NUL-terminated");
        };
        let Ok(name) = std::str::from_utf8(&rest[..nul]) else {
            return self.err(self.pos, "table name is not UTF-8");
        };
        if name.is_empty() {
            return self.err(self.pos, "empty table name");
        }
        self.pos += nul + 1;
        self.pk = Some(pk);
        Ok(TableHeader {
            name,
            pk,
            raw: &self.buf[start + 1..self.pos],
        })
    }

    fn record(&mut self, n_col: usize) -> Result<Vec<&'a [u8]>, FormatError> {
        let mut fields = Vec::with_capacity(n_col);
        for _ in 0..n_col {
            let start = self.pos;
            let ty = self.byte("a value")?;
            let len = match ty {
                value::UNDEFINED | value::NULL => 0,
                value::INTEGER | value::REAL => 8,
                value::TEXT | value::BLOB => {
                    let n = self.varint("value length")?;
                    let remaining = (self.buf.len() - self.pos) as u64;
                    if n > remaining {
                        return self.err(start, format!("value of {n} bytes but {remaining} left"));
                    }
                    n as usize
                }
                other => return self.err(start, format!("unknown value type 0x{other:02x}")),
            };
            if self.buf.len() - self.pos < len {
                return self.err(start, "truncated value");
            }
            self.pos += len;
            fields.push(&self.buf[start..self.pos]);
        }
        Ok(fields)
    }

    fn change(&mut self, op: Op) -> Result<Change<'a>, FormatError> {
        let start = self.pos - 1;
        let Some(pk) = self.pk else {
            return self.err(start, "change before any table header");
        };
        let indirect = match self.byte("indirect flag")? {
            0 => false,
            1 => true,
            b => return self.err(self.pos - 1, format!("indirect flag is {b}, not 0 or 1")),
        };
        let n_col = pk.len();
        let (old, new) = match op {
            Op::Insert => (Vec::new(), self.record(n_col)?),
            Op::Delete => (self.record(n_col)?, Vec::new()),
            Op::Update => {
                let old = self.record(n_col)?;
                (old, self.record(n_col)?)
            }
        };
        let undefined = |f: &&[u8]| f[0] == value::UNDEFINED;
        let problem = match op {
            Op::Insert if new.iter().any(undefined) => Some("INSERT with an undefined value"),
            Op::Delete if old.iter().any(undefined) => Some("DELETE with an undefined value"),
            Op::Update if (0..n_col).any(|i| pk[i] != 0 && undefined(&old[i])) => {
                Some("UPDATE without its primary key")
            }
            Op::Update if (0..n_col).any(|i| pk[i] != 0 && !undefined(&new[i])) => {
                Some("UPDATE that changes a primary key column")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return self.err(start, problem);
        }
        Ok(Change {
            op,
            indirect,
            old,
            new,
        })
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Item<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        let b = self.buf[at];
        self.pos += 1;
        Some(match b {
            b'T' => self.header().map(Item::Table),
            b'P' => self.err(at, "patchsets are not supported, only changesets"),
            _ => match Op::from_byte(b) {
                Some(op) => self.change(op).map(Item::Change),
                None => self.err(at, format!("unexpected byte 0x{b:02x}")),
            },
        })
    }
}

/// Reads a whole changeset into table groups (a table may appear in several groups).
pub fn parse(buf: &[u8]) -> Result<Vec<(TableHeader<'_>, Vec<Change<'_>>)>, FormatError> {
    let mut tables: Vec<(TableHeader<'_>, Vec<Change<'_>>)> = Vec::new();
    for item in Reader::new(buf) {
        match item? {
            Item::Table(h) => tables.push((h, Vec::new())),
            Item::Change(c) => tables.last_mut().expect("reader checks order").1.push(c),
        }
    }
    Ok(tables)
}

/// Each refusal of the reader, on the smallest input that reaches it: the exact offset
/// and reason, so that a check that is dropped or moved shows (the `changeset_decode`
/// fuzz target feeds it any bytes and only asks that nothing panics).
#[cfg(test)]
mod tests {
    use super::*;

    /// The first error reading `buf`, as `(offset, reason)`.
    fn refusal(buf: &[u8]) -> (usize, String) {
        let e = parse(buf).expect_err("the input is malformed");
        (e.offset, e.reason)
    }

    /// `T`, one INTEGER key column and one other, table `t`.
    const HEADER: &[u8] = &[b'T', 2, 1, 0, b't', 0];

    fn with_header(rest: &[u8]) -> Vec<u8> {
        [HEADER, rest].concat()
    }

    const KEY_1: &[u8] = &[1, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn a_truncated_varint_names_what_it_was_read_for() {
        assert_eq!(
            refusal(&[b'T', 0x81]),
            (1, "truncated varint (column count)".into())
        );
        // INSERT (1, TEXT of a length whose varint never ends).
        let cs = with_header(&[[18, 0].as_slice(), KEY_1, &[3, 0x80, 0x80]].concat());
        assert_eq!(
            refusal(&cs),
            (
                HEADER.len() + 2 + 9 + 1,
                "truncated varint (value length)".into()
            )
        );
    }

    #[test]
    fn a_length_longer_than_the_input_is_refused_before_it_is_read() {
        // A TEXT of 2^56 bytes: refused by comparing with what is left, at the field.
        let mut cs = with_header(&[[18, 0].as_slice(), KEY_1, &[3]].concat());
        crate::varint::write(&mut cs, 1 << 56);
        cs.extend_from_slice(b"abc");
        let field = HEADER.len() + 2 + 9;
        assert_eq!(
            refusal(&cs),
            (field, format!("value of {} bytes but 3 left", 1u64 << 56))
        );
        // One byte short.
        let cs = with_header(&[[18, 0].as_slice(), KEY_1, &[3, 4, b'a', b'b', b'c']].concat());
        assert_eq!(refusal(&cs), (field, "value of 4 bytes but 3 left".into()));
        // An INTEGER needs its 8 bytes.
        let cs = with_header(&[18, 0, 1, 0, 0]);
        assert_eq!(refusal(&cs), (HEADER.len() + 2, "truncated value".into()));
    }

    #[test]
    fn column_counts_outside_one_to_sqlite_s_maximum_are_refused() {
        assert_eq!(
            refusal(&[b'T', 0, b't', 0]),
            (1, "table header has 0 columns".into())
        );
        let mut cs = vec![b'T'];
        crate::varint::write(&mut cs, MAX_COLUMNS + 1);
        assert_eq!(refusal(&cs), (1, "table header has 32768 columns".into()));
        // The maximum itself is a header like any other.
        let mut cs = vec![b'T'];
        crate::varint::write(&mut cs, MAX_COLUMNS);
        cs.push(1);
        cs.resize(cs.len() + MAX_COLUMNS as usize - 1, 0);
        cs.extend_from_slice(b"t\0");
        let groups = parse(&cs).unwrap();
        assert_eq!(groups[0].0.n_col(), MAX_COLUMNS as usize);
        // More columns announced than the input has flags for.
        assert_eq!(
            refusal(&[b'T', 3, 1, 0]),
            (2, "truncated: expected primary key flags".into())
        );
    }

    #[test]
    fn a_header_needs_a_key_and_a_utf8_nul_terminated_name() {
        assert_eq!(
            refusal(&[b'T', 2, 0, 0, b't', 0]),
            (2, "table header has no primary key column".into())
        );
        assert_eq!(
            refusal(&[b'T', 1, 1, b't']),
            (3, "truncated: table name is not NUL-terminated".into())
        );
        assert_eq!(
            refusal(&[b'T', 1, 1, 0xff, 0]),
            (3, "table name is not UTF-8".into())
        );
        assert_eq!(refusal(&[b'T', 1, 1, 0]), (3, "empty table name".into()));
    }

    #[test]
    fn op_bytes_other_than_sqlite_s_are_refused_and_patchsets_named() {
        assert_eq!(
            refusal(&with_header(&[0x13, 0])),
            (HEADER.len(), "unexpected byte 0x13".into())
        );
        // A patchset table header ('P') is not a changeset's.
        assert_eq!(
            refusal(&[b'P', 1, 1, b't', 0]),
            (0, "patchsets are not supported, only changesets".into())
        );
        // A change needs a table.
        assert_eq!(
            refusal(&[9, 0, 5]),
            (0, "change before any table header".into())
        );
        assert_eq!(
            refusal(&with_header(&[9, 2])),
            (HEADER.len() + 1, "indirect flag is 2, not 0 or 1".into())
        );
        let cs = with_header(&[[18, 0].as_slice(), KEY_1, &[6]].concat());
        assert_eq!(
            refusal(&cs),
            (HEADER.len() + 2 + 9, "unknown value type 0x06".into())
        );
    }

    #[test]
    fn records_must_define_what_their_op_needs() {
        let undef = [0u8];
        let null = [5u8];
        for (change, why) in [
            (
                [[18, 0].as_slice(), KEY_1, &undef].concat(),
                "INSERT with an undefined value",
            ),
            (
                [[9, 0].as_slice(), KEY_1, &undef].concat(),
                "DELETE with an undefined value",
            ),
            (
                [[23, 0].as_slice(), &undef, &null, &undef, &null].concat(),
                "UPDATE without its primary key",
            ),
            (
                [[23, 0].as_slice(), KEY_1, &null, KEY_1, &null].concat(),
                "UPDATE that changes a primary key column",
            ),
        ] {
            assert_eq!(refusal(&with_header(&change)), (HEADER.len(), why.into()));
        }
    }

    #[test]
    fn the_reader_stops_at_its_first_error() {
        // A bad op byte, then a well-formed change: nothing is read after the error.
        let cs = with_header(&[[0x13].as_slice(), &[9, 0], KEY_1, &[5]].concat());
        let items: Vec<_> = Reader::new(&cs).collect();
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(matches!(items[0], Ok(Item::Table(_))));
        assert!(items[1].is_err());
    }
}
