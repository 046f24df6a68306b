//! Per-client rate limiting, and finding out who the client is.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use ipnet::IpNet;

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

/// Who a request is counted against: the API key it presented (none for a request that
/// presented no valid key) and the client address.
///
/// Keys and addresses together, so that a flood from one address cannot spend the budget of
/// a client behind another key, and an unauthenticated flood cannot spend anyone's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    key: Option<usize>,
    ip: IpAddr,
}

impl ClientKey {
    /// The one bucket every request shares while the limiter has no room for more clients.
    const EVERYONE_ELSE: Self = Self {
        key: None,
        ip: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };

    /// `key` is the position of the presented API key, `None` when it presented none that
    /// is configured.
    pub fn new(key: Option<usize>, ip: IpAddr) -> Self {
        Self {
            key,
            ip: bucket(ip),
        }
    }
}

/// Clients a limiter keeps a bucket for (a few dozen bytes each). Past it, until idle ones
/// are forgotten, every request counts against one shared bucket: an IPv6 /48 holds 65,536
/// /64s, and one bucket each for whoever rotates through them would have no end.
pub const MAX_CLIENTS: usize = 100_000;

/// Counts requests per client and says when one has had too many.
#[derive(Debug)]
pub struct Limiter {
    inner: Option<DefaultKeyedRateLimiter<ClientKey>>,
    max_clients: usize,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self::with_room_for(limit, MAX_CLIENTS)
    }

    /// A limiter that keeps at most `max_clients` buckets.
    pub fn with_room_for(limit: RateLimit, max_clients: usize) -> Self {
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
        Self { inner, max_clients }
    }

    /// `Err(seconds)` to wait when the client is over its limit.
    pub fn check(&self, client: ClientKey) -> Result<(), u64> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        let client = if limiter.len() < self.max_clients {
            client
        } else {
            ClientKey::EVERYONE_ELSE
        };
        limiter.check_key(&client).map_err(|not_until| {
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

/// `API_TRUSTED_PROXIES`: the networks whose `X-Forwarded-For` is believed, as a
/// comma-separated list of CIDR blocks or single addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "`{entry}` is neither a CIDR block (10.0.0.0/8, fd00::/8) nor an address"
                    )
                })?;
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }
}

