//! The reject log: lines a claim could not accept, with why, one JSON entry
//! per line in the root-only state directory, rotated past
//! [`super::REJECT_LOG_ROTATE_BYTES`].

use super::*;

/// The host-private log of rejected queue lines of one kind,
/// `<state_dir>/rejects/<kind>.jsonl`, rotated to `.1` at
/// [`REJECT_LOG_ROTATE_BYTES`].
#[derive(Debug)]
pub struct RejectLog {
    kind: Kind,
    dir: OwnedFd,
    dir_path: PathBuf,
    name: String,
}

/// One line of the reject log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectEntry {
    /// Unix milliseconds when the line was claimed.
    pub ts: u64,
    pub kind: Kind,
    pub line: usize,
    pub id: Option<String>,
    pub reason: String,
    pub excerpt: String,
}

impl RejectLog {
    /// Opens the reject log of `kind` under `state_dir` (same requirements as
    /// [`Journal::open`]).
    pub fn open(state_dir: &Path, kind: Kind) -> Result<RejectLog, ClaimError> {
        let (dir, dir_path) = open_state_subdir(state_dir, REJECTS_DIR)?;
        Ok(RejectLog {
            kind,
            dir,
            dir_path,
            name: format!("{kind}.jsonl"),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir_path.join(&self.name)
    }

    fn rotated_name(&self) -> String {
        format!("{}.1", self.name)
    }

    fn open_log(&self) -> Result<File, ClaimError> {
        openat(
            &self.dir,
            self.name.as_str(),
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(File::from)
        .map_err(|e| io_err("cannot open reject log", &self.path(), e))
    }

    /// Appends one entry per reject, stamped now, and fsyncs: the claim
    /// empties the queue right after, so this is the only copy.
    pub fn append(&self, rejects: &[Reject]) -> Result<(), ClaimError> {
        if rejects.is_empty() {
            return Ok(());
        }
        let mut file = self.open_log()?;
        if file_size(&file, &self.path())? >= REJECT_LOG_ROTATE_BYTES {
            renameat(
                &self.dir,
                self.name.as_str(),
                &self.dir,
                self.rotated_name().as_str(),
            )
            .map_err(|e| io_err("cannot rotate reject log", &self.path(), e))?;
            file = self.open_log()?;
        }
        let ts = now_ms();
        let mut text = Vec::new();
        for r in rejects {
            let entry = RejectEntry {
                ts,
                kind: self.kind,
                line: r.line,
                id: r.id.clone(),
                reason: crate::shared::ack::bounded(&r.reason, MAX_MESSAGE_BYTES).into_owned(),
                excerpt: r.excerpt.clone(),
            };
            serde_json::to_writer(&mut text, &entry)
                .map_err(|e| io_err("cannot serialize a reject for", &self.path(), e))?;
            text.push(b'\n');
        }
        file.write_all(&text)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_err("cannot append to reject log", &self.path(), e))
    }

    /// How many rejects were logged at or after `ts_ms` (Unix milliseconds),
    /// counting the rotated log too.
    pub fn count_since(&self, ts_ms: u64) -> Result<usize, ClaimError> {
        #[derive(Deserialize)]
        struct Stamp {
            ts: u64,
        }
        let mut count = 0;
        for name in [self.rotated_name(), self.name.clone()] {
            let path = self.dir_path.join(&name);
            let file = match openat(
                &self.dir,
                name.as_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => File::from(fd),
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io_err("cannot open reject log", &path, e)),
            };
            for_each_line(&file, &path, |_, line| {
                if let Ok(line) = line
                    && let Ok(stamp) = serde_json::from_slice::<Stamp>(line)
                    && stamp.ts >= ts_ms
                {
                    count += 1;
                }
                ControlFlow::Continue(())
            })?;
        }
        Ok(count)
    }
}
