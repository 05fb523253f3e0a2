//! Power loss during first boots, for every profile. The agent's /var is a
//! FUSE file system that keeps only what was fsynced (tests/powercut), and
//! the power is cut right after each change the agent makes to it in turn:
//! the agent is killed inside that system call, and the next boot finds
//! what the cut left, by the strict POSIX rules: only what was synced, or
//! that with the write in progress torn (its unsynced bytes kept up to a
//! chosen offset). Each such state is booted to the end, and from the
//! states of each kind after the service answered the recovery boot is cut
//! again at each of its changes, then booted to the end.
//!
//! After every sequence:
//! * no boot crashed (a signal other than the cut's, a panic) or hung;
//! * the last boot registered the device, and the fleet holds no identity
//!   but the one the device ends with (no orphan); or, for a service that
//!   answers an identity once (Losant, TII's fleet manager, an LmP server
//!   that answers 409), the cut fell between the answer and its durable
//!   record and the agent says which device was lost and that the service
//!   must delete it; any other failure strands the device;
//! * once a whole answer record was on disk, no later boot sent a request.
//!
//! `cargo test --test powerloss` runs the sweep CI runs;
//! `POWER_LOSS=full` (scripts/fault-sweep) also tears every write at eight
//! offsets, adds the cut after which everything written reached the disk,
//! and cuts the recovery boot from every state, not one of each kind, also
//! before the service answered. `POWER_LOSS_OPS=1` prints the changes of a
//! boot without a cut, `POWER_LOSS_TRACE=1` every sequence and its outcome.

mod common;
mod fleet_support;
mod losant_support;

