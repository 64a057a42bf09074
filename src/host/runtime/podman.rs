//! The podman runtime: [`Podman`] turns each call into podman's argv
//! ([`call_args`], which `describe` prints too, so a dry run shows what
//! runs), runs it through the shared [`Runner`](super::process::Runner) and
//! reads podman's output and error words.

use std::path::Path;
use std::time::Duration;

use super::parse::{
    UNLABELLED_FORMAT, keep_managed, parse_event, parse_inspect, parse_ps, parse_unlabelled,
};
use super::process::{EventIter, Runner, summarise_stderr};
use super::*;

/// The real runtime: the `podman` command line.
#[derive(Debug, Clone)]
pub struct Podman {
    runner: Runner,
}

impl Podman {
    /// `program` is the podman binary (a bare name is looked up in `PATH`);
    /// `timeout` bounds every call (a `stop` gets its grace time on top).
    pub fn new(program: impl Into<std::path::PathBuf>, timeout: Duration) -> Podman {
        Podman {
            runner: Runner::new("podman", program, timeout),
        }
    }

    /// Adds a variable to podman's environment (tests point
    /// `CONTAINERS_CONF` at a test configuration this way, without touching
    /// the process environment). The scrubbed variables stay removed even
    /// if named here.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Podman {
        self.runner.push_env(key.into(), value.into());
        self
    }

    pub fn program(&self) -> &Path {
        self.runner.program()
    }

    pub fn timeout(&self) -> Duration {
        self.runner.timeout()
    }

    fn call(
        &self,
        args: &[String],
        timeout: Duration,
        classify: impl FnOnce(&str) -> Option<Result<(), RuntimeError>>,
    ) -> Result<Vec<u8>, RuntimeError> {
        self.runner.call(args, timeout, classify)
    }
}

/// How far back a new subscription replays: podman needs some
/// milliseconds to open its event log after it starts, and an event in
/// that gap would otherwise be lost. Replayed events are only cues again.
const EVENTS_REPLAY: &str = "5s";

/// `podman events` for one configuration's containers, as JSON lines.
/// podman filters on the instance label; both labels are checked again on
/// each event, so the stream never carries another configuration's.
fn events_args(instance: &str) -> Vec<String> {
    [
        "events",
        "--since",
        EVENTS_REPLAY,
        "--format",
        "json",
        "--filter",
        "type=container",
        "--filter",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("label={}={instance}", labels::INSTANCE)])
    .collect()
}

