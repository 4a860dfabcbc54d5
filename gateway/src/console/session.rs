//! Console sessions: who is signed in, with which access key, until when.
//!
//! A session is found by its cookie, a random token the browser holds (HttpOnly, so
//! no script reads it). The map is keyed by the token's SHA-256, so looking one up
//! leaks nothing usable through timing. The signed-in access key's secret lives here
//! only, in a zeroizing string, dropped (and wiped) on sign-out, on idle expiry and
//! when the server stops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::sigv4::SigningCredentials;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "atrest_console";
/// Most sessions at once; signing in beyond this first drops the idlest one.
const MAX_SESSIONS: usize = 1024;
/// Failed sign-ins from one address within [`FAILURE_WINDOW`] before more attempts
/// are refused without being checked.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// One signed-in browser.
pub(crate) struct Session {
    pub(crate) credentials: SigningCredentials,
    pub(crate) principal: String,
    /// Sent back on every state-changing request as `X-CSRF-Token`.
    pub(crate) csrf: String,
    last_used: Mutex<Instant>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Whether `presented` is this session's CSRF token (compared by hash, so in
    /// time independent of where they differ).
    pub(crate) fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| Sha256::digest(p) == Sha256::digest(&self.csrf))
    }
}

/// Every session of one console, and the failed sign-ins per address.
#[derive(Debug)]
pub(crate) struct Sessions {
    idle: Duration,
    open: Mutex<HashMap<[u8; 32], Arc<Session>>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// A random token of 244 bits (two v4 UUIDs, from the system's CSPRNG).
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    pub(crate) fn new(idle: Duration) -> Sessions {
        Sessions {
            idle,
            open: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn idle(&self) -> Duration {
        self.idle
    }

    /// Opens a session for `credentials` (already verified) and gives back its
    /// cookie token.
    pub(crate) fn open(
        &self,
        credentials: SigningCredentials,
        principal: String,
    ) -> (String, Arc<Session>) {
        let token = random_token();
        let session = Arc::new(Session {
            credentials,
            principal,
            csrf: random_token(),
            last_used: Mutex::new(Instant::now()),
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let idle = self.idle;
        open.retain(|_, s| !s.expired(idle));
        if open.len() >= MAX_SESSIONS {
            let idlest = open
                .iter()
                .min_by_key(|(_, s)| *s.last_used.lock().unwrap_or_else(|p| p.into_inner()))
                .map(|(k, _)| *k);
            if let Some(key) = idlest {
                open.remove(&key);
            }
        }
        open.insert(token_key(&token), Arc::clone(&session));
        (token, session)
    }

    /// The live session of `token`, its idle clock restarted. Every expired session
    /// is closed first (its secret dropped), so none outlives its idle time by more
    /// than the next request to the console.
    pub(crate) fn find(&self, token: &str) -> Option<Arc<Session>> {
        let key = token_key(token);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let idle = self.idle;
        open.retain(|_, s| !s.expired(idle));
        let session = open.get(&key)?;
        *session.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Some(Arc::clone(session))
    }

    /// Signs out: the session of `token` is forgotten.
    pub(crate) fn close(&self, token: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&token_key(token));
    }

    /// Whether `source` may try to sign in now.
    pub(crate) fn may_try(&self, source: IpAddr) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&source) {
            Some((since, count)) => since.elapsed() > FAILURE_WINDOW || *count < MAX_FAILURES,
            None => true,
        }
    }

    /// Counts a failed sign-in from `source`.
    pub(crate) fn failed(&self, source: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, (since, _)| since.elapsed() <= FAILURE_WINDOW);
        let entry = failures.entry(source).or_insert((Instant::now(), 0));
        entry.1 += 1;
    }
}

impl Session {
    fn expired(&self, idle: Duration) -> bool {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn credentials() -> SigningCredentials {
        SigningCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Zeroizing::new("secret".into()),
            session_token: None,
        }
    }

    #[test]
    fn a_session_is_found_by_its_token_until_closed() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (token, session) = sessions.open(credentials(), "arn:p".into());
        assert_eq!(sessions.find(&token).unwrap().principal, "arn:p");
        assert!(sessions.find("other").is_none());
        assert!(session.csrf_matches(Some(&session.csrf)));
        assert!(!session.csrf_matches(Some("nope")));
        assert!(!session.csrf_matches(None));
        assert_ne!(token, session.csrf);
        sessions.close(&token);
        assert!(sessions.find(&token).is_none());
    }

    #[test]
    fn an_idle_session_expires() {
        let sessions = Sessions::new(Duration::ZERO);
        let (token, _) = sessions.open(credentials(), "arn:p".into());
        std::thread::sleep(Duration::from_millis(5));
        assert!(sessions.find(&token).is_none());
        assert!(sessions.open.lock().unwrap().is_empty());
    }

    #[test]
    fn any_request_closes_every_expired_session() {
        let sessions = Sessions::new(Duration::ZERO);
        let (_, session) = sessions.open(credentials(), "arn:p".into());
        std::thread::sleep(Duration::from_millis(5));
        assert!(sessions.find("another").is_none());
        assert!(sessions.open.lock().unwrap().is_empty());
        // Only the caller's own reference is left: the secret goes with it.
        assert_eq!(Arc::strong_count(&session), 1);
    }

    #[test]
    fn repeated_failures_from_one_address_are_throttled() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(sessions.may_try(ip));
            sessions.failed(ip);
        }
        assert!(!sessions.may_try(ip));
        assert!(sessions.may_try("192.0.2.2".parse().unwrap()));
    }
}
