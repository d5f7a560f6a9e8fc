//! Fuzz target: a group's DDL as `PUT /v1/groups/{g}` hands it to the witness, through
//! `check_ddl` (the schema guard on a scratch in-memory database, as the witness runs
//! it before anything else).
//!
//! What must hold (DESIGN §7, invariants 6 and 7): nothing panics; a refusal is
//! `SchemaError::Invalid` (a scratch database has no storage to fail), never
//! `Storage`, so the witness answers `invalid_schema` and not "retry later"; an
//! accepted DDL yields at least one table and the schema hash of exactly those tables;
//! and no input writes a file: the names in the working directory, where ATTACH and
//! VACUUM INTO with relative names would land, stay as they were (libFuzzer itself
//! writes only inside its corpus and artifact folders).
#![no_main]

use std::collections::BTreeSet;
use std::ffi::OsString;

use libfuzzer_sys::fuzz_target;
use pdb_client::schema::schema_hash;
use pdb_witness::replica::{check_ddl, SchemaError};

struct Target {
    /// The names in the working directory before any input ran.
    names: BTreeSet<OsString>,
}

fn names() -> BTreeSet<OsString> {
    std::fs::read_dir(".")
        .expect("read the working directory")
        .map(|e| e.expect("a directory entry").file_name())
        .collect()
}

impl Target {
    fn new() -> Target {
        Target { names: names() }
    }
}

thread_local! {
    static TARGET: Target = Target::new();
}

fuzz_target!(|data: &[u8]| TARGET.with(|t| check(t, data)));

fn check(t: &Target, data: &[u8]) {
    let ddl = String::from_utf8_lossy(data);
    match check_ddl(&ddl) {
        Ok((tables, hash)) => {
            assert!(!tables.is_empty(), "accepted with no table: {ddl:?}");
            assert_eq!(hash, schema_hash(&tables));
            for table in &tables {
                assert!(
                    !table.name.to_ascii_lowercase().starts_with("pdb_"),
                    "{ddl:?}"
                );
            }
        }
        Err(SchemaError::Invalid(why)) => assert!(!why.is_empty()),
        Err(SchemaError::Storage(e)) => panic!("a scratch database reported storage: {e}: {ddl:?}"),
    }
    let now = names();
    let written: Vec<_> = now.difference(&t.names).collect();
    assert!(written.is_empty(), "{ddl:?} wrote {written:?}");
}
