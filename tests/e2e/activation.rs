//! The agent started as systemd starts it from packaging/deb/bkg-agent.socket: the socket is made
//! and held by systemd (here `systemd-socket-activate`, systemd's own tool for this), and the
//! agent serves the descriptor it is handed.

use bkg_tests::{Agent, code, examples_dir, stdout};

#[test]
fn a_socket_activated_agent_runs_code_on_the_socket_it_was_handed() {
    let mut agent = Agent::start_socket_activated();
    let hello = examples_dir().join("hello.py");
    let output = agent.exe(&[hello.to_str().unwrap_or_default()]);
    assert_eq!(code(&output), 0, "{}\n{}", bkg_tests::stderr(&output), agent.log());
    assert!(stdout(&output).starts_with("hello from python"), "{}", stdout(&output));
    assert!(agent.log().contains(&format!("socket={}", agent.socket.display())), "{}", agent.log());

    // The socket is systemd's: the agent leaves it in place when it stops, for the next start.
    agent.stop();
    assert!(agent.socket.exists(), "the agent removed the socket systemd made");
}
