//! Fuzz target: snapshot manifests (`pdb_client::snapshot::Manifest`, DESIGN §4), the
//! signed description of a database image that a new device checks before it installs
//! anything.
//!
//! Input: any bytes. When they parse as JSON (serde_json), `Manifest::from_json` reads
//! them; whatever parses or not, the input also supplies the fields of a manifest the
//! target signs itself (see [`Fields`]).
//!
//! What must hold:
//! - `from_json` never panics, on any JSON value.
//! - When it reads a manifest `m`: `to_json` round trips exactly (as a value and as JSON
//!   text); the served `object` path names `m.blake3`; `verify` never panics, against
//!   the fixed pinned key, against `m`'s own key (any 32 bytes, most not a curve point)
//!   and against another key; and it accepts only what an independent check accepts:
//!   the manifest names the pinned key, and Ed25519 verifies its signature over the
//!   message of the documented layout (rebuilt here, not with `snapshot_message`)
//!   `"pdb/v1 snapshot" || str(group) || u64be(seq) || head || state || blake3 ||
//!   u64be(size)`. A manifest naming another key is refused as `WrongWitness`.
//! - A manifest signed with the fixed key from fuzz-derived fields (and one re-signed
//!   with the fields of `m`): verifies, round trips, and fails with `ManifestSignature` once any
//!   signed field (group, seq, head, state, blake3, size) or the signature is changed,
//!   and with `WrongWitness` against another pinned key.
//!
//! Seeds (`fuzz/seeds/snapshot_manifest/`): manifests made with `Manifest::sign` and
//! `to_json` by the fixed key (so `verify` accepts them and mutations of their signed
//! fields must be refused), one by another key, and broken ones. They are written by
//! this target when it starts with `PDB_FUZZ_WRITE_SEEDS=<dir>` (run the built target
//! on one input file, an empty one for instance).
#![no_main]

use std::cell::RefCell;

use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use pdb_client::cert::{hex, CertError};
use pdb_client::snapshot::Manifest;
use serde_json::Value;

/// The fixed witness key whose public key is pinned.
const WITNESS_SECRET: [u8; 32] = [0x5a; 32];
/// Another key: neither pinned nor ever the manifests' own.
const OTHER_SECRET: [u8; 32] = [0xa5; 32];

struct Target {
    key: SigningKey,
    pinned: [u8; 32],
    other: [u8; 32],
}

thread_local! {
    static TARGET: RefCell<Option<Target>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    TARGET.with(|t| {
        let mut t = t.borrow_mut();
        t.get_or_insert_with(Target::new).check(data);
    })
});

/// The signed message, rebuilt from the layout documented in DESIGN §4 and
/// `snapshot.rs`, independently of `snapshot_message`.
fn message(m: &Manifest) -> Vec<u8> {
    let mut out = b"pdb/v1 snapshot".to_vec();
    // str(x): 2-byte big-endian length, then the UTF-8 bytes (the same truncation of
    // the length as the client's `put_str` for a group of 64 KiB or more).
    out.extend_from_slice(&(m.group.len() as u16).to_be_bytes());
    out.extend_from_slice(m.group.as_bytes());
    out.extend_from_slice(&m.seq.to_be_bytes());
    out.extend_from_slice(&m.head);
    out.extend_from_slice(&m.state);
    out.extend_from_slice(&m.blake3);
    out.extend_from_slice(&m.size.to_be_bytes());
    out
}

/// Whether Ed25519 accepts `m`'s signature under `key` (any 32 bytes).
fn really_signed(m: &Manifest, key: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(key)
        .map(|k| {
            k.verify(&message(m), &Signature::from_bytes(&m.signature))
                .is_ok()
        })
        .unwrap_or(false)
}

/// Reads fields from the input; a missing byte reads as 0.
struct Fields<'a> {
    data: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    /// A group of 0 to 31 bytes (lossy UTF-8: the group of a manifest is a string).
    fn group(&mut self) -> String {
        let n = (self.byte() % 32) as usize;
        let raw: Vec<u8> = (0..n).map(|_| self.byte()).collect();
        String::from_utf8_lossy(&raw).into_owned()
    }
}

