//! The egress policy (SSRF guard) for tenant-supplied URLs: where a webhook may be sent.
//!
//! Only http and https; the host is resolved here, every address is judged by
//! [`conveyor_shared::egress::non_public`] unless it lies in an allow-listed CIDR, and the request
//! then goes to the checked addresses only: [`Target::client`] pins them into a per-request reqwest
//! client, so reqwest never resolves the name again (no DNS-rebinding window), follows no
//! redirect (a 3xx cannot bounce us to an internal address) and uses no proxy.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use reqwest::{
    Url,
    redirect::{self},
};

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The policy forbids the target: permanent.
    #[error("the egress policy refused the target: {0}")]
    Refused(String),
    /// The host name could not be resolved right now: worth retrying.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
}

/// The policy: public addresses, plus the operator's allow list.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

/// A URL that passed the policy, with the addresses it may be reached at.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    /// The host the breaker and logs know this target by (`host:port`).
    pub authority: String,
    /// The checked addresses; empty when the host is a literal address (nothing to resolve).
    addrs: Vec<SocketAddr>,
}

impl EgressPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// `Err(range)` when `ip` may not be reached: outside the allow list and not public.
    pub fn judge(&self, ip: IpAddr) -> Result<(), &'static str> {
        // `::ffff:10.0.0.1` is 10.0.0.1 for the allow list too.
        let ip = ip.to_canonical();
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match conveyor_shared::egress::non_public(ip) {
            None => Ok(()),
            Some(range) => Err(range),
        }
    }

    /// Checks `raw` and resolves its host; every address that is used has passed [`Self::judge`].
    pub async fn check(&self, raw: &str) -> Result<Target, EgressError> {
        let url =
            Url::parse(raw).map_err(|e| EgressError::Refused(format!("invalid URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::Refused(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(EgressError::Refused("the URL has no host".into()));
        };
        let authority = format!("{host}:{port}");
        let literal = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            return match self.judge(ip) {
                Ok(()) => Ok(Target {
                    url,
                    authority,
                    addrs: Vec::new(),
                }),
                Err(range) => Err(EgressError::Refused(format!(
                    "{authority} is a {range} address, {NOT_ALLOWED}"
                ))),
            };
        }
        let name = url.host_str().unwrap_or_default().to_owned();
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| EgressError::Resolve {
                host: name.clone(),
                reason: e.to_string(),
            })?
            .collect();
        let mut addrs = Vec::new();
        let mut refusals = Vec::new();
        for addr in resolved {
            match self.judge(addr.ip()) {
                Ok(()) => addrs.push(addr),
                Err(range) => refusals.push((addr.ip(), range)),
            }
        }
        if addrs.is_empty() {
            let Some((ip, range)) = refusals.first() else {
                return Err(EgressError::Resolve {
                    host: name,
                    reason: "no addresses".into(),
                });
            };
            // The address goes to the operator's log, not into the job's error: a tenant should
            // not learn internal DNS answers by probing.
            tracing::warn!(host = %name, %ip, range, "egress policy refused a webhook target");
            return Err(EgressError::Refused(format!(
                "{authority} resolves to a {range} address, {NOT_ALLOWED}"
            )));
        }
        if !refusals.is_empty() {
            tracing::debug!(host = %name, refused = refusals.len(), "skipping non-public addresses of a webhook target");
        }
        Ok(Target {
            url,
            authority,
            addrs,
        })
    }
}

const NOT_ALLOWED: &str =
    "which webhooks may not reach (CONVEYOR_EGRESS_ALLOW lists allowed internal ranges)";

