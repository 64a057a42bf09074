//! Many wrapper processes append while another party keeps claiming: every
//! record must be read exactly once, and no line may ever be torn.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use sidespawn::shared::kind::Kind;
use sidespawn::shared::queue::QueueDir;
use sidespawn::shared::record::Record;

const WRITERS: usize = 32;
const PER_WRITER: usize = 200;

#[test]
fn concurrent_wrappers_and_claimer_lose_and_tear_nothing() {
    let dir = common::TempDir::new("sidespawn-conc");
    let root = dir.join("queue");
    std::fs::create_dir_all(root.join("dnsmasq")).unwrap();
    let config = dir.join("wrapper.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"queue_root":"{}","kinds":{{"dnsmasq":{{"allow_host_network":true}}}}}}"#,
            root.display()
        ),
    )
    .unwrap();
    let wrapper = env!("CARGO_BIN_EXE_sidespawn-wrapper");
    let queue = QueueDir::new(&root, Kind::Dnsmasq);

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The claimer: take the lock, read everything, truncate, release; over
    // and over while the writers run, then once more at the end.
    let claimer = {
        let queue = queue.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut lines: Vec<String> = Vec::new();
            let mut claims = 0usize;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                {
                    let _g = queue.lock(Duration::from_secs(30), || {}).unwrap();
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(queue.queue())
                    {
                        let mut text = String::new();
                        f.read_to_string(&mut text).unwrap();
                        assert!(
                            text.is_empty() || text.ends_with('\n'),
                            "torn last line: {text:?}"
                        );
                        lines.extend(text.lines().map(String::from));
                        f.set_len(0).unwrap();
                    }
                    claims += 1;
                }
                if finished {
                    return (lines, claims);
                }
                std::thread::yield_now();
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let config = config.clone();
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    let out = Command::new(wrapper)
                        .args([
                            "--kind",
                            "dnsmasq",
                            "--",
                            &format!("writer-{w}"),
                            &format!("n-{i}"),
                            "",
                        ])
                        .env("SIDESPAWN_WRAPPER_CONFIG", &config)
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "wrapper failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    assert!(out.stdout.is_empty());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (lines, claims) = claimer.join().unwrap();

    assert!(
        claims > 1,
        "the claimer should have interleaved with the writers"
    );
    assert_eq!(
        lines.len(),
        WRITERS * PER_WRITER,
        "every record read exactly once"
    );
    let mut ids = HashSet::new();
    let mut seen = HashSet::new();
    for l in &lines {
        let r = Record::parse_line(l.as_bytes())
            .unwrap_or_else(|e| panic!("torn or bad line {l:?}: {e}"));
        assert!(ids.insert(r.id.clone()), "duplicate id {}", r.id);
        assert_eq!(r.argv[2], "", "empty argument kept");
        assert!(
            seen.insert((r.argv[0].clone(), r.argv[1].clone())),
            "record read twice: {l}"
        );
    }
    assert_eq!(std::fs::metadata(queue.queue()).unwrap().len(), 0);
}
