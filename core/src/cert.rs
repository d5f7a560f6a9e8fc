//! Heads, certificates and hex of DESIGN §4: the bytes every part signs, hashes and
//! checks, so the witness and the client can never disagree about them.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::schema::put_str;

/// A BLAKE3-256 digest.
pub type Hash = [u8; 32];

/// `head(0)` of a group.
pub fn genesis(group: &str) -> Hash {
    let mut input = b"pdb/v1 genesis".to_vec();
    put_str(&mut input, group);
    *blake3::hash(&input).as_bytes()
}

/// `head(seq)` from `head(seq - 1)` and the hash of commit `seq`'s payload.
pub fn next_head(prev: &Hash, seq: u64, changeset_hash: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"pdb/v1 head");
    h.update(prev);
    h.update(&seq.to_be_bytes());
    h.update(changeset_hash);
    *h.finalize().as_bytes()
}

/// The bytes a certificate's signature covers.
pub fn cert_message(group: &str, seq: u64, head: &Hash, state: &Hash) -> Vec<u8> {
    let mut m = b"pdb/v1 cert".to_vec();
    put_str(&mut m, group);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(state);
    m
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// A field is missing or not of the documented form.
    #[error("certificate field \"{0}\" is missing or malformed")]
    Field(&'static str),
    /// A snapshot manifest's field is missing or not of the documented form.
    #[error("snapshot manifest field \"{0}\" is missing or malformed")]
    ManifestField(&'static str),
    /// The certificate (or manifest) names another witness than the pinned one.
    #[error("signed by witness {found}, not the pinned {pinned}")]
    WrongWitness {
        /// Key the certificate names.
        found: String,
        /// Key the verifier trusts.
        pinned: String,
    },
    /// The payload's BLAKE3 differs from `changeset_hash`.
    #[error("commit {seq}: changeset hash does not match its certificate")]
    ChangesetHash {
        /// Seq of the commit.
        seq: u64,
    },
    /// `head` is not `head(prev, seq, changeset_hash)`.
    #[error("commit {seq}: head does not follow from prev and the changeset")]
    Chain {
        /// Seq of the commit.
        seq: u64,
    },
    /// The signature does not verify under the witness key.
    #[error("commit {seq}: bad witness signature")]
    Signature {
        /// Seq of the commit.
        seq: u64,
    },
    /// A snapshot manifest's signature does not verify under the witness key.
    #[error("bad witness signature on the snapshot manifest of seq {seq}")]
    ManifestSignature {
        /// Seq the manifest names.
        seq: u64,
    },
}

/// A witness certificate for commit `seq` of `group` (DESIGN §4). Its JSON object is
/// the derived serialization, members in field order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Certificate {
    /// Group id.
    pub group: String,
    /// Position in the group's history, from 1.
    pub seq: u64,
    /// `head(seq - 1)`.
    #[serde(serialize_with = "json_form::hex32")]
    pub prev: Hash,
    /// `head(seq)`.
    #[serde(serialize_with = "json_form::hex32")]
    pub head: Hash,
    /// `state(seq)`, the state digest after the commit.
    #[serde(serialize_with = "json_form::hex32")]
    pub state: Hash,
    /// BLAKE3 of the commit's payload.
    #[serde(serialize_with = "json_form::hex32")]
    pub changeset_hash: Hash,
    /// The idempotency key the commit was submitted with.
    pub idempotency_key: String,
    /// When the witness accepted it, unix ms.
    pub committed_at: i64,
    /// The witness's Ed25519 public key.
    #[serde(serialize_with = "json_form::hex32")]
    pub witness_key: [u8; 32],
    /// Ed25519 signature over [`cert_message`].
    #[serde(serialize_with = "json_form::base64_64")]
    pub signature: [u8; 64],
}

impl Certificate {
    /// Builds and signs the certificate for a commit.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &SigningKey,
        group: &str,
        seq: u64,
        prev: Hash,
        head: Hash,
        state: Hash,
        changeset_hash: Hash,
        idempotency_key: &str,
        committed_at: i64,
    ) -> Certificate {
        let signature = key
            .sign(&cert_message(group, seq, &head, &state))
            .to_bytes();
        Certificate {
            group: group.to_string(),
            seq,
            prev,
            head,
            state,
            changeset_hash,
            idempotency_key: idempotency_key.to_string(),
            committed_at,
            witness_key: key.verifying_key().to_bytes(),
            signature,
        }
    }

    /// Checks this certificate for `payload` against the pinned witness key: the
    /// payload's hash, the chain step from `prev`, and the signature.
    pub fn verify(&self, pinned: &[u8; 32], payload: &[u8]) -> Result<(), CertError> {
        if &self.witness_key != pinned {
            return Err(CertError::WrongWitness {
                found: hex(&self.witness_key),
                pinned: hex(pinned),
            });
        }
        if blake3::hash(payload).as_bytes() != &self.changeset_hash {
            return Err(CertError::ChangesetHash { seq: self.seq });
        }
        if next_head(&self.prev, self.seq, &self.changeset_hash) != self.head {
            return Err(CertError::Chain { seq: self.seq });
        }
        self.verify_signature(pinned)
    }

    /// Checks only the signature over (group, seq, head, state).
    pub fn verify_signature(&self, pinned: &[u8; 32]) -> Result<(), CertError> {
        let bad = CertError::Signature { seq: self.seq };
        let key = VerifyingKey::from_bytes(pinned).map_err(|_| bad.clone())?;
        let msg = cert_message(&self.group, self.seq, &self.head, &self.state);
        key.verify(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| bad)
    }

    /// The JSON object of DESIGN §4: hex for hashes and keys, base64 for the signature.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        json_form::object(self)
    }

    /// Reads the JSON object written by [`Certificate::to_json`]. Read member by member
    /// rather than derived: a refusal names the member at fault, which a derived
    /// deserializer's errors do not.
    pub fn from_json(v: &serde_json::Value) -> Result<Certificate, CertError> {
        use base64::Engine;
        let s = |k: &'static str| v.get(k).and_then(|x| x.as_str()).ok_or(CertError::Field(k));
        let h = |k: &'static str| s(k).and_then(|x| parse_hash(x).ok_or(CertError::Field(k)));
        let signature = base64::engine::general_purpose::STANDARD
            .decode(s("signature")?)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or(CertError::Field("signature"))?;
        Ok(Certificate {
            group: s("group")?.to_string(),
            seq: v
                .get("seq")
                .and_then(|x| x.as_u64())
                .ok_or(CertError::Field("seq"))?,
            prev: h("prev")?,
            head: h("head")?,
            state: h("state")?,
            changeset_hash: h("changeset_hash")?,
            idempotency_key: s("idempotency_key")?.to_string(),
            committed_at: v
                .get("committed_at")
                .and_then(|x| x.as_i64())
                .ok_or(CertError::Field("committed_at"))?,
            witness_key: h("witness_key")?,
            signature,
        })
    }
}

