//! One retry policy for every client of the coordinator: capped exponential
//! backoff (0.2 s, 0.4 s, … 5 s by default), so a coordinator that restarts
//! is not hammered by every worker at once and is found again within a few
//! seconds of coming back.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The delays between tries: doubling from `first` up to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, next: first }
    }

    /// The delay to wait now; the next one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for [`Self::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Runs `op` until it succeeds, its error is not `transient`, or the
    /// next wait would pass `deadline` (then the last error is returned).
    /// `on_retry` hears about each transient failure (for a log line).
    pub async fn retry<T, E, Fut>(
        &mut self,
        deadline: Option<Instant>,
        mut op: impl FnMut() -> Fut,
        transient: impl Fn(&E) -> bool,
        mut on_retry: impl FnMut(&E, Duration),
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        loop {
            match op().await {
                Ok(v) => {
                    self.reset();
                    return Ok(v);
                }
                Err(e) if transient(&e) => {
                    let delay = self.next_delay();
                    if deadline.is_some_and(|d| Instant::now() + delay > d) {
                        return Err(e);
                    }
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let ms: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    /// Milliseconds instead of seconds, so the test waits for real but briefly.
    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(2), Duration::from_millis(50))
    }

    #[tokio::test]
    async fn retry_stops_at_success_at_a_permanent_error_and_at_the_deadline() {
        let mut tries = 0;
        let got: Result<u32, &str> = quick()
            .retry(None, || { tries += 1; let t = tries; async move { if t < 3 { Err("blip") } else { Ok(t) } } }, |_| true, |_, _| {})
            .await;
        assert_eq!(got, Ok(3));

        let mut tries = 0;
        let got: Result<(), &str> =
            quick().retry(None, || { tries += 1; async { Err("bad input") } }, |e| *e == "blip", |_, _| {}).await;
        assert_eq!((got, tries), (Err("bad input"), 1), "a permanent error is not retried");

        let mut tries = 0;
        let deadline = Some(Instant::now() + Duration::from_millis(13));
        let got: Result<(), &str> = quick().retry(deadline, || { tries += 1; async { Err("blip") } }, |_| true, |_, _| {}).await;
        // 2 + 4 ms waited; the third wait (8 ms) would pass the deadline
        // unless the machine stalled for 7 ms, when it gives up earlier.
        assert!((2..=3).contains(&tries), "{tries} tries");
        assert_eq!(got, Err("blip"));
    }
}
