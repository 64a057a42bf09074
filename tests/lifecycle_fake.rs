//! The sync's lifecycle rules against the recording fake runtime: the
//! desired-state table follows starts, stops and vanished namespaces, and a
//! desired sidecar whose process died is started again under the kind's
//! restart policy. Real queue and state directories, no podman.

mod common;

use common::TempDir;
use sidespawn::host::config::HostConfig;
use sidespawn::host::desired::DesiredTable;
use sidespawn::host::namespaces::FakeNamespaces;
use sidespawn::host::runtime::{Call, FakeRuntime, Runtime, State, labels};
use sidespawn::host::state::StateDir;
use sidespawn::host::sync::{Summary, SyncOptions};
use sidespawn::shared::kind::Kind;
use sidespawn::shared::record::{Action, NetnsRef, Record, Signal, VERSION, new_id, now_ms};

struct Setup {
    dir: TempDir,
    cfg: HostConfig,
    fake: FakeRuntime,
    ns: FakeNamespaces,
    uuid: String,
}

impl Setup {
    /// `restart` is the kind's restart policy as JSON.
    fn new(restart: serde_json::Value) -> Option<Setup> {
        // The claim insists the queue directory is root's.
        if !common::privileged(
            "the sync's lifecycle rules on the fake runtime (the queue must be root's)",
        ) {
            return None;
        }
        let dir = TempDir::new("sidespawn-lifecycle-fake");
        std::fs::create_dir_all(dir.join("queue/dnsmasq")).unwrap();
        let text = serde_json::json!({
            "queue_root": dir.join("queue"),
            "state_dir": dir.join("state"),
            "kinds": {"dnsmasq": {"image": "localhost/dnsmasq:1", "restart": restart}}
        })
        .to_string();
        let cfg = HostConfig::from_str(&dir.join("config.json"), &text).unwrap();
        let uuid = common::uuid();
        let ns = FakeNamespaces::new([(format!("qdhcp-{uuid}"), 100)]);
        Some(Setup {
            dir,
            cfg,
            fake: FakeRuntime::new(Vec::new()),
            ns,
            uuid,
        })
    }

    fn queue(&self, rec: &Record) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(common::queue_file(&self.dir.join("queue"), "dnsmasq"))
            .unwrap();
        writeln!(f, "{}", rec.to_line().trim_end()).unwrap();
    }

    fn start(&self, argv: &[&str]) -> Record {
        let r = Record {
            v: VERSION,
            id: new_id(now_ms()),
            kind: Kind::Dnsmasq,
            action: Action::Start,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            netns: Some(NetnsRef {
                name: format!("qdhcp-{}", self.uuid),
                dev: 4,
                ino: 100,
            }),
            tag: Some(format!("dnsmasq-{}", self.uuid)),
            signal: None,
            pid: None,
            ts: now_ms(),
        };
        self.queue(&r);
        r
    }

    fn stop(&self, pid: u32) {
        let r = Record {
            action: Action::Signal,
            argv: Vec::new(),
            tag: None,
            signal: Some(Signal::Term),
            pid: Some(pid),
            ..self.start_record_template()
        };
        self.queue(&r);
    }

    fn start_record_template(&self) -> Record {
        Record {
            v: VERSION,
            id: new_id(now_ms()),
            kind: Kind::Dnsmasq,
            action: Action::Start,
            argv: Vec::new(),
            netns: Some(NetnsRef {
                name: format!("qdhcp-{}", self.uuid),
                dev: 4,
                ino: 100,
            }),
            tag: None,
            signal: None,
            pid: None,
            ts: now_ms(),
        }
    }

    fn sync(&self, full: bool) -> Summary {
        let opts = SyncOptions {
            full,
            ..SyncOptions::default()
        };
        let s = sidespawn::host::sync::run(&self.cfg, &self.fake, &self.ns, &opts).unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        s
    }

    fn name(&self) -> String {
        format!(
            "sidespawn-{}-dnsmasq-t-dnsmasq-{}",
            self.cfg.instance, self.uuid
        )
    }

    fn container(&self) -> Option<sidespawn::host::runtime::ContainerInfo> {
        self.fake
            .containers()
            .into_iter()
            .find(|c| c.name == self.name())
    }

    fn generation(&self) -> u64 {
        self.container().unwrap().labels[labels::GENERATION]
            .parse()
            .unwrap()
    }

    /// The daemon dies: the container exits, as podman reports it.
    fn die(&self) {
        self.fake.kill(&self.name(), Signal::Kill).unwrap();
        assert_eq!(self.container().unwrap().state, State::Exited);
    }

    fn desired(&self) -> DesiredTable {
        DesiredTable::load(&StateDir::new(&self.cfg.state_dir), Kind::Dnsmasq).unwrap()
    }

    fn runs(&self) -> usize {
        self.fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Run(_)))
            .count()
    }
}

#[test]
fn full_sync_with_nothing_to_change_asks_podman_once() {
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    s.start(&["--no-hosts", "", "--port=0"]);
    assert_eq!(s.sync(false).started, 1);
    let lists = |s: &Setup| {
        s.fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::List(_)))
            .count()
    };

    // Steady state: the pass's list also serves the garbage collection.
    s.fake.clear_calls();
    let sum = s.sync(true);
    assert_eq!((sum.restarts, sum.removed), (0, 0), "{sum}");
    assert_eq!(s.fake.calls(), [Call::List(s.cfg.instance.clone())]);

    // After a restart the list is stale: the collection lists again and
    // does not mistake the new container for a stranger.
    s.die();
    s.fake.clear_calls();
    assert_eq!(s.sync(true).restarts, 1);
    assert_eq!(lists(&s), 2, "{:?}", s.fake.calls());
    assert_eq!(s.container().unwrap().state, State::Running);
}

#[test]
fn dead_sidecar_is_restarted_with_the_same_argv_and_the_next_generation() {
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let req = s.start(&["--no-hosts", "", "--port=0"]);
    assert_eq!(s.sync(false).started, 1);
    let table = s.desired();
    let d = &table.sidecars[&format!("dnsmasq/tag/dnsmasq-{}", s.uuid)];
    assert_eq!(d.record, req);
    assert_eq!(d.container, s.name());
    let g1 = s.generation();

    // Nothing queued and no --full: the sync does not even list containers.
    s.die();
    s.fake.clear_calls();
    assert_eq!(s.sync(false).restarts, 0);
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());

    // The backstop's full sync notices and starts it again.
    let sum = s.sync(true);
    assert_eq!(sum.restarts, 1, "{sum}");
    let c = s.container().unwrap();
    assert_eq!(c.state, State::Running);
    assert_eq!(s.generation(), g1 + 1);
    let Some(Call::Run(spec)) = s
        .fake
        .calls()
        .into_iter()
        .find(|c| matches!(c, Call::Run(_)))
    else {
        panic!("no run: {:?}", s.fake.calls())
    };
    assert_eq!(spec.daemon_argv, ["-k", "--no-hosts", "", "--port=0"]);
    assert!(
        s.fake.calls().contains(&Call::Remove(s.name())),
        "the exited container must be removed first: {:?}",
        s.fake.calls()
    );
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert_eq!(d.generation, g1 + 1);
    assert_eq!(d.restarts.len(), 1);

    // A container removed behind our back is started again too, but not
    // within the 5 s backoff.
    s.fake.remove(&s.name()).unwrap();
    let before = s.runs();
    assert_eq!(s.sync(true).restarts, 0);
    assert_eq!(s.runs(), before);
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert!(
        d.last_error
            .as_deref()
            .is_some_and(|e| e.contains("backoff_s")),
        "{d:?}"
    );
}

