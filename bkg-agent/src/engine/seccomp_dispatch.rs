//! A decision tree in front of the seccomp program the code installs (engine/seccomp_notify.rs).
//! When a filter is loaded the kernel runs it once for every system call number, to learn which
//! calls it may let through later without running it (seccomp's action cache). Through
//! seccompiler's chain of one comparison per named call that is over a million steps, most of a
//! millisecond of kernel time for every sandbox (docs/testing.md). The tree answers each number
//! whose answer does not depend on the call's arguments in about ten steps; every other number,
//! and every other architecture, goes on to the program unchanged. So each call gets exactly the
//! program's answer, which the tests below check number by number.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, sock_filter};

use super::seccomp_notify::{JA, JEQ_K, JGE_K, JGT_K, JSET_K, LD_W_ABS, MAX_INSTRUCTIONS, NATIVE_ARCH, RET_K};

/// The numbers the tree decides: every system call number of today's kernels, with room.
const DOMAIN: u32 = 512;
const WORDS: usize = (DOMAIN / 64) as usize;
/// Offsets in `seccomp_data` of the number and the architecture; everything after is the
/// instruction pointer and the arguments.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// `program` with the tree in front, or `None` when together they exceed the kernel's limit.
pub fn with_dispatch(program: &[sock_filter]) -> Option<BpfProgram> {
    let answers = constant_answers(program);
    let mut prefix = vec![
        insn(LD_W_ABS, 0, 0, ARCH_OFFSET),
        insn(JEQ_K, 1, 0, NATIVE_ARCH),
        jump_to_program(),
        insn(LD_W_ABS, 0, 0, NR_OFFSET),
    ];
    let mut to_program = vec![2];
    let ranges = ranges(&answers);
    emit_tree(&ranges, &mut prefix, &mut to_program)?;
    let start = prefix.len();
    for at in to_program {
        prefix[at].k = u32::try_from(start - at - 1).ok()?;
    }
    prefix.extend_from_slice(program);
    (prefix.len() <= MAX_INSTRUCTIONS).then_some(prefix)
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A jump to the program's first instruction, its distance filled in once the tree is complete.
fn jump_to_program() -> sock_filter {
    insn(JA, 0, 0, 0)
}

/// What the tree does with a range of numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// The program's answer, the same whatever the arguments.
    Answer(u32),
    /// The answer depends on more than the number: the program decides.
    Program,
}

/// `[start, end)` of numbers with one decision, covering all of `0..=u32::MAX` in order.
fn ranges(answers: &[Decision]) -> Vec<(u32, Decision)> {
    let mut ranges: Vec<(u32, Decision)> = Vec::new();
    for (nr, decision) in (0u32..).zip(answers.iter().copied()) {
        if ranges.last().is_none_or(|(_, last)| *last != decision) {
            ranges.push((nr, decision));
        }
    }
    if ranges.last().is_none_or(|(_, last)| *last != Decision::Program) {
        ranges.push((DOMAIN, Decision::Program));
    }
    ranges
}

/// A balanced tree of `JGE` over the ranges' starts (`ranges[0]` starts at 0, and the number is
/// in the accumulator). A node is `JGE start; JA right`, its left half following; leaves return
/// the answer or jump to the program.
fn emit_tree(ranges: &[(u32, Decision)], out: &mut Vec<sock_filter>, to_program: &mut Vec<usize>) -> Option<()> {
    match ranges {
        [] => None,
        [(_, Decision::Answer(answer))] => {
            out.push(insn(RET_K, 0, 0, *answer));
            Some(())
        }
        [(_, Decision::Program)] => {
            to_program.push(out.len());
            out.push(jump_to_program());
            Some(())
        }
        _ => {
            let (left, right) = ranges.split_at(ranges.len() / 2);
            out.push(insn(JGE_K, 0, 1, right[0].0));
            let jump = out.len();
            out.push(insn(JA, 0, 0, 0));
            emit_tree(left, out, to_program)?;
            out[jump].k = u32::try_from(out.len() - jump - 1).ok()?;
            emit_tree(right, out, to_program)
        }
    }
}

