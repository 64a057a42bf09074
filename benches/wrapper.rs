//! How much a start request costs the agent: `sidespawn-wrapper` against a
//! static no-op (the floor of any exec) and against the shell wrapper TripleO
//! used for the same job, each run as Neutron runs it, inside a named network
//! namespace.
//!
//! `cargo bench --bench wrapper` builds the statically linked wrapper the way
//! it is shipped, creates a namespace for the run, and times exec to exit of
//! each program `SIDESPAWN_BENCH_RUNS` times (default 300). It is a report,
//! not a test: it exits 0 whatever the numbers are, and fails only when it
//! cannot measure (a program under test that does not do its job counts as
//! that, so a failing wrapper can never look fast).
//!
//! Peak RSS comes from `wait4`'s `ru_maxrss`. Linux charges a child with the
//! RSS high-water mark of the address space it had before exec, so the
//! programs are forked from a small launcher process (this binary, re-run
//! with `--sidespawn-launcher`) rather than from the bench itself, and the
//! launcher's own charge (fork, then exit without exec) is printed as the
//! floor under every figure.
//!
//! The runs stay on one CPU and go in blocks of [`BLOCK`] per program, each
//! block after one untimed run: on a small VM, cross-CPU wakeups and the
//! shell wrapper's cache-cooling otherwise show up as the programs' cost.
//! `cargo test --all-targets` also runs this file; without `--bench` it does
//! nothing.
//!
//! A busy node: the same start request, against the no-op, with 1,000 and
//! 5,000 entries in `/run/netns` (`SIDESPAWN_BENCH_NETNS`, a comma-separated
//! list of counts, `0` for none), topped up with namespaces named
//! `ssbench<pid>-<n>` that are deleted at the end, also after a panic or a
//! signal; and the same without `PROCESS_TAG`, where every entry is compared.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "support/host.rs"]
mod host;
#[allow(dead_code)]
#[path = "support/report.rs"]
mod report;

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use host::TempDir;
use nix::libc;
use sidespawn::shared::kind::Kind;
use sidespawn::shared::record::{Action, Record};

/// argv\[1\] that turns this binary into the launcher.
const LAUNCHER_FLAG: &str = "--sidespawn-launcher";
/// Runs per program unless `SIDESPAWN_BENCH_RUNS` says otherwise.
const DEFAULT_RUNS: usize = 300;
/// Fewer runs than this make the p99 little more than the maximum.
const MIN_MEANINGFUL_RUNS: usize = 200;
/// Runs of one program in a row. After each block its queue is checked and
/// emptied, so it stays small and the cost of an append does not drift with
/// the length of the file.
const BLOCK: usize = 50;
/// Targets from the design: near the cost of exec itself, an order of
/// magnitude under the shell wrapper, and small.
const TARGET_RATIO_NOOP: f64 = 1.5;
const TARGET_SPEEDUP_SHELL: f64 = 10.0;
const TARGET_RSS_KIB: u64 = 2 * 1024;

