//! The ext4 disk images of sandboxes. A freshly formatted filesystem of a given size is the same
//! few blocks every time (superblocks, group descriptors, bitmaps, the root directory: 128 KiB
//! of a 500 MiB image), so `mkfs.ext4` runs once per size, into a template, and each temporary
//! sandbox gets a file of that size holding a copy of the template's written blocks:
//! a fraction of a millisecond instead of a mkfs process per run.
//!
//! Every sandbox's image has all its blocks reserved on the host (`fallocate`) before it is
//! used. A sparse image takes host blocks only as the sandbox writes, and once the host's own
//! disk is full those writes fail inside the loop device, under the sandbox's filesystem,
//! where nothing reports them: the files were lost while the code saw its writes succeed.
//! Reserved, a disk that does not fit on the host is refused when it is made, and one that
//! was made can always be filled to its size.
//!
//! Templates are kept for the few most recently used sizes (the default limit's among them).
//! A temporary sandbox's image is used again after it: once its loop device is released, it
//! is emptied (`FALLOC_FL_ZERO_RANGE`: every block reads as zeros and stays reserved) and the
//! template's blocks are written into it again, so it is the same as a new copy, and the next
//! sandbox of its size takes it with the directory it is in (`DiskTemplates::recycle`). Making
//! new ones instead cost more than the emptying: freeing and reserving 500 MiB of blocks, on a
//! host mounted with `discard` a discard of all of them, and the sandbox's directories, for
//! every run. A few are kept, for a few seconds.
//! The host's kernel may lack quota support (ext4 project quotas need CONFIG_QFMT_V2), so one
//! shared filesystem with a quota per run is not an option everywhere; an image per sandbox is.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::unistd::{Whence, lseek};
use tokio::sync::{OnceCell, OwnedMutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{action}: {source}")]
    Io { action: String, source: std::io::Error },
    #[error("mkfs.ext4 not found: install e2fsprogs")]
    NoMkfs,
    #[error("resize2fs not found: install e2fsprogs")]
    NoResize,
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error(
        "the host has no room for this sandbox's {size} disk: {free} free in {dir}; free space there or ask for a smaller disk (--disk, cave.yaml's limits.disk)"
    )]
    HostFull { size: String, free: String, dir: String },
    #[error(
        "the disk limit {asked} is below the {current} this sandbox's disk already has, and a disk only grows: ask for {current} or more (cave.yaml's limits.disk), or remove the sandbox to start over (its files go with it)"
    )]
    WouldShrink { asked: String, current: String },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let action = action.into();
    move |source| DiskError::Io { action, source }
}

/// How many template sizes are kept; the least recently used goes when another size is needed.
const KEPT_TEMPLATES: usize = 8;

/// Bytes of disk per inode: one per 4 KiB block, so a disk can be filled with small files as
/// well as with big ones (a 500 MiB disk holds 128,000 files, not ext4's default 32,000).
const BYTES_PER_INODE: &str = "4096";

/// The use of a persistent disk image: one sandbox mounts it at a time. Whatever still has its
/// filesystem open after the sandbox is gone (a file transfer's /workspace, engine/files.rs)
/// holds a clone, so the image is mounted again only once nothing of the old mount is left:
/// two mounts of one ext4 image would corrupt it.
pub type DiskHold = Arc<OwnedMutexGuard<()>>;

/// A sandbox's disk as used from outside the sandbox (a file transfer's `Workspace`,
/// engine/files.rs): the hold of its persistent image, if it has one, and a token the sandbox's
/// disposal waits on: while a clone is left, the disk's files are open and its loop device
/// cannot be freed.
#[derive(Clone, Debug)]
pub struct DiskUse {
    image: Option<DiskHold>,
    _open: tokio::sync::mpsc::Sender<std::convert::Infallible>,
}

/// The disposal's side of `DiskUse`.
pub struct DiskUsers(tokio::sync::mpsc::Receiver<std::convert::Infallible>);

