//! Bearer-token authorisation: JWTs signed with an HS256 secret or an Ed25519 key,
//! carrying the subject, the expiry and a role per group (DESIGN §5).

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::{Code, Problem};

/// What a token allows on a group; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Pull commits, read group info and snapshots.
    Read,
    /// Also submit commits.
    Write,
    /// Also create groups.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role \"{s}\" (read, write or admin)")),
        }
    }
}

/// What a token grants on one group: a role, or reads of named projections only
/// (`"project:<name>"`, or a list of them), which reach nothing else of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A role and every role below it.
    Role(Role),
    /// Reads of these projections, and nothing else.
    Projections(Vec<String>),
}

impl std::str::FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Grant, String> {
        match s.strip_prefix("project:") {
            Some(name) if !name.is_empty() => Ok(Grant::Projections(vec![name.to_string()])),
            Some(_) => Err("project: needs a projection name".into()),
            None => s
                .parse()
                .map(Grant::Role)
                .map_err(|e| format!("{e}, or project:<name>")),
        }
    }
}

/// A grant as tokens spell it.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum GrantText {
    One(String),
    Many(Vec<String>),
}

impl TryFrom<GrantText> for Grant {
    type Error = String;
    fn try_from(g: GrantText) -> Result<Grant, String> {
        match g {
            GrantText::One(s) => s.parse(),
            GrantText::Many(list) => {
                let mut names = Vec::new();
                for s in list {
                    match s.parse()? {
                        Grant::Projections(n) => names.extend(n),
                        Grant::Role(_) => {
                            return Err(
                                "a list of grants may hold only project:<name> entries".into()
                            )
                        }
                    }
                }
                Ok(Grant::Projections(names))
            }
        }
    }
}

impl From<&Grant> for GrantText {
    fn from(g: &Grant) -> GrantText {
        match g {
            Grant::Role(r) => GrantText::One(format!("{r:?}").to_lowercase()),
            Grant::Projections(n) if n.len() == 1 => GrantText::One(format!("project:{}", n[0])),
            Grant::Projections(n) => {
                GrantText::Many(n.iter().map(|n| format!("project:{n}")).collect())
            }
        }
    }
}

/// The claims of a PersonalDB token as they are signed.
#[derive(Serialize, Deserialize)]
struct ClaimsText {
    sub: String,
    exp: u64,
    #[serde(default)]
    groups: BTreeMap<String, GrantText>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// The claims of a PersonalDB token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "ClaimsText", into = "ClaimsText")]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Grant per group name; the name `*` stands for every group.
    pub groups: BTreeMap<String, Grant>,
    /// Every other claim (a projection's scope may compare rows with one).
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl TryFrom<ClaimsText> for Claims {
    type Error = String;
    fn try_from(c: ClaimsText) -> Result<Claims, String> {
        let mut groups = BTreeMap::new();
        for (g, grant) in c.groups {
            let grant = Grant::try_from(grant).map_err(|e| format!("group \"{g}\": {e}"))?;
            groups.insert(g, grant);
        }
        Ok(Claims {
            sub: c.sub,
            exp: c.exp,
            groups,
            extra: c.extra,
        })
    }
}

impl From<Claims> for ClaimsText {
    fn from(c: Claims) -> ClaimsText {
        ClaimsText {
            groups: c
                .groups
                .iter()
                .map(|(g, r)| (g.clone(), r.into()))
                .collect(),
            sub: c.sub,
            exp: c.exp,
            extra: c.extra,
        }
    }
}

impl Claims {
    /// Claims granting `role` on each of `groups`.
    pub fn new(sub: &str, exp: u64, groups: impl IntoIterator<Item = (String, Grant)>) -> Claims {
        Claims {
            sub: sub.to_string(),
            exp,
            groups: groups.into_iter().collect(),
            extra: BTreeMap::new(),
        }
    }

    fn grant(&self, group: &str) -> Option<&Grant> {
        self.groups.get(group).or_else(|| self.groups.get("*"))
    }

    /// The role these claims grant on `group`: its own entry, else the `*` entry.
    /// `None` for a projection-only grant.
    pub fn role(&self, group: &str) -> Option<Role> {
        match self.grant(group)? {
            Grant::Role(r) => Some(*r),
            Grant::Projections(_) => None,
        }
    }