#[test]
fn restarts_stop_at_max_restarts_and_when_disabled() {
    let Some(s) = Setup::new(serde_json::json!({"backoff_s": 0, "max_restarts": 2})) else {
        return;
    };
    s.start(&["a"]);
    s.sync(false);
    for round in 1..=2 {
        s.die();
        assert_eq!(s.sync(true).restarts, 1, "round {round}");
    }
    s.die();
    assert_eq!(s.sync(true).restarts, 0);
    assert_eq!(s.container().unwrap().state, State::Exited);
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert!(
        d.last_error
            .as_deref()
            .is_some_and(|e| e.contains("max_restarts")),
        "{d:?}"
    );
    // The agent asking again is a fresh start, with a fresh count.
    s.start(&["a"]);
    assert_eq!(s.sync(false).started, 1);
    assert!(
        s.desired()
            .sidecars
            .into_values()
            .next()
            .unwrap()
            .restarts
            .is_empty()
    );

    let Some(off) = Setup::new(serde_json::json!({"enabled": false})) else {
        return;
    };
    off.start(&["a"]);
    off.sync(false);
    off.die();
    assert_eq!(off.sync(true).restarts, 0);
    let d = off.desired().sidecars.into_values().next().unwrap();
    assert!(
        d.last_error
            .as_deref()
            .is_some_and(|e| e.contains("restart.enabled")),
        "{d:?}"
    );
}

#[test]
fn stopped_sidecars_and_vanished_namespaces_leave_the_table() {
    let Some(s) = Setup::new(serde_json::json!({"backoff_s": 0})) else {
        return;
    };
    s.start(&["a"]);
    s.sync(false);
    let pid = s.container().unwrap().pid;
    s.stop(pid);
    let sum = s.sync(false);
    assert_eq!(sum.removed, 1, "{sum}");
    assert!(s.desired().sidecars.is_empty());
    let before = s.runs();
    assert_eq!(s.sync(true).restarts, 0);
    assert_eq!(s.runs(), before, "a stopped sidecar must stay stopped");

    // Namespace deleted while the sidecar was dead: forgotten, and the
    // leftover container collected as an orphan.
    s.start(&["a"]);
    s.sync(false);
    s.die();
    s.ns.clear();
    let sum = s.sync(true);
    assert_eq!(sum.restarts, 0);
    assert_eq!(sum.removed, 1, "{sum}");
    assert!(s.desired().sidecars.is_empty());
    assert!(s.container().is_none());
}

#[test]
fn dry_run_shows_the_restart_and_changes_nothing() {
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    s.start(&["a"]);
    s.sync(false);
    s.die();
    let before = s.desired();
    s.fake.clear_calls();
    let opts = SyncOptions {
        full: true,
        dry_run: true,
        ..SyncOptions::default()
    };
    sidespawn::host::sync::run(&s.cfg, &s.fake, &s.ns, &opts).unwrap();
    assert_eq!(s.fake.calls(), [Call::List(s.cfg.instance.clone())]);
    assert_eq!(s.desired(), before);
}

/// A dry run prints exactly the engine calls the real run then makes: both
/// map each planned step through one function, with the profile's stop
/// timeout (here not podman's default of 10 s).
#[test]
fn dry_run_prints_exactly_the_calls_the_run_then_makes() {
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    s.cfg.kinds.get_mut(&Kind::Dnsmasq).unwrap().stop_timeout = std::time::Duration::from_secs(3);
    // One job at a time, so the calls come in the plan's order.
    s.cfg.parallelism = 1;
    s.start(&["a"]);
    s.sync(false);
    // A stop (TERM: `podman stop` with the grace time) and a new start.
    s.stop(s.container().unwrap().pid);
    let mut other = s.start_record_template();
    other.argv = vec!["b".to_owned()];
    other.tag = Some(format!("dnsmasq-other-{}", s.uuid));
    s.queue(&other);

    let dry = sidespawn::host::sync::run(
        &s.cfg,
        &s.fake,
        &s.ns,
        &SyncOptions {
            dry_run: true,
            ..SyncOptions::default()
        },
    )
    .unwrap();
    let printed: Vec<&String> = dry.dry_run.iter().filter(|l| !l.starts_with('#')).collect();
    assert!(
        printed.iter().any(|l| l.contains(" stop --time=3 ")),
        "{printed:#?}"
    );

    s.fake.clear_calls();
    let sum = s.sync(false);
    assert_eq!((sum.removed, sum.started), (1, 1), "{sum}");
    // The dry run's summary said what this run then did, as "would".
    let dry_line = dry.to_string();
    assert_eq!(
        dry_line,
        sum.to_string()
            .replace("sync:", "sync --dry-run, nothing changed:")
            .replace(" claimed ", " would claim ")
            .replace(" started ", " would start ")
            .replace(" replaced ", " would replace ")
            .replace(" unchanged ", " would leave unchanged ")
            .replace(" signalled ", " would signal ")
            .replace(" removed ", " would remove ")
            .replace(" failed ", " would fail ")
            .replace(" rejected ", " would reject ")
            .replace(" restarts ", " would restart "),
    );
    let ran: Vec<String> = s
        .fake
        .calls()
        .iter()
        .filter(|c| !matches!(c, Call::List(_)))
        .map(|c| s.fake.describe(c))
        .collect();
    assert_eq!(printed, ran.iter().collect::<Vec<_>>());
}

#[test]
fn status_compares_desired_with_actual() {
    let Some(s) = Setup::new(serde_json::json!({"enabled": false})) else {
        return;
    };
    s.start(&["a"]);
    s.sync(false);
    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    assert!(rep.healthy);
    assert_eq!((rep.kinds[0].desired, rep.kinds[0].desired_running), (1, 1));
    assert!(rep.sidecars[0].desired);

    s.die();
    s.sync(true);
    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    assert!(!rep.healthy);
    assert_eq!(rep.sidecars[0].state, "exited");
    assert!(
        rep.sidecars[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("restart.enabled")),
        "{:?}",
        rep.sidecars[0]
    );

    // Removed behind our back: still desired, listed as missing.
    s.fake.remove(&s.name()).unwrap();
    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    assert!(!rep.healthy);
    assert_eq!(rep.sidecars.len(), 1);
    assert_eq!(rep.sidecars[0].state, "missing");
    assert_eq!(rep.sidecars[0].name, s.name());
    assert_eq!((rep.kinds[0].desired, rep.kinds[0].desired_running), (1, 0));

    // A leftover nobody wants does not make the host unhealthy.
    let Some(t) = Setup::new(serde_json::json!({})) else {
        return;
    };
    t.start(&["a"]);
    t.sync(false);
    let pid = t.container().unwrap().pid;
    t.stop(pid);
    t.sync(false);
    t.fake
        .run(
            &t.fake
                .calls()
                .iter()
                .find_map(|c| match c {
                    Call::Run(spec) => Some(spec.clone()),
                    _ => None,
                })
                .unwrap(),
        )
        .unwrap();
    t.die();
    let rep = sidespawn::host::status::report(&t.cfg, &t.fake, &[]).unwrap();
    assert!(rep.healthy, "{rep:?}");
    assert!(!rep.sidecars[0].desired);
}

fn set_image(s: &mut Setup, image: &str) {
    if let Some(p) = s.cfg.kinds.get_mut(&Kind::Dnsmasq) {
        p.image = Some(image.to_owned());
    }
}

#[test]
fn after_a_reboot_a_sidecar_is_not_restarted_in_a_namespace_that_reuses_the_inode() {
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    s.start(&["--no-hosts", ""]);
    s.sync(false);
    let boot = s.dir.join("state/boot/dnsmasq");
    assert!(boot.is_file(), "the pass records its boot");
    // Control: the same death within this boot is a restart.
    s.die();
    assert_eq!(s.sync(true).restarts, 1);

    // The reboot: the container is gone, the namespace exists again under
    // its name with the very inode the record names (the kernel numbers
    // namespaces afresh at each boot), and the last pass ran in another
    // boot.
    s.fake.remove(&s.name()).unwrap();
    std::fs::write(&boot, "00000000-0000-0000-0000-00000000b007").unwrap();
    let sum = s.sync(true);
    assert_eq!(sum.restarts, 0, "{sum}");
    assert!(s.container().is_none());
    assert!(s.desired().sidecars.is_empty());
    let dropped =
        sidespawn::host::dropped::load(&StateDir::new(&s.cfg.state_dir), Kind::Dnsmasq).unwrap();
    assert_eq!(dropped.len(), 1);
    assert!(
        dropped[0].reason.contains("rebooted") && dropped[0].reason.contains("inode 100"),
        "{dropped:?}"
    );
    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    assert_eq!(rep.kinds[0].dropped, dropped);
    // The agent's fresh request is served, and the pass recorded this boot.
    s.start(&["--no-hosts", ""]);
    assert_eq!(s.sync(false).started, 1);
    assert_ne!(
        std::fs::read_to_string(&boot).unwrap(),
        "00000000-0000-0000-0000-00000000b007"
    );
}

