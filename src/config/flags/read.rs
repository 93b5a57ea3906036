//! What a parsed command line says: clap's outcome as help, version or a one-line error, the
//! values given explicitly (never clap's help-only defaults), and the ignored flags' warnings.

use clap::ArgMatches;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;

use super::{IGNORED, Kind};
use crate::config::duration::parse_signed;
use crate::config::values::parse_bool;
use crate::config::{ConfigError, Parsed};

/// Turns a clap outcome other than success into help text, version text or a one-line error.
pub fn convert(err: clap::Error) -> Result<Parsed, ConfigError> {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Ok(Parsed::Help(err.render().to_string()))
        }
        ErrorKind::DisplayVersion => Ok(Parsed::Version(err.render().to_string())),
        ErrorKind::UnknownArgument => match err.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) if arg.starts_with('-') => {
                let name = arg.split('=').next().unwrap_or(arg);
                Err(ConfigError::UnknownFlag(name.to_owned()))
            }
            Some(ContextValue::String(arg)) => Err(ConfigError::UnexpectedArgument(arg.clone())),
            _ => Err(ConfigError::Usage(first_line(&err))),
        },
        _ => Err(ConfigError::Usage(first_line(&err))),
    }
}

/// Clap's message without its `error: ` prefix, usage and tips: the line naming the flag.
fn first_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The flag's value if it was given on the command line (not a help-only default).
pub fn explicit<'a>(m: &'a ArgMatches, name: &str) -> Option<&'a str> {
    if m.value_source(name) != Some(ValueSource::CommandLine) {
        return None;
    }
    m.get_one::<String>(name).map(String::as_str)
}

/// Every value of a list flag given on the command line; `None` if it was not given.
pub fn explicit_list<'a>(m: &'a ArgMatches, name: &str) -> Option<Vec<&'a str>> {
    if m.value_source(name) != Some(ValueSource::CommandLine) {
        return None;
    }
    Some(m.get_many::<String>(name)?.map(String::as_str).collect())
}

/// Warnings for the ignored flags that were given; an error if one's value is malformed.
pub fn ignored_flags(m: &ArgMatches) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for (name, kind) in IGNORED {
        let Some(values) = explicit_list(m, name) else {
            continue;
        };
        for v in &values {
            check_kind(*kind, v).map_err(|message| ConfigError::Invalid {
                flag: format!("--{name}"),
                message,
            })?;
        }
        warnings.push(format!(
            "--{name}={} is accepted for kube-proxy compatibility and ignored",
            values.join(",")
        ));
    }
    Ok(warnings)
}

fn check_kind(kind: Kind, v: &str) -> Result<(), String> {
    match kind {
        Kind::Bool => parse_bool(v).map(drop),
        Kind::Int => v
            .parse::<i32>()
            .map(drop)
            .map_err(|_| format!("invalid integer {v:?}")),
        Kind::Float => v
            .parse::<f32>()
            .map(drop)
            .map_err(|_| format!("invalid number {v:?}")),
        // Upstream accepts any sign here; only the syntax matters for an ignored flag.
        Kind::Duration => parse_signed(v).map(drop).map_err(|e| e.to_string()),
        Kind::Text | Kind::List => Ok(()),
    }
}
