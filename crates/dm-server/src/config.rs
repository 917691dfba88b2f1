//! Configuration of the relay: command-line flags, environment variables (`DM_*`) and an
//! optional TOML file (`--config FILE` or `DM_CONFIG`).
//!
//! Every setting has one entry in [`SETTINGS`]: its file key, flag, environment variable,
//! default and help text. Each value comes from the first of: the command line, the
//! environment, the file, the default. The file may only hold known keys; a value that does
//! not parse is an error naming the setting and where the value came from (never echoing
//! it: a database URL can hold a password).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderName;
use clap::{Arg, ArgAction, Command};

use crate::limits::RateLimit;
use crate::store::StoreOptions;

/// How the relay writes its log (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One setting: how it is named in each source, its default and its help.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The key in the TOML file (`max_connections`).
    pub key: &'static str,
    /// The long flag, without dashes (`max-connections`).
    pub flag: &'static str,
    /// The environment variable (`DM_MAX_CONNECTIONS`).
    pub env: &'static str,
    /// The default, as it would be written on the command line.
    pub default: &'static str,
    /// The placeholder in `--help`.
    pub value_name: &'static str,
    /// What it does.
    pub help: &'static str,
}

/// Every setting of the relay, in `--help` order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        flag: "listen",
        env: "DM_LISTEN",
        default: "127.0.0.1:7878",
        value_name: "ADDR",
        help: "Address and port to listen on (port 0 lets the OS choose one)",
    },
    Setting {
        key: "database_url",
        flag: "database-url",
        env: "DM_DATABASE_URL",
        default: "sqlite://dm-server.db",
        value_name: "URL",
        help: "Database URL: sqlite://PATH (created on first start; a relative path is \
               relative to the working directory)",
    },
    Setting {
        key: "log_format",
        flag: "log-format",
        env: "DM_LOG_FORMAT",
        default: "text",
        value_name: "text|json",
        help: "Log format on stderr: text lines, or one JSON object per line",
    },
    Setting {
        key: "max_connections",
        flag: "max-connections",
        env: "DM_MAX_CONNECTIONS",
        default: "2048",
        value_name: "N",
        help: "Most TCP connections served at once, WebSockets included; further ones wait \
               in the kernel's listen backlog until one closes",
    },
    Setting {
        key: "rate_limit_per_second",
        flag: "rate-limit-per-second",
        env: "DM_RATE_LIMIT_PER_SECOND",
        default: "20",
        value_name: "RATE",
        help: "Requests per second each client may make on average (a client is the \
               authenticated device, else the IP address); 0 disables the limit",
    },
    Setting {
        key: "rate_limit_burst",
        flag: "rate-limit-burst",
        env: "DM_RATE_LIMIT_BURST",
        default: "100",
        value_name: "N",
        help: "Requests a client may make at once before the per-second rate applies",
    },
    Setting {
        key: "client_ip_header",
        flag: "client-ip-header",
        env: "DM_CLIENT_IP_HEADER",
        default: "",
        value_name: "HEADER",
        help: "Behind a reverse proxy: the header holding the client's address (e.g. \
               x-forwarded-for; its last entry is used). Empty: the TCP peer address",
    },
    Setting {
        key: "mailbox_quota",
        flag: "mailbox-quota",
        env: "DM_MAILBOX_QUOTA",
        default: "10000",
        value_name: "N",
        help: "Envelopes a device's mailbox may hold; further ones are dropped and counted \
               for the device",
    },
    Setting {
        key: "envelope_retention_days",
        flag: "envelope-retention-days",
        env: "DM_ENVELOPE_RETENTION_DAYS",
        default: "30",
        value_name: "DAYS",
        help: "Days an unacknowledged envelope is kept (1 to 30)",
    },
    Setting {
        key: "claims_per_requester_per_hour",
        flag: "claims-per-requester-per-hour",
        env: "DM_CLAIMS_PER_REQUESTER_PER_HOUR",
        default: "120",
        value_name: "N",
        help: "Key package claims one device may make per hour (database-wide)",
    },
    Setting {
        key: "one_time_claims_per_target_per_hour",
        flag: "one-time-claims-per-target-per-hour",
        env: "DM_ONE_TIME_CLAIMS_PER_TARGET_PER_HOUR",
        default: "30",
        value_name: "N",
        help: "One-time key packages handed out per target account per hour; beyond, \
               claims get last-resort packages (database-wide)",
    },
    Setting {
        key: "database_connections",
        flag: "database-connections",
        env: "DM_DATABASE_CONNECTIONS",
        default: "16",
        value_name: "N",
        help: "PostgreSQL connections in the relay's pool (each send is one transaction on \
               one of them; the server's max_connections must leave room for every relay)",
    },
    Setting {
        key: "max_websockets",
        flag: "max-websockets",
        env: "DM_MAX_WEBSOCKETS",
        default: "1024",
        value_name: "N",
        help: "Most WebSocket connections open at once (each also counts towards \
               max-connections)",
    },
    Setting {
        key: "shutdown_grace_secs",
        flag: "shutdown-grace-secs",
        env: "DM_SHUTDOWN_GRACE_SECS",
        default: "20",
        value_name: "SECS",
        help: "On SIGTERM or Ctrl-C: seconds to let in-flight requests finish before exiting",
    },
];

