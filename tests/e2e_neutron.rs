//! Production-like end-to-end scenarios: an agent container does exactly what Neutron's DHCP and
//! L3 agents do (`ip netns exec <ns> env PROCESS_TAG=... dnsmasq|haproxy ARGS`, kill scripts),
//! the trigger fires `sidespawn sync` like the path units, and real clients check that the
//! sidecars serve: a DHCP lease, a metadata request through haproxy. See `tests/e2e/mod.rs` for
//! the deployment. Needs root, podman and ip (see `tests/run.sh`).

mod common;
mod e2e;
mod systemd;

use std::time::Duration;

use e2e::{Deployment, DhcpNetwork, Engine, MetadataProxy};
use serde_json::Value;

/// How long a host answer (an acknowledgement, a sidecar appearing) may take.
const HOST_TIMEOUT: Duration = Duration::from_secs(60);

/// The request id queued for namespace `ns`, from the queue file (read while the trigger is
/// paused, before the host claims it).
fn queued_id(d: &Deployment, kind: &str, ns: &str) -> String {
    let records = d.queued(kind);
    let matching: Vec<&Value> = records
        .iter()
        .filter(|r| r["netns"]["name"] == ns)
        .collect();
    assert_eq!(matching.len(), 1, "one request for {ns}: {records:?}");
    matching[0]["id"].as_str().expect("id").to_owned()
}

/// Waits for the host's acknowledgement of `id` and returns it.
fn wait_ack(d: &Deployment, id: &str) -> Value {
    let mut ack = None;
    common::wait_until(
        HOST_TIMEOUT,
        &format!("request {id} is acknowledged"),
        || {
            ack = d.ack(id);
            ack.is_some()
        },
    );
    ack.expect("ack")
}

/// Scenario 1: the DHCP agent's dnsmasq call becomes a sidecar in `qdhcp-<uuid>` that Neutron
/// sees alive and that hands a VM its lease; `status --json` lists it.
#[test]
fn dnsmasq_started_by_the_agent_serves_dhcp() {
    dnsmasq_started_by_the_agent_serves_dhcp_on(Engine::Podman);
}

fn dnsmasq_started_by_the_agent_serves_dhcp_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: the agent's dnsmasq call becomes a sidecar serving DHCP",
    ) else {
        return;
    };
    let net = DhcpNetwork::new(&d);
    let client = net.client(&d);
    net.write_hosts(&[&client]);

    net.request(&d);
    let pid = net.wait_alive();

    // A sidecar in that namespace, whose main process is the pid file's pid, running exactly
    // the profile's foreground flag plus Neutron's argv (the empty argument included).
    let sidecar = d
        .sidecar(&net.container_name())
        .unwrap_or_else(|| panic!("no sidecar {}", net.container_name()));
    assert_eq!(sidecar.state, "running", "{sidecar:?}");
    assert_eq!(sidecar.pid, pid, "the pid file holds the sidecar's pid");
    assert_eq!(
        e2e::netns_inode_of(pid),
        Some(net.ns.inode()),
        "dnsmasq runs in {}",
        net.ns.name()
    );
    let mut expected = vec!["dnsmasq".to_owned(), "-k".to_owned()];
    expected.extend(net.argv());
    assert_eq!(e2e::cmdline(pid), expected);
    if let Some(dockerd) = d.docker_pid() {
        // Docker's equivalent of conmon is containerd's shim, started by containerd (itself
        // dockerd's child), never by the sync service: it sits in dockerd's cgroup, not in
        // `sidespawn@dnsmasq.service`'s, so the oneshot's exit (and its KillMode) cannot touch
        // it. The sync that started this sidecar has exited already.
        let shim = e2e::parent_pid(pid);
        assert!(
            e2e::comm(shim).starts_with("containerd-shim"),
            "the sidecar's parent is {:?}",
            e2e::comm(shim)
        );
        let cgroup = |p: u32| std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
        assert!(!cgroup(shim).contains("sidespawn@"), "{}", cgroup(shim));
        assert_eq!(
            cgroup(shim),
            cgroup(dockerd),
            "the shim is in dockerd's cgroup"
        );
    }

    // A VM gets its reserved address, and dnsmasq records the lease in Neutron's file.
    client.get_lease();
    common::wait_until(HOST_TIMEOUT, "the lease file lists the client", || {
        net.lease_recorded(&client)
    });

    // What an operator sees.
    let status = d.status_json();
    let listed = status["sidecars"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["name"] == net.container_name().as_str())
        })
        .unwrap_or_else(|| panic!("status --json does not list the sidecar: {status:#}"));
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["kind"], "dnsmasq", "{listed}");
    assert_eq!(listed["netns"], net.ns.name(), "{listed}");
    assert_eq!(listed["tag"], net.tag().as_str(), "{listed}");
    assert_eq!(listed["pid"], pid, "{listed}");
    assert!(listed["generation"].as_u64().is_some(), "{listed}");
    let kind = status["kinds"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kind"] == "dnsmasq"))
        .unwrap_or_else(|| panic!("no dnsmasq in {status:#}"));
    assert_eq!(kind["queue_depth"], 0, "{kind}");
    assert_eq!(kind["last_sync"]["ok"], true, "{kind}");
}