    /// Whether the claims grant reads of projection `name` of `group` and nothing
    /// more (so its scope applies).
    pub fn projection_only(&self, group: &str, name: &str) -> bool {
        matches!(self.grant(group), Some(Grant::Projections(n)) if n.iter().any(|n| n == name))
    }

    /// The value of claim `name` as text, if the token has it as a string or number.
    pub fn claim(&self, name: &str) -> Option<String> {
        if name == "sub" {
            return Some(self.sub.clone());
        }
        match self.extra.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// How tokens are checked (and, when the witness holds the signing key, issued).
pub struct Auth {
    decoding: DecodingKey,
    validation: Validation,
}

/// A token signing key.
pub enum SigningSecret {
    /// HS256 with a shared secret.
    Hs256(Vec<u8>),
    /// EdDSA with an Ed25519 key (its 32-byte seed).
    Ed25519([u8; 32]),
}

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl SigningSecret {
    /// Issues a token for `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        match self {
            SigningSecret::Hs256(secret) => jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                claims,
                &EncodingKey::from_secret(secret),
            ),
            SigningSecret::Ed25519(seed) => {
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                der.extend_from_slice(seed);
                jsonwebtoken::encode(
                    &Header::new(Algorithm::EdDSA),
                    claims,
                    &EncodingKey::from_ed_der(&der),
                )
            }
        }
    }
}

impl Auth {
    /// Accepts HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Auth {
        Auth::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Accepts EdDSA tokens signed by the holder of this Ed25519 public key.
    pub fn ed25519(public_key: &[u8; 32]) -> Auth {
        Auth::with(DecodingKey::from_ed_der(public_key), Algorithm::EdDSA)
    }

    /// Accepts tokens up to `seconds` past their `exp` (5 unless set).
    pub fn with_leeway(mut self, seconds: u64) -> Auth {
        self.validation.leeway = seconds;
        self
    }