/// A typical Neutron DHCP agent start of dnsmasq, so the wrapper serializes a
/// record of realistic size.
const DNSMASQ_ARGS: &[&str] = &[
    "--no-hosts",
    "--no-resolv",
    "--pid-file=/var/lib/neutron/dhcp/3f6a9c1e-7d21-4a4b-9a57-2f0c0c7de4b1/pid",
    "--dhcp-hostsfile=/var/lib/neutron/dhcp/3f6a9c1e-7d21-4a4b-9a57-2f0c0c7de4b1/host",
    "--addn-hosts=/var/lib/neutron/dhcp/3f6a9c1e-7d21-4a4b-9a57-2f0c0c7de4b1/addn_hosts",
    "--dhcp-optsfile=/var/lib/neutron/dhcp/3f6a9c1e-7d21-4a4b-9a57-2f0c0c7de4b1/opts",
    "--dhcp-leasefile=/var/lib/neutron/dhcp/3f6a9c1e-7d21-4a4b-9a57-2f0c0c7de4b1/leases",
    "--dhcp-match=set:ipxe,175",
    "--dhcp-userclass=set:ipxe6,iPXE",
    "--local-service",
    "--bind-dynamic",
    "--dhcp-range=set:subnet-8c2f0f5e-5a43-4bd8-9d0c-1b9a3b9ad0e2,10.0.0.0,static,255.255.255.0,86400s",
    "--dhcp-option-force=option:mtu,1442",
    "--dhcp-lease-max=256",
    "--conf-file=/dev/null",
    "--domain=openstacklocal",
];
/// The network id of the run, in the namespace's name (`qdhcp-<id>`) and the
/// tag (`dnsmasq-<id>`) as Neutron names them: unique to the run, so other
/// work on the host's `/run/netns` is never touched.
fn network_id() -> String {
    format!("5b1de000-0000-4000-8000-{:012x}", std::process::id())
}
/// Namespace counts in `/run/netns` for the busy-node rows, unless
/// `SIDESPAWN_BENCH_NETNS` says otherwise (`0` or empty: none).
const DEFAULT_NETNS_COUNTS: &str = "1000,5000";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).map(OsString::as_os_str) == Some(OsStr::new(LAUNCHER_FLAG)) {
        return match launcher(&args[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wrapper bench launcher: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `cargo test --all-targets` runs this file too, without `--bench`: a
    // minute of static build and a thousand execs are no test, so skip.
    if !args.iter().any(|a| a == "--bench") {
        println!("wrapper bench: not run; `cargo bench --bench wrapper` runs it");
        return ExitCode::SUCCESS;
    }
    if !nix::unistd::geteuid().is_root() || !have_ip() {
        println!("SKIPPED: needs root and iproute2");
        return ExitCode::SUCCESS;
    }
    host::install_cleanup_handlers();
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wrapper bench: cannot measure: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn have_ip() -> bool {
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn bench() -> Result<(), Error> {
    let runs = match std::env::var("SIDESPAWN_BENCH_RUNS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("SIDESPAWN_BENCH_RUNS={v:?} is not a positive count"))?,
        Err(_) => DEFAULT_RUNS,
    };
    if runs < MIN_MEANINGFUL_RUNS {
        println!("note: {runs} runs; p99 needs about {MIN_MEANINGFUL_RUNS} to mean much");
    }

    let wrapper = static_wrapper()?;
    let tmp = TempDir::new("sidespawn-bench");
    // Private: the programs measured and their records are the bench's own.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700))?;
    let noop = build_noop(tmp.path())?;

    let id = network_id();
    let tag = format!("dnsmasq-{id}");
    let ns_name = format!("qdhcp-{id}");
    let ns = match Netns::add(&ns_name) {
        Ok(ns) => ns,
        Err(e) => {
            // Root without the capability (an unprivileged container) is
            // the same situation as not being root.
            println!("SKIPPED: needs root and iproute2 ({e})");
            return Ok(());
        }
    };

    // The wrapper's view: queue directory made beforehand, as the host does.
    let queue_root = tmp.path().join("queue");
    let wrapper_queue = queue_root.join(Kind::Dnsmasq.as_str());
    fs::create_dir_all(&wrapper_queue)?;
    let config = tmp.path().join("wrapper.json");
    fs::write(
        &config,
        serde_json::json!({
            "queue_root": queue_root,
            "netns_dir": NETNS_DIR,
            "kinds": { "dnsmasq": {} },
        })
        .to_string(),
    )?;
    let shell_dir = tmp.path().join("tripleo");
    fs::create_dir_all(&shell_dir)?;
    let shell = write_shell_wrapper(tmp.path(), &shell_dir)?;

    let env = [
        ("SIDESPAWN_WRAPPER_CONFIG", config.as_os_str()),
        ("PROCESS_TAG", OsStr::new(&tag)),
    ];
    // All three are called as Neutron calls them: by the name `dnsmasq`
    // (the wrapper is bind-mounted over it), with the same arguments.
    let mut programs = [
        Program::new("static no-op (a)", &noop, Check::None),
        Program::new(
            "sidespawn-wrapper",
            &wrapper,
            Check::Wrapper(
                wrapper_queue.join(sidespawn::shared::queue::QUEUE_FILE),
                Some(tag.clone()),
            ),
        ),
        Program::new(
            "TripleO shell wrapper (b)",
            &shell,
            Check::Shell(shell_dir.join("processes")),
        ),
    ];
    // Other work on the machine moves every figure; say how busy it was.
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    let cpu = pin_to_one_cpu();
    let here = netns_entries();
    println!(
        "measuring {runs} runs of each program in network namespace {ns_name} ({here} entries in {NETNS_DIR})..."
    );
    let floor = measure(runs, &mut programs, ns.path(), &ns_name, &env)?;
    report(runs, &programs, &floor, &wrapper, cpu, load, here);

    // A busy node: the same start request with thousands of namespaces in
    // /run/netns beside the one it runs in.
    let counts = std::env::var("SIDESPAWN_BENCH_NETNS").unwrap_or(DEFAULT_NETNS_COUNTS.into());
    let counts: Vec<usize> = counts
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<usize>()
                .map_err(|_| format!("SIDESPAWN_BENCH_NETNS={counts:?}: {c:?} is not a count"))
        })
        .collect::<Result<_, _>>()?;
    let busy_runs = runs.min(BUSY_RUNS);
    let mut busy = Vec::new();
    let mut fillers: Vec<host::NetnsSet> = Vec::new();
    let prefix = format!("ssbench{}-", std::process::id());
    for &count in counts.iter().filter(|&&c| c > 0) {
        // Top the directory up to `count` entries with namespaces of our own.
        let have = fillers.iter().map(|f| f.names.len()).sum::<usize>();
        let want = count.saturating_sub(1);
        if want > have {
            let names = (have..want).map(|i| format!("{prefix}{i}")).collect();
            fillers.push(host::NetnsSet::create(names)?);
        }
        let here = netns_entries();
        let mut progs = [
            Program::new("static no-op (a)", &noop, Check::None),
            Program::new(
                "sidespawn-wrapper",
                &wrapper,
                Check::Wrapper(
                    wrapper_queue.join(sidespawn::shared::queue::QUEUE_FILE),
                    Some(tag.clone()),
                ),
            ),
        ];
        println!("measuring {busy_runs} runs of each with {here} entries in {NETNS_DIR}...");
        measure(busy_runs, &mut progs, ns.path(), &ns_name, &env)?;
        // The same without PROCESS_TAG: no candidate names, every entry
        // compared (what a caller other than Neutron pays).
        let mut scan = [
            Program::new("static no-op (a)", &noop, Check::None),
            Program::new(
                "sidespawn-wrapper, no PROCESS_TAG",
                &wrapper,
                Check::Wrapper(
                    wrapper_queue.join(sidespawn::shared::queue::QUEUE_FILE),
                    None,
                ),
            ),
        ];
        measure(busy_runs, &mut scan, ns.path(), &ns_name, &env[..1])?;
        busy.push((here, progs, scan));
    }
    drop(fillers);
    if !busy.is_empty() {
        report_busy(busy_runs, &busy);
    }
    drop(ns);
    drop(tmp);
    Ok(())
}

/// Runs per program in each busy-node row (fewer than the main rows: each
/// count of namespaces is set up once).
const BUSY_RUNS: usize = 200;

/// Entries in the netns directory now (other work on the host has some too).
fn netns_entries() -> usize {
    fs::read_dir(NETNS_DIR).map(|d| d.count()).unwrap_or(0)
}

/// Times `runs` exec-to-exit runs of each program and checks their output;
/// returns the launcher's own fork + wait (the floor of every sample).
fn measure(
    runs: usize,
    programs: &mut [Program],
    ns_path: &Path,
    ns_name: &str,
    env: &[(&str, &OsStr)],
) -> Result<Vec<Sample>, Error> {
    host::check_interrupted()?;
    let mut launchers = programs
        .iter()
        .map(|p| Launcher::start(ns_path, &p.path, env))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done = 0;
    let mut round = 0;
    while done < runs {
        let n = BLOCK.min(runs - done);
        // Blocks, in a rotating order, so slow drift of the machine spreads
        // over all programs; not run by run, because the shell wrapper's
        // five processes leave the caches cold for whatever runs next,
        // which costs the small programs proportionally more.
        for k in 0..programs.len() {
            let p = (round + k) % programs.len();
            // One untimed run first, to warm the caches the previous block
            // cooled.
            for j in 0..=n {
                let s = launchers[p].run(Run::Exec)?;
                if s.status != 0 {
                    return Err(format!(
                        "{} exited with wait status {:#x} (its stderr is above)",
                        programs[p].label, s.status
                    )
                    .into());
                }
                if j > 0 {
                    programs[p].samples.push(s);
                }
            }
            let prog = &mut programs[p];
            prog.verified += prog.check.verify_and_truncate(n + 1, ns_name)?;
        }
        done += n;
        round += 1;
    }
    // What every row includes that is not the program: fork and wait in the
    // launcher, and the RSS Linux charges the child for the launcher's pages.
    let floor: Vec<Sample> = (0..runs.min(100))
        .map(|_| launchers[0].run(Run::ForkOnly))
        .collect::<Result<_, _>>()?;
    Ok(floor)
}

/// The busy-node rows: the wrapper against the static no-op measured beside
/// it, for each count of namespaces.
fn report_busy(runs: usize, busy: &[(usize, [Program; 2], [Program; 2])]) {
    let mut t = report::Table::figures();
    t.section(format!(
        "Wrapper on a busy node: a start request with thousands of namespaces in {NETNS_DIR} ({runs} runs each)"
    ));
    println!();
    println!("wrapper start request on a busy node ({runs} runs each, same netns)");
    for (here, progs, scan) in busy {
        let a = stats(&progs[0].samples);
        let w = stats(&progs[1].samples);
        let a2 = stats(&scan[0].samples);
        let w2 = stats(&scan[1].samples);
        let ratio = w.median.as_secs_f64() / a.median.as_secs_f64();
        let ratio2 = w2.median.as_secs_f64() / a2.median.as_secs_f64();
        println!(
            "{here:>6} entries: no-op {} | wrapper {} ({ratio:.2} × no-op) | without PROCESS_TAG {} ({ratio2:.2} × no-op beside it, {})",
            ms(a.median),
            ms(w.median),
            ms(w2.median),
            ms(a2.median),
        );
        t.row([
            format!("static no-op, {here} namespaces (baseline)"),
            report::fmt_dur(a.median),
            report::fmt_dur(a.p99),
            report::fmt_kib(a.peak_rss_kib),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
        t.row([
            format!("sidespawn-wrapper, {here} namespaces, vs the no-op"),
            report::fmt_dur(w.median),
            report::fmt_dur(w.p99),
            report::fmt_kib(w.peak_rss_kib),
            report::fmt_dur(a.median),
            format!("{ratio:.2}×"),
            format!("≤ {TARGET_RATIO_NOOP}×"),
            report::verdict(ratio <= TARGET_RATIO_NOOP),
        ]);
        t.row([
            "  the same without PROCESS_TAG (every entry compared)".to_owned(),
            report::fmt_dur(w2.median),
            report::fmt_dur(w2.p99),
            report::fmt_kib(w2.peak_rss_kib),
            report::fmt_dur(a2.median),
            format!("{ratio2:.2}×"),
            "-".into(),
            "-".into(),
        ]);
    }
    println!();
    t.print();
    println!(
        "the namespace is found among the names Neutron gives it (qdhcp-<id> for PROCESS_TAG dnsmasq-<id>)"
    );
    println!(
        "  before any scan; without a tag every entry is compared, as `ip netns identify` does"
    );
}

const NETNS_DIR: &str = "/run/netns";

/// A program under test and what it measured.
struct Program {
    label: &'static str,
    path: PathBuf,
    check: Check,
    samples: Vec<Sample>,
    verified: usize,
}

impl Program {
    fn new(label: &'static str, path: &Path, check: Check) -> Self {
        Program {
            label,
            path: path.to_owned(),
            check,
            samples: Vec::new(),
            verified: 0,
        }
    }
}

/// How to tell that a program did its job.
enum Check {
    None,
    /// The queue file must hold one valid record per call, naming the
    /// namespace and carrying the arguments unchanged.
    Wrapper(PathBuf, Option<String>),
    /// The shell wrapper's file must hold one `"<netns> <args>"` line per
    /// call.
    Shell(PathBuf),
}

impl Check {
    /// Checks the records of the last `calls` calls and empties the file.
    /// Returns how many records it checked.
    fn verify_and_truncate(&self, calls: usize, ns: &str) -> Result<usize, Error> {
        let path = match self {
            Check::None => return Ok(0),
            Check::Wrapper(p, _) | Check::Shell(p) => p,
        };
        let text = fs::read_to_string(path)
            .map_err(|e| format!("{}: {e} (after {calls} calls)", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != calls {
            return Err(format!(
                "{} has {} lines after {calls} calls",
                path.display(),
                lines.len()
            )
            .into());
        }
        let shell_line = format!("{ns} {}", DNSMASQ_ARGS.join(" "));
        for line in &lines {
            match self {
                Check::Wrapper(_, tag) => {
                    let r = Record::parse_line(line.as_bytes())
                        .map_err(|e| format!("invalid record {line:?}: {e}"))?;
                    let ok = r.kind == Kind::Dnsmasq
                        && r.action == Action::Start
                        && r.argv == DNSMASQ_ARGS
                        && r.netns.as_ref().is_some_and(|n| n.name == ns)
                        && r.tag == *tag;
                    if !ok {
                        return Err(format!("record does not match the call: {line}").into());
                    }
                }
                Check::Shell(_) if *line != shell_line => {
                    return Err(format!("shell wrapper wrote {line:?}").into());
                }
                _ => {}
            }
        }
        // Emptied between runs, never inside a timed one.
        File::options().write(true).open(path)?.set_len(0)?;
        Ok(lines.len())
    }
}

/// One exec to exit, as the launcher saw it.
#[derive(Clone, Copy)]
struct Sample {
    elapsed: Duration,
    maxrss_kib: u64,
    status: i32,
}

#[derive(Clone, Copy)]
enum Run {
    /// fork, exec the program, wait.
    Exec,
    /// fork, exit at once, wait: the launcher's share of every sample.
    ForkOnly,
}

/// A launcher process inside the namespace, running one program on request.
struct Launcher {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Launcher {
    fn start(netns: &Path, program: &Path, env: &[(&str, &OsStr)]) -> Result<Self, Error> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(LAUNCHER_FLAG)
            .arg(netns)
            .arg(Kind::Dnsmasq.as_str())
            .arg(program)
            .args(DNSMASQ_ARGS)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("launcher has no stdout")?);
        Ok(Launcher {
            child,
            stdin,
            stdout,
        })
    }

    fn run(&mut self, run: Run) -> Result<Sample, Error> {
        let stdin = self.stdin.as_mut().ok_or("launcher closed")?;
        stdin.write_all(match run {
            Run::Exec => b"exec\n",
            Run::ForkOnly => b"fork\n",
        })?;
        stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("launcher exited (its error is above)".into());
        }
        let f: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("launcher said {line:?}: {e}"))?;
        let [ns, rss, status] = f[..] else {
            return Err(format!("launcher said {line:?}").into());
        };
        Ok(Sample {
            elapsed: Duration::from_nanos(ns),
            maxrss_kib: rss,
            status: status as i32,
        })
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // End of input is the launcher's signal to exit.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The launcher: enters the namespace once, then for each request line forks
/// and execs the program (or only forks) and reports elapsed nanoseconds, the
/// child's `ru_maxrss` in KiB and its wait status. Single-threaded, so the
/// forked child may do anything; it does only dup2, execve and _exit.
fn launcher(args: &[OsString]) -> Result<(), Error> {
    let [netns, argv0, program, rest @ ..] = args else {
        return Err("usage: --sidespawn-launcher NETNS ARGV0 PROGRAM ARGS...".into());
    };
    let ns = File::open(netns)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    drop(ns);
    // The programs print nothing when they succeed; stdout is our pipe to the
    // bench, so they get /dev/null. stderr stays, to show why one failed.
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let null_fd = std::os::fd::AsRawFd::as_raw_fd(&null);

    let cstr = |s: &OsStr| CString::new(s.as_bytes());
    let program = cstr(program)?;
    let argv: Vec<CString> = std::iter::once(argv0)
        .chain(rest)
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstr(&kv)
        })
        .collect::<Result<_, _>>()?;
    // Pointer arrays built before the loop: the child between fork and exec
    // allocates nothing.
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let argv_p = ptrs(&argv);
    let envp_p = ptrs(&envp);

    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let exec = match line?.as_str() {
            "exec" => true,
            "fork" => false,
            other => return Err(format!("unknown request {other:?}").into()),
        };
        let start = Instant::now();
        // SAFETY: this process has one thread, so the child inherits no lock
        // held elsewhere; it calls only async-signal-safe functions on data
        // prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; the pointer arrays are NULL-terminated and
            // their strings outlive the call.
            unsafe {
                libc::dup2(null_fd, 0);
                libc::dup2(null_fd, 1);
                if exec {
                    libc::execve(program.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
                    libc::_exit(127);
                }
                libc::_exit(0);
            }
        }
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()).into());
        }
        let mut status = 0;
        // SAFETY: rusage is plain data; zeroes are a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: pid is our child; both pointers are to live locals.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if r == pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("wait4: {e}").into());
            }
        }
        let elapsed = start.elapsed();
        writeln!(
            out,
            "{} {} {}",
            elapsed.as_nanos(),
            ru.ru_maxrss,
            status as u32
        )?;
        out.flush()?;
    }
    Ok(())
}

