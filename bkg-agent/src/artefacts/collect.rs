//! Taking a run's files out of its sandbox. The agent holds a descriptor of the sandbox's
//! /workspace from before the code starts (`Workspace::open`), so the files can be read after
//! the run whatever ended it: the descriptor keeps the sandbox's filesystem mounted until it is
//! dropped, even once pid 1 and its mount namespace are gone.
//!
//! Everything under /workspace was written by the code, so nothing in it is trusted: every path
//! is walked one component at a time from that descriptor with `O_NOFOLLOW` (a symbolic link is
//! never followed, so it cannot lead out of the sandbox), only regular files and directories are
//! taken, and a file is copied once into the agent's spool while it is hashed, so what is stored
//! is exactly what was hashed, even if a leftover process still writes to it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use bkg_schema::artefacts::RunFileKind;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use sha2::{Digest, Sha256};

use super::Spooled;

/// At most this many files are kept from one run.
const MAX_FILES: usize = 10_000;

/// How deep a kept directory is walked.
const MAX_DEPTH: usize = 64;

/// The sandbox's /workspace, opened from outside before the code runs.
#[derive(Debug)]
pub struct Workspace(OwnedFd);

impl Workspace {
    /// Opens `/proc/<pid_one>/root/workspace`: the root pid 1 built, whose /workspace is a
    /// directory of the sandbox's own disk. Pid 1 is the agent's child and waits for its order,
    /// so nothing of the code's can be in the way yet.
    pub fn open(pid_one: i32) -> std::io::Result<Self> {
        let path = format!("/proc/{pid_one}/root/workspace");
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self(fd))
    }
}

/// Copies what `keep` names (paths relative to /workspace, already checked) into `spool`,
/// hashing each file. Returns the files taken and what was left out, and why.
pub fn collect(workspace: &Workspace, keep: &[String], spool: &Path) -> (Vec<Spooled>, Vec<String>) {
    let mut walk = Walk { spool: spool.to_owned(), files: Vec::new(), left_out: Vec::new() };
    for path in keep {
        match open_beneath(&workspace.0, path) {
            Ok(Some(fd)) => walk.take(fd, path, 0),
            // Nothing there: a run that wrote no /workspace/out keeps nothing, quietly; a path
            // the caller named (`--keep`, cave.yaml's `keep`) is said to be missing.
            Ok(None) if path == crate::engine::run::OUT_DIR => {}
            Ok(None) => walk.left_out.push(format!("{path}: the run left nothing there")),
            Err(reason) => walk.left_out.push(format!("{path}: {reason}")),
        }
    }
    (walk.files, walk.left_out)
}

struct Walk {
    spool: PathBuf,
    files: Vec<Spooled>,
    left_out: Vec<String>,
}

impl Walk {
    fn take(&mut self, fd: OwnedFd, path: &str, depth: usize) {
        let kind = match fstat(fd.as_fd()) {
            Ok(stat) => SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT,
            Err(errno) => return self.left_out.push(format!("{path}: {errno}")),
        };
        if kind == SFlag::S_IFREG {
            if self.files.len() >= MAX_FILES {
                return self.left_out.push(format!("{path}: a run keeps at most {MAX_FILES} files"));
            }
            match self.spool_file(fd, path) {
                Ok(spooled) => self.files.push(spooled),
                Err(error) => self.left_out.push(format!("{path}: {error}")),
            }
        } else if kind == SFlag::S_IFDIR {
            if depth >= MAX_DEPTH {
                return self.left_out.push(format!("{path}: directories deeper than {MAX_DEPTH} are not kept"));
            }
            let (mut names, mut not_utf8) = match entries(&fd) {
                Ok(entries) => entries,
                Err(error) => return self.left_out.push(format!("{path}: {error}")),
            };
            not_utf8.sort();
            for name in not_utf8 {
                self.left_out.push(format!("{path}/{name}: a name that is not UTF-8 is not kept (rename it)"));
            }
            // The same run keeps its files in the same order.
            names.sort();
            for name in names {
                let child = format!("{path}/{name}");
                match open_child(&fd, &name) {
                    Ok(Some(child_fd)) => self.take(child_fd, &child, depth + 1),
                    Ok(None) => {}
                    Err(reason) => self.left_out.push(format!("{child}: {reason}")),
                }
            }
        } else {
            self.left_out.push(format!("{path}: only regular files and directories are kept"));
        }
    }

