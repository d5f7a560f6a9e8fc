//! Fuzz target: arbitrary bytes through every changeset routine that reads outside
//! input (`parse`, `Reader`, `invert`, `concat`, `change_to_json`).
//!
//! Nothing may panic, and whenever the input parses the algebra of the format must
//! hold: `invert` undoes itself, `concat` output is canonical and a fixed point, a
//! canonical changeset concatenated with its inverse is empty, and the JSON rendering
//! of every change is valid JSON that says exactly what the record holds.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use pdb_client::changeset::{
    change_to_json, concat, invert, parse, Change, ConcatError, FormatError, Item, Op, Reader,
    TableHeader, Writer,
};
use pdb_client::value::{decode_field, ValueRef};
use serde_json::{json, Value as Json};

fuzz_target!(|data: &[u8]| check(data));

/// Table groups as [`parse`] returns them.
type Groups<'a> = Vec<(TableHeader<'a>, Vec<Change<'a>>)>;

fn check(data: &[u8]) {
    let reader_error = check_reader(data);
    let parsed = parse(data);
    match (&parsed, &reader_error) {
        (Ok(_), None) => {}
        (Err(a), Some(b)) => assert_eq!(a, b, "parse and Reader disagree on the error"),
        _ => panic!("parse gave {parsed:?} but Reader's error was {reader_error:?}"),
    }
    match parsed {
        Err(e) => check_rejected(data, &e),
        Ok(groups) => check_accepted(data, &groups),
    }
}

/// Walks the input with [`Reader`], rendering every change it yields as JSON (also
/// those before a format error, as a streaming consumer would see them); returns the
/// error it stopped on.
fn check_reader(data: &[u8]) -> Option<FormatError> {
    let mut reader = Reader::new(data);
    let mut header: Option<TableHeader<'_>> = None;
    let mut items = 0usize;
    let mut error = None;
    for item in reader.by_ref() {
        assert!(error.is_none(), "Reader yielded an item after an error");
        items += 1;
        match item {
            Ok(Item::Table(h)) => {
                assert!(h.n_col() > 0 && !h.name.is_empty());
                assert!(h.pk.iter().any(|&f| f != 0), "header without a key");
                header = Some(h);
            }
            Ok(Item::Change(c)) => {
                let h = header
                    .as_ref()
                    .expect("Reader yielded a change before a header");
                check_change_shape(h, &c);
                check_json(h, &c);
            }
            Err(e) => {
                assert!(
                    e.offset <= data.len(),
                    "error offset {} past the end",
                    e.offset
                );
                error = Some(e);
            }
        }
    }
    // Every item but a final error takes at least two bytes (a change: op, indirect
    // flag, fields), so a reader that stops advancing would show here.
    assert!(
        items * 2 <= data.len() + 1,
        "{items} items from {} bytes",
        data.len()
    );
    assert!(reader.next().is_none(), "Reader is not fused");
    error
}

/// The record shapes the parser promises to everything downstream.
fn check_change_shape(h: &TableHeader<'_>, c: &Change<'_>) {
    let n = h.n_col();
    let (old, new) = match c.op {
        Op::Insert => (0, n),
        Op::Delete => (n, 0),
        Op::Update => (n, n),
    };
    assert_eq!((c.old.len(), c.new.len()), (old, new), "record lengths");
    for f in c.old.iter().chain(&c.new) {
        assert!(!f.is_empty(), "empty field");
        // Anything but undefined must decode: apply relies on it.
        assert!(
            f[0] == 0 || decode_field(f).is_some(),
            "field {f:?} does not decode"
        );
    }
    for &i in &h.pk_columns() {
        assert!(
            decode_field(c.key_record()[i]).is_some(),
            "undefined key field"
        );
    }
}

/// A malformed input must be refused the same way by everything that reads it.
fn check_rejected(data: &[u8], e: &FormatError) {
    assert_eq!(invert(data).as_ref(), Err(e), "invert error");
    for (first, second, which) in [(data, &[][..], "first"), (&[][..], data, "second")] {
        match concat(first, second) {
            Err(ConcatError::Format { which: w, source }) => {
                assert_eq!((w, &source), (which, e), "concat error");
            }
            // concat streams, so a table whose key changes before the bad byte is
            // reported first.
            Err(ConcatError::Schema { table }) => assert_key_changes(data, &table),
            Ok(out) => panic!("concat of a malformed {which} changeset gave {out:?}"),
        }
    }
    assert!(
        concat(data, data).is_err(),
        "concat(x, x) of a malformed changeset"
    );
}