/// Pins this process, and so the launchers and every program they run, to
/// one CPU. On the VMs this was written on, a child woken on another, idle
/// vCPU sometimes waited for the next timer tick (about 4 ms) before it ran:
/// that swamped the sub-millisecond times measured here, at random. On one
/// CPU, fork, child and wait hand over directly. Returns the CPU.
fn pin_to_one_cpu() -> Option<usize> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
    // The last allowed CPU: CPU 0 tends to take more of the interrupts.
    let cpu = (0..CpuSet::count())
        .rev()
        .find(|&c| allowed.is_set(c).unwrap_or(false))?;
    let mut one = CpuSet::new();
    one.set(cpu).ok()?;
    sched_setaffinity(Pid::from_raw(0), &one).ok()?;
    Some(cpu)
}

/// The wrapper as shipped: statically linked, built with the release profile.
/// `SIDESPAWN_STATIC_WRAPPER` names a prebuilt one to use instead.
fn static_wrapper() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("SIDESPAWN_STATIC_WRAPPER").map(PathBuf::from) {
        if p.is_file() {
            println!("using SIDESPAWN_STATIC_WRAPPER={}", p.display());
            return Ok(p);
        }
        println!(
            "SIDESPAWN_STATIC_WRAPPER={} is not a file; building the wrapper",
            p.display()
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("building the static wrapper (cargo rustc --release ... +crt-static)...");
    // The production build command, verbatim.
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "rustc",
            "--release",
            "--bin",
            "sidespawn-wrapper",
            "--target-dir",
            "target/static",
            "--",
            "-C",
            "target-feature=+crt-static",
        ])
        .status()?;
    if !status.success() {
        return Err(format!("building the static wrapper failed: {status}").into());
    }
    let path = root.join("target/static/release/sidespawn-wrapper");
    if !is_static_elf(&path)? {
        println!(
            "warning: {} has an ELF interpreter: it is not statically linked",
            path.display()
        );
    }
    Ok(path)
}

