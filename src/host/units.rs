//! The systemd units that run the host side, generated from the templates
//! in `units/` with the paths of a [`HostConfig`].
//!
//! The templates are plain unit files laid out like their install
//! destination (`units/etc/systemd/system/...`, `units/etc/tmpfiles.d/...`)
//! and embedded at build time. Generation drops the template-only `#@`
//! lines, puts a "generated, do not edit" line first, writes each line
//! holding `@KIND@` once per enabled kind, and fills in `@BIN@`, `@CONFIG@`,
//! `@QUEUE_ROOT@` and `@STATE_DIR@`.
//!
//! Invariant: a path reaches a generated file only escaped for the exact
//! parser of the directive it lands in, or not at all. systemd reads
//! `Path*=` values verbatim apart from `%` specifiers; it splits
//! `ExecStart=`, `RequiresMountsFor=` and tmpfiles.d lines into words,
//! honouring quotes and backslash escapes, and `ExecStart=` also expands
//! `$VARIABLES`. Paths no parser can take (relative, not normalized,
//! control characters, not UTF-8, too long) are refused with
//! [`UnitsError::Unrepresentable`]. A placeholder in any other directive is
//! a template bug, reported as [`UnitsError::Template`].
//!
//! Writing is atomic per file (temporary file in the same directory, fsync,
//! rename, fsync of the directory) and skipped when the contents are already
//! there, so `sidespawn units install` can be rerun at will.

use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::host::config::HostConfig;

/// Where unit files go, relative to the root.
pub const UNIT_DIR: &str = "etc/systemd/system";
/// Where the tmpfiles.d snippet goes, relative to the root. Under /etc, not
/// /usr/lib: it is generated from this host's configuration, by the
/// administrator's tool, like the units next to it.
pub const TMPFILES_PATH: &str = "etc/tmpfiles.d/sidespawn.conf";
/// The timer of the periodic full sync.
pub const BACKSTOP_TIMER: &str = "sidespawn-backstop.timer";
/// Restarts dead sidecars on the engine's events, beside the path units.
pub const RESTART_SERVICE: &str = "sidespawn-restart.service";

/// Mode of every generated file: world-readable, like any unit file.
const FILE_MODE: u32 = 0o644;
/// Mode of directories created on the way to a generated file.
const DIR_MODE: u32 = 0o755;
/// Linux's PATH_MAX (with the terminating NUL) and NAME_MAX.
const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;

/// One generated file: where it goes below the root, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub rel_path: PathBuf,
    pub contents: String,
}

/// What [`write()`] did to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    #[error("cannot put {what} {path:?} into a systemd unit file: {reason}")]
    Unrepresentable {
        what: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("template {template}: {message} (a bug in sidespawn)")]
    Template {
        template: &'static str,
        message: String,
    },
    #[error("refusing to write {path:?}: not a relative path that stays inside the root")]
    Destination { path: PathBuf },
    #[error("refusing to replace {path}: it is a symlink (a masked unit?); remove it first")]
    Symlink { path: PathBuf },
    #[error("refusing to replace {path}: it is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Bin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--enable works only with --root / (the running system)")]
    EnableNeedsRunningSystem,
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> UnitsError + 'p {
    move |source| UnitsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// How systemd reads the file a template becomes.
#[derive(Clone, Copy)]
enum Syntax {
    Unit,
    Tmpfiles,
}

struct Template {
    rel_path: &'static str,
    text: &'static str,
    syntax: Syntax,
}

macro_rules! template {
    ($rel:literal, $syntax:expr) => {
        Template {
            rel_path: $rel,
            text: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/units/", $rel)),
            syntax: $syntax,
        }
    };
}

const TEMPLATES: [Template; 7] = [
    template!("etc/systemd/system/sidespawn@.path", Syntax::Unit),
    template!("etc/systemd/system/sidespawn@.service", Syntax::Unit),
    template!("etc/systemd/system/sidespawn-backstop.timer", Syntax::Unit),
    template!(
        "etc/systemd/system/sidespawn-backstop.service",
        Syntax::Unit
    ),
    template!("etc/systemd/system/sidespawn-watch.service", Syntax::Unit),
    template!("etc/systemd/system/sidespawn-restart.service", Syntax::Unit),
    template!("etc/tmpfiles.d/sidespawn.conf", Syntax::Tmpfiles),
];

