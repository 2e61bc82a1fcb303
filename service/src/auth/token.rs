//! Docker token-auth JWTs: the signing key, issuing tokens, and verifying them (Berth's own
//! and, when configured, an external issuer's).
//!
//! Tokens are signed with ES256 by default (RS256 and EdDSA keys are accepted too). The key's
//! `kid` is its RFC 7638 thumbprint; the public keys are published as a JWKS so that any
//! replica, and any other service, can verify tokens without sharing state. Verification only
//! ever accepts the algorithm of the key the token names: `none` and HMAC tokens never pass.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// One entry of the `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The claim set of an access token (and, with another audience, of a refresh token).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

/// A token handed out by the token endpoint.
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    /// RFC 3339.
    pub issued_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token key: {0}")]
    Key(String),
}

/// A key tokens can be checked with.
struct VerifyingKey {
    key: DecodingKey,
    algorithm: Algorithm,
    /// Issuer whose tokens this key may sign.
    issuer: String,
    /// Audience those tokens must name.
    audience: String,
}

/// Signs and verifies tokens.
pub struct Tokens {
    signing: EncodingKey,
    algorithm: Algorithm,
    kid: String,
    issuer: String,
    service: String,
    ttl: Duration,
    refresh_ttl: Duration,
    keys: HashMap<String, VerifyingKey>,
    jwks: JwkSet,
}

/// An external issuer whose tokens Berth also accepts.
pub struct TrustedIssuer {
    pub issuer: String,
    pub audience: String,
    /// A JWKS (JSON) or a PEM public key.
    pub keys: Vec<u8>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint of a public JWK: SHA-256 of its required members, in order.
fn thumbprint(jwk: &Jwk) -> Result<String, TokenError> {
    let canonical = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => format!(
            r#"{{"crv":{},"kty":"EC","x":"{}","y":"{}"}}"#,
            serde_json::to_string(&p.curve).map_err(|e| TokenError::Key(e.to_string()))?,
            p.x,
            p.y
        ),
        AlgorithmParameters::RSA(p) => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, p.e, p.n),
        AlgorithmParameters::OctetKeyPair(p) => format!(
            r#"{{"crv":{},"kty":"OKP","x":"{}"}}"#,
            serde_json::to_string(&p.curve).map_err(|e| TokenError::Key(e.to_string()))?,
            p.x
        ),
        _ => return Err(TokenError::Key("unsupported key type".into())),
    };
    Ok(b64(&Sha256::digest(canonical.as_bytes())))
}

/// A PEM parser of jsonwebtoken's, and the algorithm its keys sign with.
type Parser<K> = (fn(&[u8]) -> jsonwebtoken::errors::Result<K>, Algorithm);

/// A P-256 key in SEC1 PEM (`EC PRIVATE KEY`, what `openssl ecparam -genkey` and Helm's
/// `genPrivateKey "ecdsa"` write) as PKCS#8, the form the signing library reads.
fn pkcs8_of_sec1(pem: &[u8]) -> Option<Vec<u8>> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let text = std::str::from_utf8(pem).ok()?;
    if !text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return None;
    }
    let key = p256::SecretKey::from_sec1_pem(text).ok()?;
    key.to_pkcs8_pem(LineEnding::LF).ok().map(|pem| pem.as_bytes().to_vec())
}

/// Reads a PEM private key of any supported kind.
fn signing_key(pem: &[u8]) -> Result<(EncodingKey, Algorithm, Jwk), TokenError> {
    let converted = pkcs8_of_sec1(pem);
    let pem = converted.as_deref().unwrap_or(pem);
    let attempts: [Parser<EncodingKey>; 3] = [
        (EncodingKey::from_ec_pem, Algorithm::ES256),
        (EncodingKey::from_ed_pem, Algorithm::EdDSA),
        (EncodingKey::from_rsa_pem, Algorithm::RS256),
    ];
    for (parse, algorithm) in attempts {
        if let Ok(key) = parse(pem)
            && let Ok(jwk) = Jwk::from_encoding_key(&key, algorithm)
        {
            return Ok((key, algorithm, jwk));
        }
    }
    Err(TokenError::Key("not a P-256, Ed25519 or RSA private key in PEM".into()))
}