    fn spool_file(&self, fd: OwnedFd, path: &str) -> std::io::Result<Spooled> {
        std::fs::create_dir_all(&self.spool)?;
        let spool = self.spool.join(format!("{:05}", self.files.len()));
        let mut source = File::from(fd);
        let mut target = File::create(&spool)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        loop {
            let read = source.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            target.write_all(&buffer[..read])?;
            bytes += read as u64;
        }
        Ok(Spooled {
            path: path.to_owned(),
            kind: RunFileKind::File,
            spool,
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

/// Opens `relative` beneath `root` one component at a time, never following a link. `None`
/// when it does not exist.
fn open_beneath(root: &OwnedFd, relative: &str) -> Result<Option<OwnedFd>, String> {
    let mut parts = relative.split('/').peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        let parent = current.as_ref().unwrap_or(root);
        let opened = if parts.peek().is_some() {
            match openat(
                parent,
                part,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(nix::errno::Errno::ENOENT) => None,
                Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                    return Err(format!("{part} is not a directory (links are not followed)"));
                }
                Err(errno) => return Err(errno.to_string()),
            }
        } else {
            open_child(parent, part)?
        };
        match opened {
            Some(fd) => current = Some(fd),
            None => return Ok(None),
        }
    }
    Ok(current)
}

/// Opens one entry of a directory for reading without following a link or blocking on a FIFO.
fn open_child(dir: &OwnedFd, name: &str) -> Result<Option<OwnedFd>, String> {
    match openat(dir, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => {
            // Reads of a regular file never block; the flag was only for opening.
            let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|errno| errno.to_string())?;
            let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|errno| errno.to_string())?;
            Ok(Some(fd))
        }
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(nix::errno::Errno::ELOOP) => Err("a symbolic link (links are not kept)".into()),
        Err(errno) => Err(errno.to_string()),
    }
}

/// The names in a directory, read through its descriptor (`/proc/self/fd/N` is that very
/// directory, not a path looked up again): those in UTF-8, and the others as they can be shown
/// (a kept file's name is text in the API, so those cannot be kept).
fn entries(dir: &OwnedFd) -> std::io::Result<(Vec<String>, Vec<String>)> {
    let (mut names, mut not_utf8) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let name = entry?.file_name();
        match name.into_string() {
            Ok(name) => names.push(name),
            Err(name) => not_utf8.push(name.to_string_lossy().into_owned()),
        }
    }
    Ok((names, not_utf8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(dir: &Path) -> std::io::Result<Workspace> {
        Ok(Workspace(nix::fcntl::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?))
    }

    #[test]
    fn files_are_copied_and_hashed_and_links_are_never_followed() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let work = root.path().join("workspace");
        std::fs::create_dir_all(work.join("out/deep"))?;
        std::fs::write(work.join("out/a.txt"), b"hello")?;
        std::fs::write(work.join("out/deep/b.txt"), b"")?;
        std::fs::write(root.path().join("secret"), b"host file")?;
        std::os::unix::fs::symlink(root.path().join("secret"), work.join("out/link"))?;
        std::os::unix::fs::symlink(root.path(), work.join("escape"))?;
        nix::unistd::mkfifo(&work.join("out/fifo"), Mode::from_bits_truncate(0o600))?;
        let spool = root.path().join("spool");

        let (files, left_out) =
            collect(&workspace(&work)?, &["out".into(), "escape/secret".into(), "missing".into()], &spool);

        let taken: Vec<_> = files.iter().map(|file| (file.path.as_str(), file.bytes)).collect();
        assert_eq!(taken, [("out/a.txt", 5), ("out/deep/b.txt", 0)]);
        assert_eq!(files[0].sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(std::fs::read(&files[0].spool)?, b"hello");
        assert_eq!(left_out.len(), 4, "{left_out:?}");
        assert!(left_out.contains(&"missing: the run left nothing there".to_owned()), "{left_out:?}");
        assert!(left_out.iter().any(|line| line.starts_with("out/link: a symbolic link")), "{left_out:?}");
        assert!(left_out.iter().any(|line| line.starts_with("out/fifo: only regular files")), "{left_out:?}");
        assert!(
            left_out.iter().any(|line| line.starts_with("escape/secret: escape is not a directory")),
            "{left_out:?}"
        );
        Ok(())
    }
}
