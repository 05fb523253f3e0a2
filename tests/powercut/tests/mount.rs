//! The file system mounted for real, with a shell as the program: what it
//! keeps at a cut, and that the cut stops the program inside the call.

use powercut::{mountable, Disk, Node, OpKind, Plan, Variant};
use std::process::Command;

/// Runs `script` in `sh` on a disk holding `image` under `plan`.
fn boot(image: &Node, plan: Plan, script: &str) -> (powercut::Boot, std::process::ExitStatus) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::mount(image, dir.path(), plan).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    disk.set_victim(child.id());
    let status = child.wait().unwrap();
    (disk.unmount(), status)
}

// `sync FILE` fsyncs that file (or directory).
const SCRIPT: &str =
    "mkdir d && printf hello > d/f && sync d/f d . && printf ', world' >> d/f && touch after";

#[test]
fn a_run_without_a_cut_keeps_what_was_synced_and_sees_everything() {
    if !mountable() {
        return;
    }
    let (boot, status) = boot(&Node::dir(0o755), Plan::run(), SCRIPT);
    assert!(status.success());
    assert_eq!(boot.end.file("d/f").unwrap(), b"hello, world");
    assert_eq!(boot.end_synced.file("d/f").unwrap(), b"hello");
    assert!(boot.end.get("after").is_some());
    assert!(boot.end_synced.get("after").is_none());
    let writes: Vec<(u64, &[u8])> = boot
        .ops
        .iter()
        .filter(|op| op.kind == OpKind::Write)
        .map(|op| (op.offset, &op.written[..]))
        .collect();
    assert_eq!(writes, [(0, &b"hello"[..]), (5, &b", world"[..])]);
    let kinds: Vec<OpKind> = boot.ops.iter().map(|op| op.kind).collect();
    assert!(kinds.contains(&OpKind::SyncDir), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == OpKind::Write).count(), 2);
}

#[test]
fn a_cut_stops_the_program_in_the_call_and_tears_the_write() {
    if !mountable() {
        return;
    }
    let (clean, _) = boot(&Node::dir(0o755), Plan::run(), SCRIPT);
    let append = clean
        .ops
        .iter()
        .rposition(|op| op.kind == OpKind::Write)
        .unwrap()
        + 1;
    let plan = Plan {
        cut_after: Some(append),
        tears: |of| vec![0, 1, of - 1],
        written: true,
    };
    let (boot, status) = boot(&Node::dir(0o755), plan, SCRIPT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed inside the write"
    );
    let cut = boot.cut.expect("cut");
    assert_eq!(cut.after, append);
    assert_eq!(cut.op.path, "d/f");
    assert!(boot.end.get("after").is_none(), "nothing ran after the cut");
    let images: Vec<(Variant, Vec<u8>)> = cut
        .images
        .iter()
        .map(|(v, image)| (v.clone(), image.file("d/f").unwrap().to_vec()))
        .collect();
    assert_eq!(
        images,
        [
            (Variant::Synced, b"hello".to_vec()),
            (Variant::Torn { kept: 1, of: 7 }, b"hello,".to_vec()),
            (Variant::Torn { kept: 6, of: 7 }, b"hello, worl".to_vec()),
            (Variant::Written, b"hello, world".to_vec()),
        ],
        "Torn at 0 is the synced state: left out as a duplicate"
    );
}

#[test]
fn modes_and_renames_reach_the_program_and_the_image() {
    if !mountable() {
        return;
    }
    let mut image = Node::dir(0o755);
    image.put(
        "keep",
        Node::File {
            mode: 0o600,
            data: b"old".to_vec(),
        },
    );
    let script = "umask 077 && printf new > tmp && chmod 644 tmp && sync tmp && mv tmp keep && \
                  test \"$(cat keep)\" = new && test \"$(stat -c %a keep)\" = 644 && sync .";
    let (boot, status) = boot(&image, Plan::run(), script);
    assert!(status.success(), "{:?}", boot.ops);
    assert_eq!(boot.end_synced.file("keep").unwrap(), b"new");
    assert_eq!(boot.end_synced.get("keep").unwrap().mode(), 0o644);
    assert_eq!(boot.end_synced.names(""), ["keep"]);

    // The same tree on the real file system and back.
    let copy = tempfile::tempdir().unwrap();
    boot.end.write_to(copy.path()).unwrap();
    let mut read = Node::read_dir(copy.path()).unwrap();
    if let (Node::Dir { mode, .. }, Node::Dir { mode: wanted, .. }) = (&mut read, &boot.end) {
        *mode = *wanted;
    }
    assert_eq!(read, boot.end);
}