/// Scenario 2: the L3 agent's haproxy call becomes a metadata proxy in `qrouter-<uuid>` that
/// relays a VM's request to the backend; `haproxy-kill HUP` reloads it, 15 removes it.
#[test]
fn haproxy_metadata_proxy_started_by_the_agent_serves_http() {
    haproxy_metadata_proxy_started_by_the_agent_serves_http_on(Engine::Podman);
}

fn haproxy_metadata_proxy_started_by_the_agent_serves_http_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: the agent's haproxy call becomes a metadata proxy sidecar",
    ) else {
        return;
    };
    let proxy = MetadataProxy::new(&d);

    proxy.request(&d);
    let pid = proxy.wait_alive();

    let sidecar = d
        .sidecar(&proxy.container_name())
        .unwrap_or_else(|| panic!("no sidecar {}", proxy.container_name()));
    assert_eq!(sidecar.state, "running", "{sidecar:?}");
    // -Ws: the master is the container's main process and writes the pid file.
    assert_eq!(sidecar.pid, pid, "the pid file holds the sidecar's pid");
    assert_eq!(e2e::netns_inode_of(pid), Some(proxy.ns.inode()));
    let mut expected = vec!["haproxy".to_owned(), "-Ws".to_owned()];
    expected.extend(proxy.argv());
    assert_eq!(e2e::cmdline(pid), expected);

    proxy.assert_serves();

    // A reload (the agent rewrote the configuration, then `haproxy-kill HUP`): with -Ws the
    // master re-reads it and keeps its pid.
    let conf = std::fs::read_to_string(&proxy.conf).expect("read the haproxy config");
    let reloaded = conf.replace(
        "http-response set-header X-Metadata-Proxy",
        "http-response set-header X-Reloaded yes\n    http-response set-header X-Metadata-Proxy",
    );
    assert_ne!(conf, reloaded);
    e2e::replace_file(&proxy.conf, &reloaded);
    d.agent_call(
        proxy.ns.name(),
        &proxy.tag(),
        "/etc/neutron/kill_scripts/haproxy-kill",
        &["HUP".into(), pid.to_string()],
        0,
    );
    common::wait_until(HOST_TIMEOUT, "haproxy serves the new configuration", || {
        let out = e2e::http_get(&proxy.ns, &format!("http://{}/", e2e::METADATA_IP));
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("x-reloaded: yes")
    });
    assert_eq!(proxy.wait_alive(), pid, "same pid after the reload");
    proxy.assert_serves();

    // The L3 agent removes the router: haproxy-kill 15 returns once the sidecar is gone.
    d.agent_call(
        proxy.ns.name(),
        &proxy.tag(),
        "/etc/neutron/kill_scripts/haproxy-kill",
        &["15".into(), pid.to_string()],
        0,
    );
    assert!(!d.container_exists(&proxy.container_name()));
    assert!(
        !e2e::cmdline(pid).iter().any(|a| a.contains(&proxy.uuid)),
        "haproxy {pid} still runs"
    );
}

