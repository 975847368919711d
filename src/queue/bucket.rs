//! A token bucket with reservation semantics (golang.org/x/time/rate's `Reserve().Delay()`,
//! which client-go's `BucketRateLimiter` uses): every retry takes a token, now or in the
//! future, and is told how long to wait for it. `governor` only answers "allowed now or not"
//! without reserving, which would let a burst of failures all retry at the same instant.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    /// Tokens added per second; 0 or less disables the limit.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token and returns how long until it is available.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::TokenBucket;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let mut b = TokenBucket::new(10.0, 3, Instant::now());
        let now = Instant::now();
        let delays: Vec<u128> = (0..5).map(|_| b.reserve(now).as_millis()).collect();
        assert_eq!(delays, [0, 0, 0, 100, 200]);
        // A second later ten tokens have come back, minus the two reserved ahead.
        let later = now + Duration::from_secs(1);
        assert_eq!(b.reserve(later), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_means_unlimited() {
        let mut b = TokenBucket::new(0.0, 1, Instant::now());
        assert!((0..1000).all(|_| b.reserve(Instant::now()).is_zero()));
    }
}
