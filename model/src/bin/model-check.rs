//! Runs the model checker on the issue #14 world with the budgets given on the command line
//! and prints, per property set, the states explored, the depth and the time
//! (`scripts/model-check.sh` runs it with deeper bounds, in release mode).
//!
//! model-check [crashes rebalances conflicts redeliveries max_clock] [--small | --contended] [--properties safety|liveness] [--mutation NAME]

use orderflow_model::{check_set, Budget, Mutation, PropertySet, World};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mutation = args.iter().position(|a| a == "--mutation").map(|at| {
        let name = args.get(at + 1).expect("--mutation NAME");
        *Mutation::ALL.iter().find(|m| format!("{m:?}").eq_ignore_ascii_case(name)).unwrap_or_else(|| panic!("unknown mutation {name}"))
    });
    let numbers: Vec<u8> = args.iter().take_while(|a| !a.starts_with("--")).map(|a| a.parse().expect("a number")).collect();
    let set = match args.iter().position(|a| a == "--properties").map(|at| args[at + 1].as_str()) {
        Some("safety") => PropertySet::Safety,
        Some("liveness") => PropertySet::Liveness,
        _ => PropertySet::All,
    };
    let get = |i: usize, default: u8| numbers.get(i).copied().unwrap_or(default);
    let budget = Budget { crashes: get(0, 1), rebalances: get(1, 2), conflicts: get(2, 1), redeliveries: get(3, 0) };
    let mut world = if args.iter().any(|a| a == "--small") {
        World::small(budget)
    } else if args.iter().any(|a| a == "--contended") {
        World::contended(budget)
    } else {
        World::issue_14(budget)
    };
    world.max_clock = get(4, world.max_clock);
    println!("budget {budget:?}, max_clock {}, properties {set:?}, mutation {mutation:?}", world.max_clock);
    let report = check_set(world, mutation, set);
    print!("{report}");
    if mutation.is_none() && !report.counterexamples.is_empty() {
        std::process::exit(1);
    }
}
