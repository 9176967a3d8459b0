//! Browser sessions of the web dashboard (issue 14).
//!
//! An operator signs in once with a credential (`POST /api/v1/session`); the controller answers
//! with a random session id in an `HttpOnly; SameSite=Strict` cookie (`Secure` over TLS) and a
//! random CSRF token in the body. Later requests carry the cookie instead of the credential; the
//! ones that change state (`POST`, `PUT`, `DELETE`) must also send the token as
//! `X-CSRF-Token`, so a page of another site can neither read the session nor act with it.
//!
//! The store keeps SHA-256 hashes of session ids (not the ids), so a memory dump does not hand
//! out sessions. A session ends [`SESSION_TTL`] after sign-in, on sign-out, or as soon as its
//! operator credential is revoked (the REST gate checks the name on every request). At most
//! [`MAX_SESSIONS`] live at once: signing in beyond that drops the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The session cookie's name.
pub const COOKIE: &str = "meshlat_session";
/// The header that carries the CSRF token on state-changing calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once.
pub const MAX_SESSIONS: usize = 1024;

/// A signed-in browser session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The operator credential's name.
    pub operator: String,
    /// The CSRF token state-changing calls must send.
    pub csrf: String,
    /// When it ends (unix seconds).
    pub expires_unix: u64,
}

/// A new session: the cookie value (shown once) and the session.
#[derive(Debug)]
pub struct NewSession {
    /// The session id for the cookie.
    pub id: String,
    /// The session.
    pub session: Session,
}

/// The live sessions, keyed by the SHA-256 of their id.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

fn key(id: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs `operator` in: a new session (the oldest is dropped when [`MAX_SESSIONS`] live).
    pub fn start(&self, operator: &str) -> NewSession {
        self.start_at(operator, unix_now())
    }

    fn start_at(&self, operator: &str, now: u64) -> NewSession {
        let id = random_hex();
        let session = Session {
            operator: operator.to_string(),
            csrf: random_hex(),
            expires_unix: now.saturating_add(SESSION_TTL.as_secs()),
        };
        let mut m = self.lock();
        m.retain(|_, s| s.expires_unix > now);
        while m.len() >= MAX_SESSIONS {
            let Some(oldest) = m
                .iter()
                .min_by_key(|(_, s)| s.expires_unix)
                .map(|(k, _)| *k)
            else {
                break;
            };
            m.remove(&oldest);
        }
        m.insert(key(&id), session.clone());
        NewSession { id, session }
    }

    /// The live session of cookie value `id`, if any.
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, unix_now())
    }

    fn get_at(&self, id: &str, now: u64) -> Option<Session> {
        let k = key(id);
        let mut m = self.lock();
        match m.get(&k) {
            Some(s) if s.expires_unix > now => Some(s.clone()),
            Some(_) => {
                m.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends the session of cookie value `id`; whether there was one.
    pub fn end(&self, id: &str) -> bool {
        self.lock().remove(&key(id)).is_some()
    }

    /// Ends every session of `operator` (its credential was revoked).
    pub fn end_operator(&self, operator: &str) {
        self.lock().retain(|_, s| s.operator != operator);
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in a `Cookie` header value.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

/// Constant-time equality of two tokens.
pub fn token_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The `Set-Cookie` value for a new session (`secure` over TLS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that clears the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_until_it_expires_or_ends() {
        let s = Sessions::default();
        let n = s.start_at("ops", 1000);
        assert_eq!(n.id.len(), 64);
        assert_ne!(n.id, n.session.csrf);
        assert_eq!(
            s.get_at(&n.id, 1001).map(|x| x.operator),
            Some("ops".into())
        );
        assert!(s.get_at("not-a-session", 1001).is_none());
        // Not the id with a flipped character.
        let mut other = n.id.clone();
        other.replace_range(0..1, if other.starts_with('0') { "1" } else { "0" });
        assert!(s.get_at(&other, 1001).is_none());
        assert!(s.get_at(&n.id, 1000 + SESSION_TTL.as_secs()).is_none());
        assert!(s.is_empty(), "an expired session is dropped when seen");
        let n = s.start_at("ops", 2000);
        assert!(s.end(&n.id));
        assert!(!s.end(&n.id));
        assert!(s.get_at(&n.id, 2001).is_none());
    }

    #[test]
    fn revoking_an_operator_ends_its_sessions_only() {
        let s = Sessions::default();
        let a = s.start_at("a", 10);
        let b = s.start_at("b", 10);
        s.end_operator("a");
        assert!(s.get_at(&a.id, 11).is_none());
        assert!(s.get_at(&b.id, 11).is_some());
    }

    #[test]
    fn the_store_is_bounded_and_drops_the_oldest() {
        let s = Sessions::default();
        let first = s.start_at("x", 1);
        for i in 0..MAX_SESSIONS {
            s.start_at("x", 2 + i as u64);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get_at(&first.id, 5).is_none(), "the oldest was dropped");
    }

    #[test]
    fn cookies_are_parsed_and_set_strictly() {
        assert_eq!(
            cookie_value("a=1; meshlat_session=abc ;b=2", COOKIE),
            Some("abc")
        );
        assert_eq!(cookie_value("xmeshlat_session=abc", COOKIE), None);
        assert_eq!(cookie_value("", COOKIE), None);
        let c = set_cookie("abc", true);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert!(token_eq("abc", "abc"));
        assert!(!token_eq("abc", "abd"));
        assert!(!token_eq("abc", "abcd"));
    }
}