/// Scenario 3: restarting, then removing and recreating the agent container leaves both
/// sidecars running and serving; the new agent's repeated requests change nothing, and its
/// resync (kill 9, respawn) gives a new dnsmasq.
#[test]
fn sidecars_survive_agent_restart_and_recreation() {
    sidecars_survive_agent_restart_and_recreation_on(Engine::Podman);
}

fn sidecars_survive_agent_restart_and_recreation_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: sidecars outlive a restarted or recreated agent",
    ) else {
        return;
    };
    let net = DhcpNetwork::new(&d);
    let client = net.client(&d);
    net.write_hosts(&[&client]);
    let proxy = MetadataProxy::new(&d);
    net.request(&d);
    proxy.request(&d);
    let dnsmasq_pid = net.wait_alive();
    let haproxy_pid = proxy.wait_alive();
    client.get_lease();
    proxy.assert_serves();
    let before: Vec<(String, u32)> = [net.container_name(), proxy.container_name()]
        .iter()
        .map(|name| {
            let s = d.sidecar(name).expect("sidecar");
            (s.id, s.pid)
        })
        .collect();

    let check = |what: &str| {
        for ((name, (id, pid)), alive) in [net.container_name(), proxy.container_name()]
            .iter()
            .zip(&before)
            .zip([
                e2e::alive_pid(&net.pid_file(), &net.uuid),
                e2e::alive_pid(&proxy.pid_file, &proxy.uuid),
            ])
        {
            let s = d
                .sidecar(name)
                .unwrap_or_else(|| panic!("{what}: sidecar {name} is gone"));
            assert_eq!(&s.id, id, "{what}: {name} is the same container");
            assert_eq!(&s.pid, pid, "{what}: {name} has the same pid");
            assert_eq!(s.state, "running", "{what}: {name}");
            assert_eq!(alive, Some(*pid), "{what}: Neutron sees {name} alive");
        }
        assert!(
            net.ns.exists() && proxy.ns.exists(),
            "{what}: namespaces kept"
        );
        // A lease renewal (the same VM asks again) and a metadata request still work.
        client.get_lease();
        proxy.assert_serves();
    };

    let agent = d.agent_id();
    let started = d.agent_started_at();
    d.restart_agent();
    assert_eq!(d.agent_id(), agent, "podman restart keeps the container");
    assert_ne!(d.agent_started_at(), started, "the agent was restarted");
    check("after podman restart of the agent");

    d.recreate_agent();
    assert_ne!(d.agent_id(), agent, "a new agent container");
    check("after the agent was removed and recreated");

    // The new agent reaches the host, and duplicate requests for what runs (identical argv)
    // change nothing.
    net.request(&d);
    proxy.request(&d);
    d.wait_for_sync_log("both repeated requests handled as unchanged", |log| {
        log.lines()
            .filter(|l| l.starts_with("sync: ") && l.contains("unchanged 1"))
            .count()
            >= 2
    });
    check("after the new agent repeated its requests");

    // What the restarted DHCP agent's resync does with an active dnsmasq: kill it (9), delete
    // the pid file, spawn it again and wait for it to be alive.
    d.agent_call(
        net.ns.name(),
        &net.tag(),
        "/etc/neutron/kill_scripts/dnsmasq-kill",
        &["9".into(), dnsmasq_pid.to_string()],
        0,
    );
    assert!(!d.container_exists(&net.container_name()));
    std::fs::remove_file(net.pid_file()).expect("delete the pid file");
    net.request(&d);
    let respawned = net.wait_alive();
    assert_ne!(respawned, dnsmasq_pid, "a new dnsmasq");
    client.get_lease();
    assert_eq!(
        e2e::alive_pid(&proxy.pid_file, &proxy.uuid),
        Some(haproxy_pid),
        "the metadata proxy was left alone"
    );
    proxy.assert_serves();
}