impl Target {
    /// A client that connects only to the checked addresses, never follows redirects and
    /// ignores proxies. Built per request because reqwest pins addresses per client.
    pub fn client(
        &self,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> reqwest::Result<reqwest::Client> {
        crate::tls::install();
        let mut builder = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .timeout(timeout);
        if let (Some(host), false) = (self.url.host_str(), self.addrs.is_empty()) {
            // Ports in pinned addresses are ignored; the URL's port is used.
            builder = builder.resolve_to_addrs(host, &self.addrs);
        }
        builder.build()
    }
}

/// Parses `CONVEYOR_EGRESS_ALLOW`: comma-separated CIDRs or single addresses.
pub fn parse_allow_list(raw: &str) -> Result<Vec<IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| format!("{item:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    };

    use super::*;

    fn policy(allow: &str) -> EgressPolicy {
        EgressPolicy::new(parse_allow_list(allow).unwrap())
    }

    #[test]
    fn allow_list_parses_cidrs_and_addresses() {
        let nets = parse_allow_list(" 127.0.0.0/8, ::1 ,10.1.2.3, fd00::/8").unwrap();
        assert_eq!(nets.len(), 4);
        assert!(parse_allow_list("").unwrap().is_empty());
        assert!(parse_allow_list("10.0.0.0/33").is_err());
        assert!(parse_allow_list("intranet").is_err());
    }

    #[test]
    fn allow_list_widens_the_policy_and_nothing_else() {
        let strict = policy("");
        let local = policy("127.0.0.0/8,10.1.0.0/16");
        for ip in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
            "::ffff:10.1.200.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(strict.judge(ip).is_err(), "{ip}");
            assert_eq!(local.judge(ip), Ok(()), "{ip}");
        }
        for ip in ["10.2.0.1", "::1", "169.254.169.254", "192.168.0.1"] {
            assert!(local.judge(ip.parse().unwrap()).is_err(), "{ip}");
        }
        assert_eq!(strict.judge("8.8.8.8".parse().unwrap()), Ok(()));
    }

    #[tokio::test]
    async fn literal_and_resolved_targets_are_judged() {
        let strict = policy("");
        for url in [
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest",
            "http://localhost:9/", // resolves to loopback
            "ftp://example.com/",
        ] {
            let err = strict.check(url).await.unwrap_err();
            assert!(
                matches!(&err, EgressError::Refused(m) if !m.is_empty()),
                "{url}: {err:?}"
            );
            assert!(err.to_string().contains("egress policy"), "{err}");
        }
        let local = policy("127.0.0.0/8");
        let target = local.check("http://localhost:9/x").await.unwrap();
        assert!(!target.addrs.is_empty());
        assert!(
            target
                .addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.is_ipv4())
        );
        assert_eq!(target.authority, "localhost:9");
        local.check("http://127.0.0.1:9/").await.unwrap();
    }

    const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";

    /// Answers every connection with `answer`, counting connections.
    async fn server(answer: String) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, SeqCst);
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (addr, hits)
    }

    #[tokio::test]
    async fn the_client_connects_to_the_checked_address_and_follows_no_redirect() {
        let (addr, hits) = server(NO_CONTENT.into()).await;
        // `.invalid` never resolves (RFC 6761): the request can only arrive through the pin.
        let target = Target {
            url: Url::parse(&format!("http://hooks.invalid:{}/in", addr.port())).unwrap(),
            authority: format!("hooks.invalid:{}", addr.port()),
            addrs: vec![addr],
        };
        let client = target
            .client(Duration::from_secs(2), Duration::from_secs(5))
            .unwrap();
        let answer = client.post(target.url.clone()).send().await.unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::NO_CONTENT);

        let (elsewhere, elsewhere_hits) = server(NO_CONTENT.into()).await;
        let (bouncer, _) = server(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{elsewhere}/\r\ncontent-length: 0\r\n\r\n"
        ))
        .await;
        let target = EgressPolicy::new(parse_allow_list("127.0.0.0/8").unwrap())
            .check(&format!("http://{bouncer}/"))
            .await
            .unwrap();
        let answer = target
            .client(Duration::from_secs(2), Duration::from_secs(5))
            .unwrap()
            .post(target.url.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(elsewhere_hits.load(SeqCst), 0);
        assert_eq!(hits.load(SeqCst), 1);
    }
}
