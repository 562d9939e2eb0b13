//! Where a persistent sandbox's disk image lives (the agent's state dir, `SandboxHome`), and the
//! one-time move of an image an earlier agent kept in the project's `.bkg/`. The root agent
//! mounts only images it made: an image there that is not the agent's (its owner is not root or
//! one of the agent's sandbox uids, it is a symlink, or it has other names) is refused, never
//! mounted and never moved.

use std::os::fd::OwnedFd;
use std::path::Path;

use bkg_schema::paths::{ProjectLayout, SandboxHome};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, open, openat, openat2, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};

use super::request::RunError;

/// Makes sure the image of sandbox `name` of `project_dir` is in `home` if it is anywhere: an
/// image an earlier agent left in the project's `.bkg/` is moved there once (with a line in the
/// agent's log), one that is not the agent's is refused.
///
/// The project is its user's: `.bkg/sandboxes/NAME` is opened beneath it without following any
/// symlink (`openat2`), must be a folder only root can write (as the earlier agent made it), and
/// the image is moved from that folder's descriptor, so no link or rename of the user's can point
/// the root agent at another file, another user's image among them.
pub fn adopt_legacy_image(project_dir: &Path, name: &str, home: &SandboxHome, uid_base: u32) -> Result<(), RunError> {
    let image = home.disk_image();
    if image.exists() {
        return Ok(());
    }
    let legacy = ProjectLayout::new(project_dir).legacy_disk_image(name);
    let Ok(project) = open(project_dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()) else {
        return Ok(());
    };
    let beneath = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let folder = match openat2(&project, format!(".bkg/sandboxes/{name}").as_str(), beneath) {
        Ok(folder) => folder,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
        Err(error) => {
            return Err(RunError::BadRequest(format!(
                "{} cannot be read without following a symlink ({error}): the agent mounts only images it made; remove it",
                legacy.display()
            )));
        }
    };
    let meta = match fstatat(&folder, "disk.img", AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(meta) => meta,
        Err(_) => return Ok(()),
    };
    let regular = SFlag::from_bits_truncate(meta.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG;
    if !(regular && meta.st_nlink == 1 && (meta.st_uid == 0 || meta.st_uid >= uid_base)) {
        return Err(refused(&legacy, meta.st_uid));
    }
    let folder_meta = fstat(&folder).map_err(|error| RunError::BadRequest(format!("{}: {error}", legacy.display())))?;
    if folder_meta.st_uid != 0 || folder_meta.st_mode & 0o022 != 0 {
        return Err(refused(&legacy, folder_meta.st_uid));
    }
    let failed = |error: std::io::Error| {
        RunError::BadRequest(format!("cannot move {} to {}: {error}", legacy.display(), image.display()))
    };
    std::fs::create_dir_all(home.dir()).map_err(failed)?;
    let target = open(home.dir(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|error| failed(error.into()))?;
    match renameat(&folder, "disk.img", &target, "disk.img") {
        Ok(()) => {}
        Err(Errno::EXDEV) => copy_sparse(&folder, &image, &meta).map_err(failed)?,
        Err(error) => return Err(failed(error.into())),
    }
    tracing::warn!(
        from = %legacy.display(),
        to = %image.display(),
        "moved a sandbox's disk image out of its project into the agent's state directory (once)"
    );
    Ok(())
}

fn refused(legacy: &Path, owner: u32) -> RunError {
    RunError::BadRequest(format!(
        "{} was not made by the agent (owner uid {owner}): the agent mounts only images it made; remove it",
        legacy.display()
    ))
}

/// Copies the image across filesystems from the checked folder's descriptor, skipping runs of
/// zeros so the copy stays as sparse as the image was, then removes the original.
fn copy_sparse(folder: &OwnedFd, image: &Path, meta: &nix::sys::stat::FileStat) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let source = openat(folder, "disk.img", OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut source = std::fs::File::from(source);
    let mut target = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(image)?;
    let mut buffer = vec![0u8; 1024 * 1024];
    loop {
        let read = source.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        if buffer[..read].iter().all(|byte| *byte == 0) {
            target.seek(SeekFrom::Current(read as i64))?;
        } else {
            target.write_all(&buffer[..read])?;
        }
    }
    target.set_len(source.metadata()?.len())?;
    std::os::unix::fs::fchown(&target, Some(meta.st_uid), Some(meta.st_gid))?;
    target.sync_all()?;
    nix::unistd::unlinkat(folder, "disk.img", nix::unistd::UnlinkatFlags::NoRemoveDir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_the_agent_did_not_make_is_refused_and_its_own_is_moved_once() {
        let (Ok(project), Ok(state)) = (tempfile::tempdir(), tempfile::tempdir()) else { panic!("temp dirs") };
        let home = SandboxHome::new(state.path(), "user-alice", "api-1");
        let legacy = ProjectLayout::new(project.path()).legacy_disk_image("api");
        assert!(adopt_legacy_image(project.path(), "api", &home, 1000).is_ok(), "no image is nothing to move");
        let Some(parent) = legacy.parent() else { panic!("a parent") };
        std::fs::create_dir_all(parent).ok();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).ok();
        std::fs::write(&legacy, b"crafted").ok();
        let own_uid = nix::unistd::geteuid().as_raw();
        if own_uid != 0 {
            // Made by a user: refused, left where it is.
            assert!(matches!(
                adopt_legacy_image(project.path(), "api", &home, own_uid + 1),
                Err(RunError::BadRequest(_))
            ));
            assert!(legacy.exists() && !home.disk_image().exists());
            return;
        }
        // As root, the test's file is owned by root, as the agent's images are.
        assert!(adopt_legacy_image(project.path(), "api", &home, 1000).is_ok());
        assert!(!legacy.exists() && home.disk_image().exists(), "the agent's image moved into its state dir");
        std::fs::write(&legacy, b"again").ok();
        nix::unistd::chown(&legacy, Some(nix::unistd::Uid::from_raw(1)), None).ok();
        assert!(adopt_legacy_image(project.path(), "api", &home, 1000).is_ok(), "moved once: the home has one");
        std::fs::remove_file(home.disk_image()).ok();
        let refusal = adopt_legacy_image(project.path(), "api", &home, 1000).err().map(|error| error.to_string());
        assert!(refusal.is_some_and(|line| line.contains("was not made by the agent")));
        assert!(legacy.exists() && !home.disk_image().exists(), "a user's image is neither mounted nor moved");

        // A symlink on the way, even to an image the agent made, is never followed.
        std::fs::remove_file(&legacy).ok();
        let elsewhere = project.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).ok();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).ok();
        std::fs::write(elsewhere.join("disk.img"), b"the agent's").ok();
        std::fs::remove_dir(parent).ok();
        std::os::unix::fs::symlink(&elsewhere, parent).ok();
        let refusal = adopt_legacy_image(project.path(), "api", &home, 1000).err().map(|error| error.to_string());
        assert!(refusal.is_some_and(|line| line.contains("without following a symlink")));
        assert!(elsewhere.join("disk.img").exists() && !home.disk_image().exists());
    }
}