impl Runtime for Podman {
    fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let args = call_args(&Call::List(instance.to_owned()));
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        let all = parse_ps(&out).map_err(|message| RuntimeError::Parse {
            args: self.runner.error_args(&args),
            message,
        })?;
        Ok(keep_managed(all, instance))
    }

    fn list_unlabelled(&self) -> Result<Vec<String>, RuntimeError> {
        let args: Vec<String> = [
            "ps",
            "-a",
            "--filter",
            &format!("label={}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            "--format",
            UNLABELLED_FORMAT,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        parse_unlabelled(&out).map_err(|message| RuntimeError::Parse {
            args: self.runner.error_args(&args),
            message,
        })
    }

    fn run(&self, spec: &RunSpec) -> Result<String, RuntimeError> {
        let args = call_args(&Call::Run(spec.clone()));
        let out = self.call(&args, self.runner.timeout(), |stderr| {
            is_name_in_use(stderr).then(|| Err(RuntimeError::NameInUse(spec.name.clone())))
        })?;
        // `podman run -d` prints the id alone; take the last line in case a
        // future version prints notices before it.
        let text = String::from_utf8_lossy(&out);
        match text.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(id) => Ok(id.to_owned()),
            None => Err(RuntimeError::Parse {
                args: self.runner.error_args(&args),
                message: "podman printed no container id".to_owned(),
            }),
        }
    }

    fn kill(&self, name: &str, signal: Signal) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Kill(name.to_owned(), signal));
        self.call(&args, self.runner.timeout(), |stderr| {
            if is_no_such_container(stderr) {
                Some(Err(RuntimeError::NoSuchContainer(name.to_owned())))
            } else if is_not_running(stderr) {
                Some(Err(RuntimeError::NotRunning(name.to_owned())))
            } else {
                None
            }
        })
        .map(drop)
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Stop(name.to_owned(), timeout));
        // podman itself waits up to `timeout` before SIGKILL: that wait must
        // not count against the call's own time limit.
        let limit = self.runner.timeout() + Duration::from_secs(stop_secs(timeout));
        self.call(&args, limit, |stderr| {
            is_no_such_container(stderr)
                .then(|| Err(RuntimeError::NoSuchContainer(name.to_owned())))
        })
        .map(drop)
    }

    fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let args = call_args(&Call::Remove(name.to_owned()));
        // Podman 4.3 already exits 0 for `rm -f` of a missing container;
        // other versions say "no such container": removal is idempotent
        // either way, so a sync killed half-way can simply run again.
        self.call(&args, self.runner.timeout(), |stderr| {
            is_no_such_container(stderr).then_some(Ok(()))
        })
        .map(drop)
    }

    fn inspect(&self, name: &str) -> Result<Inspected, RuntimeError> {
        let args = call_args(&Call::Inspect(name.to_owned()));
        let out = self.call(&args, self.runner.timeout(), |stderr| {
            is_no_such_container(stderr)
                .then(|| Err(RuntimeError::NoSuchContainer(name.to_owned())))
        })?;
        parse_inspect(&out)
            .map_err(|message| RuntimeError::Parse {
                args: self.runner.error_args(&args),
                message,
            })?
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))
    }

    fn describe(&self, call: &Call) -> String {
        self.runner.describe(&call_args(call))
    }

    fn logs(&self, name: &str, follow: bool) -> Result<std::process::ExitStatus, RuntimeError> {
        let args = call_args(&Call::Logs {
            name: name.to_owned(),
            follow,
        });
        // Output goes straight to ours, as it comes: `--follow` streams.
        self.runner
            .command_for(&args)
            .status()
            .map_err(|e| self.runner.spawn_error(e))
    }

    fn ensure_image(&self, image: &str, pull: bool) -> Result<(), RuntimeError> {
        if pull {
            // A pull downloads layers: the call timeout of a run or a stop
            // is too short for a large image on a slow link.
            let args = image_args(&["pull", "--quiet"], image);
            return self
                .call(&args, self.runner.timeout().max(PULL_TIMEOUT), |_| None)
                .map(drop);
        }
        // `podman image exists` answers with its exit status alone: 0
        // present, 1 absent (no stderr), anything else a failure.
        let args = image_args(&["image", "exists"], image);
        let f = self.runner.exec(&args, self.runner.timeout())?;
        match f.status.code() {
            Some(0) => Ok(()),
            Some(1) if f.stderr.trim().is_empty() => {
                Err(RuntimeError::NoSuchImage(image.to_owned()))
            }
            _ => Err(RuntimeError::Failed {
                args: self.runner.error_args(&args),
                status: f.status.to_string(),
                stderr: summarise_stderr(&f.stderr),
            }),
        }
    }

    fn probe_image(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let mut args = probe_args(image);
        args.extend(argv.iter().cloned());
        self.call(&args, timeout, |stderr| {
            is_no_such_image(stderr).then(|| Err(RuntimeError::NoSuchImage(image.to_owned())))
        })
        .map(drop)
    }

    fn events(&self, instance: &str) -> Result<Events, RuntimeError> {
        let args = events_args(instance);
        let stream = self.runner.stream(&args)?;
        Ok(Box::new(EventIter::new(stream, instance, parse_event)))
    }

    fn exec_check(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        // podman stops reading its own options at the container name, so
        // the command's arguments stay the command's.
        let mut args = vec!["exec".to_owned(), name.to_owned()];
        args.extend(argv.iter().cloned());
        self.call(&args, timeout, |stderr| {
            if is_no_such_container(stderr) {
                Some(Err(RuntimeError::NoSuchContainer(name.to_owned())))
            } else if is_not_running(stderr) {
                Some(Err(RuntimeError::NotRunning(name.to_owned())))
            } else {
                None
            }
        })
        .map(drop)
    }

    fn version(&self) -> Result<String, RuntimeError> {
        let args = vec!["--version".to_owned()];
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    fn info(&self) -> Result<EngineInfo, RuntimeError> {
        let args: Vec<String> = ["info", "--format", "json"].map(String::from).to_vec();
        let out = self.call(&args, self.runner.timeout(), |_| None)?;
        super::parse::parse_info(&out).map_err(|message| RuntimeError::Parse {
            args: self.runner.error_args(&args),
            message,
        })
    }
}