/// Asserts that `table` (in any case) appears in `data` with two different key flag
/// vectors.
fn assert_key_changes(data: &[u8], table: &str) {
    let keys: BTreeSet<&[u8]> = Reader::new(data)
        .map_while(Result::ok)
        .filter_map(|item| match item {
            Item::Table(h) if h.name.eq_ignore_ascii_case(table) => Some(h.pk),
            _ => None,
        })
        .collect();
    assert!(
        keys.len() >= 2,
        "concat named table {table} for a schema conflict"
    );
}

fn check_accepted(data: &[u8], groups: &Groups<'_>) {
    let n = count(groups);
    let canonical_bytes = reencode(groups);
    // A changeset that parses re-encodes to a changeset that parses to the same thing.
    assert_eq!(&parse_ok(&canonical_bytes, "re-encoded input"), groups);

    check_invert(data, groups);

    let keys: BTreeSet<(&str, Vec<u8>)> = groups
        .iter()
        .flat_map(|(h, cs)| cs.iter().map(move |c| (h.name, c.key(h.pk))))
        .collect();
    assert!(keys.len() <= n);

    let with_empty = concat(data, &[]);
    let empty_with = concat(&[], data);
    let with_self = concat(data, data);
    match (&with_empty, &empty_with, &with_self) {
        (Ok(y), Ok(y2), Ok(z)) => {
            assert_eq!(y, y2, "concat(x, empty) != concat(empty, x)");
            let y_groups = assert_canonical(y, "concat(x, empty)");
            assert!(count(&y_groups) <= keys.len(), "concat(x, empty) grew");
            let z_groups = assert_canonical(z, "concat(x, x)");
            assert!(count(&z_groups) <= keys.len(), "concat(x, x) grew");
            // Merging is a fold over the changes: merging x's net effect with x again
            // must equal merging x with itself change by change.
            assert_eq!(
                concat(y, data).as_ref().ok(),
                Some(z),
                "concat(concat(x), x)"
            );
            check_inverse_cancels(y);
        }
        (
            Err(ConcatError::Schema { table: a }),
            Err(ConcatError::Schema { table: b }),
            Err(ConcatError::Schema { table: c }),
        ) => {
            assert!(a == b && b == c, "schema error names {a}, {b}, {c}");
            assert_key_changes(data, a);
        }
        _ => panic!(
            "concat disagrees on a changeset that parses: x+empty {with_empty:?}, \
             empty+x {empty_with:?}, x+x {with_self:?}"
        ),
    }
}

/// `invert` keeps tables, order, keys and flags, swaps the operations, and undoes
/// itself.
fn check_invert(data: &[u8], groups: &Groups<'_>) {
    let inv = invert(data).expect("invert refused a changeset that parses");
    let inv_groups = parse_ok(&inv, "invert(x)");
    assert_eq!(
        inv_groups.len(),
        groups.len(),
        "invert changed the table groups"
    );
    for ((h, cs), (ih, ics)) in groups.iter().zip(&inv_groups) {
        assert_eq!(h, ih, "invert changed a table header");
        assert_eq!(cs.len(), ics.len(), "invert changed the number of changes");
        for (c, ic) in cs.iter().zip(ics) {
            let want = match c.op {
                Op::Insert => Op::Delete,
                Op::Delete => Op::Insert,
                Op::Update => Op::Update,
            };
            assert_eq!(ic.op, want);
            assert_eq!(ic.indirect, c.indirect);
            // UPDATE values are written afresh by invert (as SQLite does), so keys are
            // compared in their shortest encoding.
            assert_eq!(min_key(ic, h.pk), min_key(c, h.pk), "invert changed a key");
        }
    }
    let back = invert(&inv).expect("invert(invert(x)) failed");
    // As sqlite3changeset_invert, invert copies headers and INSERT/DELETE records as
    // they are and writes UPDATE values afresh, so the round trip gives x back with
    // every value in its shortest encoding, and is a fixed point from then on.
    assert_eq!(
        minimal(&parse_ok(&back, "invert(invert(x))")),
        minimal(groups),
        "invert(invert(x)) != x"
    );
    let again = invert(&invert(&back).expect("invert")).expect("invert");
    assert_eq!(again, back, "invert(invert(.)) is not a fixed point");
}

/// A change's key with every field in its shortest encoding.
fn min_key(c: &Change<'_>, pk: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &flag) in pk.iter().enumerate() {
        if flag != 0 {
            match pdb_client::value::decode_field(c.key_record()[i]) {
                Some(v) => v.encode(&mut out),
                None => out.push(0),
            }
        }
    }
    out
}

/// `groups` written again with every value in its shortest encoding.
fn minimal(groups: &Groups<'_>) -> Vec<u8> {
    let mut w = Writer::new();
    for (h, cs) in groups {
        w.table(h.name, h.pk);
        for c in cs {
            w.begin(c.op, c.indirect);
            for f in c.old.iter().chain(c.new.iter()) {
                match pdb_client::value::decode_field(f) {
                    Some(v) => v.encode(w.buf()),
                    None => w.buf().push(0),
                }
            }
        }
    }
    w.finish()
}

