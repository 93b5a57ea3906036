//! Go's `time.ParseDuration` syntax, as kube-proxy's duration flags and config fields use it.
//!
//! Accepted: an optional sign, then one or more `<number><unit>` terms (`1h30m`, `1.5h`, `300µs`),
//! or a bare `0`. Units: `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`. Like Go, the total must fit
//! in an `i64` of nanoseconds, and a fraction finer than a nanosecond is truncated. Unlike Go, a
//! negative result is an error: every kproxy duration is a period or a timeout.

use std::time::Duration;

/// Why a duration did not parse. `Display` is one line and quotes the input, as Go does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("missing unit in duration {0:?} (e.g. \"30s\", \"1m30s\")")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in duration {input:?} (want ns, us, ms, s, m or h)")]
    UnknownUnit { unit: String, input: String },
    #[error("negative duration {0:?}")]
    Negative(String),
}

/// The largest duration Go can represent: `i64::MAX` nanoseconds (about 292 years).
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses `s` with Go's `time.ParseDuration` syntax; a negative duration is an error.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let (negative, nanos) = parse_signed(s)?;
    if negative && nanos != 0 {
        return Err(DurationError::Negative(s.to_owned()));
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| invalid(s))?;
    // The remainder is below 10^9, so it fits.
    let subsec = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Parses `s` as Go does, returning the sign and the magnitude in nanoseconds.
pub(super) fn parse_signed(s: &str) -> Result<(bool, u128), DurationError> {
    let bytes = s.as_bytes();
    let (negative, mut rest) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    if rest == b"0" {
        return Ok((negative, 0));
    }
    if rest.is_empty() {
        return Err(invalid(s));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // The integer part, then an optional fraction; at least one digit between them.
        let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let int_part = digits_value(&rest[..int_len]).ok_or_else(|| invalid(s))?;
        rest = &rest[int_len..];
        let mut frac: &[u8] = &[];
        if rest.first() == Some(&b'.') {
            let frac_len = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            frac = &rest[1..1 + frac_len];
            rest = &rest[1 + frac_len..];
        }
        if int_len == 0 && frac.is_empty() {
            return Err(invalid(s));
        }
        // The unit runs up to the next digit or dot; both are ASCII, so the cut is on a char
        // boundary even after `µ`.
        let unit_len = rest
            .iter()
            .take_while(|b| !(b.is_ascii_digit() || **b == b'.'))
            .count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(s.to_owned()));
        }
        let unit_text = std::str::from_utf8(&rest[..unit_len]).map_err(|_| invalid(s))?;
        rest = &rest[unit_len..];
        let unit = unit_nanos(unit_text).ok_or_else(|| DurationError::UnknownUnit {
            unit: unit_text.to_owned(),
            input: s.to_owned(),
        })?;
        total += int_part.checked_mul(unit).ok_or_else(|| invalid(s))?;
        total += fraction_nanos(frac, unit);
        if total > MAX_NANOS + u128::from(negative) {
            return Err(invalid(s));
        }
    }
    Ok((negative, total))
}

fn invalid(s: &str) -> DurationError {
    DurationError::Invalid(s.to_owned())
}

/// The value of a run of ASCII digits; `None` once it cannot be a valid duration anyway.
fn digits_value(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, d| {
        let next = acc * 10 + u128::from(d - b'0');
        (next <= MAX_NANOS + 1).then_some(next)
    })
}

/// `0.<frac>` units in nanoseconds, truncated. Digits past the 20th cannot change the result.
fn fraction_nanos(frac: &[u8], unit: u128) -> u128 {
    let frac = &frac[..frac.len().min(20)];
    let scale = 10u128.pow(frac.len() as u32);
    let value = frac
        .iter()
        .fold(0u128, |acc, d| acc * 10 + u128::from(d - b'0'));
    value * unit / scale
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return None,
    })
}

/// Formats `d` as Go's `time.Duration.String` does (`0s`, `250ms`, `1.5s`, `1m30s`, `24h0m0s`),
/// which is how upstream writes durations in a KubeProxyConfiguration; `parse_go_duration` reads
/// every result back to `d` (durations above Go's ~292 years are not representable there).
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        // Below a second Go switches to the largest unit that keeps an integer part.
        let (unit, digits) = match nanos {
            n if n < 1_000 => ("ns", 0),
            n if n < 1_000_000 => ("\u{b5}s", 3),
            _ => ("ms", 6),
        };
        return format!("{}{unit}", fixed_point(nanos, digits));
    }
    let secs = nanos / 1_000_000_000;
    let frac = fixed_point(nanos % 1_000_000_000, 9);
    // `fixed_point` of the sub-second part is "0" or "0.xxx": keep only the fraction.
    let frac = frac.strip_prefix('0').unwrap_or(&frac);
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (hours, secs / 60) {
        (0, 0) => format!("{seconds}{frac}s"),
        (0, _) => format!("{minutes}m{seconds}{frac}s"),
        _ => format!("{hours}h{minutes}m{seconds}{frac}s"),
    }
}

/// `value / 10^digits` in decimal, without trailing zeros or a bare point (Go's `fmtFrac`).
fn fixed_point(value: u128, digits: u32) -> String {
    let scale = 10u128.pow(digits);
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}