fn key_algorithm(algorithm: Algorithm) -> Option<KeyAlgorithm> {
    match algorithm {
        Algorithm::ES256 => Some(KeyAlgorithm::ES256),
        Algorithm::ES384 => Some(KeyAlgorithm::ES384),
        Algorithm::RS256 => Some(KeyAlgorithm::RS256),
        Algorithm::RS384 => Some(KeyAlgorithm::RS384),
        Algorithm::RS512 => Some(KeyAlgorithm::RS512),
        Algorithm::PS256 => Some(KeyAlgorithm::PS256),
        Algorithm::EdDSA => Some(KeyAlgorithm::EdDSA),
        _ => None,
    }
}

/// The algorithm a public JWK verifies with: never HMAC, never `none`.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let from_key = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => return None,
    };
    let named = match jwk.common.key_algorithm {
        None => return Some(from_key),
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::ES384) => Algorithm::ES384,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::RS384) => Algorithm::RS384,
        Some(KeyAlgorithm::RS512) => Algorithm::RS512,
        Some(KeyAlgorithm::PS256) => Algorithm::PS256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        // HMAC, RSA encryption, anything else: not for verifying signatures here.
        Some(_) => return None,
    };
    Some(named)
}

/// Generates a P-256 key in PKCS#8 PEM.
pub fn generate_key_pem() -> Result<String, TokenError> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    key.to_pkcs8_pem(LineEnding::LF).map(|pem| pem.to_string()).map_err(|e| TokenError::Key(e.to_string()))
}

