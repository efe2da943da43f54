use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Args;
use voicecluster_api::{
    DEFAULT_ADMIN_PORT, ENV_ADMIN_ADDR, ENV_INSTANCE_DIR, ENV_LOG_FORMAT, ENV_LOG_LEVEL,
    ENV_PORT_SLOT_FILE, ENV_PORT_SLOTS,
};

use crate::LogFormat;

/// Flags every binary accepts; `#[command(flatten)]` them into the binary's
/// own arguments. Each can also come from an environment variable, which is
/// how the operator configures the pods it creates.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct CommonArgs {
    /// Log line format.
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing `EnvFilter` syntax: a level (`info`), or
    /// per-target levels (`info,signal_node=debug`).
    #[arg(long, env = ENV_LOG_LEVEL, default_value = "info")]
    pub log_level: String,

    /// Address of the admin HTTP server (/healthz, /readyz, /metrics).
    #[arg(long, env = ENV_ADMIN_ADDR, default_value_t = default_admin_addr())]
    pub admin_addr: SocketAddr,

    /// Port slots the admin server (and other listeners) may take: when the
    /// port is in use (a successor pod beside this one on the node's
    /// network), the next slot is tried, 10 ports up.
    #[arg(long, env = ENV_PORT_SLOTS, default_value_t = 1)]
    pub port_slots: u16,

    /// Directory where this process writes the addresses it listens on
    /// (for its pod's exec probes and its other containers).
    #[arg(long, env = ENV_INSTANCE_DIR)]
    pub instance_dir: Option<PathBuf>,

    /// Take the port slot written in this instance file (by the pod's
    /// other container) instead of the first free one, so that the ports of
    /// one pod are in one slot.
    #[arg(long, env = ENV_PORT_SLOT_FILE)]
    pub port_slot_file: Option<PathBuf>,
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_ADMIN_PORT))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    // These tests pass flags only: the defaults would be overridden if the
    // VC_* variables happened to be set where the tests run.

    #[test]
    fn parses_all_flags() {
        let cli = Cli::try_parse_from([
            "bin",
            "--log-format",
            "json",
            "--log-level",
            "debug,hyper=info",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(
            cli.common,
            CommonArgs {
                log_format: LogFormat::Json,
                log_level: "debug,hyper=info".into(),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
                port_slots: 1,
                instance_dir: None,
                port_slot_file: None,
            }
        );
    }

    #[test]
    fn default_admin_addr_is_all_interfaces_on_the_admin_port() {
        assert_eq!(default_admin_addr().to_string(), "0.0.0.0:9090");
    }

    #[test]
    fn rejects_unknown_log_format() {
        let err = Cli::try_parse_from(["bin", "--log-format", "xml"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn rejects_bad_admin_addr() {
        let err = Cli::try_parse_from(["bin", "--admin-addr", "localhost"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