impl DiskUse {
    pub fn new() -> (Self, DiskUsers) {
        // Nothing is ever sent: the channel only says when the last sender is gone.
        let (open, users) = tokio::sync::mpsc::channel(1);
        (Self { image: None, _open: open }, DiskUsers(users))
    }

    /// Holds the sandbox's persistent image as long as any clone lives.
    pub fn hold_image(&mut self, hold: Option<DiskHold>) {
        self.image = hold;
    }
}

impl DiskUsers {
    /// Whether a `DiskUse` other than ones already dropped is left.
    pub fn any(&mut self) -> bool {
        matches!(self.0.try_recv(), Err(tokio::sync::mpsc::error::TryRecvError::Empty))
    }

    /// Resolves once every `DiskUse` is dropped.
    pub async fn gone(mut self) {
        while self.0.recv().await.is_some() {}
    }
}

/// Which persistent disk images are in use (`DiskHold`).
#[derive(Default)]
pub struct DiskLocks {
    images: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl DiskLocks {
    /// Takes `image` once nothing holds it, waiting at most `patience`; `None` if it was still
    /// held then.
    pub async fn hold(&self, image: &Path, patience: std::time::Duration) -> Option<DiskHold> {
        let lock = {
            let mut images = self.images.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(images.entry(image.to_path_buf()).or_default())
        };
        tokio::time::timeout(patience, lock.lock_owned()).await.ok().map(Arc::new)
    }
}

/// Emptied images kept for the next sandboxes of their size: enough for the sandboxes disposed
/// of while as many are prepared under load. Each holds its whole size of the host's disk.
const SPARE_IMAGES: usize = 4;
/// How long an emptied image waits for a sandbox before it is deleted: under load the next
/// sandbox takes it at once, and an idle agent holds no host space for nothing.
const SPARE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A temporary sandbox's directory with its emptied image (`DiskTemplates::recycle`).
struct Spare {
    bytes: u64,
    dir: PathBuf,
}

/// Formatted templates by size, each made at most once while it is kept, and the emptied
/// images of sandboxes disposed of.
pub struct DiskTemplates {
    dir: PathBuf,
    /// Most recently used first.
    kept: Mutex<VecDeque<(u64, Arc<OnceCell<PathBuf>>)>>,
    /// Oldest first.
    spares: Mutex<VecDeque<Spare>>,
    spares_made: std::sync::atomic::AtomicU64,
    /// Set by `remove`: an image disposed of after it is deleted.
    removed: std::sync::atomic::AtomicBool,
}

impl DiskTemplates {
    /// Templates live in `dir`, which is emptied first: a template of an earlier agent may have
    /// been left half written.
    pub fn new(dir: PathBuf) -> Result<Self, DiskError> {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(format!("remove {}", dir.display()))(error)),
        }
        std::fs::create_dir_all(&dir).map_err(io_error(format!("create {}", dir.display())))?;
        Ok(Self {
            dir,
            kept: Mutex::new(VecDeque::new()),
            spares: Mutex::new(VecDeque::new()),
            spares_made: Default::default(),
            removed: Default::default(),
        })
    }

    /// Removes every template and emptied image (agent shutdown).
    pub fn remove(&self) -> Result<(), DiskError> {
        self.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        self.spares().clear();
        std::fs::remove_dir_all(&self.dir).map_err(io_error(format!("remove {}", self.dir.display())))
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, VecDeque<Spare>> {
        self.spares.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts a directory a temporary sandbox of a disk of `bytes` left, its image emptied
    /// (`recycle`), at `dir`, which does not exist; `false` if none is kept.
    pub async fn take_spare(&self, dir: &Path, bytes: u64) -> bool {
        let spare = {
            let mut spares = self.spares();
            spares.iter().position(|spare| spare.bytes == bytes).and_then(|index| spares.remove(index))
        };
        let Some(spare) = spare else { return false };
        match tokio::fs::rename(&spare.dir, dir).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, dir = %spare.dir.display(), "an emptied disk image could not be used");
                let _ = tokio::fs::remove_dir_all(&spare.dir).await;
                false
            }
        }
    }

    /// Writes a fresh, empty ext4 filesystem of `bytes` to `image` (a new file), a copy of the
    /// template. A host without room for it gets the space of the emptied images back first.
    pub async fn make_image(&self, image: &Path, bytes: u64) -> Result<(), DiskError> {
        let template = self.template(bytes).await?;
        self.with_host_room(|| {
            let (template, image) = (template.clone(), image.to_path_buf());
            async move {
                tokio::task::spawn_blocking(move || copy_sparse(&template, &image, bytes))
                    .await
                    .map_err(|error| io_error("copy the disk template")(std::io::Error::other(error)))?
            }
        })
        .await
    }

    /// `attempt`, made once more after the emptied images are deleted when the host had no
    /// room for it and there were any: they hold theirs.
    pub async fn with_host_room<T, F>(&self, attempt: impl Fn() -> F) -> Result<T, DiskError>
    where
        F: std::future::Future<Output = Result<T, DiskError>>,
    {
        match attempt().await {
            Err(DiskError::HostFull { .. }) if self.remove_spares() > 0 => attempt().await,
            done => done,
        }
    }

    /// Deletes every emptied image; returns how many there were. For a host short of space:
    /// they hold theirs.
    pub fn remove_spares(&self) -> usize {
        let spares: Vec<Spare> = self.spares().drain(..).collect();
        for spare in &spares {
            let _ = std::fs::remove_dir_all(&spare.dir);
        }
        spares.len()
    }

    /// Keeps the directory `dir` of a temporary sandbox, with its disk image `image` (a name in
    /// it) of `bytes`, for the next sandbox of its size: moves it out of the way, empties the
    /// image and writes the template's blocks into it again. Only for a directory that holds
    /// nothing else a sandbox needs new, and an image nothing uses any more (its loop device
    /// released). One whose image cannot be emptied, or one over [`SPARE_IMAGES`], is deleted
    /// instead (the oldest kept goes first), and so is one still kept after [`SPARE_LIFETIME`].
    /// Returns whether `dir` is gone from its place (kept or deleted); `false` leaves it there.
    pub async fn recycle(self: &Arc<Self>, dir: &Path, image: &str, bytes: u64) -> bool {
        if self.removed.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let Some(template) = self.kept_template(bytes) else { return false };
        let number = self.spares_made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let spare = self.dir.join(format!("spare-{number}"));
        if tokio::fs::rename(dir, &spare).await.is_err() {
            return false;
        }
        let emptied = {
            let image = spare.join(image);
            tokio::task::spawn_blocking(move || empty_into_template(&template, &image, bytes)).await
        };
        if !matches!(emptied, Ok(Ok(()))) {
            if let Ok(Err(error)) = emptied {
                tracing::debug!(%error, "a disk image could not be emptied for the next sandbox");
            }
            return tokio::fs::remove_dir_all(&spare).await.is_ok();
        }
        let over = {
            let mut spares = self.spares();
            if self.removed.load(std::sync::atomic::Ordering::SeqCst) {
                Some(spare.clone())
            } else {
                spares.push_back(Spare { bytes, dir: spare.clone() });
                (spares.len() > SPARE_IMAGES).then(|| spares.pop_front()).flatten().map(|oldest| oldest.dir)
            }
        };
        if let Some(over) = over {
            let _ = tokio::fs::remove_dir_all(over).await;
        }
        let templates = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_LIFETIME).await;
            let Some(templates) = templates.upgrade() else { return };
            let unused = {
                let mut spares = templates.spares();
                spares.iter().position(|kept| kept.dir == spare).and_then(|index| spares.remove(index))
            };
            if let Some(unused) = unused {
                let _ = tokio::fs::remove_dir_all(unused.dir).await;
            }
        });
        true
    }

    /// The template of `bytes` if it is made and kept.
    fn kept_template(&self, bytes: u64) -> Option<PathBuf> {
        let kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.iter().find(|(size, _)| *size == bytes).and_then(|(_, cell)| cell.get().cloned())
    }

    /// The template of `bytes`, formatted now if it is not kept.
    async fn template(&self, bytes: u64) -> Result<PathBuf, DiskError> {
        let cell = {
            let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let cell = match kept.iter().position(|(size, _)| *size == bytes) {
                Some(index) => kept.remove(index).map(|(_, cell)| cell),
                None => None,
            }
            .unwrap_or_default();
            kept.push_front((bytes, Arc::clone(&cell)));
            if kept.len() > KEPT_TEMPLATES
                && let Some((size, _)) = kept.pop_back()
            {
                // A copy that has the file open already still reads it to the end.
                let _ = std::fs::remove_file(self.path_of(size));
            }
            cell
        };
        let path = self.path_of(bytes);
        cell.get_or_try_init(|| async {
            let partial = self.dir.join(format!("{bytes}.partial"));
            let _ = tokio::fs::remove_file(&partial).await;
            format(&partial, bytes, 0).await?;
            tokio::fs::rename(&partial, &path).await.map_err(io_error(format!("rename {}", partial.display())))?;
            Ok::<_, DiskError>(path.clone())
        })
        .await
        .cloned()
    }

    fn path_of(&self, bytes: u64) -> PathBuf {
        self.dir.join(format!("{bytes}.img"))
    }
}

