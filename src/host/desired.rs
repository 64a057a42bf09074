//! The desired-state table: per kind, the sidecars the agents asked for and
//! have not stopped, each with the start record that won and its restart
//! bookkeeping.
//!
//! Podman only remembers containers, and a container can vanish (removed by
//! hand, lost with podman's storage) or exit; the agent only re-requests
//! some kinds (keepalived, radvd) and never dnsmasq or haproxy. This table
//! is what lets a sync start a dead sidecar again with the same argv, and
//! lets `upgrade` replace sidecars without a new request. It lives in the
//! host-private state directory, one entry file per sidecar under
//! `<state_dir>/desired/<kind>/` with its argv in a file of its own written
//! once per request, so the cost of a sync follows what it changes, not
//! the size of every argv (see [`DesiredTable`]). Files are written
//! atomically, only when they change, and only under the kind's sync lock.
//! An unreadable file is never fatal to the other kinds: the sync moves it
//! aside and rebuilds the entry from the sidecar's container ([`recover`]).
//!
//! Planning restarts is pure ([`plan_restarts`]); applying job outcomes to
//! the table is too ([`apply`]), so both are unit-tested without podman.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::config::Profile;
use crate::host::namespaces::Namespaces;
use crate::host::plan::{Job, JobKind, Plan, Step, fnv1a, run_spec};
use crate::host::runtime::{ContainerInfo, SidecarLabels, State, labels};
use crate::host::state::{StateDir, StateError, read_json, write_atomic};
use crate::shared::kind::Kind;
use crate::shared::netns::NetnsError;
use crate::shared::record::Record;

/// Format version of an entry file.
pub const VERSION: u32 = 2;
/// Format version of the single-file table (`desired/<kind>.json`) that
/// entry files replaced; read once and migrated.
const LEGACY_VERSION: u32 = 1;

/// One desired sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSidecar {
    /// The deterministic container name.
    pub container: String,
    /// The start request that won: argv, namespace (with inode), tag, id.
    pub record: Record,
    /// Generation of the container last started for it.
    pub generation: u64,
    /// The image it was last started with.
    pub image: String,
    /// Unix ms of the automatic restarts (attempts included) still inside
    /// the policy's window, oldest first.
    #[serde(default)]
    pub restarts: Vec<u64>,
    /// Why the last start or restart failed, or why it is not restarted.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// What is on disk for one entry, so [`DesiredTable::store`] writes only
/// what changed.
#[derive(Debug, Clone)]
struct Stored {
    /// The entry as its file says, without the argv: compared, not
    /// serialised, to find what changed (cheap with many sidecars).
    entry: DesiredSidecar,
    /// The argv file's name, beside the entry file.
    argv_file: String,
    /// The request whose argv that file holds.
    record_id: String,
}

/// One kind's table: by sidecar key ([`crate::host::plan::key_of`]).
///
/// On disk, one entry file per sidecar, `<state_dir>/desired/<kind>/<stem>.json`
/// (everything but the argv), and beside it the argv, written once per
/// request (`<stem>.<hash of the request id>.argv`), so a restart rewrites a
/// few hundred bytes however big the argv. Loaded without the argv
/// ([`DesiredTable::open`]), an entry's `record.argv` is empty until
/// [`DesiredTable::load_argv`] reads it.
#[derive(Debug, Clone, Default)]
pub struct DesiredTable {
    pub sidecars: BTreeMap<String, DesiredSidecar>,
    stored: BTreeMap<String, Stored>,
    /// Keys whose argv is not loaded.
    lazy: HashSet<String>,
}

impl PartialEq for DesiredTable {
    fn eq(&self, other: &DesiredTable) -> bool {
        self.sidecars == other.sidecars
    }
}

/// An entry (or the whole old table) that could not be read.
#[derive(Debug, Clone)]
pub struct Corrupt {
    /// The file, where it is now (moved aside by a sync).
    pub file: PathBuf,
    /// The entry's file stem; `None` for the old single-file table, which
    /// held every entry of the kind.
    pub stem: Option<String>,
    pub message: String,
}

/// The old single-file table.
#[derive(Deserialize)]
struct LegacyTable {
    v: u32,
    sidecars: BTreeMap<String, DesiredSidecar>,
}

/// An entry file.
#[derive(Serialize, Deserialize)]
struct EntryFile {
    v: u32,
    key: String,
    container: String,
    generation: u64,
    image: String,
    #[serde(default)]
    restarts: Vec<u64>,
    #[serde(default)]
    last_error: Option<String>,
    /// The request without its argv.
    record: Record,
    /// The argv file's name.
    argv_file: String,
}

/// An argv file.
#[derive(Serialize, Deserialize)]
struct ArgvFile {
    /// The request it belongs to, checked against the entry's.
    id: String,
    argv: Vec<String>,
}

/// `<state_dir>/desired/<kind>/`, the entry files.
pub fn dir(state: &StateDir, kind: Kind) -> PathBuf {
    state.path().join("desired").join(kind.as_str())
}

/// `<state_dir>/desired/<kind>.json`, the table before entry files.
pub fn legacy_path(state: &StateDir, kind: Kind) -> PathBuf {
    state.path().join("desired").join(format!("{kind}.json"))
}

/// `<state_dir>/desired/corrupt/`, where a sync moves unreadable files.
pub fn corrupt_dir(state: &StateDir) -> PathBuf {
    state.path().join("desired").join("corrupt")
}

/// The file stem of `key`'s entry: the key with anything but
/// `[A-Za-z0-9._-]` replaced, shortened, and a hash of the whole key so two
/// keys never share a file.
pub fn stem(key: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("{safe}-{:016x}", fnv1a(key.as_bytes()))
}

/// The entry file of `key`.
pub fn entry_path(state: &StateDir, kind: Kind, key: &str) -> PathBuf {
    dir(state, kind).join(format!("{}.json", stem(key)))
}

