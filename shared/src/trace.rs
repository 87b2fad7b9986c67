//! W3C Trace Context (`traceparent`) carried with a job: accepted on enqueue, stored with the
//! job, sent in the RabbitMQ message headers, logged by the worker and forwarded on its
//! outgoing HTTP calls. No tracing backend is needed for the trace id to join the logs of the
//! app that enqueued, the worker that ran the job and the services it called.
//!
//! Only version `00` is understood; anything that does not parse is ignored, as the
//! specification asks (a bad header must not fail the request, the trace simply restarts).

use std::fmt;

/// The HTTP header and AMQP message header name.
pub const HEADER: &str = "traceparent";

/// A valid `traceparent`: `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid version-00 `traceparent`.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let valid = parts.next().is_none()
            && version == "00"
            && hex(trace_id, 32)
            && hex(parent_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        valid.then(|| Self(value.to_owned()))
    }

    /// The 32-hex-digit trace id shared by every span of the trace.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The same trace with a new random parent id: what a process sends downstream for the
    /// span it runs, so that callers can tell its calls apart from the enqueuer's.
    pub fn child(&self) -> Self {
        let span: u64 = rand::random::<u64>().max(1);
        Self(format!(
            "00-{}-{span:016x}-{}",
            self.trace_id(),
            &self.0[53..55]
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example() {
        let tp = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.as_str(), EXAMPLE);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags() {
        let tp = TraceParent::parse(EXAMPLE).unwrap();
        let child = tp.child();
        assert_eq!(child.trace_id(), tp.trace_id());
        assert!(child.as_str().ends_with("-01"));
        assert_ne!(child, tp);
        assert!(TraceParent::parse(child.as_str()).is_some());
    }
}
