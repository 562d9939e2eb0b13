//! Loop devices for the sandbox disk images. Each is attached with auto-clear, so it is released
//! by the kernel as soon as the sandbox's mount namespace (its only user) is gone.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("{action}: {source}")]
    Io { action: String, source: std::io::Error },
    #[error("no free loop device after {0} attempts over {1} ms: other processes took each free one first")]
    Exhausted(u32, u128),
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoopError {
    let action = action.into();
    move |source| LoopError::Io { action, source }
}

/// An attached loop device. Dropping it closes our handle; with auto-clear the device is freed
/// once it is also unmounted.
pub struct LoopDevice {
    pub path: PathBuf,
    _device: File,
}

/// Attaches `image` to a free loop device with auto-clear and direct I/O (so the image's page
/// cache is not charged twice to the sandbox's memory limit).
pub fn attach(image: &Path) -> Result<LoopDevice, LoopError> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(io_error("open /dev/loop-control"))?;
    let backing =
        OpenOptions::new().read(true).write(true).open(image).map_err(io_error(format!("open {}", image.display())))?;

    let started = std::time::Instant::now();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            back_off(attempt);
        }
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(io_error("find a free loop device")(std::io::Error::last_os_error()));
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(device) => device,
            // Another agent may have taken it and udev may not have made the node yet.
            Err(_) => continue,
        };
        let mut config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                lo_file_name: [0; LO_NAME_SIZE],
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        let name = image.as_os_str().as_encoded_bytes();
        let copied = name.len().min(LO_NAME_SIZE - 1);
        config.info.lo_file_name[..copied].copy_from_slice(&name[..copied]);
        // SAFETY: `config` is a properly initialised `struct loop_config` that outlives the call.
        let result = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &mut config as *mut LoopConfig) };
        if result == 0 {
            return Ok(LoopDevice { path, _device: device });
        }
        let error = std::io::Error::last_os_error();
        // EBUSY: another process configured this device between GET_FREE and CONFIGURE.
        if error.raw_os_error() != Some(libc::EBUSY) {
            return Err(io_error(format!("attach {} to {}", image.display(), path.display()))(error));
        }
    }
    Err(LoopError::Exhausted(ATTEMPTS, started.elapsed().as_millis()))
}

/// How often a free loop device is looked for before giving up.
const ATTEMPTS: u32 = 32;

/// Waits before the next attempt: 1 ms doubling to 64 ms, staggered by pid so that sandboxes
/// racing for the same device do not retry in step (under 2 s over all attempts).
fn back_off(attempt: u32) {
    let base = 1u64 << attempt.min(6);
    let stagger = u64::from(std::process::id() % 7);
    std::thread::sleep(std::time::Duration::from_millis(base + stagger));
}

/// Loop devices whose backing file lies under `dir` (from /sys/block/loop*/loop/backing_file).
pub fn devices_backed_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|entry| {
            let backing = backing_file(&entry.file_name().to_string_lossy())?;
            backing.starts_with(dir).then(|| PathBuf::from("/dev").join(entry.file_name()))
        })
        .collect()
}

/// Whether `device` (`/dev/loopN`) is still attached to `image`. A released device may already
/// serve another image: that is released too.
pub fn is_backed_by(device: &Path, image: &Path) -> bool {
    device.file_name().and_then(|name| backing_file(&name.to_string_lossy())).is_some_and(|backing| backing == image)
}

/// The file loop device `name` (`loopN`) is attached to, if any.
fn backing_file(name: &str) -> Option<PathBuf> {
    let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(backing.trim_end().trim_end_matches(" (deleted)")))
}

/// Detaches a loop device left behind by a killed agent. Only called for devices backed by files
/// in this agent's own state directory.
pub fn detach(device: &Path) -> Result<(), LoopError> {
    let file = OpenOptions::new().read(true).open(device).map_err(io_error(format!("open {}", device.display())))?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD) };
    if result != 0 {
        return Err(io_error(format!("detach {}", device.display()))(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_backed_by_its_image_until_the_last_holder_closes_it() {
        if !Path::new("/dev/loop-control").exists() {
            return crate::engine::test_support::feature_missing("loop devices (/dev/loop-control)");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        File::create(&image).and_then(|file| file.set_len(1 << 20)).expect("image");
        let other = dir.path().join("other.img");

        let device = attach(&image).expect("attach");
        assert!(is_backed_by(&device.path, &image));
        assert!(!is_backed_by(&device.path, &other));
        let path = device.path.clone();
        // Auto-clear frees it as its last opener closes it, perhaps a moment later.
        drop(device);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_backed_by(&path, &image) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_backed_by(&path, &image), "{} still holds {}", path.display(), image.display());
        assert!(!is_backed_by(Path::new("/dev/loop-not-a-device"), &image));
    }
}