/// Scenario 4: `dnsmasq-kill HUP` makes dnsmasq re-read its hosts file (same pid); `dnsmasq-kill
/// 15` returns only once the container is gone.
#[test]
fn kill_script_hup_reloads_and_term_removes() {
    kill_script_hup_reloads_and_term_removes_on(Engine::Podman);
}

fn kill_script_hup_reloads_and_term_removes_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: dnsmasq-kill HUP reloads, 15 stops and removes",
    ) else {
        return;
    };
    let net = DhcpNetwork::new(&d);
    let first = net.client(&d);
    let second = net.client(&d);
    net.write_hosts(&[&first]);
    net.request(&d);
    let pid = net.wait_alive();
    first.get_lease();

    // The agent adds a port: the hosts file gains the second VM. dnsmasq only reads it again
    // on SIGHUP, so until then the second VM gets nothing.
    net.write_hosts(&[&first, &second]);
    let refused = second.udhcpc(2);
    assert!(
        !refused.status.success(),
        "the second VM got a lease before the reload: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let kill = "/etc/neutron/kill_scripts/dnsmasq-kill";
    d.agent_call(
        net.ns.name(),
        &net.tag(),
        kill,
        &["HUP".into(), pid.to_string()],
        0,
    );
    assert_eq!(
        e2e::alive_pid(&net.pid_file(), &net.uuid),
        Some(pid),
        "same pid after HUP"
    );
    second.get_lease();
    common::wait_until(HOST_TIMEOUT, "the lease file lists the second VM", || {
        net.lease_recorded(&second)
    });

    // 15: exit 0 only once the sidecar is stopped and its container removed.
    d.agent_call(
        net.ns.name(),
        &net.tag(),
        kill,
        &["15".into(), pid.to_string()],
        0,
    );
    assert!(
        !d.container_exists(&net.container_name()),
        "the container is gone when the kill script returns"
    );
    let left = e2e::cmdline(pid);
    assert!(
        !left.iter().any(|a| a.contains(&net.uuid)),
        "dnsmasq {pid} still runs: {left:?}"
    );
    // (Per container: the totals also count other tests' orphans that any sync removes.)
    let name = net.container_name();
    let did = |log: &str, what: &str| {
        log.lines()
            .any(|l| l.contains(&format!("{what} done")) && l.contains(&name))
    };
    d.wait_for_sync_log("the sidecar signalled, then stopped", |log| {
        did(log, "Signal") && did(log, "Stop")
    });
}

/// Neutron's process monitor: a sidecar's dnsmasq dies, Neutron finds it dead, deletes the pid
/// file and asks again with the same argv; the host replaces the dead container.
#[test]
fn dead_dnsmasq_is_respawned_when_the_agent_asks_again() {
    dead_dnsmasq_is_respawned_when_the_agent_asks_again_on(Engine::Podman);
}

fn dead_dnsmasq_is_respawned_when_the_agent_asks_again_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: a dead sidecar is replaced on the agent's next request",
    ) else {
        return;
    };
    let net = DhcpNetwork::new(&d);
    let client = net.client(&d);
    net.write_hosts(&[&client]);
    net.request(&d);
    let pid = net.wait_alive();
    let first = d.sidecar(&net.container_name()).expect("sidecar");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill dnsmasq");
    common::wait_until(HOST_TIMEOUT, "the sidecar has exited", || {
        d.sidecar(&net.container_name())
            .is_some_and(|s| s.state == "exited")
    });
    assert_eq!(
        e2e::alive_pid(&net.pid_file(), &net.uuid),
        None,
        "Neutron sees it dead"
    );

    std::fs::remove_file(net.pid_file()).expect("delete the pid file");
    net.request(&d);
    let respawned = net.wait_alive();
    assert_ne!(respawned, pid);
    let second = d.sidecar(&net.container_name()).expect("sidecar");
    assert_ne!(second.id, first.id, "a new container");
    assert_eq!(second.state, "running");
    assert_eq!(d.sidecars().len(), 1, "the dead one was removed");
    client.get_lease();
}

