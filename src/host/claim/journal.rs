//! The journal: the host-private file a claim copies a kind's queued lines
//! into, fsynced before the queue is emptied, and read back by the sync.
//! It lives in the root-only state directory, opened through [`super::fsat`].

use super::*;

/// The host-private journal of claimed, not yet executed records of one
/// kind: `<state_dir>/journal/<kind>.jsonl`, each line exactly as it was
/// validated in the queue.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating if needed) the journal of `kind` under `state_dir`,
    /// which must be a real directory owned by root and writable by root
    /// alone.
    pub fn open(state_dir: &Path, kind: Kind) -> Result<Journal, ClaimError> {
        let (dir, dir_path) = open_state_subdir(state_dir, JOURNAL_DIR)?;
        let name = format!("{kind}.jsonl");
        let path = dir_path.join(&name);
        let flags = OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&dir, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let fd = openat(
                    &dir,
                    name.as_str(),
                    flags | OFlag::O_CREAT,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_err("cannot create journal", &path, e))?;
                // Make a newly created journal's name as durable as its
                // contents (only then: the empty sync stays cheap).
                fsync(&dir).map_err(|e| io_err("cannot fsync", &dir_path, e))?;
                fd
            }
            Err(e) => return Err(io_err("cannot open journal", &path, e)),
        };
        Ok(Journal {
            path,
            file: File::from(fd),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes (whole lines) at the end.
    pub fn append(&self, bytes: &[u8]) -> Result<(), ClaimError> {
        (&self.file)
            .write_all(bytes)
            .map_err(|e| io_err("cannot append to journal", &self.path, e))
    }

    /// Flushes the journal to stable storage.
    pub fn sync(&self) -> Result<(), ClaimError> {
        self.file
            .sync_all()
            .map_err(|e| io_err("cannot fsync journal", &self.path, e))
    }

    /// The journal's size in bytes.
    pub fn len(&self) -> Result<u64, ClaimError> {
        file_size(&self.file, &self.path)
    }

    pub fn is_empty(&self) -> Result<bool, ClaimError> {
        Ok(self.len()? == 0)
    }

    /// Empties the journal once its batch has been fully executed.
    pub fn clear(&self) -> Result<(), ClaimError> {
        self.truncate_to(0)?;
        self.sync()
    }

    pub(super) fn truncate_to(&self, len: u64) -> Result<(), ClaimError> {
        self.file
            .set_len(len)
            .map_err(|e| io_err("cannot truncate journal", &self.path, e))
    }

    /// Calls `f` with each record, in order, streaming. A line that does not
    /// parse (it was validated when claimed, so only damage does that) is
    /// logged and skipped. Returns how many records were passed.
    pub fn for_each_record(&self, f: impl FnMut(Record)) -> Result<usize, ClaimError> {
        self.records(true, f)
    }

    /// Like [`Journal::for_each_record`], skipping damaged lines silently
    /// (a look ahead; the records are read, and damage reported, later).
    pub fn peek_records(&self, f: impl FnMut(Record)) -> Result<usize, ClaimError> {
        self.records(false, f)
    }

    fn records(&self, report: bool, mut f: impl FnMut(Record)) -> Result<usize, ClaimError> {
        let mut count = 0;
        for_each_line(&self.file, &self.path, |line_no, line| {
            match line.and_then(|l| Record::parse_line(l).map_err(|e| e.to_string())) {
                Ok(record) => {
                    count += 1;
                    f(record);
                }
                Err(reason) if report => tracing::error!(
                    "{} line {line_no}: {reason}; skipped (journal damaged?)",
                    self.path.display()
                ),
                Err(_) => {}
            }
            ControlFlow::Continue(())
        })?;
        Ok(count)
    }

    /// Whether the journal holds a record [`Journal::for_each_record`]
    /// would pass; reads only up to the first (damaged lines are skipped
    /// silently here and reported when the records are read).
    pub fn has_records(&self) -> Result<bool, ClaimError> {
        let mut found = false;
        for_each_line(&self.file, &self.path, |_, line| {
            found = line.is_ok_and(|l| Record::parse_line(l).is_ok());
            if found {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(found)
    }

    /// Every record, in order (see [`Journal::for_each_record`]).
    pub fn read_records(&self) -> Result<Vec<Record>, ClaimError> {
        let mut records = Vec::new();
        self.for_each_record(|r| records.push(r))?;
        Ok(records)
    }
}
