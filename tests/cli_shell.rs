//! What the command offers a shell and a log collector: completions for bash, zsh and fish,
//! man pages for every command, and JSON log lines that carry the store path as a field.

use std::process::Command;

fn tvix_store() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tvix-store"))
}

#[test]
fn completions_for_each_shell_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tvix_store().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        for command in ["mount", "nar-bridge", "substitute", "virtiofs"] {
            assert!(script.contains(command), "{shell}: no {command} in the script");
        }
    }
    let bash = String::from_utf8(tvix_store().args(["completions", "bash"]).output().unwrap().stdout).unwrap();
    assert!(bash.contains("complete -F"), "not a bash completion script");
    let unknown = tvix_store().args(["completions", "tcsh"]).output().unwrap();
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.lines().next().unwrap().contains("invalid value 'tcsh'"), "{stderr}");
}

#[test]
fn man_pages_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = tvix_store().arg("man").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["tvix-store", "tvix-store-mount", "tvix-store-nar-bridge", "tvix-store-daemon"] {
        let text = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap();
        assert!(text.contains(".TH"), "{page}: not a man page");
    }
    let nar_bridge = std::fs::read_to_string(dir.path().join("tvix-store-nar-bridge.1")).unwrap();
    assert!(nar_bridge.contains("signing"), "the nar-bridge page lacks its options");
}

#[test]
fn json_log_lines_carry_the_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = tvix_store()
        .env("TVIX_STORE_DIR", dir.path().join("store"))
        .env("RUST_LOG", "warn")
        .args(["--log-format", "json", "substitute", "--substituter", "http://127.0.0.1:1"])
        .arg("/nix/store/00000000000000000000000000000000-nowhere")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> =
        stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty(), "no JSON log lines: {stderr}");
    let about = lines.iter().find(|l| l["fields"]["path"].is_string()).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(about["fields"]["path"], "00000000000000000000000000000000");
    assert_eq!(about["level"], "WARN");
}
