use std::time::Duration;

use super::listen::slow_down_response;
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