/// Scenario 5: in one batch, a request whose namespace was deleted and one whose namespace was
/// recreated are rejected with their reasons in the sync log, the reject log and the acks;
/// the valid request runs.
#[test]
fn requests_for_gone_or_replaced_namespaces_are_rejected() {
    requests_for_gone_or_replaced_namespaces_are_rejected_on(Engine::Podman);
}

fn requests_for_gone_or_replaced_namespaces_are_rejected_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: requests for vanished or recreated namespaces are rejected",
    ) else {
        return;
    };
    let gone = DhcpNetwork::new(&d);
    let replaced = DhcpNetwork::new(&d);
    let valid = DhcpNetwork::new(&d);

    // One batch: the three requests are queued while no sync runs.
    d.trigger().pause();
    for net in [&gone, &replaced, &valid] {
        net.request(&d);
    }
    let id_gone = queued_id(&d, "dnsmasq", gone.ns.name());
    let id_replaced = queued_id(&d, "dnsmasq", replaced.ns.name());
    let id_valid = queued_id(&d, "dnsmasq", valid.ns.name());

    gone.ns.delete();
    // Keep the old namespace alive while the new one is made, so that it cannot get the old
    // inode number back.
    let old_inode = replaced.ns.inode();
    let hold = std::fs::File::open(replaced.ns.path()).expect("open the old namespace");
    replaced.ns.delete();
    replaced.ns.recreate();
    let new_inode = replaced.ns.inode();
    drop(hold);
    assert_ne!(old_inode, new_inode, "the recreated namespace is a new one");
    d.trigger().resume();

    let ack_gone = wait_ack(&d, &id_gone);
    let ack_replaced = wait_ack(&d, &id_replaced);
    let ack_valid = wait_ack(&d, &id_valid);
    assert_eq!(ack_gone["result"], "rejected", "{ack_gone}");
    let why_gone = ack_gone["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        why_gone.contains(gone.ns.name()) && why_gone.contains("does not exist"),
        "{ack_gone}"
    );
    assert_eq!(ack_replaced["result"], "rejected", "{ack_replaced}");
    let why_replaced = ack_replaced["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why_replaced.contains(replaced.ns.name())
            && why_replaced.contains("replaced")
            && why_replaced.contains(&old_inode.to_string())
            && why_replaced.contains(&new_inode.to_string()),
        "{ack_replaced}"
    );
    assert_eq!(ack_valid["result"], "ok", "{ack_valid}");

    // The valid request of the same batch runs.
    valid.wait_alive();
    assert!(d.sidecar(&gone.container_name()).is_none());
    assert!(d.sidecar(&replaced.container_name()).is_none());
    d.wait_for_sync_log(
        "one sync that claimed the three requests, started one and rejected two",
        |_| {
            d.sync_summaries()
                .iter()
                .any(|s| s.starts_with("sync: claimed 3, started 1,") && s.contains(" rejected 2"))
        },
    );

    // The operator finds both reasons in the sync's log and in the reject log.
    let log = d.sync_log();
    for why in [&why_gone, &why_replaced] {
        assert!(
            log.lines()
                .any(|l| l.contains("rejected") && l.contains(why.as_str())),
            "the sync log does not say {why:?}:\n{log}"
        );
    }
    let rejects = d.rejects("dnsmasq");
    for (id, why) in [(&id_gone, &why_gone), (&id_replaced, &why_replaced)] {
        assert!(
            rejects
                .iter()
                .any(|r| r["id"] == id.as_str() && r["reason"] == why.as_str()),
            "no reject entry for {id} ({why}): {rejects:?}"
        );
    }
    assert!(
        !rejects.iter().any(|r| r["id"] == id_valid.as_str()),
        "{rejects:?}"
    );
}

