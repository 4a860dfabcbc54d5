use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::limits::{source_key, Admission, Full, OpenConnections, LOG_INTERVAL};
use super::listen::{out_of_resources, slow_down_response};
use super::*;

#[test]
fn the_descriptor_limit_caps_connections_and_one_source_gets_half() {
    let asked = ConnectionLimits::default();
    let under_256 = asked.within(Some(256));
    assert_eq!(under_256.max_connections, 96);
    assert_eq!(under_256.max_per_source, 48);
    assert_eq!(under_256.body_timeout, DEFAULT_BODY_TIMEOUT);
    let roomy = asked.within(Some(1 << 20));
    assert_eq!(roomy, asked);
    assert_eq!(asked.within(None), asked);
    let tiny = asked.within(Some(10));
    assert_eq!((tiny.max_connections, tiny.max_per_source), (2, 1));
    let single = ConnectionLimits {
        max_connections: 1,
        ..asked
    }
    .within(None);
    assert_eq!(single.max_per_source, 1);
}

#[test]
fn zero_limits_are_refused() {
    for limits in [
        ConnectionLimits {
            max_connections: 0,
            ..ConnectionLimits::default()
        },
        ConnectionLimits {
            max_per_source: 0,
            ..ConnectionLimits::default()
        },
        ConnectionLimits {
            body_timeout: Duration::ZERO,
            ..ConnectionLimits::default()
        },
    ] {
        assert!(matches!(limits.check(), Err(GatewayError::Config(_))));
    }
}

#[test]
fn admission_counts_per_source_and_in_total_and_frees_on_drop() {
    let admission = Arc::new(Admission {
        limits: ConnectionLimits {
            max_connections: 3,
            max_per_source: 2,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        },
        open: Mutex::new(OpenConnections::default()),
    });
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    let first = admission.admit(a).expect("first");
    let second = admission.admit(a).expect("second");
    assert_eq!(admission.admit(a).err(), Some(Full::Source));
    let third = admission.admit(b).expect("another source");
    assert_eq!(admission.admit(b).err(), Some(Full::Total));
    drop(first);
    assert!(admission.admit(b).is_ok());
    drop((second, third));
    let open = admission.open.lock().unwrap();
    assert_eq!(open.total, 0);
    assert!(open.per_source.is_empty());
}

#[test]
fn a_rate_limited_log_admits_one_line_per_interval_and_counts_the_rest() {
    let log = RateLimitedLog::default();
    assert_eq!(log.admit(), Some(0));
    for _ in 0..1000 {
        assert_eq!(log.admit(), None);
    }
    // Pretend the interval has passed.
    log.state.lock().unwrap().0 = Instant::now().checked_sub(LOG_INTERVAL);
    assert_eq!(log.admit(), Some(1000));
}

#[test]
fn slow_down_is_a_complete_503_in_the_served_protocol() {
    for (services, marker) in [
        (
            Services {
                kms: true,
                s3: true,
            },
            "<Code>SlowDown</Code>",
        ),
        (
            Services {
                kms: true,
                s3: false,
            },
            "\"__type\":\"ThrottlingException\"",
        ),
    ] {
        let text = String::from_utf8(slow_down_response(services)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        assert!(body.contains(marker), "{body}");
    }
}

#[test]
fn ipv6_sources_are_counted_by_their_64_block() {
    let key = |text: &str| source_key(text.parse().unwrap());
    assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
    assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
}

#[test]
fn only_resource_exhaustion_backs_off_accept() {
    assert!(out_of_resources(&std::io::Error::from_raw_os_error(24)));
    assert!(out_of_resources(&std::io::Error::from_raw_os_error(23)));
    assert!(!out_of_resources(&std::io::Error::from_raw_os_error(103)));
    assert!(!out_of_resources(&std::io::Error::other("other")));
}