/// One sidecar at a time, counted up as soon as it runs (the fake's
/// containers start or exit at once).
fn quick() -> sidespawn::host::upgrade::UpgradeOptions {
    sidespawn::host::upgrade::UpgradeOptions {
        max_parallel: 1,
        pull: false,
        settle: std::time::Duration::ZERO,
    }
}

#[test]
fn an_image_that_is_missing_or_cannot_start_its_program_changes_nothing() {
    use sidespawn::host::upgrade::{ImageState, upgrade};
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    s.start(&["--no-hosts", ""]);
    s.sync(false);
    let before = s.container().unwrap();
    let st = StateDir::new(&s.cfg.state_dir);

    set_image(&mut s, "localhost/dnsmasq:missing");
    s.fake.set_image_missing("localhost/dnsmasq:missing");
    s.fake.clear_calls();
    let e = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("localhost/dnsmasq:missing")
            && e.contains("not present")
            && e.contains("nothing was replaced"),
        "{e}"
    );
    // Nothing removed or started, nothing recorded for a rollback.
    assert!(
        s.fake.calls().iter().all(|c| matches!(c, Call::List(_))),
        "{:?}",
        s.fake.calls()
    );
    assert_eq!(s.container().unwrap(), before);
    assert_eq!(ImageState::load(&st, Kind::Dnsmasq).unwrap().previous, None);
    // --pull brings it.
    let pull = sidespawn::host::upgrade::UpgradeOptions {
        pull: true,
        ..quick()
    };
    let r = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &pull).unwrap();
    assert_eq!(r.replaced.len(), 1);
    assert_eq!(s.fake.pulled(), ["localhost/dnsmasq:missing"]);

    // Present, but its program cannot start: refused before any removal.
    set_image(&mut s, "localhost/dnsmasq:broken");
    s.fake.set_image_broken("localhost/dnsmasq:broken");
    let before = s.container().unwrap();
    s.fake.clear_calls();
    let e = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot start its program") && e.contains("dnsmasq --version"),
        "{e}"
    );
    assert!(
        !s.fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Remove(_) | Call::Run(_)))
    );
    assert_eq!(s.container().unwrap(), before);
}

#[test]
fn a_replacement_that_exits_at_once_is_put_back_on_its_old_image() {
    use sidespawn::host::upgrade::{UpgradeError, upgrade};
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    s.start(&["--no-hosts", ""]);
    s.sync(false);
    let g = s.generation();
    // Its version probe answers, but the daemon exits as soon as it starts.
    set_image(&mut s, "localhost/dnsmasq:crashes");
    s.fake.set_image_crashing("localhost/dnsmasq:crashes");
    let e = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap_err();
    let UpgradeError::Failed { report, .. } = &e else {
        panic!("{e}");
    };
    let text = e.to_string();
    assert!(
        text.contains("did not come up")
            && text.contains("1 put back")
            && text.contains("exited with code 3"),
        "{text}"
    );
    assert!(report.replaced.is_empty());
    assert_eq!(report.put_back.len(), 1);
    assert!(report.put_back[0].error.is_none(), "{:?}", report.put_back);
    assert!(report.gaps().is_some());
    // Back on the old image, running, two generations on (the failed one
    // and the one put back).
    let c = s.container().unwrap();
    assert_eq!(c.state, State::Running);
    assert_eq!(c.image, "localhost/dnsmasq:1");
    assert_eq!(s.generation(), g + 2);
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert_eq!(d.image, "localhost/dnsmasq:1");
    assert!(
        d.last_error
            .as_deref()
            .is_some_and(|m| m.contains("put back on localhost/dnsmasq:1")),
        "{:?}",
        d.last_error
    );
    // The agent's resync repeats the request: it stays on the image that
    // works (the failed upgrade left a rollback override), and so does a
    // restart.
    s.start(&["--no-hosts", ""]);
    assert_eq!(s.sync(false).unchanged, 1);
    s.die();
    assert_eq!(s.sync(true).restarts, 1);
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:1");
    assert_eq!(s.container().unwrap().state, State::Running);
    // `upgrade` again tries the configured image again (still crashing).
    let e = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap_err();
    assert!(e.to_string().contains("1 put back"), "{e}");
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:1");
    // A configuration naming a working image moves everything on.
    set_image(&mut s, "localhost/dnsmasq:fixed");
    let r = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap();
    assert_eq!(r.replaced.len(), 1);
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:fixed");
}

#[test]
fn a_replacement_that_fails_its_health_check_is_put_back() {
    use sidespawn::host::upgrade::upgrade;
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    if let Some(p) = s.cfg.kinds.get_mut(&Kind::Dnsmasq) {
        p.health_cmd = Some(vec!["dnsmasq".into(), "--test".into()]);
        p.health_timeout = std::time::Duration::from_millis(300);
    }
    s.start(&["--no-hosts", ""]);
    s.sync(false);
    set_image(&mut s, "localhost/dnsmasq:2");
    // The check fails whatever runs under the name: the new image's
    // daemon is judged, the one put back is only required to run.
    s.fake.set_unhealthy(&s.name(), true);
    let e = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("failed its health check") && e.contains("1 put back"),
        "{e}"
    );
    let c = s.container().unwrap();
    assert_eq!(
        (c.image.as_str(), c.state),
        ("localhost/dnsmasq:1", State::Running)
    );
    // Healthy: the retry moves it on.
    s.fake.set_unhealthy(&s.name(), false);
    let r = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap();
    assert_eq!(r.replaced.len(), 1);
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:2");
}

#[test]
fn upgrade_replaces_from_the_desired_table_and_rollback_returns() {
    use sidespawn::host::upgrade::{ImageState, rollback, upgrade};
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let req = s.start(&["--no-hosts", ""]);
    s.sync(false);
    let g1 = s.generation();

    // A changed image alone does not touch running sidecars...
    set_image(&mut s, "localhost/dnsmasq:2");
    s.sync(true);
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:1");
    // ...upgrade does: same argv, next generation, old image remembered.
    let r = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap();
    assert_eq!(r.replaced.len(), 1);
    let c = s.container().unwrap();
    assert_eq!(c.image, "localhost/dnsmasq:2");
    assert_eq!(s.generation(), g1 + 1);
    assert_eq!(c.labels[labels::REQUEST_ID], req.id);
    let st = StateDir::new(&s.cfg.state_dir);
    assert_eq!(
        ImageState::load(&st, Kind::Dnsmasq)
            .unwrap()
            .previous
            .as_deref(),
        Some("localhost/dnsmasq:1")
    );
    // Again: nothing to do.
    let r = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap();
    assert_eq!((r.replaced.len(), r.unchanged), (0, 1));

    // Rollback: back to :1, and syncs and restarts keep it.
    let r = rollback(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap();
    assert_eq!(r.replaced.len(), 1);
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:1");
    assert_eq!(s.generation(), g1 + 2);
    s.die();
    assert_eq!(s.sync(true).restarts, 1);
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:1");
    // A repeat of the request under the override is a no-op, not a replace.
    s.start(&["--no-hosts", ""]);
    assert_eq!(s.sync(false).unchanged, 1);

    // A later configuration change drops the override: upgrade rolls forward.
    set_image(&mut s, "localhost/dnsmasq:3");
    upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick()).unwrap();
    assert_eq!(s.container().unwrap().image, "localhost/dnsmasq:3");

    // A failing replacement stops the upgrade and says so.
    set_image(&mut s, "localhost/dnsmasq:4");
    s.fake.fail_on(&s.name(), "Error: image not known");
    let e = upgrade(&s.cfg, Kind::Dnsmasq, &s.fake, &s.ns, &quick())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("image not known") && e.contains("stopped"),
        "{e}"
    );
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert!(d.last_error.is_some_and(|m| m.contains("upgrade")));
}