/// How the parser of one directive reads its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Taken verbatim after specifier expansion (`PathExists=`...).
    Verbatim,
    /// Split into words with quotes and C escapes (`RequiresMountsFor=`,
    /// tmpfiles.d lines).
    Words,
    /// As `Words`, and `$VAR` is expanded at exec time in every word but
    /// the first (`ExecStart=`).
    Command,
}

fn unit_context(key: &str) -> Option<Context> {
    match key {
        "PathExists" | "PathExistsGlob" | "PathChanged" | "PathModified" | "DirectoryNotEmpty" => {
            Some(Context::Verbatim)
        }
        "RequiresMountsFor" => Some(Context::Words),
        k if k.starts_with("Exec") => Some(Context::Command),
        _ => None,
    }
}

/// The values placeholders stand for, already checked to be representable.
struct Values<'a> {
    bin: &'a str,
    config: &'a str,
    queue_root: &'a str,
    state_dir: &'a str,
}

impl<'a> Values<'a> {
    fn get(&self, name: &str, kind: Option<&'a str>) -> Option<&'a str> {
        Some(match name {
            "BIN" => self.bin,
            "CONFIG" => self.config,
            "QUEUE_ROOT" => self.queue_root,
            "STATE_DIR" => self.state_dir,
            "KIND" => kind?,
            _ => return None,
        })
    }
}

/// Finds the next `@NAME@` placeholder (NAME in capitals and `_`) in `s`:
/// its start and the name. Any other `@` (`sidespawn@%i.service`) is text.
fn next_placeholder(s: &str) -> Option<(usize, &str)> {
    let mut from = 0;
    while let Some(i) = s[from..].find('@') {
        let start = from + i;
        let after = &s[start + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('@') {
            return Some((start, &after[..len]));
        }
        from = start + 1;
    }
    None
}

/// Generates every unit file and the tmpfiles.d snippet for `cfg`, with
/// `bin` (absolute) as the sidespawn binary the services run.
pub fn generate(cfg: &HostConfig, bin: &Path) -> Result<Vec<UnitFile>, UnitsError> {
    let config_abs = std::path::absolute(&cfg.path)
        .map_err(io_err("cannot resolve the configuration path", &cfg.path))?;
    let values = Values {
        bin: checked_path("the sidespawn binary", bin)?,
        config: checked_path("the configuration file", &config_abs)?,
        queue_root: checked_path("queue_root", &cfg.queue_root)?,
        state_dir: checked_path("state_dir", &cfg.state_dir)?,
    };
    let kinds: Vec<&str> = cfg.enabled_kinds().iter().map(|k| k.as_str()).collect();
    let header = format!(
        "# Generated by `sidespawn units` from {c}: do not edit; edit {c} and rerun `sidespawn units install`.\n",
        c = values.config
    );
    TEMPLATES
        .iter()
        .map(|t| {
            Ok(UnitFile {
                rel_path: PathBuf::from(t.rel_path),
                contents: render(t, &header, &values, &kinds)?,
            })
        })
        .collect()
}

fn render(
    t: &Template,
    header: &str,
    values: &Values,
    kinds: &[&str],
) -> Result<String, UnitsError> {
    let bug = |message: String| UnitsError::Template {
        template: t.rel_path,
        message,
    };
    let mut out = String::from(header);
    let once = [None];
    let each: Vec<Option<&str>> = kinds.iter().map(|k| Some(*k)).collect();
    for line in t.text.lines() {
        if line.starts_with("#@") {
            continue;
        }
        if next_placeholder(line).is_none() {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if line.starts_with('#') || line.starts_with('[') {
            return Err(bug(format!("placeholder in a comment or header: {line}")));
        }
        let per_kind = line.contains("@KIND@");
        for kind in if per_kind { &each[..] } else { &once[..] } {
            let rendered = match t.syntax {
                Syntax::Tmpfiles => render_words(line, Context::Words, values, *kind),
                Syntax::Unit => {
                    let (key, value) = line
                        .split_once('=')
                        .ok_or_else(|| bug(format!("not a Key=value line: {line}")))?;
                    let ctx = unit_context(key)
                        .ok_or_else(|| bug(format!("no escaping rule for {key}=")))?;
                    let value = if ctx == Context::Verbatim {
                        fill(value, values, *kind, ctx)
                    } else {
                        render_words(value, ctx, values, *kind)
                    };
                    value.map(|v| format!("{key}={v}"))
                }
            }
            .map_err(bug)?;
            out.push_str(&rendered);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Renders a whitespace-separated list of template words, quoting each word
/// that a substituted value requires to be quoted.
fn render_words(
    text: &str,
    ctx: Context,
    values: &Values,
    kind: Option<&str>,
) -> Result<String, String> {
    let words = text
        .split_ascii_whitespace()
        .enumerate()
        .map(|(i, word)| {
            // systemd expands $VARIABLES in the arguments only: the program
            // to execute is taken literally ("may not be a variable").
            let ctx = if ctx == Context::Command && i == 0 {
                Context::Words
            } else {
                ctx
            };
            fill(word, values, kind, ctx)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(words.join(" "))
}

/// Substitutes the placeholders of one template word (or a verbatim value).
/// The template's own text (`%I`, `--kind`) is kept as it is; only the
/// substituted values are escaped.
fn fill(word: &str, values: &Values, kind: Option<&str>, ctx: Context) -> Result<String, String> {
    let mut pieces: Vec<(bool, &str)> = Vec::new();
    let mut rest = word;
    while let Some((start, name)) = next_placeholder(rest) {
        let value = values
            .get(name, kind)
            .ok_or_else(|| format!("no value for @{name}@ in {word:?}"))?;
        pieces.push((false, &rest[..start]));
        pieces.push((true, value));
        rest = &rest[start + name.len() + 2..];
    }
    pieces.push((false, rest));
    if pieces
        .iter()
        .any(|(is_value, s)| !is_value && s.contains(['"', '\'', '\\', '$']))
    {
        return Err(format!("template text needing escapes in {word:?}"));
    }

    let quote = ctx != Context::Verbatim
        && pieces
            .iter()
            .any(|(is_value, s)| *is_value && s.contains([' ', '\t', '"', '\'', '\\']));
    let mut out = String::new();
    if quote {
        out.push('"');
    }
    for (is_value, s) in pieces {
        if !is_value {
            out.push_str(s);
            continue;
        }
        for c in s.chars() {
            match c {
                // Every one of these directives expands specifiers.
                '%' => out.push_str("%%"),
                '$' if ctx == Context::Command => out.push_str("$$"),
                '"' | '\\' if quote => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
    }
    if quote {
        out.push('"');
    }
    Ok(out)
}

/// Checks that `path` can be written into a unit file so that systemd reads
/// back exactly this path, and returns it as text.
pub fn checked_path<'p>(what: &'static str, path: &'p Path) -> Result<&'p str, UnitsError> {
    let refuse = |reason| UnitsError::Unrepresentable {
        what,
        path: path.to_owned(),
        reason,
    };
    let text = path
        .to_str()
        .ok_or_else(|| refuse("it is not valid UTF-8, which unit files must be"))?;
    if !path.is_absolute() {
        return Err(refuse(
            "it must be absolute: systemd resolves nothing against a working directory",
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(refuse(
            "it holds a control character (newline, tab...), which unit files cannot carry",
        ));
    }
    // systemd refuses paths that are not normalized ("." or ".."
    // components); "//" and a trailing "/" it would silently rewrite, so
    // a generated file would not show the path as configured.
    let normal = text[1..]
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if !normal {
        return Err(refuse(
            "it is not normalized (\"/\" itself, \"//\", a trailing \"/\", \".\" or \"..\")",
        ));
    }
    if text.len() >= PATH_MAX || text.split('/').any(|c| c.len() > NAME_MAX) {
        return Err(refuse(
            "it is longer than PATH_MAX or has a name over NAME_MAX",
        ));
    }
    Ok(text)
}

/// Escapes `s` for use in a unit name, as `systemd-escape` does: ASCII
/// letters, digits, `:`, `_` and `.` (not leading) stay, `/` becomes `-`,
/// every other byte becomes `\xNN`.
pub fn escape_unit_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The name of the path unit of `kind`, e.g. `sidespawn@dnsmasq.path`.
pub fn path_unit(kind: crate::shared::kind::Kind) -> String {
    format!("sidespawn@{}.path", escape_unit_name(kind.as_str()))
}

/// The name of the sync service of `kind`, e.g. `sidespawn@dnsmasq.service`.
pub fn service_unit(kind: crate::shared::kind::Kind) -> String {
    format!("sidespawn@{}.service", escape_unit_name(kind.as_str()))
}

/// Writes `files` below `root`, each atomically and only when its contents
/// changed, with mode 0644, creating parent directories (0755). Stops at the
/// first failure; files written before it stay written (each one whole).
pub fn write(files: &[UnitFile], root: &Path) -> Result<Vec<(PathBuf, Change)>, UnitsError> {
    files
        .iter()
        .map(|f| {
            let inside = !f.rel_path.as_os_str().is_empty()
                && f.rel_path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !inside {
                return Err(UnitsError::Destination {
                    path: f.rel_path.clone(),
                });
            }
            let path = root.join(&f.rel_path);
            let change = write_one(&path, f.contents.as_bytes())?;
            Ok((path, change))
        })
        .collect()
}

fn write_one(path: &Path, contents: &[u8]) -> Result<Change, UnitsError> {
    // `write` checked that the path has a file name below the root.
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(UnitsError::Destination {
            path: path.to_owned(),
        });
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("cannot create directory", dir))?;

    let change = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(UnitsError::Symlink {
                path: path.to_owned(),
            });
        }
        Ok(m) if !m.is_file() => {
            return Err(UnitsError::NotRegular {
                path: path.to_owned(),
            });
        }
        Ok(m) => {
            let old = fs::read(path).map_err(io_err("cannot read", path))?;
            if old == contents && m.permissions().mode() & 0o7777 == FILE_MODE {
                return Ok(Change::Unchanged);
            }
            Change::Updated
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Change::Created,
        Err(source) => return Err(io_err("cannot stat", path)(source)),
    };

    // A hidden name without the unit's suffix: no manager or tmpfiles run
    // ever picks up a half-written temporary file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    crate::host::atomic::write_file(path, &tmp, contents, FILE_MODE, true).map_err(|e| {
        UnitsError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    })?;
    Ok(change)
}

/// `sidespawn units generate|install`: writes the units for `cfg`, running
/// `bin` (default: the running binary), under `root` (only rewriting files
/// that changed, printing each change); then, with `enable` (only for the
/// running system, root `/`), runs the commands that make them take effect,
/// or, for `/`, prints them.
pub fn install(
    cfg: &HostConfig,
    root: &Path,
    bin: Option<&Path>,
    enable: bool,
) -> Result<(), UnitsError> {
    if !cfg.path.exists() {
        eprintln!(
            "sidespawn: warning: {} does not exist; the units will run `sync --config {}`, so create it before enabling them",
            cfg.path.display(),
            cfg.path.display()
        );
    }
    let running_system = root == Path::new("/");
    if enable && !running_system {
        return Err(UnitsError::EnableNeedsRunningSystem);
    }
    let bin = match bin {
        Some(b) => std::path::absolute(b).map_err(|source| UnitsError::Bin {
            path: b.to_owned(),
            source,
        })?,
        None => PathBuf::from(INSTALLED_BIN),
    };
    if running_system && !bin.exists() {
        eprintln!(
            "sidespawn: warning: the units run {}, which does not exist; install the binary there or pass --bin",
            bin.display()
        );
    }
    let files = generate(cfg, &bin)?;
    for (path, change) in write(&files, root)? {
        println!("{change:?}: {}", path.display());
    }
    let mut cmds = vec![tmpfiles_command()];
    cmds.extend(enable_commands(cfg));
    if enable {
        run_commands(&cmds, Path::new("systemctl"))?;
    } else if running_system {
        println!("to activate them, run:");
        for c in &cmds {
            println!("  {}", display_command(c));
        }
    } else {
        // A tree for an image or a package: enable offline, or on the system
        // once the tree is its `/`.
        println!("to enable them in this tree now (offline), run:");
        println!("  {}", display_command(&offline_enable_command(cfg, root)));
        println!("or, on the system once this tree is its /, run:");
        for c in &cmds {
            println!("  {}", display_command(c));
        }
    }
    Ok(())
}

/// The binary the units run when `--bin` is not given: where the README's
/// install steps put it, or what a package build sets through
/// `SIDESPAWN_INSTALLED_BIN` at compile time. Not the running binary, which
/// is often `target/release/sidespawn` in a checkout.
pub const INSTALLED_BIN: &str = match option_env!("SIDESPAWN_INSTALLED_BIN") {
    Some(p) => p,
    None => "/usr/local/sbin/sidespawn",
};

/// `systemctl --root=ROOT enable` for the units [`enable_commands`] enables:
/// creates the symlinks under `root` without a running manager.
pub fn offline_enable_command(cfg: &HostConfig, root: &Path) -> Vec<String> {
    let mut argv = vec![
        "systemctl".to_owned(),
        format!("--root={}", root.display()),
        "enable".to_owned(),
    ];
    argv.extend(cfg.enabled_kinds().into_iter().map(path_unit));
    argv.push(BACKSTOP_TIMER.to_owned());
    argv.push(RESTART_SERVICE.to_owned());
    argv
}

/// The commands that make the installed units take effect: reload the
/// manager, then enable and start the path unit of every enabled kind and
/// the backstop timer. argv vectors; `argv[0]` is `systemctl`.
pub fn enable_commands(cfg: &HostConfig) -> Vec<Vec<String>> {
    let systemctl = |args: &[&str]| -> Vec<String> {
        std::iter::once("systemctl")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let mut cmds = vec![systemctl(&["daemon-reload"])];
    for kind in cfg.enabled_kinds() {
        cmds.push(systemctl(&["enable", "--now", &path_unit(kind)]));
    }
    cmds.push(systemctl(&["enable", "--now", BACKSTOP_TIMER]));
    cmds.push(systemctl(&["enable", "--now", RESTART_SERVICE]));
    cmds
}

/// The command that creates the directories of the installed tmpfiles.d
/// snippet at once, rather than at the next boot. For a root of `/`.
pub fn tmpfiles_command() -> Vec<String> {
    vec![
        "systemd-tmpfiles".into(),
        "--create".into(),
        format!("/{TMPFILES_PATH}"),
    ]
}

/// `argv` as a shell would need it typed, for printing (`--dry-run`, logs).
pub fn display_command(argv: &[String]) -> String {
    crate::host::shell::quote_words(argv)
}

/// Runs `cmds` in order, stopping at the first failure. argv vectors, no
/// shell; an `argv[0]` of `systemctl` runs `systemctl` (so that callers and
/// tests can choose which), any other program is looked up in `PATH`.
pub fn run_commands(cmds: &[Vec<String>], systemctl: &Path) -> Result<(), UnitsError> {
    for argv in cmds {
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        let command = display_command(argv);
        tracing::info!("running {command}");
        let program = if program == "systemctl" {
            systemctl.as_os_str()
        } else {
            program.as_ref()
        };
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| UnitsError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(UnitsError::Command {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::kind::Kind;
    use std::ffi::OsStr;
    use std::fs::Permissions;
    use std::os::unix::ffi::OsStrExt;

    fn values() -> Values<'static> {
        Values {
            bin: "/usr/bin/sidespawn",
            config: "/etc/sidespawn/config.json",
            queue_root: "/q",
            state_dir: "/s",
        }
    }

    #[test]
    fn verbatim_values_only_double_percent() {
        let v = Values {
            queue_root: r#"/a b/100% "x"\y$"#,
            ..values()
        };
        assert_eq!(
            fill("@QUEUE_ROOT@/%I/pending", &v, None, Context::Verbatim).unwrap(),
            r#"/a b/100%% "x"\y$/%I/pending"#
        );
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        let v = Values {
            bin: r#"/opt/my bin/$x "q" \ %i/sidespawn"#,
            config: "/etc/$x.json",
            ..values()
        };
        assert_eq!(
            render_words(
                "@BIN@ --config @CONFIG@ --kind %I",
                Context::Command,
                &v,
                None
            )
            .unwrap(),
            r#""/opt/my bin/$x \"q\" \\ %%i/sidespawn" --config /etc/$$x.json --kind %I"#
        );
        // `$` is special only where systemd expands variables.
        let v = Values {
            queue_root: "/q$1%",
            ..values()
        };
        assert_eq!(
            render_words("@QUEUE_ROOT@ @STATE_DIR@", Context::Words, &v, None).unwrap(),
            "/q$1%% /s"
        );
        assert_eq!(
            render_words(
                "d @QUEUE_ROOT@/@KIND@ 0755",
                Context::Words,
                &v,
                Some("radvd")
            )
            .unwrap(),
            "d /q$1%%/radvd 0755"
        );
    }

    #[test]
    fn template_bugs_are_reported() {
        assert!(fill("@NOPE@", &values(), None, Context::Words).is_err());
        assert_eq!(
            fill("a@b@BIN@", &values(), None, Context::Words).unwrap(),
            "a@b/usr/bin/sidespawn"
        );
        assert!(fill("@KIND@", &values(), None, Context::Words).is_err());
        let t = Template {
            rel_path: "x.service",
            text: "[Service]\nEnvironment=A=@BIN@\n",
            syntax: Syntax::Unit,
        };
        let e = render(&t, "", &values(), &[]).unwrap_err().to_string();
        assert!(e.contains("Environment") && e.contains("x.service"), "{e}");
    }

    #[test]
    fn every_template_renders_and_keeps_its_specifiers() {
        for t in &TEMPLATES {
            let out = render(t, "# header\n", &values(), &["dnsmasq", "radvd"]).unwrap();
            assert!(out.starts_with("# header\n"), "{}", t.rel_path);
            assert!(!out.contains("#@"), "{}", t.rel_path);
            assert_eq!(next_placeholder(&out), None, "{out}");
        }
        let path = render(&TEMPLATES[0], "", &values(), &[]).unwrap();
        assert!(path.contains("\nPathExists=/q/%I/pending\n"), "{path}");
        assert!(path.contains("\nPathModified=/q/%I/timestamp\n"), "{path}");
        let snippet = TEMPLATES
            .iter()
            .find(|t| t.rel_path.starts_with("etc/tmpfiles.d/"))
            .unwrap();
        let tmpfiles = render(snippet, "", &values(), &["dnsmasq", "radvd"]).unwrap();
        for line in [
            "d /q 0755 root root -",
            "d /q/dnsmasq/acks 0755 root root -",
            "d /q/radvd 0755 root root -",
            "d /s 0700 root root -",
        ] {
            assert!(tmpfiles.lines().any(|l| l == line), "{line}\n{tmpfiles}");
        }
    }

    #[test]
    fn unrepresentable_paths_are_refused_with_the_reason() {
        let bad: [(&OsStr, &str); 9] = [
            (OsStr::new("relative/x"), "absolute"),
            (OsStr::new("/a\nb"), "control"),
            (OsStr::new("/a\tb"), "control"),
            (OsStr::new("/a/../b"), "normalized"),
            (OsStr::new("/a/./b"), "normalized"),
            (OsStr::new("/a//b"), "normalized"),
            (OsStr::new("/a/"), "normalized"),
            (OsStr::new("/"), "normalized"),
            (OsStr::from_bytes(b"/a\xffb"), "UTF-8"),
        ];
        for (p, why) in bad {
            let e = checked_path("queue_root", Path::new(p)).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(why) && msg.contains("queue_root"),
                "{p:?}: {msg}"
            );
        }
        let long = format!("/{}", "x".repeat(256));
        assert!(checked_path("q", Path::new(&long)).is_err());
        assert!(checked_path("q", Path::new(r#"/a b/%i/"x"\$"#)).is_ok());
    }

    #[test]
    fn unit_names_are_escaped_like_systemd_escape() {
        assert_eq!(escape_unit_name("dnsmasq"), "dnsmasq");
        assert_eq!(escape_unit_name("a-b c/d.e"), r"a\x2db\x20c-d.e");
        assert_eq!(escape_unit_name(".x"), r"\x2ex");
        assert_eq!(path_unit(Kind::Dnsmasq), "sidespawn@dnsmasq.path");
        assert_eq!(service_unit(Kind::Radvd), "sidespawn@radvd.service");
    }

    #[test]
    fn commands_enable_the_path_of_each_enabled_kind_and_the_timer() {
        let cfg = HostConfig::from_str(
            Path::new("/c.json"),
            r#"{"kinds":{"dnsmasq":{},"radvd":{"enabled":false},"haproxy":{}}}"#,
        )
        .unwrap();
        let cmds: Vec<String> = enable_commands(&cfg)
            .iter()
            .map(|c| display_command(c))
            .collect();
        assert_eq!(
            cmds,
            [
                "systemctl daemon-reload",
                "systemctl enable --now sidespawn@dnsmasq.path",
                "systemctl enable --now sidespawn@haproxy.path",
                "systemctl enable --now sidespawn-backstop.timer",
                "systemctl enable --now sidespawn-restart.service",
            ]
        );
        assert_eq!(
            display_command(&["a b".into(), "it's".into(), String::new()]),
            r#"'a b' 'it'\''s' ''"#
        );
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "sidespawn-units-{tag}-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn file(rel: &str, contents: &str) -> UnitFile {
        UnitFile {
            rel_path: rel.into(),
            contents: contents.into(),
        }
    }

    #[test]
    fn write_creates_updates_and_skips() {
        let root = TempDir::new("write");
        let a = file("etc/systemd/system/a.service", "one\n");
        let got = write(std::slice::from_ref(&a), &root.0).unwrap();
        let path = root.0.join(&a.rel_path);
        assert_eq!(got, [(path.clone(), Change::Created)]);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(&root.0.join("etc/systemd")), 0o755);

        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = ino(&path);
        assert_eq!(write(&[a], &root.0).unwrap()[0].1, Change::Unchanged);
        assert_eq!(ino(&path), before, "an unchanged file is not rewritten");

        let b = file("etc/systemd/system/a.service", "two\n");
        assert_eq!(write(&[b], &root.0).unwrap()[0].1, Change::Updated);
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [OsStr::new("a.service")]);

        // A wrong mode alone is repaired.
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        let b = file("etc/systemd/system/a.service", "two\n");
        assert_eq!(write(&[b], &root.0).unwrap()[0].1, Change::Updated);
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn write_refuses_symlinks_and_escaping_paths() {
        let root = TempDir::new("refuse");
        let dir = root.0.join("etc/systemd/system");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.join("m.service")).unwrap();
        let e = write(&[file("etc/systemd/system/m.service", "x")], &root.0).unwrap_err();
        assert!(matches!(e, UnitsError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("m.service"), "{e}");
        assert_eq!(
            fs::read_link(dir.join("m.service")).unwrap(),
            Path::new("/dev/null")
        );
        for rel in ["../x", "/etc/x", "", "a/../../x"] {
            let e = write(&[file(rel, "x")], &root.0).unwrap_err();
            assert!(matches!(e, UnitsError::Destination { .. }), "{rel}: {e}");
        }
        fs::create_dir(dir.join("d.service")).unwrap();
        let e = write(&[file("etc/systemd/system/d.service", "x")], &root.0).unwrap_err();
        assert!(matches!(e, UnitsError::NotRegular { .. }), "{e}");
    }

    #[test]
    fn run_commands_runs_argv_and_stops_at_the_first_failure() {
        let dir = TempDir::new("run");
        let log = dir.0.join("log");
        let fake = dir.0.join("systemctl");
        fs::write(
            &fake,
            format!(
                "#!/bin/sh\nprintf '%s|' \"$@\" >> '{}'\necho >> '{}'\n[ \"$1\" != fail ] || {{ echo boom >&2; exit 3; }}\n",
                log.display(),
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&fake, Permissions::from_mode(0o755)).unwrap();
        let cmds = vec![
            vec!["systemctl".into(), "enable".into(), "a b".into()],
            vec!["systemctl".into(), "fail".into()],
            vec!["systemctl".into(), "never".into()],
        ];
        let e = run_commands(&cmds, &fake).unwrap_err();
        match &e {
            UnitsError::Command {
                command, stderr, ..
            } => {
                assert_eq!(command, "systemctl fail");
                assert_eq!(stderr, "boom");
            }
            other => panic!("{other}"),
        }
        assert_eq!(fs::read_to_string(&log).unwrap(), "enable|a b|\nfail|\n");
        let e = run_commands(&[vec!["/nonexistent/x".into()]], &fake).unwrap_err();
        assert!(matches!(e, UnitsError::Spawn { .. }), "{e}");
    }
}
