//! `bkg cp`: files and directories into and out of a persistent sandbox, as tar streams both
//! ways (`PUT`/`GET /api/v1/sandboxes/{id}/files`), never whole in memory; and what `bkg exe`,
//! `bkg exec` and `bkg repl` share to name a sandbox.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bkg_schema::chunks::{self, Chunk, ChunkReader, ChunkWriter};
use bkg_schema::files::UploadResult;
use bkg_schema::sandbox::{SandboxInfo, sandbox_id};
use tokio::sync::mpsc;

use crate::args::{CpArgs, ProjectArgs};
use crate::client::{AgentClient, api_error};
use crate::exit::{CliError, SUCCESS};
use crate::manage::percent_encode;
use crate::settings::Settings;

/// One side of `bkg cp`: a host path, or `NAME:PATH` in a sandbox.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    Host(PathBuf),
    Sandbox { name: String, path: String },
}

fn place(text: &str) -> Place {
    match text.split_once(':') {
        Some((name, path)) if bkg_schema::sandbox::is_dns_label(name) => {
            Place::Sandbox { name: name.to_owned(), path: path.to_owned() }
        }
        _ => Place::Host(PathBuf::from(text)),
    }
}

/// Sandbox `name`'s id: the project's (cave.yaml around the current directory, or `-C`), given
/// to the agent as cave.yaml has it now (made if it has not run yet), else the one sandbox of
/// that name the agent shows this caller (made with the API or MCP).
pub async fn find_sandbox(
    client: &AgentClient,
    project: &ProjectArgs,
    name: &str,
    out: crate::out::Printer,
) -> Result<String, CliError> {
    // An invalid cave.yaml is refused with its problems, as bkgr is: it cannot say whether it
    // declares the name. Problems of other sandboxes only are said and left aside.
    let dir = match crate::project::project_if_any(project.dir.as_deref())? {
        Ok(dir) => dir,
        Err(no_project) => return outside_a_project(client, name, &no_project).await,
    };
    let cave = crate::project::load_cave_for(&dir, name, out)?;
    let id = sandbox_id(&dir.to_string_lossy(), name);
    let known = client.get_found::<SandboxInfo>(&format!("/api/v1/sandboxes/{id}")).await?.is_some();
    // The project's own sandbox of that name, made now if need be: never another project's.
    if known || cave.sandboxes.contains_key(name) {
        crate::define::ensure(client, &dir, &cave, name, known, out).await?;
        return Ok(id);
    }
    elsewhere(client, (&cave, &dir), name, out).await
}

/// The id of sandbox `name`, which the project's cave.yaml (`cave`) does not declare: the one
/// of that name the agent shows this caller from elsewhere, said so that nobody works in another
/// project's sandbox unawares; else the project's names.
pub async fn elsewhere(
    client: &AgentClient,
    (cave, project): (&bkg_schema::cave::CaveFile, &std::path::Path),
    name: &str,
    out: crate::out::Printer,
) -> Result<String, CliError> {
    let Some(id) = agent_wide(client, name).await? else {
        return Err(crate::project::unknown_sandbox(cave, name));
    };
    // One of this project's own sandboxes named by its id needs no word (found by a new-user
    // trial: it was said to be "not in this project's cave.yaml").
    let ours = |info: &SandboxInfo| std::path::Path::new(&info.project_dir) == project;
    if let Some(info) = client.get_found::<SandboxInfo>(&format!("/api/v1/sandboxes/{id}")).await?
        && !ours(&info)
    {
        out.note(format_args!(
            "`{name}` is not in this project's cave.yaml: using sandbox {} of {}",
            info.name, info.project_dir
        ));
    }
    Ok(id)
}

/// The id of sandbox `name` where no project is around (`no_project` says why): the one sandbox
/// of that name the agent shows this caller (made with the API, MCP, or in a project elsewhere).
/// With no cave.yaml around, the hint for none is the project, where `bkgr NAME` makes it:
/// `bkgr` here would only say that there is no cave.yaml (found by a new-user trial).
pub async fn outside_a_project(
    client: &AgentClient,
    name: &str,
    no_project: &crate::project::NoProject,
) -> Result<String, CliError> {
    use crate::project::NoProject;
    let found = agent_wide(client, name).await?;
    // Repeated escaped and cut: a name with a newline would break the one line (found by a
    // new-user trial).
    let name = bkg_schema::shown_briefly(name);
    found.ok_or_else(|| match no_project {
        // A run's id where a sandbox was asked for (`bkg logs run_…`, found by a trial).
        _ if name.starts_with("run_") && bkg_schema::sandbox::is_run_id(&name) => CliError::usage(format!(
            "`{name}` is a run's id, not a sandbox's: `bkg runs show {name}` shows that run, and `bkg logs NAME \
             --run {name}` the log of a persistent sandbox's (a temporary run keeps none)"
        )),
        NoProject::NoCaveFile { searched_from } => CliError::usage(format!(
            "no sandbox `{name}` on the agent, and no cave.yaml in {} or above: run this in the project that \
             declares it (or give `-C DIR`), or create the sandbox with the API",
            searched_from.display()
        )),
        NoProject::NoCurrentDir(why) | NoProject::Unusable(why) => {
            CliError::usage(format!("no sandbox `{name}` on the agent ({})", why.message))
        }
    })
}

