//! A FUSE file system for power-loss tests, in the spirit of Jepsen's
//! LazyFS: it serves a directory tree from memory and keeps, beside what the
//! running system sees, what would be on the disk after a power cut, by the
//! strict POSIX rules (see `model`): only what was fsynced.
//!
//! A test mounts a [`Disk`] holding an [`Node`] image, runs a program on
//! it, and either lets it finish or cuts the power right after the program's
//! k-th change to the file system ([`Plan::cut_after`]; creations, writes,
//! mode changes, truncations, renames, removals and fsyncs are changes). At
//! the cut the file system SIGKILLs the program while it is still inside
//! that system call, so that nothing it would do next (a network request
//! above all) happens, and records the trees the cut can leave
//! ([`Variant`]): what was synced; that with the file being written torn at
//! chosen byte offsets (its unsynced writes kept, the last one cut short);
//! and, when asked, everything written so far. The next boot mounts one of
//! them.
//!
//! Mounting needs root (mount(2)) or `fusermount3` (Debian `fuse3`), and
//! `/dev/fuse`.

mod fs;
mod model;

use model::{Model, View};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A directory tree: what a disk holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    File {
        mode: u32,
        data: Vec<u8>,
    },
    Dir {
        mode: u32,
        entries: BTreeMap<String, Node>,
    },
}

impl Node {
    pub fn dir(mode: u32) -> Node {
        Node::Dir {
            mode,
            entries: BTreeMap::new(),
        }
    }

    pub fn mode(&self) -> u32 {
        match self {
            Node::File { mode, .. } | Node::Dir { mode, .. } => *mode,
        }
    }

    /// The node at `path` (`a/b/c`, relative to this directory).
    pub fn get(&self, path: &str) -> Option<&Node> {
        path.split('/')
            .filter(|part| !part.is_empty())
            .try_fold(self, |node, part| match node {
                Node::Dir { entries, .. } => entries.get(part),
                Node::File { .. } => None,
            })
    }