/// True when the ELF file has no PT_INTERP program header, i.e. the kernel
/// runs it without a dynamic loader.
fn is_static_elf(path: &Path) -> Result<bool, Error> {
    const PT_INTERP: u32 = 3;
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let bad = || format!("{} is not a 64-bit little-endian ELF file", path.display());
    if data.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err(bad().into());
    }
    let u = |at: usize, n: usize| -> Result<u64, String> {
        let b = data.get(at..at + n).ok_or_else(bad)?;
        Ok(b.iter().rev().fold(0, |acc, &x| acc << 8 | u64::from(x)))
    };
    let phoff = u(0x20, 8)? as usize;
    let phentsize = u(0x36, 2)? as usize;
    let phnum = u(0x38, 2)? as usize;
    for i in 0..phnum {
        if u(phoff + i * phentsize, 4)? as u32 == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Baseline (a): the cheapest program there is, linked the same way.
fn build_noop(dir: &Path) -> Result<PathBuf, Error> {
    let out = dir.join("noop");
    let c = dir.join("noop.c");
    fs::write(&c, "int main(void) { return 0; }\n")?;
    let gcc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&c)
        .status();
    if gcc.is_ok_and(|s| s.success()) {
        return Ok(out);
    }
    // No C compiler: a Rust no-op, as static as the wrapper. It carries the
    // Rust runtime's start-up, so the ratio against it flatters the wrapper
    // a little; say so.
    println!("note: gcc -static failed; the no-op baseline is a static Rust program");
    let rs = dir.join("noop.rs");
    fs::write(&rs, "fn main() {}\n")?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "-O",
            "-C",
            "panic=abort",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(&rs)
        .status()?;
    if !status.success() {
        return Err("cannot build a static no-op with gcc or rustc".into());
    }
    Ok(out)
}

