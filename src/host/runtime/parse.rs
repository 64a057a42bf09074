//! Podman's output, parsed: the listing (`ps` with [`PS_FORMAT`], or the
//! older `--format json`), the names of unlabelled containers, and
//! `container inspect`. Only the fields sidespawn uses are read; a listing
//! is filtered again to our own sidecars whatever podman's filter did.

use serde::Deserialize;

use super::*;

/// The Go template of the listing: one JSON object per container and line,
/// with only the fields the plan uses. `--format json` would print every
/// field, among them the whole command line (twice), so the listing grew
/// with the sidecars' argv and ~70 sidecars with 1 MiB of arguments pushed
/// it past the runner's stdout cap (`STDOUT_READ_CAP`), failing every sync
/// of every kind. Every field here has a size the host bounds (labels: ours
/// and the profile's).
/// `.ListContainer.State`/`.Names` are the raw fields (`.State` alone is
/// the human "Up 2 seconds ago"); checked against podman 4.3.1, output
/// saved in `tests/fixtures/podman/ps-fields-*.jsonl`.
pub const PS_FORMAT: &str = concat!(
    r#"{"Id":{{json .ID}},"Names":{{json .ListContainer.Names}},"#,
    r#""State":{{json .ListContainer.State}},"Pid":{{json .Pid}},"#,
    r#""Image":{{json .Image}},"Labels":{{json .Labels}},"#,
    r#""StartedAt":{{json .StartedAt}},"ExitCode":{{json .ExitCode}}}"#
);

/// The template of [`Runtime::list_unlabelled`]: a container's names and
/// its instance label (`""` when it has none; `index` of a missing key is
/// the empty string), one JSON object per line.
pub(super) const UNLABELLED_FORMAT: &str = r#"{"Names":{{json .ListContainer.Names}},"Instance":{{json (index .Labels "io.sidespawn.instance")}}}"#;

/// The names of [`UNLABELLED_FORMAT`]'s lines whose instance is empty.
pub(super) fn parse_unlabelled(out: &[u8]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Line {
        #[serde(default)]
        names: PsNames,
        #[serde(default)]
        instance: Option<String>,
    }
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut names = Vec::new();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: Line = serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
        if line.instance.as_deref().unwrap_or("").is_empty() {
            names.push(match line.names {
                PsNames::Many(n) => n.into_iter().next().unwrap_or_default(),
                PsNames::One(n) => n,
            });
        }
    }
    names.sort();
    Ok(names)
}

/// One container of the listing: a line of [`PS_FORMAT`]'s output, or an
/// entry of `podman ps --format json` (podman 4.x), which parses the same.
/// Only the fields we use; anything else is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsEntry {
    id: String,
    #[serde(default)]
    names: PsNames,
    #[serde(default)]
    state: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    image: String,
    /// `null` for a container created without labels.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// Unix seconds; a container that never started has Go's zero time,
    /// -62135596800.
    #[serde(default)]
    started_at: i64,
    #[serde(default)]
    exit_code: i32,
}

/// An array in podman 4.x; a plain string in some older versions.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PsNames {
    Many(Vec<String>),
    One(String),
}

impl Default for PsNames {
    fn default() -> PsNames {
        PsNames::Many(Vec::new())
    }
}

/// Parses the listing: one JSON object per line ([`PS_FORMAT`]; no
/// containers prints nothing), or, from `--format json`, one array (`[]`
/// or `null` for none).
pub(super) fn parse_ps(out: &[u8]) -> Result<Vec<ContainerInfo>, String> {
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<PsEntry> = if trimmed.starts_with('[') || trimmed == "null" {
        let all: Option<Vec<PsEntry>> = serde_json::from_str(trimmed).map_err(|e| e.to_string())?;
        all.unwrap_or_default()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str::<PsEntry>(l).map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(entries
        .into_iter()
        .map(|e| {
            let name = match e.names {
                PsNames::Many(n) => n.into_iter().next().unwrap_or_default(),
                PsNames::One(n) => n,
            };
            ContainerInfo {
                id: e.id,
                name,
                state: State::parse(&e.state),
                // Podman reports 0 for a container that is not running;
                // anything outside u32 is not a pid either.
                pid: u32::try_from(e.pid).unwrap_or(0),
                image: e.image,
                labels: e.labels.unwrap_or_default(),
                started_at: e.started_at.max(0),
                exit_code: e.exit_code,
            }
        })
        .collect())
}

/// One entry of `podman container inspect --format json` (podman 4.x),
/// only what [`Runtime::inspect`] returns.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectEntry {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: InspectState,
    #[serde(default)]
    image_name: String,
    #[serde(default)]
    config: InspectConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    exit_code: i32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

/// Parses `podman container inspect --format json` output of one name: an
/// array of one entry, or empty when there is no such container.
pub(super) fn parse_inspect(out: &[u8]) -> Result<Option<Inspected>, String> {
    let text = std::str::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let entries: Option<Vec<InspectEntry>> =
        serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(entries
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|e| Inspected {
            container: ContainerInfo {
                id: e.id,
                name: e.name,
                state: State::parse(&e.state.status),
                pid: u32::try_from(e.state.pid).unwrap_or(0),
                image: e.image_name,
                labels: e.config.labels.unwrap_or_default(),
                started_at: 0,
                exit_code: e.state.exit_code,
            },
            command: e.config.cmd.unwrap_or_default(),
        }))
}