/// Scenario 6: the namespace of a running sidecar is deleted; `sync --full` (the backstop
/// timer's run) removes the orphan.
#[test]
fn full_sync_removes_sidecar_whose_namespace_was_deleted() {
    full_sync_removes_sidecar_whose_namespace_was_deleted_on(Engine::Podman);
}

fn full_sync_removes_sidecar_whose_namespace_was_deleted_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: sync --full removes a sidecar whose namespace was deleted",
    ) else {
        return;
    };
    // Every sync with work removes the orphans it sees, whoever's they are. The syncs of this
    // test process are held off while the namespace is gone; a sync from another process on
    // the same host (another test run) may still get there first, and then the scenario is
    // tried again with a new network.
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let net = DhcpNetwork::new(&d);
        net.request(&d);
        let pid = net.wait_alive();
        let name = net.container_name();

        let exclusive = d.exclusive_syncs();
        net.ns.delete();
        assert!(!net.ns.path().exists());
        assert!(
            d.sidecar(&name).is_some_and(|s| s.state == "running"),
            "dnsmasq keeps its namespace alive until something removes it"
        );
        // What the backstop timer runs.
        let out = d.sync_by_hand(&["--full"]);
        drop(exclusive);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !d.container_exists(&name),
            "the orphan {name} is still there after sync --full:\n{stdout}{stderr}"
        );
        assert!(
            !e2e::cmdline(pid).iter().any(|a| a.contains(&net.uuid)),
            "dnsmasq {pid} still runs"
        );
        let removed_it = stderr
            .lines()
            .any(|l| l.contains(&name) && l.contains("Orphan done"));
        if removed_it {
            assert!(
                !stdout.contains("removed 0,"),
                "the summary counts the removal: {stdout}"
            );
            return;
        }
        e2e::note(&format!(
            "attempt {attempt}/{ATTEMPTS}: another sync on this host removed {name} before \
             sync --full did:\n{stderr}"
        ));
    }
    panic!("{ATTEMPTS} times, another sync on this host removed the orphan before sync --full");
}

/// A DHCP-agent restart asks for every dnsmasq at once: 24 concurrent requests all become
/// alive well within Neutron's 60 s, each claimed and started exactly once.
#[test]
fn burst_of_dnsmasq_requests_all_alive_within_budget() {
    burst_on(Engine::Podman, 24, e2e::ALIVE_TIMEOUT);
}

