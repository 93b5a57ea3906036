//! The API client's rate limit (`--kube-api-qps`, `--kube-api-burst`): client-go's flowcontrol
//! token bucket as a layer of kube's tower stack, so every list and every watch kproxy starts
//! waits for a token, as client-go's requests do.
//!
//! One difference, on purpose: the further pages of a list (requests with a `continue` token)
//! take no token. kproxy lists with consistent reads in pages of 500, where upstream's informers
//! list from the watch cache in one request; charging every page would make a relist of 50,000
//! Services cost 100 tokens (20 s at the default 5 a second) where upstream's costs one.
//!
//! Invariants: `TokenBucket` is golang.org/x/time/rate's arithmetic and pure (the caller passes
//! the clock): it starts full (`burst` tokens), refills at `qps` a second up to `burst`, and a
//! request that finds no token reserves one ahead (the count goes negative) and is told how long
//! to wait, so waiting requests are served in order, `1/qps` apart. `RateLimited` reserves its
//! token when a request arrives (`call`) and sends the request when the token's time comes;
//! kube's `Buffer` calls it one request at a time, in order. kube's own retries of a failed
//! request (inside the stack) take no token.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// Waits at least this long are logged at debug level, as client-go logs them at V(3).
const LONG_WAIT: Duration = Duration::from_millis(50);
/// Waits at least this long are logged at info level (at most once a minute).
const VERY_LONG_WAIT: Duration = Duration::from_secs(1);
const INFO_EVERY: Duration = Duration::from_secs(60);

/// A token bucket of `burst` tokens refilled at `qps` a second.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket. `qps` must be positive and `burst` at least 1.
    pub fn new(qps: f64, burst: u32) -> TokenBucket {
        assert!(qps > 0.0 && burst >= 1, "a bucket that admits nothing");
        TokenBucket {
            qps,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
        }
    }

    /// Takes one token at `now`: how long the request must wait for it (zero if one was there).
    pub fn take(&mut self, now: Instant) -> Duration {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.qps;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

/// The layer for `kube::client::ClientBuilder::with_layer`.
#[derive(Clone, Copy, Debug)]
pub struct RateLimitLayer {
    qps: f64,
    burst: u32,
}

impl RateLimitLayer {
    /// `qps` must be positive and `burst` at least 1 (`config::ClientConnection::rate_limit`).
    pub fn new(qps: f64, burst: u32) -> RateLimitLayer {
        RateLimitLayer { qps, burst }
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            bucket: TokenBucket::new(self.qps, self.burst),
            last_info: None,
        }
    }
}

/// `inner`, one token per list or watch started.
pub struct RateLimited<S> {
    inner: S,
    bucket: TokenBucket,
    last_info: Option<Instant>,
}

impl<S> RateLimited<S> {
    fn log_wait(&mut self, wait: Duration) {
        if wait >= VERY_LONG_WAIT && self.last_info.is_none_or(|t| t.elapsed() >= INFO_EVERY) {
            self.last_info = Some(Instant::now());
            tracing::info!(
                wait = ?wait,
                "waiting for the client-side rate limit (--kube-api-qps, --kube-api-burst)"
            );
        } else if wait >= LONG_WAIT {
            tracing::debug!(wait = ?wait, "waiting for the client-side rate limit");
        }
    }
}