#[test]
fn unhealthy_sidecar_counts_as_dead() {
    use sidespawn::host::status::{NOT_CHECKED, report, report_checked};
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let mut s = s;
    if let Some(p) = s.cfg.kinds.get_mut(&Kind::Dnsmasq) {
        p.health_cmd = Some(vec!["pgrep".into(), "dnsmasq".into()]);
    }
    s.start(&["a"]);
    s.sync(false);
    // Nothing checked it yet; plain status runs no check.
    let rep = report(&s.cfg, &s.fake, &[]).unwrap();
    assert!(rep.healthy);
    assert_eq!(rep.sidecars[0].health.as_deref(), Some(NOT_CHECKED));
    let rep = report_checked(&s.cfg, &s.fake, &[], true).unwrap();
    assert!(rep.healthy);
    assert_eq!(rep.sidecars[0].health.as_deref(), Some("healthy"));

    s.fake.set_unhealthy(&s.name(), true);
    // The stored result stands until a check runs.
    assert!(report(&s.cfg, &s.fake, &[]).unwrap().healthy);
    let rep = report_checked(&s.cfg, &s.fake, &[], true).unwrap();
    assert!(!rep.healthy);
    assert!(
        rep.sidecars[0]
            .health
            .as_deref()
            .is_some_and(|h| h.contains("health check failed")),
        "{:?}",
        rep.sidecars[0]
    );
    // Stored: plain status reports it without running a check.
    let calls = s.fake.calls().len();
    let rep = report(&s.cfg, &s.fake, &[]).unwrap();
    assert!(!rep.healthy);
    assert_eq!(
        rep.sidecars[0].health,
        report_checked(&s.cfg, &s.fake, &[], true).unwrap().sidecars[0].health
    );
    assert_eq!(s.fake.calls().len(), calls + 2, "{:?}", s.fake.calls());
    // Request-driven passes do not run checks; health rounds and the
    // backstop do.
    let g = s.generation();
    assert_eq!(s.sync(false).restarts, 0);
    let health = SyncOptions {
        health: true,
        ..SyncOptions::default()
    };
    let sum = sidespawn::host::sync::run(&s.cfg, &s.fake, &s.ns, &health).unwrap();
    assert_eq!(sum.restarts, 1);
    assert_eq!(s.generation(), g + 1);
    assert!(s.fake.calls().contains(&Call::Remove(s.name())));
    // The new container was not checked: the failure stored for the old
    // one does not stick to it.
    let rep = report(&s.cfg, &s.fake, &[]).unwrap();
    assert_eq!(rep.sidecars[0].health.as_deref(), Some(NOT_CHECKED));
    // Still unhealthy, but inside the restart policy's backoff: left as
    // a dead sidecar would be.
    assert_eq!(s.sync(true).restarts, 0);
    assert_eq!(s.generation(), g + 1);
    s.fake.set_unhealthy(&s.name(), false);
    assert!(report_checked(&s.cfg, &s.fake, &[], true).unwrap().healthy);
}