fn is_no_such_container(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("no such container")
}

/// Podman 4.3: `Error: creating container storage: the container name "X"
/// is already in use by ID. You have to remove that container to be able to
/// reuse that name: that name is already in use` (docker says `Conflict. The
/// container name "/X" is already in use by container ...`).
fn is_name_in_use(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("name") && s.contains("is already in use")
}

/// Podman 4.3 without a local image and `--pull=never`: `Error:
/// localhost/x:1: image not known`.
fn is_no_such_image(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("image not known")
}

/// The longest a `podman pull` may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// `podman WORDS -- IMAGE`.
fn image_args(words: &[&str], image: &str) -> Vec<String> {
    let mut a: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
    a.push("--".to_owned());
    a.push(image.to_owned());
    a
}

/// `podman run` of a throwaway probe container of `image`, up to the
/// image: removed on exit, never pulled, no network, no capabilities.
/// Its program and arguments follow.
fn probe_args(image: &str) -> Vec<String> {
    image_args(
        &[
            "run",
            "--rm",
            "--pull=never",
            "--network=none",
            "--cap-drop=all",
        ],
        image,
    )
}

fn is_not_running(stderr: &str) -> bool {
    stderr
        .to_ascii_lowercase()
        .contains("container state improper")
}

/// `podman stop -t` takes whole seconds; round up so a sub-second grace
/// time is not turned into an immediate SIGKILL.
fn stop_secs(t: Duration) -> u64 {
    t.as_secs() + u64::from(t.subsec_nanos() > 0)
}

/// The arguments after `podman` of `podman run -d` for `spec`. The image
/// is the last podman-side word; everything after it belongs to the
/// container's command.
///
/// Values are attached with `=` (`--name=NAME`, `--label=K=V`) and a `--`
/// precedes the image, so no value, not even one starting with `-`, can be
/// read by podman as an option of its own.
pub fn run_args(spec: &RunSpec) -> Vec<String> {
    let mut a = vec![
        "run".to_owned(),
        "-d".to_owned(),
        format!("--name={}", spec.name),
    ];
    for (k, v) in &spec.labels {
        a.push(format!("--label={k}={v}"));
    }
    let mut opt = |k: &str, v: String| {
        a.push(k.to_owned());
        a.push(v);
    };
    match &spec.network {
        Network::Namespace(path) => opt("--network", format!("ns:{}", path.display())),
        Network::Host => opt("--network", "host".to_owned()),
        Network::None => opt("--network", "none".to_owned()),
    }
    if spec.pid_host {
        opt("--pid", "host".to_owned());
    }
    if spec.cgroupns_host {
        opt("--cgroupns", "host".to_owned());
    }
    for v in &spec.volumes {
        opt("--volume", v.clone());
    }
    for c in &spec.cap_drop {
        opt("--cap-drop", c.clone());
    }
    for c in &spec.cap_add {
        opt("--cap-add", c.clone());
    }
    if let Some(u) = &spec.user {
        opt("--user", u.clone());
    }
    if let Some(d) = &spec.log_driver {
        opt("--log-driver", d.clone());
    }
    a.extend(spec.engine_args.iter().cloned());
    if let Some(e) = &spec.entrypoint {
        a.push("--entrypoint".to_owned());
        a.push(e.clone());
    }
    a.push("--".to_owned());
    a.push(spec.image.clone());
    a.extend(spec.command.iter().cloned());
    a.extend(spec.daemon_argv.iter().cloned());
    a
}

