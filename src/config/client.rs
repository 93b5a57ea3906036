//! The API client's settings: `--kube-api-qps`, `--kube-api-burst`, `--kube-api-content-type`
//! and the file's `clientConnection` (`qps`, `burst`, `contentType`, `acceptContentTypes`).
//!
//! Rate limits as client-go: a token bucket of `burst` tokens refilled at `qps` a second, one
//! token per request (list page or watch); a qps of 0 means upstream's default (5), a negative
//! one no limit at all; a burst of 0 in the file means the default (10), on the command line it
//! is refused while requests are limited (client-go: "burst is required to be greater than 0"),
//! and a negative burst is refused (upstream's validation).
//!
//! Content types: kube-rs speaks JSON only. `application/json` is taken as is. Protobuf
//! (upstream's default, which kubeadm's and upstream's own written configurations carry) and
//! CBOR are answered with JSON: one warning when the command line asks for them, none for the
//! file's protobuf (a default written out); CBOR in the file is warned about too. Anything else
//! is refused, naming the flag or field.
//!
//! Invariants: `qps` is finite; `burst > 0` whenever `qps > 0`.

use super::{ConfigError, flag, flags};

/// Upstream's defaults (kube-proxy's v1alpha1 defaulting).
pub const DEFAULT_QPS: f32 = 5.0;
pub const DEFAULT_BURST: i32 = 10;
pub const JSON: &str = "application/json";
const CBOR: &str = "application/cbor";

/// The file's `clientConnection` fields kproxy reads; `None` where unset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileClient {
    pub qps: Option<f32>,
    pub burst: Option<i32>,
    pub content_type: Option<String>,
    pub accept_content_types: Option<String>,
}

/// The settings in effect.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConnection {
    /// Requests a second; negative: no limit.
    pub qps: f32,
    pub burst: i32,
}

// `qps` is never NaN (`parse_qps` and the file reader refuse non-finite numbers).
impl Eq for ClientConnection {}
impl Eq for FileClient {}

impl Default for ClientConnection {
    fn default() -> Self {
        ClientConnection {
            qps: DEFAULT_QPS,
            burst: DEFAULT_BURST,
        }
    }
}

impl ClientConnection {
    /// The token bucket, if requests are limited: (qps, burst).
    pub fn rate_limit(&self) -> Option<(f64, u32)> {
        (self.qps > 0.0).then(|| (f64::from(self.qps), self.burst.max(1) as u32))
    }
}

/// A value that is wrong, with the flag or field to name.
#[derive(Debug, PartialEq)]
pub struct Invalid {
    pub flag: String,
    pub message: String,
}

fn invalid(flag: &str, message: String) -> Invalid {
    Invalid {
        flag: flag.to_owned(),
        message,
    }
}

/// `--kube-api-qps`: a float32, as pflag's.
pub fn parse_qps(s: &str) -> Result<f32, String> {
    s.trim()
        .parse::<f32>()
        .ok()
        .filter(|q| q.is_finite())
        .ok_or_else(|| format!("invalid number {s:?}"))
}

/// `--kube-api-burst`: an int32, as pflag's.
pub fn parse_burst(s: &str) -> Result<i32, String> {
    s.trim()
        .parse::<i32>()
        .map_err(|_| format!("invalid integer {s:?}"))
}

/// `--kube-api-*` over the file's `clientConnection`; its warnings go to `warnings`.
pub fn from_matches(
    m: &clap::ArgMatches,
    file: &FileClient,
    warnings: &mut Vec<String>,
) -> Result<ClientConnection, ConfigError> {
    let qps = flag(m, "kube-api-qps", parse_qps)?;
    let burst = flag(m, "kube-api-burst", parse_burst)?;
    let content_type = flags::explicit(m, "kube-api-content-type");
    let (resolved, more) =
        resolve(qps, burst, content_type, file).map_err(|e| ConfigError::Invalid {
            flag: e.flag,
            message: e.message,
        })?;
    warnings.extend(more);
    Ok(resolved)
}

/// The flags (already parsed) over the file's fields, checked; the warnings to log.
pub fn resolve(
    qps_flag: Option<f32>,
    burst_flag: Option<i32>,
    content_type_flag: Option<&str>,
    file: &FileClient,
) -> Result<(ClientConnection, Vec<String>), Invalid> {
    let qps = match qps_flag.or(file.qps) {
        Some(q) if q != 0.0 => q,
        _ => DEFAULT_QPS,
    };
    let burst = match (burst_flag, file.burst) {
        (Some(b), _) => {
            if b < 0 || (b == 0 && qps > 0.0) {
                return Err(invalid(
                    "--kube-api-burst",
                    format!(
                        "must be greater than 0 while --kube-api-qps is (got {b}); a negative \
                         --kube-api-qps turns the limit off"
                    ),
                ));
            }
            b
        }
        (None, Some(b)) if b < 0 => {
            return Err(invalid(
                "clientConnection.burst",
                format!("must not be negative (got {b})"),
            ));
        }
        (None, Some(b)) if b > 0 => b,
        (None, _) => DEFAULT_BURST,
    };
    let mut warnings = Vec::new();
    let given = [
        ("--kube-api-content-type", content_type_flag, true),
        (
            "clientConnection.contentType",
            file.content_type.as_deref(),
            false,
        ),
    ];
    for (flag, value, explicit) in given {
        if let Some(v) = value
            && let Some(w) = content_type(flag, v, explicit)?
        {
            warnings.push(w);
        }
    }
    if let Some(list) = &file.accept_content_types {
        for item in list.split(',') {
            // Parameters (`;as=Table`, `;q=0.9`) do not change what is spoken.
            let media = item.split(';').next().unwrap_or_default();
            if let Some(w) = content_type("clientConnection.acceptContentTypes", media, false)? {
                warnings.push(w);
            }
        }
    }
    warnings.dedup();
    Ok((ClientConnection { qps, burst }, warnings))
}

