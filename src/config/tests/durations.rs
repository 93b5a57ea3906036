//! Tests of Go duration syntax against values Go's `time.ParseDuration` gives.

use std::time::Duration;

use crate::config::{DurationError, format_go_duration, parse_go_duration};

#[test]
fn go_durations_parse_as_go_parses_them() {
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let table: &[(&str, Duration)] = &[
        ("0", Duration::ZERO),
        ("-0", Duration::ZERO),
        ("+0", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("10ns", Duration::from_nanos(10)),
        ("300us", Duration::from_micros(300)),
        ("300\u{b5}s", Duration::from_micros(300)),
        ("300\u{3bc}s", Duration::from_micros(300)),
        ("100ms", ms(100)),
        ("1s", s(1)),
        ("+5s", s(5)),
        ("1m30s", s(90)),
        ("1m0s", s(60)),
        ("1.5h", s(5400)),
        ("2h45m", s(9900)),
        ("24h0m0s", s(86_400)),
        (".5s", ms(500)),
        ("1.s", s(1)),
        ("1.004s", ms(1004)),
        ("1h1m1s1ms1us1ns", Duration::new(3661, 1_001_001)),
        ("0.000000001s", Duration::from_nanos(1)),
        ("0.0000000019s", Duration::from_nanos(1)),
        (
            "9223372036854775807ns",
            Duration::new(9_223_372_036, 854_775_807),
        ),
        ("2562047h", s(2_562_047 * 3600)),
    ];
    for (input, want) in table {
        assert_eq!(parse_go_duration(input), Ok(*want), "{input}");
    }
}

#[test]
fn malformed_go_durations_are_errors_quoting_the_input() {
    let invalid = |s: &str| DurationError::Invalid(s.to_owned());
    let table: &[(&str, DurationError)] = &[
        ("", invalid("")),
        ("-", invalid("-")),
        ("s", invalid("s")),
        (".s", invalid(".s")),
        ("abc", invalid("abc")),
        ("1.2.3s", DurationError::MissingUnit("1.2.3s".into())),
        ("9223372036854775808ns", invalid("9223372036854775808ns")),
        ("2562048h", invalid("2562048h")),
        ("1", DurationError::MissingUnit("1".into())),
        ("1h30", DurationError::MissingUnit("1h30".into())),
        (
            "1d",
            DurationError::UnknownUnit {
                unit: "d".into(),
                input: "1d".into(),
            },
        ),
        (
            "3 s",
            DurationError::UnknownUnit {
                unit: " s".into(),
                input: "3 s".into(),
            },
        ),
        ("-1s", DurationError::Negative("-1s".into())),
        ("-1.5h", DurationError::Negative("-1.5h".into())),
    ];
    for (input, want) in table {
        assert_eq!(parse_go_duration(input).as_ref(), Err(want), "{input:?}");
    }
    assert_eq!(
        parse_go_duration("abc").unwrap_err().to_string(),
        "invalid duration \"abc\""
    );
}

/// What Go's `time.Duration.String` prints for these durations.
#[test]
fn durations_format_as_go_formats_them_and_parse_back() {
    let table: &[(Duration, &str)] = &[
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(1), "1ns"),
        (Duration::from_nanos(999), "999ns"),
        (Duration::from_nanos(1_500), "1.5\u{b5}s"),
        (Duration::from_micros(300), "300\u{b5}s"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_nanos(1_000_001), "1.000001ms"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_nanos(1_000_000_001), "1.000000001s"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(60), "1m0s"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_millis(90_500), "1m30.5s"),
        (Duration::from_secs(15 * 60), "15m0s"),
        (Duration::from_secs(3600), "1h0m0s"),
        (Duration::from_secs(5400), "1h30m0s"),
        (Duration::from_secs(24 * 3600), "24h0m0s"),
        (Duration::from_secs(100 * 3600 + 61), "100h1m1s"),
    ];
    for (d, want) in table {
        assert_eq!(format_go_duration(*d), *want, "{d:?}");
        assert_eq!(parse_go_duration(want).as_ref(), Ok(d), "{want}");
    }
}