impl Target {
    fn new() -> Target {
        let key = SigningKey::from_bytes(&WITNESS_SECRET);
        let t = Target {
            pinned: key.verifying_key().to_bytes(),
            other: SigningKey::from_bytes(&OTHER_SECRET)
                .verifying_key()
                .to_bytes(),
            key,
        };
        if let Some(dir) = std::env::var_os("PDB_FUZZ_WRITE_SEEDS") {
            t.write_seeds(std::path::Path::new(&dir));
        }
        t
    }

    fn check(&mut self, data: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            if let Ok(m) = Manifest::from_json(&v) {
                self.check_read(&m);
                // The same fields, signed by the pinned key.
                self.check_signed(&m.group, &m, data);
            }
        }
        let mut f = Fields { data, at: 0 };
        let group = f.group();
        let signed_fields = Manifest {
            group: group.clone(),
            seq: u64::from_be_bytes(f.bytes()),
            head: f.bytes(),
            state: f.bytes(),
            size: u64::from_be_bytes(f.bytes()),
            blake3: f.bytes(),
            schema_hash: f.bytes(),
            created_at: i64::from_be_bytes(f.bytes()),
            witness_key: [0; 32],
            signature: [0; 64],
        };
        self.check_signed(&group, &signed_fields, data);
    }

    /// A manifest as read from the input.
    fn check_read(&self, m: &Manifest) {
        round_trip(m);
        let expected = m.witness_key == self.pinned && really_signed(m, &self.pinned);
        let got = m.verify(&self.pinned);
        assert_eq!(
            got.is_ok(),
            expected,
            "verify against the pinned key says {got:?} for {m:?}"
        );
        if m.witness_key != self.pinned {
            assert!(
                matches!(got, Err(CertError::WrongWitness { .. })),
                "a manifest naming key {} against the pinned one: {got:?}",
                hex(&m.witness_key)
            );
        }
        // Its own key, which may be no curve point at all.
        let own = m.verify(&m.witness_key);
        assert_eq!(
            own.is_ok(),
            really_signed(m, &m.witness_key),
            "verify against the manifest's own key says {own:?} for {m:?}"
        );
        if m.witness_key != self.other {
            assert!(
                m.verify(&self.other).is_err(),
                "verify accepted {m:?} against a key it does not name"
            );
        }
    }

    /// Signs `fields` (group, seq, head, state, size, blake3, schema_hash, created_at)
    /// with the pinned key and checks that exactly the signed fields are covered.
    fn check_signed(&self, group: &str, fields: &Manifest, data: &[u8]) {
        let m = Manifest::sign(
            &self.key,
            group,
            fields.seq,
            fields.head,
            fields.state,
            fields.size,
            fields.blake3,
            fields.schema_hash,
            fields.created_at,
        );
        assert_eq!(m.witness_key, self.pinned);
        assert_eq!(
            m.verify(&self.pinned),
            Ok(()),
            "a manifest just signed does not verify: {m:?}"
        );
        assert!(
            really_signed(&m, &self.pinned),
            "Manifest::sign signed another message than the documented one: {m:?}"
        );
        round_trip(&m);
        assert!(
            matches!(m.verify(&self.other), Err(CertError::WrongWitness { .. })),
            "verify against another pinned key"
        );

        // Which bit of each field to flip, from the input.
        let pick = |i: usize| {
            data.get(data.len().wrapping_sub(1 + i))
                .copied()
                .unwrap_or(0)
        };
        let byte = |i: usize| (pick(i) % 32) as usize;
        let bit = |i: usize| 1u8 << (pick(i + 8) % 8);
        let bit64 = |i: usize| 1u64 << (pick(i) % 64);
        type Tamper<'a> = (&'static str, Box<dyn Fn(&mut Manifest) + 'a>);
        let tampered: [Tamper; 9] = [
            (
                "group, appended",
                Box::new(|m: &mut Manifest| m.group.push('x')),
            ),
            (
                "group, changed",
                Box::new(|m: &mut Manifest| {
                    m.group = if m.group.is_empty() {
                        "\0".into()
                    } else {
                        let mut g: Vec<char> = m.group.chars().collect();
                        g[0] = if g[0] == 'g' { 'h' } else { 'g' };
                        g.into_iter().collect()
                    }
                }),
            ),
            ("seq", Box::new(|m: &mut Manifest| m.seq ^= bit64(0))),
            (
                "head",
                Box::new(|m: &mut Manifest| m.head[byte(1)] ^= bit(1)),
            ),
            (
                "state",
                Box::new(|m: &mut Manifest| m.state[byte(2)] ^= bit(2)),
            ),
            (
                "blake3",
                Box::new(|m: &mut Manifest| m.blake3[byte(3)] ^= bit(3)),
            ),
            ("size", Box::new(|m: &mut Manifest| m.size ^= bit64(4))),
            (
                "signature",
                Box::new(|m: &mut Manifest| m.signature[(pick(5) % 64) as usize] ^= bit(5)),
            ),
            (
                "signature, zero",
                Box::new(|m: &mut Manifest| m.signature = [0; 64]),
            ),
        ];
        for (what, tamper) in &tampered {
            let mut bad = m.clone();
            tamper(&mut bad);
            assert_ne!(bad, m, "tampering with {what} changed nothing");
            assert_eq!(
                bad.verify(&self.pinned),
                Err(CertError::ManifestSignature { seq: bad.seq }),
                "a manifest whose {what} changed after signing: {bad:?}"
            );
            // It reads back from JSON as it is (and so is refused there too).
            assert_eq!(
                Manifest::from_json(&Value::Object(bad.to_json())).as_ref(),
                Ok(&bad),
                "a tampered manifest ({what}) read back"
            );
        }
    }

    fn write_seeds(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).expect("seed dir");
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        };
        let text =
            |m: &Manifest| serde_json::to_string_pretty(&Value::Object(m.to_json())).expect("JSON");
        let h = |b: u8| [b; 32];
        let real = Manifest::sign(
            &self.key,
            "g",
            3,
            *blake3::hash(b"head 3").as_bytes(),
            *blake3::hash(b"state 3").as_bytes(),
            8192,
            *blake3::hash(b"file").as_bytes(),
            *blake3::hash(b"schema").as_bytes(),
            1_700_000_000_000,
        );
        write("signed", text(&real).as_bytes());
        let odd = Manifest::sign(
            &self.key,
            "gröup \"with\" \\ quotes",
            u64::MAX,
            h(0xff),
            h(0),
            0,
            h(1),
            h(2),
            -1,
        );
        write("signed-odd-fields", text(&odd).as_bytes());
        let other = Manifest::sign(
            &SigningKey::from_bytes(&OTHER_SECRET),
            "g",
            1,
            h(3),
            h(4),
            512,
            h(5),
            h(6),
            0,
        );
        write("other-witness", text(&other).as_bytes());
        // Broken ones: a field missing, a short hash, a signature of 63 bytes, numbers
        // of the wrong kind, not an object.
        let mut j = real.to_json();
        j.remove("blake3");
        write("missing-blake3", Value::Object(j).to_string().as_bytes());
        let mut j = real.to_json();
        j.insert("head".into(), hex(&[7; 31]).into());
        write("short-head", Value::Object(j).to_string().as_bytes());
        let mut j = real.to_json();
        let sig = j["signature"].as_str().expect("signature").to_string();
        j.insert("signature".into(), sig[..sig.len() - 4].into());
        write("short-signature", Value::Object(j).to_string().as_bytes());
        let mut j = real.to_json();
        j.insert("seq".into(), (-3).into());
        j.insert("size".into(), 1.5.into());
        j.insert("created_at".into(), "yesterday".into());
        write("wrong-numbers", Value::Object(j).to_string().as_bytes());
        write(
            "not-an-object",
            Value::Array(vec![Value::Object(real.to_json())])
                .to_string()
                .as_bytes(),
        );
    }
}

/// `to_json` and `from_json` round trip exactly, as a value and through JSON text.
fn round_trip(m: &Manifest) {
    let j = m.to_json();
    assert_eq!(
        j.get("object").and_then(Value::as_str),
        Some(format!("/v1/objects/{}", hex(&m.blake3)).as_str()),
        "object path"
    );
    let v = Value::Object(j);
    assert_eq!(
        Manifest::from_json(&v).as_ref(),
        Ok(m),
        "to_json/from_json round trip"
    );
    let text = v.to_string();
    let reparsed: Value = serde_json::from_str(&text).expect("to_json writes JSON");
    assert_eq!(
        Manifest::from_json(&reparsed).as_ref(),
        Ok(m),
        "round trip through JSON text {text}"
    );
}
