//! Per-client rate limiting, and finding out who the client is.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};

/// `API_RATE_LIMIT`: `N/unit` with an optional `,burst=B`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Off,
    /// `requests` per `period`, refilled evenly, with up to `burst` at once.
    Every {
        requests: NonZeroU32,
        period: Duration,
        burst: NonZeroU32,
    },
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "expected N/second, N/minute or N/hour, optionally followed by ,burst=B (e.g. 20/minute,burst=10), or off";
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        let (rate, burst) = match raw.split_once(',') {
            Some((rate, burst)) => {
                let burst = burst
                    .trim()
                    .strip_prefix("burst=")
                    .and_then(|b| b.trim().parse::<NonZeroU32>().ok())
                    .ok_or(FORM)?;
                (rate, Some(burst))
            }
            None => (raw, None),
        };
        let (count, unit) = rate.split_once('/').ok_or(FORM)?;
        let requests: NonZeroU32 = count.trim().parse().map_err(|_| FORM)?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(FORM.into()),
        };
        Ok(Self::Every {
            requests,
            period,
            burst: burst.unwrap_or(requests),
        })
    }
}

/// Counts requests per client and says when one has had too many.
#[derive(Debug)]
pub struct Limiter {
    inner: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        let inner = match limit {
            RateLimit::Off => None,
            RateLimit::Every {
                requests,
                period,
                burst,
            } => {
                let interval = period / requests.get();
                Quota::with_period(interval.max(Duration::from_nanos(1)))
                    .map(|q| DefaultKeyedRateLimiter::keyed(q.allow_burst(burst)))
            }
        };
        Self { inner }
    }

    /// `Err(seconds)` to wait when the client is over its limit.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter.check_key(&bucket(client)).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Forgets clients whose bucket is full again, so memory follows the active clients only.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.inner {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// IPv6 clients are counted per /64: one host is routinely given a whole /64, and counting
/// single addresses would let it rotate through them.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client's address: the socket peer, or, behind a trusted proxy, the address that proxy
/// put last in `X-Forwarded-For` (entries before it are whatever the client chose to send).
pub fn client_ip(peer: SocketAddr, headers: &http::HeaderMap, trust_proxy: bool) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    if !trust_proxy {
        return peer_ip;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .unwrap_or(peer_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn rate_limits_parse() {
        assert_eq!(
            "20/minute,burst=10".parse(),
            Ok(RateLimit::Every {
                requests: NonZeroU32::new(20).expect("nz"),
                period: Duration::from_secs(60),
                burst: NonZeroU32::new(10).expect("nz"),
            })
        );
        assert_eq!("off".parse(), Ok(RateLimit::Off));
        assert!(matches!("5/s".parse(), Ok(RateLimit::Every { burst, .. }) if burst.get() == 5));
        for bad in [
            "",
            "20",
            "0/minute",
            "20/fortnight",
            "20/minute,burst=0",
            "20/minute,b=3",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_waits() {
        let limiter = Limiter::new("20/minute,burst=3".parse().expect("limit"));
        let ip: IpAddr = "198.51.100.1".parse().expect("ip");
        for _ in 0..3 {
            assert_eq!(limiter.check(ip), Ok(()));
        }
        let wait = limiter.check(ip).expect_err("limited");
        assert!((1..=3).contains(&wait), "{wait}");
        // Another client is not affected.
        assert_eq!(limiter.check("198.51.100.2".parse().expect("ip")), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let limiter = Limiter::new("1/minute".parse().expect("limit"));
        assert_eq!(limiter.check("2001:db8::1".parse().expect("ip")), Ok(()));
        assert!(limiter.check("2001:db8::2".parse().expect("ip")).is_err());
        assert_eq!(
            limiter.check("2001:db8:0:1::1".parse().expect("ip")),
            Ok(())
        );
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9"),
        );
        assert_eq!(client_ip(peer, &headers, false), peer.ip());
        assert_eq!(
            client_ip(peer, &headers, true),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(peer, &headers, true), peer.ip());
    }
}
