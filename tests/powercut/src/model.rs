//! The disk behind the mount: every inode as the running system sees it
//! (the page cache) and as it last reached the platter (its state at its
//! last fsync), with the changes made since. A power cut keeps the synced
//! state; a torn write keeps a prefix of the changes since.
//!
//! The durability rules are POSIX's, strictly: `fsync` of a file makes its
//! contents and mode durable, `fsync` of a directory makes its entries
//! durable (creations, renames, removals in it). Nothing else is: a file
//! created, written and fsynced in a directory that was never synced is
//! gone after the cut, and so is a directory whose parent was never synced.

use crate::{Node, Op, OpKind};
use std::collections::BTreeMap;

pub(crate) type Ino = u64;
pub(crate) const ROOT: Ino = 1;

#[derive(Clone)]
enum Body {
    File(Vec<u8>),
    Dir(BTreeMap<String, Ino>),
}

#[derive(Clone)]
struct State {
    mode: u32,
    body: Body,
}

/// A change to a file since its last fsync, in order.
enum Change {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
    Mode(u32),
}

struct Inode {
    now: State,
    synced: State,
    changes: Vec<Change>,
    /// Where it was last linked, for the op log.
    parent: Ino,
    name: String,
}

/// What a crash leaves of the page cache.
#[derive(Clone, Copy)]
pub(crate) enum View {
    /// Only what was synced.
    Synced,
    /// Everything, as if the page cache had been written back in full.
    Written,
}

pub(crate) struct Model {
    inodes: BTreeMap<Ino, Inode>,
    next: Ino,
}

pub(crate) type Errno = i32;
use nix::libc::{EEXIST, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY};

fn apply(data: &mut Vec<u8>, change: &Change, keep: usize) -> Option<u32> {
    match change {
        Change::Write {
            offset,
            data: bytes,
        } => {
            let bytes = &bytes[..keep.min(bytes.len())];
            let start = *offset as usize;
            if data.len() < start {
                data.resize(start, 0);
            }
            let overlap = (data.len() - start).min(bytes.len());
            data[start..start + overlap].copy_from_slice(&bytes[..overlap]);
            data.extend_from_slice(&bytes[overlap..]);
            None
        }
        Change::Truncate(size) => {
            data.resize(*size as usize, 0);
            None
        }
        Change::Mode(mode) => Some(*mode),
    }
}

impl Model {
    /// A disk holding `image` (a directory), all of it synced.
    pub fn new(image: &Node) -> Model {
        let mut model = Model {
            inodes: BTreeMap::new(),
            next: ROOT,
        };
        model.load(image, ROOT, "");
        model
    }

    fn load(&mut self, node: &Node, parent: Ino, name: &str) -> Ino {
        let ino = self.next;
        self.next += 1;
        let state = match node {
            Node::File { mode, data } => State {
                mode: *mode,
                body: Body::File(data.clone()),
            },
            Node::Dir { mode, entries } => {
                let mut children = BTreeMap::new();
                for (child, node) in entries {
                    children.insert(child.clone(), self.load(node, ino, child));
                }
                State {
                    mode: *mode,
                    body: Body::Dir(children),
                }
            }
        };
        self.inodes.insert(
            ino,
            Inode {
                now: state.clone(),
                synced: state,
                changes: Vec::new(),
                parent,
                name: name.to_string(),
            },
        );
        ino
    }

    fn insert(&mut self, ino: Ino, parent: Ino, name: &str, mode: u32, body: Body) {
        let state = State { mode, body };
        self.inodes.insert(
            ino,
            Inode {
                now: state.clone(),
                synced: state,
                changes: Vec::new(),
                parent,
                name: name.to_string(),
            },
        );
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(ENOENT)
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(ENOENT)
    }