/// `burst` dnsmasq requests at once on `engine`, each alive within `alive` of its request.
fn burst_on(engine: Engine, burst: usize, alive: Duration) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        &format!("e2e: a burst of {burst} dnsmasq requests all become alive in time"),
    ) else {
        return;
    };
    let nets: Vec<DhcpNetwork> = (0..burst).map(|_| DhcpNetwork::new(&d)).collect();
    let start = std::time::Instant::now();
    let latencies: Vec<Duration> = if burst <= 24 {
        // Like the agent's threads: each spawns its dnsmasq, then waits (at most `alive`, or
        // the test fails) for it to become alive.
        std::thread::scope(|s| {
            let waiters: Vec<_> = nets
                .iter()
                .map(|net| {
                    let d = &d;
                    s.spawn(move || {
                        net.request(d);
                        let queued = std::time::Instant::now();
                        net.wait_alive_within(alive);
                        queued.elapsed()
                    })
                })
                .collect();
            waiters
                .into_iter()
                .map(|w| w.join().expect("a request or its wait failed (see above)"))
                .collect()
        })
    } else {
        // Hundreds at once: all calls from one `podman exec` of the agent (see
        // `agent_calls_at_once`), then every network waited for.
        let calls: Vec<_> = nets
            .iter()
            .map(|n| (n.ns.name().to_owned(), n.tag(), "dnsmasq", n.argv()))
            .collect();
        d.agent_calls_at_once(&calls);
        // Every dnsmasq with DHCP makes an inotify instance as root, and the kernel allows
        // `fs.inotify.max_user_instances` (128 by default) per user across the whole host,
        // other tests' dnsmasqs included: past it dnsmasq exits at start with "failed to create
        // inotify: Too many open files". That is the host refusing the daemon, after sidespawn
        // started its container with the exact argv; it is counted apart (and the test does
        // not change the machine's sysctl). Anything else not alive fails the test.
        let refused = |n: &DhcpNetwork| {
            d.sidecar(&n.container_name())
                .is_some_and(|s| s.state == "exited")
                && {
                    let out =
                        common::output(d.engine_cli().args(["logs", n.container_name().as_str()]));
                    String::from_utf8_lossy(&out.stderr)
                        .contains("failed to create inotify: Too many open files")
                }
        };
        let mut waited = Vec::new();
        common::wait_until(
            alive,
            "every dnsmasq alive, or refused by the host's inotify limit",
            || {
                waited = nets
                    .iter()
                    .map(|n| e2e::alive_pid(&n.pid_file(), &n.uuid).is_some() || refused(n))
                    .collect();
                waited.iter().all(|ok| *ok)
            },
        );
        let alive_now = nets
            .iter()
            .filter(|n| e2e::alive_pid(&n.pid_file(), &n.uuid).is_some())
            .count();
        e2e::note(&format!(
            "burst of {burst}: {alive_now} dnsmasq alive, {} refused by the host's inotify limit (fs.inotify.max_user_instances = {})",
            burst - alive_now,
            std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
                .unwrap_or_default()
                .trim()
        ));
        assert!(alive_now > 0, "no dnsmasq of the burst is alive");
        vec![start.elapsed(); nets.len()]
    };
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    e2e::note(&format!(
        "burst of {}: all settled {:.2} s after the first call; slowest {:.2} s from its request",
        nets.len(),
        start.elapsed().as_secs_f64(),
        slowest.as_secs_f64()
    ));
    let names: Vec<String> = d.sidecars().into_iter().map(|s| s.name).collect();
    for net in &nets {
        assert!(names.contains(&net.container_name()), "{names:?}");
    }
    assert_eq!(names.len(), nets.len(), "one sidecar per network");
    d.wait_for_sync_log("every request claimed and started once", |_| {
        let totals = d.sync_totals();
        totals.get("claimed") == Some(&nets.len()) && totals.get("started") == Some(&nets.len())
    });
}

