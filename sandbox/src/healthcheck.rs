//! `conveyor-sandbox healthcheck`: GET our own `/readyz` over a bare TCP connection (HTTP/1.0, so the
//! server closes the connection after answering) and exit 0 when it answers 200, 1 otherwise. The
//! image then needs no curl.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than a healthy answer ever takes, shorter than compose's healthcheck timeout.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Probe and turn the answer into an exit code, saying why on stderr when unhealthy.
pub async fn run(listen_addr: SocketAddr) -> ExitCode {
    match probe(listen_addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("conveyor-sandbox healthcheck: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Ask `/readyz` of the server listening on `listen_addr`.
pub async fn probe(listen_addr: SocketAddr) -> io::Result<()> {
    let target = probe_addr(listen_addr);
    let answer = tokio::time::timeout(TIMEOUT, async {
        let mut stream = TcpStream::connect(target).await?;
        stream
            .write_all(format!("GET /readyz HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.take(4096).read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from {target} within {TIMEOUT:?}"),
        )
    })??;

    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(io::Error::other(format!(
            "{target}/readyz answered `{status_line}`"
        ))),
    }
}

/// A wildcard listen address (0.0.0.0 or ::) is not something to connect to: ask loopback instead.
pub fn probe_addr(listen_addr: SocketAddr) -> SocketAddr {
    let ip = match listen_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen_addr.port())
}

#[cfg(test)]
mod tests {
    use super::probe_addr;

    #[test]
    fn wildcard_addresses_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8090".parse().unwrap()),
            "127.0.0.1:8090".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:8090".parse().unwrap()),
            "[::1]:8090".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.1.2.3:8090".parse().unwrap()),
            "10.1.2.3:8090".parse().unwrap()
        );
    }
}