    fn entries(&self, dir: Ino) -> Result<&BTreeMap<String, Ino>, Errno> {
        match &self.inode(dir)?.now.body {
            Body::Dir(entries) => Ok(entries),
            Body::File(_) => Err(ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: Ino) -> Result<&mut BTreeMap<String, Ino>, Errno> {
        match &mut self.inode_mut(dir)?.now.body {
            Body::Dir(entries) => Ok(entries),
            Body::File(_) => Err(ENOTDIR),
        }
    }

    /// The path of an inode from the mount's root, as last linked.
    pub fn path(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let Some(inode) = self.inodes.get(&at) else {
                break;
            };
            parts.push(inode.name.clone());
            at = inode.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    pub fn lookup(&self, dir: Ino, name: &str) -> Result<Ino, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(ENOENT)
    }

    /// `(is a directory, mode, size)`.
    pub fn attr(&self, ino: Ino) -> Result<(bool, u32, u64), Errno> {
        let inode = self.inode(ino)?;
        Ok(match &inode.now.body {
            Body::File(data) => (false, inode.now.mode, data.len() as u64),
            Body::Dir(entries) => (true, inode.now.mode, entries.len() as u64),
        })
    }

    pub fn list(&self, dir: Ino) -> Result<Vec<(String, Ino, bool)>, Errno> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, ino)| {
                let is_dir = matches!(self.inodes[ino].now.body, Body::Dir(_));
                (name.clone(), *ino, is_dir)
            })
            .collect())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        match &self.inode(ino)?.now.body {
            Body::File(data) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                Ok(data[start..end].to_vec())
            }
            Body::Dir(_) => Err(EISDIR),
        }
    }

    /// A new, empty file or directory. Its synced state is what it was
    /// created as: a directory entry synced later finds it empty.
    pub fn create(&mut self, dir: Ino, name: &str, mode: u32, is_dir: bool) -> Result<Op, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let body = match is_dir {
            true => Body::Dir(BTreeMap::new()),
            false => Body::File(Vec::new()),
        };
        self.insert(ino, dir, name, mode & 0o7777, body);
        self.entries_mut(dir)?.insert(name.to_string(), ino);
        let kind = if is_dir {
            OpKind::Mkdir
        } else {
            OpKind::Create
        };
        Ok(self.op(kind, ino, format!("mode {:o}", mode & 0o7777)))
    }

    fn op(&self, kind: OpKind, ino: Ino, detail: String) -> Op {
        Op {
            kind,
            path: self.path(ino),
            detail,
            offset: 0,
            written: Vec::new(),
            ino,
        }
    }

    fn change(&mut self, ino: Ino, change: Change) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        match &mut inode.now.body {
            Body::File(data) => {
                if let Some(mode) = apply(data, &change, usize::MAX) {
                    inode.now.mode = mode;
                }
                inode.changes.push(change);
            }
            Body::Dir(_) => match change {
                // A directory's mode is durable with its entries.
                Change::Mode(mode) => inode.now.mode = mode,
                _ => return Err(EISDIR),
            },
        }
        Ok(())
    }

    /// Writes at `offset`, or at the end for a file opened with O_APPEND.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8], append: bool) -> Result<Op, Errno> {
        let offset = match append {
            true => self.attr(ino)?.2,
            false => offset,
        };
        self.change(
            ino,
            Change::Write {
                offset,
                data: data.to_vec(),
            },
        )?;
        let mut op = self.op(
            OpKind::Write,
            ino,
            format!("{} bytes at {offset}", data.len()),
        );
        op.offset = offset;
        op.written = data.to_vec();
        Ok(op)
    }

    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<Op, Errno> {
        self.change(ino, Change::Truncate(size))?;
        Ok(self.op(OpKind::Truncate, ino, format!("to {size} bytes")))
    }

    pub fn chmod(&mut self, ino: Ino, mode: u32) -> Result<Op, Errno> {
        self.change(ino, Change::Mode(mode & 0o7777))?;
        Ok(self.op(OpKind::Chmod, ino, format!("{:o}", mode & 0o7777)))
    }

    pub fn rename(
        &mut self,
        from: (Ino, &str),
        to: (Ino, &str),
        no_replace: bool,
    ) -> Result<Op, Errno> {
        let moved = self.lookup(from.0, from.1)?;
        if let Ok(replaced) = self.lookup(to.0, to.1) {
            if no_replace {
                return Err(EEXIST);
            }
            if replaced == moved {
                return Ok(self.op(OpKind::Rename, moved, "onto itself".into()));
            }
            if let Body::Dir(entries) = &self.inode(replaced)?.now.body {
                if !entries.is_empty() {
                    return Err(ENOTEMPTY);
                }
            }
        }
        let old_path = self.path(moved);
        self.entries_mut(from.0)?.remove(from.1);
        self.entries_mut(to.0)?.insert(to.1.to_string(), moved);
        let inode = self.inode_mut(moved)?;
        inode.parent = to.0;
        inode.name = to.1.to_string();
        Ok(self.op(OpKind::Rename, moved, format!("from {old_path}")))
    }

    pub fn unlink(&mut self, dir: Ino, name: &str, is_dir: bool) -> Result<Op, Errno> {
        let ino = self.lookup(dir, name)?;
        match (&self.inode(ino)?.now.body, is_dir) {
            (Body::Dir(entries), true) if !entries.is_empty() => return Err(ENOTEMPTY),
            (Body::Dir(_), false) => return Err(EISDIR),
            (Body::File(_), true) => return Err(ENOTDIR),
            _ => {}
        }
        let op = self.op(
            if is_dir {
                OpKind::Rmdir
            } else {
                OpKind::Unlink
            },
            ino,
            String::new(),
        );
        self.entries_mut(dir)?.remove(name);
        Ok(op)
    }

    /// fsync: the inode's current state becomes its durable one.
    pub fn sync(&mut self, ino: Ino) -> Result<Op, Errno> {
        let inode = self.inode_mut(ino)?;
        inode.synced = inode.now.clone();
        inode.changes.clear();
        let kind = match inode.now.body {
            Body::Dir(_) => OpKind::SyncDir,
            Body::File(_) => OpKind::Sync,
        };
        Ok(self.op(kind, ino, String::new()))
    }

    /// The tree a power cut leaves: per `view`, with the changes since the
    /// last fsync of `torn` kept up to `keep` bytes of its last write.
    pub fn image(&self, view: View, torn: Option<(Ino, usize)>) -> Node {
        self.node(ROOT, view, torn)
    }

    fn node(&self, ino: Ino, view: View, torn: Option<(Ino, usize)>) -> Node {
        let inode = &self.inodes[&ino];
        let state = match view {
            View::Synced => &inode.synced,
            View::Written => &inode.now,
        };
        match &state.body {
            Body::Dir(entries) => Node::Dir {
                mode: state.mode,
                entries: entries
                    .iter()
                    .map(|(name, child)| (name.clone(), self.node(*child, view, torn)))
                    .collect(),
            },
            Body::File(data) => match torn {
                Some((tino, keep)) if tino == ino => self.replay(inode, keep),
                _ => Node::File {
                    mode: state.mode,
                    data: data.clone(),
                },
            },
        }
    }

    /// The synced state of a file with its later changes, the last one cut
    /// after `keep` bytes.
    fn replay(&self, inode: &Inode, keep: usize) -> Node {
        let (mut mode, mut data) = match &inode.synced.body {
            Body::File(data) => (inode.synced.mode, data.clone()),
            Body::Dir(_) => unreachable!("only files are torn"),
        };
        let last = inode.changes.len().saturating_sub(1);
        for (i, change) in inode.changes.iter().enumerate() {
            let keep = if i == last { keep } else { usize::MAX };
            if let Some(m) = apply(&mut data, change, keep) {
                mode = m;
            }
        }
        Node::File { mode, data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(image: &Node, path: &str) -> Option<Vec<u8>> {
        image.file(path).map(<[u8]>::to_vec)
    }

    #[test]
    fn only_synced_entries_and_contents_survive() {
        let mut m = Model::new(&Node::dir(0o755));
        m.create(ROOT, "d", 0o700, true).unwrap();
        let d = m.lookup(ROOT, "d").unwrap();
        m.create(d, "f", 0o600, false).unwrap();
        let f = m.lookup(d, "f").unwrap();
        m.write(f, 0, b"hello", false).unwrap();
        m.sync(f).unwrap();
        m.sync(d).unwrap();
        // The parent of `d` was never synced: `d` is gone, f with it.
        assert!(m.image(View::Synced, None).get("d").is_none());
        m.sync(ROOT).unwrap();
        assert_eq!(file(&m.image(View::Synced, None), "d/f").unwrap(), b"hello");
        m.write(f, 0, b", world", true).unwrap();
        assert_eq!(file(&m.image(View::Synced, None), "d/f").unwrap(), b"hello");
        assert_eq!(
            file(&m.image(View::Synced, Some((f, 3))), "d/f").unwrap(),
            b"hello, w"
        );
        assert_eq!(
            file(&m.image(View::Written, None), "d/f").unwrap(),
            b"hello, world"
        );
    }

    #[test]
    fn a_rename_is_durable_with_its_directory() {
        let mut m = Model::new(&Node::dir(0o755));
        m.create(ROOT, "old", 0o644, false).unwrap();
        let old = m.lookup(ROOT, "old").unwrap();
        m.write(old, 0, b"1", false).unwrap();
        m.sync(old).unwrap();
        m.sync(ROOT).unwrap();
        m.create(ROOT, "tmp", 0o644, false).unwrap();
        let tmp = m.lookup(ROOT, "tmp").unwrap();
        m.write(tmp, 0, b"2", false).unwrap();
        m.sync(tmp).unwrap();
        m.rename((ROOT, "tmp"), (ROOT, "old"), false).unwrap();
        let cut = m.image(View::Synced, None);
        assert_eq!(file(&cut, "old").unwrap(), b"1");
        assert!(cut.get("tmp").is_none());
        m.sync(ROOT).unwrap();
        assert_eq!(file(&m.image(View::Synced, None), "old").unwrap(), b"2");
        // The replaced inode is still there for a durable entry made
        // before; the unlinked name no longer resolves.
        m.unlink(ROOT, "old", false).unwrap();
        assert!(m.image(View::Written, None).get("old").is_none());
        assert_eq!(file(&m.image(View::Synced, None), "old").unwrap(), b"2");
    }

    #[test]
    fn modes_follow_the_file() {
        let mut m = Model::new(&Node::dir(0o755));
        m.create(ROOT, "k", 0o600, false).unwrap();
        let k = m.lookup(ROOT, "k").unwrap();
        m.sync(ROOT).unwrap();
        m.chmod(k, 0o644).unwrap();
        assert_eq!(m.image(View::Synced, None).get("k").unwrap().mode(), 0o600);
        m.sync(k).unwrap();
        assert_eq!(m.image(View::Synced, None).get("k").unwrap().mode(), 0o644);
    }
}
