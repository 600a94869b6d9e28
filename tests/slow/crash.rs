//! Crash safety: the daemon owning the default store is killed (SIGKILL) at many points during
//! imports of one large file and of many small files, then restarted. Every import that
//! printed its store path must be intact (`verify --contents --nar` clean, `dump` equal to
//! `nix-store --dump` of its source), no PathInfo may refer to anything missing, and `gc` then
//! removes what the interrupted imports left behind.
//!
//! `CRASH_ROUNDS` sets the number of kills (default 8; each round takes a few seconds).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::grpc_common::{Daemon, data};
use crate::nar_common::{self, nix_dump, tvix_store};

fn run(store: &Path, args: &[&str]) -> Output {
    nar_common::run_on_store(store, args)
}

/// The trees of round `round`: one large file (several chunks), and many small files (one of
/// them shared by every round, so imports also find data already stored).
fn sources(base: &Path, round: u32) -> Vec<PathBuf> {
    let large = base.join(format!("large-{round}"));
    std::fs::write(&large, data(24_000_000 + round as usize * 4096, 1000 + round)).unwrap();
    let many = base.join(format!("many-{round}"));
    for sub in 0..20u32 {
        let dir = many.join(format!("d{sub}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..100u32 {
            let seed = round * 100_000 + sub * 1000 + i;
            std::fs::write(dir.join(format!("f{i}")), data(200 + (i as usize * 37) % 3000, seed)).unwrap();
        }
    }
    std::fs::write(many.join("shared"), data(50_000, 7)).unwrap();
    vec![large, many]
}

/// Number of chunk files (finished ones; temporary files excluded) in the store.
fn chunk_count(store: &Path) -> usize {
    let Ok(fan_outs) = std::fs::read_dir(store.join("blobs/chunks")) else {
        return 0;
    };
    fan_outs
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| !f.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count()
}

/// `tvix-store import` of `paths` through the daemon's socket, its stdout read line by line.
fn start_import(store: &Path, paths: &[PathBuf]) -> Child {
    tvix_store()
        .env("TVIX_STORE_DIR", store)
        .arg("import")
        .args(paths)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tvix-store import")
}

/// A small deterministic generator, so a failing round can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn imports_survive_sigkill_of_the_daemon_and_gc_removes_their_debris() {
    let rounds: u32 = std::env::var("CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut daemon = Daemon::default_store(&store);
    let mut imported: Vec<(String, PathBuf)> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut interrupted = 0;
    for round in 0..rounds {
        let trees = sources(&src, round);
        let baseline = chunk_count(&store);
        let mut import = start_import(&store, &trees);
        let lines = BufReader::new(import.stdout.take().expect("piped stdout"));
        let printed = std::thread::spawn(move || lines.lines().map_while(Result::ok).collect::<Vec<_>>());
        // Odd rounds kill as soon as new chunks are on disk (an import is surely in flight);
        // even ones after a random delay, which may fall anywhere, before or after the end.
        let deadline = Instant::now() + Duration::from_secs(60);
        if round % 2 == 1 {
            while chunk_count(&store) <= baseline + (next(&mut rng) % 40) as usize {
                assert!(Instant::now() < deadline, "round {round}: the import wrote no chunks");
                if import.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            std::thread::sleep(Duration::from_millis(next(&mut rng) % 1500));
        }
        daemon.kill();
        let status = import.wait().unwrap();
        let printed = printed.join().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        eprintln!("round {round}: killed; import {status}, {} of {} paths done", printed.len(), trees.len());
        assert!(printed.len() <= trees.len());
        for (line, tree) in printed.iter().zip(&trees) {
            imported.push((line.trim().to_string(), tree.clone()));
        }
        daemon.restart();
        // Everything whose import returned is intact, and nothing refers to anything missing.
        let out = run(&store, &["verify", "--contents"]);
        assert!(out.status.success(), "round {round}: the store does not verify after a SIGKILL");
    }
    assert!(interrupted > 0, "no round interrupted an import: the test did not test a crash");
    let names: Vec<&str> = imported.iter().map(|(p, _)| p.as_str()).collect();
    let mut args = vec!["verify", "--contents", "--nar"];
    args.extend(&names);
    assert!(run(&store, &args).status.success(), "an import that returned is not intact");

    let before = chunk_count(&store);
    let out = run(&store, &["gc", "--grace", "0s"]);
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}");
    assert!(chunk_count(&store) < before, "interrupted imports left no debris for gc: {report}");
    let out = run(&store, &["gc", "--dry-run", "--grace", "0s"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("would remove 0 objects"), "gc left debris");
    assert!(run(&store, &args).status.success(), "gc broke an imported path");
    for (path, tree) in &imported {
        let dump = run(&store, &["dump", path]);
        assert!(dump.status.success());
        assert!(dump.stdout == nix_dump(tree), "{path}: NAR differs from nix-store --dump {}", tree.display());
    }
}
