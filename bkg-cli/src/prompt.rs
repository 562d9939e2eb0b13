//! Questions asked on the terminal (dialoguer's prompts): Ctrl-C while one waits ends bkg with
//! 130 and leaves the terminal as it found it. A prompt turns echo off (a password) or hides the
//! cursor (a list), and the default SIGINT ends the process before the prompt can undo either
//! (found by a new-user trial: after Ctrl-C at `bkg secrets set`, the shell showed nothing typed;
//! after one at `bkg init`'s list, the cursor stayed hidden).

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use std::io::{IsTerminal, Read};

use crate::exit::{CANCELLED, CliError};

/// The terminal's settings before the first prompt, which the handler puts back.
static BEFORE_PROMPTS: OnceLock<libc::termios> = OnceLock::new();

/// What the handler writes to stderr: the cursor shown again, and the line the prompt was on
/// ended, as a shell's Ctrl-C does.
const SHOW_CURSOR: &[u8] = b"\x1b[?25h\n";

extern "C" fn restore_and_exit(_signal: libc::c_int) {
    if let Some(before) = BEFORE_PROMPTS.get() {
        // SAFETY: tcsetattr is async-signal-safe; `before` is a termios tcgetattr filled, never
        // changed after it was set.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, before) };
    }
    // SAFETY: write and _exit are async-signal-safe; the buffer is a static.
    unsafe {
        libc::write(libc::STDERR_FILENO, SHOW_CURSOR.as_ptr().cast(), SHOW_CURSOR.len());
        libc::_exit(CANCELLED);
    }
}

/// Held while a prompt waits: Ctrl-C ends bkg with the terminal restored. Dropped, SIGINT is
/// handled as before.
pub struct Asking {
    previous: libc::sigaction,
}

impl Asking {
    pub fn begin() -> Self {
        let mut settings = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the termios it is given when it returns 0.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, settings.as_mut_ptr()) } == 0 {
            // SAFETY: filled by the successful tcgetattr above.
            let _ = BEFORE_PROMPTS.set(unsafe { settings.assume_init() });
        }
        // SAFETY: a zeroed sigaction is a valid value to fill; sigemptyset initialises its mask.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = restore_and_exit as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: as above, for the previous action sigaction writes.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the calls; the handler only makes async-signal-safe
        // calls.
        unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGINT, &action, &mut previous);
        }
        Self { previous }
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        // SAFETY: `previous` is what sigaction returned for SIGINT when the prompt began.
        unsafe { libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut()) };
    }
}

/// Asks `question` on stderr and reads the answer as a line of the terminal in its own line
/// mode, so that Ctrl-D ends bkg as a shell's prompt ends (dialoguer's prompts read keys in raw
/// mode and ignored it: found by a new-user trial, `bkg init` waited on). An empty answer is
/// `default`; one that `check` refuses is asked again with its reason.
pub fn ask_line(
    question: &str,
    default: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<String, crate::exit::CliError> {
    use std::io::BufRead;
    loop {
        crate::out::stderr(format_args!("? {question} ({default}) › "));
        let mut line = String::new();
        if matches!(std::io::stdin().lock().read_line(&mut line), Ok(0) | Err(_)) {
            crate::out::stderr(format_args!("\n"));
            return Err(crate::exit::CliError::new(CANCELLED, "cancelled (end of input): nothing was written"));
        }
        // Ctrl-D after some text hands that text over without a newline; the next one is the end.
        let answer = line.trim();
        let answer = if answer.is_empty() { default } else { answer };
        match check(answer) {
            Ok(()) => return Ok(answer.to_owned()),
            Err(reason) => crate::out::stderr(format_args!("  ✘ {reason}\n")),
        }
    }
}

/// A value kept from `ps` and shell history (a secret's, a new user's password): from stdin,
/// never from an argument. Typed on a terminal it is not shown (nor left in its scrollback): one
/// line, asked with `prompt`; from a pipe or a file, its first `most` bytes, one trailing newline
/// dropped. `what` names it in the refusals; an empty one is refused. `twice`: typed, it is asked
/// again and must match (a new user's password: one mistyped unseen is one nobody knows; found
/// by a new-user trial).
pub fn hidden_value(prompt: &str, what: &str, most: u64, twice: bool) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let _asking = Asking::begin();
        let mut asked = dialoguer::Password::new().with_prompt(prompt).allow_empty_password(true);
        if twice {
            asked = asked.with_confirmation("again, to be sure", "the two differ: type it again");
        }
        let value = asked.interact().map_err(|error| CliError::usage(format!("cannot ask for {what}: {error}")))?;
        if value.is_empty() {
            return Err(CliError::usage(format!("{what} is empty")));
        }
        return Ok(value);
    }
    let mut value = String::new();
    stdin
        .lock()
        .take(most)
        .read_to_string(&mut value)
        .map_err(|error| CliError::usage(format!("cannot read {what} from stdin: {error}")))?;
    if let Some(stripped) = value.strip_suffix('\n') {
        value = stripped.strip_suffix('\r').unwrap_or(stripped).to_owned();
    }
    if value.is_empty() {
        return Err(CliError::usage(format!("{what} (read from stdin) is empty")));
    }
    Ok(value)
}
