//! SQLite values and their encoding in the changeset record format.
//!
//! A value in a record is one type byte followed by its payload:
//!
//! | type byte | meaning   | payload                                        |
//! |-----------|-----------|------------------------------------------------|
//! | `0x00`    | undefined | none (the column is not part of this change)   |
//! | `0x01`    | INTEGER   | 8 bytes, big-endian two's complement           |
//! | `0x02`    | REAL      | 8 bytes, big-endian IEEE 754 bit pattern       |
//! | `0x03`    | TEXT      | varint byte length, then the UTF-8 bytes       |
//! | `0x04`    | BLOB      | varint byte length, then the bytes             |
//! | `0x05`    | NULL      | none                                           |
//!
//! REAL values travel as their bit pattern, so `-0.0`, infinities and every NaN payload
//! survive a round trip unchanged.

use crate::varint;

/// Type byte of an undefined field.
pub const UNDEFINED: u8 = 0;
/// Type byte of an INTEGER value (equals `SQLITE_INTEGER`).
pub const INTEGER: u8 = 1;
/// Type byte of a REAL value (equals `SQLITE_FLOAT`).
pub const REAL: u8 = 2;
/// Type byte of a TEXT value (equals `SQLITE_TEXT`).
pub const TEXT: u8 = 3;
/// Type byte of a BLOB value (equals `SQLITE_BLOB`).
pub const BLOB: u8 = 4;
/// Type byte of a NULL value (equals `SQLITE_NULL`).
pub const NULL: u8 = 5;

/// A borrowed SQLite value, as read from a row or a changeset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// An IEEE 754 double.
    Real(f64),
    /// Text; SQLite does not guarantee valid UTF-8, so it stays bytes.
    Text(&'a [u8]),
    /// A BLOB.
    Blob(&'a [u8]),
}

/// An owned SQLite value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// An IEEE 754 double.
    Real(f64),
    /// Text bytes (normally UTF-8).
    Text(Vec<u8>),
    /// A BLOB.
    Blob(Vec<u8>),
}

impl Value {
    /// Borrows this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

impl<'a> ValueRef<'a> {
    /// TEXT of `s`, or NULL for `None`.
    pub fn text_or_null(s: Option<&'a str>) -> ValueRef<'a> {
        s.map_or(ValueRef::Null, |s| ValueRef::Text(s.as_bytes()))
    }
}

impl ValueRef<'_> {
    /// The same value exactly: storage class and bits (REAL by its bit pattern, so
    /// -0.0 is not 0.0), as the record encoding and the state digest see it.
    pub fn identical(self, other: ValueRef<'_>) -> bool {
        match (self, other) {
            (ValueRef::Real(x), ValueRef::Real(y)) => x.to_bits() == y.to_bits(),
            _ => self.same(other),
        }
    }

    /// Equality as the session extension decides "changed": same storage class and
    /// equal value (REAL compared as doubles, TEXT and BLOB byte-wise).
    pub fn same(self, other: ValueRef<'_>) -> bool {
        match (self, other) {
            (ValueRef::Null, ValueRef::Null) => true,
            (ValueRef::Integer(x), ValueRef::Integer(y)) => x == y,
            (ValueRef::Real(x), ValueRef::Real(y)) => x == y,
            (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => {
                x == y
            }
            _ => false,
        }
    }

    /// Copies this value into an owned one.
    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    /// Appends this value in record format (type byte and payload) to `out`.
    pub fn encode(self, out: &mut Vec<u8>) {
        match self {
            ValueRef::Null => out.push(NULL),
            ValueRef::Integer(i) => {
                out.push(INTEGER);
                out.extend_from_slice(&i.to_be_bytes());
            }
            ValueRef::Real(r) => {
                out.push(REAL);
                out.extend_from_slice(&r.to_bits().to_be_bytes());
            }
            ValueRef::Text(t) => {
                out.push(TEXT);
                varint::write(out, t.len() as u64);
                out.extend_from_slice(t);
            }
            ValueRef::Blob(b) => {
                out.push(BLOB);
                varint::write(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }

    /// Number of bytes [`ValueRef::encode`] writes.
    pub fn encoded_len(self) -> usize {
        match self {
            ValueRef::Null => 1,
            ValueRef::Integer(_) | ValueRef::Real(_) => 9,
            ValueRef::Text(b) | ValueRef::Blob(b) => 1 + varint::len(b.len() as u64) + b.len(),
        }
    }
}

/// Decodes one well-formed field produced by the changeset parser; `None` is undefined.
///
/// The parser has already checked lengths, so this never reads out of bounds; it is
/// still total (a short slice decodes as undefined) so that no input can make it panic.
pub fn decode_field(field: &[u8]) -> Option<ValueRef<'_>> {
    let (&ty, rest) = field.split_first()?;
    match ty {
        INTEGER => Some(ValueRef::Integer(i64::from_be_bytes(
            rest.get(..8)?.try_into().ok()?,
        ))),
        REAL => Some(ValueRef::Real(f64::from_bits(u64::from_be_bytes(
            rest.get(..8)?.try_into().ok()?,
        )))),
        TEXT | BLOB => {
            let (len, n) = varint::read(rest)?;
            let bytes = rest.get(n..n.checked_add(usize::try_from(len).ok()?)?)?;
            Some(if ty == TEXT {
                ValueRef::Text(bytes)
            } else {
                ValueRef::Blob(bytes)
            })
        }
        NULL => Some(ValueRef::Null),
        _ => None,
    }
}

/// Length of the encoded field at the start of `buf` (1 for a truncated one, so that a
/// caller stepping through a buffer always advances).
pub fn field_len(buf: &[u8]) -> usize {
    match buf.first() {
        Some(&INTEGER | &REAL) => 9.min(buf.len()),
        Some(&TEXT | &BLOB) => match varint::read(&buf[1..]) {
            Some((len, n)) => (1 + n).saturating_add(len as usize).min(buf.len()),
            None => buf.len(),
        },
        _ => 1,
    }
}
