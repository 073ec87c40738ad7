//! Identity: HS256 JWTs (minted for guests or by `confab token`), the `rooms`
//! claim, and the secret that signs them.

use crate::protocol::{check_display_name, ErrorCode, Rejection, UserInfo};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The shortest secret accepted, in bytes (see `config::MIN_SECRET_BYTES`).
pub use crate::config::MIN_SECRET_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the JWT secret at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.jwt_secret is empty and there is no secret file at {}", path.display())]
    Missing { path: PathBuf },
    #[error("the JWT secret in {} is {len} bytes; it must be at least {MIN_SECRET_BYTES}", path.display())]
    TooShort { path: PathBuf, len: usize },
}

/// Where a secret came from, so `confab token` can say which one it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `auth.jwt_secret` (from the config file or the environment).
    Configured,
    /// The file `data_dir/jwt_secret`.
    File(PathBuf),
}

/// The file that keeps the generated secret when `auth.jwt_secret` is empty.
pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("jwt_secret")
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub name: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// `true`: a moderator. Any other value (or none) is not.
    #[serde(rename = "mod", default, skip_serializing_if = "Option::is_none")]
    pub moderator: Option<serde_json::Value>,
    /// `true`: a server admin. Any other value (or none) is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<serde_json::Value>,
    /// Roles from an identity provider: `"mod"` among them makes a moderator,
    /// `"admin"` a server admin. Anything but an array of strings grants no role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<serde_json::Value>,
}

/// The role (in `roles`) that makes a moderator.
pub const MODERATOR_ROLE: &str = "mod";
/// The role (in `roles`) that makes a server admin.
pub const ADMIN_ROLE: &str = "admin";

impl Claims {
    /// A moderator deletes anyone's messages: `"mod": true`, or `"mod"` in `roles`.
    pub fn is_moderator(&self) -> bool {
        Self::granted(&self.moderator, &self.roles, MODERATOR_ROLE)
    }

    /// A server admin manages every room like its owner (docs/protocol.md,
    /// section 7b): `"admin": true`, or `"admin"` in `roles`.
    pub fn is_server_admin(&self) -> bool {
        Self::granted(&self.admin, &self.roles, ADMIN_ROLE)
    }

    fn granted(
        flag: &Option<serde_json::Value>,
        roles: &Option<serde_json::Value>,
        role: &str,
    ) -> bool {
        let flag = flag.as_ref().and_then(|v| v.as_bool()) == Some(true);
        let listed = roles
            .as_ref()
            .and_then(|v| v.as_array())
            .is_some_and(|roles| roles.iter().any(|r| r.as_str() == Some(role)));
        flag || listed
    }
}

/// Which rooms a token may join and read. Entries ending in `*` are prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomAccess {
    patterns: Option<Vec<String>>,
}

impl RoomAccess {
    pub fn all() -> Self {
        Self { patterns: None }
    }

    pub fn only(patterns: Vec<String>) -> Self {
        Self {
            patterns: Some(patterns),
        }
    }

    pub fn allows(&self, room: &str) -> bool {
        match &self.patterns {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => p == room,
            }),
        }
    }

    pub fn check(&self, room: &str) -> Result<(), Rejection> {
        if self.allows(room) {
            Ok(())
        } else {
            Err(Rejection::new(
                ErrorCode::ForbiddenRoom,
                "your token does not grant this room",
            )
            .in_room(Some(room)))
        }
    }
}