/// A set of numbers below `DOMAIN`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Numbers([u64; WORDS]);

impl Numbers {
    fn all() -> Self {
        Self([u64::MAX; WORDS])
    }

    fn none() -> Self {
        Self([0; WORDS])
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }

    /// The numbers at or above `bound`.
    fn at_least(bound: u32) -> Self {
        let mut set = Self::none();
        for nr in bound.min(DOMAIN)..DOMAIN {
            set.0[(nr / 64) as usize] |= 1 << (nr % 64);
        }
        set
    }

    fn only(nr: u32) -> Self {
        let mut set = Self::none();
        if nr < DOMAIN {
            set.0[(nr / 64) as usize] |= 1 << (nr % 64);
        }
        set
    }

    fn where_bits(bits: u32) -> Self {
        let mut set = Self::none();
        for nr in (0..DOMAIN).filter(|nr| nr & bits != 0) {
            set.0[(nr / 64) as usize] |= 1 << (nr % 64);
        }
        set
    }

    fn and(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] & other.0[i]))
    }

    fn without(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }

    fn or(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] | other.0[i]))
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..)
            .zip(self.0)
            .flat_map(|(word, bits)| (0..64).filter(move |bit| bits & (1 << bit) != 0).map(move |bit| word * 64 + bit))
    }
}

/// What the accumulator holds (its index in a state).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accumulator {
    Nothing = 0,
    Number = 1,
    Arch = 2,
}

const ACCUMULATORS: [Accumulator; 3] = [Accumulator::Nothing, Accumulator::Number, Accumulator::Arch];