#[test]
fn failed_start_with_80_kib_of_argv_is_acknowledged_with_its_reason() {
    use sidespawn::shared::ack::{Ack, MAX_ACK_BYTES, MAX_MESSAGE_BYTES, Outcome};
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    // Above the default max_argv_bytes: raised, so the request reaches podman.
    if let Some(p) = s.cfg.kinds.get_mut(&Kind::Dnsmasq) {
        p.max_argv_bytes = 1 << 20;
    }
    // 800 arguments of 100 bytes: the podman command line alone is over
    // the ack's 64 KiB.
    let big: Vec<String> = (0..800).map(|i| format!("--dhcp-host={i:0>88}")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    s.fake
        .fail_on(&s.name(), "Error: localhost/dnsmasq:1: image not known");
    let req = s.start(&big);
    assert_eq!(s.sync(false).failed, 1);

    let path = s
        .dir
        .join("queue/dnsmasq/acks")
        .join(format!("{}.json", req.id));
    let bytes = std::fs::read(&path).expect("the failed start was acknowledged");
    assert!(bytes.len() as u64 <= MAX_ACK_BYTES, "{} bytes", bytes.len());
    let ack: Ack = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(ack.result, Outcome::Failed);
    assert!(ack.message.contains("image not known"), "{}", ack.message);
    assert!(ack.message.contains("more bytes)"), "{}", ack.message);
    assert!(
        ack.message.len() <= MAX_MESSAGE_BYTES,
        "{}",
        ack.message.len()
    );

    let d = s.desired().sidecars.into_values().next().unwrap();
    let last = d.last_error.unwrap();
    assert!(last.len() <= MAX_MESSAGE_BYTES, "{}", last.len());
    assert!(last.contains("image not known"), "{last}");
}

/// The acknowledgement of request `id`, parsed.
fn ack_of(s: &Setup, id: &str) -> sidespawn::shared::ack::Ack {
    let path = s.dir.join("queue/dnsmasq/acks").join(format!("{id}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("acknowledged")).unwrap()
}

/// Creates, behind the sync's back, the container a start of `rec` makes: what a sync killed
/// while its `podman run` was in flight leaves, after the next sync took its list.
fn created_by_an_interrupted_sync(s: &Setup, rec: &Record) -> String {
    let profile = s.cfg.profile(Kind::Dnsmasq).unwrap();
    let spec = sidespawn::host::plan::run_spec(profile, std::path::Path::new("/run/netns"), rec, 7);
    let id = s.fake.run(&spec).unwrap();
    s.fake.hide_from_list(&spec.name);
    s.fake.clear_calls();
    id
}

#[test]
fn start_adopts_the_sidecar_an_interrupted_sync_started() {
    use sidespawn::shared::ack::Outcome;
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let req = s.start(&["--no-hosts", "", "--port=0"]);
    let id = created_by_an_interrupted_sync(&s, &req);

    let sum = s.sync(false);
    assert_eq!((sum.started, sum.failed), (1, 0), "{sum}");
    let ack = ack_of(&s, &req.id);
    assert_eq!(ack.result, Outcome::Ok, "{}", ack.message);
    assert!(ack.message.contains("interrupted sync"), "{}", ack.message);
    // The same container, not removed nor run again.
    assert_eq!(s.container().unwrap().id, id);
    assert!(
        !s.fake.calls().iter().any(|c| matches!(c, Call::Remove(_))),
        "{:?}",
        s.fake.calls()
    );
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert_eq!(d.last_error, None);
    assert!(
        d.restarts.is_empty(),
        "no restart budget used: {:?}",
        d.restarts
    );
    assert_eq!(d.record.id, req.id);
}

#[test]
fn start_replaces_what_an_interrupted_sync_started_with_other_arguments() {
    use sidespawn::shared::ack::Outcome;
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let req = s.start(&["--no-hosts", "", "--port=0"]);
    let older = Record {
        id: new_id(now_ms()),
        argv: vec!["--older".into()],
        ..req.clone()
    };
    let old_id = created_by_an_interrupted_sync(&s, &older);

    let sum = s.sync(false);
    assert_eq!((sum.started, sum.failed), (1, 0), "{sum}");
    let ack = ack_of(&s, &req.id);
    assert_eq!(ack.result, Outcome::Ok, "{}", ack.message);
    let c = s.container().unwrap();
    assert_ne!(c.id, old_id);
    assert_eq!(c.labels[labels::REQUEST_ID], req.id);
    assert!(s.fake.calls().contains(&Call::Remove(s.name())));
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert_eq!(d.last_error, None);
    assert!(d.restarts.is_empty(), "{:?}", d.restarts);
}

#[test]
fn start_leaves_a_foreign_container_holding_the_name_alone() {
    use sidespawn::shared::ack::Outcome;
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let req = s.start(&["--no-hosts"]);
    // Same name, but not this configuration's sidecar (no kind or key label).
    let foreign = FakeRuntime::container(&s.name(), State::Running, &[("other", "yes")]);
    let fake = FakeRuntime::new(vec![foreign.clone()]);
    fake.hide_from_list(&s.name());
    let s = Setup { fake, ..s };
    let sum = s.sync(false);
    assert_eq!(sum.failed, 1, "{sum}");
    let ack = ack_of(&s, &req.id);
    assert_eq!(ack.result, Outcome::Failed);
    assert!(
        ack.message.contains("already in use by container"),
        "{}",
        ack.message
    );
    assert_eq!(s.container().unwrap().id, foreign.id);
    assert!(!s.fake.calls().iter().any(|c| matches!(c, Call::Remove(_))));
}

#[test]
fn new_sidecars_past_max_sidecars_are_rejected_but_existing_ones_and_stops_pass() {
    use sidespawn::shared::ack::Outcome;
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    if let Some(p) = s.cfg.kinds.get_mut(&Kind::Dnsmasq) {
        p.max_sidecars = 2;
    }
    let start = |s: &Setup, i: usize, argv: &str| {
        let r = Record {
            id: new_id(now_ms()),
            tag: Some(format!("dnsmasq-{}-{i}", s.uuid)),
            argv: vec![argv.to_owned()],
            ..s.start_record_template()
        };
        s.queue(&r);
        r
    };
    let name = |s: &Setup, i: usize| {
        format!(
            "sidespawn-{}-dnsmasq-t-dnsmasq-{}-{i}",
            s.cfg.instance, s.uuid
        )
    };
    let limit = format!(
        "limit of 2 sidecars for kind dnsmasq reached; raise kinds.dnsmasq.max_sidecars in {}",
        s.cfg.path.display()
    );

    // Three new sidecars in one batch: two fit.
    let first: Vec<Record> = (0..3).map(|i| start(&s, i, "--a")).collect();
    let sum = s.sync(false);
    assert_eq!((sum.started, sum.rejected), (2, 1), "{sum}");
    let refused = ack_of(&s, &first[2].id);
    assert_eq!(refused.result, Outcome::Rejected);
    assert_eq!(refused.message, limit);
    assert!(!s.fake.containers().iter().any(|c| c.name == name(&s, 2)));
    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    let k = &rep.kinds[0];
    assert_eq!((k.sidecars, k.max_sidecars, k.at_limit), (2, 2, true));

    // At the limit: a repeat and a replacement of existing sidecars pass,
    // another new one does not.
    let repeat = start(&s, 0, "--a");
    let replace = start(&s, 1, "--b");
    let another = start(&s, 3, "--a");
    let sum = s.sync(false);
    assert_eq!(
        (sum.unchanged, sum.replaced, sum.rejected),
        (1, 1, 1),
        "{sum}"
    );
    assert_eq!(ack_of(&s, &repeat.id).result, Outcome::Ok);
    assert_eq!(ack_of(&s, &replace.id).result, Outcome::Ok);
    assert_eq!(ack_of(&s, &another.id).message, limit);

    // A stop frees its slot for a start in the same batch.
    let pid = s
        .fake
        .containers()
        .into_iter()
        .find(|c| c.name == name(&s, 0))
        .unwrap()
        .pid;
    s.stop(pid);
    let fourth = start(&s, 4, "--a");
    let sum = s.sync(false);
    assert_eq!((sum.removed, sum.started, sum.rejected), (1, 1, 0), "{sum}");
    assert_eq!(ack_of(&s, &fourth.id).result, Outcome::Ok);
    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    assert_eq!((rep.kinds[0].sidecars, rep.kinds[0].at_limit), (2, true));
    assert_eq!(s.desired().sidecars.len(), 2);
}

#[test]
fn a_clock_stepped_back_holds_neither_restarts_nor_the_backoff() {
    let Some(s) = Setup::new(serde_json::json!({"backoff_s": 0})) else {
        return;
    };
    s.start(&["a"]);
    s.sync(false);
    // A restart recorded a day ahead: what a wall clock stepped back by a
    // day leaves behind.
    let day = 86_400_000;
    let state = StateDir::new(&s.cfg.state_dir);
    let mut t = s.desired();
    for d in t.sidecars.values_mut() {
        d.restarts = vec![now_ms() + day];
    }
    t.store(&state, Kind::Dnsmasq).unwrap();
    s.die();
    assert_eq!(s.sync(true).restarts, 1, "the restart waited for the clock");
    assert_eq!(s.container().unwrap().state, State::Running);
    let d = s.desired().sidecars.into_values().next().unwrap();
    assert!(
        d.restarts.iter().all(|&t| t <= now_ms()),
        "a future restart time was kept: {d:?}"
    );

    // A failed sync recorded a day ahead: the back-off is its delay (1 s
    // after one failure), not the day.
    let st = sidespawn::host::state::KindStatus {
        last_sync_ms: now_ms() + day,
        ok: false,
        error: Some("boom".into()),
        consecutive_failures: 1,
        ..Default::default()
    };
    state.store_status(Kind::Dnsmasq, &st).unwrap();
    let t0 = std::time::Instant::now();
    let opts = SyncOptions {
        backoff: true,
        ..SyncOptions::default()
    };
    sidespawn::host::sync::run(&s.cfg, &s.fake, &s.ns, &opts).unwrap();
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "the back-off waited {took:?}"
    );
    common::reliability(
        "the wall clock is stepped back a day after restarts and a failed sync were recorded",
        "times after now count as now: a dead sidecar is restarted under its backoff_s, --backoff waits its delay, not the day",
        &format!(
            "restarted at once (backoff_s 0), the stored time clamped to now; --backoff run took {:.1}s",
            took.as_secs_f64()
        ),
    );
}

/// The temporary files of the state's atomic writer under `dir`.
fn temporary_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else if e.file_name().to_string_lossy().contains(".tmp-") {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_full_state_directory_is_reported_backs_off_and_leaks_no_temporary_file() {
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let tmpfs = common::TmpfsMount::new("256k");
    s.cfg.state_dir = tmpfs.path().join("state");
    s.start(&["a"]);
    s.sync(false);

    // Not a block left.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(tmpfs.path().join("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    assert!(tmpfs.available() < 4096, "{} bytes left", tmpfs.available());
    // A temporary file a killed sync left behind (its pid is long gone).
    let stale = s.cfg.state_dir.join("status/.dnsmasq.json.tmp-2147483646");
    std::fs::File::create(&stale).unwrap();

    s.start(&["b"]);
    let opts = SyncOptions {
        backoff: true,
        ..SyncOptions::default()
    };
    let first = sidespawn::host::sync::run(&s.cfg, &s.fake, &s.ns, &opts).unwrap();
    assert_eq!(first.errors.len(), 1, "{first}");
    let why = first.errors[0].1.to_string();
    assert!(why.contains("No space left on device"), "{why}");

    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    assert!(!rep.healthy, "{rep:?}");
    let state_error = rep.state_error.as_deref().unwrap_or_default();
    assert!(
        state_error.contains("is full")
            && state_error.contains(&s.cfg.state_dir.display().to_string()),
        "{state_error}"
    );
    let last = rep.kinds[0].last_sync.as_ref().unwrap();
    assert!(!last.ok, "status says the failed sync was fine: {last:?}");
    assert_eq!(last.consecutive_failures, 1);
    assert!(
        last.error
            .as_deref()
            .unwrap_or_default()
            .contains("not writable"),
        "{last:?}"
    );

    // One failure: the next run waits a second before it tries.
    let t0 = std::time::Instant::now();
    let second = sidespawn::host::sync::run(&s.cfg, &s.fake, &s.ns, &opts).unwrap();
    let waited = t0.elapsed();
    assert_eq!(second.errors.len(), 1, "{second}");
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "no back-off: the second run took {waited:?}"
    );
    let last = sidespawn::host::status::report(&s.cfg, &s.fake, &[])
        .unwrap()
        .kinds[0]
        .last_sync
        .clone()
        .unwrap();
    assert_eq!(last.consecutive_failures, 2, "{last:?}");
    let left = temporary_files(&s.cfg.state_dir);
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // Space again: the queued request runs and the status recovers.
    std::fs::remove_file(tmpfs.path().join("filler")).unwrap();
    let sum = s.sync(false);
    assert_eq!(sum.claimed, 1, "{sum}");
    let rep = sidespawn::host::status::report(&s.cfg, &s.fake, &[]).unwrap();
    assert!(rep.healthy, "{rep:?}");
    assert!(rep.kinds[0].last_sync.as_ref().unwrap().ok);
    common::reliability(
        "the host state directory's file system is full (ENOSPC) when the sync runs",
        "the sync fails and exits 1; status says the state directory is not writable and exits 1; --backoff still backs off; no temporary file is left",
        &format!(
            "sync: `{}`; status: `{state_error}`; second run waited {:.1}s; no .tmp- file; after freeing space the request ran",
            why.replace(&tmpfs.path().display().to_string(), "<tmpfs>"),
            waited.as_secs_f64()
        )
        .replace(&tmpfs.path().display().to_string(), "<tmpfs>"),
    );
}

/// Sidecar `i` of the scale measurement, with `argv_bytes` of arguments.
fn big_record(i: usize, argv_bytes: usize) -> Record {
    Record {
        v: VERSION,
        id: format!("big-{i}"),
        kind: Kind::Dnsmasq,
        action: Action::Start,
        argv: (0..argv_bytes / 1024)
            .map(|j| format!("--opt-{j}={}", "x".repeat(1000)))
            .collect(),
        netns: Some(NetnsRef {
            name: format!("qdhcp-big-{i}"),
            dev: 4,
            ino: 1000 + i as u64,
        }),
        tag: Some(format!("dnsmasq-big-{i}")),
        signal: None,
        pid: None,
        ts: 1,
    }
}

const SCALE_DIR_ENV: &str = "SIDESPAWN_SCALE_DIR";
const SCALE_BIG: usize = 64;

/// `SIDESPAWN_SCALE_SIDECARS` (default 64) sidecars of
/// `SIDESPAWN_SCALE_ARGV_BYTES` (default 1 MiB) each.
fn scale_sizes() -> (usize, usize) {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        env("SIDESPAWN_SCALE_SIDECARS", SCALE_BIG),
        env("SIDESPAWN_SCALE_ARGV_BYTES", 1 << 20),
    )
}

/// What one small request costs beside big desired sidecars: 64 entries of
/// about 1 MiB of argv each (or see [`scale_sizes`]), or none. Run by hand:
/// `cargo test --release --test lifecycle_fake desired_table_cost -- --ignored --nocapture`.
/// Each sync runs in a child process (this test again) so its peak RSS is
/// its own.
#[test]
#[ignore = "a measurement, run by hand"]
fn desired_table_cost_of_one_small_request() {
    if let Some(dir) = std::env::var_os(SCALE_DIR_ENV) {
        return scale_child(std::path::Path::new(&dir));
    }
    if !common::privileged("the desired table's cost (the queue must be root's)") {
        return;
    }
    let (sidecars, argv_bytes) = scale_sizes();
    for big in [0, sidecars] {
        let Some(s) = Setup::new(serde_json::json!({})) else {
            return;
        };
        let state = StateDir::new(&s.cfg.state_dir);
        let profile = s.cfg.profile(Kind::Dnsmasq).unwrap().clone();
        let mut t = DesiredTable::default();
        for i in 0..big {
            let r = big_record(i, argv_bytes);
            let spec = sidespawn::host::plan::run_spec(
                &profile,
                std::path::Path::new("/run/netns"),
                &r,
                1,
            );
            t.sidecars.insert(
                sidespawn::host::plan::key_of(Kind::Dnsmasq, r.tag.as_deref(), r.netns.as_ref()),
                sidespawn::host::desired::DesiredSidecar {
                    container: spec.name,
                    record: r,
                    generation: 1,
                    image: spec.image,
                    restarts: Vec::new(),
                    last_error: None,
                },
            );
        }
        t.store(&state, Kind::Dnsmasq).unwrap();
        drop(t);
        std::fs::write(s.dir.join("uuid"), &s.uuid).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "desired_table_cost_of_one_small_request",
                "--ignored",
                "--nocapture",
            ])
            .env(SCALE_DIR_ENV, s.dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().find(|l| l.starts_with("SCALE")).unwrap();
        println!("{big} desired sidecars of {argv_bytes} bytes of argv: {line}");
    }
}