/// Who is on the other end of a connection or request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<UserInfo>,
    pub rooms: RoomAccess,
    /// When the token stops being valid (Unix seconds); `None` for token-less guests.
    pub expires_at: Option<u64>,
    /// The token's claims make this user a moderator (never a guest).
    pub moderator: bool,
    /// The token's claims make this user a server admin (never a guest).
    pub server_admin: bool,
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // No leeway for exp, and so none for nbf either (one field sets both).
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn mint(&self, sub: &str, name: &str, ttl_secs: u64, rooms: Option<Vec<String>>) -> String {
        self.mint_as(sub, name, ttl_secs, rooms, false, false)
    }

    /// [`Auth::mint`], with `"mod": true` when `moderator` and `"admin": true`
    /// when `admin`.
    pub fn mint_as(
        &self,
        sub: &str,
        name: &str,
        ttl_secs: u64,
        rooms: Option<Vec<String>>,
        moderator: bool,
        admin: bool,
    ) -> String {
        let claims = Claims {
            sub: sub.to_string(),
            name: name.to_string(),
            exp: unix_now().saturating_add(ttl_secs),
            rooms,
            moderator: moderator.then_some(serde_json::Value::Bool(true)),
            admin: admin.then_some(serde_json::Value::Bool(true)),
            roles: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    pub fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        "the token is not valid yet (nbf)"
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "the token signature is invalid"
                    }
                    _ => "the token is invalid",
                };
                Rejection::new(ErrorCode::Unauthorized, why)
            })?;
        let claims = data.claims;
        let moderator = claims.is_moderator();
        let server_admin = claims.is_server_admin();
        if claims.sub.is_empty() || claims.sub.contains('\0') {
            return Err(Rejection::new(
                ErrorCode::Unauthorized,
                "the token's sub is empty or contains NUL",
            ));
        }
        let name = check_display_name(&claims.name).map_err(|_| {
            Rejection::new(ErrorCode::Unauthorized, "the token's name claim is invalid")
        })?;
        Ok(Identity {
            user: Arc::new(UserInfo {
                id: claims.sub,
                name,
            }),
            rooms: claims.rooms.map_or_else(RoomAccess::all, RoomAccess::only),
            expires_at: Some(claims.exp),
            moderator,
            server_admin,
        })
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The configured secret, or the one kept in `data_dir/jwt_secret`; never
/// creates one (`confab token` must sign with the server's secret or fail).
pub fn load_secret(
    configured: &str,
    data_dir: &Path,
) -> Result<(Vec<u8>, SecretSource), SecretError> {
    if !configured.is_empty() {
        return Ok((configured.as_bytes().to_vec(), SecretSource::Configured));
    }
    let path = secret_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(existing) if !existing.trim().is_empty() => {
            let secret = existing.trim().as_bytes().to_vec();
            if secret.len() < MIN_SECRET_BYTES {
                return Err(SecretError::TooShort {
                    len: secret.len(),
                    path,
                });
            }
            Ok((secret, SecretSource::File(path)))
        }
        Ok(_) => Err(SecretError::Missing { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SecretError::Missing { path }),
        Err(source) => Err(SecretError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The configured secret, or the one kept in `data_dir/jwt_secret`, created on first use.
pub fn load_or_create_secret(configured: &str, data_dir: &Path) -> Result<Vec<u8>, SecretError> {
    match load_secret(configured, data_dir) {
        Ok((secret, _)) => return Ok(secret),
        Err(SecretError::Missing { .. }) => {}
        Err(e) => return Err(e),
    }
    let path = secret_path(data_dir);
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    // 32 random bytes, hex: 64 bytes of secret, twice MIN_SECRET_BYTES.
    let secret: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    // Only reached when the file is absent or blank: a blank one (a crash
    // between create and write) is replaced.
    if path.exists() {
        std::fs::remove_file(&path).map_err(io)?;
    }
    match write_private(&path, secret.as_bytes()) {
        Ok(()) => Ok(secret.into_bytes()),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load_secret(configured, data_dir).map(|(secret, _)| secret)
        }
        Err(e) => Err(io(e)),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let auth = Auth::new(b"s1");
        let t = auth.mint(
            "u-1",
            "alice",
            60,
            Some(vec!["team-*".into(), "general".into()]),
        );
        let id = auth.verify(&t).unwrap();
        assert_eq!(id.user.id, "u-1");
        assert!(id.rooms.allows("team-a"));
        assert!(id.rooms.allows("general"));
        assert!(!id.rooms.allows("general2"));
        assert!(!id.rooms.allows("random"));
        assert_eq!(
            Auth::new(b"s2").verify(&t).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert!(auth.verify("garbage").is_err());
    }

    #[test]
    fn moderators_by_flag_or_role() {
        let secret = b"s1";
        let auth = Auth::new(secret);
        let exp = unix_now() + 60;
        let verify = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "u-1", "name": "ann", "exp": exp});
            for (k, v) in extra.as_object().unwrap() {
                claims[k] = v.clone();
            }
            auth.verify(&claims_token(secret, claims))
                .map(|id| id.moderator)
        };
        assert_eq!(verify(serde_json::json!({"mod": true})), Ok(true));
        assert_eq!(verify(serde_json::json!({"roles": ["x", "mod"]})), Ok(true));
        assert_eq!(verify(serde_json::json!({})), Ok(false));
        for not_mod in [
            serde_json::json!({"mod": false}),
            serde_json::json!({"mod": "true"}),
            serde_json::json!({"roles": "mod"}),
            serde_json::json!({"roles": ["moderator", 1]}),
        ] {
            assert_eq!(verify(not_mod.clone()), Ok(false), "{not_mod}");
        }
        assert!(
            auth.verify(&auth.mint_as("u", "ann", 60, None, true, false))
                .unwrap()
                .moderator
        );
        assert!(
            !auth
                .verify(&auth.mint("u", "ann", 60, None))
                .unwrap()
                .moderator
        );
    }

    #[test]
    fn expired_is_refused() {
        let auth = Auth::new(b"s1");
        let t = auth.mint("u-1", "alice", 0, None);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(auth.verify(&t).is_err());
    }

    fn claims_token(auth_secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(auth_secret),
        )
        .unwrap()
    }

    #[test]
    fn nbf_in_the_future_is_refused_with_exp_leeway() {
        let auth = Auth::new(b"s1");
        let now = unix_now();
        let at = |nbf: u64| {
            claims_token(
                b"s1",
                serde_json::json!({"sub": "u", "name": "n", "exp": now + 600, "nbf": nbf}),
            )
        };
        let e = auth.verify(&at(now + 30)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.message.contains("not valid yet"), "{}", e.message);
        // Zero leeway, as for exp: a second ahead is already too early.
        assert!(auth.verify(&at(now + 2)).is_err());
        assert!(auth.verify(&at(now)).is_ok());
        assert!(auth.verify(&at(now - 60)).is_ok());
        // A malformed nbf is refused, not ignored.
        let t = claims_token(
            b"s1",
            serde_json::json!({"sub": "u", "name": "n", "exp": now + 600, "nbf": "soon"}),
        );
        assert!(auth.verify(&t).is_err());
    }

    #[test]
    fn load_secret_never_creates_one() {
        let dir = std::env::temp_dir().join(format!("confab-secret-{}", uuid::Uuid::new_v4()));
        assert!(matches!(
            load_secret("", &dir),
            Err(SecretError::Missing { .. })
        ));
        assert!(!dir.exists(), "nothing created");
        let configured = "c".repeat(32);
        assert_eq!(
            load_secret(&configured, &dir).unwrap(),
            (configured.clone().into_bytes(), SecretSource::Configured)
        );
        let created = load_or_create_secret("", &dir).unwrap();
        assert_eq!(
            load_secret("", &dir).unwrap(),
            (created, SecretSource::File(dir.join("jwt_secret")))
        );
        std::fs::write(dir.join("jwt_secret"), "short\n").unwrap();
        assert!(matches!(
            load_secret("", &dir),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        // A blank file (a crash before the write) is replaced, not an error.
        std::fs::write(dir.join("jwt_secret"), "\n").unwrap();
        assert_eq!(load_or_create_secret("", &dir).unwrap().len(), 64);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn secret_is_created_once() {
        let dir = std::env::temp_dir().join(format!("confab-secret-{}", uuid::Uuid::new_v4()));
        let a = load_or_create_secret("", &dir).unwrap();
        let b = load_or_create_secret("", &dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.len() >= MIN_SECRET_BYTES);
        let _ = std::fs::remove_dir_all(dir);
    }
}
