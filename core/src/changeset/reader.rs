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