use fleet_support::{Lmp, Mark, Rig, JOURNAL};
use powercut::{mountable, Boot, Disk, Node, OpKind, Plan, Variant};
use std::collections::{BTreeSet, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How far a sweep goes.
#[derive(Clone, Copy)]
struct Depth {
    tears: fn(usize) -> Vec<usize>,
    written: bool,
    /// Cut the recovery boot from every state a first cut leaves, not only
    /// from one state of each kind.
    second_from_every_state: bool,
    /// Also from states where the service does not hold the device yet
    /// (whose recovery boot is a first boot again).
    second_before_the_answer: bool,
}

const CI: Depth = Depth {
    tears: |of| vec![1, of / 2, of.saturating_sub(1)],
    written: false,
    second_from_every_state: false,
    second_before_the_answer: false,
};

const FULL: Depth = Depth {
    // Past the record's checksum and its separator too.
    tears: |of| {
        let mut at: Vec<usize> = (1..8).map(|i| of * i / 8).collect();
        at.extend([1, 64, 65, of.saturating_sub(1)]);
        at.retain(|k| *k < of);
        at.sort_unstable();
        at.dedup();
        at
    },
    written: true,
    second_from_every_state: true,
    second_before_the_answer: true,
};

fn depth() -> Depth {
    match std::env::var("POWER_LOSS").as_deref() {
        Ok("full") => FULL,
        _ => CI,
    }
}

/// Where a device stands after some boots: what /var holds, what the
/// boots did, and what the services came to hold because of them.
#[derive(Clone)]
struct Path {
    root: Rc<tempfile::TempDir>,
    var: Node,
    /// The cut that ended each boot, to replay the path.
    cuts: Vec<(usize, Variant)>,
    story: Vec<String>,
    held: BTreeSet<String>,
    /// The service gave its answer during this path's boots.
    answered: bool,
    /// The journal writes that carried an answer.
    records: Vec<Vec<u8>>,
    /// A whole answer record has been on disk.
    record_on_disk: bool,
    /// The services' counters after the last boot.
    end: Mark,
}

#[derive(Default)]
struct Tally {
    boots: usize,
    first_boot_changes: usize,
    first_cuts: usize,
    second_cuts: usize,
    states: HashSet<Node>,
    sequences: usize,
    registered: usize,
    lost_reported: usize,
    replays: usize,
    unreproducible: usize,
    failures: Vec<String>,
}

/// One boot of the device.
struct Run {
    boot: Boot,
    status: ExitStatus,
    log: String,
    requests: usize,
    held: BTreeSet<String>,
    answered: bool,
    to: Mark,
}

impl Run {
    fn last_line(&self) -> &str {
        self.log.lines().last().unwrap_or("(nothing)")
    }
}

fn fresh(rig: &dyn Rig) -> Path {
    let (root, var) = rig.new_device();
    std::fs::create_dir(root.path().join("var")).unwrap();
    Path {
        root: Rc::new(root),
        var,
        cuts: Vec::new(),
        story: Vec::new(),
        held: rig.held_before(),
        answered: false,
        records: Vec::new(),
        record_on_disk: false,
        end: rig.mark(),
    }
}

/// Boots `path`'s device under `plan` and checks that the agent neither
/// crashed nor hung.
fn boot(rig: &dyn Rig, path: &Path, plan: Plan, tally: &mut Tally) -> Run {
    tally.boots += 1;
    let mount = path.root.path().join("var");
    let disk = Disk::mount(&path.var, &mount, plan).expect("mount the power-cut disk");
    let from = rig.mark();
    let log = path.root.path().join("boot.log");
    let mut child = rig
        .command(path.root.path())
        .args(["--retry-deadline", "8"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    disk.set_victim(child.id());
    let started = Instant::now();
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            hung = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let boot = disk.unmount();
    let to = rig.mark();
    let activity = rig.activity(&from, &to);
    let run = Run {
        boot,
        status,
        log: std::fs::read_to_string(&log).unwrap_or_default(),
        requests: activity.requests,
        held: activity.held,
        answered: activity.answered,
        to,
    };
    let crash = match (hung, run.status.signal(), run.status.code()) {
        (true, _, _) => Some("hung".to_string()),
        (_, Some(9), _) if run.boot.cut.is_some() => None,
        (_, Some(signal), _) => Some(format!("died of signal {signal}")),
        (_, _, Some(101)) => Some("panicked".to_string()),
        _ => None,
    };
    if let Some(crash) = crash {
        tally.failures.push(format!(
            "{}: {} boot {}: {crash}: {}",
            rig.name(),
            path.story.join("; "),
            path.cuts.len() + 1,
            run.last_line()
        ));
    }
    run
}

/// The trees a boot's cut left.
fn images_of(run: &Run) -> Vec<(Variant, Node)> {
    run.boot
        .cut
        .as_ref()
        .map(|cut| cut.images.clone())
        .unwrap_or_default()
}

fn plan(cut_after: usize, depth: Depth) -> Plan {
    Plan {
        cut_after: Some(cut_after),
        tears: depth.tears,
        written: depth.written,
    }
}

fn describe(run: &Run, variant: &Variant) -> String {
    let Some(cut) = &run.boot.cut else {
        return "ran to the end".into();
    };
    let left = match variant {
        Variant::Synced => "only what was synced kept".to_string(),
        Variant::Torn { kept, of } => format!("torn after {kept} of {of} bytes"),
        Variant::Written => "everything written kept".to_string(),
    };
    format!(
        "cut after change {}/{} ({}), {left}, exit {:?}: {}",
        cut.after,
        run.boot.ops.len(),
        cut.op,
        run.status.code(),
        run.last_line()
    )
}

/// `path` after one more boot that left `var`.
fn extend(rig: &dyn Rig, path: &Path, run: &Run, var: Node, variant: Variant) -> Path {
    let marker = rig.answer_marker();
    let mut records = path.records.clone();
    records.extend(
        journal_writes(&run.boot)
            .into_iter()
            .filter(|bytes| contains(bytes, marker.as_bytes())),
    );
    let journal = format!("{}/{JOURNAL}", rig.state_dir());
    let record_now = var
        .file(&journal)
        .is_some_and(|text| records.iter().any(|r| contains(text, r)));
    let mut story = path.story.clone();
    story.push(format!(
        "boot {}: {}",
        path.cuts.len() + 1,
        describe(run, &variant)
    ));
    let mut cuts = path.cuts.clone();
    cuts.push((run.boot.cut.as_ref().map_or(0, |c| c.after), variant));
    Path {
        root: path.root.clone(),
        var,
        cuts,
        story,
        held: path.held.union(&run.held).cloned().collect(),
        answered: path.answered || run.answered,
        records,
        record_on_disk: path.record_on_disk || record_now,
        end: run.to.clone(),
    }
}

/// The bytes of each write(2) to the journal (or its temporary file) that
/// the boot completed: the kernel hands a write that crosses a page
/// boundary to the file system in parts, one after the other, and a cut
/// right after a part may have stopped the write before its next one.
fn journal_writes(boot: &Boot) -> Vec<Vec<u8>> {
    let mut writes: Vec<(String, u64, Vec<u8>)> = Vec::new();
    for op in &boot.ops {
        if op.kind != OpKind::Write || !op.path.contains(JOURNAL) {
            continue;
        }
        match writes.last_mut() {
            Some((path, offset, bytes))
                if *path == op.path && *offset + bytes.len() as u64 == op.offset =>
            {
                bytes.extend_from_slice(&op.written)
            }
            _ => writes.push((op.path.clone(), op.offset, op.written.clone())),
        }
    }
    let cut_in_a_journal_write = boot
        .cut
        .as_ref()
        .is_some_and(|cut| cut.op.kind == OpKind::Write && cut.op.path.contains(JOURNAL));
    if cut_in_a_journal_write {
        writes.pop();
    }
    writes.into_iter().map(|(_, _, bytes)| bytes).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether the services came to hold an identity since `path` ended that
/// they did not hold then: a boot of another branch from the same state
/// registered it, and this branch would meet a service that knows more
/// than it did at the cut.
fn dirty(rig: &dyn Rig, path: &Path) -> bool {
    let now = rig.mark();
    !rig.activity(&path.end, &now).held.is_subset(&path.held)
}

/// The same kind of cut (the same tear point of a write of about the
/// same length).
fn same_kind(a: &Variant, b: &Variant, depth: Depth) -> bool {
    let tear = |v: &Variant| match v {
        Variant::Torn { kept, of } => (depth.tears)(*of).iter().position(|k| k == kept),
        _ => None,
    };
    std::mem::discriminant(a) == std::mem::discriminant(b) && tear(a) == tear(b)
}

/// `cuts` again, from a new device, against the services as they are.
fn replay(
    rig: &dyn Rig,
    cuts: &[(usize, Variant)],
    depth: Depth,
    tally: &mut Tally,
) -> Option<Path> {
    tally.replays += 1;
    let mut path = fresh(rig);
    for (after, variant) in cuts {
        let run = boot(rig, &path, plan(*after, depth), tally);
        let Some((found, var)) = images_of(&run)
            .into_iter()
            .find(|(v, _)| same_kind(v, variant, depth))
        else {
            tally.unreproducible += 1;
            return None;
        };
        path = extend(rig, &path, &run, var, found);
    }
    Some(path)
}

/// Boots `path` to the end and checks where the device stands; the number
/// of changes that boot made.
fn finish(rig: &dyn Rig, path: &Path, tally: &mut Tally) -> usize {
    tally.sequences += 1;
    tally.states.insert(path.var.clone());
    let run = boot(rig, path, Plan::run(), tally);
    let held: BTreeSet<String> = path.held.union(&run.held).cloned().collect();
    if std::env::var_os("POWER_LOSS_TRACE").is_some() {
        println!(
            "TRACE {} | record on disk {} | requests {} | exit {:?}: {}",
            path.story.join(" | "),
            path.record_on_disk,
            run.requests,
            run.status.code(),
            run.last_line()
        );
    }
    let what = |why: String| {
        format!(
            "{}: {}; boot {}: exit {:?}: {why}",
            rig.name(),
            path.story.join("; "),
            path.cuts.len() + 1,
            run.status.code(),
        )
    };
    if path.record_on_disk && run.requests > 0 {
        let journal = format!("{}/{JOURNAL}", rig.state_dir());
        tally.failures.push(what(format!(
            "{} request(s) although a whole answer record was on disk (journal of {:?} bytes, records of {:?})",
            run.requests,
            path.var.file(&journal).map(|j| j.len()),
            path.records.iter().map(|r| r.len()).collect::<Vec<_>>()
        )));
    }
    match run.status.code() {
        Some(0) => match rig.registered(&run.boot.end_synced) {
            Ok(id) if held.iter().all(|h| *h == id) => tally.registered += 1,
            Ok(id) => tally.failures.push(what(format!(
                "registered as {id}, but the fleet holds {held:?}: orphaned"
            ))),
            Err(why) => tally.failures.push(what(format!(
                "exit 0, but what is durable is not a registration: {why} ({:?})",
                run.boot.end_synced.listing()
            ))),
        },
        Some(_) => {
            let lost_in_the_window = rig.answers_once() && !path.record_on_disk && path.answered;
            let named = held.iter().any(|id| run.log.contains(id.as_str()));
            if lost_in_the_window && named && run.log.contains("delete") {
                tally.lost_reported += 1;
            } else {
                tally
                    .failures
                    .push(what(format!("stranded: {}", run.last_line())));
            }
        }
        None => {} // a crash, reported by boot()
    }
    run.boot.ops.len()
}

/// The kind of state a path is in, for choosing one state of each kind to
/// cut again: each file of /var by what the cut left of it (what was
/// synced, what had been written, nothing, a torn write between the two,
/// something else), and whether the service answered and a whole answer
/// is on disk.
fn kind_of(path: &Path, synced: &Node, written: &Node) -> String {
    let mut kind: Vec<String> = path
        .var
        .listing()
        .into_iter()
        .map(|line| {
            let name = line.split(' ').next().unwrap_or_default();
            let left = path.var.file(name);
            let relation = match (left, synced.file(name), written.file(name)) {
                (None, _, _) => "dir",
                (Some(a), Some(b), _) if a == b => "synced",
                (Some(a), _, Some(b)) if a == b => "written",
                (Some([]), _, _) => "empty",
                (Some(a), _, Some(b)) if b.starts_with(a) => "torn",
                _ => "other",
            };
            format!("{name}:{relation}")
        })
        .collect();
    kind.push(format!("answered:{}", path.answered));
    kind.push(format!("record:{}", path.record_on_disk));
    kind.join(" ")
}

/// Every first cut, each state it leaves booted to the end; from the
/// states of each new kind (or all, per `depth`), every second cut.
fn sweep(rig: &dyn Rig, depth: Depth) -> Tally {
    let mut tally = Tally::default();
    let base = fresh(rig);
    let clean = boot(rig, &base, Plan::run(), &mut tally);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "a boot without a cut: {}",
        clean.log
    );
    rig.registered(&clean.boot.end_synced)
        .unwrap_or_else(|why| panic!("a boot without a cut: {why}"));
    let changes = clean.boot.ops.len();
    if std::env::var_os("POWER_LOSS_OPS").is_some() {
        for (i, op) in clean.boot.ops.iter().enumerate() {
            println!("{:3} {op}", i + 1);
        }
    }
    tally.first_boot_changes = changes;
    let mut kinds = HashSet::new();
    for after in 1..=changes {
        let first = fresh(rig);
        let run = boot(rig, &first, plan(after, depth), &mut tally);
        let written = run.boot.end.clone();
        let images = images_of(&run);
        let synced = images.first().map(|(_, var)| var.clone());
        for (i, (variant, var)) in images.into_iter().enumerate() {
            tally.first_cuts += 1;
            let mut path = extend(rig, &first, &run, var, variant);
            if i > 0 && dirty(rig, &path) {
                match replay(rig, &path.cuts, depth, &mut tally) {
                    Some(again) => path = again,
                    None => continue,
                }
            }
            let second_changes = finish(rig, &path, &mut tally);
            let kind = kind_of(&path, synced.as_ref().unwrap_or(&written), &written);
            if (path.answered || depth.second_before_the_answer)
                && (depth.second_from_every_state || kinds.insert(kind))
            {
                second_cuts(rig, &path, second_changes, depth, &mut tally);
            }
        }
    }
    tally
}

/// Cuts the recovery boot from `state` after each of its changes.
fn second_cuts(rig: &dyn Rig, state: &Path, changes: usize, depth: Depth, tally: &mut Tally) {
    let mut state = state.clone();
    for after in 1..=changes {
        if dirty(rig, &state) {
            match replay(rig, &state.cuts, depth, tally) {
                Some(again) => state = again,
                None => return,
            }
        }
        let run = boot(rig, &state, plan(after, depth), tally);
        for (i, (variant, var)) in images_of(&run).into_iter().enumerate() {
            tally.second_cuts += 1;
            let mut path = extend(rig, &state, &run, var, variant);
            if i > 0 && dirty(rig, &path) {
                match replay(rig, &path.cuts, depth, tally) {
                    Some(again) => path = again,
                    None => continue,
                }
            }
            finish(rig, &path, tally);
        }
    }
}

fn report(rig: &dyn Rig, tally: &Tally, started: Instant) {
    println!(
        "\n| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
        rig.name(),
        tally.first_boot_changes,
        tally.first_cuts,
        tally.second_cuts,
        tally.states.len(),
        tally.sequences,
        tally.registered,
        tally.lost_reported,
        tally.failures.len(),
        tally.boots,
        started.elapsed().as_secs_f64()
    );
    println!(
        "(replays of a path whose services another branch had changed: {}, of which not reproducible: {})",
        tally.replays, tally.unreproducible
    );
    for failure in &tally.failures {
        println!("FAILED: {failure}");
    }
}

fn check(rig: &dyn Rig) {
    let started = Instant::now();
    let tally = sweep(rig, depth());
    println!("\n| profile | changes in a first boot | first cuts | second cuts | distinct states | sequences | registered | lost, reported | failed | boots | time |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    report(rig, &tally, started);
    assert!(
        tally.failures.is_empty(),
        "{}: {} of {} sequences went wrong:\n{}",
        rig.name(),
        tally.failures.len(),
        tally.sequences,
        tally.failures.join("\n")
    );
    assert!(tally.first_cuts >= tally.first_boot_changes && tally.second_cuts > 0);
}

#[test]
fn power_cuts_in_lmp_first_boots_against_a_409_server() {
    if mountable() {
        check(&Lmp::new(true));
    }
}

#[test]
fn power_cuts_in_lmp_first_boots_against_an_idempotent_server() {
    if mountable() {
        check(&Lmp::new(false));
    }
}

#[test]
#[cfg(feature = "losant")]
fn power_cuts_in_losant_first_boots() {
    if mountable() {
        check(&fleet_support::LosantRig::new());
    }
}

#[test]
#[cfg(feature = "tii")]
fn power_cuts_in_tii_first_boots() {
    if mountable() && device_api::tii::nats_server_available() {
        check(&fleet_support::Tii::new());
    }
}

#[test]
#[cfg(feature = "azure-dps")]
fn power_cuts_in_azure_dps_boots_with_both_stages() {
    if mountable() {
        check(&fleet_support::Azure::new(false));
    }
}

#[test]
#[cfg(feature = "azure-dps")]
fn power_cuts_in_azure_dps_first_boots_after_the_factory_stage() {
    if mountable() {
        check(&fleet_support::Azure::new(true));
    }
}
