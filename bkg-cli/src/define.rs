//! A cave.yaml sandbox as the agent knows it (`SandboxDefinition`): built from the file, with
//! its volumes resolved against the project and its package files read as the user who runs
//! bkg, and given to the agent. `bkgr` gives it before every run; `bkg exec`, `bkg repl`,
//! `bkg shell` and `bkg cp` before they start, so that each sees cave.yaml as it is now, and
//! make it if it has not run yet.

use std::path::{Path, PathBuf};

use bkg_schema::cave::{CaveFile, SandboxSpec, Volume};
use bkg_schema::envs::NodePackages;
use bkg_schema::sandbox::{SandboxDefinition, SandboxInfo, VolumeSpec, sandbox_id};

use crate::client::AgentClient;
use crate::exit::CliError;

/// What reaching outside the project `definition` lets through: volumes, files it reads.
#[derive(Debug, Clone, Copy)]
pub struct Outside {
    pub volumes: bool,
    pub files: bool,
}

impl Outside {
    /// Both, or neither (`bkgr --allow-outside`).
    pub fn allowed(allowed: bool) -> Self {
        Self { volumes: allowed, files: allowed }
    }
}

/// What the agent needs to know of sandbox `name`, with volumes resolved against the project;
/// a volume or a package file reaching outside the project is refused unless `outside` allows it.
pub fn definition(
    cave: &CaveFile,
    project: &Path,
    name: &str,
    spec: &SandboxSpec,
    outside: Outside,
) -> Result<SandboxDefinition, CliError> {
    let limits = match &spec.limits {
        Some(limits) => limits.to_overrides().map_err(|error| CliError::usage(format!("sandbox `{name}`: {error}")))?,
        None => Default::default(),
    };
    let mut volumes = Vec::new();
    for text in &spec.volumes {
        let volume = Volume::parse(text).map_err(|error| CliError::usage(format!("sandbox `{name}`: {error}")))?;
        // Collected through its components, `./data` is shown as `PROJECT/data`.
        let host: PathBuf = project.join(&volume.host).components().collect();
        let host = host.canonicalize().map_err(|error| {
            let fix = match error.kind() {
                std::io::ErrorKind::NotFound => "create it, or fix the volume in cave.yaml",
                std::io::ErrorKind::PermissionDenied => {
                    "a directory on its way is closed to you: give a path you may read, or fix the volume in cave.yaml"
                }
                _ => "fix the volume in cave.yaml",
            };
            CliError::usage(format!("sandbox `{name}`: volume {}: {error}: {fix}", host.display()))
        })?;
        if !outside.volumes && !host.starts_with(project) {
            return Err(CliError::usage(format!(
                "sandbox `{name}`: volume {text} reaches outside the project ({}); add --allow-outside to allow it",
                host.display()
            )));
        }
        volumes.push(VolumeSpec {
            host: host.to_string_lossy().into_owned(),
            guest: volume.guest,
            read_only: volume.read_only,
        });
    }
    Ok(SandboxDefinition {
        name: name.to_owned(),
        namespace: cave.namespace.clone(),
        project_dir: project.to_string_lossy().into_owned(),
        language: spec.r#type,
        limits,
        env: spec.env.clone(),
        volumes,
        scripts: spec.scripts.clone(),
        network: spec.network.as_ref().map(|network| network.allow.clone()).unwrap_or_default(),
        ports: spec.ports.clone(),
        restart: spec.restart,
        requirements: requirements(project, name, spec, outside.files)?,
        node_packages: node_packages(project, name, spec, outside.files)?,
        secrets: spec.secrets.clone(),
        keep: spec.keep.clone(),
    })
}

/// Refuses a file cave.yaml names for sandbox `name` under `key` (`python.requirements`) when it
/// leads outside the project, as a volume is refused, unless `allow_outside`: a cave.yaml from
/// someone else must not send the agent your other files. One that cannot be resolved is left
/// to its reading, which says why.
fn inside_project(project: &Path, name: &str, key: &str, path: &Path, allow_outside: bool) -> Result<(), CliError> {
    match path.canonicalize() {
        Ok(resolved) if !allow_outside && !resolved.starts_with(project) => Err(CliError::usage(format!(
            "sandbox `{name}`: {key} {} reaches outside the project ({}); add --allow-outside to allow it",
            path.display(),
            resolved.display()
        ))),
        _ => Ok(()),
    }
}