/// The one sandbox named `name` the agent shows this caller (or whose id `name` is, as `bkg ls
/// --all` lists them), if there is one.
async fn agent_wide(client: &AgentClient, name: &str) -> Result<Option<String>, CliError> {
    let all: Vec<SandboxInfo> = client.get("/api/v1/sandboxes").await?;
    if let Some(info) = all.iter().find(|info| info.id == name) {
        return Ok(Some(info.id.clone()));
    }
    let named: Vec<SandboxInfo> = all.into_iter().filter(|info| info.name == name).collect();
    // Of several, the one of the project the caller is in (its cave.yaml gone, say), if any.
    if named.len() > 1 {
        let here = std::env::current_dir().unwrap_or_default();
        if let Some(nearest) =
            named.iter().filter(|info| here.starts_with(&info.project_dir)).max_by_key(|info| info.project_dir.len())
        {
            return Ok(Some(nearest.id.clone()));
        }
    }
    match named.as_slice() {
        [] => Ok(None),
        [info] => Ok(Some(info.id.clone())),
        several => {
            let ids: Vec<String> = several
                .iter()
                .map(|info| format!("{} (of {}, namespace {})", info.id, info.project_dir, info.namespace))
                .collect();
            Err(CliError::usage(format!(
                "more than one sandbox is named `{name}`: {}; run bkg from its project directory (or give -C DIR), or \
                 name it by its id",
                ids.join(", ")
            )))
        }
    }
}

pub async fn cp(settings: &Settings, args: CpArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    // `-` is not stdin or stdout here (a copy is a tree of files): a file named `-` is `./-`.
    if args.source == "-" || args.dest == "-" {
        return Err(CliError::usage(
            "bkg cp copies files, not standard input or output: name a host file or directory (`./-` for one named -)",
        ));
    }
    match (place(&args.source), place(&args.dest)) {
        (Place::Host(source), Place::Sandbox { name, path }) => {
            client.ensure_running().await?;
            let id = find_sandbox(&client, &args.project, &name, settings.out).await?;
            let uploaded = upload(&client, &id, &source, &path).await?;
            let into = format!("{name}:{}/", uploaded.path.trim_end_matches('/'));
            // A link is no file: "0 files" would say nothing was copied.
            match std::fs::read_link(&source) {
                Ok(target) if !settings.out.is_json() => settings.out.note(format_args!(
                    "a symbolic link ({} -> {}), into {into}",
                    source
                        .file_name()
                        .map_or_else(|| source.display().to_string(), |name| name.to_string_lossy().into_owned()),
                    target.display()
                )),
                _ => report(settings.out, &uploaded, &into)?,
            }
        }
        (Place::Sandbox { name, path }, Place::Host(dest)) => {
            client.ensure_running().await?;
            let id = find_sandbox(&client, &args.project, &name, settings.out).await?;
            let copied = download(&client, &id, &path, &dest).await?;
            let path = dest.display().to_string();
            // The trailing slash says what DEST is: the directory the copy went into.
            let into = dest.join("").display().to_string();
            if let Some(first) = copied.left_out.first() {
                // As an upload of one is refused (`upload`).
                settings.out.note(format_args!(
                    "left out {} ({}{}): a pipe has no content to copy",
                    crate::out::count(copied.left_out.len(), "named pipe", "named pipes"),
                    first.display(),
                    if copied.left_out.len() > 1 { ", …" } else { "" }
                ));
            }
            for volume in &copied.volumes {
                settings.out.note(format_args!(
                    "left out {}: a volume mounted into the sandbox; its files are this host's already, in the \
                     folder cave.yaml's volumes name",
                    dest.join(volume).display()
                ));
            }
            let copied = UploadResult { path, files: copied.files, bytes: copied.bytes, links: copied.links };
            report(settings.out, &copied, &into)?;
        }
        (Place::Host(_), Place::Host(_)) => {
            return Err(CliError::usage("one side of bkg cp must be a sandbox: NAME:PATH"));
        }
        (Place::Sandbox { .. }, Place::Sandbox { .. }) => {
            // `NAME:PATH` is a sandbox's, so a host file with a colon in its name needs a `./`.
            let host_file = [&args.source, &args.dest].into_iter().find(|text| Path::new(text.as_str()).exists());
            return Err(CliError::usage(match host_file {
                Some(file) => {
                    format!("`{file}` reads as SANDBOX:PATH; for the file of that name here write `./{file}`")
                }
                None => "bkg cp copies between the host and a sandbox, not between two sandboxes".to_owned(),
            }));
        }
    }
    Ok(SUCCESS)
}