impl Tokens {
    /// `pems`: the signing key first, then older keys still accepted until their tokens
    /// expire (rotation).
    pub fn new(
        pems: &[Vec<u8>],
        issuer: &str,
        service: &str,
        ttl: Duration,
        trusted: Option<TrustedIssuer>,
    ) -> Result<Tokens, TokenError> {
        let (first, rest) = pems.split_first().ok_or_else(|| TokenError::Key("no signing key".into()))?;
        let mut keys = HashMap::new();
        let mut published = Vec::new();
        let mut signing = None;
        for pem in std::iter::once(first).chain(rest) {
            let (encoding, algorithm, mut jwk) = signing_key(pem)?;
            let kid = thumbprint(&jwk)?;
            jwk.common.key_id = Some(kid.clone());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            jwk.common.key_algorithm = key_algorithm(algorithm);
            let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| TokenError::Key(e.to_string()))?;
            keys.insert(
                kid.clone(),
                VerifyingKey { key: decoding, algorithm, issuer: issuer.to_owned(), audience: service.to_owned() },
            );
            published.push(jwk);
            if signing.is_none() {
                signing = Some((encoding, algorithm, kid));
            }
        }
        if let Some(trusted) = trusted {
            for (kid, key) in trusted_keys(&trusted)? {
                keys.insert(kid, key);
            }
        }
        let (signing, algorithm, kid) = signing.ok_or_else(|| TokenError::Key("no signing key".into()))?;
        Ok(Tokens {
            signing,
            algorithm,
            kid,
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            ttl,
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            keys,
            jwks: JwkSet { keys: published },
        })
    }

    /// The public keys, to be served at `/token/jwks.json`.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    fn sign(&self, sub: &str, aud: &str, ttl: Duration, access: Vec<AccessEntry>) -> Result<Issued, TokenError> {
        let issued = now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: aud.to_owned(),
            exp: issued + ttl.as_secs(),
            nbf: issued.saturating_sub(1),
            iat: issued,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
        };
        let mut header = Header::new(self.algorithm);
        header.typ = Some("JWT".into());
        header.kid = Some(self.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &self.signing).map_err(|e| TokenError::Key(e.to_string()))?;
        let at = UNIX_EPOCH + Duration::from_secs(issued);
        Ok(Issued { token, expires_in: ttl.as_secs(), issued_at: humantime::format_rfc3339_seconds(at).to_string() })
    }

    /// An access token for `sub` (empty for anonymous) with `access`.
    pub fn issue(&self, sub: &str, access: Vec<AccessEntry>) -> Result<Issued, TokenError> {
        self.sign(sub, &self.service, self.ttl, access)
    }

    /// A refresh token: proves who `sub` is to the token endpoint, never to the registry
    /// (its audience differs).
    pub fn issue_refresh(&self, sub: &str) -> Result<Issued, TokenError> {
        self.sign(sub, &self.refresh_audience(), self.refresh_ttl, Vec::new())
    }

    fn refresh_audience(&self) -> String {
        format!("{}#refresh", self.service)
    }

    /// Checks an access token presented to the registry.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_for(token, None)
    }

    /// Checks a refresh token presented to the token endpoint; returns its subject.
    pub fn verify_refresh(&self, token: &str) -> Result<String, TokenError> {
        let audience = self.refresh_audience();
        let claims = self.verify_for(token, Some(&audience))?;
        if claims.iss != self.issuer {
            return Err(TokenError::Invalid("refresh token from another issuer".into()));
        }
        Ok(claims.sub)
    }

    fn verify_for(&self, token: &str, audience: Option<&str>) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let kid = header.kid.ok_or_else(|| TokenError::Invalid("no kid in the token header".into()))?;
        let key = self.keys.get(&kid).ok_or_else(|| TokenError::Invalid(format!("unknown key {kid}")))?;
        if header.alg != key.algorithm {
            return Err(TokenError::Invalid(format!("{:?} token for a {:?} key", header.alg, key.algorithm)));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_audience(&[audience.unwrap_or(&key.audience)]);
        validation.set_issuer(&[&key.issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok(data.claims)
    }
}

/// Keys of an external issuer, from a JWKS document or a PEM public key.
fn trusted_keys(trusted: &TrustedIssuer) -> Result<Vec<(String, VerifyingKey)>, TokenError> {
    let verifying = |key: DecodingKey, algorithm| VerifyingKey {
        key,
        algorithm,
        issuer: trusted.issuer.clone(),
        audience: trusted.audience.clone(),
    };
    if let Ok(set) = serde_json::from_slice::<JwkSet>(&trusted.keys) {
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let (Some(algorithm), Ok(key)) = (jwk_algorithm(jwk), DecodingKey::from_jwk(jwk)) else { continue };
            let kid = match &jwk.common.key_id {
                Some(kid) => kid.clone(),
                None => thumbprint(jwk)?,
            };
            keys.push((kid, verifying(key, algorithm)));
        }
        return Ok(keys);
    }
    let pem = &trusted.keys;
    let attempts: [Parser<DecodingKey>; 3] = [
        (DecodingKey::from_ec_pem, Algorithm::ES256),
        (DecodingKey::from_ed_pem, Algorithm::EdDSA),
        (DecodingKey::from_rsa_pem, Algorithm::RS256),
    ];
    for (parse, algorithm) in attempts {
        if let Ok(key) = parse(pem) {
            // A PEM has no kid: the issuer's tokens must carry the key's SHA-256 fingerprint.
            let kid = b64(&Sha256::digest(pem));
            return Ok(vec![(kid, verifying(key, algorithm))]);
        }
    }
    Err(TokenError::Key("trusted issuer keys are neither a JWKS nor a PEM public key".into()))
}

