//! The agent's unix socket file (`--socket`): bound with mode 0600 (0660 for a socket group),
//! bound again when it is deleted while the agent runs (a clean-up of `/run`, a stray `rm`),
//! and removed when the agent ends only while the path still holds this agent's socket: an
//! agent given the same path after a deletion keeps its own, and neither agent breaks the other.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixListener;

use crate::auth::local::NamedGroup;

/// Which file a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    fn of(path: &Path) -> Option<Self> {
        std::fs::symlink_metadata(path).ok().map(|meta| Self { device: meta.dev(), inode: meta.ino() })
    }
}

/// The socket file this agent made; removed when the last holder drops it, if it is still ours.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    group: Option<NamedGroup>,
    /// The file this agent bound last; `None` once the path holds another's.
    bound: Mutex<Option<FileId>>,
}

impl SocketFile {
    /// Binds `path` for this agent (see `bind_socket`).
    pub fn bind(path: &Path, group: Option<&NamedGroup>) -> anyhow::Result<(Arc<Self>, UnixListener)> {
        let listener = bind_socket(path, group)?;
        let socket = Self { path: path.to_owned(), group: group.cloned(), bound: Mutex::new(FileId::of(path)) };
        Ok((Arc::new(socket), listener))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bound(&self) -> Option<FileId> {
        *self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_bound(&self, id: Option<FileId>) {
        *self.bound.lock().unwrap_or_else(PoisonError::into_inner) = id;
    }

    /// Whether the path still names the socket this agent bound.
    fn still_ours(&self) -> bool {
        self.bound().is_some_and(|bound| FileId::of(&self.path) == Some(bound))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Watches the socket file's directory and binds the socket again when its file goes.
pub struct SocketWatch {
    socket: Arc<SocketFile>,
    inotify: AsyncFd<WatchedDir>,
}

/// An inotify instance as tokio polls it; `.0.add_watch` adds what it watches.
pub(crate) struct WatchedDir(pub(crate) Inotify);

impl WatchedDir {
    pub(crate) fn new() -> std::io::Result<AsyncFd<Self>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the Inotify owns its descriptor, which stays open and the same until the
        // AsyncFd (which owns the Inotify) is dropped.
        unsafe { AsyncFd::register(WatchedDir(inotify)) }.map_err(std::io::Error::from)
    }
}

impl AsRawFd for WatchedDir {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// What changes the socket file's name in its directory, or the directory itself.
const WATCHED: AddWatchFlags = AddWatchFlags::IN_DELETE
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

impl SocketWatch {
    pub fn new(socket: Arc<SocketFile>) -> std::io::Result<Self> {
        let watch = Self { socket, inotify: WatchedDir::new()? };
        watch.watch_dir()?;
        Ok(watch)
    }

    fn watch_dir(&self) -> std::io::Result<()> {
        let dir = self.socket.path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        self.inotify.get_ref().0.add_watch(dir, WATCHED)?;
        Ok(())
    }

    /// Waits until the path no longer holds this agent's socket, then binds it again if it is
    /// free and returns the new listener. `None` (said in the log) ends the watch: the path
    /// holds another agent's socket or a file of someone's, or binding failed. Cancel-safe: it
    /// awaits only for the directory to change.
    pub async fn rebound(&mut self) -> Option<UnixListener> {
        loop {
            // Also gone before the watch began: the agent binds long before it serves.
            if !self.socket.still_ours() {
                return self.bind_again();
            }
            let Ok(mut ready) = self.inotify.readable().await else {
                tracing::warn!(socket = %self.socket.path.display(), "cannot watch the socket file any more");
                return None;
            };
            match ready.get_inner().0.read_events() {
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(error) => {
                    tracing::warn!(%error, socket = %self.socket.path.display(), "cannot watch the socket file any more");
                    return None;
                }
            }
        }
    }

    fn bind_again(&self) -> Option<UnixListener> {
        let path = &self.socket.path;
        if std::fs::symlink_metadata(path).is_ok() {
            self.socket.set_bound(None);
            tracing::warn!(
                socket = %path.display(),
                "the socket file was replaced by another: this agent no longer answers there, and leaves it be"
            );
            return None;
        }
        match bind_socket(path, self.socket.group.as_ref()) {
            Ok(listener) => {
                self.socket.set_bound(FileId::of(path));
                // A deleted directory took its watch with it.
                if let Err(error) = self.watch_dir() {
                    tracing::warn!(%error, socket = %path.display(), "cannot watch the socket's directory again");
                }
                tracing::warn!(socket = %path.display(), "the socket file was deleted: made it again");
                Some(listener)
            }
            Err(error) => {
                self.socket.set_bound(None);
                tracing::error!(error = format!("{error:#}"), "the socket file was deleted and cannot be made again");
                None
            }
        }
    }
}

pub fn already_listening(socket: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "another agent is already listening on {0}: stop it first (`BKG_SOCKET={0} bkg agent stop`), or give this \
         one a socket of its own with --socket PATH",
        socket.display()
    )
}

/// Binds the socket with mode 0600, replacing a stale socket file but never a live agent's; with
/// a socket group, then gives it to that group with mode 0660 (and lets everyone reach a socket
/// directory the agent made, so the socket's own mode decides).
fn bind_socket(socket: &Path, group: Option<&NamedGroup>) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        // Every directory made on the way, not only the last: one left 0700 (the agent's umask)
        // would keep the group out as surely.
        let missing: Vec<&Path> =
            parent.ancestors().take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists()).collect();
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        if group.is_some() {
            for dir in missing {
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .with_context(|| format!("open {} to the socket's group", dir.display()))?;
            }
        }
    }
    if let Ok(found) = std::fs::symlink_metadata(socket) {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(already_listening(socket));
        }
        // Only a socket left by an agent that is gone is replaced: a typo in --socket must not
        // delete a file.
        if !std::os::unix::fs::FileTypeExt::is_socket(&found.file_type()) {
            bail!("{} exists and is not a socket: give --socket a path of its own", socket.display());
        }
        std::fs::remove_file(socket).with_context(|| format!("remove stale socket {}", socket.display()))?;
    }
    // The socket must never exist with a wider mode, not even for a moment.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(socket);
    nix::sys::stat::umask(previous);
    let bound = bound.with_context(|| format!("bind {}", socket.display()))?;
    if let Some(group) = group {
        nix::unistd::chown(socket, None, Some(nix::unistd::Gid::from_raw(group.gid)))
            .with_context(|| format!("give {} to group {}", socket.display(), group.name))?;
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .with_context(|| format!("make {} 0660", socket.display()))?;
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket's file deleted, it is made again and answers; replaced by another's, it is
    /// left alone, also when the agent ends.
    #[tokio::test]
    async fn a_deleted_socket_is_made_again_and_another_s_is_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.sock");
        let (socket, _first) = SocketFile::bind(&path, None).expect("bind");
        let mut watch = SocketWatch::new(Arc::clone(&socket)).expect("watch");
        std::fs::remove_file(&path).expect("delete the socket file");
        let again = watch.rebound().await.expect("bound again");
        std::os::unix::net::UnixStream::connect(&path).expect("the new socket answers");
        drop(again);

        let other = dir.path().join("other.sock");
        let _others = std::os::unix::net::UnixListener::bind(&other).expect("another's socket");
        std::fs::rename(&other, &path).expect("replace ours");
        assert!(watch.rebound().await.is_none(), "another's socket is not taken over");
        let others = FileId::of(&path);
        drop(watch);
        drop(socket);
        assert_eq!(FileId::of(&path), others, "ending leaves another's socket file in place");
    }
}
