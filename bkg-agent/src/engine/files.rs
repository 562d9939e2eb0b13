//! Files into and out of a live sandbox's /workspace as tar streams, written and read by the
//! agent through the root of the sandbox's pid 1. Every path is resolved by the kernel with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS)` from /workspace, so `..`,
//! absolute paths, symbolic links pointing out and mounts inside (a project's volumes) are
//! refused whatever the sandbox has planted; `..` and absolute paths are refused with a clearer
//! message before that. What is written belongs to the sandbox's user, and lands on its disk:
//! a full disk is an error that says so.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use bkg_schema::chunks::CopyFailure;
use bkg_schema::files::{FileEntry, FileKind};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// How much of a file is copied at a time: big enough for speed, small enough that a 1 GiB
/// upload never makes the agent grow.
const COPY_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A path the caller may not use: absolute, with `..`, or leading out of /workspace.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the sandbox's disk is full ({0}): free space in it or raise its disk limit")]
    DiskFull(String),
    #[error("the tar stream is not valid: {0}")]
    BadArchive(String),
    /// The sandbox's pid 1 has ended (its run ended) before its /workspace could be opened.
    #[error("the sandbox has ended")]
    Ended,
    #[error("{0}")]
    Io(String),
}

/// The tar reader's complaint as one printable line that repeats none of the stream's bytes: the
/// reader quotes the header field it could not read, and where a client sent more of a file than
/// its header said (one that grew while it was read) that field is the file's content (found by
/// a new-user trial: a log's lines in the error). Only the words before the quote are kept, and
/// the entry it followed is named.
fn bad_archive(error: &std::io::Error, after: Option<&str>) -> FilesError {
    let message = error.to_string();
    let words = message.split(':').next().unwrap_or_default();
    let mut said = String::new();
    for c in words.chars() {
        let c = if c.is_ascii_graphic() || c == ' ' { c } else { '?' };
        if !(c == '?' && said.ends_with('?')) {
            said.push(c);
        }
    }
    if said.len() > MAX_ARCHIVE_COMPLAINT {
        said.truncate(MAX_ARCHIVE_COMPLAINT);
        said.push_str("...");
    }
    let place = match after {
        Some(name) => format!(
            ", in or after entry `{}` (an entry whose data is longer or shorter than its header says breaks the \
             stream there)",
            bkg_schema::shown_briefly(name)
        ),
        None => " at its first entry".to_owned(),
    };
    FilesError::BadArchive(format!("{said}{place}"))
}

/// `unlinkat` of a file or link, never of a directory.
const NO_REMOVE_DIR: nix::unistd::UnlinkatFlags = nix::unistd::UnlinkatFlags::NoRemoveDir;

/// How much of the tar reader's complaint an error repeats.
const MAX_ARCHIVE_COMPLAINT: usize = 160;

/// /workspace of a live sandbox and who owns what is written there.
pub struct Workspace {
    root: OwnedFd,
    owner: u32,
    /// The use of the sandbox's disk: declared after `root`, so it is let go of only once the
    /// descriptor that keeps the disk's filesystem mounted is closed (`disk::DiskUse`).
    _disk: Option<super::disk::DiskUse>,
}

/// What an upload wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    pub links: u64,
}

/// A file or link of an upload written under a name of its own in the upload's staging
/// directory, renamed into place once the whole upload has been taken.
struct Staged {
    parent: PathBuf,
    staging_name: std::ffi::OsString,
    name: std::ffi::OsString,
}

/// What the name of an upload's staging directory starts with, at the top of /workspace (an
/// id follows). The directory is the agent's own (its user's, mode 0700).
const STAGING_PREFIX: &str = ".bkg-upload";

/// The staging directories of the uploads this agent is taking now. Any other at the top of a
/// workspace was left by an agent killed during an upload, and the next upload removes it.
static TAKING: std::sync::Mutex<std::collections::BTreeSet<std::ffi::OsString>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether `name` is one `make_staging` gives (an id, `ids::new_id`). Such a name at the top of
/// /workspace is bkg's.
fn is_staging_name(name: &[u8]) -> bool {
    crate::ids::is_new_id(name, STAGING_PREFIX)
}

/// Opens directory `name` of `parent` for listing, not following a link.
fn open_dir_at(parent: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(parent, name, flags, Mode::empty())
}

/// Whether `name` is one an upload stages an entry under: its count.
fn is_staged_entry_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(u8::is_ascii_digit)
}

/// An upload's staging directory, opened.
struct Staging {
    name: TakenName,
    dir: OwnedFd,
}

impl Staging {
    /// Removes what was staged under `name`, on the way out or given way to.
    fn discard(&self, name: &OsStr) {
        let _ = nix::unistd::unlinkat(self.dir.as_fd(), name, NO_REMOVE_DIR);
    }
}

/// The name of a staging directory, among those taken now (`TAKING`) while this lives.
struct TakenName(std::ffi::OsString);

impl TakenName {
    fn new(name: std::ffi::OsString) -> Self {
        if let Ok(mut taking) = TAKING.lock() {
            taking.insert(name.clone());
        }
        Self(name)
    }
}

impl Drop for TakenName {
    fn drop(&mut self) {
        if let Ok(mut taking) = TAKING.lock() {
            taking.remove(&self.0);
        }
    }
}

/// What an upload staged at a path, and what it counted for it.
enum StagedKind {
    File { bytes: u64 },
    Link,
}

/// A path as the caller gave it, checked: relative to /workspace, without `..`. Empty or `.`
/// is /workspace itself.
pub fn relative(given: impl AsRef<Path>) -> Result<PathBuf, FilesError> {
    let given = given.as_ref();
    let path = given.display();
    if given.as_os_str().as_bytes().contains(&0) {
        return Err(FilesError::Refused("a path may not contain a NUL byte".into()));
    }
    if given.is_absolute() {
        return Err(FilesError::Refused(format!(
            "`{path}` is absolute: give a path relative to /workspace (the sandbox's writable root)"
        )));
    }
    let mut clean = PathBuf::new();
    for component in given.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(FilesError::Refused(format!("`{path}` has `..`: paths stay inside /workspace")));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(FilesError::Refused(format!("`{path}` is not a relative path")));
            }
        }
    }
    Ok(clean)
}

fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() { "/workspace".into() } else { format!("/workspace/{}", path.display()) }
}