/// Reads the signing key files named by `BERTH_TOKEN_KEY`, or the one generated in the data
/// directory (made on first start).
pub fn load_keys(configured: Option<&str>, data_dir: &Path) -> Result<Vec<Vec<u8>>, TokenError> {
    match configured {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| std::fs::read(p).map_err(|e| TokenError::Key(format!("cannot read {p}: {e}"))))
            .collect(),
        None => {
            let path = data_dir.join("token-key.pem");
            if !path.exists() {
                std::fs::create_dir_all(data_dir).map_err(|e| TokenError::Key(e.to_string()))?;
                let pem = generate_key_pem()?;
                write_private(&path, pem.as_bytes())?;
                tracing::info!(path = %path.display(), "generated a token signing key");
            }
            Ok(vec![std::fs::read(&path).map_err(|e| TokenError::Key(format!("cannot read {}: {e}", path.display())))?])
        }
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(|e| TokenError::Key(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(bytes).map_err(|e| TokenError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(pems: &[Vec<u8>]) -> Tokens {
        Tokens::new(pems, "berth-test", "registry", Duration::from_secs(300), None).expect("keys")
    }

    #[test]
    fn issued_tokens_verify_and_carry_their_access() {
        let pem = generate_key_pem().expect("key").into_bytes();
        let t = tokens(std::slice::from_ref(&pem));
        let access = vec![AccessEntry { kind: "repository".into(), name: "a/b".into(), actions: vec!["pull".into()] }];
        let issued = t.issue("alice", access.clone()).expect("issued");
        let claims = t.verify(&issued.token).expect("valid");
        assert_eq!((claims.sub.as_str(), claims.aud.as_str(), claims.access), ("alice", "registry", access));
        let header = jsonwebtoken::decode_header(&issued.token).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), t.jwks().keys[0].common.key_id.as_deref());
        assert_eq!(header.kid.expect("kid").len(), 43, "a base64url SHA-256 thumbprint");
        assert!(issued.issued_at.ends_with('Z'));
    }

    /// SEC1 keys (`openssl ecparam -genkey`, Helm's `genPrivateKey "ecdsa"`) sign like PKCS#8.
    #[test]
    fn a_sec1_key_signs_as_its_pkcs8_form_does() {
        use p256::pkcs8::DecodePrivateKey;
        let pkcs8 = generate_key_pem().expect("key");
        let key = p256::SecretKey::from_pkcs8_pem(&pkcs8).expect("parses");
        let sec1 = key.to_sec1_pem(p256::pkcs8::LineEnding::LF).expect("sec1").to_string();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let (from_sec1, from_pkcs8) = (tokens(&[sec1.into_bytes()]), tokens(&[pkcs8.into_bytes()]));
        let issued = from_sec1.issue("alice", Vec::new()).expect("issued");
        assert!(from_pkcs8.verify(&issued.token).is_ok(), "the same key, the same kid");
    }

    #[test]
    fn a_refresh_token_is_not_an_access_token_and_back() {
        let t = tokens(&[generate_key_pem().expect("key").into_bytes()]);
        let refresh = t.issue_refresh("alice").expect("issued");
        assert!(t.verify(&refresh.token).is_err());
        assert_eq!(t.verify_refresh(&refresh.token).expect("valid"), "alice");
        let access = t.issue("alice", Vec::new()).expect("issued");
        assert!(t.verify_refresh(&access.token).is_err());
    }

    #[test]
    fn rotated_keys_keep_old_tokens_valid() {
        let (old, new) = (generate_key_pem().expect("key").into_bytes(), generate_key_pem().expect("key").into_bytes());
        let before = tokens(std::slice::from_ref(&old)).issue("alice", Vec::new()).expect("issued");
        let after = tokens(&[new.clone(), old]);
        assert!(after.verify(&before.token).is_ok(), "signed by the old key, still accepted");
        assert_eq!(after.jwks().keys.len(), 2);
        assert!(tokens(&[new]).verify(&before.token).is_err(), "once the old key is gone, so are its tokens");
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // The example key of RFC 7638, section 3.1.
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .expect("jwk");
        assert_eq!(thumbprint(&jwk).expect("thumbprint"), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