    fn with(decoding: DecodingKey, alg: Algorithm) -> Auth {
        let mut validation = Validation::new(alg);
        // A few seconds of clock skew between the token's issuer and the witness.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            decoding,
            validation,
        }
    }

    /// Checks the `Authorization` header value and that it grants `need` on `group`.
    /// Unknown groups are not told apart from others: the answer depends on the token
    /// only, so a token for one group learns nothing about another.
    pub fn check(&self, header: Option<&str>, group: &str, need: Role) -> Result<Claims, Problem> {
        let claims = self.authenticate(header)?;
        match claims.grant(group) {
            Some(Grant::Role(r)) if *r >= need => Ok(claims),
            Some(Grant::Role(r)) => Err(Problem::new(
                Code::Forbidden,
                format!("this needs the {need:?} role on the group; the token grants {r:?}")
                    .to_lowercase(),
            )),
            Some(Grant::Projections(_)) => Err(Problem::new(
                Code::Forbidden,
                "the token grants reads of projections only on this group",
            )),
            None => Err(Problem::new(
                Code::Forbidden,
                "the token grants no role on this group",
            )),
        }
    }

    /// Checks the token alone.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Claims, Problem> {
        let Some(h) = header else {
            return Err(Problem::new(
                Code::Unauthorized,
                "missing Authorization: Bearer <token>",
            ));
        };
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        let token = h
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t)
            .ok_or_else(|| {
                Problem::new(Code::Unauthorized, "Authorization is not a Bearer token")
            })?;
        jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::InvalidAlgorithm => "the token is signed with another algorithm",
                    _ => "the token is malformed",
                };
                Problem::new(Code::Unauthorized, why)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(groups: &[(&str, Role)], exp: u64) -> Claims {
        Claims::new(
            "alice",
            exp,
            groups.iter().map(|(g, r)| (g.to_string(), Grant::Role(*r))),
        )
    }

    #[test]
    fn projection_grants_read_their_projections_and_nothing_else() {
        let secret = SigningSecret::Hs256(b"s3cret".to_vec());
        let auth = Auth::hs256(b"s3cret");
        let mut c = Claims::new(
            "bob",
            later(),
            [("g".to_string(), "project:search".parse::<Grant>().unwrap())],
        );
        c.extra.insert("team".into(), "blue".into());
        let t = secret.issue(&c).unwrap();
        let h = format!("Bearer {t}");
        let back = auth.authenticate(Some(&h)).unwrap();
        assert!(back.projection_only("g", "search"));
        assert!(!back.projection_only("g", "other"));
        assert_eq!(back.role("g"), None);
        assert_eq!(back.claim("team").as_deref(), Some("blue"));
        assert_eq!(back.claim("sub").as_deref(), Some("bob"));
        assert_eq!(
            auth.check(Some(&h), "g", Role::Read).unwrap_err().code,
            Code::Forbidden
        );
        // A list of grants is for projections only.
        let raw = serde_json::json!({"sub": "x", "exp": later(), "groups": {"g": ["project:a", "project:b"]}});
        let c: Claims = serde_json::from_value(raw).unwrap();
        assert!(c.projection_only("g", "b"));
        let bad = serde_json::json!({"sub": "x", "exp": later(), "groups": {"g": ["read"]}});
        assert!(serde_json::from_value::<Claims>(bad).is_err());
        let bad = serde_json::json!({"sub": "x", "exp": later(), "groups": {"g": "owner"}});
        assert!(serde_json::from_value::<Claims>(bad).is_err());
    }

    fn later() -> u64 {
        crate::now_ms() as u64 / 1000 + 3600
    }

    #[test]
    fn roles_are_ordered_and_scoped_to_groups() {
        let secret = SigningSecret::Hs256(b"s3cret".to_vec());
        let auth = Auth::hs256(b"s3cret");
        let t = secret
            .issue(&claims(&[("g", Role::Write)], later()))
            .unwrap();
        let h = format!("Bearer {t}");
        assert!(auth.check(Some(&h), "g", Role::Read).is_ok());
        assert!(auth.check(Some(&h), "g", Role::Write).is_ok());
        assert_eq!(
            auth.check(Some(&h), "g", Role::Admin).unwrap_err().code,
            Code::Forbidden
        );
        assert_eq!(
            auth.check(Some(&h), "h", Role::Read).unwrap_err().code,
            Code::Forbidden
        );
        let star = secret
            .issue(&claims(&[("*", Role::Admin)], later()))
            .unwrap();
        assert!(auth
            .check(Some(&format!("Bearer {star}")), "any", Role::Admin)
            .is_ok());
    }

    #[test]
    fn bad_tokens_are_unauthorized() {
        let auth = Auth::hs256(b"s3cret");
        let other = SigningSecret::Hs256(b"other".to_vec());
        let t = other
            .issue(&claims(&[("g", Role::Admin)], later()))
            .unwrap();
        for h in [
            None,
            Some("Basic abc".to_string()),
            Some("Bearer nonsense".to_string()),
            Some(format!("Bearer {t}")),
        ] {
            let e = auth.check(h.as_deref(), "g", Role::Read).unwrap_err();
            assert_eq!(e.code, Code::Unauthorized, "{h:?}");
        }
        let good = SigningSecret::Hs256(b"s3cret".to_vec());
        let expired = good.issue(&claims(&[("g", Role::Admin)], 1_000)).unwrap();
        let e = auth
            .check(Some(&format!("Bearer {expired}")), "g", Role::Read)
            .unwrap_err();
        assert_eq!(e.detail, "the token has expired");
    }

    #[test]
    fn the_leeway_is_how_long_past_exp_a_token_is_accepted() {
        let secret = SigningSecret::Hs256(b"s3cret".to_vec());
        let now = crate::now_ms() as u64 / 1000;
        let ago = |s: u64| {
            let t = secret
                .issue(&claims(&[("g", Role::Read)], now - s))
                .unwrap();
            format!("Bearer {t}")
        };
        let strict = Auth::hs256(b"s3cret").with_leeway(0);
        assert_eq!(
            strict
                .check(Some(&ago(1)), "g", Role::Read)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        let lenient = Auth::hs256(b"s3cret").with_leeway(30);
        assert!(lenient.check(Some(&ago(10)), "g", Role::Read).is_ok());
        assert!(lenient.check(Some(&ago(60)), "g", Role::Read).is_err());
    }

    #[test]
    fn ed25519_tokens_verify_with_the_public_key_only() {
        let seed = [5u8; 32];
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let t = SigningSecret::Ed25519(seed)
            .issue(&claims(&[("g", Role::Read)], later()))
            .unwrap();
        let auth = Auth::ed25519(&public);
        assert!(auth
            .check(Some(&format!("Bearer {t}")), "g", Role::Read)
            .is_ok());
        let hs = SigningSecret::Hs256(public.to_vec())
            .issue(&claims(&[("g", Role::Read)], later()))
            .unwrap();
        assert_eq!(
            auth.check(Some(&format!("Bearer {hs}")), "g", Role::Read)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
    }
}