/// Turns an errno met at `path` into the error a caller understands.
fn failed(action: &str, path: &Path, errno: Errno) -> FilesError {
    match errno {
        Errno::ENOENT => FilesError::NotFound(format!("{} does not exist", shown(path))),
        // Out of /workspace through a mount (resolution beneath it does not cross one) or
        // through a link: both are EXDEV, so the refusal names both (found by a new-user trial:
        // a sandbox without volumes was sent looking for one); ELOOP is a link not followed.
        Errno::EXDEV => FilesError::Refused(format!(
            "{} leads out of /workspace, through a symbolic link pointing outside it or into a volume mounted into \
             the sandbox: refused (a volume's files are the host's, in the folder cave.yaml's volumes name: copy \
             them there)",
            shown(path)
        )),
        Errno::ELOOP => FilesError::Refused(format!(
            "{} leads out of /workspace through a symbolic link that is absolute or points outside (only relative \
             links inside /workspace are followed): refused",
            shown(path)
        )),
        Errno::ENOSPC | Errno::EDQUOT => FilesError::DiskFull(format!("{action} {}", shown(path))),
        Errno::ENOTDIR => FilesError::Refused(format!(
            "{}: a part of the path is a file, not a directory: give a directory there, or another path",
            shown(path)
        )),
        Errno::EISDIR => FilesError::Refused(format!(
            "{} is a directory: a file cannot take its place; give another path",
            shown(path)
        )),
        other => FilesError::Io(format!("{action} {}: {other}", shown(path))),
    }
}

/// Gives `fd` exactly `mode`, whatever the umask took from it at creation.
fn set_mode(fd: impl AsFd, mode: Mode, path: &Path) -> Result<(), FilesError> {
    nix::sys::stat::fchmod(fd, mode).map_err(|errno| failed("chmod", path, errno))
}

fn io_failed(action: &str, path: &Path, error: &std::io::Error) -> FilesError {
    match error.raw_os_error() {
        Some(code) => failed(action, path, Errno::from_raw(code)),
        None => FilesError::Io(format!("{action} {}: {error}", shown(path))),
    }
}

/// What a directory holds under one name: an entry of its filesystem, or another filesystem
/// mounted there (a cave.yaml volume), which resolution beneath /workspace does not enter; its
/// stat is that of the mounted directory as the sandbox sees it, for a listing.
enum Child {
    Entry(FileStat),
    Mount(FileStat),
}

/// An entry to open: `entry` beneath directory `dir`; `path` is its path from /workspace, for
/// messages.
#[derive(Clone, Copy)]
struct Entry<'a> {
    dir: BorrowedFd<'a>,
    entry: &'a Path,
    path: &'a Path,
}

/// How many directories deep a download goes. Each level holds a descriptor and a frame of the
/// agent's stack while its entries are sent: a tree the sandbox made thousands of levels deep
/// overflowed the stack of the agent's thread and ended the agent (found by a trial).
const MAX_DEPTH: usize = 256;

