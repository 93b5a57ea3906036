//! Settings checked against the rest of the configuration: the IPVS scheduler (known only in
//! ipvs mode), and API settings that `--manifests` makes pointless.
//!
//! Invariants: an error names the flag, or the `--config` file and its field; a warning is one
//! line, returned for `Config::warnings` (logged once at start).

use std::path::Path;

use clap::ArgMatches;

use super::{ConfigError, file::FileConfig, flags, values};
use crate::backends::ProxyMode;

/// `--ipvs-scheduler`, else the file's `ipvs.scheduler`, else `rr`. In ipvs mode a name the
/// kernel's IPVS does not have is an error naming the flag or field, as upstream refuses it at
/// start-up; other modes never use it and, as upstream, do not check it.
pub fn ipvs_scheduler(
    m: &ArgMatches,
    file: &FileConfig,
    path: Option<&Path>,
    mode: ProxyMode,
) -> Result<String, ConfigError> {
    let check = |v: &str| match mode {
        ProxyMode::Ipvs => values::parse_ipvs_scheduler(v).map(drop),
        _ => Ok(()),
    };
    if let Some(v) = flags::explicit(m, "ipvs-scheduler").filter(|s| !s.is_empty()) {
        check(v).map_err(|message| ConfigError::Invalid {
            flag: "--ipvs-scheduler".to_owned(),
            message,
        })?;
        return Ok(v.to_owned());
    }
    if let Some(v) = &file.ipvs.scheduler {
        check(v).map_err(|message| ConfigError::File {
            path: path.unwrap_or(Path::new("")).to_path_buf(),
            message: format!("ipvs.scheduler: {message}"),
        })?;
        return Ok(v.clone());
    }
    Ok("rr".into())
}

/// With `--manifests`, the API flags that were given anyway (`--kubeconfig`, `--master`), in
/// one warning; `None` without `--manifests` or when none was given. The `--config` file's
/// `clientConnection.kubeconfig` is not warned about: one file serving both sources is the
/// documented setup (deploy/etc-kproxy), and kubeadm's ConfigMaps all name one.
pub fn manifests_ignore_the_api(m: &ArgMatches) -> Option<String> {
    let dir = flags::explicit(m, "manifests").filter(|d| !d.is_empty())?;
    let given: Vec<&str> = ["kubeconfig", "master"]
        .into_iter()
        .filter(|name| flags::explicit(m, name).is_some_and(|v| !v.is_empty()))
        .map(|name| match name {
            "kubeconfig" => "--kubeconfig",
            _ => "--master",
        })
        .collect();
    let verb = match given.as_slice() {
        [] => return None,
        [_] => "is",
        _ => "are",
    };
    Some(format!(
        "--manifests {dir}: Services and EndpointSlices come from its files, not the API server; {} {verb} ignored",
        given.join(" and ")
    ))
}