/// The relay's settings, resolved from every source.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Database URL (may hold a password: see [`Config::redacted_database_url`]).
    pub database_url: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Most TCP connections served at once.
    pub max_connections: usize,
    /// Per-client request rate limit.
    pub rate_limit: RateLimit,
    /// The header that holds the client's address behind a reverse proxy.
    pub client_ip_header: Option<HeaderName>,
    /// Envelopes a device's mailbox may hold.
    pub mailbox_quota: u32,
    /// Days an unacknowledged envelope is kept.
    pub envelope_retention_days: u32,
    /// Key package claims per requesting device per hour.
    pub claims_per_requester_per_hour: u32,
    /// One-time key packages handed out per target account per hour.
    pub one_time_claims_per_target_per_hour: u32,
    /// PostgreSQL connections in the pool.
    pub database_connections: u32,
    /// Most WebSocket connections at once.
    pub max_websockets: usize,
    /// How long in-flight requests may take to finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &self.redacted_database_url())
            .field("log_format", &self.log_format)
            .field("max_connections", &self.max_connections)
            .field("rate_limit", &self.rate_limit)
            .field("client_ip_header", &self.client_ip_header)
            .field("mailbox_quota", &self.mailbox_quota)
            .field("envelope_retention_days", &self.envelope_retention_days)
            .field(
                "claims_per_requester_per_hour",
                &self.claims_per_requester_per_hour,
            )
            .field(
                "one_time_claims_per_target_per_hour",
                &self.one_time_claims_per_target_per_hour,
            )
            .field("database_connections", &self.database_connections)
            .field("max_websockets", &self.max_websockets)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

impl Default for Config {
    /// Every setting at its default.
    fn default() -> Self {
        let mut config = Config::placeholder();
        for setting in SETTINGS {
            // The defaults are checked by a unit test (`defaults_parse`).
            if let Err(message) = config.apply(setting.key, setting.default) {
                unreachable!("the default of {} does not parse: {message}", setting.key);
            }
        }
        config
    }
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// The configuration file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "from --{flag}"),
            Origin::Env(env) => write!(f, "from the environment variable {env}"),
            Origin::File(path) => write!(f, "in {}", path.display()),
            Origin::Default => f.write_str("by default"),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line is malformed, or asked for `--help` or `--version` (print the error
    /// with [`clap::Error::exit`]).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("the configuration file {} is not valid TOML: {message}", path.display())]
    FileSyntax {
        /// The file.
        path: PathBuf,
        /// The parser's explanation (with line and column).
        message: String,
    },
    /// The configuration file holds a key that is not a setting.
    #[error(
        "unknown setting `{key}` in {} (settings: {})",
        path.display(),
        SETTINGS.iter().map(|s| s.key).collect::<Vec<_>>().join(", ")
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value does not parse or is out of range.
    #[error("invalid {setting} {origin}: {message}")]
    Invalid {
        /// The setting's key.
        setting: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong with it.
        message: String,
    },
}

/// What the command line asks for.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The resolved settings.
    pub config: Config,
    /// `--print-config`: print the resolved settings as TOML and exit.
    pub print_config: bool,
}