/// The sandbox's `node.package` and the package-lock.json beside it, read as the user who runs
/// bkg.
fn node_packages(
    project: &Path,
    name: &str,
    spec: &SandboxSpec,
    allow_outside: bool,
) -> Result<Option<NodePackages>, CliError> {
    let Some(file) = spec.node.as_ref().and_then(|node| node.package.as_deref()) else {
        return Ok(None);
    };
    let manifest: PathBuf = project.join(file).components().collect();
    let lockfile = manifest.with_file_name("package-lock.json");
    inside_project(project, name, "node.package", &manifest, allow_outside)?;
    let package_json = std::fs::read_to_string(&manifest).map_err(|error| {
        CliError::usage(format!(
            "sandbox `{name}`: node.package {}: {error}: fix the path in cave.yaml",
            manifest.display()
        ))
    })?;
    // One that names no packages has nothing to install, and needs no lockfile, as for `bkg exe`
    // (found by a new-user trial).
    let names_dependencies = crate::exe::names_dependencies(&package_json).map_err(|error| {
        CliError::usage(format!("sandbox `{name}`: node.package {} is not JSON ({error}): fix it", manifest.display()))
    })?;
    if !names_dependencies {
        return Ok(None);
    }
    inside_project(project, name, "node.package's lockfile", &lockfile, allow_outside)?;
    // As `bkg exe` says it (exe.rs): the lockfile is what `npm ci` installs.
    let package_lock = std::fs::read_to_string(&lockfile).map_err(|error| {
        CliError::usage(format!(
            "sandbox `{name}`: {} cannot be read ({error}): make it with `npm install --package-lock-only` in {}",
            lockfile.display(),
            lockfile.parent().unwrap_or(project).display()
        ))
    })?;
    Ok(Some(NodePackages { package_json, package_lock }))
}

/// The lines of the sandbox's `python.requirements` file, read as the user who runs bkg.
fn requirements(project: &Path, name: &str, spec: &SandboxSpec, allow_outside: bool) -> Result<Vec<String>, CliError> {
    let Some(file) = spec.python.as_ref().and_then(|python| python.requirements.as_deref()) else {
        return Ok(Vec::new());
    };
    let path: PathBuf = project.join(file).components().collect();
    inside_project(project, name, "python.requirements", &path, allow_outside)?;
    let text = std::fs::read_to_string(&path).map_err(|error| {
        CliError::usage(format!(
            "sandbox `{name}`: python.requirements {}: {error}: fix the path in cave.yaml, or create the file",
            path.display()
        ))
    })?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    crate::exe::check(&lines, |line| format!("sandbox `{name}`: python.requirements {} line {line}", path.display()))?;
    Ok(lines)
}

/// Gives the agent `definition`; one it has already is left as it is. A sandbox made now is
/// said to be new beside one of the same name the agent keeps for a project directory that is
/// gone, whose files the user may be looking for (`left_behind`).
pub async fn define(
    client: &AgentClient,
    definition: &SandboxDefinition,
    out: crate::out::Printer,
) -> Result<(), CliError> {
    let id = sandbox_id(&definition.project_dir, &definition.name);
    // A running sandbox keeps the definition it started with until it stops (the agent refuses
    // another, service/sandboxes.rs): not asking spares bkgr -d, bkg exec and cp that refusal.
    let known = client.get_found::<SandboxInfo>(&format!("/api/v1/sandboxes/{id}")).await?;
    if known.as_ref().is_some_and(|info| info.current_run.is_some()) {
        return Ok(());
    }
    if known.is_none() {
        let all: Vec<SandboxInfo> = client.get("/api/v1/sandboxes").await?;
        for info in left_behind(&all, &definition.name) {
            out.note(format_args!("sandbox `{}` is new here; {}", definition.name, left_behind_note(info)));
        }
    }
    // Said here with what makes it big: the agent can only say its body is.
    let size = serde_json::to_vec(definition).map_or(0, |body| body.len());
    if size > bkg_schema::MAX_DEFINITION_BODY_BYTES {
        return Err(CliError::usage(format!(
            "sandbox `{}`: its definition (cave.yaml's env, scripts and package lists) comes to {}, over the {} the \
             agent takes: keep large values in files of the project",
            definition.name,
            bkg_schema::units::format_size(size as u64),
            bkg_schema::units::format_size(bkg_schema::MAX_DEFINITION_BODY_BYTES as u64)
        )));
    }
    let defined: Result<SandboxInfo, CliError> = client.put_json(&format!("/api/v1/sandboxes/{id}"), definition).await;
    defined
        .map(drop)
        .map_err(|error| CliError::new(error.code, format!("sandbox `{}`: {}", definition.name, error.message)))
}

