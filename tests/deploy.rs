//! The systemd unit in `deploy/` is one systemd accepts: `systemd-analyze verify` on a copy
//! whose `ExecStart` is the binary under test finds nothing to say about it. Skipped, saying
//! so, where `systemd-analyze` is not installed.

mod support;

use std::fs;
use std::process::Command;

use support::*;

const UNIT: &str = include_str!("../deploy/mini-lambda-rust.service");
const NAME: &str = "mini-lambda-rust.service";

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not on PATH, so {NAME} is not verified");
        return;
    };
    assert!(version.status.success(), "systemd-analyze --version failed");

    let exec_start = UNIT
        .lines()
        .filter(|line| line.starts_with("ExecStart="))
        .collect::<Vec<_>>();
    assert_eq!(exec_start, ["ExecStart=/usr/local/bin/mini-lambda-rust"]);
    let unit = UNIT.replace(exec_start[0], &format!("ExecStart={BIN}"));
    let dir = unique_temp_dir();
    let path = dir.join(NAME);
    fs::write(&path, unit).unwrap();

    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&verified.stderr).into_owned();
    let _ = fs::remove_dir_all(&dir);
    assert!(
        verified.status.success(),
        "systemd-analyze verify failed ({}): {stderr}",
        verified.status
    );
    // Unknown or unparsable settings are only warnings; any line naming the unit is one.
    let about_unit: Vec<&str> = stderr.lines().filter(|line| line.contains(NAME)).collect();
    assert!(about_unit.is_empty(), "warnings about {NAME}:\n{stderr}");
}

/// What the unit promises the server: where its state is, that a stop lets jobs drain, and
/// the sandbox's essentials; `verify` checks the syntax, this the intent.
#[test]
fn the_systemd_unit_keeps_state_in_its_directory_and_outlasts_the_grace() {
    let settings: Vec<(&str, &str)> = UNIT
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let value = |name: &str| {
        let values: Vec<&str> = settings
            .iter()
            .filter(|(key, _)| *key == name)
            .map(|(_, value)| *value)
            .collect();
        values
    };
    assert_eq!(value("DynamicUser"), ["yes"]);
    assert_eq!(value("StateDirectory"), ["mini-lambda-rust"]);
    assert_eq!(value("WorkingDirectory"), ["%S/mini-lambda-rust"]);
    assert_eq!(value("Restart"), ["on-failure"]);
    assert_eq!(value("KillMode"), ["mixed"]);
    assert_eq!(value("EnvironmentFile"), ["-/etc/mini-lambda-rust.env"]);
    let environment = value("Environment");
    assert!(
        environment.contains(&"DATABASE_URL=sqlite://%S/mini-lambda-rust/jobs.db"),
        "{environment:?}"
    );
    let grace: u64 = environment
        .iter()
        .find_map(|setting| setting.strip_prefix("SHUTDOWN_GRACE_SECONDS="))
        .expect("SHUTDOWN_GRACE_SECONDS in the unit")
        .parse()
        .unwrap();
    let stop: u64 = value("TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    // The grace, then up to FUNCTION_KILL_GRACE_MS (2 s) to stop functions, and a margin.
    assert!(
        stop >= grace + 2 + 5,
        "TimeoutStopSec {stop} s, grace {grace} s"
    );
    for (name, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(value(name), [expected], "{name}");
    }
}
