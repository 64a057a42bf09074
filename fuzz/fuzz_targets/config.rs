//! The host configuration is written by hand. Whatever the text, loading it must not panic,
//! and for every profile it accepts, a request's argv must not be able to change podman's own
//! options: it only ever lands after the image, as the daemon's arguments.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sidespawn::host::config::{HostConfig, Profile};
use sidespawn::host::plan::run_spec;
use sidespawn::host::runtime::labels;
use sidespawn::shared::record::{Action, NetnsRef, Record, VERSION};

const UUID: &str = "0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a";

/// `podman run`'s argv for a request with `argv`, split at the `--` before the image into
/// podman's side (without the argv-hash label, which is meant to differ) and what follows the
/// image.
fn split_run(profile: &Profile, netns_dir: &Path, argv: &[&str]) -> (Vec<String>, Vec<String>) {
    let name = format!("qdhcp-{UUID}");
    let record = Record {
        v: VERSION,
        id: "01a1fe313add-c8a5449f523d7e121f36467b94be1afe".into(),
        kind: profile.kind,
        action: Action::Start,
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        netns: Some(NetnsRef {
            name,
            dev: 4,
            ino: 4026532177,
        }),
        tag: Some(format!("{}-{UUID}", profile.kind)),
        signal: None,
        pid: None,
        ts: 1,
    };
    let spec = run_spec(profile, netns_dir, &record, 1);
    let all = spec.argv();
    let sep = all
        .iter()
        .position(|a| a == "--")
        .expect("no `--` before the image");
    assert_eq!(all[sep + 1], spec.image, "the image does not follow `--`");
    let hash = format!("--label={}=", labels::ARGV_HASH);
    let podman = all[..sep]
        .iter()
        .filter(|a| !a.starts_with(&hash))
        .cloned()
        .collect();
    let mut want_after = profile.command[1..].to_vec();
    want_after.extend(profile.daemon_argv(&record.argv));
    assert_eq!(all[sep + 2..], want_after, "what follows the image");
    (podman, all[sep + 2..].to_vec())
}

fuzz_target!(|text: &str| {
    let Ok(cfg) = HostConfig::from_str(Path::new("/fuzz/config.json"), text) else {
        return;
    };
    for kind in cfg.enabled_kinds() {
        let Ok(profile) = cfg.profile(kind) else {
            continue;
        };
        // Namespace names come from requests (at most 255 bytes of [A-Za-z0-9._-]); matching
        // them against the operator's patterns must stay quick whatever the patterns.
        let _ = profile.netns_allowed(&format!("qdhcp-{UUID}"));
        let _ = profile.netns_allowed(&"q-".repeat(127));
        let (plain, _) = split_run(profile, &cfg.netns_dir, &["--port=0", ""]);
        let (hostile, _) = split_run(
            profile,
            &cfg.netns_dir,
            &["--privileged", "-v", "/:/host", "--network=host", "--"],
        );
        assert_eq!(
            plain, hostile,
            "the request's argv changed podman's options"
        );
    }
});
