//! The one retry schedule for waiting on a dependency (NATS, PostgreSQL, the stream) at
//! start-up or after an outage: backon's exponential backoff, doubling from `first` up to
//! `max`, without end.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Doubles from `first` to `max` and keeps trying; the caller decides when to stop.
pub fn forever(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_never_end() {
        let delays: Vec<Duration> = forever(Duration::from_millis(200), Duration::from_secs(1))
            .build()
            .take(6)
            .collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1000, 1000, 1000]);
    }
}