/// The JSON forms' member encodings, for `#[serde(serialize_with)]`: hex for hashes
/// and keys, standard base64 for signatures.
pub(crate) mod json_form {
    use serde::Serializer;

    pub(crate) fn hex32<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub(crate) fn base64_64<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// The JSON object of a struct whose members are strings and numbers.
    pub(crate) fn object(v: &impl serde::Serialize) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::Object(m)) => m,
            // Only a map key that is not a string or a failing Serialize impl errs, and
            // a derived struct of strings and integers has neither.
            other => unreachable!("a struct serializes to a JSON object, not {other:?}"),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Decodes hex (either case) of exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// Decodes the hex of a 32-byte hash or key.
pub fn parse_hash(s: &str) -> Option<Hash> {
    parse_hex::<32>(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_digits() {
        let h = *blake3::hash(b"x").as_bytes();
        assert_eq!(parse_hash(&hex(&h)), Some(h));
        assert_eq!(parse_hash(&hex(&h).to_uppercase()), Some(h));
        assert_eq!(parse_hash(&hex(&h)[1..]), None);
        assert_eq!(parse_hash(&format!("g{}", &hex(&h)[1..])), None);
    }

    #[test]
    fn certificate_verifies_and_every_tampering_is_caught() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let payload = b"T\x01\x01t\x00";
        let prev = genesis("g");
        let ch = *blake3::hash(payload).as_bytes();
        let head = next_head(&prev, 1, &ch);
        let cert = Certificate::sign(&key, "g", 1, prev, head, [3; 32], ch, "k", 5);
        let pinned = key.verifying_key().to_bytes();
        cert.verify(&pinned, payload).unwrap();
        let back = Certificate::from_json(&serde_json::Value::Object(cert.to_json())).unwrap();
        assert_eq!(back, cert);

        assert!(matches!(
            cert.verify(&[9; 32], payload),
            Err(CertError::WrongWitness { .. })
        ));
        assert_eq!(
            cert.verify(&pinned, b"T\x01\x01u\x00"),
            Err(CertError::ChangesetHash { seq: 1 })
        );
        let mut c = cert.clone();
        c.prev = [0; 32];
        assert_eq!(c.verify(&pinned, payload), Err(CertError::Chain { seq: 1 }));
        let mut c = cert.clone();
        c.state = [4; 32];
        assert_eq!(
            c.verify(&pinned, payload),
            Err(CertError::Signature { seq: 1 })
        );
        let mut c = cert;
        c.group = "h".into();
        assert_eq!(
            c.verify(&pinned, payload),
            Err(CertError::Signature { seq: 1 })
        );
    }
}