/// Checks that every file under `path` (itself, or what a directory holds) can be opened, and
/// every directory listed; links are not followed. The first that cannot is named.
fn readable(path: &Path) -> Result<(), CliError> {
    let refused =
        |path: &Path, error: std::io::Error| CliError::usage(format!("cannot read {}: {error}", path.display()));
    let kind = std::fs::symlink_metadata(path).map_err(|error| refused(path, error))?.file_type();
    if kind.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|error| refused(path, error))? {
            readable(&entry.map_err(|error| refused(path, error))?.path())?;
        }
    } else if kind.is_file() {
        std::fs::File::open(path).map_err(|error| refused(path, error))?;
    } else if !kind.is_symlink() {
        // The agent would refuse it after what came before it was written.
        return Err(CliError::usage(format!(
            "{} is not a file, a directory or a link (a device, a pipe or a socket cannot be copied): move it \
             out of what you copy",
            path.display()
        )));
    }
    Ok(())
}

/// What a copy wrote, `into` a directory shown as given: `{path, files, bytes}` with `--json`,
/// else a note.
fn report(out: crate::out::Printer, copied: &UploadResult, into: &str) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(copied);
    }
    let size = bkg_schema::units::format_size(copied.bytes);
    let files = crate::out::count(copied.files as usize, "file", "files");
    // Links are no files: "0 files" alone would say a tree of links was not copied.
    let links = match copied.links {
        0 => String::new(),
        links => format!(" and {}", crate::out::count(links as usize, "symbolic link", "symbolic links")),
    };
    out.note(format_args!("{files}{links}, {size}, into {into}"));
    Ok(())
}

/// Sends `source` (a file or a directory, named by its last part) into directory `dest` of the
/// sandbox's /workspace.
pub async fn upload(client: &AgentClient, id: &str, source: &Path, dest: &str) -> Result<UploadResult, CliError> {
    if source.as_os_str().is_empty() {
        return Err(CliError::usage("the source path is empty: name a file or a directory to copy"));
    }
    let metadata = std::fs::symlink_metadata(source).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => CliError::usage(format!("{} does not exist", source.display())),
        _ => CliError::usage(format!("{}: {error}", source.display())),
    })?;
    let kind = metadata.file_type();
    if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
        return Err(CliError::usage(format!(
            "{} is not a file or a directory (a device, a pipe or a socket cannot be copied)",
            source.display()
        )));
    }
    // A link is copied as a link under its own name (its target's could replace a file there);
    // only `.` and `..` take the name of the directory they stand for.
    let name = source
        .file_name()
        .map(PathBuf::from)
        .or_else(|| source.canonicalize().ok().and_then(|path| path.file_name().map(PathBuf::from)))
        .ok_or_else(|| CliError::usage(format!("{}: has no name to copy it under", source.display())))?;
    // Everything is read once before the agent is asked, so a file this user may not read is
    // named, and the sandbox gets nothing of a copy that could not be whole.
    readable(source)?;
    let (sender, chunks) = chunks::channel();
    let source = source.to_path_buf();
    let breaking = sender.clone();
    let packing = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut builder = tar::Builder::new(ChunkWriter::new(sender, "the agent stopped reading"));
        builder.follow_symlinks(false);
        let packed = pack(&mut builder, &source, &name).and_then(|()| builder.into_inner()?.flush());
        // A stream that only ended would be taken as whole by the agent if it ended between
        // entries: broken off, the upload places none of its files.
        if let Err(error) = &packed {
            let _ = breaking.blocking_send(Err(std::io::Error::new(error.kind(), "the upload was broken off")));
        }
        packed
    });
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    }));
    let url = client.url(&format!("/api/v1/sandboxes/{id}/files?path={}", percent_encode(dest)));
    let request = client.http().put(url).header(reqwest::header::CONTENT_TYPE, "application/x-tar").body(body);
    // The answer comes once the whole stream is in: no patience bound on it. Ctrl-C or a stop
    // signal ends it with a word, as a download's does (found by a new-user trial: bkg died of the
    // signal without one); dropping the request breaks the stream off.
    let mut signals = crate::stream::StopSignals::listen()?;
    let sent = tokio::select! {
        sent = request.send() => sent,
        signal = signals.next() => {
            return Err(CliError::new(
                crate::exit::SIGNALLED + signal.unwrap_or(libc::SIGINT),
                "the upload was interrupted: the agent places an upload only once all of it has arrived, so the \
                 sandbox has all of it or none",
            ));
        }
    };
    let packed = packing.await.map_err(|_| CliError::internal("the upload's reader failed"))?;
    // A file that changed while it was read broke the stream off: that, not the broken request
    // or the agent's word on it, is what happened.
    if let Err(error) = &packed
        && let Some(changed) = error.get_ref().and_then(|inner| inner.downcast_ref::<FilesError>())
    {
        return Err(CliError::usage(changed.to_string()));
    }
    let response = sent.map_err(|error| client.unreachable(error))?;
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    packed.map_err(|error| CliError::usage(format!("cannot read what to upload: {error}")))?;
    response.json().await.map_err(|error| client.unreachable(error))
}