/// Copies the written ranges of `template` into a new file `image` of `bytes`, reserved.
fn copy_sparse(template: &Path, image: &Path, bytes: u64) -> Result<(), DiskError> {
    let source = File::open(template).map_err(io_error(format!("open {}", template.display())))?;
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(io_error(format!("create {}", image.display())))?;
    let copied = target
        .set_len(bytes)
        .map_err(io_error("size the disk image"))
        .and_then(|()| reserve(&target, image, bytes))
        .and_then(|()| write_data_of(&source, &target));
    // A copy cut short is not left for the next attempt to trip over (`create_new`).
    if copied.is_err() {
        let _ = std::fs::remove_file(image);
    }
    copied
}

/// Makes the image at `path`, of `bytes`, used by a sandbox before, what `copy_sparse` makes of
/// `template`: every block zeros and reserved (one the filesystem inside wrote and freed as
/// well as one it holds), then the template's data.
fn empty_into_template(template: &Path, path: &Path, bytes: u64) -> Result<(), DiskError> {
    let source = File::open(template).map_err(io_error(format!("open {}", template.display())))?;
    let target = OpenOptions::new().write(true).open(path).map_err(io_error(format!("open {}", path.display())))?;
    let length = target.metadata().map_err(io_error("inspect the disk image"))?.len();
    if length != bytes {
        return Err(io_error("empty the disk image")(std::io::Error::other(format!(
            "it holds {length} bytes, not {bytes}"
        ))));
    }
    let whole = i64::try_from(bytes).unwrap_or(i64::MAX);
    let zero = nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    nix::fcntl::fallocate(&target, zero, 0, whole).map_err(|errno| io_error("empty the disk image")(errno.into()))?;
    write_data_of(&source, &target)
}