impl TrustedProxies {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client's address. From a trusted proxy, `X-Forwarded-For` is read from the right:
/// each trusted proxy appended the address it got the request from, so the first entry that
/// is not a trusted proxy is the client (entries left of it are whatever the client chose to
/// send). From any other peer, or with no proxy trusted, the header is ignored.
pub fn client_ip(
    peer: SocketAddr,
    headers: &http::HeaderMap,
    proxies: Option<&TrustedProxies>,
) -> IpAddr {
    let mut client = peer.ip().to_canonical();
    let Some(proxies) = proxies else {
        return client;
    };
    // Split as bytes: a byte that is not ASCII in an entry the client wrote (on the left)
    // must not cost the entries the proxies wrote (on the right).
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
    for hop in hops {
        if !proxies.contains(client) {
            break;
        }
        // An entry that is not an address ends the walk at the last hop known good.
        match hop_address(hop) {
            Some(ip) => client = ip.to_canonical(),
            None => break,
        }
    }
    client
}

/// One `X-Forwarded-For` entry's address: `203.0.113.9`, `2001:db8::1`, and as proxies
/// also write them, with a port (`203.0.113.9:4711`, `[2001:db8::1]:4711`) or in brackets.
fn hop_address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
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
        let client = ClientKey::new(Some(0), ip("198.51.100.1"));
        for _ in 0..3 {
            assert_eq!(limiter.check(client), Ok(()));
        }
        let wait = limiter.check(client).expect_err("limited");
        assert!((1..=3).contains(&wait), "{wait}");
        // Another address, the same address under another key, or without one, is not affected.
        assert_eq!(
            limiter.check(ClientKey::new(Some(0), ip("198.51.100.2"))),
            Ok(())
        );
        assert_eq!(
            limiter.check(ClientKey::new(Some(1), ip("198.51.100.1"))),
            Ok(())
        );
        assert_eq!(
            limiter.check(ClientKey::new(None, ip("198.51.100.1"))),
            Ok(())
        );
    }

    #[test]
    fn past_its_room_a_limiter_counts_newcomers_in_one_shared_bucket() {
        let limiter = Limiter::with_room_for("1/minute".parse().expect("limit"), 4);
        let client = |n: u16| {
            ClientKey::new(
                None,
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1)),
            )
        };
        for n in 0..4 {
            assert_eq!(
                limiter.check(client(n)),
                Ok(()),
                "client {n} has a bucket of its own"
            );
        }
        // A fifth /64 finds no room: it spends the shared bucket, and the sixth finds it spent.
        assert_eq!(limiter.check(client(4)), Ok(()));
        assert!(limiter.check(client(5)).is_err());
        assert_eq!(
            limiter.inner.as_ref().map(|l| l.len()),
            Some(5),
            "four and the shared one"
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let limiter = Limiter::new("1/minute".parse().expect("limit"));
        let client = |addr| ClientKey::new(None, ip(addr));
        assert_eq!(limiter.check(client("2001:db8::1")), Ok(()));
        assert!(limiter.check(client("2001:db8::2")).is_err());
        assert_eq!(limiter.check(client("2001:db8:0:1::1")), Ok(()));
    }

    fn ip(addr: &str) -> IpAddr {
        addr.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9"),
        );
        let trusted: TrustedProxies = "10.0.0.0/8".parse().expect("proxies");
        let elsewhere: TrustedProxies = "192.168.0.0/16, ::1".parse().expect("proxies");
        assert_eq!(client_ip(peer, &headers, None), peer.ip());
        assert_eq!(client_ip(peer, &headers, Some(&elsewhere)), peer.ip());
        assert_eq!(client_ip(peer, &headers, Some(&trusted)), ip("203.0.113.9"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(peer, &headers, Some(&trusted)), peer.ip());
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted_hop() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let trusted: TrustedProxies = "10.0.0.0/8".parse().expect("proxies");
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.7"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
        assert_eq!(
            client_ip(peer, &headers, Some(&trusted)),
            ip("198.51.100.7")
        );
        // Only proxies all the way: the leftmost one is as far as anyone can tell.
        let mut inside = HeaderMap::new();
        inside.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        assert_eq!(client_ip(peer, &inside, Some(&trusted)), ip("10.9.9.9"));
    }

    #[test]
    fn entries_with_ports_brackets_or_stray_bytes_still_name_the_client() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let trusted: TrustedProxies = "10.0.0.0/8".parse().expect("proxies");
        for (header, client) in [
            ("203.0.113.9:4711", "203.0.113.9"),
            ("[2001:db8::7]:4711", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("6.6.6.6, 203.0.113.9:80, 10.1.1.1:443", "203.0.113.9"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", HeaderValue::from_static(header));
            assert_eq!(
                client_ip(peer, &headers, Some(&trusted)),
                ip(client),
                "{header}"
            );
        }
        // A byte the client wrote that is not ASCII spoils only its own entry.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xc3\xa9, 203.0.113.9").expect("value"),
        );
        assert_eq!(client_ip(peer, &headers, Some(&trusted)), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_proxy_lists_parse_or_say_what_is_wrong() {
        let proxies: TrustedProxies = "10.0.0.0/8, 127.0.0.1, fd00::/8".parse().expect("list");
        assert!(proxies.contains(ip("10.200.0.1")));
        assert!(proxies.contains(ip("127.0.0.1")));
        assert!(!proxies.contains(ip("127.0.0.2")));
        assert!(proxies.contains(ip("fd12::1")));
        let err = "10.0.0.0/8, proxy.internal"
            .parse::<TrustedProxies>()
            .expect_err("bad");
        assert!(err.contains("proxy.internal"), "{err}");
    }
}