/// What an upload refuses of a file while it reads it: sent wrong, the agent would take its bytes
/// for the next entry's header.
#[derive(Debug, thiserror::Error)]
enum FilesError {
    #[error(
        "{} changed while it was copied (it {how}): copy it again once nothing writes to it; the sandbox got none of \
         this copy",
        path.display()
    )]
    Changed { path: PathBuf, how: &'static str },
    #[error(
        "{} is a file of the kernel's ({kind}) that holds more than {}: copy what you need of it into a file first",
        path.display(),
        bkg_schema::units::format_size(KERNEL_FILE_MAX)
    )]
    KernelFileTooBig { path: PathBuf, kind: &'static str },
}

/// The most of a procfs or sysfs file an upload reads (it holds all of it in memory, since the
/// size such a file reports says nothing of its content).
const KERNEL_FILE_MAX: u64 = 4 * 1024 * 1024;

/// Appends `source` to `builder` as `name`, a directory with all it holds, as tar's
/// `append_dir_all` does, but each file with exactly the size its header declares.
fn pack<W: Write>(builder: &mut tar::Builder<W>, source: &Path, name: &Path) -> std::io::Result<()> {
    let mut pending = vec![(source.to_path_buf(), name.to_path_buf())];
    while let Some((path, name)) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)?;
        if metadata.is_dir() {
            builder.append_dir(&name, &path)?;
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                pending.push((entry.path(), name.join(entry.file_name())));
            }
        } else if metadata.is_file() {
            append_file(builder, &path, &name)?;
        } else {
            // A link, as a link (`follow_symlinks(false)`); `readable` refused anything else.
            builder.append_path_with_name(&path, &name)?;
        }
    }
    Ok(())
}

/// Appends file `path` as `name`: the size it reports, and exactly that many bytes, or an error if
/// it holds more or fewer by the time they are read. A procfs or sysfs file reports a size that
/// says nothing of its content (0, or 4096): it is read whole first, and its header says what
/// was read.
fn append_file<W: Write>(builder: &mut tar::Builder<W>, path: &Path, name: &Path) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    if let Some(kind) = kernel_file(&file) {
        let mut content = Vec::new();
        std::io::Read::by_ref(&mut file).take(KERNEL_FILE_MAX + 1).read_to_end(&mut content)?;
        if content.len() as u64 > KERNEL_FILE_MAX {
            return Err(std::io::Error::other(FilesError::KernelFileTooBig { path: path.to_path_buf(), kind }));
        }
        header.set_size(content.len() as u64);
        return builder.append_data(&mut header, name, &content[..]);
    }
    builder.append_data(&mut header, name, Declared { file, left: metadata.len(), path })
}

/// The kind of filesystem of `file` if it is one of the kernel's whose sizes say nothing of the
/// content.
fn kernel_file(file: &std::fs::File) -> Option<&'static str> {
    use nix::sys::statfs::{PROC_SUPER_MAGIC, SYSFS_MAGIC, fstatfs};
    match fstatfs(file).ok()?.filesystem_type() {
        kind if kind == PROC_SUPER_MAGIC => Some("procfs"),
        kind if kind == SYSFS_MAGIC => Some("sysfs"),
        _ => None,
    }
}

/// A file's content as its header declared it: `left` more bytes, then the end; a file that ends
/// before, or still has more after, changed while it was read.
struct Declared<'a> {
    file: std::fs::File,
    left: u64,
    path: &'a Path,
}

impl std::io::Read for Declared<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let changed = |how| std::io::Error::other(FilesError::Changed { path: self.path.to_path_buf(), how });
        if self.left == 0 {
            // One byte past the declared size is a file that grew.
            let mut probe = [0u8; 1];
            return match self.file.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(changed("grew")),
            };
        }
        let most = buffer.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.file.read(&mut buffer[..most])?;
        if read == 0 {
            return Err(changed("shrank"));
        }
        self.left -= read as u64;
        Ok(read)
    }
}