fn scale_child(dir: &std::path::Path) {
    let text = serde_json::json!({
        "queue_root": dir.join("queue"),
        "state_dir": dir.join("state"),
        "kinds": {"dnsmasq": {"image": "localhost/dnsmasq:1", "restart": {}}}
    })
    .to_string();
    let cfg = HostConfig::from_str(&dir.join("config.json"), &text).unwrap();
    let uuid = std::fs::read_to_string(dir.join("uuid")).unwrap();
    let profile = cfg.profile(Kind::Dnsmasq).unwrap();
    // The big sidecars run (the fake only needs their names and labels).
    let fake = FakeRuntime::new(Vec::new());
    let mut namespaces = vec![(format!("qdhcp-{uuid}"), 100)];
    for i in 0..scale_sizes().0 {
        let r = big_record(i, 0);
        let spec =
            sidespawn::host::plan::run_spec(profile, std::path::Path::new("/run/netns"), &r, 1);
        fake.run(&spec).unwrap();
        namespaces.push((r.netns.unwrap().name, 1000 + i as u64));
    }
    let ns = FakeNamespaces::new(namespaces);
    let r = Record {
        argv: vec!["--no-hosts".into()],
        netns: Some(NetnsRef {
            name: format!("qdhcp-{uuid}"),
            dev: 4,
            ino: 100,
        }),
        tag: Some(format!("dnsmasq-{uuid}")),
        id: new_id(now_ms()),
        ts: now_ms(),
        ..big_record(0, 0)
    };
    std::fs::write(
        common::queue_file(&dir.join("queue"), "dnsmasq"),
        r.to_line(),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let sum = sidespawn::host::sync::run(&cfg, &fake, &ns, &SyncOptions::default()).unwrap();
    let took = t0.elapsed();
    assert!(sum.errors.is_empty(), "{:?}", sum.errors);
    assert_eq!(sum.started, 1, "{sum}");
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap();
    println!(
        "SCALE sync {:.1} ms, peak RSS {hwm}",
        took.as_secs_f64() * 1000.0
    );
}

/// A two-kind host (dnsmasq and haproxy) on the fake runtime.
struct TwoKinds {
    s: Setup,
}

impl TwoKinds {
    fn new() -> Option<TwoKinds> {
        let mut s = Setup::new(serde_json::json!({"backoff_s": 0}))?;
        std::fs::create_dir_all(s.dir.join("queue/haproxy")).unwrap();
        let text = serde_json::json!({
            "queue_root": s.dir.join("queue"),
            "state_dir": s.dir.join("state"),
            "kinds": {
                "dnsmasq": {"image": "localhost/dnsmasq:1", "restart": {"backoff_s": 0}},
                "haproxy": {"image": "localhost/haproxy:1"}
            }
        })
        .to_string();
        s.cfg = HostConfig::from_str(&s.dir.join("config.json"), &text).unwrap();
        s.ns = FakeNamespaces::new([
            (format!("qdhcp-{}", s.uuid), 100),
            (format!("qrouter-{}", s.uuid), 200),
        ]);
        Some(TwoKinds { s })
    }

    /// Queues a haproxy start; returns its container's name.
    fn haproxy(&self) -> String {
        use std::io::Write;
        let uuid = &self.s.uuid;
        let r = Record {
            kind: Kind::Haproxy,
            argv: vec!["-f".into(), "/x.cfg".into()],
            netns: Some(NetnsRef {
                name: format!("qrouter-{uuid}"),
                dev: 4,
                ino: 200,
            }),
            tag: Some(format!("haproxy-{uuid}")),
            ..self.s.start_record_template()
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(common::queue_file(&self.s.dir.join("queue"), "haproxy"))
            .unwrap();
        writeln!(f, "{}", r.to_line().trim_end()).unwrap();
        format!("sidespawn-{}-haproxy-t-haproxy-{uuid}", self.s.cfg.instance)
    }

    fn sync_full(&self) -> Summary {
        let opts = SyncOptions {
            full: true,
            ..SyncOptions::default()
        };
        sidespawn::host::sync::run(&self.s.cfg, &self.s.fake, &self.s.ns, &opts).unwrap()
    }

    fn running(&self, name: &str) -> bool {
        self.s
            .fake
            .containers()
            .iter()
            .any(|c| c.name == name && c.state == State::Running)
    }

    /// A dnsmasq started by a sync, then its desired entry truncated:
    /// the request, its key and the state directory.
    fn started_then_corrupted(&self) -> (Record, String, StateDir) {
        let s = &self.s;
        let req = s.start(&["--no-hosts", "", "--port=0"]);
        assert_eq!(s.sync(false).started, 1);
        let key = format!("dnsmasq/tag/dnsmasq-{}", s.uuid);
        let state = StateDir::new(&s.cfg.state_dir);
        let entry = sidespawn::host::desired::entry_path(&state, Kind::Dnsmasq, &key);
        std::fs::write(&entry, b"{\"v\": 2, \"key\": ").unwrap();
        (req, key, state)
    }

    fn corrupt_dir(&self) -> Vec<String> {
        std::fs::read_dir(self.s.cfg.state_dir.join("desired/corrupt"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn a_corrupt_desired_entry_is_rebuilt_from_its_container_and_other_kinds_run() {
    let Some(t) = TwoKinds::new() else {
        return;
    };
    let s = &t.s;
    let (req, key, state) = t.started_then_corrupted();

    // dnsmasq's sidecar dies and haproxy gets a request: both are served.
    s.die();
    let haproxy = t.haproxy();
    let sum = t.sync_full();
    assert!(sum.errors.is_empty(), "{sum}");
    assert_eq!((sum.claimed, sum.started, sum.restarts), (1, 1, 1), "{sum}");
    assert!(t.running(&haproxy));
    assert!(t.running(&s.name()), "restart protection lost");
    // Rebuilt as it was, the unreadable file kept aside for the operator.
    let d = &s.desired().sidecars[&key];
    assert_eq!(d.record.argv, req.argv);
    assert_eq!(d.record.id, req.id);
    assert_eq!(d.restarts.len(), 1);
    // The entry and the argv file it named (by its stem: it could not be read that far).
    let aside = t.corrupt_dir();
    assert_eq!(aside.len(), 2, "{aside:?}");
    assert!(aside.iter().any(|n| n.contains(".argv.")), "{aside:?}");
    let st = state.status(Kind::Dnsmasq).unwrap().unwrap();
    assert!(st.ok, "{st:?}");

    // An old single-file table that is unreadable: every entry rebuilt.
    std::fs::remove_dir_all(s.cfg.state_dir.join("desired/dnsmasq")).unwrap();
    std::fs::write(s.cfg.state_dir.join("desired/dnsmasq.json"), b"\x00garbage").unwrap();
    s.die();
    let sum = t.sync_full();
    assert!(sum.errors.is_empty(), "{sum}");
    assert_eq!(sum.restarts, 1, "{sum}");
    assert_eq!(s.desired().sidecars[&key].record.argv, req.argv);
    assert!(!s.cfg.state_dir.join("desired/dnsmasq.json").exists());
    assert_eq!(t.corrupt_dir().len(), 3, "{:?}", t.corrupt_dir());
    common::reliability(
        "a desired-table entry of one kind is unreadable (truncated JSON), or the old single-file table is",
        "the file is moved aside to desired/corrupt/; the entry is rebuilt from its container's labels and command, so a dead sidecar is still restarted; other kinds' requests run",
        "haproxy's request ran; the dead dnsmasq was restarted with its original argv and request id; the entry, its argv file and the old table in desired/corrupt/",
    );
}

#[test]
fn a_corrupt_entry_found_while_predicting_a_start_is_still_rebuilt() {
    let Some(t) = TwoKinds::new() else {
        return;
    };
    let s = &t.s;
    let (req, key, _) = t.started_then_corrupted();

    // A start of a new key: the pass first tries to predict the containers
    // from the table, which moves the unreadable file aside; the same pass
    // must still rebuild the entry it held.
    s.queue(&Record {
        argv: vec!["--port=0".into()],
        tag: Some(format!("dnsmasq-other-{}", s.uuid)),
        ..s.start_record_template()
    });
    let sum = s.sync(false);
    assert_eq!((sum.claimed, sum.started), (1, 1), "{sum}");
    let d = &s.desired().sidecars[&key];
    assert_eq!((&d.record.argv, &d.record.id), (&req.argv, &req.id));
    assert_eq!(t.corrupt_dir().len(), 2, "{:?}", t.corrupt_dir());
}

#[test]
fn a_corrupt_entry_without_a_container_fails_its_kind_alone_and_names_the_file() {
    let Some(t) = TwoKinds::new() else {
        return;
    };
    let s = &t.s;
    s.start(&["a"]);
    s.sync(false);
    let key = format!("dnsmasq/tag/dnsmasq-{}", s.uuid);
    let state = StateDir::new(&s.cfg.state_dir);
    std::fs::write(
        sidespawn::host::desired::entry_path(&state, Kind::Dnsmasq, &key),
        b"[",
    )
    .unwrap();
    s.fake.remove(&s.name()).unwrap();
    let haproxy = t.haproxy();
    let sum = t.sync_full();
    assert_eq!(sum.started, 1, "{sum}");
    assert!(t.running(&haproxy));
    let st = state.status(Kind::Dnsmasq).unwrap().unwrap();
    assert!(!st.ok, "{st:?}");
    let why = st.error.unwrap();
    assert!(
        why.contains("desired/corrupt") && why.contains("no container to rebuild it from"),
        "{why}"
    );
    assert!(state.status(Kind::Haproxy).unwrap().unwrap().ok);
    // Said once: the next sync is clean again.
    t.sync_full();
    assert!(state.status(Kind::Dnsmasq).unwrap().unwrap().ok);
}

/// Queues a start of a new sidecar (tag `<uuid>-<i>`) in the setup's namespace.
fn start_new(s: &Setup, i: usize) -> Record {
    let r = Record {
        id: new_id(now_ms()),
        tag: Some(format!("dnsmasq-{}-{i}", s.uuid)),
        argv: vec!["--port=0".into()],
        ..s.start_record_template()
    };
    s.queue(&r);
    r
}

fn lists(s: &Setup) -> usize {
    s.fake
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::List(_)))
        .count()
}

/// A sync that lists once, then a start of a key the host state does not know: the second
/// sync runs it without listing first, and records it as a listed pass would.
fn predicted_start(s: &Setup) -> Record {
    start_new(s, 0);
    assert_eq!(s.sync(false).started, 1);
    assert_eq!(lists(s), 1, "the first sync lists: {:?}", s.fake.calls());
    s.fake.clear_calls();
    let r = start_new(s, 1);
    let sum = s.sync(false);
    assert_eq!((sum.started, sum.failed), (1, 0), "{sum}");
    r
}

#[test]
fn a_start_of_a_key_the_host_state_does_not_know_runs_without_listing() {
    use sidespawn::shared::ack::Outcome;
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let r = predicted_start(&s);
    assert_eq!(lists(&s), 0, "{:?}", s.fake.calls());
    assert_eq!(s.runs(), 1);
    assert_eq!(ack_of(&s, &r.id).result, Outcome::Ok);
    assert_eq!(s.desired().sidecars.len(), 2);
    // The next one is predicted too: the pass carried its marker forward.
    s.fake.clear_calls();
    start_new(&s, 2);
    assert_eq!(s.sync(false).started, 1);
    assert_eq!(lists(&s), 0, "{:?}", s.fake.calls());
    // The generations still count up one per start.
    let gens: Vec<u64> = s
        .desired()
        .sidecars
        .values()
        .map(|d| d.generation)
        .collect();
    let mut sorted = gens.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "{gens:?}");
}

#[test]
fn a_predicted_start_whose_name_is_taken_adopts_or_replaces_through_the_listed_path() {
    use sidespawn::shared::ack::Outcome;
    let Some(s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    start_new(&s, 0);
    assert_eq!(s.sync(false).started, 1);
    // Same arguments, started by a sync killed mid-run: adopted.
    let same = start_new(&s, 1);
    let held = created_by_an_interrupted_sync(&s, &same);
    let sum = s.sync(false);
    assert_eq!((sum.started, sum.failed, lists(&s)), (1, 0, 0), "{sum}");
    let ack = ack_of(&s, &same.id);
    assert_eq!(ack.result, Outcome::Ok);
    assert!(ack.message.contains("interrupted sync"), "{}", ack.message);
    let name = format!(
        "sidespawn-{}-dnsmasq-t-dnsmasq-{}-1",
        s.cfg.instance, s.uuid
    );
    let c = s
        .fake
        .containers()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap();
    assert_eq!(c.id, held);
    // Other arguments: replaced.
    let other = Record {
        argv: vec!["--older".into()],
        id: new_id(now_ms()),
        ..start_new_record(&s, 2)
    };
    let old = created_by_an_interrupted_sync(&s, &other);
    let req = start_new(&s, 2);
    let sum = s.sync(false);
    assert_eq!((sum.started, sum.failed, lists(&s)), (1, 0, 0), "{sum}");
    let name2 = format!(
        "sidespawn-{}-dnsmasq-t-dnsmasq-{}-2",
        s.cfg.instance, s.uuid
    );
    let c = s
        .fake
        .containers()
        .into_iter()
        .find(|c| c.name == name2)
        .unwrap();
    assert_ne!(c.id, old);
    assert_eq!(c.labels[labels::REQUEST_ID], req.id);
    assert!(s.fake.calls().contains(&Call::Remove(name2)));
}

/// A start record for tag `<uuid>-<i>`, not queued.
fn start_new_record(s: &Setup, i: usize) -> Record {
    Record {
        id: new_id(now_ms()),
        tag: Some(format!("dnsmasq-{}-{i}", s.uuid)),
        argv: vec!["--port=0".into()],
        ..s.start_record_template()
    }
}

#[test]
fn every_batch_the_host_state_cannot_predict_lists_first() {
    let Some(mut s) = Setup::new(serde_json::json!({})) else {
        return;
    };
    let state = StateDir::new(&s.cfg.state_dir);
    let listed_after = |s: &Setup, why: &str| {
        assert_eq!(lists(s), 1, "{why}: {:?}", s.fake.calls());
        s.fake.clear_calls();
    };
    // The first sync: no generation counter, no marker.
    start_new(&s, 0);
    s.sync(false);
    listed_after(&s, "first sync");

    // A start of a key the table knows (a repeat).
    start_new(&s, 0);
    s.sync(false);
    listed_after(&s, "known key");

    // A kill request in the batch.
    let pid = s.fake.containers()[0].pid;
    start_new(&s, 1);
    s.queue(&Record {
        action: Action::Signal,
        argv: Vec::new(),
        signal: Some(Signal::Hup),
        pid: Some(pid),
        ..s.start_record_template()
    });
    s.sync(false);
    listed_after(&s, "signal in the batch");

    // The marker gone (a pass that ran jobs and did not finish).
    std::fs::remove_dir_all(s.cfg.state_dir.join("listed")).unwrap();
    start_new(&s, 2);
    s.sync(false);
    listed_after(&s, "no marker");

    // The generation counter moved on without the marker (an upgrade).
    let g = state.stored_generation(Kind::Dnsmasq).unwrap().unwrap();
    state.store_generation(Kind::Dnsmasq, g + 5).unwrap();
    start_new(&s, 3);
    s.sync(false);
    listed_after(&s, "stale marker");

    // A failed start in the table (its retry needs the listing).
    let failing = start_new_record(&s, 4);
    let name4 = format!(
        "sidespawn-{}-dnsmasq-t-dnsmasq-{}-4",
        s.cfg.instance, s.uuid
    );
    s.fake.fail_on(&name4, "Error: boom");
    s.queue(&failing);
    assert_eq!(s.sync(false).failed, 1);
    s.fake.clear_calls();
    s.fake.clear_failures();
    start_new(&s, 5);
    s.sync(false);
    listed_after(&s, "failed start in the table");
    // Still desired (held back by the backoff), so every start lists until it runs; the
    // operator gives up on it.
    let key4 = format!("dnsmasq/tag/dnsmasq-{}-4", s.uuid);
    assert!(s.desired().sidecars[&key4].last_error.is_some());
    std::fs::remove_file(sidespawn::host::desired::entry_path(
        &state,
        Kind::Dnsmasq,
        &key4,
    ))
    .unwrap();
    s.fake.remove(&name4).ok();
    s.fake.clear_calls();

    // Within max_sidecars only by the last listing's count: lists.
    let have = s.desired().sidecars.len();
    if let Some(p) = s.cfg.kinds.get_mut(&Kind::Dnsmasq) {
        p.max_sidecars = have + 1;
    }
    start_new(&s, 7);
    start_new(&s, 8);
    let sum = s.sync(false);
    assert_eq!((sum.started, sum.rejected), (1, 1), "{sum}");
    listed_after(&s, "near the limit");
    if let Some(p) = s.cfg.kinds.get_mut(&Kind::Dnsmasq) {
        p.max_sidecars = 64;
    }

    // A reboot since the last pass.
    let boot = s.dir.join("state/boot/dnsmasq");
    std::fs::write(&boot, "00000000-0000-0000-0000-00000000b007").unwrap();
    start_new(&s, 9);
    s.sync(false);
    listed_after(&s, "rebooted");
    assert_ne!(
        std::fs::read_to_string(&boot).unwrap(),
        "00000000-0000-0000-0000-00000000b007"
    );

    // An unreadable desired entry: listed, and rebuilt from its container.
    let key = format!("dnsmasq/tag/dnsmasq-{}-9", s.uuid);
    std::fs::write(
        sidespawn::host::desired::entry_path(&state, Kind::Dnsmasq, &key),
        b"{\"v\": 2,",
    )
    .unwrap();
    start_new(&s, 10);
    let sum = s.sync(false);
    assert_eq!(sum.started, 1, "{sum}");
    listed_after(&s, "unreadable table");
    assert!(s.desired().sidecars.contains_key(&key), "rebuilt");

    // Control: now predicted again.
    start_new(&s, 11);
    s.sync(false);
    assert_eq!(lists(&s), 0, "{:?}", s.fake.calls());
    s.fake.clear_calls();

    // Full, health and restart runs always list, even with a predictable batch.
    for opts in [
        SyncOptions {
            full: true,
            ..SyncOptions::default()
        },
        SyncOptions {
            health: true,
            ..SyncOptions::default()
        },
        SyncOptions {
            restart: true,
            ..SyncOptions::default()
        },
        SyncOptions {
            dry_run: true,
            ..SyncOptions::default()
        },
    ] {
        let r = start_new(&s, 12);
        sidespawn::host::sync::run(&s.cfg, &s.fake, &s.ns, &opts).unwrap();
        assert!(lists(&s) >= 1, "{opts:?}: {:?}", s.fake.calls());
        s.fake.clear_calls();
        // Leave no such request behind for the next round.
        if !opts.dry_run {
            assert!(ack_of(&s, &r.id).result == sidespawn::shared::ack::Outcome::Ok);
        }
        let key = format!("dnsmasq/tag/dnsmasq-{}-12", s.uuid);
        let name = format!(
            "sidespawn-{}-dnsmasq-t-dnsmasq-{}-12",
            s.cfg.instance, s.uuid
        );
        if !opts.dry_run {
            std::fs::remove_file(sidespawn::host::desired::entry_path(
                &state,
                Kind::Dnsmasq,
                &key,
            ))
            .ok();
            s.fake.remove(&name).ok();
            // A listed pass resets the marker to the table as it is now.
            start_new(&s, 13);
            s.sync(false);
            s.fake.clear_calls();
        }
    }
}
