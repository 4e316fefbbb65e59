//! Writing output files so that a failed or interrupted run loses nothing.
//!
//! Every file the workspace writes goes through [`Outputs`], a small
//! transaction:
//!
//! 1. [`Outputs::input`] records the files a run reads, and
//!    [`Outputs::output`] checks each target *before any work is done*: a
//!    directory, a socket or a block device is refused, a missing parent
//!    directory is refused, and two outputs naming the same file — or an output
//!    naming an input — are refused (same device and inode, or the same
//!    canonical path for files that do not exist yet). A temporary file is
//!    created beside each regular target at once, so an unwritable directory
//!    fails before the work, not after.
//! 2. [`Outputs::stage`] writes an output's bytes into its temporary file (and
//!    flushes it to the disk).
//! 3. [`Outputs::commit`] publishes everything: character devices and FIFOs
//!    (`/dev/null`, a pipe) are written directly — never renamed over — and
//!    regular targets are renamed into place. If any step fails, every target
//!    renamed so far is put back as it was (files that existed before are
//!    restored from a hard-link backup, new ones removed), and every temporary
//!    file is removed.
//!
//! Temporary files and directories are registered in a process-wide list
//! while they exist; [`remove_temporaries`] deletes them (the CLI calls it from
//! its SIGINT/SIGTERM handler), and it waits for a commit in progress to finish
//! first, so an interrupt never leaves a half-published set.
//!
//! [`StagedDir`] is the same idea for a whole directory (a training
//! checkpoint): written under a hidden temporary name, then renamed into place.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Why an output could not be planned, written or published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// A target that can never be written (a directory, a socket, a block
    /// device, a dangling link, a path without a file name...).
    #[error("{flag} {path}: {reason}")]
    Refused {
        /// The flag that named the path (`--out`), or its role in words.
        flag: String,
        /// The path as given.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Two outputs, or an output and an input, are the same file.
    #[error(
        "{flag} {path} is the same file as the {} {other} ({other_path}); {}",
        if *input { "input" } else { "output" },
        if *input { "refusing to overwrite an input" } else { "every output needs its own file" }
    )]
    Aliased {
        /// The later flag.
        flag: String,
        /// Its path.
        path: PathBuf,
        /// Whether the earlier path is an input (else another output).
        input: bool,
        /// The earlier flag it collides with.
        other: String,
        /// That flag's path.
        other_path: PathBuf,
    },
    /// An I/O failure while writing or publishing (disk full, permissions...).
    #[error("{flag} {path}: {what}: {source}")]
    Io {
        /// The flag (or role) of the output.
        flag: String,
        /// The file involved.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// [`Outputs::commit`] was called with an output never staged.
    #[error("{flag} {path}: nothing was written for this output")]
    NotStaged {
        /// The flag of the output.
        flag: String,
        /// Its path.
        path: PathBuf,
    },
}

type Result<T> = std::result::Result<T, OutputError>;

/// The temporary paths that exist right now (files and directories).
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Distinguishes the temporary names of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn temporaries() -> MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARIES.lock().unwrap_or_else(|e| e.into_inner())
}

fn unregister(list: &mut Vec<PathBuf>, path: &Path) {
    if let Some(i) = list.iter().position(|p| p == path) {
        list.swap_remove(i);
    }
}