fn corrupt(path: &std::path::Path, message: impl Into<String>) -> StateError {
    StateError::CorruptDesired {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn io_err(op: &'static str, path: &std::path::Path, source: std::io::Error) -> StateError {
    StateError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// How [`DesiredTable::read`] treats what it finds.
#[derive(Clone, Copy)]
struct ReadMode {
    /// Read every argv file too.
    argv: bool,
    /// Rewrite an old single-file table as entry files (the caller holds
    /// the kind's sync lock).
    migrate: bool,
    /// Move unreadable files aside instead of failing (the sync, which
    /// rebuilds their entries from the containers).
    set_aside: bool,
}

impl DesiredTable {
    /// Loads the whole table, argv included; a missing one is empty. An old
    /// single-file table is migrated. Fails on an unreadable file, naming
    /// it. The caller holds the kind's sync lock.
    pub fn load(state: &StateDir, kind: Kind) -> Result<DesiredTable, StateError> {
        let mode = ReadMode {
            argv: true,
            migrate: true,
            set_aside: false,
        };
        Self::read(state, kind, mode).and_then(fail_on_corrupt)
    }

    /// Loads the table without the argv (`record.argv` is empty), for
    /// callers that do not start sidecars. Like [`DesiredTable::load`]
    /// otherwise.
    pub fn load_meta(state: &StateDir, kind: Kind) -> Result<DesiredTable, StateError> {
        let mode = ReadMode {
            argv: false,
            migrate: true,
            set_aside: false,
        };
        Self::read(state, kind, mode).and_then(fail_on_corrupt)
    }

    /// Reads the table without the argv and without changing anything (no
    /// lock needed), for `status`.
    pub fn peek(state: &StateDir, kind: Kind) -> Result<DesiredTable, StateError> {
        let mode = ReadMode {
            argv: false,
            migrate: false,
            set_aside: false,
        };
        Self::read(state, kind, mode).and_then(fail_on_corrupt)
    }

    /// The sync's load: without the argv; unreadable files are moved aside
    /// to [`corrupt_dir`] and returned, for [`recover`] to rebuild their
    /// entries from the containers. Fails only when the table cannot be
    /// read at all (then this kind's sync fails, alone).
    /// With `change` false (a dry run) nothing is migrated or moved.
    pub fn open(
        state: &StateDir,
        kind: Kind,
        change: bool,
    ) -> Result<(DesiredTable, Vec<Corrupt>), StateError> {
        let mode = ReadMode {
            argv: false,
            migrate: change,
            set_aside: change,
        };
        Self::read(state, kind, mode)
    }

    fn read(
        state: &StateDir,
        kind: Kind,
        mode: ReadMode,
    ) -> Result<(DesiredTable, Vec<Corrupt>), StateError> {
        let mut table = DesiredTable::default();
        let mut bad = Vec::new();
        let dir = dir(state, kind);
        let names = match std::fs::read_dir(&dir) {
            Ok(rd) => {
                let mut v: Vec<String> = Vec::new();
                for e in rd {
                    let e = e.map_err(|e| io_err("cannot list", &dir, e))?;
                    if let Some(n) = e.file_name().to_str() {
                        v.push(n.to_owned());
                    }
                }
                v.sort();
                v
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("cannot list", &dir, e)),
        };
        let mut referenced = HashSet::new();
        // Entries are opened relative to the directory, into one buffer:
        // with hundreds of sidecars the path walks and allocations add up.
        let dir_fd = if names.is_empty() {
            None
        } else {
            Some(std::fs::File::open(&dir).map_err(|e| io_err("cannot open", &dir, e))?)
        };
        let mut buf = Vec::new();
        for name in &names {
            // Temporary files of a write in progress start with a dot.
            let Some(stem_) = name
                .strip_suffix(".json")
                .filter(|_| !name.starts_with('.'))
            else {
                continue;
            };
            let path = dir.join(name);
            let read = dir_fd
                .as_ref()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
                .and_then(|d| read_at(d, name, &mut buf));
            match read
                .map_err(|e| (e.to_string(), None))
                .and_then(|()| read_entry(&path, &buf, stem_, mode.argv))
            {
                Ok((key, d, st)) => {
                    referenced.insert(st.argv_file.clone());
                    if !mode.argv {
                        table.lazy.insert(key.clone());
                    }
                    table.stored.insert(key.clone(), st);
                    table.sidecars.insert(key, d);
                }
                Err((message, argv_file)) => {
                    if let Some(a) = &argv_file {
                        referenced.insert(a.clone());
                    }
                    bad.push((path, Some(stem_.to_owned()), message, argv_file));
                }
            }
        }
        // The old single-file table: its entries win over entry files a
        // migration killed half-way wrote from it.
        let legacy = legacy_path(state, kind);
        let mut migrated = false;
        match read_json::<LegacyTable>(&legacy) {
            Ok(None) => {}
            Ok(Some(t)) if t.v == LEGACY_VERSION => {
                for (k, d) in t.sidecars {
                    table.lazy.remove(&k);
                    table.sidecars.insert(k, d);
                }
                migrated = mode.migrate;
            }
            Ok(Some(t)) => bad.push((
                legacy.clone(),
                None,
                format!(
                    "format version {} (this sidespawn reads {LEGACY_VERSION})",
                    t.v
                ),
                None,
            )),
            Err(StateError::Corrupt { message, .. }) => {
                bad.push((legacy.clone(), None, message, None));
            }
            Err(e) => return Err(e),
        }
        if migrated {
            table.store(state, kind)?;
            std::fs::remove_file(&legacy).map_err(|e| io_err("cannot remove", &legacy, e))?;
            tracing::info!(
                "moved the desired sidecars of {kind} from {} to {}",
                legacy.display(),
                dir.display()
            );
        } else if mode.migrate && bad.is_empty() {
            // Argv files no entry refers to: left by a sync killed between
            // writing a new argv and its entry. (Not while an entry is
            // unreadable: the file it named is kept for the operator.)
            for name in names.iter().filter(|n| n.ends_with(".argv")) {
                if !referenced.contains(name) {
                    let _ = std::fs::remove_file(dir.join(name));
                }
            }
        }
        let mut out = Vec::new();
        for (path, stem_, message, argv_file) in bad {
            let file = if mode.set_aside {
                let moved = set_aside(state, &path)?;
                // Its argv files too (the one it names, or, when it cannot be
                // read that far, every one of its stem), for the operator.
                let own = |n: &&String| {
                    Some(*n) == argv_file.as_ref()
                        || stem_.as_ref().is_some_and(|s| {
                            n.strip_prefix(s.as_str())
                                .is_some_and(|r| r.starts_with('.') && r.ends_with(".argv"))
                        })
                };
                for a in names.iter().filter(own) {
                    let _ = set_aside(state, &dir.join(a));
                }
                moved
            } else {
                path
            };
            out.push(Corrupt {
                file,
                stem: stem_,
                message,
            });
        }
        Ok((table, out))
    }

    /// Reads the argv of `keys` (those loaded without it). An entry whose
    /// argv file cannot be read leaves the table; its files are moved aside
    /// (unless `change` is false) and returned, as [`DesiredTable::open`]
    /// does.
    pub fn load_argv(
        &mut self,
        state: &StateDir,
        kind: Kind,
        keys: &[String],
        change: bool,
    ) -> Result<Vec<Corrupt>, StateError> {
        let dir = dir(state, kind);
        let mut out = Vec::new();
        for key in keys {
            if !self.lazy.contains(key) {
                continue;
            }
            let (Some(st), Some(d)) = (self.stored.get(key), self.sidecars.get_mut(key)) else {
                continue;
            };
            let path = dir.join(&st.argv_file);
            match read_argv(&path, &d.record.id) {
                Ok(argv) => {
                    d.record.argv = argv;
                    self.lazy.remove(key);
                }
                Err(message) => {
                    let mut file = path.clone();
                    if change {
                        set_aside(state, &entry_path(state, kind, key))?;
                        file = set_aside(state, &path)?;
                    }
                    out.push(Corrupt {
                        file,
                        stem: Some(stem(key)),
                        message,
                    });
                    self.sidecars.remove(key);
                    self.stored.remove(key);
                    self.lazy.remove(key);
                }
            }
        }
        Ok(out)
    }

    /// Writes what changed since the table was read or last stored, each
    /// file atomically and durably (a lost update would restart a sidecar
    /// the agent stopped, or forget one it wants): an argv file per new
    /// request, the entry file of each changed entry, and removes the
    /// files of entries that left.
    pub fn store(&mut self, state: &StateDir, kind: Kind) -> Result<(), StateError> {
        let dir = dir(state, kind);
        let DesiredTable {
            sidecars,
            stored,
            lazy,
        } = self;
        for (key, d) in sidecars.iter_mut() {
            let before = stored.get(key);
            if before.is_some_and(|s| s.record_id == d.record.id && same_entry(&s.entry, d)) {
                continue;
            }
            let stem_ = stem(key);
            let argv_file = match before {
                Some(s) if s.record_id == d.record.id => s.argv_file.clone(),
                _ => {
                    // A new request: its record came with its argv. (An
                    // entry read without its argv keeps its request, and
                    // its argv file stays as it is.)
                    lazy.remove(key);
                    let name = format!("{stem_}.{:016x}.argv", fnv1a(d.record.id.as_bytes()));
                    let path = dir.join(&name);
                    let bytes = serde_json::to_vec(&ArgvFile {
                        id: d.record.id.clone(),
                        argv: d.record.argv.clone(),
                    })
                    .map_err(|e| corrupt(&path, e.to_string()))?;
                    write_atomic(&path, &bytes)?;
                    name
                }
            };
            let path = dir.join(format!("{stem_}.json"));
            let argv = std::mem::take(&mut d.record.argv);
            let snapshot = d.clone();
            d.record.argv = argv;
            let entry = EntryFile {
                v: VERSION,
                key: key.clone(),
                container: snapshot.container.clone(),
                generation: snapshot.generation,
                image: snapshot.image.clone(),
                restarts: snapshot.restarts.clone(),
                last_error: snapshot.last_error.clone(),
                record: snapshot.record.clone(),
                argv_file: argv_file.clone(),
            };
            let bytes =
                serde_json::to_vec_pretty(&entry).map_err(|e| corrupt(&path, e.to_string()))?;
            write_atomic(&path, &bytes)?;
            if let Some(old) = before.filter(|s| s.argv_file != argv_file) {
                let old = dir.join(&old.argv_file);
                remove_if_there(&old)?;
            }
            stored.insert(
                key.clone(),
                Stored {
                    entry: snapshot,
                    argv_file,
                    record_id: d.record.id.clone(),
                },
            );
        }
        let gone: Vec<String> = stored
            .keys()
            .filter(|k| !sidecars.contains_key(*k))
            .cloned()
            .collect();
        for key in &gone {
            remove_if_there(&entry_path(state, kind, key))?;
            if let Some(s) = stored.remove(key) {
                remove_if_there(&dir.join(s.argv_file))?;
            }
            lazy.remove(key);
        }
        if !gone.is_empty()
            && let Ok(d) = std::fs::File::open(&dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn fail_on_corrupt((t, bad): (DesiredTable, Vec<Corrupt>)) -> Result<DesiredTable, StateError> {
    match bad.into_iter().next() {
        None => Ok(t),
        Some(c) => Err(corrupt(&c.file, c.message)),
    }
}

fn remove_if_there(path: &std::path::Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("cannot remove", path, e)),
        _ => Ok(()),
    }
}

/// Moves an unreadable file to [`corrupt_dir`] (named after itself and the
/// time), for the operator to look at; returns where it went.
fn set_aside(state: &StateDir, path: &std::path::Path) -> Result<PathBuf, StateError> {
    let to_dir = corrupt_dir(state);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&to_dir)
        .map_err(|e| io_err("cannot create", &to_dir, e))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let to = to_dir.join(format!("{name}.{}", crate::shared::record::now_ms()));
    match std::fs::rename(path, &to) {
        Ok(()) => {
            tracing::warn!(
                "moved the unreadable {} aside to {}",
                path.display(),
                to.display()
            );
            Ok(to)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_owned()),
        Err(e) => Err(io_err("cannot move aside", path, e)),
    }
}

/// Reads one entry file (and its argv with `argv`). The error says why,
/// with the argv file's name when the entry named one.
fn read_entry(
    path: &std::path::Path,
    bytes: &[u8],
    stem_: &str,
    argv: bool,
) -> Result<(String, DesiredSidecar, Stored), (String, Option<String>)> {
    let e: EntryFile = serde_json::from_slice(bytes).map_err(|e| (e.to_string(), None))?;
    if e.v != VERSION {
        return Err((
            format!("format version {} (this sidespawn reads {VERSION})", e.v),
            Some(e.argv_file),
        ));
    }
    if stem(&e.key) != stem_ {
        return Err((
            format!("holds key {:?}, which belongs in another file", e.key),
            Some(e.argv_file),
        ));
    }
    let mut d = DesiredSidecar {
        container: e.container,
        record: e.record,
        generation: e.generation,
        image: e.image,
        restarts: e.restarts,
        last_error: e.last_error,
    };
    // The file holds no argv; one there would be ignored, so it is dropped.
    d.record.argv.clear();
    let st = Stored {
        entry: d.clone(),
        argv_file: e.argv_file,
        record_id: d.record.id.clone(),
    };
    if argv {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        d.record.argv = read_argv(&dir.join(&st.argv_file), &d.record.id)
            .map_err(|m| (m, Some(st.argv_file.clone())))?;
    }
    Ok((e.key, d, st))
}

/// Reads `name` in the directory `dir` into `buf`, never following a link.
fn read_at(dir: &std::fs::File, name: &str, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    let fd = nix::fcntl::openat(
        dir,
        name,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    buf.clear();
    std::fs::File::from(fd).read_to_end(buf)?;
    Ok(())
}

/// Whether `now` says what the entry file (`stored`, read without its
/// argv) says: everything but the argv, which its own file holds.
fn same_entry(stored: &DesiredSidecar, now: &DesiredSidecar) -> bool {
    let DesiredSidecar {
        container,
        record,
        generation,
        image,
        restarts,
        last_error,
    } = stored;
    // Destructured so that a new field cannot be forgotten here.
    let Record {
        v,
        id,
        kind,
        action,
        argv: _,
        netns,
        tag,
        signal,
        pid,
        ts,
    } = record;
    let r = &now.record;
    *container == now.container
        && *generation == now.generation
        && *image == now.image
        && *restarts == now.restarts
        && *last_error == now.last_error
        && (*v, id, *kind, action, netns, tag, signal, *pid, *ts)
            == (
                r.v, &r.id, r.kind, &r.action, &r.netns, &r.tag, &r.signal, r.pid, r.ts,
            )
}

fn read_argv(path: &std::path::Path, id: &str) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let a: ArgvFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if a.id != id {
        return Err(format!(
            "{} holds the argv of request {}, not {id}",
            path.display(),
            a.id
        ));
    }
    Ok(a.argv)
}

/// The keys of dead (or unhealthy) desired sidecars [`plan_restarts`] may
/// start, whose argv is not loaded yet: what the sync reads before it
/// plans. Nothing else needs an argv.
pub fn argv_needed(table: &DesiredTable, kind: Kind, seen: &Observed) -> Vec<String> {
    table
        .sidecars
        .iter()
        .filter(|(k, _)| table.lazy.contains(*k) && !seen.busy.contains(*k))
        .filter(|(_, d)| {
            let c = seen
                .actual
                .iter()
                .find(|c| c.name == d.container && SidecarLabels::of(c).is_kind(kind));
            is_dead(c) || seen.unhealthy.contains(&d.container)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Rebuilds, from the containers podman reports, the entries of files
/// [`DesiredTable::open`] could not read: each of this configuration's
/// containers of the kind whose key's entry was unreadable (every one, when
/// the old single-file table was) and that the table lacks gets its entry
/// back from its labels and its command (`podman container inspect`),
/// checked against its argv-hash label. Restart counts start afresh.
/// Returns what could not be rebuilt, each naming the file and why.
pub fn recover(
    table: &mut DesiredTable,
    bad: &[Corrupt],
    profile: &Profile,
    actual: &[ContainerInfo],
    runtime: &dyn crate::host::runtime::Runtime,
) -> Vec<String> {
    let kind = profile.kind;
    let whole = bad.iter().any(|c| c.stem.is_none());
    let stems: HashSet<&str> = bad.iter().filter_map(|c| c.stem.as_deref()).collect();
    let mut rebuilt: HashSet<String> = HashSet::new();
    let mut problems = Vec::new();
    for c in actual {
        let l = SidecarLabels::of(c);
        let Some(key) = l.key().filter(|_| l.is_profiles(kind, &profile.labels)) else {
            continue;
        };
        let s = stem(key);
        if table.sidecars.contains_key(key) || !(whole || stems.contains(s.as_str())) {
            continue;
        }
        match rebuild(c, profile, runtime) {
            Ok(d) => {
                tracing::warn!(kind = %kind, "rebuilt the desired entry {key} from container {}", c.name);
                table.lazy.remove(key);
                table.sidecars.insert(key.to_owned(), d);
                rebuilt.insert(s);
            }
            Err(e) => {
                let file = bad
                    .iter()
                    .find(|b| b.stem.as_deref().is_none_or(|b| b == s))
                    .map(|b| b.file.display().to_string())
                    .unwrap_or_default();
                problems.push(format!(
                    "{file}: cannot rebuild {key} from container {}: {e}",
                    c.name
                ));
            }
        }
    }
    for c in bad {
        if c.stem.as_ref().is_none_or(|s| !rebuilt.contains(s)) && !whole {
            problems.push(format!(
                "{}: {}; no container to rebuild it from",
                c.file.display(),
                c.message
            ));
        }
    }
    problems
}

fn rebuild(
    c: &ContainerInfo,
    profile: &Profile,
    runtime: &dyn crate::host::runtime::Runtime,
) -> Result<DesiredSidecar, String> {
    let l = &c.labels;
    let id = l
        .get(labels::REQUEST_ID)
        .ok_or("it has no request-id label")?;
    let netns = match l.get(labels::NETNS) {
        Some(name) => Some(crate::shared::record::NetnsRef {
            name: name.clone(),
            dev: 0,
            ino: l
                .get(labels::NETNS_INO)
                .and_then(|i| i.parse().ok())
                .ok_or("it has no netns-ino label")?,
        }),
        None => None,
    };
    let tag = l.get(labels::TAG).cloned();
    let kind = profile.kind;
    if crate::host::plan::container_name(&profile.instance, kind, tag.as_deref(), netns.as_ref())
        != c.name
    {
        return Err("its name does not follow from its labels".to_owned());
    }
    let cmd = runtime.inspect(&c.name).map_err(|e| e.to_string())?.command;
    let rest = profile.command.get(1..).unwrap_or_default();
    let daemon = cmd
        .strip_prefix(rest)
        .ok_or("its command does not start with the profile's")?;
    let argv = daemon
        .strip_prefix(&profile.foreground_args[..])
        .ok_or("its arguments do not start with the profile's foreground_args")?;
    let hash = l.get(labels::ARGV_HASH);
    let images = [Some(c.image.as_str()), profile.image.as_deref()];
    if !images
        .iter()
        .flatten()
        .any(|img| hash == Some(&crate::host::plan::spec_hash(img, &profile.command, daemon)))
    {
        return Err("its command does not match its argv-hash label".to_owned());
    }
    Ok(DesiredSidecar {
        container: c.name.clone(),
        record: Record {
            v: crate::shared::record::VERSION,
            id: id.clone(),
            kind,
            action: crate::shared::record::Action::Start,
            argv: argv.to_vec(),
            netns,
            tag,
            signal: None,
            pid: None,
            ts: 0,
        },
        generation: generation_of(l),
        image: c.image.clone(),
        restarts: Vec::new(),
        last_error: None,
    })
}

/// Why a dead desired sidecar is not started again now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// `restart.enabled` is false.
    Disabled,
    /// Restarted less than `backoff` ago; retried after `until_ms`.
    Backoff { until_ms: u64 },
    /// `max_restarts` within `window` reached.
    GaveUp { restarts: usize, window_s: u64 },
}

impl Blocked {
    pub fn message(&self, kind: Kind) -> String {
        match self {
            Blocked::Disabled => {
                format!("not running; automatic restart is off (kinds.{kind}.restart.enabled)")
            }
            Blocked::Backoff { until_ms } => format!(
                "not running; restarted recently, next attempt after {}s (kinds.{kind}.restart.backoff_s)",
                until_ms
                    .saturating_sub(crate::shared::record::now_ms())
                    .div_ceil(1000)
            ),
            Blocked::GaveUp { restarts, window_s } => format!(
                "not running; restarted {restarts} times in the last {window_s}s, giving up until the window passes or the agent asks again (kinds.{kind}.restart.max_restarts)"
            ),
        }
    }
}

/// What [`plan_restarts`] decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestartPlan {
    /// One job per sidecar started again (`JobKind::Restart`).
    pub jobs: Vec<Job>,
    /// Sidecars whose namespace is gone or was recreated: they can never
    /// run as recorded, so they leave the table.
    pub forget: Vec<(String, String)>,
    /// Dead sidecars left dead, and why.
    pub blocked: Vec<(String, Blocked)>,
}

/// What the sync saw this pass, for [`plan_restarts`].
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// What podman reported.
    pub actual: &'a [ContainerInfo],
    /// Keys the request plan already acts on.
    pub busy: &'a HashSet<String>,
    /// Container names whose health check failed.
    pub unhealthy: &'a HashSet<String>,
}

/// Whether a container counts as dead for the restart policy.
fn is_dead(c: Option<&ContainerInfo>) -> bool {
    c.is_none_or(|c| c.state != State::Running)
}

/// Plans restarts of desired sidecars whose container is missing or not
/// running, given what podman reported. `busy` holds keys the request plan
/// already acts on (their fate is the agent's latest word, not ours).
/// `unhealthy` holds container names whose health check failed: they count
/// as dead. `next_generation` advances once per restart.
pub fn plan_restarts(
    profile: &Profile,
    table: &DesiredTable,
    seen: &Observed,
    namespaces: &dyn Namespaces,
    next_generation: &mut u64,
    now_ms: u64,
) -> RestartPlan {
    let Observed {
        actual,
        busy,
        unhealthy,
    } = *seen;
    let kind = profile.kind;
    let policy = profile.restart;
    let mut out = RestartPlan::default();
    for (key, d) in &table.sidecars {
        if busy.contains(key) {
            continue;
        }
        let c = actual
            .iter()
            .find(|c| c.name == d.container && SidecarLabels::of(c).is_kind(kind));
        if !is_dead(c) && !unhealthy.contains(&d.container) {
            continue;
        }
        if table.lazy.contains(key) {
            // Its argv was not read (see `argv_needed`): it cannot be started.
            tracing::error!(kind = %kind, key = %key, "not restarted: its argv was not loaded");
            continue;
        }
        if let Some(ns) = &d.record.netns {
            match namespaces.verify(ns) {
                Ok(_) => {}
                Err(e @ (NetnsError::Missing { .. } | NetnsError::InodeMismatch { .. })) => {
                    out.forget.push((key.clone(), e.to_string()));
                    continue;
                }
                // Cannot tell now (a stat failed): neither restart nor forget.
                Err(_) => continue,
            }
        }
        if !policy.enabled {
            out.blocked.push((key.clone(), Blocked::Disabled));
            continue;
        }
        let window_ms = policy.window.as_millis() as u64;
        // A time after now was stored before the wall clock went back: it
        // counts as now, so a step back delays a restart by the backoff at
        // most, never by the size of the step.
        let recent: Vec<u64> = d
            .restarts
            .iter()
            .map(|&t| t.min(now_ms))
            .filter(|&t| now_ms.saturating_sub(t) < window_ms)
            .collect();
        if recent.len() >= policy.max_restarts as usize {
            out.blocked.push((
                key.clone(),
                Blocked::GaveUp {
                    restarts: recent.len(),
                    window_s: policy.window.as_secs(),
                },
            ));
            continue;
        }
        if let Some(&last) = recent.last() {
            let until_ms = last + policy.backoff.as_millis() as u64;
            if now_ms < until_ms {
                out.blocked
                    .push((key.clone(), Blocked::Backoff { until_ms }));
                continue;
            }
        }
        let generation = *next_generation;
        *next_generation += 1;
        let spec = run_spec(profile, &namespaces.dir(), &d.record, generation);
        let mut steps = Vec::new();
        if c.is_some() {
            // An exited, created or unhealthy container still holds the name.
            steps.push(Step::Remove {
                name: d.container.clone(),
            });
        }
        steps.push(Step::Run {
            spec,
            netns: d.record.netns.clone(),
        });
        out.jobs.push(Job {
            key: key.clone(),
            container: d.container.clone(),
            what: JobKind::Restart,
            steps,
            answers: Vec::new(),
            request: None,
        });
    }
    out
}

/// How one job of a plan ended, for [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Ok,
    Failed(String),
    Rejected(String),
}

/// The run step of a job, if it has one.
fn run_step(job: &Job) -> Option<&crate::host::runtime::RunSpec> {
    job.steps.iter().find_map(|s| match s {
        Step::Run { spec, .. } => Some(spec),
        _ => None,
    })
}

fn generation_of(labels_: &BTreeMap<String, String>) -> u64 {
    labels_
        .get(labels::GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// Brings the table up to date with a plan that ran: `outcomes[i]` is how
/// `plan.jobs[i]` ended. Successful starts and replaces insert the record
/// that won; stops (whatever their outcome: the agent wants the sidecar
/// gone) and orphans remove; restarts update the bookkeeping. A failed start
/// still records the new record, since it is the agent's latest word, so a
/// later sync retries it under the restart policy. Identical repeats of a
/// running sidecar that the table does not know yet are adopted. The records
/// come from the plan (each job's and each kept sidecar's winning start), so
/// the batch itself need not be kept.
pub fn apply(
    table: &mut DesiredTable,
    plan: &Plan,
    outcomes: &[JobOutcome],
    actual: &[ContainerInfo],
    now_ms: u64,
) {
    for (job, outcome) in plan.jobs.iter().zip(outcomes) {
        match job.what {
            JobKind::Stop => {
                table.sidecars.remove(&job.key);
            }
            JobKind::Orphan => {
                if table
                    .sidecars
                    .get(&job.key)
                    .is_some_and(|d| d.container == job.container)
                    && *outcome == JobOutcome::Ok
                {
                    table.sidecars.remove(&job.key);
                }
            }
            JobKind::Signal => {}
            JobKind::Start | JobKind::Replace => {
                let (Some(spec), Some(rec)) = (run_step(job), &job.request) else {
                    continue;
                };
                match outcome {
                    JobOutcome::Rejected(_) => {
                        table.sidecars.remove(&job.key);
                    }
                    JobOutcome::Ok | JobOutcome::Failed(_) => {
                        let failed = match outcome {
                            JobOutcome::Failed(m) => Some(m.clone()),
                            _ => None,
                        };
                        table.sidecars.insert(
                            job.key.clone(),
                            DesiredSidecar {
                                container: job.container.clone(),
                                record: rec.clone(),
                                generation: generation_of(&spec.labels),
                                image: spec.image.clone(),
                                // A failed start counts as an attempt, so
                                // retries of it are spaced by the backoff.
                                restarts: if failed.is_some() {
                                    vec![now_ms]
                                } else {
                                    Vec::new()
                                },
                                last_error: failed,
                            },
                        );
                    }
                }
            }
            JobKind::Restart => {
                let Some(d) = table.sidecars.get_mut(&job.key) else {
                    continue;
                };
                d.restarts.push(now_ms);
                match outcome {
                    JobOutcome::Ok => {
                        if let Some(spec) = run_step(job) {
                            d.generation = generation_of(&spec.labels);
                            d.image = spec.image.clone();
                        }
                        d.last_error = None;
                    }
                    JobOutcome::Failed(m) => d.last_error = Some(m.clone()),
                    // The namespace went away between planning and running.
                    JobOutcome::Rejected(_) => {
                        table.sidecars.remove(&job.key);
                    }
                }
            }
        }
    }
    // Adopt identical repeats of a running sidecar the table lacks (a state
    // directory from before the table existed, or one rebuilt by hand).
    let jobs: HashSet<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    for k in &plan.kept {
        if jobs.contains(k.key.as_str()) || table.sidecars.contains_key(&k.key) {
            continue;
        }
        let Some(c) = actual.iter().find(|c| c.name == k.container) else {
            continue;
        };
        table.sidecars.insert(
            k.key.clone(),
            DesiredSidecar {
                container: k.container.clone(),
                record: k.request.clone(),
                generation: generation_of(&c.labels),
                image: c.image.clone(),
                restarts: Vec::new(),
                last_error: None,
            },
        );
    }
}

/// Takes out of the table, before the plan runs, the sidecars it stops;
/// returns whether anything changed.
pub fn apply_intents(table: &mut DesiredTable, plan: &Plan) -> bool {
    let mut changed = false;
    for job in &plan.jobs {
        if job.what == JobKind::Stop {
            changed |= table.sidecars.remove(&job.key).is_some();
        }
    }
    changed
}

/// Brings restart times stored in the future (the wall clock was stepped
/// back since) down to `now_ms`, so the window and the backoff run from now
/// instead of waiting for the clock to catch up. Returns whether anything
/// changed.
pub fn clamp_future(table: &mut DesiredTable, now_ms: u64) -> bool {
    let mut changed = false;
    for d in table.sidecars.values_mut() {
        for t in &mut d.restarts {
            if *t > now_ms {
                *t = now_ms;
                changed = true;
            }
        }
    }
    changed
}

/// Brings the table up to date after the plan ran: first the restart
/// decisions (forgotten and blocked sidecars), then each job's outcome. The
/// one call the sync makes once its jobs have finished.
#[allow(clippy::too_many_arguments)]
pub fn apply_outcomes(
    table: &mut DesiredTable,
    kind: Kind,
    plan: &Plan,
    restarts: &RestartPlan,
    outcomes: &[JobOutcome],
    actual: &[ContainerInfo],
    now_ms: u64,
) {
    apply_restart_decisions(table, kind, restarts);
    apply(table, plan, outcomes, actual, now_ms);
}

/// Remembers why sidecars are not restarted, and forgets those whose
/// namespace is gone.
pub fn apply_restart_decisions(table: &mut DesiredTable, kind: Kind, rp: &RestartPlan) {
    for (key, _) in &rp.forget {
        table.sidecars.remove(key);
    }
    for (key, why) in &rp.blocked {
        if let Some(d) = table.sidecars.get_mut(key) {
            d.last_error = Some(why.message(kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::RestartPolicy;
    use crate::host::namespaces::FakeNamespaces;
    use crate::host::plan::key_of;
    use crate::shared::record::{Action, NetnsRef, VERSION as RECORD_VERSION};
    use std::time::Duration;

    const U1: &str = "0f6a6e0c-2a8b-4d7e-9c53-5b0c7b7b6c1a";

    fn ns() -> FakeNamespaces {
        FakeNamespaces::new([(format!("qdhcp-{U1}"), 100)])
    }

    fn profile() -> Profile {
        let mut p = Profile::defaults(Kind::Dnsmasq);
        p.image = Some("localhost/dnsmasq:1".into());
        p
    }

    fn rec(id: &str) -> Record {
        Record {
            v: RECORD_VERSION,
            id: id.into(),
            kind: Kind::Dnsmasq,
            action: Action::Start,
            argv: vec!["--no-hosts".into(), "".into()],
            netns: Some(NetnsRef {
                name: format!("qdhcp-{U1}"),
                dev: 4,
                ino: 100,
            }),
            tag: Some(format!("dnsmasq-{U1}")),
            signal: None,
            pid: None,
            ts: 1,
        }
    }

    fn table_with(r: &Record, restarts: Vec<u64>) -> DesiredTable {
        let mut t = DesiredTable::default();
        let spec = run_spec(&profile(), std::path::Path::new("/run/netns"), r, 3);
        t.sidecars.insert(
            key_of(Kind::Dnsmasq, r.tag.as_deref(), r.netns.as_ref()),
            DesiredSidecar {
                container: spec.name,
                record: r.clone(),
                generation: 3,
                image: spec.image,
                restarts,
                last_error: None,
            },
        );
        t
    }

    fn container(r: &Record, state: State) -> ContainerInfo {
        let spec = run_spec(&profile(), std::path::Path::new("/run/netns"), r, 3);
        ContainerInfo {
            id: "x".into(),
            name: spec.name,
            pid: if state == State::Running { 55 } else { 0 },
            state,
            image: spec.image,
            labels: spec.labels,
            started_at: 0,
            exit_code: 137,
        }
    }

    fn go(p: &Profile, t: &DesiredTable, actual: &[ContainerInfo], now: u64) -> RestartPlan {
        let mut g = 10;
        plan_restarts(
            p,
            t,
            &Observed {
                actual,
                busy: &HashSet::new(),
                unhealthy: &HashSet::new(),
            },
            &ns(),
            &mut g,
            now,
        )
    }

    #[test]
    fn running_sidecar_is_left_alone() {
        let r = rec("a");
        let rp = go(
            &profile(),
            &table_with(&r, vec![]),
            &[container(&r, State::Running)],
            1_000_000,
        );
        assert_eq!(rp, RestartPlan::default());
    }

    #[test]
    fn exited_sidecar_is_removed_and_started_with_the_next_generation() {
        let r = rec("a");
        let rp = go(
            &profile(),
            &table_with(&r, vec![]),
            &[container(&r, State::Exited)],
            1_000_000,
        );
        assert_eq!(rp.jobs.len(), 1);
        let j = &rp.jobs[0];
        assert_eq!(j.what, JobKind::Restart);
        assert_eq!(
            j.steps[0],
            Step::Remove {
                name: j.container.clone()
            }
        );
        let Step::Run { spec, .. } = &j.steps[1] else {
            panic!("{:?}", j.steps)
        };
        assert_eq!(spec.labels[labels::GENERATION], "10");
        assert_eq!(spec.daemon_argv, ["-k", "--no-hosts", ""]);
        assert_eq!(spec.labels[labels::REQUEST_ID], "a");
    }

    #[test]
    fn missing_container_is_started_without_a_remove() {
        let r = rec("a");
        let rp = go(&profile(), &table_with(&r, vec![]), &[], 1_000_000);
        assert_eq!(rp.jobs.len(), 1);
        assert!(matches!(rp.jobs[0].steps[..], [Step::Run { .. }]));
    }

    #[test]
    fn unhealthy_running_sidecar_counts_as_dead() {
        let r = rec("a");
        let t = table_with(&r, vec![]);
        let c = container(&r, State::Running);
        let mut g = 1;
        let rp = plan_restarts(
            &profile(),
            &t,
            &Observed {
                actual: std::slice::from_ref(&c),
                busy: &HashSet::new(),
                unhealthy: &HashSet::from([c.name.clone()]),
            },
            &ns(),
            &mut g,
            1_000_000,
        );
        assert_eq!(rp.jobs.len(), 1);
        assert!(matches!(rp.jobs[0].steps[0], Step::Remove { .. }));
    }

    #[test]
    fn policy_disabled_backoff_and_give_up() {
        let r = rec("a");
        let now = 10_000_000;
        let mut p = profile();
        p.restart = RestartPolicy {
            enabled: false,
            ..RestartPolicy::default()
        };
        let rp = go(&p, &table_with(&r, vec![]), &[], now);
        assert!(rp.jobs.is_empty());
        assert_eq!(rp.blocked[0].1, Blocked::Disabled);

        // Restarted 2 s ago; the backoff is 5 s.
        let rp = go(&profile(), &table_with(&r, vec![now - 2000]), &[], now);
        assert!(rp.jobs.is_empty());
        assert_eq!(
            rp.blocked[0].1,
            Blocked::Backoff {
                until_ms: now + 3000
            }
        );
        // 6 s ago: restarted.
        let rp = go(&profile(), &table_with(&r, vec![now - 6000]), &[], now);
        assert_eq!(rp.jobs.len(), 1);

        // Five restarts in the window: given up.
        let five: Vec<u64> = (1..=5).map(|i| now - 100_000 + i * 10_000).collect();
        let rp = go(&profile(), &table_with(&r, five.clone()), &[], now);
        assert!(rp.jobs.is_empty());
        assert!(matches!(
            rp.blocked[0].1,
            Blocked::GaveUp { restarts: 5, .. }
        ));
        // Once the window passed they no longer count.
        let later = now + Duration::from_secs(600).as_millis() as u64;
        let rp = go(&profile(), &table_with(&r, five), &[], later);
        assert_eq!(rp.jobs.len(), 1);
    }

    #[test]
    fn restart_times_in_the_future_count_as_now() {
        // The wall clock went back a day after these were stored.
        let r = rec("a");
        let now = 10_000_000_000;
        let day = 86_400_000;
        let rp = go(&profile(), &table_with(&r, vec![now + day]), &[], now);
        assert_eq!(
            rp.blocked[0].1,
            Blocked::Backoff {
                until_ms: now + 5000
            }
        );
        // The sync stores the clamped time, so the backoff runs from then.
        let mut t = table_with(&r, vec![now - 1, now + day]);
        assert!(clamp_future(&mut t, now));
        assert_eq!(t.sidecars.values().next().unwrap().restarts, [now - 1, now]);
        assert!(!clamp_future(&mut t, now));
        let rp = go(&profile(), &t, &[], now + 5000);
        assert_eq!(rp.jobs.len(), 1);
    }

    #[test]
    fn vanished_or_recreated_namespace_is_forgotten() {
        let mut r = rec("a");
        r.netns.as_mut().unwrap().ino = 99;
        let rp = go(&profile(), &table_with(&r, vec![]), &[], 1_000_000);
        assert!(rp.jobs.is_empty());
        assert_eq!(rp.forget.len(), 1);
        r.netns.as_mut().unwrap().name = "qdhcp-gone".into();
        let rp = go(&profile(), &table_with(&r, vec![]), &[], 1_000_000);
        assert_eq!(rp.forget.len(), 1);
        let mut t = table_with(&r, vec![]);
        apply_restart_decisions(&mut t, Kind::Dnsmasq, &rp);
        assert!(t.sidecars.is_empty());
    }

    #[test]
    fn busy_keys_are_the_request_plans_business() {
        let r = rec("a");
        let t = table_with(&r, vec![]);
        let busy: HashSet<String> = t.sidecars.keys().cloned().collect();
        let mut g = 1;
        let rp = plan_restarts(
            &profile(),
            &t,
            &Observed {
                actual: &[],
                busy: &busy,
                unhealthy: &HashSet::new(),
            },
            &ns(),
            &mut g,
            1,
        );
        assert!(rp.jobs.is_empty());
    }

    #[test]
    fn apply_inserts_starts_removes_stops_and_counts_restarts() {
        let r = rec("a");
        let mut g = 1;
        let p = crate::host::plan::plan(&profile(), [r.clone()], &[], &ns(), &mut g, true);
        let mut t = DesiredTable::default();
        apply(&mut t, &p, &[JobOutcome::Ok], &[], 5);
        let d = t.sidecars.values().next().unwrap();
        assert_eq!(d.record, r);
        assert_eq!(d.generation, 1);
        assert!(d.restarts.is_empty());

        // A restart that failed is counted and explained.
        let rp = go(&profile(), &t, &[], 1_000_000);
        let rplan = Plan {
            jobs: rp.jobs.clone(),
            ..Plan::default()
        };
        apply(
            &mut t,
            &rplan,
            &[JobOutcome::Failed("boom".into())],
            &[],
            1_000_000,
        );
        let d = t.sidecars.values().next().unwrap();
        assert_eq!(d.restarts, [1_000_000]);
        assert_eq!(d.last_error.as_deref(), Some("boom"));
        apply(&mut t, &rplan, &[JobOutcome::Ok], &[], 1_010_000);
        let d = t.sidecars.values().next().unwrap();
        assert_eq!(d.generation, 10);
        assert_eq!(d.last_error, None);

        // A stop request removes it.
        let c = container(&r, State::Running);
        let mut stop = rec("k");
        stop.action = Action::Signal;
        stop.signal = Some(crate::shared::record::Signal::Term);
        stop.pid = Some(55);
        stop.tag = None;
        stop.argv.clear();
        let p = crate::host::plan::plan(
            &profile(),
            [stop],
            std::slice::from_ref(&c),
            &ns(),
            &mut g,
            true,
        );
        apply(&mut t, &p, &[JobOutcome::Ok], &[c], 6);
        assert!(t.sidecars.is_empty());
    }

    #[test]
    fn apply_adopts_a_running_identical_repeat() {
        let r = rec("a");
        let c = container(&r, State::Running);
        let mut g = 1;
        let p = crate::host::plan::plan(
            &profile(),
            [r],
            std::slice::from_ref(&c),
            &ns(),
            &mut g,
            true,
        );
        assert_eq!(p.unchanged, 1);
        let mut t = DesiredTable::default();
        apply(&mut t, &p, &[], &[c], 5);
        assert_eq!(t.sidecars.len(), 1);
        assert_eq!(t.sidecars.values().next().unwrap().generation, 3);
    }

    #[test]
    fn apply_adopts_the_winning_start_not_a_superseded_one() {
        let r = rec("b");
        let c = container(&r, State::Running);
        let mut earlier = rec("a");
        earlier.argv = vec!["--other".into()];
        let batch = [earlier, r.clone()];
        let mut g = 1;
        let p = crate::host::plan::plan(
            &profile(),
            batch,
            std::slice::from_ref(&c),
            &ns(),
            &mut g,
            true,
        );
        assert_eq!(p.unchanged, 1);
        let mut t = DesiredTable::default();
        apply(&mut t, &p, &[], &[c], 5);
        assert_eq!(t.sidecars.values().next().unwrap().record, r);
    }

    fn scratch() -> (PathBuf, StateDir) {
        let d = std::env::temp_dir().join(format!(
            "sidespawn-desired-{}",
            crate::shared::record::new_id(0)
        ));
        let s = StateDir::new(&d);
        (d, s)
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn table_round_trips_and_names_its_path_when_corrupt() {
        let (d, s) = scratch();
        assert_eq!(
            DesiredTable::load(&s, Kind::Dnsmasq).unwrap(),
            DesiredTable::default()
        );
        let mut t = table_with(&rec("a"), vec![7]);
        t.store(&s, Kind::Dnsmasq).unwrap();
        assert_eq!(DesiredTable::load(&s, Kind::Dnsmasq).unwrap(), t);
        let key = t.sidecars.keys().next().unwrap().clone();
        std::fs::write(entry_path(&s, Kind::Dnsmasq, &key), b"{").unwrap();
        let e = DesiredTable::load(&s, Kind::Dnsmasq)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("desired/dnsmasq/dnsmasq_tag_") && e.contains("sync --full"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn entries_are_written_only_when_they_change_and_the_argv_once() {
        let (d, s) = scratch();
        let r = rec("a");
        let mut t = table_with(&r, vec![]);
        t.store(&s, Kind::Dnsmasq).unwrap();
        let kdir = dir(&s, Kind::Dnsmasq);
        let names = files(&kdir);
        assert_eq!(names.len(), 2, "{names:?}");
        let ino = |n: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(kdir.join(n)).unwrap().ino()
        };
        let before: Vec<u64> = names.iter().map(|n| ino(n)).collect();

        // Loaded without its argv, nothing changed: nothing written.
        let mut lazy = DesiredTable::open(&s, Kind::Dnsmasq, true).unwrap().0;
        assert!(lazy.sidecars.values().all(|d| d.record.argv.is_empty()));
        lazy.store(&s, Kind::Dnsmasq).unwrap();
        assert_eq!(names.iter().map(|n| ino(n)).collect::<Vec<_>>(), before);

        // A restart: the entry is rewritten, the argv file is not.
        lazy.sidecars.values_mut().next().unwrap().restarts.push(5);
        lazy.store(&s, Kind::Dnsmasq).unwrap();
        let after: Vec<u64> = names.iter().map(|n| ino(n)).collect();
        let argv_at = names.iter().position(|n| n.ends_with(".argv")).unwrap();
        assert_eq!(after[argv_at], before[argv_at]);
        assert_ne!(after[1 - argv_at], before[1 - argv_at]);
        let full = DesiredTable::load(&s, Kind::Dnsmasq).unwrap();
        let got = full.sidecars.values().next().unwrap();
        assert_eq!(got.record, r);
        assert_eq!(got.restarts, [5]);

        // A new request replaces the argv file; a stop removes both.
        let mut t = DesiredTable::load(&s, Kind::Dnsmasq).unwrap();
        let mut r2 = rec("b");
        r2.argv = vec!["--new".into()];
        t.sidecars.values_mut().next().unwrap().record = r2.clone();
        t.store(&s, Kind::Dnsmasq).unwrap();
        assert_eq!(files(&kdir).len(), 2, "{:?}", files(&kdir));
        let t2 = DesiredTable::load(&s, Kind::Dnsmasq).unwrap();
        assert_eq!(t2.sidecars.values().next().unwrap().record, r2);
        t.sidecars.clear();
        t.store(&s, Kind::Dnsmasq).unwrap();
        assert!(files(&kdir).is_empty(), "{:?}", files(&kdir));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_single_file_table_is_migrated_with_nothing_lost() {
        let (d, s) = scratch();
        let t = table_with(&rec("a"), vec![7]);
        let legacy = serde_json::json!({"v": 1, "sidecars": t.sidecars});
        std::fs::create_dir_all(d.join("desired")).unwrap();
        std::fs::write(legacy_path(&s, Kind::Dnsmasq), legacy.to_string()).unwrap();
        // `status` reads it as it is, without migrating.
        assert_eq!(DesiredTable::peek(&s, Kind::Dnsmasq).unwrap(), t);
        assert!(legacy_path(&s, Kind::Dnsmasq).exists());
        assert_eq!(DesiredTable::load(&s, Kind::Dnsmasq).unwrap(), t);
        assert!(!legacy_path(&s, Kind::Dnsmasq).exists());
        assert_eq!(files(&dir(&s, Kind::Dnsmasq)).len(), 2);
        assert_eq!(DesiredTable::load(&s, Kind::Dnsmasq).unwrap(), t);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn recovery_rebuilds_only_what_the_container_proves() {
        use crate::host::runtime::{FakeRuntime, Runtime};
        let r = rec("a");
        let spec = run_spec(&profile(), std::path::Path::new("/run/netns"), &r, 3);
        let key = key_of(Kind::Dnsmasq, r.tag.as_deref(), r.netns.as_ref());
        let bad = [Corrupt {
            file: "x".into(),
            stem: Some(stem(&key)),
            message: "truncated".into(),
        }];
        // Run here: its command is known and matches its argv-hash label.
        let fake = FakeRuntime::new(Vec::new());
        fake.run(&spec).unwrap();
        let actual = fake.list(&profile().instance).unwrap();
        let mut t = DesiredTable::default();
        assert!(recover(&mut t, &bad, &profile(), &actual, &fake).is_empty());
        let d = &t.sidecars[&key];
        assert_eq!(d.record.argv, r.argv);
        assert_eq!(d.record.id, r.id);
        assert_eq!(d.record.netns.as_ref().map(|n| n.ino), Some(100));
        assert_eq!(d.generation, 3);

        // A container whose command does not match its label is not trusted.
        let seeded = FakeRuntime::new(actual.clone());
        let mut t = DesiredTable::default();
        let lost = recover(&mut t, &bad, &profile(), &actual, &seeded);
        assert!(t.sidecars.is_empty());
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].contains(&key), "{lost:?}");
        assert!(
            lost[1].contains("no container to rebuild it from"),
            "{lost:?}"
        );

        // Another kind's entry being unreadable rebuilds nothing here.
        let other = [Corrupt {
            stem: Some(stem("dnsmasq/tag/other")),
            ..bad[0].clone()
        }];
        let mut t = DesiredTable::default();
        recover(&mut t, &other, &profile(), &actual, &fake);
        assert!(t.sidecars.is_empty());
    }

    #[test]
    fn file_stems_are_safe_and_distinct() {
        let a = stem("dnsmasq/tag/x");
        assert!(a.starts_with("dnsmasq_tag_x-"), "{a}");
        assert_ne!(a, stem("dnsmasq_tag/x"));
        let long = stem(&format!("dnsmasq/tag/{}", "y".repeat(500)));
        assert!(long.len() < 130, "{long}");
        assert!(
            stem("k/../..\\n")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
    }
}