/// Whether the request continues a paged list (a non-empty `continue` parameter).
fn continues_a_list(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(k, v)| k == "continue" && !v.is_empty())
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for RateLimited<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    /// Reserves the request's token now (requests are served in the order they come) and
    /// sends it when the token's time comes: the stack below sends nothing until polled.
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let wait = match continues_a_list(request.uri()) {
            true => Duration::ZERO,
            false => self.bucket.take(Instant::now()),
        };
        self.log_wait(wait);
        let response = self.inner.call(request);
        if wait.is_zero() {
            return Box::pin(response);
        }
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            response.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer;
    use tower_service::Service;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_admits_burst_requests_at_once_then_one_per_interval_in_order() {
        let t = Instant::now();
        let mut b = TokenBucket::new(2.0, 3);
        let waits: Vec<Duration> = (0..6).map(|_| b.take(t)).collect();
        assert_eq!(waits, [ms(0), ms(0), ms(0), ms(500), ms(1000), ms(1500)]);
    }

    #[test]
    fn tokens_refill_at_qps_up_to_the_burst_and_no_further() {
        let t = Instant::now();
        let mut b = TokenBucket::new(10.0, 2);
        b.take(t);
        b.take(t);
        assert_eq!(b.take(t + ms(100)), ms(0), "one token back after 1/qps");
        assert_eq!(b.take(t + ms(100)), ms(100));
        // An idle hour fills the bucket to its burst, not to 36,000.
        let later = t + Duration::from_secs(3600);
        assert_eq!(b.take(later), ms(0));
        assert_eq!(b.take(later), ms(0));
        assert_eq!(b.take(later), ms(100));
    }

    #[test]
    fn a_clock_that_steps_back_neither_refills_nor_panics() {
        let t = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1);
        assert_eq!(b.take(t), ms(0));
        assert_eq!(b.take(t - Duration::from_secs(5)), ms(1000));
    }

    /// A service that answers at once, recording when each request is sent (its future first
    /// polled, as hyper's client sends) and with what query.
    #[derive(Clone, Default)]
    struct Clock(std::sync::Arc<std::sync::Mutex<Vec<(Duration, String)>>>);

    impl Service<http::Request<()>> for Clock {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<(), Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let sent = self.0.clone();
            Box::pin(async move {
                let query = request.uri().query().unwrap_or_default().to_owned();
                sent.lock()
                    .unwrap()
                    .push((START.with(|s| s.elapsed()), query));
                Ok(())
            })
        }
    }

    thread_local! {
        static START: Instant = Instant::now();
    }

    fn get(query: &str) -> http::Request<()> {
        http::Request::get(format!("/api/v1/services?{query}"))
            .body(())
            .unwrap()
    }

    /// Sends `queries` through a fresh limited `Clock` in order, all at once (as kube's
    /// `Buffer` hands them over); when each was sent and with what query.
    async fn send(qps: f64, burst: u32, queries: &[&str]) -> Vec<(Duration, String)> {
        START.with(|_| ());
        let clock = Clock::default();
        let mut svc = RateLimitLayer::new(qps, burst).layer(clock.clone());
        let mut pending = Vec::new();
        for q in queries {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
            pending.push(tokio::spawn(svc.call(get(q))));
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
        let mut sent = clock.0.lock().unwrap().clone();
        sent.sort();
        sent
    }

    #[tokio::test(start_paused = true)]
    async fn lists_and_watches_beyond_the_burst_go_out_one_interval_apart_in_order() {
        let queries = [
            "limit=500",
            "watch=true",
            "limit=500&a",
            "watch=true&b",
            "x",
        ];
        let sent = send(4.0, 2, &queries).await;
        let at: Vec<Duration> = sent.iter().map(|s| s.0).collect();
        assert_eq!(at, [ms(0), ms(0), ms(250), ms(500), ms(750)]);
        assert_eq!(sent[4].1, "x", "the last one asked is sent last");
    }

    #[tokio::test(start_paused = true)]
    async fn the_further_pages_of_a_list_take_no_token() {
        let queries = [
            "limit=500",
            "limit=500&continue=abc",
            "continue=def&limit=500",
            "limit=500&continue=",
            "watch=true",
        ];
        let sent = send(1.0, 1, &queries).await;
        let by_query: std::collections::BTreeMap<String, Duration> =
            sent.into_iter().map(|(t, q)| (q, t)).collect();
        assert_eq!(by_query["limit=500"], ms(0));
        assert_eq!(by_query["limit=500&continue=abc"], ms(0));
        assert_eq!(by_query["continue=def&limit=500"], ms(0));
        assert_eq!(
            by_query["limit=500&continue="],
            ms(1000),
            "an empty token starts a list"
        );
        assert_eq!(by_query["watch=true"], ms(2000));
    }
}
