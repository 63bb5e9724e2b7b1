//! The systemd units in deploy/systemd pass `systemd-analyze verify` with the real binary, are
//! hardened (`systemd-analyze security` rates their exposure under 2 of 10), and every flag they
//! give `certdrop` is one it takes.

use std::process::Command;

use crate::common::require_or_skip;

const UNITS: [&str; 2] = ["certdrop.service", "certdrop-edge.service"];

fn analyze(args: &[&str], unit: &std::path::Path) -> (bool, String, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_systemd_units_verify_are_hardened_and_name_only_real_flags() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require_or_skip("systemd-analyze", available) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_certdrop");
    for name in UNITS {
        let text = std::fs::read_to_string(format!(
            "{}/deploy/systemd/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        // Installed as /usr/local/bin/certdrop; here, the binary just built.
        let unit = dir.path().join(name);
        std::fs::write(&unit, text.replace("/usr/local/bin/certdrop", binary)).unwrap();

        let (ok, _, err) = analyze(&["verify", "--man=no"], &unit);
        assert!(ok && err.trim().is_empty(), "{name}: {err}");

        let (_, out, err) = analyze(&["security", "--offline=true"], &unit);
        let level: f64 = format!("{out}{err}")
            .lines()
            .find_map(|l| l.split("exposure level for").nth(1))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no exposure level in:\n{out}{err}"));
        assert!(level < 2.0, "{name}: exposure {level}:\n{out}");

        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let words: Vec<&str> = exec.split_whitespace().collect();
        let help = Command::new(binary)
            .args([words[1], "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(&format!("{flag} ")),
                "{name}: `certdrop {}` takes no {flag}",
                words[1]
            );
        }
    }
}