/// Keeps only containers carrying our managed-by label and `instance`.
/// `ps --filter` already does this; checking again means a podman that
/// ignored or ORed the filters could never get another configuration's
/// container (or anyone else's) signalled or garbage-collected.
pub(super) fn keep_managed(all: Vec<ContainerInfo>, instance: &str) -> Vec<ContainerInfo> {
    let total = all.len();
    let kept: Vec<ContainerInfo> = all
        .into_iter()
        .filter(|c| is_managed(c, instance))
        .collect();
    if kept.len() != total {
        tracing::warn!(
            ignored = total - kept.len(),
            "podman listed containers without the {} label or with another {} despite the filter; ignoring them",
            labels::MANAGED_BY,
            labels::INSTANCE
        );
    }
    kept
}

/// `podman info --format json`: the cgroup manager and version, and the
/// default OCI runtime.
pub(super) fn parse_info(out: &[u8]) -> Result<EngineInfo, String> {
    #[derive(Debug, Default, Deserialize)]
    struct Info {
        #[serde(default)]
        host: InfoHost,
    }
    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct InfoHost {
        #[serde(default)]
        cgroup_manager: String,
        #[serde(default)]
        cgroup_version: String,
        #[serde(default)]
        oci_runtime: Option<OciRuntime>,
    }
    #[derive(Debug, Default, Deserialize)]
    struct OciRuntime {
        #[serde(default)]
        name: String,
        #[serde(default)]
        path: String,
    }
    let i: Info = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    Ok(EngineInfo {
        cgroup_manager: i.host.cgroup_manager,
        cgroup_version: i.host.cgroup_version,
        oci_runtime: i.host.oci_runtime.map(|r| (r.name, r.path)),
    })
}

/// One line of `podman events --format json` (checked with podman 4.3.1,
/// output saved in `tests/fixtures/podman/events-4.3.1.jsonl`). The
/// container's labels come as `Attributes` (with `image` and `name` among
/// them on some versions; those never look like our labels).
#[derive(Deserialize)]
struct EventLine {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Status", default)]
    status: String,
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Attributes", default)]
    attributes: Option<BTreeMap<String, String>>,
    #[serde(rename = "ContainerExitCode", default)]
    exit_code: Option<i64>,
}

