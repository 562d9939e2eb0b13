//! A sandbox's init (bkg-agent/src/engine/init.rs) as a binary of its own, which the agent
//! starts for every sandbox it prepares: it holds the init's code alone, so its start (exec,
//! relocation, exit) costs a sandbox less than the agent's whole binary started again as
//! `bkg-agent __sandbox-init`, which remains for an agent installed without it.

fn main() {
    bkg_agent::engine::init::main();
}