impl Invocation {
    /// Parses the process's arguments and environment.
    pub fn from_process() -> Result<Self, ConfigError> {
        Self::parse(std::env::args_os(), |name| std::env::var_os(name))
    }

    /// Parses `args` (the first is the program name) with `env` as the environment.
    pub fn parse<I, T>(args: I, env: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Config::command().try_get_matches_from(args)?;
        let config_file = match matches.get_one::<PathBuf>("config") {
            Some(path) => Some(path.clone()),
            None => env("DM_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        let file = config_file.as_deref().map(read_file).transpose()?;

        let mut config = Config::placeholder();
        for setting in SETTINGS {
            let (raw, origin) = if let Some(value) = matches.get_one::<String>(setting.key) {
                (value.clone(), Origin::Flag(setting.flag))
            } else if let Some(value) = env(setting.env) {
                let value = value.into_string().map_err(|_| ConfigError::Invalid {
                    setting: setting.key,
                    origin: Origin::Env(setting.env),
                    message: "not valid UTF-8".into(),
                })?;
                (value, Origin::Env(setting.env))
            } else if let Some((path, value)) = file
                .as_ref()
                .and_then(|(path, table)| table.get(setting.key).map(|v| (path, v)))
            {
                let origin = Origin::File(path.clone());
                let raw = toml_scalar(value).map_err(|message| ConfigError::Invalid {
                    setting: setting.key,
                    origin: origin.clone(),
                    message: message.into(),
                })?;
                (raw, origin)
            } else {
                (setting.default.to_owned(), Origin::Default)
            };
            config
                .apply(setting.key, &raw)
                .map_err(|message| ConfigError::Invalid {
                    setting: setting.key,
                    origin,
                    message,
                })?;
        }
        Ok(Self {
            config,
            print_config: matches.get_flag("print-config"),
        })
    }
}

/// Reads and checks a configuration file: valid TOML with known keys only.
fn read_file(path: &Path) -> Result<(PathBuf, toml::Table), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text).map(|table| (path.to_owned(), table))
}

/// Parses the text of a configuration file, refusing unknown keys.
pub fn parse_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::FileSyntax {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
    if let Some(key) = table
        .keys()
        .find(|key| !SETTINGS.iter().any(|s| s.key == key.as_str()))
    {
        return Err(ConfigError::UnknownKey {
            path: path.to_owned(),
            key: key.clone(),
        });
    }
    Ok(table)
}

/// A TOML value as it would be written on the command line.
fn toml_scalar(value: &toml::Value) -> Result<String, &'static str> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        _ => Err("must be a string or a number"),
    }
}

/// A whole number in `min..=max`.
fn whole<T>(raw: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    raw.trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n >= min && *n <= max)
        .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
}