/// Parses one event line. `Ok(None)` for a blank line or an event about
/// something other than a container (the stream is filtered to containers,
/// but a filter is no proof).
pub(super) fn parse_event(line: &str) -> Result<Option<ContainerEvent>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let e: EventLine = serde_json::from_str(line.trim()).map_err(|e| e.to_string())?;
    if !e.kind.is_empty() && e.kind != "container" {
        return Ok(None);
    }
    if e.id.is_empty() && e.name.is_empty() {
        return Err("an event names no container".to_owned());
    }
    let action = match e.status.as_str() {
        "start" | "restart" => EventAction::Started,
        // `died` is the one podman reports for every exit of the main
        // process (a crash, a signal, a stop); the exit code is absent on
        // versions that do not report it.
        "died" => EventAction::Died {
            exit_code: e.exit_code.and_then(|c| i32::try_from(c).ok()),
        },
        "remove" => EventAction::Removed,
        other => EventAction::Other(other.to_owned()),
    };
    Ok(Some(ContainerEvent {
        name: e.name,
        id: e.id,
        action,
        labels: e.attributes.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runtime::test_util::*;

    const PS_EMPTY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-empty.json"
    ));
    const PS_MIXED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-mixed.json"
    ));
    const PS_FIELDS_MIXED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-fields-mixed.jsonl"
    ));
    const PS_FIELDS_SCOPED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/ps-fields-scoped.jsonl"
    ));
    const INSPECT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/inspect-dnsmasq.json"
    ));

    #[test]
    fn inspect_gives_the_arguments_after_the_image() {
        assert_eq!(
            parse_inspect(INSPECT.as_bytes()).unwrap().unwrap().command,
            ["-k", "", "--a=b c"]
        );
    }

    // ---- podman inspect JSON and run errors, from real podman 4.3 ----

    const INSPECT_RUNNING: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/inspect-running.json"
    ));

    #[test]
    fn inspect_fixture_gives_state_pid_and_labels() {
        let c = parse_inspect(INSPECT_RUNNING.as_bytes())
            .unwrap()
            .unwrap()
            .container;
        assert_eq!(c.name, "ssfx-inuse");
        assert_eq!(c.id.len(), 64);
        assert_eq!(c.state, State::Running);
        assert!(c.pid > 0);
        assert_eq!(c.image, "localhost/sidespawn-test-agent:latest");
        assert_eq!(c.labels[labels::KEY], "dnsmasq/tag/x");
        assert_eq!(c.labels[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
        // A missing container: podman prints `[]` (and fails).
        assert_eq!(parse_inspect(b"[]\n").unwrap(), None);
        assert_eq!(parse_inspect(b"").unwrap(), None);
    }

    // ---- podman ps JSON, from real podman 4.3 output ----

    #[test]
    fn empty_ps_output_in_every_spelling_is_no_containers() {
        assert_eq!(PS_EMPTY.trim(), "[]", "fixture is what podman 4.3 prints");
        for out in [PS_EMPTY, "", " \n", "null"] {
            assert_eq!(parse_ps(out.as_bytes()).unwrap(), vec![], "{out:?}");
        }
    }

    #[test]
    fn mixed_ps_fixture_parses_every_state() {
        let cs = parse_ps(PS_MIXED.as_bytes()).unwrap();
        assert_eq!(cs.len(), 4);

        let running = by_name(&cs, "ssfx-running");
        assert_eq!(running.state, State::Running);
        assert!(running.pid > 0);
        assert_eq!(running.id.len(), 64, "--no-trunc gives full ids");
        assert_eq!(running.image, "localhost/sidespawn-fixture:pmx");
        assert_eq!(running.labels[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
        assert_eq!(running.labels[labels::KEY], "dnsmasq-running");
        assert_eq!(running.labels[labels::NETNS], "qdhcp-1111");
        assert!(running.started_at > 1_600_000_000);
        assert_eq!(running.exit_code, 0);

        let exited = by_name(&cs, "ssfx-exited");
        assert_eq!(exited.state, State::Exited);
        assert_eq!(exited.pid, 0);
        assert_eq!(exited.exit_code, 7);
        assert!(exited.started_at > 0);

        // Never started: podman prints Go's zero time (-62135596800).
        let created = by_name(&cs, "ssfx-created");
        assert_eq!(created.state, State::Created);
        assert_eq!(created.pid, 0);
        assert_eq!(created.started_at, 0);
        assert_eq!(created.labels[labels::KEY], "haproxy-created");

        let bare = by_name(&cs, "ssfx-nolabels");
        assert_eq!(bare.state, State::Running);
        assert!(bare.pid > 0);
        assert!(bare.labels.is_empty(), "\"Labels\": null");
    }

    #[test]
    fn containers_without_our_label_are_never_listed() {
        // Containers from before the instance label: never this
        // configuration's, whatever their other labels say.
        assert!(keep_managed(parse_ps(PS_MIXED.as_bytes()).unwrap(), "x").is_empty());
        let mut bare = parse_ps(PS_MIXED.as_bytes()).unwrap();
        for c in &mut bare {
            c.labels.insert(labels::INSTANCE.into(), "x".into());
        }
        let kept = keep_managed(bare, "x");
        let mut names: Vec<&str> = kept.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ssfx-created", "ssfx-exited", "ssfx-running"]);
    }

    #[test]
    fn field_template_fixture_parses_every_state() {
        let cs = parse_ps(PS_FIELDS_MIXED.as_bytes()).unwrap();
        assert_eq!(cs.len(), 5);
        let running = by_name(&cs, "isoexp-run");
        assert_eq!(running.state, State::Running);
        assert!(running.pid > 0);
        assert_eq!(running.id.len(), 64, "--no-trunc gives full ids");
        assert_eq!(running.image, "localhost/sidespawn-test-agent:latest");
        assert_eq!(running.labels[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
        assert_eq!(running.labels[labels::INSTANCE], "isoexp");
        assert_eq!(running.labels[labels::KIND], "dnsmasq");
        assert!(running.started_at > 1_600_000_000);
        let exited = by_name(&cs, "isoexp-exited");
        assert_eq!((exited.state.clone(), exited.pid), (State::Exited, 0));
        assert_eq!(exited.exit_code, 7);
        assert!(exited.started_at > 0);
        let created = by_name(&cs, "isoexp-created");
        assert_eq!(created.state, State::Created);
        assert_eq!((created.pid, created.started_at), (0, 0));
        assert_eq!(
            by_name(&cs, "isoexp-other").labels[labels::INSTANCE],
            "other"
        );
        assert!(
            !by_name(&cs, "isoexp-nolabel")
                .labels
                .contains_key(labels::MANAGED_BY)
        );
        // Another instance and an unlabelled container are never kept.
        let kept = keep_managed(cs, "isoexp");
        let mut names: Vec<&str> = kept.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["isoexp-created", "isoexp-exited", "isoexp-run"]);
        // What podman's two ANDed label filters printed: the same three.
        let scoped = parse_ps(PS_FIELDS_SCOPED.as_bytes()).unwrap();
        let mut names: Vec<&str> = scoped.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["isoexp-created", "isoexp-exited", "isoexp-run"]);
    }

    #[test]
    fn unlabelled_containers_are_named_from_their_listing() {
        // What podman 4.3.1 printed for UNLABELLED_FORMAT: an old sidecar, one of ours.
        let out = br#"{"Names":["sidespawn-dnsmasq-t-old"],"Instance":""}
{"Names":["sidespawn-0123456789ab-dnsmasq-t-new"],"Instance":"0123456789ab"}
"#;
        assert_eq!(parse_unlabelled(out).unwrap(), ["sidespawn-dnsmasq-t-old"]);
        assert!(parse_unlabelled(b"").unwrap().is_empty());
        assert!(parse_unlabelled(b"{").is_err());
        let mut old = FakeRuntime::container("old", State::Running, &[]);
        old.labels.remove(labels::INSTANCE);
        let new = FakeRuntime::container("new", State::Running, &[]);
        let fake = FakeRuntime::new(vec![old, new]);
        assert_eq!(fake.list_unlabelled().unwrap(), ["old"]);
    }

    #[test]
    fn a_bad_line_of_the_field_listing_is_an_error_naming_it() {
        let e = parse_ps(b"{\"Id\":\"a\"}\n{\"Names\":[\"x\"]}\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert_eq!(parse_ps(b"{\"Id\":\"a\"}\n\n").unwrap().len(), 1);
    }

    #[test]
    fn older_podman_spellings_parse() {
        let out =
            br#"[{"Id":"abc","Names":"one","State":"Stopped","Pid":-1,"Labels":{},"Extra":[1]}]"#;
        let cs = parse_ps(out).unwrap();
        assert_eq!(cs[0].name, "one");
        assert_eq!(cs[0].state, State::Exited);
        assert_eq!(cs[0].pid, 0);
        assert_eq!(cs[0].image, "");
    }

    #[test]
    fn malformed_ps_output_is_an_error() {
        // One object is a valid line of the field listing; a cut one is not.
        assert_eq!(parse_ps(br#"{"Id":"abc"}"#).unwrap().len(), 1);
        assert!(parse_ps(br#"{"Id":"abc""#).is_err());
        assert!(parse_ps(br#""abc""#).is_err());
        assert!(
            parse_ps(br#"[{"Names":["x"]}]"#).is_err(),
            "an entry needs an Id"
        );
        assert!(parse_ps(b"[\xff]").is_err());
    }

    const EVENTS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/events-4.3.1.jsonl"
    ));

    #[test]
    fn events_fixture_gives_start_death_with_code_and_removal() {
        let evs: Vec<ContainerEvent> = EVENTS
            .lines()
            .map(|l| parse_event(l).unwrap().unwrap())
            .collect();
        let actions: Vec<&EventAction> = evs.iter().map(|e| &e.action).collect();
        assert_eq!(
            actions,
            [
                &EventAction::Other("create".to_owned()),
                &EventAction::Other("init".to_owned()),
                &EventAction::Started,
                &EventAction::Died {
                    exit_code: Some(137)
                },
                &EventAction::Other("cleanup".to_owned()),
                &EventAction::Removed,
            ]
        );
        let died = &evs[3];
        assert_eq!(died.name, "evt-probe1");
        assert_eq!(died.id.len(), 64);
        assert_eq!(
            died.labels.get(labels::INSTANCE).map(String::as_str),
            Some("evtest1")
        );
        assert_eq!(
            died.labels.get(labels::KIND).map(String::as_str),
            Some("dnsmasq")
        );
    }

    #[test]
    fn events_of_other_types_and_blank_lines_are_skipped_and_garbage_is_an_error() {
        assert_eq!(parse_event("").unwrap(), None);
        assert_eq!(
            parse_event(r#"{"ID":"x","Name":"img","Status":"pull","Type":"image"}"#).unwrap(),
            None
        );
        assert!(parse_event("{not json").is_err());
        assert!(parse_event(r#"{"Status":"died","Type":"container"}"#).is_err());
        let e = parse_event(r#"{"ID":"a","Name":"n","Status":"died","Type":"container"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(e.action, EventAction::Died { exit_code: None });
    }
}