fn remove_any(path: &Path) {
    // Best effort: there is nothing more to do with an error here.
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Deletes every temporary file and directory this process has created and not
/// yet published or removed. Waits for a commit in progress to finish first.
/// Meant for a signal handler's thread, just before the process exits.
pub fn remove_temporaries() {
    let mut list = temporaries();
    for p in list.drain(..) {
        remove_any(&p);
    }
}

/// `dir/.{name}.{pid}.{n}.{suffix}`, a name no other process uses.
fn hidden_name(dir: &Path, name: &std::ffi::OsStr, suffix: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!(".{}.{n}.{suffix}", std::process::id()));
    dir.join(s)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Which file a path names, for alias checks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FileId {
    /// An existing file: device and inode.
    #[cfg(unix)]
    Inode(u64, u64),
    /// An existing file where inodes are unknown, or a file still to be
    /// created: the canonical directory joined with the file name.
    Path(PathBuf),
}

#[cfg(unix)]
fn existing_id(_path: &Path, meta: &fs::Metadata) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    Ok(FileId::Inode(meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn existing_id(path: &Path, _meta: &fs::Metadata) -> io::Result<FileId> {
    Ok(FileId::Path(fs::canonicalize(path)?))
}

/// What an output target is.
#[derive(Debug)]
enum Kind {
    /// A regular file that does not exist yet, or exists: written to a
    /// temporary file and renamed into place.
    Regular {
        /// The temporary file, created when the output is planned.
        temp: PathBuf,
        /// Whether the target existed when planned (it is then backed up
        /// during the commit and restored if the commit fails).
        existed: bool,
        /// Whether [`Outputs::stage`] has written it.
        staged: bool,
    },
    /// A character device or a FIFO: written directly at commit time.
    Special {
        /// The bytes to write.
        bytes: Option<Vec<u8>>,
    },
}

#[derive(Debug)]
struct Target {
    flag: String,
    /// The path as given (for messages).
    given: PathBuf,
    /// The path written: `given` with a final symbolic link resolved.
    path: PathBuf,
    id: FileId,
    kind: Kind,
}

/// A handle to one planned output of an [`Outputs`] set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputId(usize);

/// A set of output files published together or not at all (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct Outputs {
    inputs: Vec<(String, PathBuf, FileId)>,
    targets: Vec<Target>,
}

impl Outputs {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a file the run reads, so that no output may replace it. A path
    /// that does not exist is ignored here (reading it reports the error).
    pub fn input(&mut self, flag: &str, path: impl AsRef<Path>) {
        let path = path.as_ref();
        if let Ok(meta) = fs::metadata(path) {
            if let Ok(id) = existing_id(path, &meta) {
                self.inputs.push((flag.to_string(), path.to_path_buf(), id));
            }
        }
    }

    /// Plans an output named by `--flag path`: checks what the target is and
    /// that it aliases no other output or input, and creates its temporary
    /// file (so an unwritable directory fails now).
    pub fn output(&mut self, flag: &str, path: impl AsRef<Path>) -> Result<OutputId> {
        let given = path.as_ref();
        let refuse = |reason: String| OutputError::Refused {
            flag: flag.to_string(),
            path: given.to_path_buf(),
            reason,
        };
        let io_err = |what, source| OutputError::Io {
            flag: flag.to_string(),
            path: given.to_path_buf(),
            what,
            source,
        };
        if given.as_os_str().is_empty() {
            return Err(refuse("an empty path".into()));
        }
        // Resolve a final symbolic link: the file it points to is written, and
        // the link stays.
        let path = match fs::symlink_metadata(given) {
            Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(given) {
                Ok(p) => p,
                Err(_) => return Err(refuse("a symbolic link to nothing".into())),
            },
            _ => given.to_path_buf(),
        };
        let (kind_is_special, id, existed) = match fs::metadata(&path) {
            Ok(meta) => {
                let ft = meta.file_type();
                let special = special_kind(&ft);
                if meta.is_dir() {
                    return Err(refuse("is a directory; name a file".into()));
                }
                match special {
                    Some(SpecialKind::Writable) => {}
                    Some(SpecialKind::Refused(what)) => {
                        return Err(refuse(format!("is a {what}; refusing to write to it")))
                    }
                    None if !ft.is_file() => {
                        return Err(refuse("is not a regular file".into()));
                    }
                    None => {}
                }
                let id = existing_id(&path, &meta).map_err(|e| io_err("reading", e))?;
                (special.is_some(), id, true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(name) = path.file_name() else {
                    return Err(refuse("has no file name".into()));
                };
                let dir = parent_of(&path);
                match fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(refuse(format!("{} is not a directory", dir.display()))),
                    Err(_) => {
                        return Err(refuse(format!(
                            "directory {} does not exist",
                            dir.display()
                        )))
                    }
                }
                let canon = fs::canonicalize(dir).map_err(|e| io_err("resolving", e))?;
                (false, FileId::Path(canon.join(name)), false)
            }
            Err(e) => return Err(io_err("reading", e)),
        };
        for t in &self.targets {
            if t.id == id {
                return Err(OutputError::Aliased {
                    flag: flag.to_string(),
                    path: given.to_path_buf(),
                    input: false,
                    other: t.flag.clone(),
                    other_path: t.given.clone(),
                });
            }
        }
        for (iflag, ipath, iid) in &self.inputs {
            if *iid == id {
                return Err(OutputError::Aliased {
                    flag: flag.to_string(),
                    path: given.to_path_buf(),
                    input: true,
                    other: iflag.clone(),
                    other_path: ipath.clone(),
                });
            }
        }
        let kind = if kind_is_special {
            Kind::Special { bytes: None }
        } else {
            let name = path.file_name().expect("checked above");
            let temp = create_temp(parent_of(&path), name)
                .map_err(|e| io_err("creating a temporary file beside it", e))?;
            Kind::Regular {
                temp,
                existed,
                staged: false,
            }
        };
        self.targets.push(Target {
            flag: flag.to_string(),
            given: given.to_path_buf(),
            path,
            id,
            kind,
        });
        Ok(OutputId(self.targets.len() - 1))
    }

    /// The path an output will be published at (a final link resolved).
    pub fn path(&self, id: OutputId) -> &Path {
        &self.targets[id.0].path
    }

    /// Writes an output's bytes (to its temporary file, flushed to the disk).
    pub fn stage(&mut self, id: OutputId, bytes: &[u8]) -> Result<()> {
        let t = &mut self.targets[id.0];
        match &mut t.kind {
            Kind::Special { bytes: b } => *b = Some(bytes.to_vec()),
            Kind::Regular { temp, staged, .. } => {
                let io_err = |source| OutputError::Io {
                    flag: t.flag.clone(),
                    path: temp.clone(),
                    what: "writing",
                    source,
                };
                let mut f = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&*temp)
                    .map_err(io_err)?;
                f.write_all(bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err)?;
                *staged = true;
            }
        }
        Ok(())
    }

    /// Publishes every staged output, all or nothing (see the module
    /// documentation). On error nothing that existed before is changed
    /// (character devices and FIFOs aside, which cannot be taken back) and no
    /// temporary file is left.
    pub fn commit(mut self) -> Result<()> {
        // Held for the whole commit: an interrupt waits for it to finish.
        let mut registry = temporaries();
        let targets = std::mem::take(&mut self.targets);
        let result = commit_all(&targets, &mut registry);
        for t in &targets {
            if let Kind::Regular { temp, .. } = &t.kind {
                if result.is_err() {
                    let _ = fs::remove_file(temp);
                }
                unregister(&mut registry, temp);
            }
        }
        result
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if self.targets.is_empty() {
            return;
        }
        let mut registry = temporaries();
        for t in &self.targets {
            if let Kind::Regular { temp, .. } = &t.kind {
                let _ = fs::remove_file(temp);
                unregister(&mut registry, temp);
            }
        }
    }
}

enum SpecialKind {
    /// A character device or a FIFO.
    Writable,
    /// Something never written.
    Refused(&'static str),
}

#[cfg(unix)]
fn special_kind(ft: &fs::FileType) -> Option<SpecialKind> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_char_device() || ft.is_fifo() {
        Some(SpecialKind::Writable)
    } else if ft.is_block_device() {
        Some(SpecialKind::Refused("block device"))
    } else if ft.is_socket() {
        Some(SpecialKind::Refused("socket"))
    } else {
        None
    }
}

#[cfg(not(unix))]
fn special_kind(_ft: &fs::FileType) -> Option<SpecialKind> {
    None
}

/// Creates (exclusively) and registers a hidden temporary file in `dir`.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<PathBuf> {
    let mut registry = temporaries();
    for _ in 0..16 {
        let temp = hidden_name(dir, name, "tmp");
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(_) => {
                registry.push(temp.clone());
                return Ok(temp);
            }
            // A stale file of an earlier process with the same pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

/// What [`commit_all`] did to one target, to undo it.
enum Done {
    /// The target did not exist; the new file is removed on failure.
    Created(PathBuf),
    /// The old target is kept at `backup`; moved back on failure.
    Replaced { target: PathBuf, backup: PathBuf },
}

fn commit_all(targets: &[Target], registry: &mut Vec<PathBuf>) -> Result<()> {
    for t in targets {
        let staged = match &t.kind {
            Kind::Regular { staged, .. } => *staged,
            Kind::Special { bytes } => bytes.is_some(),
        };
        if !staged {
            return Err(OutputError::NotStaged {
                flag: t.flag.clone(),
                path: t.given.clone(),
            });
        }
    }
    // Devices and FIFOs first: they cannot be taken back, so they go before
    // anything that a later failure would have to undo.
    for t in targets {
        if let Kind::Special { bytes: Some(bytes) } = &t.kind {
            OpenOptions::new()
                .write(true)
                .open(&t.path)
                .and_then(|mut f| f.write_all(bytes).and_then(|()| f.flush()))
                .map_err(|source| OutputError::Io {
                    flag: t.flag.clone(),
                    path: t.given.clone(),
                    what: "writing",
                    source,
                })?;
        }
    }
    let mut done: Vec<Done> = Vec::new();
    let mut result = Ok(());
    for t in targets {
        let Kind::Regular { temp, existed, .. } = &t.kind else {
            continue;
        };
        if let Err(e) = publish(t, temp, *existed, registry, &mut done) {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => {
            for d in done {
                if let Done::Replaced { backup, .. } = d {
                    let _ = fs::remove_file(&backup);
                    unregister(registry, &backup);
                }
            }
            for t in targets {
                sync_dir(parent_of(&t.path));
            }
            Ok(())
        }
        Err(e) => {
            for d in done.into_iter().rev() {
                match d {
                    Done::Created(p) => {
                        let _ = fs::remove_file(&p);
                    }
                    Done::Replaced { target, backup } => {
                        if fs::rename(&backup, &target).is_ok() {
                            unregister(registry, &backup);
                        }
                    }
                }
            }
            Err(e)
        }
    }
}

/// Renames one staged temporary file into place, keeping a backup of a file
/// that was there.
fn publish(
    t: &Target,
    temp: &Path,
    existed: bool,
    registry: &mut Vec<PathBuf>,
    done: &mut Vec<Done>,
) -> Result<()> {
    let io_err = |what, source| OutputError::Io {
        flag: t.flag.clone(),
        path: t.given.clone(),
        what,
        source,
    };
    let backup = if existed && t.path.exists() {
        let name = t.path.file_name().expect("a planned regular target");
        let backup = hidden_name(parent_of(&t.path), name, "bak");
        // A hard link keeps the target in place until the rename replaces it;
        // where links are not supported, the target is moved aside instead.
        if fs::hard_link(&t.path, &backup).is_err() {
            fs::rename(&t.path, &backup).map_err(|e| io_err("moving the old file aside", e))?;
            if let Err(e) = fs::rename(temp, &t.path) {
                let _ = fs::rename(&backup, &t.path);
                return Err(io_err("renaming into place", e));
            }
            registry.push(backup.clone());
            done.push(Done::Replaced {
                target: t.path.clone(),
                backup,
            });
            return Ok(());
        }
        registry.push(backup.clone());
        Some(backup)
    } else {
        None
    };
    if let Err(e) = fs::rename(temp, &t.path) {
        if let Some(b) = backup {
            let _ = fs::remove_file(&b);
            unregister(registry, &b);
        }
        return Err(io_err("renaming into place", e));
    }
    done.push(match backup {
        Some(backup) => Done::Replaced {
            target: t.path.clone(),
            backup,
        },
        None => Done::Created(t.path.clone()),
    });
    Ok(())
}

/// Flushes a directory's entries (the renames) to the disk; best effort.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A directory written under a hidden temporary name in its parent, then
/// renamed into place by [`StagedDir::commit`]; removed if dropped
/// uncommitted (and by [`remove_temporaries`]).
#[derive(Debug)]
pub struct StagedDir {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Creates the temporary directory for `target` (which must not exist
    /// when [`StagedDir::commit`] is called; an existing one is replaced).
    pub fn create(target: impl AsRef<Path>) -> io::Result<StagedDir> {
        let target = target.as_ref().to_path_buf();
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no directory name"))?
            .to_os_string();
        let mut registry = temporaries();
        let temp = hidden_name(parent_of(&target), &name, "tmp");
        fs::create_dir(&temp)?;
        registry.push(temp.clone());
        Ok(StagedDir {
            temp,
            target,
            committed: false,
        })
    }

    /// Where to write the files of the set.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Writes one file into the directory and flushes it to the disk.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut f = File::create(self.temp.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    /// Renames the directory into place (replacing a stale directory of the
    /// same name) and returns the final path.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        let mut registry = temporaries();
        sync_dir(&self.temp);
        if fs::symlink_metadata(&self.target).is_ok() {
            remove_any(&self.target);
        }
        fs::rename(&self.temp, &self.target)?;
        unregister(&mut registry, &self.temp);
        sync_dir(parent_of(&self.target));
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let mut registry = temporaries();
            remove_any(&self.temp);
            unregister(&mut registry, &self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("na-output-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn p(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn publishes_all_outputs_and_leaves_no_temporaries() {
        let d = Dir::new("ok");
        fs::write(d.p("b"), b"old").unwrap();
        let mut o = Outputs::new();
        let a = o.output("a", d.p("a")).unwrap();
        let b = o.output("b", d.p("b")).unwrap();
        o.stage(a, b"A").unwrap();
        o.stage(b, b"B").unwrap();
        o.commit().unwrap();
        assert_eq!(fs::read(d.p("a")).unwrap(), b"A");
        assert_eq!(fs::read(d.p("b")).unwrap(), b"B");
        assert_eq!(d.names(), ["a", "b"]);
    }

    #[test]
    fn a_directory_target_is_refused_before_anything_is_written() {
        let d = Dir::new("dir");
        fs::create_dir(d.p("adir")).unwrap();
        let mut o = Outputs::new();
        o.output("--out", d.p("x")).unwrap();
        let e = o.output("--lse", d.p("adir")).unwrap_err();
        assert!(e.to_string().contains("--lse") && e.to_string().contains("directory"));
        drop(o);
        assert_eq!(d.names(), ["adir"]);
    }

    #[test]
    fn a_failed_rename_restores_files_that_existed() {
        let d = Dir::new("restore");
        fs::write(d.p("a"), b"old a").unwrap();
        let mut o = Outputs::new();
        let a = o.output("a", d.p("a")).unwrap();
        let b = o.output("b", d.p("b")).unwrap();
        o.stage(a, b"new a").unwrap();
        o.stage(b, b"new b").unwrap();
        // After planning, something puts a non-empty directory where b goes.
        fs::create_dir(d.p("b")).unwrap();
        fs::write(d.p("b").join("keep"), b"x").unwrap();
        assert!(o.commit().is_err());
        assert_eq!(fs::read(d.p("a")).unwrap(), b"old a");
        assert_eq!(fs::read(d.p("b").join("keep")).unwrap(), b"x");
        assert_eq!(d.names(), ["a", "b"]);
    }

    #[test]
    fn aliases_between_outputs_and_with_inputs_are_refused() {
        let d = Dir::new("alias");
        fs::write(d.p("k"), b"key").unwrap();
        let mut o = Outputs::new();
        o.input("--key", d.p("k"));
        o.output("--out", d.p("a")).unwrap();
        let e = o.output("--lse", d.0.join(".").join("a")).unwrap_err();
        assert!(matches!(e, OutputError::Aliased { .. }), "{e}");
        let e = o.output("--lse", d.p("k")).unwrap_err();
        assert!(e.to_string().contains("the input --key"), "{e}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&d.0, d.p("link")).unwrap();
            let e = o.output("--lse", d.p("link").join("a")).unwrap_err();
            assert!(matches!(e, OutputError::Aliased { .. }), "{e}");
            fs::hard_link(d.p("k"), d.p("k2")).unwrap();
            let e = o.output("--lse", d.p("k2")).unwrap_err();
            assert!(e.to_string().contains("the input --key"), "{e}");
        }
        drop(o);
        assert_eq!(fs::read(d.p("k")).unwrap(), b"key");
    }

    #[cfg(unix)]
    #[test]
    fn a_character_device_is_written_directly_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let mut o = Outputs::new();
        let n = o.output("--out", "/dev/null").unwrap();
        o.stage(n, b"discarded").unwrap();
        o.commit().unwrap();
        assert!(fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        let mut o = Outputs::new();
        let n = o.output("--out", "/dev/full").unwrap();
        o.stage(n, b"no room").unwrap();
        let e = o.commit().unwrap_err();
        assert!(e.to_string().contains("/dev/full"), "{e}");
        assert!(fs::metadata("/dev/full")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn unstaged_outputs_are_an_error_and_dropping_removes_temporaries() {
        let d = Dir::new("unstaged");
        let mut o = Outputs::new();
        o.output("--out", d.p("a")).unwrap();
        assert_eq!(
            d.names().len(),
            1,
            "the temporary file exists while planned"
        );
        assert!(matches!(o.commit(), Err(OutputError::NotStaged { .. })));
        assert!(d.names().is_empty());
    }

    #[test]
    fn staged_dir_is_renamed_into_place_or_removed() {
        let d = Dir::new("sdir");
        let s = StagedDir::create(d.p("set")).unwrap();
        s.write("f", b"1").unwrap();
        drop(s);
        assert!(d.names().is_empty());
        fs::create_dir(d.p("set")).unwrap();
        fs::write(d.p("set").join("stale"), b"").unwrap();
        let s = StagedDir::create(d.p("set")).unwrap();
        s.write("f", b"2").unwrap();
        s.commit().unwrap();
        assert_eq!(d.names(), ["set"]);
        assert_eq!(fs::read(d.p("set").join("f")).unwrap(), b"2");
        assert!(!d.p("set").join("stale").exists());
    }
}