/// Writes sandbox path `path` (relative to /workspace) into host directory `dest`.
pub async fn download(client: &AgentClient, id: &str, path: &str, dest: &Path) -> Result<Unpacked, CliError> {
    let url = client.url(&format!("/api/v1/sandboxes/{id}/files?path={}", percent_encode(path)));
    let response = client.send(client.http().get(url)).await?;
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    unpack_stream(response, dest).await
}

/// Unpacks the tar stream of `response` into `dest` as it arrives. Ctrl-C, SIGTERM or SIGHUP
/// stop it once the file being written is taken away, with 128 + the signal (found by a new-user
/// trial: killed by the signal, bkg left that file's staging, hundreds of MB, and said nothing).
async fn unpack_stream(response: reqwest::Response, dest: &Path) -> Result<Unpacked, CliError> {
    let unpacker = Unpacker::start(dest, Links::Copied)?;
    // Heard from here on, where there is a staging to take away; before, the signals end bkg.
    let mut signals = crate::stream::StopSignals::listen()?;
    let mut stream = response.bytes_stream();
    use futures_util::StreamExt as _;
    loop {
        tokio::select! {
            chunk = stream.next() => match chunk {
                Some(Ok(bytes)) => unpacker.push(bytes.to_vec()).await,
                Some(Err(_)) => {
                    // The agent ends the stream without its end when it cannot send an entry
                    // (its log says which and why); what reqwest says of it names neither.
                    unpacker.fail(std::io::Error::other("the stream broke off")).await;
                    let _ = unpacker.finish().await;
                    return Err(CliError::new(
                        crate::exit::BKG_FAILED,
                        format!(
                            "the agent stopped sending the download before its end: the files of it already in {} \
                             are kept, the one being written was removed (the agent's log says why)",
                            dest.display()
                        ),
                    ));
                }
                None => break,
            },
            signal = signals.next() => {
                let signal = signal.unwrap_or(libc::SIGINT);
                // The writer removes the file it was writing when its stream fails: waited for.
                unpacker.fail(std::io::Error::other("interrupted")).await;
                let _ = unpacker.finish().await;
                return Err(CliError::new(
                    crate::exit::SIGNALLED + signal,
                    format!(
                        "the download was interrupted: the files of it already in {} are kept, the one being \
                         written was removed",
                        dest.display()
                    ),
                ));
            }
        }
    }
    unpacker.finish().await
}

/// A tar stream unpacked into a host directory (made if missing) as its pieces arrive; the
/// tar reader refuses entries that would land outside it.
pub struct Unpacker {
    sender: mpsc::Sender<Chunk>,
    unpacking: tokio::task::JoinHandle<std::io::Result<Unpacked>>,
}

/// What an `Unpacker` wrote: regular files and their bytes.
#[derive(Debug, Default, Clone)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    pub links: u64,
    /// Entries that are neither files, directories nor links (named pipes), not made here.
    pub left_out: Vec<PathBuf>,
    /// Volumes mounted in the sandbox's /workspace: their files are the host's, not sent.
    pub volumes: Vec<PathBuf>,
}

/// What a download brings back of the symbolic links in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Made as links (`bkg cp`: the user's own files, copied as they are).
    Copied,
    /// Left out (`bkg exe -o`: what a run's code made, which must not leave links to host
    /// paths in the user's directory; its kept files leave them out too).
    LeftOut,
}