/// Writes the data of `source` into `target` at the same offsets.
fn write_data_of(source: &File, target: &File) -> Result<(), DiskError> {
    let mut buffer = vec![0u8; 64 * 1024];
    for (data, hole) in data_ranges(source)? {
        let mut position = data;
        while position < hole {
            let want = buffer.len().min((hole - position) as usize);
            let read = source.read_at(&mut buffer[..want], position).map_err(io_error("read the template"))?;
            if read == 0 {
                break;
            }
            target.write_all_at(&buffer[..read], position).map_err(io_error("write the disk image"))?;
            position += read as u64;
        }
    }
    Ok(())
}

/// The ranges `[start, end)` of `file` that hold data. A block reserved (`reserve`) but never
/// written counts as a hole, as it reads as zeros.
fn data_ranges(file: &File) -> Result<Vec<(u64, u64)>, DiskError> {
    let mut ranges = Vec::new();
    let mut offset: i64 = 0;
    loop {
        let data = match lseek(file, offset, Whence::SeekData) {
            Ok(data) => data,
            // ENXIO: no data at or after `offset`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(errno) => return Err(io_error("find a file's data")(errno.into())),
        };
        let hole = lseek(file, data, Whence::SeekHole).map_err(|errno| io_error("find a hole")(errno.into()))?;
        ranges.push((data as u64, hole as u64));
        offset = hole;
    }
    Ok(ranges)
}