/// The entries of the open directory `dir` (`path` from /workspace), by name, with what they are
/// (symbolic links not followed), and the directory's listing, from which they can be opened.
fn children_of(dir: OwnedFd, path: &Path) -> Result<(nix::dir::Dir, Vec<(PathBuf, Child)>), FilesError> {
    let mut listing = nix::dir::Dir::from_fd(dir).map_err(|errno| failed("read", path, errno))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(|errno| failed("read", path, errno))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(PathBuf::from(OsStr::from_bytes(name)));
        }
    }
    names.sort();
    let mut children = Vec::with_capacity(names.len());
    for name in names {
        let child = match open_beneath_of(listing.as_fd(), &name, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(fd) => {
                Child::Entry(nix::sys::stat::fstat(&fd).map_err(|errno| failed("inspect", &path.join(&name), errno))?)
            }
            // Another filesystem mounted here (a cave.yaml volume): not entered.
            Err(Errno::EXDEV) => Child::Mount(
                nix::sys::stat::fstatat(&listing, name.as_path(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|errno| failed("inspect", &path.join(&name), errno))?,
            ),
            Err(errno) => return Err(failed("open", &path.join(&name), errno)),
        };
        children.push((name, child));
    }
    Ok((listing, children))
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_XDEV | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Opens `path` beneath directory `dir`, resolved as every path here is (`beneath`).
fn open_beneath_of(dir: BorrowedFd<'_>, path: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let path: &Path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).mode(mode).resolve(beneath());
    loop {
        match openat2(dir, path, how) {
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            other => return other,
        }
    }
}

fn kind_of(stat: &FileStat) -> FileKind {
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Directory,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

impl Workspace {
    /// /workspace as the sandbox whose pid 1 has host pid `pid_one` sees it; new files are
    /// `owner`'s (the sandbox user's host uid and gid). `Ended` when that pid 1 has exited: an
    /// ended process has no root, and every live sandbox has a /workspace. `disk` is the use of
    /// the sandbox's disk, kept while this is open.
    pub fn open(pid_one: i32, owner: u32, disk: Option<super::disk::DiskUse>) -> Result<Self, FilesError> {
        let path = format!("/proc/{pid_one}/root{}", super::plan::WORKSPACE);
        let root =
            nix::fcntl::open(path.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|errno| match errno {
                    Errno::ENOENT | Errno::ESRCH => FilesError::Ended,
                    other => FilesError::Io(format!("open the sandbox's /workspace: {other}")),
                })?;
        Ok(Self { root, owner, _disk: disk })
    }

    fn open_beneath(&self, path: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        open_beneath_of(self.root.as_fd(), path, flags, mode)
    }

    fn chown(&self, fd: impl AsFd, path: &Path) -> Result<(), FilesError> {
        nix::unistd::fchown(fd, Some(Uid::from_raw(self.owner)), Some(Gid::from_raw(self.owner)))
            .map_err(|errno| failed("chown", path, errno))
    }

    /// Makes `dir` and any missing parents, each the sandbox user's; returns it opened (for
    /// reading, not as a path only: its mode can be set through it).
    /// Opens directory `dir`, made with its missing parents first; those it made are added to
    /// `made`, outermost first.
    fn make_dirs(&self, dir: &Path, made: &mut Vec<PathBuf>) -> Result<OwnedFd, FilesError> {
        match self.open_dir(dir) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(failed("open", dir, errno)),
        }
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Err(FilesError::Io("/workspace is missing".into()));
        };
        let parent_fd = self.make_dirs(parent, made)?;
        match nix::sys::stat::mkdirat(parent_fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) => made.push(dir.to_path_buf()),
            Err(Errno::EEXIST) => {}
            Err(errno) => return Err(failed("create", dir, errno)),
        }
        let fd = self.open_dir(dir).map_err(|errno| failed("open", dir, errno))?;
        self.chown(&fd, dir)?;
        // The agent's umask (077) would leave it to its owner alone.
        set_mode(&fd, Mode::from_bits_truncate(0o755), dir)?;
        Ok(fd)
    }

    /// Writes the tar stream `archive` into `dest` (made if missing). Entries are files,
    /// directories and symbolic links; each entry's path is checked like the caller's.
    /// All or nothing for files and links: each is written into the upload's staging directory
    /// (at the top of /workspace, the agent's alone), and only once the whole stream has been
    /// taken are they renamed into place. A refused or broken upload takes its own files away
    /// again, and the directories it made that are then empty, so it leaves nothing behind and
    /// replaces nothing; what an agent killed meanwhile staged, the next upload removes.
    pub fn unpack(&self, dest: &Path, archive: impl Read) -> Result<Unpacked, FilesError> {
        self.remove_abandoned_stagings();
        let staging = self.make_staging()?;
        let mut made = Vec::new();
        let mut staged = Vec::new();
        let mut placed = 0;
        let unpacked = self.unpack_making(dest, archive, &staging, &mut made, &mut staged).and_then(|unpacked| {
            // The disk may be full only now, when the kernel writes the pages back: asked once
            // for the whole upload before anything is placed (a sync per file made 10,000 small
            // files take half a minute; found by a new-user trial).
            nix::unistd::syncfs(staging.dir.as_fd()).map_err(|errno| failed("write", dest, errno))?;
            for file in &staged {
                self.place_staged(&staging, file)?;
                placed += 1;
            }
            Ok(unpacked)
        });
        for file in &staged[placed..] {
            staging.discard(&file.staging_name);
        }
        self.take_away(Path::new(""), &staging.name.0, nix::unistd::UnlinkatFlags::RemoveDir);
        if unpacked.is_err() {
            for dir in made.iter().rev() {
                let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { continue };
                // Only an empty one goes (rmdir): what the code put there meanwhile stays.
                self.take_away(parent, name, nix::unistd::UnlinkatFlags::RemoveDir);
            }
        }
        unpacked
    }

    /// Opens directory `dir` beneath /workspace (for reading: its entries, its mode).
    fn open_dir(&self, dir: &Path) -> Result<OwnedFd, Errno> {
        self.open_beneath(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
    }

    /// Removes `name` from directory `parent` as far as it can: a failed upload's own, taken
    /// away on the way out, where a failure has nothing left to tell.
    fn take_away(&self, parent: &Path, name: &OsStr, how: nix::unistd::UnlinkatFlags) {
        if let Ok(parent_fd) = self.open_dir(parent) {
            let _ = nix::unistd::unlinkat(parent_fd.as_fd(), name, how);
        }
    }

    /// Renames a staged file or link over its place.
    fn place_staged(&self, staging: &Staging, file: &Staged) -> Result<(), FilesError> {
        let parent_fd = self.open_dir(&file.parent).map_err(|errno| failed("open", &file.parent, errno))?;
        nix::fcntl::renameat(
            staging.dir.as_fd(),
            file.staging_name.as_os_str(),
            parent_fd.as_fd(),
            file.name.as_os_str(),
        )
        .map_err(|errno| failed("replace", &file.parent.join(&file.name), errno))
    }

    /// Makes this upload's staging directory at the top of /workspace, where whatever the
    /// upload's destination, it is on the same filesystem (no path here crosses a mount).
    fn make_staging(&self) -> Result<Staging, FilesError> {
        // Named among those taken before it exists: another upload's sweep must not take it.
        let name = TakenName::new(crate::ids::new_id(STAGING_PREFIX).into());
        let top = self.open_dir(Path::new("")).map_err(|errno| failed("open", Path::new(""), errno))?;
        let staging_failed = |errno| failed("create", Path::new(&name.0), errno);
        nix::sys::stat::mkdirat(top.as_fd(), name.0.as_os_str(), Mode::S_IRWXU).map_err(staging_failed)?;
        let dir = open_dir_at(top.as_fd(), &name.0).map_err(|errno| {
            let _ = nix::unistd::unlinkat(top.as_fd(), name.0.as_os_str(), nix::unistd::UnlinkatFlags::RemoveDir);
            staging_failed(errno)
        })?;
        Ok(Staging { name, dir })
    }

    /// Removes the staging directories at the top of /workspace that no upload of this agent
    /// is taking: an agent killed during an upload left them, with its files (found by a
    /// new-user trial: `.bkg-upload_*` files stayed in the workspace for good). They are known
    /// by their name alone (`is_staging_name`), since a persistent sandbox's runs hand the whole
    /// workspace to the sandbox's user, and in them only the entries an upload stages go.
    fn remove_abandoned_stagings(&self) {
        let Ok(top) = self.open_dir(Path::new("")) else { return };
        let Ok(mut listing) = nix::dir::Dir::from_fd(top) else { return };
        let taking = TAKING.lock().map(|taking| taking.clone()).unwrap_or_default();
        let names_in = |dir: &mut nix::dir::Dir| -> Vec<std::ffi::OsString> {
            let names = dir.iter().filter_map(Result::ok);
            names.map(|entry| OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string()).collect()
        };
        let abandoned = names_in(&mut listing)
            .into_iter()
            .filter(|name| is_staging_name(name.as_bytes()) && !taking.contains(name));
        let Ok(workspace) = nix::sys::stat::fstat(listing.as_fd()) else { return };
        for name in abandoned.collect::<Vec<_>>() {
            let Ok(dir) = open_dir_at(listing.as_fd(), &name) else { continue };
            // A volume mounted at such a name is the host's folder, never a staging.
            if nix::sys::stat::fstat(&dir).map_or(true, |stat| stat.st_dev != workspace.st_dev) {
                continue;
            }
            let Ok(mut staged) = nix::dir::Dir::from_fd(dir) else { continue };
            let staged_names = names_in(&mut staged).into_iter().filter(|name| is_staged_entry_name(name.as_bytes()));
            for staged_name in staged_names.collect::<Vec<_>>() {
                let _ = nix::unistd::unlinkat(staged.as_fd(), staged_name.as_os_str(), NO_REMOVE_DIR);
            }
            let _ = nix::unistd::unlinkat(listing.as_fd(), name.as_os_str(), nix::unistd::UnlinkatFlags::RemoveDir);
        }
    }

    /// Refuses to stage `file_name` in `parent_fd` when a directory holds its place: a file
    /// cannot be renamed over one, and finding that only once every file is staged would
    /// leave the upload half placed.
    fn refuse_directory_in_place(parent_fd: &OwnedFd, file_name: &OsStr, path: &Path) -> Result<(), FilesError> {
        match nix::sys::stat::fstatat(parent_fd, file_name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if kind_of(&stat) == FileKind::Directory => Err(failed("replace", path, Errno::EISDIR)),
            _ => Ok(()),
        }
    }

    fn unpack_making(
        &self,
        dest: &Path,
        archive: impl Read,
        staging: &Staging,
        made: &mut Vec<PathBuf>,
        staged: &mut Vec<Staged>,
    ) -> Result<Unpacked, FilesError> {
        self.make_dirs(dest, made)?;
        let mut archive = tar::Archive::new(archive);
        let mut unpacked = Unpacked::default();
        let entries = archive.entries().map_err(|error| bad_archive(&error, None))?;
        let mut buffer = vec![0u8; COPY_BUFFER];
        // The files and links this archive makes, staged to be placed last: nothing of it can go
        // beneath one (it would go into a directory of that name, which they could not replace),
        // and one named twice is the later one, as tar extracts it.
        let mut placed_last: HashMap<PathBuf, StagedKind> = HashMap::new();
        let mut staged_count: u64 = 0;
        // The last entry begun, which a stream broken later is named by.
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|error| bad_archive(&error, last.as_deref()))?;
            let name_bytes = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&name_bytes).into_owned();
            last = Some(name.clone());
            // The entry's own bytes: a name that is not UTF-8 is kept as it is, not mangled.
            let inner = relative(OsStr::from_bytes(&name_bytes))
                .map_err(|error| FilesError::Refused(format!("tar entry: {error}")))?;
            let path = dest.join(&inner);
            let mode = Mode::from_bits_truncate(entry.header().mode().unwrap_or(0o644) & 0o777);
            let kind = entry.header().entry_type();
            let mut beneath = path.ancestors().filter(|ancestor| *ancestor != path || kind.is_dir());
            if let Some((made, what)) =
                beneath.find_map(|ancestor| placed_last.get(ancestor).map(|what| (ancestor, what)))
            {
                let (what, instead) = match what {
                    StagedKind::Link => ("symbolic link", "put the entry at the link's target instead"),
                    StagedKind::File { .. } => ("file", "give the file or the directory another name"),
                };
                return Err(FilesError::Refused(format!(
                    "tar entry {name}: {} is a {what} this archive makes, and nothing of an archive goes beneath a \
                     file or link it makes: {instead}",
                    shown(made)
                )));
            }
            // Named again: the earlier one gives way.
            if let Some(earlier) = placed_last.remove(&path) {
                match earlier {
                    StagedKind::File { bytes } => {
                        unpacked.files -= 1;
                        unpacked.bytes -= bytes;
                    }
                    StagedKind::Link => unpacked.links -= 1,
                }
                if let Some(index) = staged.iter().position(|file| file.parent.join(&file.name) == path) {
                    let file = staged.remove(index);
                    staging.discard(&file.staging_name);
                }
            }
            if kind.is_dir() {
                // The archive's mode; directories it only implies get 0755.
                set_mode(self.make_dirs(&path, made)?, mode, &path)?;
                continue;
            }
            if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() {
                continue;
            }
            let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let parent_fd = self.make_dirs(parent, made)?;
            Self::refuse_directory_in_place(&parent_fd, file_name, &path)?;
            // Its place in the staging directory: the count of entries staged so far.
            let staging_name = std::ffi::OsString::from(staged_count.to_string());
            staged_count += 1;
            if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| FilesError::BadArchive(format!("symbolic link {name} has no target")))?
                    .into_owned();
                nix::unistd::symlinkat(OsStr::from_bytes(&target), staging.dir.as_fd(), staging_name.as_os_str())
                    .map_err(|errno| failed("create", &path, errno))?;
                placed_last.insert(path.clone(), StagedKind::Link);
                unpacked.links += 1;
                // Staged once made: a failure from here on takes it away.
                staged.push(Staged {
                    parent: parent.to_path_buf(),
                    staging_name: staging_name.clone(),
                    name: file_name.to_os_string(),
                });
                nix::unistd::fchownat(
                    staging.dir.as_fd(),
                    staging_name.as_os_str(),
                    Some(Uid::from_raw(self.owner)),
                    Some(Gid::from_raw(self.owner)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|errno| failed("chown", &path, errno))?;
                continue;
            }
            if !(kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse()) {
                return Err(FilesError::Refused(format!(
                    "tar entry {name} is a {kind:?}: only files, directories and symbolic links are taken"
                )));
            }
            let file = nix::fcntl::openat(
                staging.dir.as_fd(),
                staging_name.as_os_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                mode,
            )
            .map_err(|errno| failed("create", &path, errno))?;
            staged.push(Staged { parent: parent.to_path_buf(), staging_name, name: file_name.to_os_string() });
            let mut file = std::fs::File::from(file);
            let size = entry.size();
            // The mode the archive gives, not the one the agent's private umask leaves of it.
            self.chown(&file, &path)?;
            set_mode(&file, mode, &path)?;
            // Found by a new-user trial: a 200 MiB sparse file took 200 MiB of the sandbox's disk.
            bkg_schema::chunks::copy_leaving_holes(&mut entry, &mut file, size, &mut buffer).map_err(|failure| {
                match failure {
                    CopyFailure::Read(error) => bad_archive(&error, Some(&name)),
                    CopyFailure::Write(error) => io_failed("write", &path, &error),
                    CopyFailure::Short => FilesError::BadArchive(format!("the stream ended inside {name}")),
                }
            })?;
            // The time the file was last changed, as the archive has it, as `cp -p` and `docker
            // cp` keep it (found by a new-user trial: every upload was dated now, which misleads
            // `make` and anyone reading `ls -l`).
            if let Ok(seconds) = entry.header().mtime() {
                let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
                file.set_modified(modified).map_err(|error| io_failed("set the time of", &path, &error))?;
            }
            unpacked.bytes += size;
            unpacked.files += 1;
            placed_last.insert(path, StagedKind::File { bytes: size });
        }
        Ok(unpacked)
    }

    /// Writes `source` (a file, directory or symbolic link) as a tar stream to `out`, named by
    /// its last component; /workspace itself is written as its contents. With `follow`
    /// (`link/`, as `cp -r link/` reads it), a link to a directory inside /workspace is written
    /// as that directory, under the link's name.
    pub fn pack(&self, source: &Path, follow: bool, out: impl Write) -> Result<(), FilesError> {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        let stat = match follow {
            true => self
                .open_dir(source)
                .and_then(|dir| nix::sys::stat::fstat(&dir))
                .map_err(|errno| failed("open", source, errno))?,
            false => self.stat(source)?,
        };
        let name = source.file_name().map(PathBuf::from).unwrap_or_default();
        let at = Entry { dir: self.root.as_fd(), entry: source, path: source };
        self.append(&mut builder, at, &name, &stat, 0)?;
        builder.into_inner().map_err(|error| FilesError::Io(format!("finish the tar stream: {error}")))?;
        Ok(())
    }

    /// Writes what directory `dir` holds as a tar stream to `out`, entries named from `dir`; a
    /// missing `dir` is an empty stream.
    pub fn pack_contents(&self, dir: &Path, out: impl Write) -> Result<(), FilesError> {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        match self.stat(dir) {
            Ok(stat) if kind_of(&stat) == FileKind::Directory => {
                let at = Entry { dir: self.root.as_fd(), entry: dir, path: dir };
                self.append(&mut builder, at, Path::new(""), &stat, 0)?;
            }
            Ok(_) | Err(FilesError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
        builder.into_inner().map_err(|error| FilesError::Io(format!("finish the tar stream: {error}")))?;
        Ok(())
    }

    fn stat(&self, path: &Path) -> Result<FileStat, FilesError> {
        let fd = self
            .open_beneath(path, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|errno| failed("open", path, errno))?;
        nix::sys::stat::fstat(&fd).map_err(|errno| failed("inspect", path, errno))
    }

    /// Writes `at` to `builder` under `name`, a directory with what it holds: each entry is
    /// opened from its directory's descriptor, not by its path from /workspace, so a tree whose
    /// paths are longer than the kernel takes (`PATH_MAX`) is sent whole; `depth` counts the
    /// directories above it, which [`MAX_DEPTH`] bounds.
    fn append<W: Write>(
        &self,
        builder: &mut tar::Builder<W>,
        at: Entry<'_>,
        name: &Path,
        stat: &FileStat,
        depth: usize,
    ) -> Result<(), FilesError> {
        let path = at.path;
        let write_failed = |error: std::io::Error| FilesError::Io(format!("send {}: {error}", shown(path)));
        let open = |flags: OFlag| {
            open_beneath_of(at.dir, at.entry, flags | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(|errno| failed("open", path, errno))
        };
        let mut header = tar::Header::new_gnu();
        header.set_mode(stat.st_mode & 0o7777);
        header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
        header.set_uid(1000);
        header.set_gid(1000);
        match kind_of(stat) {
            FileKind::File => {
                let file = std::fs::File::from(open(OFlag::O_RDONLY)?);
                let size = file.metadata().map_err(|error| io_failed("inspect", path, &error))?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                // A file that changes while it is sent is sent as long as it was.
                builder
                    .append_data(&mut header, name, std::io::BufReader::with_capacity(COPY_BUFFER, file).take(size))
                    .map_err(write_failed)?;
            }
            FileKind::Symlink => {
                let fd = open(OFlag::O_PATH)?;
                let target = nix::fcntl::readlinkat(fd.as_fd(), "").map_err(|errno| failed("read", path, errno))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, name, Path::new(&target)).map_err(write_failed)?;
            }
            FileKind::Directory => {
                if depth > MAX_DEPTH {
                    return Err(FilesError::Refused(format!(
                        "{} is more than {MAX_DEPTH} directories deep: copy a directory further down",
                        shown(path)
                    )));
                }
                if !name.as_os_str().is_empty() {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, name, std::io::empty()).map_err(write_failed)?;
                }
                // `pack` of `link/` opens the directory the link leads to (inside /workspace).
                let links = if depth == 0 { OFlag::empty() } else { OFlag::O_NOFOLLOW };
                let dir =
                    open_beneath_of(at.dir, at.entry, OFlag::O_RDONLY | OFlag::O_DIRECTORY | links, Mode::empty())
                        .map_err(|errno| failed("open", path, errno))?;
                let (listing, children) = children_of(dir, path)?;
                for (child, kind) in children {
                    let child_path = path.join(&child);
                    match kind {
                        Child::Entry(child_stat) => {
                            let at = Entry { dir: listing.as_fd(), entry: &child, path: &child_path };
                            self.append(builder, at, &name.join(&child), &child_stat, depth + 1)?;
                        }
                        // Said as what it is, without its files (the host's): an empty
                        // directory marked `BKG.mount`, which `bkg cp` leaves out and names.
                        Child::Mount(_) => {
                            builder
                                .append_pax_extensions([(bkg_schema::files::MOUNT_MARK, &b"1"[..])])
                                .map_err(write_failed)?;
                            let mut header = tar::Header::new_gnu();
                            header.set_entry_type(tar::EntryType::Directory);
                            header.set_mode(0o755);
                            header.set_size(0);
                            builder
                                .append_data(&mut header, name.join(&child), std::io::empty())
                                .map_err(write_failed)?;
                        }
                    }
                }
            }
            // A named pipe has no content, but is sent as what it is, so that the copy can say it
            // was left out (`bkg cp`); a socket has no kind in a tar stream, and is not sent.
            FileKind::Other if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_size(0);
                builder.append_data(&mut header, name, std::io::empty()).map_err(write_failed)?;
            }
            FileKind::Other => {}
        }
        Ok(())
    }

    /// The entries of directory `dir`, by name, with what they are (symbolic links not followed).
    fn children(&self, dir: &Path) -> Result<Vec<(PathBuf, Child)>, FilesError> {
        let fd = self.open_dir(dir).map_err(|errno| failed("open", dir, errno))?;
        children_of(fd, dir).map(|(_, children)| children)
    }

    /// Refuses `dir` unless it is a directory (or a link inside /workspace to one): a path given
    /// as `a.txt/` names a directory, as it does to `cp`.
    pub fn require_directory(&self, dir: &Path) -> Result<(), FilesError> {
        self.open_dir(dir).map(drop).map_err(|errno| match errno {
            Errno::ENOTDIR if self.stat(dir).is_ok_and(|stat| kind_of(&stat) != FileKind::Directory) => {
                FilesError::Refused(format!(
                    "{}/ names a directory, but it is not one: give it without the trailing slash",
                    shown(dir)
                ))
            }
            other => failed("open", dir, other),
        })
    }

    /// What is in directory `dir` (or, for a file or a link, itself); with `follow`, what is in
    /// the directory a link `dir` leads to, which must be inside /workspace.
    pub fn list(&self, dir: &Path, follow: bool) -> Result<Vec<FileEntry>, FilesError> {
        let stat = self.stat(dir)?;
        let entries = if kind_of(&stat) == FileKind::Directory || (follow && kind_of(&stat) == FileKind::Symlink) {
            // A volume's own directory is listed, not entered.
            let children = self.children(dir)?.into_iter();
            children.map(|(name, Child::Entry(stat) | Child::Mount(stat))| (name, stat)).collect()
        } else {
            vec![(dir.file_name().map(PathBuf::from).unwrap_or_default(), stat)]
        };
        Ok(entries
            .into_iter()
            .map(|(name, stat)| FileEntry {
                name: name.to_string_lossy().into_owned(),
                kind: kind_of(&stat),
                size: u64::try_from(stat.st_size).unwrap_or(0),
                mode: stat.st_mode & 0o7777,
                modified_ms: u64::try_from(stat.st_mtime).unwrap_or(0) * 1000,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn paths_are_relative_to_the_workspace_without_parent_steps() {
        assert_eq!(relative("a/./b").ok(), Some(PathBuf::from("a/b")));
        assert_eq!(relative("").ok(), Some(PathBuf::new()));
        assert_eq!(relative(".").ok(), Some(PathBuf::new()));
        assert!(matches!(relative("/etc/passwd"), Err(FilesError::Refused(_))));
        assert!(matches!(relative("a/../../b"), Err(FilesError::Refused(_))));
        assert!(matches!(relative("a\0b"), Err(FilesError::Refused(_))));
    }

    #[test]
    fn a_body_that_is_not_tar_is_named_in_printable_words() {
        // Bytes no tar writer makes: the reader quotes the checksum field it cannot read.
        let block: Vec<u8> = (0..1024u32).map(|i| [0xff, 0x1e, 0xc3, 0x28, 0x9b][(i % 5) as usize]).collect();
        let mut archive = tar::Archive::new(&block[..]);
        let error = match archive.entries().map(|mut entries| entries.next()) {
            Ok(Some(Err(error))) | Err(error) => error,
            Ok(_) => panic!("the tar reader took binary bytes for a header"),
        };
        let FilesError::BadArchive(said) = bad_archive(&error, None) else { panic!("not a bad archive") };
        assert!(said.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{said:?}");
        assert!(!said.contains('?'), "none of the bytes repeated: {said:?}");
        assert!(!error.to_string().is_ascii(), "the reader quotes the bytes: {error}");
    }

    /// A file that grew while a client sent it: its header says less than the data that follows,
    /// which the reader then takes for the next header. The error names the entry and repeats
    /// none of the file's content (found by a new-user trial: a log's lines in the error).
    #[test]
    fn a_file_longer_than_its_header_is_named_without_its_content() {
        let mut header = tar::Header::new_gnu();
        header.set_path("grow/log.txt").expect("path");
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        let mut stream = header.as_bytes().to_vec();
        let content: String = (0..100).map(|line| format!("line {line} appended while copying\n")).collect();
        stream.extend_from_slice(content.as_bytes());
        let mut archive = tar::Archive::new(&stream[..]);
        let mut entries = archive.entries().expect("entries");
        assert!(entries.next().is_some_and(|first| first.is_ok()), "the first header is whole");
        let Some(Err(error)) = entries.next() else { panic!("the content taken for a header") };
        assert!(error.to_string().contains("appended"), "the reader quotes the content: {error}");
        let FilesError::BadArchive(said) = bad_archive(&error, Some("grow/log.txt")) else {
            panic!("not a bad archive")
        };
        assert!(!said.contains("appended") && !said.contains("line"), "{said}");
        assert!(said.contains("in or after entry `grow/log.txt`"), "{said}");
    }

    #[test]
    fn a_failed_upload_takes_away_the_directories_it_made_and_no_others() {
        let (dir, workspace) = temp_workspace();
        std::fs::create_dir(dir.path().join("kept")).expect("mkdir");
        // A header promising 4 KiB of a file, then the stream breaks off.
        let mut header = tar::Header::new_gnu();
        header.set_path("deep/file.txt").expect("path");
        header.set_size(4096);
        header.set_mode(0o644);
        header.set_cksum();
        let mut broken = header.as_bytes().to_vec();
        broken.extend_from_slice(&[b'x'; 100]);
        assert!(workspace.unpack(Path::new("kept/new/er"), broken.as_slice()).is_err());
        assert!(dir.path().join("kept").is_dir(), "a directory that was there stays");
        assert!(!dir.path().join("kept/new").exists(), "the upload's own directories are gone");
        // A whole one keeps them.
        let mut whole = tar::Builder::new(Vec::new());
        header.set_size(3);
        header.set_cksum();
        whole.append(&header, &b"abc"[..]).expect("append");
        let whole = whole.into_inner().expect("tar");
        assert_eq!(workspace.unpack(Path::new("kept/new"), whole.as_slice()).map(|done| done.files).ok(), Some(1));
        assert_eq!(std::fs::read(dir.path().join("kept/new/deep/file.txt")).ok(), Some(b"abc".to_vec()));
    }

    /// A tar of `entries` (name, contents; `None`: a link to `target`), its last file cut short
    /// when `broken`.
    fn tar_of(entries: &[(&str, Option<&[u8]>)], broken: bool) -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        for (name, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            match contents {
                Some(bytes) => {
                    header.set_size(bytes.len() as u64);
                    header.set_cksum();
                    archive.append_data(&mut header, name, *bytes).expect("append");
                }
                None => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    archive.append_link(&mut header, name, "target").expect("append link");
                }
            }
        }
        let mut bytes = archive.into_inner().expect("tar");
        if broken {
            let mut header = tar::Header::new_gnu();
            header.set_path("last.txt").expect("path");
            header.set_size(4096);
            header.set_mode(0o644);
            header.set_cksum();
            // The stream breaks off inside the last file (no end-of-archive blocks).
            bytes.truncate(bytes.len() - 1024);
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&[b'x'; 100]);
        }
        bytes
    }

    fn temp_workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().expect("temp dir");
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(dir.path(), flags, Mode::empty()).expect("open the temp dir");
        let workspace = Workspace { root, owner: nix::unistd::geteuid().as_raw(), _disk: None };
        (dir, workspace)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn nothing_goes_beneath_a_link_the_archive_makes() {
        let (dir, workspace) = temp_workspace();
        let entries: [(&str, Option<&[u8]>); 2] = [("link", None), ("link/file.txt", Some(b"x"))];
        let refused = workspace.unpack(Path::new("up"), tar_of(&entries, false).as_slice());
        // Was: "/workspace/up/link is a directory", as the file made a directory of the link's name.
        assert!(
            matches!(&refused, Err(FilesError::Refused(said)) if said == "tar entry link/file.txt: /workspace/up/link is \
                a symbolic link this archive makes, and nothing of an archive goes beneath a file or link it makes: \
                put the entry at the link's target instead"),
            "{:?}",
            refused.err()
        );
        assert_eq!(names_in(dir.path()), Vec::<String>::new(), "nothing is left, not even the directory it made");
        // A file it makes, then a file beneath it, however deep (was: "up/a is a
        // directory", though the archive made it a file).
        for beneath in ["a/b", "a/b/c"] {
            let entries: [(&str, Option<&[u8]>); 2] = [("a", Some(b"x")), (beneath, Some(b"y"))];
            let refused = workspace.unpack(Path::new("up"), tar_of(&entries, false).as_slice());
            assert!(
                matches!(&refused, Err(FilesError::Refused(said)) if said.starts_with(&format!("tar entry {beneath}: \
                    /workspace/up/a is a file this archive makes"))),
                "{beneath}: {:?}",
                refused.err()
            );
            assert_eq!(names_in(dir.path()), Vec::<String>::new());
        }
        // Or a directory of its name.
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(1);
        archive.append_data(&mut header, "a", b"x".as_slice()).expect("append a file");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        archive.append_data(&mut header, "a/", std::io::empty()).expect("append a directory");
        let bytes = archive.into_inner().expect("tar");
        let refused = workspace.unpack(Path::new("up"), bytes.as_slice());
        assert!(
            matches!(&refused, Err(FilesError::Refused(said)) if said.contains("up/a is a file this archive makes")),
            "{:?}",
            refused.err()
        );
    }

    /// A reader of `bytes` that, once `after` of them are read, ends the process there and
    /// then, as a killed agent ends: nothing is unwound or cleaned up.
    struct DiesAfter<'a> {
        bytes: &'a [u8],
        after: usize,
    }

    impl Read for DiesAfter<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            if self.after == 0 {
                // SAFETY: ends this forked child at once, as SIGKILL would end an agent.
                unsafe { libc::_exit(7) }
            }
            let n = buffer.len().min(self.after).min(self.bytes.len());
            buffer[..n].copy_from_slice(&self.bytes[..n]);
            (self.bytes, self.after) = (&self.bytes[n..], self.after - n);
            Ok(n)
        }
    }

    /// What an agent killed during an upload staged is removed by the next upload, also once a
    /// run handed it to the sandbox's user, and only that: a directory the user named alike
    /// stays (was: the staged files stayed in the workspace for good).
    #[test]
    fn the_next_upload_removes_what_an_upload_cut_off_by_the_agents_death_staged() {
        let (dir, workspace) = temp_workspace();
        let entries: [(&str, Option<&[u8]>); 3] =
            [("a.txt", Some(b"one")), ("link", None), ("b.txt", Some(&[b'x'; 8192]))];
        let archive = tar_of(&entries, false);
        let died = crate::engine::test_support::in_child(|| {
            let _ = workspace.unpack(Path::new("up"), DiesAfter { bytes: &archive, after: 4096 });
            Err("the upload went on past the agent's death".into())
        });
        assert_eq!(died, nix::sys::wait::WaitStatus::Exited(died.pid().expect("pid"), 7));
        let left: Vec<String> =
            names_in(dir.path()).into_iter().filter(|name| name.starts_with(".bkg-upload_")).collect();
        assert_eq!(left.len(), 1, "{:?}", names_in(dir.path()));
        assert_eq!(
            names_in(&dir.path().join(&left[0])),
            ["0", "1", "2"],
            "staged before the death: a file, the link, and the last file cut short"
        );
        // A persistent sandbox's run hands its whole workspace to the sandbox's user.
        let abandoned = dir.path().join(&left[0]);
        for entry in
            std::iter::once(abandoned.clone()).chain(names_in(&abandoned).iter().map(|name| abandoned.join(name)))
        {
            std::os::unix::fs::lchown(&entry, Some(65534), Some(65534)).expect("chown");
        }
        // The sandbox's user's own, named alike.
        let users = dir.path().join(".bkg-upload_mine");
        std::fs::create_dir(&users).expect("mkdir");
        std::fs::write(users.join("0"), "kept").expect("write");

        let unpacked = workspace.unpack(Path::new("up"), archive.as_slice()).expect("the next upload");
        assert_eq!((unpacked.files, unpacked.links), (2, 1));
        assert_eq!(names_in(dir.path()), [".bkg-upload_mine", "up"], "the abandoned staging is gone");
        assert_eq!(std::fs::read_to_string(users.join("0")).ok().as_deref(), Some("kept"));
        assert_eq!(names_in(&dir.path().join("up")), ["a.txt", "b.txt", "link"]);
    }

    #[test]
    fn a_staging_directory_is_known_by_the_names_ids_make() {
        let made = crate::ids::new_id(STAGING_PREFIX);
        assert!(is_staging_name(made.as_bytes()), "{made}");
        let others = [
            ".bkg-upload_mine",
            ".bkg-upload",
            ".bkg-upload_0123456789abcdef012345",
            ".bkg-upload_0123456789ABCDEF0123456",
            ".bkg-upload_0123456789abcdef01234567",
        ];
        for other in others {
            assert!(!is_staging_name(other.as_bytes()), "{other}");
        }
    }

    /// An upload does not take the staging directory of another going on in the same sandbox.
    #[test]
    fn an_upload_leaves_the_staging_of_one_going_on() {
        let (dir, workspace) = temp_workspace();
        let workspace = std::sync::Arc::new(workspace);
        let entries: [(&str, Option<&[u8]>); 1] = [("slow.txt", Some(&[b's'; 8192]))];
        let slow = tar_of(&entries, false);
        let (staged_some, read_some) = std::sync::mpsc::channel::<()>();
        let (go_on, may_go_on) = std::sync::mpsc::channel::<()>();
        /// Gives its first 2 KiB, then waits to be told to go on.
        struct Paused {
            bytes: Vec<u8>,
            at: usize,
            staged_some: std::sync::mpsc::Sender<()>,
            may_go_on: std::sync::mpsc::Receiver<()>,
        }
        impl Read for Paused {
            fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
                if self.at == 2048 {
                    let _ = self.staged_some.send(());
                    let _ = self.may_go_on.recv();
                }
                let end = if self.at < 2048 { 2048 } else { self.bytes.len() };
                let n = buffer.len().min(end - self.at);
                buffer[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
                self.at += n;
                Ok(n)
            }
        }
        let taking = std::sync::Arc::clone(&workspace);
        let going_on = std::thread::spawn(move || {
            taking.unpack(Path::new("a"), Paused { bytes: slow, at: 0, staged_some, may_go_on }).map(|done| done.files)
        });
        read_some.recv().expect("the slow upload started");
        let quick = tar_of(&[("quick.txt", Some(b"q"))], false);
        assert_eq!(workspace.unpack(Path::new("b"), quick.as_slice()).map(|done| done.files).ok(), Some(1));
        go_on.send(()).expect("go on");
        assert_eq!(going_on.join().expect("the slow upload").ok(), Some(1));
        assert_eq!(std::fs::read(dir.path().join("a/slow.txt")).map(|bytes| bytes.len()).ok(), Some(8192));
        assert_eq!(names_in(dir.path()), ["a", "b"]);
    }

    /// An archive that names a file twice leaves the later one, as tar does, and counts it once
    /// (was: counted twice).
    #[test]
    fn a_file_named_twice_is_the_later_one_counted_once() {
        let (dir, workspace) = temp_workspace();
        let entries: [(&str, Option<&[u8]>); 4] =
            [("one", Some(b"1")), ("dup", Some(b"first")), ("dup", None), ("dup", Some(b"last"))];
        let unpacked = workspace.unpack(Path::new(""), tar_of(&entries, false).as_slice()).expect("unpacked");
        assert_eq!((unpacked.files, unpacked.bytes, unpacked.links), (2, 5, 0), "the link named between gave way too");
        assert_eq!(std::fs::read_to_string(dir.path().join("dup")).ok().as_deref(), Some("last"));
        assert_eq!(names_in(dir.path()), ["dup", "one"], "no staged name is left");
    }

    #[test]
    fn a_failed_upload_places_none_of_its_files_and_replaces_nothing() {
        let (dir, workspace) = temp_workspace();
        std::fs::write(dir.path().join("a.txt"), "old").expect("write");
        let entries: [(&str, Option<&[u8]>); 3] = [("a.txt", Some(b"new")), ("b.txt", Some(b"b")), ("link", None)];
        assert!(workspace.unpack(Path::new(""), tar_of(&entries, true).as_slice()).is_err());
        assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).ok().as_deref(), Some("old"));
        assert_eq!(names_in(dir.path()), ["a.txt"], "no file, link or staged name is left");

        // A directory where a file would go is refused before any file is placed.
        std::fs::create_dir(dir.path().join("b.txt")).expect("mkdir");
        let refused = workspace.unpack(Path::new(""), tar_of(&entries, false).as_slice());
        assert!(
            matches!(&refused, Err(FilesError::Refused(said)) if said.contains("b.txt is a directory")),
            "{:?}",
            refused.err()
        );
        assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).ok().as_deref(), Some("old"));
        assert_eq!(names_in(dir.path()), ["a.txt", "b.txt"]);

        // A whole one places them all.
        std::fs::remove_dir(dir.path().join("b.txt")).expect("rmdir");
        let placed = workspace.unpack(Path::new(""), tar_of(&entries, false).as_slice()).map(|done| done.files);
        assert_eq!(placed.ok(), Some(2));
        assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).ok().as_deref(), Some("new"));
        assert_eq!(std::fs::read_link(dir.path().join("link")).ok(), Some(PathBuf::from("target")));
        assert_eq!(names_in(dir.path()), ["a.txt", "b.txt", "link"]);
    }

    #[test]
    fn a_link_listed_with_a_trailing_slash_is_followed_inside_the_workspace_only() {
        let (dir, workspace) = temp_workspace();
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/file"), "x").expect("write");
        std::os::unix::fs::symlink("sub", dir.path().join("inside")).expect("link");
        std::os::unix::fs::symlink("../..", dir.path().join("up")).expect("link");
        let names = |listed: Vec<FileEntry>| listed.into_iter().map(|entry| entry.name).collect::<Vec<_>>();
        assert_eq!(workspace.list(Path::new("inside"), true).map(names).ok(), Some(vec!["file".to_owned()]));
        assert_eq!(workspace.list(Path::new("up"), false).map(names).ok(), Some(vec!["up".to_owned()]));
        let refused = workspace.require_directory(Path::new("sub/file"));
        assert!(
            matches!(&refused, Err(FilesError::Refused(said)) if said.contains("sub/file/ names a directory")),
            "{refused:?}"
        );
        assert!(workspace.require_directory(Path::new("inside")).is_ok());
        let refused = workspace.list(Path::new("up"), true);
        assert!(
            matches!(&refused, Err(FilesError::Refused(said)) if said.contains("leads out of /workspace")),
            "{refused:?}"
        );
    }

    #[test]
    fn the_workspace_of_an_ended_pid_one_is_ended_not_an_error() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = Pid::from_raw(child.id() as i32);
        // Ended but not reaped, as a sandbox's pid 1 is between its exit and its disposal.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        waitid(Id::Pid(pid), flags).expect("wait for the exit");
        assert!(matches!(Workspace::open(pid.as_raw(), 0, None), Err(FilesError::Ended)));
        child.wait().expect("reap");
        assert!(matches!(Workspace::open(pid.as_raw(), 0, None), Err(FilesError::Ended)));
    }
}
