//! Manual pages and shell completions, generated from the clap definition
//! of the `sidespawn` command line, so that what the package installs
//! always matches what `--help` says.
//!
//! Run by the packaging scripts through the hidden subcommands
//! `sidespawn generate-man DIR` and `sidespawn generate-completions DIR`
//! (`packaging/build-deb.sh`, `packaging/rpm/sidespawn.spec`). One page per
//! visible subcommand (`sidespawn-sync.1`, ...), as `git` and `cargo` do;
//! completions for bash, zsh and fish under the names each shell's
//! vendor directory expects.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

#[derive(Debug, thiserror::Error)]
pub enum ManError {
    #[error("cannot write {what} into {dir}: {source} (create the directory first)")]
    Write {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The shells completions are generated for, with the file name each one's
/// vendor directory expects (`/usr/share/bash-completion/completions/NAME`,
/// `/usr/share/zsh/vendor-completions/_NAME`,
/// `/usr/share/fish/vendor_completions.d/NAME.fish`).
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "sidespawn"),
    (Shell::Zsh, "_sidespawn"),
    (Shell::Fish, "sidespawn.fish"),
];

/// Writes `sidespawn.1` and one page per visible subcommand into `dir`.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<(), ManError> {
    clap_mangen::generate_to(cmd, dir).map_err(|source| ManError::Write {
        what: "manual pages",
        dir: dir.to_owned(),
        source,
    })
}

/// Writes the completion scripts of [`SHELLS`] into `dir`.
pub fn write_completions(mut cmd: clap::Command, dir: &Path) -> Result<(), ManError> {
    let err = |source| ManError::Write {
        what: "shell completions",
        dir: dir.to_owned(),
        source,
    };
    for (shell, file) in SHELLS {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "sidespawn", &mut out);
        std::fs::write(dir.join(file), out).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_for_a_command_with_subcommands() {
        let dir = std::env::temp_dir().join(format!("sidespawn-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cmd = clap::Command::new("sidespawn")
            .about("demo")
            .subcommand(clap::Command::new("sync").about("sync it"))
            .subcommand(clap::Command::new("secret").hide(true));
        write_man_pages(cmd.clone(), &dir).unwrap();
        write_completions(cmd, &dir).unwrap();
        let page = std::fs::read_to_string(dir.join("sidespawn-sync.1")).unwrap();
        assert!(page.contains("sync it"), "{page}");
        assert!(dir.join("sidespawn.1").is_file());
        assert!(!dir.join("sidespawn-secret.1").exists());
        for (_, f) in SHELLS {
            assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 0, "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