impl Config {
    /// Every field set to a neutral value, before the settings are applied.
    fn placeholder() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: String::new(),
            log_format: LogFormat::Text,
            max_connections: 1,
            rate_limit: RateLimit::DISABLED,
            client_ip_header: None,
            mailbox_quota: 1,
            envelope_retention_days: 1,
            claims_per_requester_per_hour: 1,
            one_time_claims_per_target_per_hour: 0,
            database_connections: 1,
            max_websockets: 0,
            shutdown_grace: Duration::ZERO,
        }
    }

    /// Parses `raw` into the setting `key`.
    fn apply(&mut self, key: &str, raw: &str) -> Result<(), String> {
        match key {
            "listen" => {
                self.listen = raw
                    .trim()
                    .parse()
                    .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:7878 or [::]:7878")?;
            }
            "database_url" => {
                if raw.trim().is_empty() {
                    return Err("must not be empty".into());
                }
                self.database_url = raw.trim().to_owned();
            }
            "log_format" => {
                self.log_format = match raw.trim().to_ascii_lowercase().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err("expected text or json".into()),
                };
            }
            "max_connections" => self.max_connections = whole(raw, 1, 1_000_000)?,
            "rate_limit_per_second" => {
                self.rate_limit.per_second = raw
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && (0.0..=1_000_000.0).contains(r))
                    .ok_or("must be a number from 0 (no limit) to 1000000")?;
            }
            "rate_limit_burst" => self.rate_limit.burst = whole(raw, 1, 1_000_000)?,
            "client_ip_header" => {
                let name = raw.trim();
                self.client_ip_header = if name.is_empty() {
                    None
                } else {
                    Some(
                        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| "not a valid HTTP header name")?,
                    )
                };
            }
            "mailbox_quota" => self.mailbox_quota = whole(raw, 1, 100_000_000)?,
            "envelope_retention_days" => {
                let max =
                    u32::try_from(dm_wire::api::limits::MAILBOX_RETENTION_SECS / SECS_PER_DAY)
                        .unwrap_or(u32::MAX);
                self.envelope_retention_days = whole(raw, 1, max)?;
            }
            "claims_per_requester_per_hour" => {
                self.claims_per_requester_per_hour = whole(raw, 1, 1_000_000)?;
            }
            "one_time_claims_per_target_per_hour" => {
                self.one_time_claims_per_target_per_hour = whole(raw, 0, 1_000_000)?;
            }
            "database_connections" => self.database_connections = whole(raw, 1, 1_000)?,
            "max_websockets" => self.max_websockets = whole(raw, 0, 1_000_000)?,
            "shutdown_grace_secs" => {
                self.shutdown_grace = Duration::from_secs(whole(raw, 0, 3600)?);
            }
            other => return Err(format!("unknown setting {other}")),
        }
        Ok(())
    }

    /// The command-line interface: one flag per [`SETTINGS`] entry, plus `--config` and
    /// `--print-config`. Environment variables and defaults are shown in the help but read
    /// by [`Invocation::parse`].
    pub fn command() -> Command {
        let mut command = Command::new("dm-server")
            .version(env!("CARGO_PKG_VERSION"))
            .about("The blind relay of the dm end-to-end encrypted messenger.")
            .after_help(
                "Each setting is taken from the first of: its flag, its environment variable, \
                 the configuration file (keys as in --print-config), its default.",
            )
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML file with settings (keys as in --print-config) [env: DM_CONFIG]"),
            )
            .arg(
                Arg::new("print-config")
                    .long("print-config")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Print the resolved settings as TOML (database password hidden) and \
                         exit",
                    ),
            );
        for setting in SETTINGS {
            let default = if setting.default.is_empty() {
                "none".to_owned()
            } else {
                setting.default.to_owned()
            };
            command = command.arg(
                Arg::new(setting.key)
                    .long(setting.flag)
                    .value_name(setting.value_name)
                    .action(ArgAction::Set)
                    .help(format!(
                        "{} [env: {}] [default: {default}]",
                        setting.help, setting.env
                    )),
            );
        }
        command
    }

    /// The limits the store enforces.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            mailbox_quota: self.mailbox_quota,
            envelope_retention_secs: u64::from(self.envelope_retention_days) * SECS_PER_DAY,
            claims_per_requester_per_hour: self.claims_per_requester_per_hour,
            one_time_claims_per_target_per_hour: self.one_time_claims_per_target_per_hour,
            database_connections: self.database_connections,
        }
    }

    /// The database URL with its password (if any) replaced by `***`.
    pub fn redacted_database_url(&self) -> String {
        redact_url_password(&self.database_url)
    }

    /// The settings as a TOML file would hold them (database password hidden).
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::new();
        let mut put = |key: &str, value: toml::Value| {
            table.insert(key.to_owned(), value);
        };
        let int = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        put("listen", self.listen.to_string().into());
        put("database_url", self.redacted_database_url().into());
        put(
            "log_format",
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        );
        put("max_connections", int(self.max_connections as u64));
        put(
            "rate_limit_per_second",
            toml::Value::Float(self.rate_limit.per_second),
        );
        put("rate_limit_burst", int(self.rate_limit.burst.into()));
        put(
            "client_ip_header",
            self.client_ip_header
                .as_ref()
                .map_or("", HeaderName::as_str)
                .into(),
        );
        put("mailbox_quota", int(self.mailbox_quota.into()));
        put(
            "envelope_retention_days",
            int(self.envelope_retention_days.into()),
        );
        put(
            "claims_per_requester_per_hour",
            int(self.claims_per_requester_per_hour.into()),
        );
        put(
            "one_time_claims_per_target_per_hour",
            int(self.one_time_claims_per_target_per_hour.into()),
        );
        put(
            "database_connections",
            int(self.database_connections.into()),
        );
        put("max_websockets", int(self.max_websockets as u64));
        put("shutdown_grace_secs", int(self.shutdown_grace.as_secs()));
        // Keep the order of SETTINGS.
        let mut out = String::new();
        for setting in SETTINGS {
            if let Some(value) = table.get(setting.key) {
                out.push_str(&format!("{} = {value}\n", setting.key));
            }
        }
        out
    }
}