/// The program's answer for each number below `DOMAIN` on the native architecture, where it
/// does not depend on the arguments: the program run on all numbers at once, the set split at
/// each comparison of the number. Jumps only go forward, so one pass over the instructions in
/// order does, with the numbers that reach each one by what their accumulator holds. Whatever
/// the pass cannot follow (an argument or the instruction pointer read, arithmetic) it leaves
/// to the program.
fn constant_answers(program: &[sock_filter]) -> Vec<Decision> {
    let mut answers = vec![Decision::Program; DOMAIN as usize];
    // The instructions some numbers reach and have not been passed yet, lowest first.
    let mut reaching: BTreeMap<usize, [Numbers; 3]> = BTreeMap::new();
    reaching.insert(0, [Numbers::all(), Numbers::none(), Numbers::none()]);
    while let Some((at, states)) = reaching.pop_first() {
        let Some(instruction) = program.get(at) else { continue };
        let next = at + 1;
        let k = instruction.k;
        let mut reach = |to: usize, numbers: Numbers, accumulator: Accumulator| {
            if !numbers.is_empty() {
                let states = reaching.entry(to).or_insert([Numbers::none(); 3]);
                states[accumulator as usize] = states[accumulator as usize].or(&numbers);
            }
        };
        let branch = |taken: bool| next + usize::from(if taken { instruction.jt } else { instruction.jf });
        for (accumulator, numbers) in ACCUMULATORS.into_iter().zip(states) {
            if numbers.is_empty() {
                continue;
            }
            match (instruction.code, accumulator) {
                (LD_W_ABS, _) if k == NR_OFFSET => reach(next, numbers, Accumulator::Number),
                (LD_W_ABS, _) if k == ARCH_OFFSET => reach(next, numbers, Accumulator::Arch),
                (JA, _) => reach(next.saturating_add(k as usize), numbers, accumulator),
                (RET_K, _) => {
                    for nr in numbers.iter() {
                        answers[nr as usize] = Decision::Answer(k);
                    }
                }
                (JEQ_K | JGT_K | JGE_K | JSET_K, Accumulator::Arch) => {
                    let taken = match instruction.code {
                        JEQ_K => NATIVE_ARCH == k,
                        JGT_K => NATIVE_ARCH > k,
                        JGE_K => NATIVE_ARCH >= k,
                        _ => NATIVE_ARCH & k != 0,
                    };
                    reach(branch(taken), numbers, accumulator);
                }
                (JEQ_K | JGT_K | JGE_K | JSET_K, Accumulator::Number) => {
                    let matching = match instruction.code {
                        JEQ_K => Numbers::only(k),
                        JGT_K => Numbers::at_least(k.saturating_add(1)),
                        JGE_K => Numbers::at_least(k),
                        _ => Numbers::where_bits(k),
                    };
                    let taken = numbers.and(&matching);
                    reach(branch(true), taken, accumulator);
                    reach(branch(false), numbers.without(&taken), accumulator);
                }
                // An argument or the instruction pointer is read, or something this pass does
                // not follow: the program decides these numbers.
                _ => {}
            }
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::seccomp;
    use crate::engine::seccomp_notify::{counted, evaluate};

    fn installed() -> BpfProgram {
        let programs = seccomp::compile(&seccomp::sandbox_policy()).unwrap_or_default();
        counted(&programs).map(|policy| policy.installed).unwrap_or_default()
    }

    #[test]
    fn the_tree_changes_no_answer() {
        let program = installed();
        let Some(dispatched) = with_dispatch(&program) else { panic!("the tree does not fit") };
        // Every constant the program compares with, as an argument, and some bit patterns.
        let mut values: Vec<u64> = program.iter().map(|instruction| u64::from(instruction.k)).collect();
        values.extend([0, 1, u64::MAX, u64::from(u32::MAX), 1 << 32, 0x8000_0000_0000_0000]);
        values.sort_unstable();
        values.dedup();
        let x32_bit = 0x4000_0000;
        let i386 = 3 | 0x4000_0000;
        for arch in [NATIVE_ARCH, i386] {
            for nr in (0..DOMAIN + 64).chain([x32_bit, x32_bit + 1, u32::MAX]) {
                for (index, value) in values.iter().enumerate() {
                    let mut args = [0u64; 6];
                    args[index % 6] = *value;
                    args[(index + 1) % 6] = values[(index * 7) % values.len()];
                    let call = libc::seccomp_data { nr: nr as i32, arch, instruction_pointer: 0, args };
                    assert_eq!(
                        evaluate(&dispatched, &call),
                        evaluate(&program, &call),
                        "arch {arch:#x}, number {nr}, arguments {args:?}"
                    );
                }
            }
        }
    }

    /// The tree alone, with the program replaced by one that answers `MARKER`.
    fn tree_alone(program: &[sock_filter]) -> BpfProgram {
        const MARKER: u32 = 0x7fff_1234;
        let Some(dispatched) = with_dispatch(program) else { panic!("the tree does not fit") };
        let mut tree = dispatched[..dispatched.len() - program.len()].to_vec();
        tree.push(insn(RET_K, 0, 0, MARKER));
        tree
    }

    #[test]
    fn the_tree_answers_plain_calls_itself_and_leaves_argument_checks_to_the_program() {
        let program = installed();
        let tree = tree_alone(&program);
        let answer = |nr: i64, args: [u64; 6]| {
            let call = libc::seccomp_data { nr: nr as i32, arch: NATIVE_ARCH, instruction_pointer: 0, args };
            evaluate(&tree, &call)
        };
        assert_eq!(answer(libc::SYS_read, [0; 6]), Some(0x7fff_0000), "read is allowed by the tree");
        assert_eq!(answer(libc::SYS_ptrace, [0; 6]), Some(libc::SECCOMP_RET_USER_NOTIF), "ptrace is refused by it");
        assert_eq!(answer(500, [0; 6]), Some(libc::SECCOMP_RET_USER_NOTIF), "an unknown number gets the default");
        assert_eq!(answer(libc::SYS_clone, [0; 6]), Some(0x7fff_1234), "clone's flags are the program's to judge");
        let decided = (0..DOMAIN).filter(|nr| answer(i64::from(*nr), [0; 6]) != Some(0x7fff_1234)).count();
        assert!(decided > 450, "only {decided} numbers decided by the tree");
    }
}