/// A canonical changeset (one change per row) merged with its own inverse leaves
/// nothing, and its inverse is canonical too.
fn check_inverse_cancels(y: &[u8]) {
    let inv = invert(y).expect("invert of concat output");
    assert_canonical(&inv, "invert(concat(x, empty))");
    let net = concat(y, &inv).expect("concat(y, invert(y))");
    assert!(net.is_empty(), "concat(y, invert(y)) is not empty: {net:?}");
}

/// Checks the canonical form promised by the module documentation, and that concat
/// leaves it unchanged; returns the parsed groups.
fn assert_canonical<'a>(buf: &'a [u8], what: &str) -> Groups<'a> {
    let groups = parse_ok(buf, what);
    for pair in groups.windows(2) {
        assert!(
            pair[0].0.name < pair[1].0.name,
            "{what}: tables out of order"
        );
    }
    // SQL names tables case-insensitively (ASCII), as apply and SQLite's changegroup
    // do: two groups for one table would leave changes to one row unmerged.
    let tables: BTreeSet<String> = groups
        .iter()
        .map(|(h, _)| h.name.to_ascii_lowercase())
        .collect();
    assert_eq!(
        tables.len(),
        groups.len(),
        "{what}: one table in several groups"
    );
    for (h, cs) in &groups {
        assert!(!cs.is_empty(), "{what}: empty table group {}", h.name);
        for pair in cs.windows(2) {
            assert!(
                pair[0].key(h.pk) < pair[1].key(h.pk),
                "{what}: rows out of order"
            );
        }
    }
    assert_eq!(
        reencode(&groups),
        buf,
        "{what}: not in the writer's encoding"
    );
    let again = concat(buf, &[]).unwrap_or_else(|e| panic!("{what}: concat again: {e}"));
    assert_eq!(again, buf, "{what}: concat with empty is not a fixed point");
    groups
}

fn parse_ok<'a>(buf: &'a [u8], what: &str) -> Groups<'a> {
    parse(buf).unwrap_or_else(|e| panic!("{what} does not parse: {e}\n{buf:?}"))
}

fn count(groups: &Groups<'_>) -> usize {
    groups.iter().map(|(_, cs)| cs.len()).sum()
}

fn reencode(groups: &Groups<'_>) -> Vec<u8> {
    let mut w = Writer::new();
    for (h, cs) in groups {
        w.table(h.name, h.pk);
        for c in cs {
            w.change(c);
        }
    }
    w.finish()
}

fn check_json(h: &TableHeader<'_>, c: &Change<'_>) {
    let j = change_to_json(h, c);
    assert_eq!(
        (j.tbl.as_str(), j.op, j.indirect),
        (h.name, c.op.name(), c.indirect)
    );
    let key: Vec<&[u8]> = h.pk_columns().iter().map(|&i| c.key_record()[i]).collect();
    check_record_json(&j.pk, &key);
    assert_eq!(j.old.is_some(), c.op != Op::Insert, "old record presence");
    assert_eq!(j.new.is_some(), c.op != Op::Delete, "new record presence");
    if let Some(old) = &j.old {
        check_record_json(old, &c.old);
    }
    if let Some(new) = &j.new {
        check_record_json(new, &c.new);
    }
}

fn check_record_json(text: &str, fields: &[&[u8]]) {
    let v: Json = serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"));
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {text}"));
    assert_eq!(arr.len(), fields.len(), "JSON record length in {text}");
    for (f, j) in fields.iter().zip(arr) {
        check_value_json(f, j);
    }
}

fn check_value_json(field: &[u8], j: &Json) {
    let ok = match decode_field(field) {
        None => *j == json!({"undefined": true}),
        Some(ValueRef::Null) => j.is_null(),
        Some(ValueRef::Integer(i)) => j.as_i64() == Some(i),
        Some(ValueRef::Real(r)) if r.is_nan() => *j == json!({"real": "nan"}),
        Some(ValueRef::Real(r)) if r.is_infinite() => {
            *j == json!({"real": if r > 0.0 { "inf" } else { "-inf" }})
        }
        // A finite REAL must stay a float in JSON (never read back as an integer) and
        // come back with the same bits, -0.0 included.
        Some(ValueRef::Real(r)) => j.is_f64() && j.as_f64().map(f64::to_bits) == Some(r.to_bits()),
        Some(ValueRef::Text(t)) => j.as_str() == Some(&*String::from_utf8_lossy(t)),
        Some(ValueRef::Blob(b)) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            *j == json!({ "blob": hex })
        }
    };
    assert!(ok, "field {field:?} rendered as {j}");
}