const SECS_PER_DAY: u64 = 24 * 3600;

/// `scheme://user:password@host/...` with the password replaced by `***`.
fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}***{}",
        &url[..authority_start],
        &authority[..=colon],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        let mut argv = vec!["dm-server"];
        argv.extend_from_slice(args);
        Invocation::parse(argv, |name| env.get(name).cloned())
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        parse(args, env).expect("parses").config
    }

    #[test]
    fn defaults_parse() {
        let mut config = Config::placeholder();
        for setting in SETTINGS {
            config
                .apply(setting.key, setting.default)
                .unwrap_or_else(|e| panic!("{}: {e}", setting.key));
        }
        assert_eq!(config, Config::default());
        assert_eq!(config, self::config(&[], &[]));
        assert_eq!(config.store_options(), StoreOptions::default());
        assert_eq!(config.listen, "127.0.0.1:7878".parse().expect("address"));
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.rate_limit.per_second > 0.0);
    }

    #[test]
    fn names_follow_one_rule() {
        for s in SETTINGS {
            assert_eq!(s.flag, s.key.replace('_', "-"));
            assert_eq!(s.env, format!("DM_{}", s.key.to_ascii_uppercase()));
        }
    }

    #[test]
    fn help_lists_every_setting_with_env_and_default() {
        let help = Config::command().render_long_help().to_string();
        for s in SETTINGS {
            assert!(help.contains(&format!("--{}", s.flag)), "{help}");
            assert!(help.contains(&format!("[env: {}]", s.env)), "{help}");
        }
        assert!(help.contains("[default: 127.0.0.1:7878]"), "{help}");
        assert!(help.contains("[default: 2048]"), "{help}");
        assert!(help.contains("--config"), "{help}");
    }

    /// The sample file in the crate sets every setting to its default.
    #[test]
    fn example_file_holds_every_default() {
        let text = include_str!("../dm-server.example.toml");
        let path = Path::new("dm-server.example.toml");
        let table = parse_file(path, text).expect("valid example");
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected, "the example must set every setting");
        let mut config = Config::placeholder();
        for setting in SETTINGS {
            let raw = toml_scalar(&table[setting.key]).expect("scalar");
            config.apply(setting.key, &raw).expect("parses");
        }
        assert_eq!(config, Config::default());
    }
}
