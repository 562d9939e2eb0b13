//! Secrets: set, listed by name, removed, and opened into a run's environment. A value goes
//! from the caller to the sealed store (`crate::secrets`) and from there into a run's
//! environment only: no record, log or audit line carries it.

use bkg_schema::audit::ConfigChanged;
use bkg_schema::envs::{SecretInfo, SecretValue};

use super::access::{namespace_for, require_code_runner};
use super::{OpError, OpResult, Service};
use crate::auth::Principal;
use crate::engine::run::ValidatedRun;
use crate::ids::now_ms;
use crate::secrets::SecretError;

impl From<SecretError> for OpError {
    fn from(error: SecretError) -> Self {
        Self::Internal(error.to_string())
    }
}

pub(super) fn check_secret_names(names: &[String]) -> OpResult<()> {
    names.iter().try_for_each(|name| check_name(name))
}

fn check_name(name: &str) -> OpResult<()> {
    bkg_schema::envs::secret_name_error(name).map_or(Ok(()), |error| Err(OpError::Invalid(error)))
}

impl Service {
    pub async fn set_secret(&self, principal: &Principal, name: &str, secret: SecretValue) -> OpResult<SecretInfo> {
        require_code_runner(principal)?;
        let namespace = namespace_for(principal, secret.namespace.as_deref())?;
        check_name(name)?;
        if let Some(error) = bkg_schema::envs::secret_value_error(&secret.value) {
            return Err(OpError::Invalid(error));
        }
        let now = now_ms();
        let (_one, before) = self.secrets.changing().await?;
        if let Err(error) = self.secrets.set(&namespace, name, secret.value.as_bytes(), now) {
            before.forget();
            return Err(error.into());
        }
        let set = ConfigChanged::SecretSet { secret_set: name.to_owned() };
        recorded_or_undone(before, self.note_config(principal.actor(), Some(&namespace), set).await)?;
        Ok(SecretInfo { name: name.to_owned(), namespace, created_at_ms: now })
    }

    pub fn list_secrets(&self, principal: &Principal, namespace: Option<&str>) -> OpResult<Vec<SecretInfo>> {
        require_code_runner(principal)?;
        let namespace = namespace_for(principal, namespace)?;
        Ok(self
            .secrets
            .list(&namespace)?
            .into_iter()
            .map(|entry| SecretInfo {
                name: entry.name,
                namespace: namespace.clone(),
                created_at_ms: entry.created_at_ms,
            })
            .collect())
    }

    pub async fn remove_secret(&self, principal: &Principal, name: &str, namespace: Option<&str>) -> OpResult<()> {
        require_code_runner(principal)?;
        let namespace = namespace_for(principal, namespace)?;
        let (_one, before) = self.secrets.changing().await?;
        match self.secrets.remove(&namespace, name) {
            Ok(true) => {
                let removed = ConfigChanged::SecretRemoved { secret_removed: name.to_owned() };
                recorded_or_undone(before, self.note_config(principal.actor(), Some(&namespace), removed).await)
            }
            Ok(false) => {
                before.forget();
                Err(OpError::NotFound(format!("no secret `{name}` in namespace `{namespace}`")))
            }
            Err(error) => {
                before.forget();
                Err(error.into())
            }
        }
    }

    /// Refuses a variable given both as one of the secrets `names` and with a plain value
    /// (`plain`): the secret's value would win without a word.
    pub(super) fn refuse_secret_clash<'a>(
        names: &[String],
        plain: impl IntoIterator<Item = &'a String>,
    ) -> OpResult<()> {
        match plain.into_iter().find(|key| names.contains(key)) {
            Some(name) => Err(OpError::Invalid(format!(
                "`{name}` is given both as a secret and as a plain variable (--env, env: in cave.yaml): give it one way"
            ))),
            None => Ok(()),
        }
    }

    /// Puts the named secrets of the run's namespace into its environment.
    pub(super) fn give_secrets(&self, run: &mut ValidatedRun, names: &[String]) -> OpResult<()> {
        check_secret_names(names)?;
        match self.secrets.open(&run.namespace, names)? {
            Ok(values) => Ok(run.add_env(values)?),
            Err(missing) => Err(no_secret(&missing, &run.namespace)),
        }
    }

    /// Refuses names of which `namespace` has no secret (without opening any).
    pub(super) fn refuse_missing_secrets(&self, namespace: &str, names: &[String]) -> OpResult<()> {
        let set = self.secrets.list(namespace)?;
        match names.iter().find(|name| !set.iter().any(|entry| entry.name == **name)) {
            Some(missing) => Err(no_secret(missing, namespace)),
            None => Ok(()),
        }
    }
}

fn no_secret(missing: &str, namespace: &str) -> OpError {
    // In the namespace it is missing from (found by a new-user trial: a project of namespace
    // `research` was told the command that sets it in `default`).
    let flag = match namespace {
        "default" => String::new(),
        other => format!(" --namespace {other}"),
    };
    OpError::Invalid(format!(
        "no secret `{missing}` in namespace `{namespace}`: set it with `bkg secrets set{flag} {missing}`"
    ))
}

/// A secrets change stands with its audit record, or is undone without one.
fn recorded_or_undone(before: crate::secrets::SecretsBefore, recorded: OpResult<()>) -> OpResult<()> {
    match recorded {
        Ok(()) => before.forget(),
        Err(_) => before.put_back(),
    }
    recorded
}