/// The bytes of the disk image at `path` its filesystem has written so far (its metadata and
/// every block its files have used; blocks freed inside stay counted): what the disk holds,
/// where the host space it takes is its whole size, reserved. 0 when it cannot be read.
///
/// Read from the host filesystem's extent map (FIEMAP), whose reserved extents are marked
/// unwritten whatever reads them: `SEEK_DATA` counts a reserved block as data once anything on
/// the host (a backup, `grep -r`) has read it into the page cache. Where there is no extent map,
/// `SEEK_DATA` it is.
pub fn written_bytes(path: &Path) -> u64 {
    let Ok(file) = File::open(path) else { return 0 };
    if let Some(written) = written_extent_bytes(&file) {
        return written;
    }
    data_ranges(&file).map(|ranges| ranges.iter().map(|(data, hole)| hole - data).sum()).unwrap_or(0)
}

/// The bytes of `file`'s extents that are not unwritten (reserved only), by FIEMAP; `None` if
/// the filesystem has no extent map to give.
fn written_extent_bytes(file: &File) -> Option<u64> {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 0x1;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const BATCH: usize = 256;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; BATCH],
    }
    let mut written = 0;
    let mut start = 0;
    loop {
        let mut map = Map {
            start,
            length: u64::MAX - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: BATCH as u32,
            reserved: 0,
            extents: [Extent::default(); BATCH],
        };
        // SAFETY: FS_IOC_FIEMAP reads the header of `map` and writes at most `extent_count`
        // extents into its array, which has that many; `map` outlives the call.
        if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(file), FS_IOC_FIEMAP, &mut map as *mut Map) } != 0 {
            return None;
        }
        let mapped = &map.extents[..(map.mapped_extents as usize).min(BATCH)];
        let Some(last) = mapped.last() else { return Some(written) };
        written += mapped
            .iter()
            .filter(|extent| extent.flags & FIEMAP_EXTENT_UNWRITTEN == 0)
            .map(|extent| extent.length)
            .sum::<u64>();
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Some(written);
        }
        start = last.logical + last.length;
    }
}

/// Reserves on the host every block of the `bytes` long image `file` (at `path`), so that no
/// write of the sandbox into it can fail for want of host space (the module's comment). A
/// filesystem that cannot reserve (EOPNOTSUPP) is checked for free space instead. The file's
/// length stays: an image about to grow is reserved first.
fn reserve(file: &File, path: &Path, bytes: u64) -> Result<(), DiskError> {
    use nix::errno::Errno;
    let length = i64::try_from(bytes).unwrap_or(i64::MAX);
    match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, length) {
        Ok(()) => Ok(()),
        Err(Errno::ENOSPC) => Err(host_full(path, bytes)),
        Err(Errno::EOPNOTSUPP) => {
            let dir = path.parent().unwrap_or(path);
            match nix::sys::statvfs::statvfs(dir) {
                Ok(stats) if stats.blocks_available() * stats.fragment_size() < bytes => Err(host_full(path, bytes)),
                _ => Ok(()),
            }
        }
        Err(errno) => Err(io_error(format!("reserve {}", path.display()))(errno.into())),
    }
}

