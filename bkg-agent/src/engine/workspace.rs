//! Where a persistent sandbox's disk image lives (the agent's state dir, `SandboxHome`), and the
//! one-time move of an image an earlier agent kept in the project's `.bkg/`. The root agent
//! mounts only images it made: an image there that is not the agent's (its owner is not root or
//! one of the agent's sandbox uids, it is a symlink, or it has other names) is refused, never
//! mounted and never moved.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bkg_schema::paths::{ProjectLayout, SandboxHome};

use super::request::RunError;

/// What the agent's own images look like on disk: owned by root or a sandbox uid at or above
/// `uid_base`, a regular file with one name.
fn made_by_the_agent(meta: &std::fs::Metadata, uid_base: u32) -> bool {
    meta.file_type().is_file() && meta.nlink() == 1 && (meta.uid() == 0 || meta.uid() >= uid_base)
}

fn refused(legacy: &Path, meta: &std::fs::Metadata) -> RunError {
    RunError::BadRequest(format!(
        "{} was not made by the agent (owner uid {}): the agent mounts only images it made; remove it",
        legacy.display(),
        meta.uid()
    ))
}

/// Makes sure the image of sandbox `name` of `project_dir` is in `home` if it is anywhere: an
/// image an earlier agent left in the project's `.bkg/` is moved there once (with a line in the
/// agent's log), one that is not the agent's is refused.
pub fn adopt_legacy_image(project_dir: &Path, name: &str, home: &SandboxHome, uid_base: u32) -> Result<(), RunError> {
    let image = home.disk_image();
    if image.exists() {
        return Ok(());
    }
    let legacy = ProjectLayout::new(project_dir).legacy_disk_image(name);
    let meta = match std::fs::symlink_metadata(&legacy) {
        Ok(meta) => meta,
        Err(_) => return Ok(()),
    };
    if !made_by_the_agent(&meta, uid_base) {
        return Err(refused(&legacy, &meta));
    }
    let failed = |error: std::io::Error| {
        RunError::BadRequest(format!("cannot move {} to {}: {error}", legacy.display(), image.display()))
    };
    std::fs::create_dir_all(home.dir()).map_err(failed)?;
    match std::fs::rename(&legacy, &image) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) => copy_by_descriptor(&legacy, &image, uid_base)?,
        Err(error) => return Err(failed(error)),
    }
    // The project's directory is its user's: what was renamed may have been swapped in after
    // the check above. Now in the agent's private directory, it is checked again.
    let moved = std::fs::symlink_metadata(&image).map_err(failed)?;
    if !made_by_the_agent(&moved, uid_base) {
        let _ = std::fs::remove_file(&image);
        return Err(refused(&legacy, &moved));
    }
    tracing::warn!(
        from = %legacy.display(),
        to = %image.display(),
        "moved a sandbox's disk image out of its project into the agent's state directory (once)"
    );
    Ok(())
}

/// Copies across filesystems from a descriptor opened without following symlinks, so what is
/// copied is the file that was checked.
fn copy_by_descriptor(legacy: &Path, image: &Path, uid_base: u32) -> Result<(), RunError> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |error: std::io::Error| RunError::BadRequest(format!("cannot move {}: {error}", legacy.display()));
    let mut source =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(legacy).map_err(failed)?;
    let meta = source.metadata().map_err(failed)?;
    if !made_by_the_agent(&meta, uid_base) {
        return Err(refused(legacy, &meta));
    }
    let mut target =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(image).map_err(failed)?;
    std::io::copy(&mut source, &mut target).map_err(failed)?;
    std::os::unix::fs::fchown(&target, Some(meta.uid()), Some(meta.gid())).map_err(failed)?;
    std::fs::remove_file(legacy).map_err(failed)
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
        std::fs::write(&legacy, b"crafted").ok();
        let own_uid = nix::unistd::geteuid().as_raw();
        if own_uid != 0 {
            // Made by a user: refused, left where it is.
            assert!(matches!(adopt_legacy_image(project.path(), "api", &home, own_uid + 1), Err(RunError::BadRequest(_))));
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
    }
}
