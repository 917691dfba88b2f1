//! Configuration sources: precedence, file errors, value errors, `--print-config`
//! (through `Invocation::parse` with an explicit environment).

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use axum::http::HeaderName;
use dm_server::config::{Config, ConfigError, Invocation, LogFormat, Origin};

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

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn precedence_is_flag_env_file_default() {
    let dir = tempfile::TempDir::new().expect("dir");
    let file = write(
        &dir,
        "max_connections = 7\nmailbox_quota = 8\nrate_limit_burst = 9\n\
         log_format = \"json\"\n",
    );
    let env = [
        ("DM_CONFIG", file.as_str()),
        ("DM_MAILBOX_QUOTA", "80"),
        ("DM_RATE_LIMIT_BURST", "90"),
    ];
    let c = config(&["--rate-limit-burst", "900"], &env);
    assert_eq!(c.max_connections, 7); // file over default
    assert_eq!(c.mailbox_quota, 80); // env over file
    assert_eq!(c.rate_limit.burst, 900); // flag over env and file
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.listen, Config::default().listen); // default
    // --config beats DM_CONFIG.
    let other_dir = tempfile::TempDir::new().expect("dir");
    let other_file = write(&other_dir, "max_connections = 70\n");
    let c = config(&["--config", &other_file], &env);
    assert_eq!(c.max_connections, 70);
    assert_eq!(c.mailbox_quota, 80);
}

#[test]
fn file_errors_name_the_key_or_setting() {
    let dir = tempfile::TempDir::new().expect("dir");
    let file = write(&dir, "max_connections = 5\nmax_conections = 6\n");
    let err = parse(&["--config", &file], &[]).expect_err("unknown key");
    assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "max_conections"));
    assert!(err.to_string().contains("`max_conections`"), "{err}");

    let file = write(&dir, "max_connections = \"many\"\n");
    let err = parse(&["--config", &file], &[]).expect_err("bad value");
    assert!(
        matches!(
            &err,
            ConfigError::Invalid {
                setting: "max_connections",
                origin: Origin::File(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_connections"), "{err}");

    let file = write(&dir, "shutdown_grace_secs = true\n");
    let err = parse(&["--config", &file], &[]).expect_err("bool");
    assert!(err.to_string().contains("shutdown_grace_secs"), "{err}");

    let file = write(&dir, "listen = \n");
    let err = parse(&["--config", &file], &[]).expect_err("syntax");
    assert!(matches!(err, ConfigError::FileSyntax { .. }), "{err:?}");
    assert!(err.to_string().contains("line 1"), "{err}");

    let err = parse(&["--config", "/nonexistent/relay.toml"], &[]).expect_err("missing");
    assert!(matches!(err, ConfigError::ReadFile { .. }), "{err:?}");

    // A section is not a setting either.
    let file = write(&dir, "[limits]\nburst = 5\n");
    let err = parse(&["--config", &file], &[]).expect_err("section");
    assert!(err.to_string().contains("`limits`"), "{err}");
}

#[test]
fn bad_values_name_the_setting_and_source_without_echoing_them() {
    let err = parse(&["--max-connections", "0"], &[]).expect_err("zero");
    assert_eq!(
        err.to_string(),
        "invalid max_connections from --max-connections: must be a whole number from 1 \
         to 1000000"
    );
    let err = parse(&[], &[("DM_LISTEN", "localhost")]).expect_err("listen");
    assert!(
        err.to_string()
            .starts_with("invalid listen from the environment variable DM_LISTEN"),
        "{err}"
    );
    let err = parse(&["--envelope-retention-days", "31"], &[]).expect_err("retention");
    assert!(err.to_string().contains("1 to 30"), "{err}");
    for bad in ["-1", "NaN", "inf", "x"] {
        assert!(
            parse(&["--rate-limit-per-second", bad], &[]).is_err(),
            "{bad}"
        );
    }
    assert!(parse(&["--log-format", "xml"], &[]).is_err());
    assert!(parse(&["--client-ip-header", "bad header"], &[]).is_err());
    assert!(parse(&["--unknown-flag", "1"], &[]).is_err());
    let err = parse(&["--database-url", ""], &[]).expect_err("empty");
    assert!(err.to_string().contains("database_url"), "{err}");
}

#[test]
fn values_parse() {
    let c = config(
        &[
            "--listen",
            "[::1]:0",
            "--rate-limit-per-second",
            "0.5",
            "--client-ip-header",
            "X-Forwarded-For",
            "--envelope-retention-days",
            "7",
            "--shutdown-grace-secs",
            "0",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(c.listen.port(), 0);
    assert!((c.rate_limit.per_second - 0.5).abs() < f64::EPSILON);
    assert_eq!(
        c.client_ip_header.as_ref().map(HeaderName::as_str),
        Some("x-forwarded-for")
    );
    assert_eq!(c.store_options().envelope_retention_secs, 7 * 24 * 3600);
    assert_eq!(c.shutdown_grace, Duration::ZERO);
    assert!(
        parse(&["--print-config"], &[])
            .expect("parses")
            .print_config
    );
    assert!(!parse(&[], &[]).expect("parses").print_config);
}

#[test]
fn printed_config_reads_back_and_hides_the_password() {
    let dir = tempfile::TempDir::new().expect("dir");
    let c = config(
        &[
            "--database-url",
            "postgres://relay:s3cret@db.internal:5432/dm",
            "--max-connections",
            "12",
            "--rate-limit-per-second",
            "2.5",
        ],
        &[],
    );
    let printed = c.to_toml();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(!format!("{c:?}").contains("s3cret"));
    assert!(printed.contains("postgres://relay:***@db.internal:5432/dm"));
    let file = write(&dir, &printed);
    let back = config(&["--config", &file], &[]);
    assert_eq!(back.max_connections, 12);
    assert!((back.rate_limit.per_second - 2.5).abs() < f64::EPSILON);
    // Everything but the hidden password survives the round trip.
    assert_eq!(
        Config {
            database_url: c.redacted_database_url(),
            ..c
        },
        back
    );
    for (url, redacted) in [
        ("sqlite://dm.db", "sqlite://dm.db"),
        ("postgres://u@h/db", "postgres://u@h/db"),
        ("postgres://u:p@h/db?x=@y", "postgres://u:***@h/db?x=@y"),
        ("postgres://u:p:q@h", "postgres://u:***@h"),
    ] {
        let config = Config {
            database_url: url.into(),
            ..Config::default()
        };
        assert_eq!(config.redacted_database_url(), redacted);
    }
}