/// One content type: a warning when kproxy answers it with JSON and should say so. Upstream
/// checks none of them (its own config tests load `contentType: content-type`), so neither
/// does kproxy refuse one: given on the command line (`explicit`), anything but JSON is one
/// warning; in the file, only CBOR is (protobuf is upstream's default and kubeadm's, and other
/// values were never read by anyone).
fn content_type(flag: &str, value: &str, explicit: bool) -> Result<Option<String>, Invalid> {
    let warn = |v: &str| {
        Some(format!(
            "{flag}={v}: kproxy's API client (kube-rs) speaks only {JSON}; using {JSON}"
        ))
    };
    Ok(match value.trim() {
        "" | JSON => None,
        v @ CBOR => warn(v),
        v if explicit => warn(v),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's default content type, and kubeadm's.
    const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

    fn file(qps: Option<f32>, burst: Option<i32>) -> FileClient {
        FileClient {
            qps,
            burst,
            ..FileClient::default()
        }
    }

    #[test]
    fn zeros_in_the_file_mean_upstreams_defaults_and_flags_beat_the_file() {
        let (c, w) = resolve(None, None, None, &file(Some(0.0), Some(0))).unwrap();
        assert_eq!((c.qps, c.burst), (5.0, 10));
        assert!(w.is_empty());
        let (c, _) = resolve(Some(2.5), Some(3), None, &file(Some(50.0), Some(100))).unwrap();
        assert_eq!((c.qps, c.burst), (2.5, 3));
        assert_eq!(c.rate_limit(), Some((2.5, 3)));
        let (c, _) = resolve(None, None, None, &file(Some(50.0), Some(100))).unwrap();
        assert_eq!((c.qps, c.burst), (50.0, 100));
    }

    #[test]
    fn a_negative_qps_turns_the_limit_off_and_then_any_burst_will_do() {
        let (c, _) = resolve(Some(-1.0), Some(0), None, &FileClient::default()).unwrap();
        assert_eq!(c.rate_limit(), None);
        let (c, _) = resolve(None, None, None, &file(Some(-1.0), None)).unwrap();
        assert_eq!(c.rate_limit(), None);
    }

    #[test]
    fn a_burst_that_cannot_admit_a_request_is_refused_naming_the_flag_or_field() {
        let e = resolve(None, Some(0), None, &FileClient::default()).unwrap_err();
        assert_eq!(e.flag, "--kube-api-burst");
        let e = resolve(None, Some(-3), None, &FileClient::default()).unwrap_err();
        assert_eq!(e.flag, "--kube-api-burst");
        let e = resolve(None, None, None, &file(None, Some(-1))).unwrap_err();
        assert_eq!(e.flag, "clientConnection.burst");
    }

    #[test]
    fn json_is_silent_protobuf_warns_only_when_asked_for_on_the_command_line() {
        let quiet = FileClient {
            content_type: Some(PROTOBUF.into()),
            accept_content_types: Some(format!("{PROTOBUF},{JSON};q=0.9")),
            ..FileClient::default()
        };
        let (_, w) = resolve(None, None, Some(JSON), &quiet).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let (_, w) = resolve(None, None, Some(PROTOBUF), &FileClient::default()).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("--kube-api-content-type=application/vnd.kubernetes.protobuf")
                && w[0].contains("using application/json"),
            "{w:?}"
        );
        let cbor = FileClient {
            content_type: Some(CBOR.into()),
            ..FileClient::default()
        };
        let (_, w) = resolve(None, None, None, &cbor).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn an_unknown_content_type_warns_on_the_command_line_and_loads_silently_from_the_file() {
        let (_, w) = resolve(None, None, Some("text/plain"), &FileClient::default()).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("--kube-api-content-type=text/plain"),
            "{w:?}"
        );
        // Upstream's own config tests carry this placeholder, and upstream loads them.
        let placeholder = FileClient {
            content_type: Some("content-type".into()),
            accept_content_types: Some("application/json,application/yaml".into()),
            ..FileClient::default()
        };
        let (_, w) = resolve(None, None, None, &placeholder).unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn flag_values_are_float32_and_int32_as_pflag_reads_them() {
        assert_eq!(parse_qps("0.5"), Ok(0.5));
        assert_eq!(parse_qps("-1"), Ok(-1.0));
        assert!(parse_qps("fast").is_err());
        assert!(parse_qps("inf").is_err());
        assert_eq!(parse_burst("20"), Ok(20));
        assert!(parse_burst("1.5").is_err());
        assert!(parse_burst("3000000000").is_err());
    }
}