    /// The contents of the file at `path`.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match self.get(path)? {
            Node::File { data, .. } => Some(data),
            Node::Dir { .. } => None,
        }
    }

    /// The names in the directory at `path`.
    pub fn names(&self, path: &str) -> Vec<String> {
        match self.get(path) {
            Some(Node::Dir { entries, .. }) => entries.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Puts `node` at `path`, making missing parents (0755).
    pub fn put(&mut self, path: &str, node: Node) {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (last, parents) = parts.split_last().expect("a path");
        let mut at = self;
        for part in parents {
            let Node::Dir { entries, .. } = at else {
                panic!("{path}: {part} is a file");
            };
            at = entries.entry(part.to_string()).or_insert(Node::dir(0o755));
        }
        let Node::Dir { entries, .. } = at else {
            panic!("{path}: the parent is a file");
        };
        entries.insert(last.to_string(), node);
    }

    /// A directory of the real file system, read into a tree.
    pub fn read_dir(path: &Path) -> io::Result<Node> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path)?;
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_dir() {
            return Ok(Node::File {
                mode,
                data: std::fs::read(path)?,
            });
        }
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            entries.insert(name, Node::read_dir(&entry.path())?);
        }
        Ok(Node::Dir { mode, entries })
    }

    /// Writes this directory's contents under `path` (an existing
    /// directory), with their modes.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let Node::Dir { entries, .. } = self else {
            return Err(io::Error::other("not a directory"));
        };
        for (name, node) in entries {
            let at = path.join(name);
            match node {
                Node::File { data, .. } => std::fs::write(&at, data)?,
                Node::Dir { .. } => {
                    std::fs::create_dir(&at)?;
                    node.write_to(&at)?;
                }
            }
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(node.mode()))?;
        }
        Ok(())
    }

    /// Every path under this directory with its mode and size, sorted: a
    /// short description for failure messages.
    pub fn listing(&self) -> Vec<String> {
        fn walk(node: &Node, prefix: &str, out: &mut Vec<String>) {
            if let Node::Dir { entries, .. } = node {
                for (name, child) in entries {
                    let path = format!("{prefix}{name}");
                    match child {
                        Node::File { mode, data } => {
                            out.push(format!("{path} {mode:o} {}b", data.len()))
                        }
                        Node::Dir { mode, .. } => {
                            out.push(format!("{path}/ {mode:o}"));
                            walk(child, &format!("{path}/"), out);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(self, "", &mut out);
        out
    }
}

/// The kinds of change to the file system, each a cut point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Create,
    Mkdir,
    Write,
    Truncate,
    Chmod,
    Rename,
    Unlink,
    Rmdir,
    /// fsync of a file.
    Sync,
    /// fsync of a directory.
    SyncDir,
}

/// One change a program made, in order.
#[derive(Clone, Debug)]
pub struct Op {
    pub kind: OpKind,
    /// The path (relative to the mount) it was made to.
    pub path: String,
    pub detail: String,
    /// Where a write went in the file, and its bytes. The kernel splits a
    /// write(2) that crosses a page boundary into one change per part.
    pub offset: u64,
    pub written: Vec<u8>,
    ino: model::Ino,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.kind, self.path)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// What a power cut leaves of what was not fsynced.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Nothing: only what was synced survives.
    Synced,
    /// As `Synced`, but the file being written at the cut keeps its
    /// unsynced changes, its last write cut after `kept` of its `of` bytes:
    /// a torn write.
    Torn { kept: usize, of: usize },
    /// Everything written so far reached the disk (the page cache was
    /// written back just before the cut).
    Written,
}

/// What one boot of the disk does.
#[derive(Clone)]
pub struct Plan {
    /// Cut the power right after this many changes (1-based); `None`: never.
    pub cut_after: Option<usize>,
    /// Where a write in progress at the cut is torn, given its length.
    pub tears: fn(usize) -> Vec<usize>,
    /// Also record [`Variant::Written`].
    pub written: bool,
}

impl Plan {
    /// A boot without a cut.
    pub fn run() -> Plan {
        Plan {
            cut_after: None,
            tears: |_| Vec::new(),
            written: false,
        }
    }
}

/// The power cut of a boot.
pub struct Cut {
    /// The number of changes made before it (the last one included).
    pub after: usize,
    /// The last change.
    pub op: Op,
    /// The trees it can leave, without duplicates.
    pub images: Vec<(Variant, Node)>,
}

/// What happened to the disk during one boot.
pub struct Boot {
    pub ops: Vec<Op>,
    pub cut: Option<Cut>,
    /// The tree at unmount, as the program saw it.
    pub end: Node,
    /// What a cut at unmount would leave (after a program that ended on
    /// its own: whether it synced everything it wrote).
    pub end_synced: Node,
}

struct Inner {
    model: Model,
    plan: Plan,
    ops: Vec<Op>,
    cut: Option<Cut>,
    victim: Option<i32>,
}

struct Shared {
    inner: Mutex<Inner>,
    victim_known: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes one change; when it is the one the plan cuts after, records
    /// the trees the cut leaves, kills the program and fails the call (the
    /// program never returns from it).
    fn change<R>(
        &self,
        make: impl FnOnce(&mut Model) -> Result<(Op, R), model::Errno>,
    ) -> Result<R, model::Errno> {
        let mut inner = self.lock();
        if inner.cut.is_some() {
            return Err(nix::libc::EIO);
        }
        let (op, result) = make(&mut inner.model)?;
        inner.ops.push(op.clone());
        if inner.plan.cut_after != Some(inner.ops.len()) {
            return Ok(result);
        }
        let images = cut_images(&inner.model, &op, &inner.plan);
        inner.cut = Some(Cut {
            after: inner.ops.len(),
            op,
            images,
        });
        while inner.victim.is_none() {
            let (guard, timeout) = self
                .victim_known
                .wait_timeout(inner, Duration::from_secs(30))
                .unwrap_or_else(|e| e.into_inner());
            inner = guard;
            assert!(!timeout.timed_out(), "powercut: no program to cut");
        }
        let victim = nix::unistd::Pid::from_raw(inner.victim.unwrap());
        let _ = nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGKILL);
        Err(nix::libc::EIO)
    }
}

fn cut_images(model: &Model, op: &Op, plan: &Plan) -> Vec<(Variant, Node)> {
    let mut images = vec![(Variant::Synced, model.image(View::Synced, None))];
    if op.kind == OpKind::Write {
        let of = op.written.len();
        for kept in (plan.tears)(of) {
            images.push((
                Variant::Torn { kept, of },
                model.image(View::Synced, Some((op.ino, kept))),
            ));
        }
    }
    if plan.written {
        images.push((Variant::Written, model.image(View::Written, None)));
    }
    let mut seen = std::collections::HashSet::new();
    images.retain(|(_, image)| seen.insert(image.clone()));
    images
}

/// Whether this machine can mount a [`Disk`]: `/dev/fuse`, and root or
/// `fusermount3`. Where it cannot, a test skips with a note, except under
/// `CI` (whose script installs fuse3 and runs as root): there it fails.
pub fn mountable() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ok = Path::new("/dev/fuse").exists()
        && (root
            || std::process::Command::new("fusermount3")
                .arg("-V")
                .output()
                .is_ok());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount FUSE file systems (/dev/fuse, and root or fusermount3 of Debian fuse3)"
        );
        eprintln!("cannot mount FUSE file systems here (/dev/fuse, and root or fusermount3 of Debian fuse3): skipping");
    }
    ok
}

/// A mounted disk.
pub struct Disk {
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
}

impl Disk {
    /// Mounts `image` (a directory) at `at`, an existing empty directory.
    pub fn mount(image: &Node, at: &Path, plan: Plan) -> io::Result<Disk> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                model: Model::new(image),
                plan,
                ops: Vec::new(),
                cut: None,
                victim: None,
            }),
            victim_known: Condvar::new(),
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powercut".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        // One request at a time: a cut stops everything after it.
        config.n_threads = Some(1);
        let session = fuser::spawn_mount(fs::PowerCut::new(shared.clone()), at, &config)?;
        Ok(Disk {
            shared,
            session: Some(session),
        })
    }

    /// The program the cut kills: set it as soon as it is started.
    pub fn set_victim(&self, pid: u32) {
        self.shared.lock().victim = Some(pid as i32);
        self.shared.victim_known.notify_all();
    }

    /// Whether the power was cut.
    pub fn is_cut(&self) -> bool {
        self.shared.lock().cut.is_some()
    }

    /// Unmounts (the program must have ended) and tells what happened.
    pub fn unmount(mut self) -> Boot {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
        let mut inner = self.shared.lock();
        Boot {
            ops: std::mem::take(&mut inner.ops),
            cut: inner.cut.take(),
            end: inner.model.image(View::Written, None),
            end_synced: inner.model.image(View::Synced, None),
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}