/// The arguments after `podman` for a call. Execution and `describe` both
/// use this, so a dry run prints exactly what a real run executes. Names go
/// after `--` so that none can be taken for an option.
pub fn call_args(call: &Call) -> Vec<String> {
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match call {
        Call::List(instance) => {
            // Podman ANDs several `label=` filters (checked with 4.3.1);
            // `keep_managed` checks both labels again anyway.
            let mut a = v(&["ps", "-a", "--no-trunc", "--filter"]);
            a.push(format!(
                "label={}={}",
                labels::MANAGED_BY,
                labels::MANAGED_BY_VALUE
            ));
            a.push("--filter".to_owned());
            a.push(format!("label={}={instance}", labels::INSTANCE));
            a.push("--format".to_owned());
            a.push(PS_FORMAT.to_owned());
            a
        }
        Call::Run(spec) => run_args(spec),
        Call::Kill(name, sig) => {
            let mut a = v(&["kill"]);
            a.push(format!("--signal={}", sig.as_str()));
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
        Call::Stop(name, t) => {
            let mut a = v(&["stop"]);
            a.push(format!("--time={}", stop_secs(*t)));
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
        Call::Remove(name) => {
            let mut a = v(&["rm", "--force", "--time=0", "--"]);
            a.push(name.clone());
            a
        }
        Call::Inspect(name) => {
            let mut a = v(&["container", "inspect", "--format", "json", "--"]);
            a.push(name.clone());
            a
        }
        Call::Logs { name, follow } => {
            let mut a = v(&["logs"]);
            if *follow {
                a.push("--follow".to_owned());
            }
            a.push("--".to_owned());
            a.push(name.clone());
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::process::{ARGS_SHOWN, Keep, STDERR_SHOWN, read_capped};
    use super::*;
    use crate::host::runtime::test_util::*;
    use nix::sys::signal::Signal as NixSignal;
    use nix::unistd::Pid;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Instant;

    /// A scratch directory removed on drop, for fake podman scripts.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "sidespawn-rt-{}-{}",
                std::process::id(),
                crate::shared::record::new_id(0)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// Writes an executable `/bin/sh` script standing in for podman.
        fn script(&self, name: &str, body: &str) -> PathBuf {
            let path = self.0.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&path)
                .unwrap();
            writeln!(f, "#!/bin/sh\n{body}").unwrap();
            path
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Whether a pid is gone or only a zombie waiting for its reaper.
    fn is_dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    fn wait_dead(pid: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if is_dead(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    const RUN_NAME_IN_USE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/podman/run-name-in-use.stderr"
    ));

    #[test]
    fn name_in_use_is_recognised_in_podmans_own_words() {
        assert!(is_name_in_use(RUN_NAME_IN_USE), "{RUN_NAME_IN_USE}");
        assert!(is_name_in_use(
            "docker: Error response from daemon: Conflict. The container name \"/x\" is already in use by container \"abc\"."
        ));
        assert!(!is_name_in_use("Error: localhost/x:1: image not known"));
        assert!(!is_name_in_use("Error: address already in use"));
    }

    #[test]
    fn error_args_are_cut_but_keep_the_start() {
        let mut args = vec!["run".to_owned(), "--name=sidespawn-x".to_owned()];
        args.extend((0..1000).map(|i| format!("--arg-{i:0>90}")));
        let shown = super::super::process::error_args("podman", &args);
        assert!(shown.len() <= ARGS_SHOWN, "{}", shown.len());
        assert!(
            shown.starts_with("podman run --name=sidespawn-x --arg-"),
            "{shown}"
        );
        assert!(shown.ends_with("more bytes)"), "{shown}");
        let e = RuntimeError::Failed {
            args: shown,
            status: "exit status: 125".into(),
            stderr: "Error: image not known".into(),
        };
        assert!(e.to_string().ends_with("Error: image not known"));
    }

    #[test]
    fn list_runs_the_filtered_ps_and_parses_it() {
        let tmp = Scratch::new();
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/podman/ps-fields-mixed.jsonl"
        );
        let podman = tmp.script(
            "podman",
            &format!("printf '%s\\0' \"$@\" > \"$ARGS\"\ncat '{fixture}'"),
        );
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        // The fixture is unfiltered: the code drops the other instance and
        // the unlabelled container even when podman does not.
        let cs = p.list("isoexp").unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(by_name(&cs, "isoexp-run").state, State::Running);

        let args = std::fs::read(&args_file).unwrap();
        let args: Vec<String> = args
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            args,
            strings(&[
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                "label=io.sidespawn.managed-by=sidespawn",
                "--filter",
                "label=io.sidespawn.instance=isoexp",
                "--format",
                PS_FORMAT,
            ])
        );
    }

    #[test]
    fn unparsable_list_output_is_a_parse_error() {
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "echo 'WARN[0000] not json'");
        let err = Podman::new(podman, Duration::from_secs(10))
            .list("i")
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Parse { .. }), "{err}");
    }

    // ---- argv building and quoting ----

    #[test]
    fn request_argv_always_lands_after_the_image() {
        let hostile = ["--privileged", "-v", "/:/host", "--net=host", ""];
        let s = spec("sidespawn-dnsmasq-x", &hostile);
        let a = run_args(&s);
        let img = a.iter().position(|w| w == "localhost/dnsmasq:1").unwrap();
        assert_eq!(a[img - 1], "--", "options end before the image");
        assert_eq!(
            a[..img - 1],
            strings(&[
                "run",
                "-d",
                "--name=sidespawn-dnsmasq-x",
                "--label=io.sidespawn.kind=dnsmasq",
                "--label=io.sidespawn.managed-by=sidespawn",
                "--network",
                "ns:/run/netns/qdhcp-1",
                "--pid",
                "host",
                "--entrypoint",
                "dnsmasq",
            ])
        );
        assert_eq!(
            a[img + 1..],
            strings(&["-k", "--privileged", "-v", "/:/host", "--net=host", ""])
        );
    }

    #[test]
    fn values_that_look_like_options_stay_values() {
        let mut s = spec("-v", &[]);
        s.labels
            .insert("io.sidespawn.tag".to_owned(), "--privileged".to_owned());
        s.image = "--privileged".to_owned();
        let a = run_args(&s);
        let end = a.iter().position(|w| w == "--").unwrap();
        assert!(a[..end].contains(&"--name=-v".to_owned()));
        assert!(a[..end].contains(&"--label=io.sidespawn.tag=--privileged".to_owned()));
        assert!(!a[..end].iter().any(|w| w == "--privileged" || w == "-v"));
        assert_eq!(a[end + 1], "--privileged", "the image, after --");
    }

    #[test]
    fn describe_prints_the_exact_command_line() {
        let p = Podman::new("/usr/bin/podman", Duration::from_secs(1));
        assert_eq!(
            p.describe(&Call::List("abc".into())),
            format!(
                "/usr/bin/podman ps -a --no-trunc --filter label=io.sidespawn.managed-by=sidespawn --filter label=io.sidespawn.instance=abc --format '{PS_FORMAT}'"
            )
        );
        assert_eq!(
            p.describe(&Call::Kill("sidespawn-a".into(), Signal::Hup)),
            "/usr/bin/podman kill --signal=HUP -- sidespawn-a"
        );
        assert_eq!(
            p.describe(&Call::Stop("a b".into(), Duration::from_millis(1500))),
            "/usr/bin/podman stop --time=2 -- 'a b'"
        );
        assert_eq!(
            p.describe(&Call::Remove("x".into())),
            "/usr/bin/podman rm --force --time=0 -- x"
        );
        let run = p.describe(&Call::Run(spec("n", &["--conf-file=", "it's"])));
        assert!(
            run.ends_with(
                " --entrypoint dnsmasq -- localhost/dnsmasq:1 -k --conf-file= 'it'\\''s'"
            ),
            "{run}"
        );
        assert_eq!(
            Podman::new("/opt/my podman", Duration::from_secs(1)).describe(&Call::List("i".into()))
                [..16],
            *"'/opt/my podman'"
        );
        let fake = FakeRuntime::default();
        assert_eq!(
            fake.describe(&Call::Kill("a".into(), Signal::Kill)),
            "podman kill --signal=KILL -- a"
        );
    }

    #[test]
    fn stop_rounds_sub_second_grace_up() {
        assert_eq!(stop_secs(Duration::ZERO), 0);
        assert_eq!(stop_secs(Duration::from_millis(1)), 1);
        assert_eq!(stop_secs(Duration::from_secs(10)), 10);
    }

    // ---- the command helper, with fake podman programs ----

    #[test]
    fn arguments_reach_podman_byte_exact() {
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "printf '%s\\0' \"$@\" > \"$ARGS\"");
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        p.kill("-x odd name", Signal::Term).unwrap();
        assert_eq!(
            std::fs::read(&args_file).unwrap(),
            b"kill\0--signal=TERM\0--\0-x odd name\0"
        );
    }

    #[test]
    fn run_returns_the_printed_id() {
        let tmp = Scratch::new();
        let p = Podman::new(
            tmp.script("podman", "echo '  4e9c4f2bb866  '"),
            Duration::from_secs(10),
        );
        assert_eq!(p.run(&spec("n", &[])).unwrap(), "4e9c4f2bb866");
        let silent = Podman::new(tmp.script("silent", "exit 0"), Duration::from_secs(10));
        let err = silent.run(&spec("n", &[])).unwrap_err();
        assert!(matches!(err, RuntimeError::Parse { .. }), "{err}");
    }

    #[test]
    fn ensure_image_verifies_or_pulls_and_says_why_not() {
        let tmp = Scratch::new();
        // `image exists` of an absent image: exit 1, nothing on stderr.
        let podman = tmp.script(
            "podman",
            "printf '%s\\0' \"$@\" >> \"$ARGS\"\nif [ \"$1\" = image ]; then [ \"$4\" = here ] && exit 0; exit 1; fi\nexit 0",
        );
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        p.ensure_image("here", false).unwrap();
        let err = p.ensure_image("-gone", false).unwrap_err();
        assert_eq!(err, RuntimeError::NoSuchImage("-gone".into()));
        assert!(err.to_string().contains("--pull"), "{err}");
        p.ensure_image("far", true).unwrap();
        assert_eq!(
            std::fs::read(&args_file).unwrap(),
            b"image\0exists\0--\0here\0image\0exists\0--\0-gone\0pull\0--quiet\0--\0far\0"
        );
        // Any other failure of `image exists` is not "absent".
        let broken = Podman::new(
            tmp.script("broken", "echo 'Error: database is locked' >&2\nexit 125"),
            Duration::from_secs(10),
        );
        let err = broken.ensure_image("x", false).unwrap_err();
        assert!(err.to_string().contains("database is locked"), "{err}");
    }

    #[test]
    fn probe_image_runs_a_throwaway_container_without_network() {
        let tmp = Scratch::new();
        let podman = tmp.script(
            "podman",
            "printf '%s\\0' \"$@\" > \"$ARGS\"\necho 'Error: x:1: image not known' >&2\nexit 125",
        );
        let args_file = tmp.file("args");
        let p = Podman::new(podman, Duration::from_secs(10))
            .with_env("ARGS", args_file.to_string_lossy());
        let err = p
            .probe_image(
                "x:1",
                &strings(&["dnsmasq", "--version"]),
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(err, RuntimeError::NoSuchImage("x:1".into()));
        assert_eq!(
            std::fs::read(&args_file).unwrap(),
            b"run\0--rm\0--pull=never\0--network=none\0--cap-drop=all\0--\0x:1\0dnsmasq\0--version\0"
        );
    }

    #[test]
    fn non_zero_exit_is_failed_with_stderr() {
        let tmp = Scratch::new();
        let podman = tmp.script(
            "podman",
            "echo 'WARN[0000] a warning' >&2\necho 'Error: something broke' >&2\nexit 3",
        );
        let err = Podman::new(podman, Duration::from_secs(10))
            .kill("n", Signal::Hup)
            .unwrap_err();
        match &err {
            RuntimeError::Failed {
                args,
                status,
                stderr,
            } => {
                assert_eq!(args, "podman kill --signal=HUP -- n");
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "WARN[0000] a warning\nError: something broke");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(err.to_string().contains("something broke"));
    }

    #[test]
    fn long_stderr_keeps_its_last_4_kib() {
        let tmp = Scratch::new();
        let podman = tmp.script(
            "podman",
            "i=0\nwhile [ $i -lt 3000 ]; do echo \"WARN[0000] noise line $i\" >&2; i=$((i+1)); done\n\
             echo 'Error: the real reason' >&2\nexit 125",
        );
        let err = Podman::new(podman, Duration::from_secs(10))
            .list("i")
            .unwrap_err();
        let RuntimeError::Failed { stderr, .. } = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(stderr.len() <= STDERR_SHOWN + 6, "{}", stderr.len());
        assert!(stderr.starts_with("[...] "));
        assert!(stderr.ends_with("Error: the real reason"));
    }

    #[test]
    fn capped_reads_keep_the_chosen_end() {
        let input: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (head, cut) = read_capped(&input[..], 1000, Keep::Head);
        assert!(cut);
        assert_eq!(head, input[..1000]);
        let (tail, cut) = read_capped(&input[..], 1000, Keep::Tail);
        assert!(cut);
        assert_eq!(tail, input[input.len() - 1000..]);
        let (all, cut) = read_capped(&input[..10], 1000, Keep::Tail);
        assert!(!cut);
        assert_eq!(all, input[..10]);
    }

    #[test]
    fn missing_container_errors_are_classified() {
        let tmp = Scratch::new();
        let gone = tmp.script(
            "gone",
            "echo 'Error: no container with name or ID \"x\" found: no such container' >&2\nexit 125",
        );
        let p = Podman::new(gone, Duration::from_secs(10));
        assert!(matches!(
            p.kill("x", Signal::Hup),
            Err(RuntimeError::NoSuchContainer(n)) if n == "x"
        ));
        assert!(matches!(
            p.stop("x", Duration::from_secs(1)),
            Err(RuntimeError::NoSuchContainer(n)) if n == "x"
        ));
        p.remove("x")
            .expect("removing a missing container succeeds");

        let exited = tmp.script(
            "exited",
            "echo 'Error: can only kill running containers. 4e9c is in state exited: container state improper' >&2\nexit 125",
        );
        let p = Podman::new(exited, Duration::from_secs(10));
        assert!(matches!(
            p.kill("x", Signal::Hup),
            Err(RuntimeError::NotRunning(n)) if n == "x"
        ));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Podman::new("/nonexistent/sidespawn/podman", Duration::from_secs(1))
            .list("i")
            .unwrap_err();
        match &err {
            RuntimeError::Spawn { program, message } => {
                assert_eq!(program, "/nonexistent/sidespawn/podman");
                assert!(message.contains("not installed"), "{message}");
            }
            other => panic!("expected Spawn, got {other:?}"),
        }
        assert!(err.to_string().contains("install podman"));
    }

    #[test]
    fn hanging_podman_is_killed_with_its_children() {
        let tmp = Scratch::new();
        // The helper `sleep` stands for a stuck runc: not podman itself, but
        // in its process group.
        let podman = tmp.script("podman", "sleep 30 &\necho $! > \"$PIDFILE\"\nwait");
        let pidfile = tmp.file("pid");
        let p = Podman::new(podman, Duration::from_millis(300))
            .with_env("PIDFILE", pidfile.to_string_lossy());
        let t = Instant::now();
        let err = p.list("i").unwrap_err();
        let took = t.elapsed();
        assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(err.to_string().contains("timed out"));
        let helper = std::fs::read_to_string(&pidfile).unwrap();
        assert!(wait_dead(helper.trim()), "helper {helper} still alive");
    }

    #[test]
    fn output_held_open_after_exit_is_freed_by_killing_the_group() {
        let tmp = Scratch::new();
        // Prints its answer and exits, but leaves a process in its group
        // holding stdout and stderr.
        let podman = tmp.script(
            "podman",
            "echo abc123\nsleep 30 &\necho $! > \"$PIDFILE\"\nexit 0",
        );
        let pidfile = tmp.file("pid");
        let p = Podman::new(podman, Duration::from_secs(20))
            .with_env("PIDFILE", pidfile.to_string_lossy());
        let t = Instant::now();
        assert_eq!(p.run(&spec("n", &[])).unwrap(), "abc123");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let leftover = std::fs::read_to_string(&pidfile).unwrap();
        assert!(
            wait_dead(leftover.trim()),
            "leftover {leftover} still alive"
        );
    }

    #[test]
    fn output_held_open_outside_the_group_fails_without_hanging() {
        let tmp = Scratch::new();
        // setsid puts the leftover out of reach of the group kill.
        let podman = tmp.script(
            "podman",
            "setsid sleep 30 &\necho $! > \"$PIDFILE\"\nexit 0",
        );
        let pidfile = tmp.file("pid");
        let p = Podman::new(podman, Duration::from_secs(20))
            .with_env("PIDFILE", pidfile.to_string_lossy());
        let t = Instant::now();
        let err = p.list("i").unwrap_err();
        let took = t.elapsed();
        let leftover = std::fs::read_to_string(&pidfile).unwrap();
        if let Ok(pid) = leftover.trim().parse() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), NixSignal::SIGKILL);
        }
        assert!(
            matches!(&err, RuntimeError::Failed { stderr, .. } if stderr.contains("kept its output open")),
            "{err}"
        );
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn stop_gets_its_grace_time_on_top_of_the_call_timeout() {
        let tmp = Scratch::new();
        let slow = tmp.script("podman", "sleep 1");
        let p = Podman::new(slow, Duration::from_millis(300));
        p.stop("n", Duration::from_secs(2))
            .expect("a 1 s stop is within 300 ms + 2 s");
        assert!(matches!(
            p.kill("n", Signal::Hup),
            Err(RuntimeError::Timeout { .. })
        ));
    }

    #[test]
    fn scrubbed_variables_cannot_be_added_back() {
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "env > \"$OUT\"");
        let out = tmp.file("env");
        Podman::new(podman, Duration::from_secs(10))
            .with_env("OUT", out.to_string_lossy())
            .with_env("INVOCATION_ID", "0123")
            .with_env("NOTIFY_SOCKET", "/run/systemd/notify")
            .with_env("SIDESPAWN_MARK", "extra")
            .list("i")
            .unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(env.lines().any(|l| l == "SIDESPAWN_MARK=extra"), "{env}");
        assert!(!env.contains("INVOCATION_ID="), "{env}");
        assert!(!env.contains("NOTIFY_SOCKET="), "{env}");
    }

    /// Run by `invocation_id_of_the_service_never_reaches_podman` in a child
    /// process whose environment has `INVOCATION_ID` set, as under systemd
    /// (setting it in this process would leak into tests running alongside).
    #[test]
    #[ignore = "helper: run in a child process by invocation_id_of_the_service_never_reaches_podman"]
    fn child_dumps_podman_env() {
        assert!(
            std::env::var_os("SIDESPAWN_ENV_DUMP").is_some(),
            "run by the parent test"
        );
        assert_eq!(
            std::env::var("INVOCATION_ID").as_deref(),
            Ok("5e1f"),
            "the parent sets it"
        );
        let tmp = Scratch::new();
        let podman = tmp.script("podman", "env > \"$SIDESPAWN_ENV_DUMP\"");
        Podman::new(podman, Duration::from_secs(10))
            .list("i")
            .unwrap();
    }

    #[test]
    fn invocation_id_of_the_service_never_reaches_podman() {
        let tmp = Scratch::new();
        let dump = tmp.file("env");
        // libtest names a test by its module path without the crate name.
        let (_crate, module) = module_path!().split_once("::").unwrap();
        let child = format!("{module}::child_dumps_podman_env");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &child,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("INVOCATION_ID", "5e1f")
            .env("SIDESPAWN_ENV_DUMP", &dump)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child test failed or did not run:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(&dump).unwrap();
        // Inherited variables do reach podman...
        assert!(env.contains("SIDESPAWN_ENV_DUMP="), "{env}");
        // ...but not this one.
        assert!(!env.contains("INVOCATION_ID"), "{env}");
    }
}