/// Unpacks `archive` into `dest` as `tar::Archive::unpack` does (directories last, deepest
/// first, so that a read-only one does not stop what goes into it), counting the files.
fn unpack_counting<R: std::io::Read>(
    archive: &mut tar::Archive<R>,
    dest: &Path,
    links: Links,
) -> std::io::Result<Unpacked> {
    let mut unpacked = Unpacked::default();
    let mut directories = Vec::new();
    let mut cleaned = std::collections::HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Directory {
            let marked = entry.pax_extensions().ok().flatten().is_some_and(|mut extensions| {
                extensions.any(|extension| extension.is_ok_and(|pax| pax.key() == Ok(bkg_schema::files::MOUNT_MARK)))
            });
            match marked {
                true => unpacked.volumes.push(entry.path().map(|path| path.into_owned()).unwrap_or_default()),
                false => directories.push(entry),
            }
            continue;
        }
        if links == Links::LeftOut && matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            continue;
        }
        if !(kind.is_file() || kind.is_symlink() || kind.is_hard_link()) {
            unpacked.left_out.push(entry.path().map(|path| path.into_owned()).unwrap_or_default());
            continue;
        }
        let size = entry.size();
        let path = entry.path().map(|path| path.into_owned()).unwrap_or_default();
        // `false`: an entry that would land outside `dest`, skipped. tar refuses to write
        // through a symbolic link that is already in `dest` (one copied out before) with an
        // error that names neither the entry nor the link.
        let written = if kind.is_file() {
            unpack_file_whole(&mut entry, &path, dest, &mut cleaned)
        } else {
            entry.unpack_in(dest)
        };
        let unpacked_in = written.map_err(|error| match error.to_string() {
            refusal if refusal.starts_with("trying to unpack outside of destination path") => {
                std::io::Error::other(format!(
                    "{} would be written through a symbolic link already in {}; remove the link there, or copy \
                 into an empty directory",
                    path.display(),
                    dest.display()
                ))
            }
            // tar's message names no entry, and this one is thousands of bytes long.
            _ if error.raw_os_error() == Some(libc::ENAMETOOLONG) => std::io::Error::other(format!(
                "a path in it is {} bytes long, more than this host takes: copy a directory further down",
                dest.join(&path).as_os_str().len()
            )),
            _ => error,
        })?;
        if unpacked_in && kind.is_file() {
            unpacked.files += 1;
            unpacked.bytes += size;
        } else if unpacked_in && kind.is_symlink() {
            unpacked.links += 1;
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut directory in directories {
        directory.unpack_in(dest)?;
    }
    Ok(unpacked)
}

/// Unpacks a file entry as `Entry::unpack_in` does (parts that climb out skipped, each directory
/// made only inside `dest`), but under a name of its own beside its place, renamed over it once
/// whole: a download that breaks off, or is killed, leaves the file it was to replace as it was.
/// The stale stagings of each directory it writes into are removed first, once (`cleaned`).
fn unpack_file_whole<R: std::io::Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    dest: &Path,
    cleaned: &mut std::collections::HashSet<PathBuf>,
) -> std::io::Result<bool> {
    let mut target = dest.to_path_buf();
    for part in path.components() {
        match part {
            std::path::Component::Normal(name) => target.push(name),
            std::path::Component::ParentDir => return Ok(false),
            _ => {}
        }
    }
    let (Some(parent), Some(_)) = (target.parent(), target.file_name()) else {
        return Ok(false);
    };
    let mut missing = Vec::new();
    let mut ancestor = parent;
    while ancestor.symlink_metadata().is_err() {
        missing.push(ancestor);
        match ancestor.parent() {
            Some(up) => ancestor = up,
            None => break,
        }
    }
    for dir in missing.into_iter().rev() {
        inside(dest, dir.parent().unwrap_or(dest))?;
        std::fs::create_dir(dir).or_else(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(error),
        })?;
    }
    // A file of the destination's where the download has a directory (was: tar's "failed to
    // unpack" into a staging name nobody asked for).
    if parent.symlink_metadata().is_ok_and(|meta| meta.is_file()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!(
                "{} is a file here and a directory in the download, so {} cannot be written: move the file, or \
                 download into another directory",
                parent.display(),
                path.display()
            ),
        ));
    }
    // And the other way round (was: the rename's "Is a directory (os error 21)"; found by a
    // new-user trial).
    if target.symlink_metadata().is_ok_and(|meta| meta.is_dir()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            format!(
                "{} is a directory here and a file in the download, so it cannot be written: move the directory, \
                 or download into another directory",
                target.display()
            ),
        ));
    }
    inside(dest, parent)?;
    if cleaned.insert(parent.to_path_buf()) {
        remove_stale_stagings(parent);
    }
    let staging = parent.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    let written = write_file_entry(entry, &staging).and_then(|()| std::fs::rename(&staging, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    written
        .map(|()| true)
        .map_err(|error| std::io::Error::new(error.kind(), format!("{}: {}", target.display(), with_causes(&error))))
}

/// Writes a file entry at `path` as tar's unpack writes one, its mode (but setuid, setgid and
/// sticky: what comes out of a sandbox is never made setuid on this host, whoever runs bkg) and
/// its time, and leaves its runs of zeros as holes, so a sparse file stays sparse (found by a
/// new-user trial: a 100 MiB sparse file came back as 100 MiB of blocks).
fn write_file_entry<R: std::io::Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> std::io::Result<()> {
    use bkg_schema::chunks::CopyFailure;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mode = entry.header().mode()? & 0o777;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut buffer = vec![0; bkg_schema::chunks::CHUNK_BYTES];
    let size = entry.size();
    bkg_schema::chunks::copy_leaving_holes(entry, &mut file, size, &mut buffer).map_err(|failure| match failure {
        CopyFailure::Read(error) | CopyFailure::Write(error) => error,
        CopyFailure::Short => {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the stream ended inside this file")
        }
    })?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Ok(seconds) = entry.header().mtime() {
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))?;
    }
    Ok(())
}

