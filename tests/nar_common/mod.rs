//! Shared by the NAR/import tests: generated trees and the real Nix as referee.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::nix_referee::{nix, nix_command};

/// The three service flags, each `memory://`: a command with a store of its own, gone at exit.
pub const MEMORY_SERVICES: [&str; 6] = [
    "--blob-service-addr",
    "memory://",
    "--directory-service-addr",
    "memory://",
    "--path-info-service-addr",
    "memory://",
];

/// A TCP port on the loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `path` exists (a server's socket), failing the test after `within`.
pub fn wait_for_path(path: &Path, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{} did not appear within {within:?}", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `nix-store --dump PATH`.
pub fn nix_dump(path: &Path) -> Vec<u8> {
    nix("nix-store", &["--dump".as_ref(), path.as_os_str()])
}

/// `nix-store --add PATH`, the store path it prints.
pub fn nix_add(path: &Path) -> String {
    let out = nix("nix-store", &["--add".as_ref(), path.as_os_str()]);
    String::from_utf8(out).expect("utf-8").trim_end().to_string()
}

/// `nix-hash --type sha256 PATH` (hex).
pub fn nix_hash(path: &Path) -> String {
    let out = nix("nix-hash", &["--type".as_ref(), "sha256".as_ref(), path.as_os_str()]);
    String::from_utf8(out).expect("utf-8").trim_end().to_string()
}

/// Deterministic, non-repeating-ish content.
pub fn content(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ (i as u8)).collect()
}

pub fn write_file(path: &Path, len: usize, executable: bool) {
    std::fs::write(path, content(len)).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Named trees covering every NAR feature; the names are valid store path names.
pub fn trees(base: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut mk = |name: &str| {
        let p = base.join(name);
        out.push(p.clone());
        p
    };

    write_file(&mk("root-file"), 5, false);
    write_file(&mk("root-empty-file"), 0, false);
    write_file(&mk("root-exec"), 8, true);
    symlink("/nix/store/target", mk("root-symlink")).unwrap();
    std::fs::create_dir(mk("empty-dir")).unwrap();

    let d = mk("mixed");
    std::fs::create_dir(&d).unwrap();
    for len in [0, 1, 7, 8, 9, 15, 16, 17, 4095, 4096, 4097, 65535, 65536, 65537] {
        write_file(&d.join(format!("f{len}")), len, len % 2 == 1);
    }
    symlink("../relative/target", d.join("rel")).unwrap();
    symlink("/absolute/target", d.join("abs")).unwrap();
    symlink("dangling-nowhere", d.join("dangling")).unwrap();
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::create_dir_all(d.join("sub/subsub")).unwrap();
    std::fs::create_dir_all(d.join("sub/empty-sub")).unwrap();
    write_file(&d.join("sub/subsub/leaf"), 3, false);
    write_file(&d.join("sub/a b c"), 3, false);
    write_file(&d.join("sub/ünïcödé ✓"), 12, true);
    write_file(&d.join("sub/empty exec"), 0, true);
    // Sorting is by bytes: uppercase before lowercase, '-' before digits.
    for n in ["B", "a", "-", "0", "a.", "a-"] {
        write_file(&d.join("sub").join(n), 1, false);
    }

    // Around the chunker's min/avg/max sizes and the small-blob threshold.
    let sizes = mk("chunk-sizes");
    std::fs::create_dir(&sizes).unwrap();
    for base in [64 * 1024, 256 * 1024, 1024 * 1024, 3 * 1024 * 1024] {
        for delta in [-1i64, 0, 1] {
            let len = (base as i64 + delta) as usize;
            write_file(&sizes.join(format!("s{len}")), len, false);
        }
    }

    let deep = mk("deep");
    let mut p = deep.clone();
    for i in 0..60 {
        p = p.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&p).unwrap();
    write_file(&p.join("bottom"), 10, false);

    let many = mk("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..3000 {
        write_file(&many.join(format!("entry-{i}")), i % 20, false);
    }
    out
}

/// Runs `tvix-store ARGS` on the default store in `store`; what it printed goes to the test's
/// output, where a failing test shows it.
pub fn run_on_store(store: &Path, args: &[&str]) -> std::process::Output {
    let out = tvix_store().env("TVIX_STORE_DIR", store).args(args).output().expect("run tvix-store");
    eprintln!(
        "tvix-store {}: {}\nstdout:\n{}stderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `tvix-store` binary built for these tests.
pub fn tvix_store() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tvix-store"))
}

/// The text of `GET /metrics` from a `--metrics-listen` endpoint on the loopback.
pub fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `name{labels…}` whose labels include every one of `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let matches =
            series == name || (series.starts_with(&format!("{name}{{")) && labels.iter().all(|l| series.contains(l)));
        matches.then(|| value.parse().ok()).flatten()
    })
}
