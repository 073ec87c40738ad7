//! Identity: HS256 JWTs (minted for guests or by `confab token`), the `rooms`
//! claim, and the secret that signs them.

use crate::protocol::{check_display_name, ErrorCode, Rejection, UserInfo};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the JWT secret at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub name: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
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
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn mint(&self, sub: &str, name: &str, ttl_secs: u64, rooms: Option<Vec<String>>) -> String {
        let claims = Claims {
            sub: sub.to_string(),
            name: name.to_string(),
            exp: unix_now().saturating_add(ttl_secs),
            rooms,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    pub fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "the token signature is invalid"
                    }
                    _ => "the token is invalid",
                };
                Rejection::new(ErrorCode::Unauthorized, why)
            })?;
        let claims = data.claims;
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
        })
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The configured secret, or the one kept in `data_dir/jwt_secret`, created on first use.
pub fn load_or_create_secret(configured: &str, data_dir: &Path) -> Result<Vec<u8>, SecretError> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(existing) if !existing.trim().is_empty() => {
            return Ok(existing.trim().as_bytes().to_vec())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let secret: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    write_private(&path, secret.as_bytes()).map_err(io)?;
    Ok(secret.into_bytes())
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
    fn expired_is_refused() {
        let auth = Auth::new(b"s1");
        let t = auth.mint("u-1", "alice", 0, None);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(auth.verify(&t).is_err());
    }

    #[test]
    fn secret_is_created_once() {
        let dir = std::env::temp_dir().join(format!("confab-secret-{}", uuid::Uuid::new_v4()));
        let a = load_or_create_secret("", &dir).unwrap();
        let b = load_or_create_secret("", &dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let _ = std::fs::remove_dir_all(dir);
    }
}
