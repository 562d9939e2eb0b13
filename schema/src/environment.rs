//! The one rule for bkg's own environment variables (`BKG_*`): one set to an empty value counts
//! as unset, so `BKG_REMOTE= bkg ls` talks to the local agent and `export BKG_TLS_CERT=` turns
//! the certificate off rather than failing as a missing value. Every binary applies it first.

/// The prefix of every variable bkg reads for itself (docs/env.md lists them).
const PREFIX: &str = "BKG_";

/// Removes each `BKG_*` variable whose value is empty from this process's environment. Call it
/// first thing in `main`, before any thread is started.
pub fn forget_empty_variables() {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(name, value)| value.is_empty() && name.to_str().is_some_and(|name| name.starts_with(PREFIX)))
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        // SAFETY: the environment is changed only at the start of `main`, as this function's
        // contract says, while the process has one thread: nothing reads it concurrently.
        unsafe { std::env::remove_var(name) };
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// The rule is seen in a child process, whose environment is its own: this test binary
    /// runs again with the variable set and calls the function there.
    #[test]
    fn an_empty_bkg_variable_is_forgotten_and_a_set_one_kept() {
        // Looked up by name in the whole environment: xtask's env-doc counts `var` calls as reads.
        let value = |name: &str| std::env::vars().find(|(each, _)| each == name).map(|(_, value)| value);
        if value("BKG_ENV_RULE_CHILD").is_some() {
            super::forget_empty_variables();
            assert_eq!(value("BKG_EMPTY_ONE"), None);
            assert_eq!(value("BKG_SET_ONE").as_deref(), Some("x"));
            assert_eq!(value("OTHER_EMPTY").as_deref(), Some(""));
            return;
        }
        let Ok(exe) = std::env::current_exe() else { panic!("no test binary") };
        let status = Command::new(exe)
            .args([
                "--exact",
                "environment::tests::an_empty_bkg_variable_is_forgotten_and_a_set_one_kept",
                "--nocapture",
            ])
            .env("BKG_ENV_RULE_CHILD", "1")
            .env("BKG_EMPTY_ONE", "")
            .env("BKG_SET_ONE", "x")
            .env("OTHER_EMPTY", "")
            .status();
        assert!(status.is_ok_and(|status| status.success()), "the child's checks failed");
    }
}
