//! Snapshot manifests (DESIGN §4): the signed description of a database image of a
//! group at one head, which a new device checks before it installs anything.

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::cert::{hex, json_form, parse_hash, CertError, Hash};
use crate::schema::put_str;

/// The bytes a manifest's signature covers:
/// `"pdb/v1 snapshot" || str(g) || u64be(n) || head(n) || state(n) || blake3(file) || u64be(size)`.
pub fn snapshot_message(
    group: &str,
    seq: u64,
    head: &Hash,
    state: &Hash,
    file: &Hash,
    size: u64,
) -> Vec<u8> {
    let mut m = b"pdb/v1 snapshot".to_vec();
    put_str(&mut m, group);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(state);
    m.extend_from_slice(file);
    m.extend_from_slice(&size.to_be_bytes());
    m
}

/// A signed snapshot manifest. Its JSON object is the derived serialization, members
/// in field order, then `object`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Manifest {
    /// Group id.
    pub group: String,
    /// The seq of the head the image holds.
    pub seq: u64,
    /// `head(seq)`.
    #[serde(serialize_with = "json_form::hex32")]
    pub head: Hash,
    /// `state(seq)`: the state digest the image's tables must have.
    #[serde(serialize_with = "json_form::hex32")]
    pub state: Hash,
    /// Size of the file in bytes.
    pub size: u64,
    /// BLAKE3 of the file's bytes (also its object name).
    #[serde(serialize_with = "json_form::hex32")]
    pub blake3: Hash,
    /// Schema hash of the tables in the image.
    #[serde(serialize_with = "json_form::hex32")]
    pub schema_hash: Hash,
    /// When the witness made it, unix ms.
    pub created_at: i64,
    /// The witness's Ed25519 public key.
    #[serde(serialize_with = "json_form::hex32")]
    pub witness_key: [u8; 32],
    /// Ed25519 signature over [`snapshot_message`].
    #[serde(serialize_with = "json_form::base64_64")]
    pub signature: [u8; 64],
}

impl Manifest {
    /// Builds and signs a manifest.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &SigningKey,
        group: &str,
        seq: u64,
        head: Hash,
        state: Hash,
        size: u64,
        blake3: Hash,
        schema_hash: Hash,
        created_at: i64,
    ) -> Manifest {
        let msg = snapshot_message(group, seq, &head, &state, &blake3, size);
        Manifest {
            group: group.to_string(),
            seq,
            head,
            state,
            size,
            blake3,
            schema_hash,
            created_at,
            witness_key: key.verifying_key().to_bytes(),
            signature: key.sign(&msg).to_bytes(),
        }
    }

    /// Checks the signature against the pinned witness key.
    pub fn verify(&self, pinned: &[u8; 32]) -> Result<(), CertError> {
        if &self.witness_key != pinned {
            return Err(CertError::WrongWitness {
                found: hex(&self.witness_key),
                pinned: hex(pinned),
            });
        }
        let bad = CertError::ManifestSignature { seq: self.seq };
        let key = VerifyingKey::from_bytes(pinned).map_err(|_| bad.clone())?;
        let msg = snapshot_message(
            &self.group,
            self.seq,
            &self.head,
            &self.state,
            &self.blake3,
            self.size,
        );
        key.verify(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| bad)
    }

    /// The object path the file is served at.
    pub fn object_path(&self) -> String {
        format!("/v1/objects/{}", hex(&self.blake3))
    }

    /// The JSON object the witness serves: hex for hashes and keys, base64 for the
    /// signature, as in certificates.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = json_form::object(self);
        m.insert("object".into(), self.object_path().into());
        m
    }

    /// Reads the JSON object written by [`Manifest::to_json`], member by member so that
    /// a refusal names the member at fault.
    pub fn from_json(v: &serde_json::Value) -> Result<Manifest, CertError> {
        let s = |k: &'static str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or(CertError::ManifestField(k))
        };
        let h =
            |k: &'static str| s(k).and_then(|x| parse_hash(x).ok_or(CertError::ManifestField(k)));
        let n = |k: &'static str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .ok_or(CertError::ManifestField(k))
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(s("signature")?)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or(CertError::ManifestField("signature"))?;
        Ok(Manifest {
            group: s("group")?.to_string(),
            seq: n("seq")?,
            head: h("head")?,
            state: h("state")?,
            size: n("size")?,
            blake3: h("blake3")?,
            schema_hash: h("schema_hash")?,
            created_at: v.get("created_at").and_then(|x| x.as_i64()).unwrap_or(0),
            witness_key: h("witness_key")?,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_every_signed_field_is_covered() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let pinned = key.verifying_key().to_bytes();
        let m = Manifest::sign(&key, "g", 7, [1; 32], [2; 32], 4096, [3; 32], [4; 32], 9);
        m.verify(&pinned).unwrap();
        let back = Manifest::from_json(&serde_json::Value::Object(m.to_json())).unwrap();
        assert_eq!(back, m);
        let tampered: [fn(&mut Manifest); 6] = [
            |m| m.group = "h".into(),
            |m| m.seq = 8,
            |m| m.head = [9; 32],
            |m| m.state = [9; 32],
            |m| m.blake3 = [9; 32],
            |m| m.size = 4097,
        ];
        for t in tampered {
            let mut bad = m.clone();
            t(&mut bad);
            assert_eq!(
                bad.verify(&pinned),
                Err(CertError::ManifestSignature { seq: bad.seq })
            );
        }
        assert!(matches!(
            m.verify(&[8; 32]),
            Err(CertError::WrongWitness { .. })
        ));
        let mut j = m.to_json();
        j.remove("blake3");
        assert_eq!(
            Manifest::from_json(&serde_json::Value::Object(j)),
            Err(CertError::ManifestField("blake3"))
        );
    }
}