/// `error` with what caused it, each said once: tar names the entry, and what went wrong with it
/// is down the error's sources (found by a new-user trial: a full disk was only "failed to
/// unpack").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut said = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !said.contains(&text) {
            said = format!("{said}: {text}");
        }
        source = cause.source();
    }
    said
}

/// What the name of a file being downloaded starts with, beside its place; the pid of the bkg
/// writing it follows.
const STAGING_PREFIX: &str = ".bkg-download-";

/// Removes from `dir` the staging files of downloads whose bkg is gone (killed with SIGKILL, which
/// leaves them; found by a new-user trial): only files named exactly `.bkg-download-PID` whose
/// process is not alive, so that no file of the user's is touched.
fn remove_stale_stagings(dir: &Path) {
    let Ok(listing) = std::fs::read_dir(dir) else { return };
    for entry in listing.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|name| name.strip_prefix(STAGING_PREFIX)) else { continue };
        // A pid as bkg writes it (`parse` would take a sign or leading zeros), of no process
        // (ESRCH; EPERM is one alive).
        let Some(pid) = digits.parse::<i32>().ok().filter(|pid| *pid > 0 && pid.to_string() == digits) else {
            continue;
        };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        if gone && entry.file_type().is_ok_and(|kind| kind.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Refuses `dir` when, links followed, it is not inside `dest` (tar's own words, which
/// `unpack_counting` turns into the user's).
fn inside(dest: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.canonicalize()?.starts_with(dest) {
        return Ok(());
    }
    Err(std::io::Error::other(format!("trying to unpack outside of destination path: {}", dest.display())))
}

/// Refuses `dest`, a host directory files are to be written into, when it is a file.
pub fn refuse_file_as_directory(dest: &Path) -> Result<(), CliError> {
    if dest.exists() && !dest.is_dir() {
        return Err(CliError::usage(format!(
            "{} is a file: give a directory to write into (e.g. `.`)",
            dest.display()
        )));
    }
    Ok(())
}

impl Unpacker {
    pub fn start(dest: &Path, links: Links) -> Result<Self, CliError> {
        refuse_file_as_directory(dest)?;
        std::fs::create_dir_all(dest).map_err(|error| {
            // What to do, beside what went wrong (found by a new-user trial).
            let fix = match error.kind() {
                std::io::ErrorKind::NotADirectory => ": a file is where a directory of its path would go",
                std::io::ErrorKind::PermissionDenied => ": give a directory you may write in",
                _ => ": give a directory that exists, or one bkg may make",
            };
            CliError::usage(format!("{}: cannot make it a directory ({error}){fix}", dest.display()))
        })?;
        let (sender, chunks) = chunks::channel();
        let dest = dest.canonicalize().map_err(|error| CliError::usage(format!("{}: {error}", dest.display())))?;
        let unpacking = tokio::task::spawn_blocking(move || {
            let mut archive = tar::Archive::new(ChunkReader::new(chunks));
            // Modes without setuid, setgid and sticky, as `write_file_entry` gives files.
            archive.set_preserve_permissions(false);
            archive.set_overwrite(true);
            unpack_counting(&mut archive, &dest, links)
        });
        Ok(Self { sender, unpacking })
    }

    pub async fn push(&self, piece: Vec<u8>) {
        // A writer that failed says why in `finish`.
        let _ = self.sender.send(Ok(piece)).await;
    }

    async fn fail(&self, error: std::io::Error) {
        let _ = self.sender.send(Err(error)).await;
    }

    pub async fn finish(self) -> Result<Unpacked, CliError> {
        drop(self.sender);
        self.unpacking
            .await
            .map_err(|_| CliError::internal("the download's writer failed"))?
            .map_err(|error| CliError::usage(format!("cannot write what was downloaded: {}", with_causes(&error))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_side_is_a_name_and_a_colon() {
        assert_eq!(place("box:out/a.txt"), Place::Sandbox { name: "box".into(), path: "out/a.txt".into() });
        assert_eq!(place("box:"), Place::Sandbox { name: "box".into(), path: String::new() });
        assert_eq!(place("./a:b"), Place::Host(PathBuf::from("./a:b")));
        assert_eq!(place("data.csv"), Place::Host(PathBuf::from("data.csv")));
    }

    /// A file read as its header declared it: more or fewer bytes than that are refused by name,
    /// never sent (found by a new-user trial: a file that grew while it was read was sent with
    /// more than its header said).
    #[test]
    fn a_file_that_is_not_its_declared_size_is_refused() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log.txt");
        std::fs::write(&path, "12345")?;
        let read = |declared| {
            let mut content = Vec::new();
            let file = std::fs::File::open(&path)?;
            Declared { file, left: declared, path: &path }.read_to_end(&mut content).map(|_| content)
        };
        assert_eq!(read(5)?, b"12345");
        for (declared, how) in [(3, "grew"), (8, "shrank")] {
            let said = read(declared).err().map(|error| error.to_string()).unwrap_or_default();
            assert!(said.contains(&format!("log.txt changed while it was copied (it {how})")), "{said}");
        }
        Ok(())
    }

    /// A download that breaks off inside a file leaves the file it was to replace as it was, and
    /// nothing beside it.
    #[test]
    fn a_download_cut_short_leaves_the_file_it_replaces_whole() -> std::io::Result<()> {
        let dest = tempfile::tempdir()?;
        std::fs::create_dir(dest.path().join("out"))?;
        std::fs::write(dest.path().join("out/big.bin"), "precious")?;
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(64 * 1024);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, "out/big.bin", &vec![7u8; 64 * 1024][..])?;
        let bytes = builder.into_inner()?;
        let cut = &bytes[..512 + 10 * 1024];
        let dest_path = dest.path().canonicalize()?;
        assert!(unpack_counting(&mut tar::Archive::new(cut), &dest_path, Links::Copied).is_err());
        assert_eq!(std::fs::read_to_string(dest.path().join("out/big.bin"))?, "precious");
        assert_eq!(std::fs::read_dir(dest.path().join("out"))?.count(), 1, "nothing left beside it");
        // Whole, it replaces the file.
        let unpacked = unpack_counting(&mut tar::Archive::new(&bytes[..]), &dest_path, Links::Copied)?;
        assert_eq!((unpacked.files, unpacked.bytes), (1, 64 * 1024));
        assert_eq!(std::fs::read(dest.path().join("out/big.bin"))?, vec![7u8; 64 * 1024]);
        Ok(())
    }

    /// A file where the download has a directory is named as that, and the files before it are
    /// written (a download is not all or nothing; docs/cli.md).
    #[test]
    fn a_file_where_the_download_has_a_directory_is_named() -> std::io::Result<()> {
        let dest = tempfile::tempdir()?;
        std::fs::create_dir(dest.path().join("in"))?;
        std::fs::write(dest.path().join("in/dir"), "mine")?;
        let mut builder = tar::Builder::new(Vec::new());
        for name in ["in/a.txt", "in/dir/c.txt"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, &b"x"[..])?;
        }
        let bytes = builder.into_inner()?;
        let dest_path = dest.path().canonicalize()?;
        let refused = unpack_counting(&mut tar::Archive::new(&bytes[..]), &dest_path, Links::Copied);
        let said = refused.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(said.contains("in/dir is a file here and a directory in the download, so in/dir/c.txt"), "{said}");
        assert_eq!(std::fs::read_to_string(dest.path().join("in/dir"))?, "mine");
        assert_eq!(std::fs::read_to_string(dest.path().join("in/a.txt"))?, "x");
        Ok(())
    }

    /// A directory where the download has a file is named as that, and is left as it was.
    #[test]
    fn a_directory_where_the_download_has_a_file_is_named() -> std::io::Result<()> {
        let dest = tempfile::tempdir()?;
        std::fs::create_dir_all(dest.path().join("in/main.py"))?;
        std::fs::write(dest.path().join("in/main.py/kept.txt"), "mine")?;
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        builder.append_data(&mut header, "in/main.py", &b"x"[..])?;
        let bytes = builder.into_inner()?;
        let dest_path = dest.path().canonicalize()?;
        let refused = unpack_counting(&mut tar::Archive::new(&bytes[..]), &dest_path, Links::Copied);
        let said = refused.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(
            said.contains("in/main.py is a directory here and a file in the download, so it cannot be written"),
            "{said}"
        );
        assert_eq!(std::fs::read_to_string(dest.path().join("in/main.py/kept.txt"))?, "mine");
        Ok(())
    }

    /// A link copied out earlier now sits in the destination: the next download's entry under
    /// it is refused, naming the entry and what to do, and nothing lands outside.
    #[test]
    fn an_entry_under_a_link_already_in_the_destination_is_refused_by_name() -> std::io::Result<()> {
        let dest = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        std::os::unix::fs::symlink(outside.path(), dest.path().join("t2"))?;
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, "t2/note.txt", &b"hi"[..])?;
        let bytes = builder.into_inner()?;
        let refused = unpack_counting(&mut tar::Archive::new(&bytes[..]), dest.path(), Links::Copied)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(refused.starts_with("t2/note.txt would be written through a symbolic link already in"), "{refused}");
        assert!(!outside.path().join("note.txt").exists());
        Ok(())
    }
}
