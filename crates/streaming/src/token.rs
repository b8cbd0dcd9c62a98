//! Single-use URL tokens for streaming sessions.
//!
//! The CRI `Exec`, `Attach` and `PortForward` RPCs do not stream themselves: they store the
//! accepted request under a fresh random token and return a URL with it
//! (`http://<addr>/exec/<token>`). The client then connects to that URL, and the streaming
//! server [`take`](TokenCache::take)s the request back. A token works once and only for a
//! short time (30 s by default), and the number of pending tokens is bounded so a client that
//! keeps calling the RPCs cannot grow the cache without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::time::Instant;

use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest};

/// How long a token stays valid by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// How many tokens may be pending at once by default.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Random bytes per token (128 bits); a token is their URL-safe base64, 22 characters.
const TOKEN_BYTES: usize = 16;

/// A streaming request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

/// Why a token could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Too many tokens are pending; the RPC should fail with `ResourceExhausted`.
    #[error("too many pending streaming requests (limit {0})")]
    Full(usize),
    /// The operating system's random source failed.
    #[error("cannot generate a streaming token: {0}")]
    Random(String),
}

/// Pending streaming requests by token. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Tokens in insertion order, which is also deadline order (one TTL for all). Tokens
    /// taken early stay here until their deadline passes or the queue is compacted.
    order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    request: Request,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_TTL, DEFAULT_CAPACITY)
    }
}

impl TokenCache {
    /// A cache whose tokens expire `ttl` after insertion, holding at most `capacity`
    /// pending tokens.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Stores `request` under a new random token and returns the token (22 characters of
    /// URL-safe base64, 128 random bits).
    pub fn insert(&self, request: Request) -> Result<String, TokenError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge_expired(now);
        if inner.entries.len() >= self.capacity {
            return Err(TokenError::Full(self.capacity));
        }
        let token = loop {
            let token = random_token()?;
            if !inner.entries.contains_key(&token) {
                break token;
            }
        };
        let deadline = now + self.ttl;
        inner.order.push_back((deadline, token.clone()));
        inner
            .entries
            .insert(token.clone(), Entry { deadline, request });
        // Tokens taken before their deadline leave stale queue slots; keep the queue in
        // proportion to the live entries.
        if inner.order.len() > 2 * self.capacity.max(16) {
            let Inner { entries, order } = &mut *inner;
            order.retain(|(_, t)| entries.contains_key(t));
        }
        Ok(token)
    }

    /// Removes and returns the request stored under `token`. A token that was already
    /// taken, has expired, or never existed gives `None`.
    pub fn take(&self, token: &str) -> Option<Request> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge_expired(now);
        let entry = inner.entries.remove(token)?;
        // `purge_expired` removed everything at or past its deadline.
        debug_assert!(entry.deadline > now);
        Some(entry.request)
    }

    /// The number of tokens not yet taken (expired ones included until the next purge).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no token is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn purge_expired(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.order.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, token)) = self.order.pop_front() {
                self.entries.remove(&token);
            }
        }
    }
}

fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    fn exec(id: &str) -> Request {
        Request::Exec(ExecRequest {
            container_id: id.into(),
            cmd: vec!["sh".into()],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
    }

    #[test]
    fn token_shape() {
        let cache = TokenCache::default();
        let token = cache.insert(exec("c1")).unwrap();
        assert_eq!(token.len(), 22);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
    }

    #[test]
    fn tokens_are_distinct() {
        let cache = TokenCache::default();
        let tokens: HashSet<String> = (0..1000)
            .map(|_| cache.insert(exec("c")).unwrap())
            .collect();
        assert_eq!(tokens.len(), 1000);
        assert_eq!(cache.len(), 1000);
    }

    #[test]
    fn single_use() {
        let cache = TokenCache::default();
        let attach = Request::Attach(AttachRequest {
            container_id: "c2".into(),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        });
        let pf = Request::PortForward(PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            ports: vec![80],
        });
        let t1 = cache.insert(attach.clone()).unwrap();
        let t2 = cache.insert(pf.clone()).unwrap();
        assert_eq!(cache.take(&t2), Some(pf));
        assert_eq!(cache.take(&t2), None);
        assert_eq!(cache.take(&t1), Some(attach));
        assert_eq!(cache.take(&t1), None);
        assert_eq!(cache.take("not-a-token"), None);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_after_ttl() {
        let cache = TokenCache::new(Duration::from_secs(30), 10);
        let early = cache.insert(exec("early")).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        let late = cache.insert(exec("late")).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        // `early` is 30 s old: expired. `late` is 10 s old.
        assert_eq!(cache.take(&early), None);
        assert_eq!(cache.len(), 1);
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(cache.take(&late), Some(exec("late")));
    }

    #[tokio::test(start_paused = true)]
    async fn full_cache_refuses_then_recovers_after_expiry() {
        let cache = TokenCache::new(Duration::from_secs(30), 3);
        let first = cache.insert(exec("a")).unwrap();
        cache.insert(exec("b")).unwrap();
        cache.insert(exec("c")).unwrap();
        assert_eq!(cache.insert(exec("d")), Err(TokenError::Full(3)));

        // Taking one frees a slot.
        assert!(cache.take(&first).is_some());
        let fourth = cache.insert(exec("d")).unwrap();
        assert_eq!(cache.insert(exec("e")), Err(TokenError::Full(3)));

        // Once all have expired, inserts work again and purge the old entries.
        tokio::time::advance(Duration::from_secs(31)).await;
        let fresh = cache.insert(exec("f")).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.take(&fourth), None);
        assert_eq!(cache.take(&fresh), Some(exec("f")));
    }

    #[test]
    fn stale_queue_slots_are_compacted() {
        let cache = TokenCache::new(Duration::from_secs(30), 2);
        for _ in 0..1000 {
            let t = cache.insert(exec("x")).unwrap();
            assert!(cache.take(&t).is_some());
        }
        assert!(cache.lock().order.len() <= 2 * 16 + 1);
    }

    #[test]
    fn shared_between_threads() {
        let cache = Arc::new(TokenCache::default());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let t = cache.insert(exec(&i.to_string())).unwrap();
                        assert_eq!(cache.take(&t), Some(exec(&i.to_string())));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(cache.is_empty());
    }
}
