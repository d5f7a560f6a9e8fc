//! Checking certified history before anything of it is applied (DESIGN §6: pull
//! verifies every certificate and the hash chain first), and the state digest of a
//! device's own tables, to compare with a certificate when nothing is pending.

use crate::cert::{Certificate, Hash};
use crate::error::ChainError;

// The full recount lives in pdb-core, where the witness shares it; callers here keep
// their old path.
pub use pdb_core::state::{state_in, state_of};

/// Checks that `commits` continue the history from `trusted` = (seq, head): each is
/// certified by `pinned` for `group`, has the next seq, builds on the previous head,
/// and carries the payload its certificate names. Returns the new trusted head.
pub fn verify_chain<'a>(
    pinned: &[u8; 32],
    group: &str,
    trusted: (u64, Hash),
    commits: impl IntoIterator<Item = (&'a Certificate, &'a [u8])>,
) -> Result<(u64, Hash), ChainError> {
    let (mut seq, mut head) = trusted;
    for (cert, payload) in commits {
        if cert.group != group {
            return Err(ChainError::Group {
                seq: cert.seq,
                found: cert.group.clone(),
                expected: group.to_string(),
            });
        }
        if cert.seq != seq + 1 {
            return Err(ChainError::Gap {
                expected: seq + 1,
                found: cert.seq,
            });
        }
        if cert.prev != head {
            return Err(ChainError::Fork { seq: cert.seq });
        }
        cert.verify(pinned, payload)?;
        (seq, head) = (cert.seq, cert.head);
    }
    Ok((seq, head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{genesis, next_head, CertError};
    use ed25519_dalek::SigningKey;

    fn chain(key: &SigningKey, group: &str, payloads: &[&[u8]]) -> Vec<Certificate> {
        let mut prev = genesis(group);
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let seq = i as u64 + 1;
            let hash = *blake3::hash(p).as_bytes();
            let head = next_head(&prev, seq, &hash);
            out.push(Certificate::sign(
                key, group, seq, prev, head, [0; 32], hash, "k", 0,
            ));
            prev = head;
        }
        out
    }

    #[test]
    fn a_good_chain_moves_the_trusted_head_and_every_break_is_named() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let pinned = key.verifying_key().to_bytes();
        let payloads: [&[u8]; 3] = [b"T1", b"T2", b"T3"];
        let certs = chain(&key, "g", &payloads);
        // Each certificate travels with the payload of its own seq.
        let run = |certs: &[Certificate], from: (u64, Hash)| {
            let with = certs.iter().map(|c| (c, payloads[(c.seq - 1) as usize]));
            verify_chain(&pinned, "g", from, with)
        };
        assert_eq!(run(&certs, (0, genesis("g"))), Ok((3, certs[2].head)));
        assert_eq!(run(&certs[1..], (1, certs[0].head)), Ok((3, certs[2].head)));
        assert_eq!(run(&[], (0, genesis("g"))), Ok((0, genesis("g"))));

        assert_eq!(
            run(&certs[1..], (0, genesis("g"))),
            Err(ChainError::Gap {
                expected: 1,
                found: 2
            })
        );
        assert_eq!(
            run(&certs, (0, genesis("h"))),
            Err(ChainError::Fork { seq: 1 })
        );
        let other = chain(&key, "h", &payloads);
        assert!(matches!(
            run(&other, (0, genesis("g"))),
            Err(ChainError::Group { .. })
        ));
        let stranger = chain(&SigningKey::from_bytes(&[2; 32]), "g", &payloads);
        assert!(matches!(
            run(&stranger, (0, genesis("g"))),
            Err(ChainError::Certificate(CertError::WrongWitness { .. }))
        ));
        let swapped: Vec<(&Certificate, &[u8])> =
            vec![(&certs[0], b"T1"), (&certs[1], b"T9"), (&certs[2], b"T3")];
        assert_eq!(
            verify_chain(&pinned, "g", (0, genesis("g")), swapped),
            Err(ChainError::Certificate(CertError::ChangesetHash { seq: 2 }))
        );
    }
}