/// Baseline (b): the steps of TripleO's `tripleo_systemd_wrapper` for a start
/// request. Its template used `#!/usr/bin/env bash`; calling bash directly
/// saves that exec, so the baseline is if anything a little faster than the
/// original.
fn write_shell_wrapper(dir: &Path, state: &Path) -> Result<PathBuf, Error> {
    let state = state
        .to_str()
        .filter(|s| !s.contains('\''))
        .ok_or("temporary directory name cannot be quoted for the shell")?;
    let script = format!(
        r#"#!/bin/bash
ARGS="$*"
NETNS=$(ip netns identify)
exec {{lock_fd}}>'{state}/lock' || exit 1
flock -w 10 "$lock_fd" || exit 1
echo "$NETNS $ARGS" >> '{state}/processes'
date > '{state}/processes-timestamp'
flock -u "$lock_fd"
"#
    );
    let path = dir.join("tripleo-wrapper.sh");
    fs::write(&path, script)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// A named network namespace for the run, removed when dropped (also when
/// the bench panics or fails half-way).
struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn add(name: &str) -> Result<Self, Error> {
        let out = Command::new("ip").args(["netns", "add", name]).output()?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(Netns {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "wrapper bench: could not delete network namespace {}; run `ip netns delete {}`",
                self.name, self.name
            );
        }
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
    peak_rss_kib: u64,
}

fn stats(samples: &[Sample]) -> Stats {
    let mut t: Vec<Duration> = samples.iter().map(|s| s.elapsed).collect();
    t.sort();
    // Nearest rank: the smallest value with at least q of the samples at or
    // below it.
    let rank = |q: f64| t[((q * t.len() as f64).ceil() as usize).clamp(1, t.len()) - 1];
    Stats {
        median: rank(0.5),
        p99: rank(0.99),
        peak_rss_kib: samples.iter().map(|s| s.maxrss_kib).max().unwrap_or(0),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn report(
    runs: usize,
    programs: &[Program],
    floor: &[Sample],
    wrapper: &Path,
    cpu: Option<usize>,
    load: Option<String>,
    netns_entries: usize,
) {
    let [a, w, b] = [0, 1, 2].map(|i| stats(&programs[i].samples));
    let ratio = w.median.as_secs_f64() / a.median.as_secs_f64();
    let speedup = b.median.as_secs_f64() / w.median.as_secs_f64();
    let row = |label: &str, s: &Stats, tail: String| {
        println!(
            "{label:<27} {:>9} {:>9} {:>10}   {tail}",
            ms(s.median),
            ms(s.p99),
            mib(s.peak_rss_kib)
        );
    };
    println!();
    println!("wrapper start request, exec to exit ({runs} runs each, same netns, same machine)");
    println!(
        "{:<27} {:>9} {:>9} {:>10}   ratio (median)",
        "program", "median", "p99", "peak RSS"
    );
    row(programs[0].label, &a, "1.00".into());
    row(
        programs[1].label,
        &w,
        format!(
            "{:<15} target ≤ {TARGET_RATIO_NOOP} × (a)   {}",
            format!("{ratio:.2} × (a)"),
            verdict(ratio <= TARGET_RATIO_NOOP)
        ),
    );
    row(
        programs[2].label,
        &b,
        format!(
            "{:<15} target ≥ {TARGET_SPEEDUP_SHELL}×         {}",
            format!("{speedup:.1} × faster"),
            verdict(speedup >= TARGET_SPEEDUP_SHELL)
        ),
    );
    println!(
        "sidespawn-wrapper peak RSS {}, target ≤ {}: {}",
        mib(w.peak_rss_kib),
        mib(TARGET_RSS_KIB),
        verdict(w.peak_rss_kib <= TARGET_RSS_KIB)
    );
    let mut t = report::Table::figures();
    t.section(format!(
        "Wrapper: a start request, exec to exit, in a named netns ({runs} runs each, {netns_entries} entries in {NETNS_DIR})"
    ));
    let cells = |s: &Stats| {
        [
            report::fmt_dur(s.median),
            report::fmt_dur(s.p99),
            report::fmt_kib(s.peak_rss_kib),
        ]
    };
    let [am, ap, ar] = cells(&a);
    t.row([
        format!("{} (baseline)", programs[0].label),
        am,
        ap,
        ar,
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    let [wm, wp, wr] = cells(&w);
    t.row([
        "sidespawn-wrapper vs the static no-op".to_owned(),
        wm.clone(),
        wp.clone(),
        wr.clone(),
        report::fmt_dur(a.median),
        format!("{ratio:.2}×"),
        format!("≤ {TARGET_RATIO_NOOP}×, ≤ {}", mib(TARGET_RSS_KIB)),
        report::verdict(ratio <= TARGET_RATIO_NOOP && w.peak_rss_kib <= TARGET_RSS_KIB),
    ]);
    t.row([
        "sidespawn-wrapper vs TripleO's shell wrapper".to_owned(),
        wm,
        wp,
        wr,
        report::fmt_dur(b.median),
        format!("{speedup:.1}× faster"),
        format!("≥ {TARGET_SPEEDUP_SHELL}× faster"),
        report::verdict(speedup >= TARGET_SPEEDUP_SHELL),
    ]);
    let [bm, bp, br] = cells(&b);
    t.row([
        format!("{} (baseline)", programs[2].label),
        bm,
        bp,
        br,
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    println!();
    t.print();
    let f = stats(floor);
    println!();
    println!(
        "in every row: the launcher's fork + wait, median {};",
        ms(f.median)
    );
    println!(
        "  and in every peak RSS: the launcher's pages, {}",
        mib(f.peak_rss_kib)
    );
    println!(
        "records checked: {} wrapper records (valid, right netns and argv),",
        programs[1].verified
    );
    println!("  {} shell wrapper lines", programs[2].verified);
    println!("blocks of {BLOCK} runs per program, each after one untimed run (warm caches)");
    match cpu {
        Some(c) => println!("all runs pinned to CPU {c}"),
        None => println!("could not pin to one CPU: expect outliers from cross-CPU wakeups"),
    }
    if let Some(l) = load {
        println!("load average before the runs: {l} (other work here moves the figures)");
    }
    let size = fs::metadata(wrapper).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrapper binary: {} ({:.1} MiB)",
        wrapper.display(),
        size as f64 / (1024.0 * 1024.0)
    );
}
