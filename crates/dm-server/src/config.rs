//! Command-line and environment configuration of the `dm-server` binary.

use std::net::SocketAddr;

/// How the relay writes its log (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `dm-server`: the blind relay of the dm end-to-end encrypted messenger.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "dm-server", version, about)]
pub struct Config {
    /// Address and port to listen on (port 0 lets the OS choose one).
    #[arg(long, env = "DM_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://PATH` (the file is created on first start; a relative path
    /// is relative to the working directory).
    #[arg(long, env = "DM_DATABASE_URL", default_value = "sqlite://dm-server.db")]
    pub database_url: String,

    /// Log format.
    #[arg(long, env = "DM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_and_flags() {
        let config = Config::try_parse_from(["dm-server"]).expect("defaults parse");
        assert_eq!(config.listen, "127.0.0.1:7878".parse().expect("address"));
        assert_eq!(config.database_url, "sqlite://dm-server.db");
        assert_eq!(config.log_format, LogFormat::Text);
        let config = Config::try_parse_from([
            "dm-server",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .expect("flags parse");
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(Config::try_parse_from(["dm-server", "--log-format", "xml"]).is_err());
    }
}