/// Names the directory that holds the sandboxes' own directories: one a user can find, where
/// the image's own one may already be gone with its failed sandbox.
fn host_full(path: &Path, bytes: u64) -> DiskError {
    let dir = path.ancestors().nth(2).unwrap_or(path);
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|stats| bkg_schema::units::format_size(stats.blocks_available() * stats.fragment_size()))
        .unwrap_or_else(|_| "no space".into());
    DiskError::HostFull { size: bkg_schema::units::format_size(bytes), free, dir: dir.display().to_string() }
}

/// Reserves the blocks of the persistent image at `path` (`reserve`).
async fn reserve_image(path: &Path, bytes: u64) -> Result<(), DiskError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new().write(true).open(&path).map_err(io_error(format!("open {}", path.display())))?;
        reserve(&file, &path, bytes)
    })
    .await
    .map_err(|error| io_error("reserve the disk image")(std::io::Error::other(error)))?
}

/// A sparse file with an ext4 filesystem whose root directory `owner` owns. Disk-backed, so
/// filling it ends in ENOSPC, not in a memory kill as tmpfs would. No blocks are reserved for
/// root (`-m 0`): the sandbox user is the only writer.
async fn format(path: &Path, bytes: u64, owner: u32) -> Result<(), DiskError> {
    let file = tokio::fs::File::create(path).await.map_err(io_error(format!("create {}", path.display())))?;
    file.set_len(bytes).await.map_err(io_error("size the disk image"))?;
    drop(file);
    let mkfs = super::host_check::MKFS_EXT4_PATHS
        .into_iter()
        .find(|candidate| Path::new(candidate).exists())
        .ok_or(DiskError::NoMkfs)?;
    let output = tokio::process::Command::new(mkfs)
        .args(["-q", "-F", "-T", "default", "-m", "0", "-i", BYTES_PER_INODE, "-O", "^has_journal,^resize_inode"])
        .arg("-E")
        .arg(format!("lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner={owner}:{owner}"))
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_error("run mkfs.ext4"))?;
    if !output.status.success() {
        return Err(DiskError::Tool {
            tool: "mkfs.ext4",
            message: String::from_utf8_lossy(&output.stderr).trim().into(),
        });
    }
    Ok(())
}

/// Refuses a disk limit of `bytes` for a persistent disk image of `current` bytes: shrinking
/// could lose the user's files (the operations give a disk at least its size: service/sandboxes.rs).
fn refuse_shrinking(current: u64, bytes: u64) -> Result<(), DiskError> {
    if bytes < current {
        return Err(DiskError::WouldShrink {
            asked: bkg_schema::units::format_size(bytes),
            current: bkg_schema::units::format_size(current),
        });
    }
    Ok(())
}

/// A persistent sandbox's disk: made on its first run, grown when its limit grows, its blocks
/// reserved on the host at each run (an image made before they were is reserved at its next).
/// Shrinking could lose the user's files, so it is refused.
pub async fn ensure_persistent_image(path: &Path, bytes: u64, owner: u32) -> Result<(), DiskError> {
    let current = match tokio::fs::metadata(path).await {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(io_error(format!("create {}", parent.display())))?;
            }
            format(path, bytes, owner).await?;
            return reserve_image(path, bytes).await;
        }
        Err(error) => return Err(io_error(format!("inspect {}", path.display()))(error)),
    };
    refuse_shrinking(current, bytes)?;
    // Before the image grows, so a host without room leaves it as it was.
    reserve_image(path, bytes).await?;
    if bytes > current {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .map_err(io_error(format!("open {}", path.display())))?;
        file.set_len(bytes).await.map_err(io_error("grow the disk image"))?;
        drop(file);
        let resize = ["/usr/sbin/resize2fs", "/sbin/resize2fs"]
            .into_iter()
            .find(|candidate| Path::new(candidate).exists())
            .ok_or(DiskError::NoResize)?;
        let output = tokio::process::Command::new(resize)
            .arg("-f")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_error("run resize2fs"))?;
        if !output.status.success() {
            return Err(DiskError::Tool {
                tool: "resize2fs",
                message: String::from_utf8_lossy(&output.stderr).trim().into(),
            });
        }
    }
    Ok(())
}