/// The sandboxes of `all` named `name` whose project directory is gone from this host (moved or
/// deleted): the agent keeps their files under that path, which a project run from its new place
/// does not find (found by a new-user trial: a renamed project got a fresh sandbox, and its files
/// looked lost, without a word).
pub fn left_behind<'a>(all: &'a [SandboxInfo], name: &str) -> impl Iterator<Item = &'a SandboxInfo> {
    let gone = |dir: &Path| dir.symlink_metadata().is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound);
    all.iter().filter(move |info| info.name == name && info.has_project && gone(Path::new(&info.project_dir)))
}

/// What bkg says of a sandbox `left_behind` finds.
pub fn left_behind_note(info: &SandboxInfo) -> String {
    format!(
        "the agent keeps a sandbox `{}` ({}) of {}, which is gone (moved or deleted): its files stay there until \
         `bkg rm {}`, and the project put back at {} finds them",
        info.name, info.id, info.project_dir, info.id, info.project_dir
    )
}

/// The first volume of `definition` that reaches outside `project`: only `bkgr --allow-outside`
/// gives the agent such a definition.
fn outside<'a>(definition: &'a SandboxDefinition, project: &Path) -> Option<&'a VolumeSpec> {
    definition.volumes.iter().find(|volume| !Path::new(&volume.host).starts_with(project))
}

/// Gives the agent the project's sandbox `name` as `cave`, the project's cave.yaml, has it now,
/// for the commands that work in a sandbox (`bkg exec`, `repl`, `shell`, `cp`); `known`: whether
/// the agent has it already. One it does not have yet is made here, as bkgr would make it, unless
/// a volume reaches outside the project (that takes `bkgr --allow-outside` once). For one it has,
/// a definition whose volumes reach outside the project is left as the agent has it, and one that
/// cannot be made (a package file gone, say) or that the agent refuses (a disk limit above its
/// maximum) is said, and the sandbox goes on as the agent has it: its files stay reachable.
pub async fn ensure(
    client: &AgentClient,
    project: &Path,
    cave: &CaveFile,
    name: &str,
    known: bool,
    out: crate::out::Printer,
) -> Result<(), CliError> {
    let Some(spec) = cave.sandboxes.get(name) else {
        return if known { Ok(()) } else { Err(crate::project::unknown_sandbox(cave, name)) };
    };
    // Volumes outside are looked at below, to keep what the agent has; files outside are refused.
    let made = definition(cave, project, name, spec, Outside { volumes: true, files: false });
    if !known {
        let definition = made?;
        if let Some(volume) = outside(&definition, project) {
            // bkgr runs a script: the hint names one the sandbox has (found by a new-user trial:
            // `bkgr --allow-outside NAME` refused a sandbox without `start`).
            let make = match (spec.scripts.contains_key("start"), spec.scripts.keys().next()) {
                (true, _) => format!("make it once with `bkgr --allow-outside {name}`"),
                (false, Some(script)) => format!("make it once with `bkgr --allow-outside {name} {script}`"),
                (false, None) => format!(
                    "give it a script in cave.yaml (`scripts:`) and make it once with `bkgr --allow-outside {name} SCRIPT`"
                ),
            };
            return Err(CliError::usage(format!(
                "sandbox `{name}` has a volume outside the project ({}): {make}",
                volume.host
            )));
        }
        return define(client, &definition, out).await;
    }
    let given = match made {
        Ok(definition) if outside(&definition, project).is_none() => define(client, &definition, out).await,
        Ok(_) => Ok(()),
        Err(error) => Err(error),
    };
    if let Err(error) = given {
        out.note(format_args!("{}; `{name}` goes on as bkgr last gave it", error.message));
    }
    Ok(())
}