/// A sidecar's generation label, from its engine's inspect.
fn generation(d: &Deployment, name: &str) -> u64 {
    let c = d
        .inspect(name)
        .unwrap_or_else(|| panic!("no container {name}"));
    c["Config"]["Labels"]["io.sidespawn.generation"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no generation label on {name}"))
}

/// The image a sidecar was started from, as its configuration names it.
fn image_of(d: &Deployment, name: &str) -> String {
    let c = d
        .inspect(name)
        .unwrap_or_else(|| panic!("no container {name}"));
    // podman: ImageName; docker: Config.Image.
    c["ImageName"]
        .as_str()
        .or_else(|| c["Config"]["Image"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The sidecar's life after its start, as an operator drives it: its daemon is killed and
/// `sync --full` starts it again (restart policy); `upgrade` moves it to the image the
/// configuration now names and `rollback` back, each a new generation; DHCP is served after
/// each step.
#[test]
fn restart_upgrade_and_rollback_keep_serving_dhcp() {
    restart_upgrade_and_rollback_keep_serving_dhcp_on(Engine::Podman);
}

fn restart_upgrade_and_rollback_keep_serving_dhcp_on(engine: Engine) {
    let Some((_timer, d)) = e2e::scenario_on(
        engine,
        "e2e: a killed dnsmasq is restarted, then upgraded and rolled back, serving DHCP",
    ) else {
        return;
    };
    let base = common::unique("localhost/sidespawn-e2e-dnsmasq");
    let (a, b) = (format!("{base}:a"), format!("{base}:b"));
    d.tag_image(&d.images.dnsmasq, &a);
    d.tag_image(&d.images.dnsmasq, &b);
    d.set_profile("dnsmasq", "image", Value::from(a.as_str()));

    let net = DhcpNetwork::new(&d);
    let client = net.client(&d);
    net.write_hosts(&[&client]);
    net.request(&d);
    let first = net.wait_alive();
    client.get_lease();
    let name = net.container_name();
    let g0 = generation(&d, &name);
    assert_eq!(image_of(&d, &name), a);

    // Restart: the daemon dies; the next full sync starts it again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(HOST_TIMEOUT, "the engine saw the sidecar exit", || {
        d.sidecar(&name).is_some_and(|s| s.state == "exited")
    });
    let out = d.sync_by_hand(&["--full"]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("restarts 1"), "{summary}");
    let restarted = net.wait_alive();
    assert_ne!(restarted, first);
    client.get_lease();

    // Upgrade to b, then roll back to a: each replacement is a new generation.
    d.set_profile("dnsmasq", "image", Value::from(b.as_str()));
    let mut upgrade = d.sidespawn(&["upgrade", "--kind", "dnsmasq"]);
    let out = common::output(&mut upgrade);
    common::assert_exit(&upgrade, &out, 0);
    assert_eq!(image_of(&d, &name), b);
    let g1 = generation(&d, &name);
    assert!(g1 > g0, "{g1} > {g0}");
    net.wait_alive();
    client.get_lease();

    let mut rollback = d.sidespawn(&["rollback", "--kind", "dnsmasq"]);
    let out = common::output(&mut rollback);
    common::assert_exit(&rollback, &out, 0);
    assert_eq!(image_of(&d, &name), a);
    assert!(generation(&d, &name) > g1);
    net.wait_alive();
    client.get_lease();
}

/// The same scenarios with the sidecars on docker: a daemon of each deployment's own, the
/// namespace joined through the entry helper (`sidespawn-netns-exec`), the syncs fired by the
/// same path units. Only the engine differs; every assertion is the podman scenario's.
mod docker {
    use super::*;

    #[test]
    fn dnsmasq_started_by_the_agent_serves_dhcp() {
        dnsmasq_started_by_the_agent_serves_dhcp_on(Engine::Docker);
    }

    #[test]
    fn haproxy_metadata_proxy_started_by_the_agent_serves_http() {
        haproxy_metadata_proxy_started_by_the_agent_serves_http_on(Engine::Docker);
    }

    #[test]
    fn sidecars_survive_agent_restart_and_recreation() {
        sidecars_survive_agent_restart_and_recreation_on(Engine::Docker);
    }

    #[test]
    fn kill_script_hup_reloads_and_term_removes() {
        kill_script_hup_reloads_and_term_removes_on(Engine::Docker);
    }

    #[test]
    fn dead_dnsmasq_is_respawned_when_the_agent_asks_again() {
        dead_dnsmasq_is_respawned_when_the_agent_asks_again_on(Engine::Docker);
    }

    #[test]
    fn requests_for_gone_or_replaced_namespaces_are_rejected() {
        requests_for_gone_or_replaced_namespaces_are_rejected_on(Engine::Docker);
    }

    #[test]
    fn full_sync_removes_sidecar_whose_namespace_was_deleted() {
        full_sync_removes_sidecar_whose_namespace_was_deleted_on(Engine::Docker);
    }

    #[test]
    fn burst_of_dnsmasq_requests_all_alive_within_budget() {
        burst_on(Engine::Docker, 24, e2e::ALIVE_TIMEOUT);
    }

    #[test]
    fn restart_upgrade_and_rollback_keep_serving_dhcp() {
        restart_upgrade_and_rollback_keep_serving_dhcp_on(Engine::Docker);
    }

    /// 200 requests at once through docker: every one claimed and started exactly once, one
    /// container per network, each dnsmasq alive unless the host's inotify limit refused it
    /// (see `burst_on`). The deadline is generous (a slow shared machine is no failure); the
    /// time it took is printed, and `tests/scripts/bench-engines.sh` measures it.
    #[test]
    fn burst_of_200_requests_loses_nothing() {
        burst_on(Engine::Docker, 200, Duration::from_secs(600));
    }
}