/// Free space below which a disk counts as full: at ENOSPC ext4 still shows a few blocks free,
/// the ones it keeps for its own metadata (96 KiB on a 500 MiB disk).
const FULL_MARGIN_BYTES: u64 = 1024 * 1024;

/// What a sandbox's disk holds, as pid 1 reports it at the code's end and as the agent reads it
/// through pid 1's root when it ends a run itself (a timeout, a cancel: no report comes then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFill {
    pub used_bytes: u64,
    /// Out of room for data or for files.
    pub full: bool,
}

/// What the disk mounted at `path` holds; `None` if it cannot be read (gone already).
pub fn usage_at(path: &str) -> Option<DiskFill> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    let used_bytes = (stats.blocks() - stats.blocks_free()) * stats.fragment_size();
    let full = stats.blocks_available() * stats.fragment_size() <= FULL_MARGIN_BYTES || stats.files_free() == 0;
    Some(DiskFill { used_bytes, full })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_holds_the_templates_bytes_in_a_reserved_file_of_the_asked_size() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let templates = DiskTemplates::new(dir.path().join("templates")).expect("templates");
        let bytes = 64 * 1024 * 1024;
        let image = dir.path().join("disk.img");
        templates.make_image(&image, bytes).await.expect("image");
        // What the disk holds is what was written into it, not what is reserved.
        assert_eq!(written_bytes(&image), written_bytes(&templates.path_of(bytes)));
        let written = written_bytes(&image);
        assert!(written < bytes / 16, "{written} bytes written");
        let copy = std::fs::read(&image).expect("read the copy");
        // Read through the page cache (a backup, `grep -r` of the state directory), its reserved
        // blocks still count as reserved, not written (found by a new-user trial: `bkg ls` then
        // showed every disk at its full size).
        assert_eq!(written_bytes(&image), written);
        let template = std::fs::read(templates.path_of(bytes)).expect("read the template");
        assert_eq!(copy.len() as u64, bytes);
        assert!(copy == template, "the copy differs from the template");
        // ext4's magic number in the primary superblock.
        assert_eq!(&copy[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        assert!(allocated(&image) >= bytes, "every block is reserved: {} of {bytes}", allocated(&image));
        let template_blocks = allocated(&templates.path_of(bytes));
        assert!(template_blocks < bytes / 16, "the template stays sparse: {template_blocks} bytes");
    }

    /// What a sandbox wrote into its image (data anywhere, the filesystem's own blocks) is gone
    /// from the image the next sandbox takes: it is the template's copy again, reserved whole.
    #[tokio::test]
    async fn a_recycled_image_is_a_new_copy_of_the_template_again() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let templates = Arc::new(DiskTemplates::new(dir.path().join("templates")).expect("templates"));
        let bytes = 64 * 1024 * 1024;
        let used = dir.path().join("sbx-used");
        std::fs::create_dir_all(used.join("root")).expect("a sandbox's directory");
        templates.make_image(&used.join("disk.img"), bytes).await.expect("image");
        let fresh = std::fs::read(used.join("disk.img")).expect("read the new image");
        let file = OpenOptions::new().write(true).open(used.join("disk.img")).expect("open");
        for offset in [0, 1024, 4096 * 7, bytes / 2 + 5, bytes - 4096] {
            file.write_all_at(b"what the last sandbox wrote", offset).expect("write");
        }
        file.sync_all().expect("sync");
        drop(file);

        assert!(templates.recycle(&used, "disk.img", bytes).await);
        assert!(!used.exists(), "the directory was moved out of the way");
        let next = dir.path().join("sbx-next");
        assert!(!templates.take_spare(&next, bytes * 2).await, "no spare of another size is taken");
        assert!(templates.take_spare(&next, bytes).await);
        assert!(templates.spares().is_empty(), "the next sandbox took the emptied image");
        assert!(next.join("root").is_dir(), "with the directory it was in");
        let image = next.join("disk.img");
        assert!(std::fs::read(&image).expect("read the recycled image") == fresh, "it differs from a new copy");
        assert!(allocated(&image) >= bytes, "every block is reserved: {} of {bytes}", allocated(&image));
        assert_eq!(written_bytes(&image), written_bytes(&templates.path_of(bytes)));

        // Nothing is kept once the templates are removed (agent shutdown).
        templates.remove().expect("remove");
        assert!(!templates.recycle(&next, "disk.img", bytes).await);
        assert!(next.exists() && !dir.path().join("templates").exists(), "nothing kept after removal");
    }

    /// Emptied images hold host space: no more than [`SPARE_IMAGES`] are kept, and all of it is
    /// given back at once when a new disk does not fit.
    #[tokio::test]
    async fn spares_are_kept_up_to_their_number_and_removed_on_demand() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let templates = Arc::new(DiskTemplates::new(dir.path().join("templates")).expect("templates"));
        let bytes = 16 * 1024 * 1024;
        for n in 0..SPARE_IMAGES + 2 {
            let run = dir.path().join(format!("sbx-{n}"));
            std::fs::create_dir(&run).expect("a sandbox's directory");
            templates.make_image(&run.join("disk.img"), bytes).await.expect("image");
            assert!(templates.recycle(&run, "disk.img", bytes).await);
        }
        let on_disk = || {
            std::fs::read_dir(dir.path().join("templates"))
                .expect("list")
                .filter(|entry| {
                    entry.as_ref().is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with("spare-"))
                })
                .count()
        };
        assert_eq!((templates.spares().len(), on_disk()), (SPARE_IMAGES, SPARE_IMAGES));
        assert_eq!(templates.remove_spares(), SPARE_IMAGES);
        assert_eq!((templates.spares().len(), on_disk()), (0, 0));
    }

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).expect("stat").blocks() * 512
    }

    /// Made, then used again after an agent that left it sparse, then grown: reserved each time.
    #[tokio::test]
    async fn a_persistent_image_is_reserved_when_made_when_used_and_when_grown() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let image = dir.path().join("home").join("disk.img");
        let mib = 1024 * 1024;
        ensure_persistent_image(&image, 32 * mib, 1000).await.expect("made");
        assert!(allocated(&image) >= 32 * mib, "reserved when made: {}", allocated(&image));

        std::fs::remove_file(&image).expect("remove");
        format(&image, 32 * mib, 1000).await.expect("a sparse image, as agents before made them");
        assert!(allocated(&image) < 4 * mib);
        ensure_persistent_image(&image, 32 * mib, 1000).await.expect("used");
        assert!(allocated(&image) >= 32 * mib, "reserved when used: {}", allocated(&image));

        ensure_persistent_image(&image, 48 * mib, 1000).await.expect("grown");
        assert_eq!(std::fs::metadata(&image).expect("stat").len(), 48 * mib);
        assert!(allocated(&image) >= 48 * mib, "reserved when grown: {}", allocated(&image));
    }

    #[tokio::test]
    async fn only_the_most_recently_used_sizes_are_kept() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let templates = DiskTemplates::new(dir.path().join("templates")).expect("templates");
        let mib = 1024 * 1024;
        for n in 0..=KEPT_TEMPLATES as u64 {
            let image = dir.path().join(format!("{n}.img"));
            templates.make_image(&image, (16 + n) * mib).await.expect("image");
        }
        assert!(!templates.path_of(16 * mib).exists(), "the least recently used template is gone");
        assert!(templates.path_of((17) * mib).exists());
        let kept = std::fs::read_dir(dir.path().join("templates")).expect("list").count();
        assert_eq!(kept, KEPT_TEMPLATES);
    }
}
