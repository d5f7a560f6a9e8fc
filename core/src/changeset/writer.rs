//! Writing changesets.

use super::{Change, Op};

/// Appends table headers and changes to a changeset buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty changeset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a table group. `pk` holds one flag per column (0 or the PK position).
    pub fn table(&mut self, name: &str, pk: &[u8]) {
        self.buf.push(b'T');
        crate::varint::write(&mut self.buf, pk.len() as u64);
        self.buf.extend_from_slice(pk);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
    }

    /// Writes the op and indirect bytes of a change; its records must follow.
    pub fn begin(&mut self, op: Op, indirect: bool) {
        self.buf.push(op.byte());
        self.buf.push(u8::from(indirect));
    }

    /// The buffer, for appending encoded fields directly.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes a whole change whose fields are already encoded.
    pub fn change(&mut self, change: &Change<'_>) {
        self.begin(change.op, change.indirect);
        for f in change.old.iter().chain(change.new.iter()) {
            self.buf.extend_from_slice(f);
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The finished changeset.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}
